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
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <tuple>
#include <vector>

#include "common.h"
#include "simd.h"
#include "vec_math.h"

namespace smallmind {
namespace {

constexpr int64_t KB = 256;  // keys per online-softmax block (scores of a block on the stack)

struct View4 {  // a (B, nh, T, hs) float tensor with last-dim stride 1
  float* p;
  int64_t s0, s1, s2;
  inline float* row(int64_t b, int64_t h, int64_t t) const { return p + b * s0 + h * s1 + t * s2; }
};

View4 view4(const at::Tensor& t) {
  return View4{const_cast<float*>(t.const_data_ptr<float>()), t.stride(0), t.stride(1),
               t.stride(2)};
}

// s[j] = dot(qs, k_j) for j in [0, n), k_j = k + j * ks
static inline void block_scores(const float* qs, const float* k, int64_t ks, int64_t n,
                                int64_t hs, float* s) {
  int64_t j = 0;
#if SMALLMIND_AVX2
  const int64_t hs8 = hs & ~int64_t(7);
  for (; j + 8 <= n; j += 8) {
    const float* k0 = k + j * ks;
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),
           a3 = _mm256_setzero_ps(), a4 = _mm256_setzero_ps(), a5 = _mm256_setzero_ps(),
           a6 = _mm256_setzero_ps(), a7 = _mm256_setzero_ps();
    for (int64_t d = 0; d < hs8; d += 8) {
      const __m256 qv = _mm256_loadu_ps(qs + d);
      a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + d), a0);
      a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + ks + d), a1);
      a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 2 * ks + d), a2);
      a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 3 * ks + d), a3);
      a4 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 4 * ks + d), a4);
      a5 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 5 * ks + d), a5);
      a6 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 6 * ks + d), a6);
      a7 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k0 + 7 * ks + d), a7);
    }
    _mm256_storeu_ps(s + j, vec::hsum8x8(a0, a1, a2, a3, a4, a5, a6, a7));
    for (int64_t d = hs8; d < hs; ++d) {  // head-size tail (hs % 8)
      const float qd = qs[d];
      for (int64_t t = 0; t < 8; ++t) s[j + t] += qd * k0[t * ks + d];
    }
  }
#endif
  for (; j < n; ++j) s[j] = vec::dot(qs, k + j * ks, hs);
}

// acc[d] += sum_j p[j] * v_j[d], v_j = v + j * vs
static inline void block_accumulate(const float* p, const float* v, int64_t vs, int64_t n,
                                    int64_t hs, float* acc) {
  int64_t d = 0;
#if SMALLMIND_AVX2
  for (; d + 8 <= hs; d += 8) {
    __m256 c0 = _mm256_loadu_ps(acc + d), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(),
           c3 = _mm256_setzero_ps();
    const float* vd = v + d;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      c0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(vd + j * vs), c0);
      c1 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 1]), _mm256_loadu_ps(vd + (j + 1) * vs), c1);
      c2 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 2]), _mm256_loadu_ps(vd + (j + 2) * vs), c2);
      c3 = _mm256_fmadd_ps(_mm256_set1_ps(p[j + 3]), _mm256_loadu_ps(vd + (j + 3) * vs), c3);
    }
    for (; j < n; ++j) c0 = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), _mm256_loadu_ps(vd + j * vs), c0);
    _mm256_storeu_ps(acc + d, _mm256_add_ps(_mm256_add_ps(c0, c1), _mm256_add_ps(c2, c3)));
  }
#endif
  if (d < hs) {
    for (int64_t j = 0; j < n; ++j) {
      const float pj = p[j];
      const float* vj = v + j * vs;
      for (int64_t dd = d; dd < hs; ++dd) acc[dd] += pj * vj[dd];
    }
  }
}

