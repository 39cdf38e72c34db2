// Weight-only int8 linear (the first kernel of the quantized phase): linear_q8(x, w_q, scale,
// bias) = x @ (scale[:, None] * w_q)^T + bias (and its no-autograd twin linear_q8_inference), x float32 (..., K), w_q int8 (N, K) contiguous,
// scale float32 (N,), bias float32 (N,) or None; a new (..., N) float32 tensor. The kernel,
// once per ISA, is in linear_q8_kernel.h; the quantization (per output channel, symmetric) and
// the plain-PyTorch reference are in smallmind_torch/ops/_linear_q8.py.
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

at::Tensor linear_q8(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
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
  std::vector<int64_t> out_sizes(x.sizes().begin(), x.sizes().end());
  out_sizes.back() = N;
  at::Tensor y = at::empty(out_sizes, x.options().memory_format(at::MemoryFormat::Contiguous));
  if (y.numel() == 0) return y;
  if (K == 0) return y.zero_().add_(bias ? *bias : y.new_zeros({N}));
  const at::Tensor xc = x.contiguous();
  linear_q8_kernel(xc.const_data_ptr<float>(), xc.numel() / K, K, w_q.const_data_ptr<int8_t>(),
                   scale.const_data_ptr<float>(), bias ? bias->const_data_ptr<float>() : nullptr,
                   y.data_ptr<float>(), N);
  return y;
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("linear_q8(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def("linear_q8_inference(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("linear_q8", &smallmind::linear_q8);
  m.impl("linear_q8_inference", &smallmind::linear_q8);
}
