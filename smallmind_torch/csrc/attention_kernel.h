// Attention and causal-softmax kernels of one ISA (no include guard: kernels.h includes this
// file once per ISA). The ops around them, with their checks and the algorithm's description,
// are attention.cpp and softmax.cpp.

namespace smallmind {
namespace SMALLMIND_ISA_NS {

// The naive loops, for reading and for the tests, which hold every ISA's kernels to them
// (naive.cpp). Rows contiguous; query / row i of a (Tq, Tk) block sees keys 0 .. q_offset + i.

// attention_forward (below) with every score of a row kept: q (BH, Tq, hs), k and v (BH, Tk,
// hs), out (BH, Tq, hs).
static inline void attention_naive(const float* q, const float* k, const float* v, int64_t BH,
                                   int64_t Tq, int64_t Tk, int64_t hs, int64_t q_offset,
                                   float* out) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  std::vector<float> p(Tk);
  for (int64_t r = 0; r < BH * Tq; ++r) {  // r = (bh, i)
    const float* kb = k + r / Tq * Tk * hs;
    const float* vb = v + r / Tq * Tk * hs;
    const int64_t L = q_offset + r % Tq + 1;
    float m = -INFINITY, l = 0.f;
    for (int64_t j = 0; j < L; ++j) {
      float s = 0.f;
      for (int64_t d = 0; d < hs; ++d) s += q[r * hs + d] * kb[j * hs + d];
      p[j] = s * scale;
      m = std::max(m, p[j]);
    }
    for (int64_t j = 0; j < L; ++j) {
      p[j] = std::exp(p[j] - m);
      l += p[j];
    }
    for (int64_t d = 0; d < hs; ++d) {
      float o = 0.f;
      for (int64_t j = 0; j < L; ++j) o += p[j] * vb[j * hs + d];
      out[r * hs + d] = o / l;
    }
  }
}

// causal_softmax_rows (at the end) on n_rows rows of Tk: softmax over the row's first
// L = q_offset + r % Tq + 1 values, zeros after.
static inline void causal_softmax_naive(const float* x, int64_t n_rows, int64_t Tq, int64_t Tk,
                                        int64_t q_offset, float* y) {
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * Tk;
    float* yr = y + r * Tk;
    const int64_t L = q_offset + r % Tq + 1;
    float m = -INFINITY, s = 0.f;
    for (int64_t j = 0; j < L; ++j) m = std::max(m, xr[j]);
    for (int64_t j = 0; j < L; ++j) {
      yr[j] = std::exp(xr[j] - m);
      s += yr[j];
    }
    for (int64_t j = 0; j < Tk; ++j) yr[j] = j < L ? yr[j] / s : 0.f;
  }
}

constexpr int64_t KB = 256;  // keys per online-softmax block (scores of a block on the stack)

// s[j] = dot(qs, k_j) for j in [0, n), k_j = k + j * ks: 8 keys at a time (8 FMA chains, one
// transpose-reduce), the head-size tail (hs % W) in scalar.
static inline void block_scores(const float* qs, const float* k, int64_t ks, int64_t n,
                                int64_t hs, float* s) {
  int64_t j = 0;
  const int64_t hsv = hs - hs % W;
  if (hsv > 0) {
    for (; j + 8 <= n; j += 8) {
      const float* k0 = k + j * ks;
      V a[8];
#pragma GCC unroll 8
      for (int t = 0; t < 8; ++t) a[t] = vzero();
      for (int64_t d = 0; d < hsv; d += W) {
        const V qv = vload(qs + d);
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) a[t] = vfmadd(qv, vload(k0 + t * ks + d), a[t]);
      }
      vhsum8(a, s + j);
      for (int64_t d = hsv; d < hs; ++d) {
        const float qd = qs[d];
        for (int t = 0; t < 8; ++t) s[j + t] += qd * k0[t * ks + d];
      }
    }
  }
  for (; j < n; ++j) s[j] = dot(qs, k + j * ks, hs);
}

