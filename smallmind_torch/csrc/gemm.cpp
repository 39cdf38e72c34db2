// smallmind::gemm / gemm_out / linear / linear_out (and the *_inference twins): CPU float32
// kernels on the packed, cache-blocked AVX2/FMA GEMM of gemm_kernel.h.
//
// gemm: a (M, K) @ b (K, N). linear: x (..., K) @ weight (N, K)^T + bias (N), weight in
// nn.Linear's layout. The out-variants write into a caller's contiguous buffer and allocate
// nothing of size M*N, unless `out` shares memory with an input: then the product is
// computed into a temporary and copied, so the result is right (as torch.mm(a, b, out=a) is)
// rather than read back from half-written rows. Inputs may be strided views (read through
// strides; x is reshaped to (M, K), which copies only when its leading dims cannot be
// flattened as a view). The *_inference twins run the same kernels with no autograd formula.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <vector>

#include "common.h"
#include "gemm_kernel.h"

namespace smallmind {
namespace {

struct GemmDims {
  int64_t M, K, N;
};

GemmDims gemm_check(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "gemm";
  check_cpu_float32(a, op, "a");
  check_cpu_float32(b, op, "b");
  check_dim(a, 2, op, "a");
  check_dim(b, 2, op, "b");
  check_same_size(a.size(1), b.size(0), op, "a.size(1) (K)", "b.size(0) (K)");
  return {a.size(0), a.size(1), b.size(1)};
}

// out: contiguous (M, N), not overlapping a or b
void gemm_into(const at::Tensor& a, const at::Tensor& b, const GemmDims& d, at::Tensor& out) {
  if (d.M == 0 || d.N == 0) return;
  gemm::sgemm(d.M, d.N, d.K, a.const_data_ptr<float>(), a.stride(0), a.stride(1),
              b.const_data_ptr<float>(), b.stride(0), b.stride(1), out.data_ptr<float>(), d.N,
              nullptr, num_threads());
}

at::Tensor gemm_cpu(const at::Tensor& a, const at::Tensor& b) {
  const GemmDims d = gemm_check(a, b);
  at::Tensor out = at::empty({d.M, d.N}, a.options());
  gemm_into(a, b, d, out);
  return out;
}

void gemm_out_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  const GemmDims d = gemm_check(a, b);
  check_out_float32(out, {d.M, d.N}, "gemm", "out");
  if (may_overlap(out, a) || may_overlap(out, b)) {
    at::Tensor tmp = at::empty({d.M, d.N}, a.options());
    gemm_into(a, b, d, tmp);
    out.copy_(tmp);
    return;
  }
  gemm_into(a, b, d, out);
}

// Validates and returns the output shape (..., N).
std::vector<int64_t> linear_check(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear";
  check_cpu_float32(x, op, "x");
  check_cpu_float32(weight, op, "weight");
  check_min_dim(x, 1, op, "x");
  TORCH_CHECK(weight.dim() == 2, "smallmind::linear: 'weight' must be 2-D (N, K) as ",
              "nn.Linear stores it, got shape ", weight.sizes());
  check_same_size(x.size(-1), weight.size(1), op, "x.size(-1) (K)", "weight.size(1) (K)");
  if (bias.has_value()) {
    check_cpu_float32(*bias, op, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "smallmind::linear: 'bias' must be 1-D of size N = weight.size(0) = ",
                weight.size(0), ", got shape ", bias->sizes());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(weight.size(0));
  return shape;
}

// out: contiguous (..., N), not overlapping x, weight or bias
void linear_into(const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t K = weight.size(1), N = weight.size(0);
  const int64_t M = out.numel() / std::max<int64_t>(N, 1);
  if (M == 0 || N == 0) return;
  // (M, K) view of x when possible; a copy only if the leading dims are not flattenable.
  const at::Tensor x2 = x.reshape({M, K});
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const float* bias_ptr = b.defined() ? b.const_data_ptr<float>() : nullptr;
  // B(k, j) = weight[j, k]: read the (N, K) weight through transposed strides.
  gemm::sgemm(M, N, K, x2.const_data_ptr<float>(), x2.stride(0), x2.stride(1),
              weight.const_data_ptr<float>(), weight.stride(1), weight.stride(0),
              out.data_ptr<float>(), N, bias_ptr, num_threads());
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  const std::vector<int64_t> shape = linear_check(x, weight, bias);
  at::Tensor out = at::empty(shape, x.options());
  linear_into(x, weight, bias, out);
  return out;
}

void linear_out_cpu(const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const std::vector<int64_t> shape = linear_check(x, weight, bias);
  check_out_float32(out, shape, "linear", "out");
  if (may_overlap(out, x) || may_overlap(out, weight) ||
      (bias.has_value() && may_overlap(out, *bias))) {
    at::Tensor tmp = at::empty(shape, x.options());
    linear_into(x, weight, bias, tmp);
    out.copy_(tmp);
    return;
  }
  linear_into(x, weight, bias, out);
}

std::string gemm_kernel_name() { return gemm::kernel_name(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("gemm(Tensor a, Tensor b) -> Tensor");
  m.def("gemm_inference(Tensor a, Tensor b) -> Tensor");
  m.def("gemm_out(Tensor a, Tensor b, *, Tensor(a!) out) -> ()");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_inference(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_out(Tensor x, Tensor weight, Tensor? bias, *, Tensor(a!) out) -> ()");
  // Which micro-kernel was compiled in ("avx2-fma-6x16" or "scalar"); for reports.
  m.def("gemm_kernel_name() -> str", &gemm_kernel_name);
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("gemm", &gemm_cpu);
  m.impl("gemm_inference", &gemm_cpu);
  m.impl("gemm_out", &gemm_out_cpu);
  m.impl("linear", &linear_cpu);
  m.impl("linear_inference", &linear_cpu);
  m.impl("linear_out", &linear_out_cpu);
}

}  // namespace smallmind
