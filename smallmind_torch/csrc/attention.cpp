// Fused causal attention on the CPU (flash-attention style; beyond the seed): attention,
// attention_inference (the same kernel with no autograd formula), attention_out and
// attention_backward.
//
// q (B, nh, Tq, hs); k, v (B, nh, Tk, hs); query i sits at absolute position q_offset + i and
// attends keys 0 .. q_offset + i. Scale 1/sqrt(hs). The Tq x Tk score matrix is never
// materialized: each task is one query row, which walks its keys in blocks of KB, keeps a
// running max m and running sum l, rescales its accumulator when the max grows (online
// softmax), and accumulates p_j * v_j into a small buffer. Scores for a block of 8 keys are
// computed together (8 FMA chains, one transpose-reduce), so K and V are read with their
// own strides: k/v may be non-contiguous views such as k_cache[:B, :, :Tk] of a
// (max_B, nh, max_T, hs) cache (only the last dim must be contiguous); no copy is made.
// attention_out's `out` may be a strided view too (e.g. a (B, T, nh, hs) buffer transposed
// to (B, nh, T, hs)), so the model can write straight into its (B, T, C) buffer; it must not
// share memory with q, k or v (rows are read while others are written).
// Non-finite scores give what softmax(q k^T) v gives in torch (see vec_math.h): a NaN in q, k
// or v reaches the rows that read it.
// The backward recomputes the probabilities row by row (no saved Tq x Tk matrix either); it
// parallelizes over (batch, head) because dk/dv of one head are summed over its query rows.
// The kernels are attention_kernel.h's, compiled once per ISA (kernels.h); this file checks
// arguments, allocates, and calls the current ISA's form.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace {

View4 view4(const at::Tensor& t) {
  return View4{const_cast<float*>(t.const_data_ptr<float>()), t.stride(0), t.stride(1),
               t.stride(2)};
}

struct Dims {
  int64_t B, nh, Tq, Tk, hs;
};

Dims check_qkv(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t q_offset,
               const char* op) {
  check_cpu_float32(q, op, "q");
  check_cpu_float32(k, op, "k");
  check_cpu_float32(v, op, "v");
  check_dim(q, 4, op, "q (B, nh, Tq, hs)");
  check_dim(k, 4, op, "k (B, nh, Tk, hs)");
  check_dim(v, 4, op, "v (B, nh, Tk, hs)");
  TORCH_CHECK(k.sizes() == v.sizes(), "smallmind::", op,
              ": 'k' and 'v' must have the same shape (B, nh, Tk, hs), got ", k.sizes(),
              " and ", v.sizes());
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "smallmind::", op, ": 'q' (B, nh, Tq, hs) and 'k' (B, nh, Tk, hs) must agree on "
              "B, nh and hs, got q ", q.sizes(), " and k ", k.sizes());
  Dims dm{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3)};
  check_q_offset(q_offset, dm.Tq, dm.Tk, op);
  return dm;
}

// last dim must be contiguous for the kernels; other strides are used as they are
at::Tensor rows_contig(const at::Tensor& t) {
  return (t.stride(-1) == 1 || t.size(-1) == 1) ? t : t.contiguous();
}

void attention_kernel(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                      int64_t q_offset, const Dims& dm, at::Tensor& out) {
  if (dm.B * dm.nh * dm.Tq == 0 || dm.hs == 0) {
    if (out.numel() > 0) out.zero_();
    return;
  }
  const at::Tensor q = rows_contig(q_), k = rows_contig(k_), v = rows_contig(v_);
  SMALLMIND_DISPATCH(current_isa(), attention_forward, view4(q), view4(k), view4(v), view4(out),
                     dm.B, dm.nh, dm.Tq, dm.hs, q_offset);
}

at::Tensor attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                     int64_t q_offset) {
  const Dims dm = check_qkv(q, k, v, q_offset, "attention");
  at::Tensor out = at::empty({dm.B, dm.nh, dm.Tq, dm.hs}, q.options());
  attention_kernel(q, k, v, q_offset, dm, out);
  return out;
}

void attention_out(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                   int64_t q_offset, at::Tensor out) {
  const char* op = "attention_out";
  const Dims dm = check_qkv(q, k, v, q_offset, op);
  check_cpu_float32(out, op, "out");
  check_shape(out, {dm.B, dm.nh, dm.Tq, dm.hs}, op, "out");
  at::assert_no_internal_overlap(out);
  TORCH_CHECK(!may_overlap(out, q) && !may_overlap(out, k) && !may_overlap(out, v),
              "smallmind::", op, ": 'out' must not overlap q, k or v (rows are read while "
              "others are written); pass a separate buffer");
  if (out.stride(-1) != 1 && out.size(-1) != 1) {  // rows not contiguous: compute, then copy
    at::Tensor tmp = at::empty(out.sizes(), out.options());
    attention_kernel(q, k, v, q_offset, dm, tmp);
    out.copy_(tmp);
    return;
  }
  attention_kernel(q, k, v, q_offset, dm, out);
}

void backward_kernel(const View4& Q, const View4& K, const View4& V, const View4& G,
                     const View4& DQ, const View4& DK, const View4& DV, const Dims& dm,
                     int64_t q_offset) {
  SMALLMIND_DISPATCH(current_isa(), attention_backward, Q, K, V, G, DQ, DK, DV, dm.B, dm.nh,
                     dm.Tq, dm.Tk, dm.hs, q_offset);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> attention_backward(const at::Tensor& grad_out,
                                                                  const at::Tensor& q_,
                                                                  const at::Tensor& k_,
                                                                  const at::Tensor& v_,
                                                                  int64_t q_offset) {
  const char* op = "attention_backward";
  const Dims dm = check_qkv(q_, k_, v_, q_offset, op);
  check_cpu_float32(grad_out, op, "grad_out");
  check_shape(grad_out, q_.sizes(), op, "grad_out");
  const at::Tensor q = rows_contig(q_), k = rows_contig(k_), v = rows_contig(v_);
  const at::Tensor g = rows_contig(grad_out);
  at::Tensor dq = at::empty(q_.sizes(), q_.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dk = at::zeros(k_.sizes(), k_.options().memory_format(at::MemoryFormat::Contiguous));
  at::Tensor dv = at::zeros(v_.sizes(), v_.options().memory_format(at::MemoryFormat::Contiguous));
  if (dm.B * dm.nh * dm.Tq == 0 || dm.hs == 0) {
    dq.zero_();
    return {dq, dk, dv};
  }
  backward_kernel(view4(q), view4(k), view4(v), view4(g), view4(dq), view4(dk), view4(dv), dm,
                  q_offset);
  return {dq, dk, dv};
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("attention(Tensor q, Tensor k, Tensor v, int q_offset=0) -> Tensor");
  m.def("attention_inference(Tensor q, Tensor k, Tensor v, int q_offset=0) -> Tensor");
  m.def("attention_out(Tensor q, Tensor k, Tensor v, int q_offset, Tensor(a!) out) -> ()");
  m.def(
      "attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, int q_offset) "
      "-> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("attention", &smallmind::attention);
  m.impl("attention_inference", &smallmind::attention);
  m.impl("attention_out", &smallmind::attention_out);
  m.impl("attention_backward", &smallmind::attention_backward);
}
