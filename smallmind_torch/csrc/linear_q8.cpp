// Weight-only int8 linear (the `weights` switch): linear_q8(x, w_q, scale, bias) =
// x @ (scale[:, None] * w_q)^T + bias, x float32 (..., K), w_q int8 (N, K) contiguous, scale
// float32 (N,), bias float32 (N,) or None; a new (..., N) float32 tensor. linear_q8_inference is
// its no-autograd twin; linear_q8_out writes a contiguous `out` (through a temporary when out
// overlaps an input). The kernel, once per ISA, is in linear_q8_kernel.h; the quantization (per
// output channel, symmetric) and the plain-PyTorch reference are in ops/_linear_q8.py.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace {

void linear_q8_kernel(const float* x, int64_t M, int64_t K, const int8_t* w, const float* scale,
                      const float* bias, float* y, int64_t N) {
  SMALLMIND_DISPATCH(current_isa(), linear_q8, x, M, K, w, scale, bias, y, N, num_threads());
}

// Validates and returns the output shape (..., N).
std::vector<int64_t> linear_q8_check(const at::Tensor& x, const at::Tensor& w_q,
                                     const at::Tensor& scale,
                                     const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear_q8";
  check_cpu_float32(x, op, "x");
  check_min_dim(x, 1, op, "x");
  check_cpu(w_q, op, "w_q");
  check_dtype(w_q, at::kChar, op, "w_q");
  check_dim(w_q, 2, op, "w_q");
  check_contiguous(w_q, op, "w_q");
  const int64_t N = w_q.size(0), K = w_q.size(1);
  check_same_size(x.size(-1), K, op, "x.size(-1)", "w_q.size(1) (K)");
  check_cpu_float32(scale, op, "scale");
  check_shape(scale, {N}, op, "scale");
  check_contiguous(scale, op, "scale");
  if (bias) {
    check_cpu_float32(*bias, op, "bias");
    check_shape(*bias, {N}, op, "bias");
    check_contiguous(*bias, op, "bias");
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

// y (contiguous, the checked shape) = linear_q8(x, ...).
void linear_q8_into(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
                    const std::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t N = w_q.size(0), K = w_q.size(1);
  if (y.numel() == 0) return;
  if (K == 0) {
    y.zero_();
    if (bias) y.add_(*bias);
    return;
  }
  const at::Tensor xc = x.contiguous();
  linear_q8_kernel(xc.const_data_ptr<float>(), xc.numel() / K, K, w_q.const_data_ptr<int8_t>(),
                   scale.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr,
                   y.data_ptr<float>(), N);
}

at::Tensor linear_q8(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
                     const std::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty(linear_q8_check(x, w_q, scale, bias),
                           x.options().memory_format(at::MemoryFormat::Contiguous));
  linear_q8_into(x, w_q, scale, bias, y);
  return y;
}

void linear_q8_out(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
                   const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const std::vector<int64_t> shape = linear_q8_check(x, w_q, scale, bias);
  check_out_float32(out, shape, "linear_q8", "out");
  if (may_overlap(out, x) || may_overlap(out, scale) ||
      (bias.has_value() && may_overlap(out, *bias)) || extents_intersect(out, w_q)) {
    at::Tensor tmp = at::empty(shape, x.options());  // out overwrites an input
    linear_q8_into(x, w_q, scale, bias, tmp);
    out.copy_(tmp);
    return;
  }
  linear_q8_into(x, w_q, scale, bias, out);
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("linear_q8(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def("linear_q8_inference(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def(
      "linear_q8_out(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None, *, Tensor(a!) out) "
      "-> ()");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("linear_q8", &smallmind::linear_q8);
  m.impl("linear_q8_inference", &smallmind::linear_q8);
  m.impl("linear_q8_out", &smallmind::linear_q8_out);
}