// One query row: out_row = softmax(scale * q . k_j, j < L) @ v
static inline void attend_row(const float* q, const float* k, int64_t ks, const float* v,
                              int64_t vs, int64_t L, int64_t hs, float scale, float* out,
                              float* qs, float* acc) {
  float s[KB];
  for (int64_t d = 0; d < hs; ++d) {
    qs[d] = q[d] * scale;
    acc[d] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j0 = 0; j0 < L; j0 += KB) {
    const int64_t n = std::min(KB, L - j0);
    block_scores(qs, k + j0 * ks, ks, n, hs, s);
    const float bm = vec::row_max(s, n);
    // Keys at -inf so far contribute exp(-inf) = 0: skip them rather than compute
    // exp(-inf - -inf) = NaN. A row of only -inf ends with l = 0 and gives NaN, as torch does.
    if (bm == -INFINITY && m == -INFINITY) continue;
    if (bm > m) {  // rescale what was accumulated under the old max
      if (l != 0.f) {
        const float c = std::exp(m - bm);
        l *= c;
        vec::scale_inplace(acc, hs, c);
      }
      m = bm;
    }
    l += vec::exp_sub_sum(s, s, n, m);
    block_accumulate(s, v + j0 * vs, vs, n, hs, acc);
  }
  const float inv = 1.0f / l;
  for (int64_t d = 0; d < hs; ++d) out[d] = acc[d] * inv;
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
  const View4 Q = view4(q), K = view4(k), V = view4(v), O = view4(out);
  const int64_t hs = dm.hs, Tq = dm.Tq, nh = dm.nh;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t rows = dm.B * dm.nh * dm.Tq;
  const int64_t avg_len = q_offset + (Tq + 1) / 2;
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(1, avg_len * hs));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * hs);
    float* qs = buf.data();
    float* acc = qs + hs;
    for (int64_t r = begin; r < end; ++r) {
      const int64_t i = r % Tq;
      const int64_t bh = r / Tq;
      const int64_t b = bh / nh, h = bh % nh;
      attend_row(Q.row(b, h, i), K.row(b, h, 0), K.s2, V.row(b, h, 0), V.s2, q_offset + i + 1,
                 hs, scale, O.row(b, h, i), qs, acc);
    }
  });
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
  const View4 Q = view4(q), K = view4(k), V = view4(v), G = view4(g), DQ = view4(dq),
              DK = view4(dk), DV = view4(dv);
  const int64_t hs = dm.hs, Tq = dm.Tq, nh = dm.nh, Tk = dm.Tk;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  at::parallel_for(0, dm.B * nh, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(Tk), dp(Tk), qs(hs);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / nh, h = bh % nh;
      const float* kb = K.row(b, h, 0);
      const float* vb = V.row(b, h, 0);
      float* dkb = DK.row(b, h, 0);
      float* dvb = DV.row(b, h, 0);
      for (int64_t i = 0; i < Tq; ++i) {
        const int64_t L = q_offset + i + 1;
        const float* qi = Q.row(b, h, i);
        const float* gi = G.row(b, h, i);
        float* dqi = DQ.row(b, h, i);
        for (int64_t d = 0; d < hs; ++d) qs[d] = qi[d] * scale;
        for (int64_t j0 = 0; j0 < L; j0 += KB)  // scores, 8 keys at a time
          block_scores(qs.data(), kb + j0 * K.s2, K.s2, std::min(KB, L - j0), hs, p.data() + j0);
        const float m = vec::row_max(p.data(), L);
        const float l = vec::exp_sub_sum(p.data(), p.data(), L, m);
        vec::scale_inplace(p.data(), L, 1.0f / l);
        for (int64_t j0 = 0; j0 < L; j0 += KB)  // dp_j = g . v_j
          block_scores(gi, vb + j0 * V.s2, V.s2, std::min(KB, L - j0), hs, dp.data() + j0);
        float D = 0.f;
        for (int64_t j = 0; j < L; ++j) D += p[j] * dp[j];
        for (int64_t d = 0; d < hs; ++d) dqi[d] = 0.f;
        for (int64_t j = 0; j < L; ++j) {
          const float ds = p[j] * (dp[j] - D) * scale;
          vec::axpy(ds, kb + j * K.s2, dqi, hs);          // dq_i += ds_j k_j
          vec::axpy(ds, qi, dkb + j * DK.s2, hs);         // dk_j += ds_j q_i
          vec::axpy(p[j], gi, dvb + j * DV.s2, hs);       // dv_j += p_j g_i
        }
      }
    }
  });
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
