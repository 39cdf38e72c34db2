// Fused LayerNorm over the last dim, forward and backward (seed bottleneck #6).
//
// Forward, per row of C elements (the row stays in L1): sum -> mean, sum (x - mean)^2 -> rstd
// (two-pass, numerically safer than E[x^2] - E[x]^2; both sums shifted by the row's first
// element so a large common offset loses nothing), then y = (x - mean) * rstd * w + b in one
// vectorized sweep. weight / bias may be absent (no affine part), as in F.layer_norm. Forms:
//   layer_norm            saves no statistics; its autograd formula recomputes them
//   layer_norm_inference  the same kernel with no autograd formula
//   layer_norm_with_stats also returns mean and rstd (shape x.shape[:-1]) for the backward
//   layer_norm_out        writes into a preallocated contiguous buffer, which may be x itself
// Backward, per row: xhat = (x - mean) * rstd, gw = g * w,
//   dx = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)); dweight = sum_rows g * xhat,
//   dbias = sum_rows g (per-thread partial sums, reduced at the end). Without mean / rstd it
//   recomputes them per row; dweight / dbias are always returned (shape (C,)).
// The row kernels and loops are layer_norm_row.h's, compiled once per ISA (kernels.h); this
// file checks arguments, allocates, and calls the current ISA's form.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace {

using OptTensor = std::optional<at::Tensor>;

struct Params {
  at::Tensor x;       // last dim contiguous
  at::Tensor weight;  // contiguous (C,) or undefined
  at::Tensor bias;
  int64_t C = 0;
  int64_t N = 0;
};

// weight or bias: absent, or a CPU float32 (C,) tensor; returned contiguous
at::Tensor check_affine(const OptTensor& t, int64_t C, const char* op, const char* name) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  check_cpu_float32(*t, op, name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, "smallmind::", op, ": '", name,
              "' must have shape (", C, ",) (the normalized last dim of x), got ", t->sizes());
  return t->contiguous();
}

Params check_inputs(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                    double eps, const char* op) {
  check_cpu_float32(x, op, "x");
  check_min_dim(x, 1, op, "x");
  check_eps(eps, op);
  Params p;
  p.C = x.size(-1);
  p.x = x.stride(-1) == 1 ? x : x.contiguous();
  p.N = p.C == 0 ? 0 : x.numel() / p.C;
  p.weight = check_affine(weight, p.C, op, "weight");
  p.bias = check_affine(bias, p.C, op, "bias");
  return p;
}

// out: contiguous; mean/rstd: null or contiguous (N,)
void forward_kernel(const Params& p, float eps, float* out, float* mean_out, float* rstd_out) {
  if (p.N == 0) return;
  const StridedRows rows(p.x);
  const float* x = p.x.const_data_ptr<float>();
  const float* w = p.weight.defined() ? p.weight.const_data_ptr<float>() : nullptr;
  const float* b = p.bias.defined() ? p.bias.const_data_ptr<float>() : nullptr;
  const int64_t C = p.C;
  SMALLMIND_DISPATCH(current_isa(), layer_norm_forward, x, rows, p.N, C, w, b, eps, out,
                     mean_out, rstd_out);
}

