// smallmind::gemm / gemm_out / linear / linear_out: CPU float32 kernels on the packed,
// cache-blocked AVX2/FMA GEMM of gemm_kernel.h.
//
//   gemm(a (M,K), b (K,N)) -> (M,N)
//   linear(x (..., K), weight (N,K), bias (N)?) -> (..., N) = x @ weight^T + bias
// The out-variants write into a caller's contiguous buffer and allocate nothing of size
// M*N. Inputs may be strided views (read through strides; x is reshaped to (M,K), which
// copies only when the leading dims cannot be flattened as a view).
#include "common.h"
#include "gemm_kernel.h"

#include <torch/library.h>

#include <vector>

namespace smallmind {
namespace {

void gemm_out_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  constexpr const char* op = "gemm";
  check_cpu_float32(a, op, "a");
  check_cpu_float32(b, op, "b");
  check_dim(a, 2, op, "a");
  check_dim(b, 2, op, "b");
  check_same_size(a.size(1), b.size(0), op, "a.size(1) (K)", "b.size(0) (K)");
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  check_out_float32(out, {M, N}, op, "out");
  if (M == 0 || N == 0) return;
  gemm::sgemm(M, N, K, a.data_ptr<float>(), a.stride(0), a.stride(1), b.data_ptr<float>(),
              b.stride(0), b.stride(1), out.data_ptr<float>(), N, nullptr, num_threads());
}

at::Tensor gemm_cpu(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "gemm";
  check_cpu_float32(a, op, "a");
  check_cpu_float32(b, op, "b");
  check_dim(a, 2, op, "a");
  check_dim(b, 2, op, "b");
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  gemm_out_cpu(a, b, out);
  return out;
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

void linear_into(const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const int64_t K = weight.size(1), N = weight.size(0);
  const int64_t M = out.numel() / std::max<int64_t>(N, 1);
  if (M == 0 || N == 0) return;
  // (M, K) view of x when possible; a copy only if the leading dims are not flattenable.
  at::Tensor x2 = x.reshape({M, K});
  at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const float* bias_ptr = b.defined() ? b.data_ptr<float>() : nullptr;
  // B(k, j) = weight[j, k]: read the (N, K) weight through transposed strides.
  gemm::sgemm(M, N, K, x2.data_ptr<float>(), x2.stride(0), x2.stride(1),
              weight.data_ptr<float>(), weight.stride(1), weight.stride(0),
              out.data_ptr<float>(), N, bias_ptr, num_threads());
}

void linear_out_cpu(const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, at::Tensor& out) {
  std::vector<int64_t> shape = linear_check(x, weight, bias);
  check_out_float32(out, shape, "linear", "out");
  linear_into(x, weight, bias, out);
}

at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  std::vector<int64_t> shape = linear_check(x, weight, bias);
  at::Tensor out = at::empty(shape, x.options());
  linear_into(x, weight, bias, out);
  return out;
}

std::string gemm_kernel_name() { return gemm::kernel_name(); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("gemm(Tensor a, Tensor b) -> Tensor");
  m.def("gemm_out(Tensor a, Tensor b, *, Tensor(a!) out) -> ()");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_out(Tensor x, Tensor weight, Tensor? bias, *, Tensor(a!) out) -> ()");
  // Which micro-kernel was compiled in ("avx2-fma-6x16" or "scalar"); for reports.
  m.def("gemm_kernel_name() -> str", &gemm_kernel_name);
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("gemm", &gemm_cpu);
  m.impl("gemm_out", &gemm_out_cpu);
  m.impl("linear", &linear_cpu);
  m.impl("linear_out", &linear_out_cpu);
}

}  // namespace smallmind