// acc[d] += sum_j p[j] * v_j[d], v_j = v + j * vs
static inline void block_accumulate(const float* p, const float* v, int64_t vs, int64_t n,
                                    int64_t hs, float* acc) {
  int64_t d = 0;
  for (; d + W <= hs; d += W) {
    V c0 = vload(acc + d), c1 = vzero(), c2 = vzero(), c3 = vzero();
    const float* vd = v + d;
    int64_t j = 0;
    for (; j + 4 <= n; j += 4) {
      c0 = vfmadd(vset1(p[j]), vload(vd + j * vs), c0);
      c1 = vfmadd(vset1(p[j + 1]), vload(vd + (j + 1) * vs), c1);
      c2 = vfmadd(vset1(p[j + 2]), vload(vd + (j + 2) * vs), c2);
      c3 = vfmadd(vset1(p[j + 3]), vload(vd + (j + 3) * vs), c3);
    }
    for (; j < n; ++j) c0 = vfmadd(vset1(p[j]), vload(vd + j * vs), c0);
    vstore(acc + d, vadd(vadd(c0, c1), vadd(c2, c3)));
  }
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
    const float bm = row_max(s, n);
    // Keys at -inf so far contribute exp(-inf) = 0: skip them rather than compute
    // exp(-inf - -inf) = NaN. A row of only -inf ends with l = 0 and gives NaN, as torch does.
    if (bm == -INFINITY && m == -INFINITY) continue;
    if (bm > m) {  // rescale what was accumulated under the old max
      if (l != 0.f) {
        const float c = std::exp(m - bm);
        l *= c;
        scale_inplace(acc, hs, c);
      }
      m = bm;
    }
    l += exp_sub_sum(s, s, n, m);
    block_accumulate(s, v + j0 * vs, vs, n, hs, acc);
  }
  const float inv = 1.0f / l;
  for (int64_t d = 0; d < hs; ++d) out[d] = acc[d] * inv;
}

// The forward over every (batch, head, query row), rows split over threads.
static inline void attention_forward(const View4& Q, const View4& K, const View4& Vv,
                                     const View4& O, int64_t B, int64_t nh, int64_t Tq,
                                     int64_t hs, int64_t q_offset) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t rows = B * nh * Tq;
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
      attend_row(Q.row(b, h, i), K.row(b, h, 0), K.s2, Vv.row(b, h, 0), Vv.s2, q_offset + i + 1,
                 hs, scale, O.row(b, h, i), qs, acc);
    }
  });
}

// The backward: recomputes the probabilities row by row; parallel over (batch, head),
// because dk / dv of one head are summed over its query rows. dk, dv zeroed by the caller.
static inline void attention_backward(const View4& Q, const View4& K, const View4& Vv,
                                      const View4& G, const View4& DQ, const View4& DK,
                                      const View4& DV, int64_t B, int64_t nh, int64_t Tq,
                                      int64_t Tk, int64_t hs, int64_t q_offset) {
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  at::parallel_for(0, B * nh, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(Tk), dp(Tk), qs(hs);
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / nh, h = bh % nh;
      const float* kb = K.row(b, h, 0);
      const float* vb = Vv.row(b, h, 0);
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
        const float m = row_max(p.data(), L);
        const float l = exp_sub_sum(p.data(), p.data(), L, m);
        scale_inplace(p.data(), L, 1.0f / l);
        for (int64_t j0 = 0; j0 < L; j0 += KB)  // dp_j = g . v_j
          block_scores(gi, vb + j0 * Vv.s2, Vv.s2, std::min(KB, L - j0), hs, dp.data() + j0);
        float D = 0.f;
        for (int64_t j = 0; j < L; ++j) D += p[j] * dp[j];
        for (int64_t d = 0; d < hs; ++d) dqi[d] = 0.f;
        for (int64_t j = 0; j < L; ++j) {
          const float ds = p[j] * (dp[j] - D) * scale;
          axpy(ds, kb + j * K.s2, dqi, hs);          // dq_i += ds_j k_j
          axpy(ds, qi, dkb + j * DK.s2, hs);         // dk_j += ds_j q_i
          axpy(p[j], gi, dvb + j * DV.s2, hs);       // dv_j += p_j g_i
        }
      }
    }
  });
}

// Causal softmax over n_rows rows of Tk (rows addressed through StridedRows, last dim
// contiguous; in and out may alias): row r's valid length is L = q_offset + (r % Tq) + 1.
static inline void causal_softmax_rows(const float* in, const StridedRows& in_rows, float* out,
                                       const StridedRows& out_rows, int64_t n_rows, int64_t Tq,
                                       int64_t Tk, int64_t q_offset) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(Tk, 1));
  at::parallel_for(0, n_rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* x = in + in_rows.offset(r);
      float* y = out + out_rows.offset(r);
      const int64_t L = q_offset + (r % Tq) + 1;
      const float m = row_max(x, L);
      const float s = exp_sub_sum(x, y, L, m);
      scale_inplace(y, L, 1.0f / s);
      // masked keys get probability 0; a NaN row (sum NaN) is NaN throughout, as
      // torch.softmax of the -inf-masked row is
      if (L < Tk) std::fill(y + L, y + Tk, std::isnan(s) ? NAN : 0.f);
    }
  });
}

}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
