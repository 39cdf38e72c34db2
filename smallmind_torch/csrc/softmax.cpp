// Fused causal softmax (seed bottleneck #4): causal_softmax, its in-place form
// causal_softmax_, and causal_softmax_inference (the same kernel with no autograd formula).
//
// scores (..., Tq, Tk) float32. Row i of each (Tq, Tk) matrix has the valid length
// L_i = q_offset + i + 1 (query i sits at absolute position q_offset + i). One kernel per row:
// max over the valid part, exp(x - max) written to the output while summing, scale by 1/sum,
// zeros written to the masked tail j >= L_i. The input's tail is never read (it may be -inf
// or garbage). The row stays in L1 between the three sweeps, so it costs one pass of memory
// traffic instead of the three full-tensor passes of max / exp+sum / div. Non-finite scores
// give what torch.softmax of the -inf-masked row gives (see vec_math.h): NaN or +inf in a
// row's valid part, or a valid part of only -inf, makes the whole row NaN, masked tail too.
// The backward (y * (g - sum(g*y))) is composed in Python (smallmind_torch/ops/_softmax.py).
// The row loop (causal_softmax_rows) is in attention_kernel.h, once per ISA.
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace {

void check_scores(const at::Tensor& scores, int64_t q_offset, const char* op) {
  check_cpu_float32(scores, op, "scores");
  check_min_dim(scores, 2, op, "scores");
  check_q_offset(q_offset, scores.size(-2), scores.size(-1), op);
}

// in/out rows addressed through StridedRows (last dim contiguous); in and out may alias.
void causal_softmax_kernel(const float* in, const StridedRows& in_rows, float* out,
                           const StridedRows& out_rows, int64_t n_rows, int64_t Tq,
                           int64_t Tk, int64_t q_offset) {
  SMALLMIND_DISPATCH(current_isa(), causal_softmax_rows, in, in_rows, out, out_rows, n_rows, Tq,
                     Tk, q_offset);
}

at::Tensor causal_softmax(const at::Tensor& scores, int64_t q_offset) {
  check_scores(scores, q_offset, "causal_softmax");
  at::Tensor in = scores.stride(-1) == 1 ? scores : scores.contiguous();
  at::Tensor out =
      at::empty(scores.sizes(), scores.options().memory_format(at::MemoryFormat::Contiguous));
  const int64_t Tq = scores.size(-2), Tk = scores.size(-1);
  if (out.numel() == 0) return out;
  StridedRows in_rows(in), out_rows(out);
  causal_softmax_kernel(in.const_data_ptr<float>(), in_rows, out.data_ptr<float>(), out_rows,
                        out.numel() / Tk, Tq, Tk, q_offset);
  return out;
}

void causal_softmax_(at::Tensor scores, int64_t q_offset) {
  check_scores(scores, q_offset, "causal_softmax_");
  at::assert_no_internal_overlap(scores);
  const int64_t Tq = scores.size(-2), Tk = scores.size(-1);
  if (scores.numel() == 0) return;
  if (scores.stride(-1) != 1) {  // rows not contiguous: work on a copy, write back
    at::Tensor tmp = scores.contiguous();
    causal_softmax_(tmp, q_offset);
    scores.copy_(tmp);
    return;
  }
  StridedRows rows(scores);
  float* p = scores.data_ptr<float>();
  causal_softmax_kernel(p, rows, p, rows, scores.numel() / Tk, Tq, Tk, q_offset);
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("causal_softmax(Tensor scores, int q_offset=0) -> Tensor");
  m.def("causal_softmax_inference(Tensor scores, int q_offset=0) -> Tensor");
  m.def("causal_softmax_(Tensor(a!) scores, int q_offset=0) -> ()");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("causal_softmax", &smallmind::causal_softmax);
  m.impl("causal_softmax_inference", &smallmind::causal_softmax);
  m.impl("causal_softmax_", &smallmind::causal_softmax_);
}