at::Tensor layer_norm(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                      double eps) {
  Params p = check_inputs(x, weight, bias, eps, "layer_norm");
  at::Tensor out =
      at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  forward_kernel(p, static_cast<float>(eps), out.data_ptr<float>(), nullptr, nullptr);
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_with_stats(const at::Tensor& x,
                                                                     const OptTensor& weight,
                                                                     const OptTensor& bias,
                                                                     double eps) {
  Params p = check_inputs(x, weight, bias, eps, "layer_norm_with_stats");
  at::Tensor out =
      at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  auto stat_shape = x.sizes().slice(0, x.dim() - 1);
  at::Tensor mean = at::empty(stat_shape, x.options());
  at::Tensor rstd = at::empty(stat_shape, x.options());
  forward_kernel(p, static_cast<float>(eps), out.data_ptr<float>(), mean.data_ptr<float>(),
                 rstd.data_ptr<float>());
  return {out, mean, rstd};
}

void layer_norm_out(const at::Tensor& x, const OptTensor& weight, const OptTensor& bias,
                    double eps, at::Tensor out) {
  Params p = check_inputs(x, weight, bias, eps, "layer_norm_out");
  check_out_float32(out, x.sizes(), "layer_norm_out", "out");
  // out == x (same layout) is fine: each row is fully read before it is written. Any other
  // sharing would read rows, or the weight, after they were overwritten.
  const bool same_as_x = x.data_ptr() == out.data_ptr() && x.strides() == out.strides();
  TORCH_CHECK(same_as_x || !may_overlap(out, x), "smallmind::layer_norm_out: 'out' must be "
              "x itself (same layout) or not overlap x; it shares memory with x otherwise");
  TORCH_CHECK((!p.weight.defined() || !may_overlap(out, p.weight)) &&
                  (!p.bias.defined() || !may_overlap(out, p.bias)),
              "smallmind::layer_norm_out: 'out' must not overlap weight or bias");
  forward_kernel(p, static_cast<float>(eps), out.data_ptr<float>(), nullptr, nullptr);
}

void backward_kernel(const float* x, const StridedRows& rows, const float* g, const float* w,
                     const float* mean, const float* rstd, float eps, int64_t N, int64_t C,
                     float* dx, float* partial, int nthreads) {
  SMALLMIND_DISPATCH(current_isa(), layer_norm_backward, x, rows, g, w, mean, rstd, eps, N, C, dx,
                     partial, nthreads);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> layer_norm_backward(
    const at::Tensor& grad_out, const at::Tensor& x, const OptTensor& weight,
    const OptTensor& mean, const OptTensor& rstd, double eps) {
  const char* op = "layer_norm_backward";
  Params p = check_inputs(x, weight, std::nullopt, eps, op);
  check_cpu_float32(grad_out, op, "grad_out");
  check_shape(grad_out, x.sizes(), op, "grad_out");
  const bool have_stats = mean.has_value() && mean->defined();
  TORCH_CHECK(have_stats == (rstd.has_value() && rstd->defined()), "smallmind::", op,
              ": give both 'mean' and 'rstd' or neither");
  at::Tensor mean_c, rstd_c;
  if (have_stats) {
    check_cpu_float32(*mean, op, "mean");
    check_cpu_float32(*rstd, op, "rstd");
    TORCH_CHECK(mean->numel() == p.N && rstd->numel() == p.N, "smallmind::", op,
                ": 'mean' and 'rstd' must have one value per row (", p.N, "), got ",
                mean->numel(), " and ", rstd->numel());
    mean_c = mean->contiguous();
    rstd_c = rstd->contiguous();
  }
  const int64_t C = p.C, N = p.N;
  at::Tensor g = grad_out.contiguous();
  at::Tensor dx = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dw = at::zeros({C}, x.options());
  at::Tensor db = at::zeros({C}, x.options());
  if (N == 0) return {dx, dw, db};

  const int nthreads = num_threads();
  at::Tensor partial = at::zeros({nthreads, 2, C}, x.options());
  float* part = partial.data_ptr<float>();
  const StridedRows rows(p.x);
  const float* xp = p.x.const_data_ptr<float>();
  const float* gp = g.const_data_ptr<float>();
  const float* w = p.weight.defined() ? p.weight.const_data_ptr<float>() : nullptr;
  const float* mp = have_stats ? mean_c.const_data_ptr<float>() : nullptr;
  const float* rp = have_stats ? rstd_c.const_data_ptr<float>() : nullptr;
  float* dxp = dx.data_ptr<float>();
  backward_kernel(xp, rows, gp, w, mp, rp, static_cast<float>(eps), N, C, dxp, part, nthreads);
  at::Tensor sums = partial.sum(0);  // (2, C)
  dw.copy_(sums[0]);
  db.copy_(sums[1]);
  return {dx, dw, db};
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps=1e-05) -> Tensor");
  m.def(
      "layer_norm_inference(Tensor x, Tensor? weight, Tensor? bias, float eps=1e-05) -> Tensor");
  m.def(
      "layer_norm_with_stats(Tensor x, Tensor? weight, Tensor? bias, float eps=1e-05) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "layer_norm_out(Tensor x, Tensor? weight, Tensor? bias, float eps, Tensor(a!) out) "
      "-> ()");
  m.def(
      "layer_norm_backward(Tensor grad_out, Tensor x, Tensor? weight, Tensor? mean, "
      "Tensor? rstd, float eps) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("layer_norm", &smallmind::layer_norm);
  m.impl("layer_norm_inference", &smallmind::layer_norm);
  m.impl("layer_norm_with_stats", &smallmind::layer_norm_with_stats);
  m.impl("layer_norm_out", &smallmind::layer_norm_out);
  m.impl("layer_norm_backward", &smallmind::layer_norm_backward);
}
