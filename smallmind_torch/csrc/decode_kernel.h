// Fused decode kernels of one ISA (no include guard: kernels.h includes this file once per
// ISA): one GPT-2 block for one new token per sequence (decode_block_) and the whole model's
// decode step (decode_step_), the ops of decode.cpp, which checks their arguments.
//
// Threads: the caller's team of one OpenMP parallel region does everything. Each stage splits
// its work into one contiguous range per thread (output columns of a matrix-vector product,
// or heads), so every thread streams one contiguous run of each weight matrix, which the
// hardware prefetchers follow far better than chunks handed out in turn (those interleave
// the two threads' streams and restart the prefetchers at every chunk); an `omp barrier`
// separates stages that read what the previous one wrote. Two choices save barriers:
// LayerNorm of the (B, C) residual is tiny, so every thread computes its own copy instead of
// waiting for one; and the unit of the attention stage is a head, which computes its own q, k,
// v columns of c_attn and then attends, so no barrier separates the two. Per layer: 4 barriers
// (none with one thread), no fork / join. Results do not depend on the thread count or the
// split (each output element is computed by one thread, always in the same order).

namespace smallmind {
namespace SMALLMIND_ISA_NS {
namespace decode {

// A block's parameters by name (ln_1_w, c_attn_w, ...) and its matrices (kQ8Params): the
// generated decode_layout.h.
using namespace ::smallmind::decode_layout;

// The naive loop: decode_block (below) on float32 weights, one step after the other on the
// naive loops of the other kernel headers, for reading and for the tests (naive.cpp). x (B, C)
// in place; row `pos` of the caches written.
static inline void decode_block_naive(const DecodeDims& d, const DecodeLayer& layer, int64_t pos,
                                      float eps, float* x) {
  const int64_t B = d.B, C = d.C, hs = d.hs;
  const float* const* p = layer.p;
  std::vector<float> h(B * C), qkv(B * 3 * C), y(B * C), fc(B * 4 * C);
  auto linear = [&](const float* a, int64_t K, int m, int64_t N, float* out) {  // matrix m
    gemm::sgemm_naive(B, N, K, a, K, 1, p[kQ8Params[m]], 1, K, out, N, p[kQ8Biases[m]]);
  };
  auto add = [&](const float* t) { for (int64_t i = 0; i < B * C; ++i) x[i] += t[i]; };
  // attention: h = LN1(x); q, k, v = c_attn(h); cache[b, head, pos] = k, v;
  // y = softmax(q K^T / sqrt(hs)) V; x += attn.c_proj(y)
  layer_norm_naive(x, B, C, p[ln_1_w], p[ln_1_b], eps, h.data());
  linear(h.data(), C, 0, 3 * C, qkv.data());
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t hd = 0; hd < d.nh; ++hd) {
      const int64_t at = (b * d.nh + hd) * d.S * hs;
      const float* q = qkv.data() + b * 3 * C + hd * hs;
      std::copy(q + C, q + C + hs, layer.k_cache + at + pos * hs);
      std::copy(q + 2 * C, q + 2 * C + hs, layer.v_cache + at + pos * hs);
      attention_naive(q, layer.k_cache + at, layer.v_cache + at, 1, 1, pos + 1, hs, pos,
                      y.data() + b * C + hd * hs);
    }
  }
  linear(y.data(), C, 1, C, h.data());
  add(h.data());
  // MLP: h = LN2(x); x += mlp.c_proj(gelu_tanh(c_fc(h)))
  layer_norm_naive(x, B, C, p[ln_2_w], p[ln_2_b], eps, h.data());
  linear(h.data(), C, 2, 4 * C, fc.data());
  for (float& v : fc)  // gelu_tanh(v) = 0.5 v (1 + tanh(sqrt(2/pi) (v + 0.044715 v^3)))
    v = 0.5f * v * (1.0f + std::tanh(0.7978845608f * (v + 0.044715f * v * v * v)));
  linear(fc.data(), 4 * C, 3, C, h.data());
  add(h.data());
}

// This thread's share [*b, *e) of n items: contiguous, split at multiples of `align` (the
// widest vector, for columns) so the ranges of the threads are balanced and aligned.
static inline void thread_range(int64_t n, int64_t align, int tid, int nth, int64_t* b,
                                int64_t* e) {
  const int64_t units = (n + align - 1) / align;
  *b = std::min(n, units * tid / nth * align);
  *e = std::min(n, units * (tid + 1) / nth * align);
}

// out[i*ldo + j] (=, or += if accumulate) dot(a_i, w_j) + bias[j], for rows i < M of a (M, K)
// and columns j in [j0, j1) of w (N, K) row-major (F.linear on a column range). One sequence:
// one weight row after the other, a single sequential stream, which the prefetchers follow
// best. Several: columns outer, 8 at a time, rows inner, so the 8 weight rows stay in L1 / L2
// while every sequence reads them and the weights stream from memory once whatever M is.
static inline void gemv_cols(const float* a, int64_t M, int64_t K, const float* w,
                             const float* bias, int64_t j0, int64_t j1, float* out, int64_t ldo,
                             bool accumulate) {
  auto emit = [&](int64_t i, int64_t j, float t) {
    const float v = t + (bias ? bias[j] : 0.f);
    float* o = out + i * ldo + j;
    *o = accumulate ? *o + v : v;
  };
  if (M == 1) {
    for (int64_t j = j0; j < j1; ++j) emit(0, j, dot(a, w + j * K, K));
    return;
  }
  float t[8];
  int64_t j = j0;
  for (; j + 8 <= j1; j += 8) {
    const float* wj = w + j * K;
    int64_t i = 0;
    for (; i + 2 <= M; i += 2) {
      for (int half = 0; half < 2; ++half) {
        gemm::dot_2x4(a + i * K, a + (i + 1) * K, wj + half * 4 * K, K, K, t);
        for (int c = 0; c < 4; ++c) {
          emit(i, j + half * 4 + c, t[c]);
          emit(i + 1, j + half * 4 + c, t[4 + c]);
        }
      }
    }
    if (i < M)
      for (int c = 0; c < 8; ++c) emit(i, j + c, dot(a + i * K, wj + c * K, K));
  }
  for (; j < j1; ++j)
    for (int64_t i = 0; i < M; ++i) emit(i, j, dot(a + i * K, w + j * K, K));
}

// The input rows of a matrix with int8 activations, prepared (w8a8: prepare_w8a8_rows; int4:
// prepare_w4a8_rows) by this thread into its own scratch (a few KiB: cheaper than a barrier),
// once for every call of the matrix that reads them: c_attn is called once per head and per
// q, k, v.
struct Int8Rows {
  const int8_t* q = nullptr;
  const float* s = nullptr;
  W4A8Rows q4{};  // int4 weights' layout
};

static inline Int8Rows prepare_input(const float* a, int64_t M, int64_t K, bool int4) {
  static thread_local Scratch scratch;
  Int8Rows rows;
  if (int4) {
    rows.q4 = prepare_w4a8_rows(a, M, K, scratch.get(w4a8_scratch_floats(M, K)));
    return rows;
  }
  float* s = scratch.get(size_t(M + (M * K + 3) / 4));
  auto* q = reinterpret_cast<int8_t*>(s + M);
  prepare_w8a8_rows(a, M, K, q, s);
  rows.q = q;
  rows.s = s;
  return rows;
}

// gemv_cols on int8 weights: with int8 activations (w8a8) on the prepared rows `a8` (prepared
// here when null), else gemv_cols_q8 on the float rows `a`.
static inline void gemv_cols_int8(bool int8_activations, const float* a, const Int8Rows* a8,
                                  int64_t M, int64_t K, const int8_t* w, const float* scale,
                                  const float* bias, int64_t j0, int64_t j1, float* out,
                                  int64_t ldo, bool accumulate) {
  if (!int8_activations) {
    gemv_cols_q8(a, M, K, w, scale, bias, j0, j1, out, ldo, accumulate);
    return;
  }
  const Int8Rows rows = a8 ? *a8 : prepare_input(a, M, K, false);
  gemv_cols_w8a8(rows.q, rows.s, M, K, w, scale, bias, j0, j1, out, ldo, accumulate);
}

// gemv_cols on int4 weights (packed w, scales of groups of G), on the prepared rows `a8`
// (prepared here when null).
static inline void gemv_cols_int4(const float* a, const Int8Rows* a8, int64_t M, int64_t K,
                                  const uint8_t* w, const float* scales, int64_t G,
                                  const float* bias, int64_t j0, int64_t j1, float* out,
                                  int64_t ldo, bool accumulate) {
  const Int8Rows rows = a8 ? *a8 : prepare_input(a, M, K, true);
  gemv_cols_w4a8(rows.q4, M, K, w, scales, G, bias, j0, j1, out, ldo, accumulate);
}

// Matrix m of a block (0 c_attn, 1 attn.c_proj, 2 c_fc, 3 mlp.c_proj) on columns [j0, j1):
// its int4 or int8 form when the layer has one (a8: the rows already prepared for int8
// activations, or null), else the float32 weight.
static inline void layer_gemv(const DecodeLayer& layer, int m, const float* a, int64_t M,
                              int64_t K, int64_t j0, int64_t j1, float* out, int64_t ldo,
                              bool accumulate, const Int8Rows* a8 = nullptr) {
  const float* bias = layer.p[kQ8Biases[m]];
  if (layer.q4[m])
    gemv_cols_int4(a, a8, M, K, layer.q4[m], layer.q4s[m], layer.q4_group, bias, j0, j1, out,
                   ldo, accumulate);
  else if (layer.q[m])
    gemv_cols_int8(layer.int8_activations, a, a8, M, K, layer.q[m], layer.qs[m], bias, j0, j1,
                   out, ldo, accumulate);
  else
    gemv_cols(a, M, K, layer.p[kQ8Params[m]], bias, j0, j1, out, ldo, accumulate);
}

// One (sequence b, head hd): write this token's k and v (from row b of qkv) into the cache at
// `pos`, then y_h = softmax(q_h K_h[0..pos]^T / sqrt(hs)) V_h[0..pos]. att: pos + 1 floats.
static inline void attend_unit(const float* qkv_b, const DecodeDims& d, int64_t b, int64_t hd,
                               int64_t pos, float* k_cache, float* v_cache, float* att,
                               float* y_b) {
  const int64_t C = d.C, hs = d.hs, L = pos + 1;
  const int64_t base = (b * d.nh + hd) * d.S * hs;
  float* keys = k_cache + base;
  float* values = v_cache + base;
  std::copy(qkv_b + C + hd * hs, qkv_b + C + (hd + 1) * hs, keys + pos * hs);
  std::copy(qkv_b + 2 * C + hd * hs, qkv_b + 2 * C + (hd + 1) * hs, values + pos * hs);
  block_scores(qkv_b + hd * hs, keys, hs, L, hs, att);              // att = q K^T
  scale_inplace(att, L, 1.0f / std::sqrt(static_cast<float>(hs)));  //       / sqrt(hs)
  const float m = row_max(att, L);                                  // softmax
  const float s = exp_sub_sum(att, att, L, m);
  float* y = y_b + hd * hs;
  std::fill(y, y + hs, 0.f);
  block_accumulate(att, values, hs, L, hs, y);                      // y = att V
  scale_inplace(y, hs, 1.0f / s);
}

// A barrier of the team; none is needed by a team of one.
static inline void team_barrier(int nth) {
  if (nth > 1) {
#pragma omp barrier
  }
}

// body(tid, nth) on a team of nt threads: one OpenMP parallel region, or a plain call for a
// team of one (no region to enter).
template <class Body>
static inline void run_team(int nt, const Body& body) {
  if (nt <= 1) {
    body(0, 1);
    return;
  }
#pragma omp parallel num_threads(nt)
  body(omp_get_thread_num(), omp_get_num_threads());
}

// Per-call scratch shared by the team: allocated (grown) by the calling thread before the
// parallel region, reused by later calls.
struct Shared {
  float* qkv;   // (B, 3C)
  float* y;     // (B, C) attention output
  float* fc;    // (B, 4C)
};

// Per-thread scratch: its own LayerNorm output and attention scores.
static inline float* thread_scratch(size_t n) {
  static thread_local Scratch s;
  return s.get(n);
}

// The attention of one (sequence b, head hd) for its T rows (b * T + t) in order: row t writes
// its k, v at pos + t and attends over 0 .. pos + t, which is causal attention, since the keys
// row t reads were written by rows <= t. att: pos + T floats.
static inline void attend_rows(const DecodeDims& d, const DecodeLayer& layer, int64_t b,
                               int64_t hd, int64_t pos, const float* qkv, float* att,
                               float* y) {
  for (int64_t t = 0; t < d.T; ++t) {
    const int64_t r = b * d.T + t;
    attend_unit(qkv + r * 3 * d.C, d, b, hd, pos + t, layer.k_cache, layer.v_cache, att,
                y + r * d.C);
  }
}

// One block for the residual x (B * T rows of C), in place, by the whole team (every thread
// calls it). h: this thread's (B * T, C) LayerNorm buffer; att: its S scores.
static inline void block_layer(const DecodeDims& d, const DecodeLayer& layer, int64_t pos,
                               float eps, float* x, const Shared& sh, float* h, float* att,
                               int tid, int nth) {
  const int64_t M = d.B * d.T, C = d.C, hs = d.hs;
  const float* const* p = layer.p;
  int64_t j0, j1;
  // attention, one head at a time: h = LN1(x); q, k, v = c_attn(h) (this head's columns);
  // cache[b, head, pos + t] = k, v; y = softmax(q K^T / sqrt(hs)) V
  layer_norm_rows(x, M, C, p[ln_1_w], p[ln_1_b], eps, h);
  thread_range(d.nh, 1, tid, nth, &j0, &j1);
  Int8Rows h8{};  // w8a8, int4: h prepared once for every c_attn call below
  const bool prepare = (layer.q4[0] || (layer.q[0] && layer.int8_activations)) && j0 < j1;
  if (prepare) h8 = prepare_input(h, M, C, layer.q4[0] != nullptr);
  for (int64_t hd = j0; hd < j1; ++hd) {
    for (int64_t part = 0; part < 3; ++part) {  // q, k, v
      const int64_t c0 = part * C + hd * hs;
      layer_gemv(layer, 0, h, M, C, c0, c0 + hs, sh.qkv, 3 * C, false, prepare ? &h8 : nullptr);
    }
    for (int64_t b = 0; b < d.B; ++b) attend_rows(d, layer, b, hd, pos, sh.qkv, att, sh.y);
  }
  team_barrier(nth);
  // x += attn.c_proj(y)
  thread_range(C, 16, tid, nth, &j0, &j1);
  layer_gemv(layer, 1, sh.y, M, C, j0, j1, x, C, true);
  team_barrier(nth);
  // MLP: h = LN2(x); fc = gelu(c_fc(h)); x += mlp.c_proj(fc)
  layer_norm_rows(x, M, C, p[ln_2_w], p[ln_2_b], eps, h);
  thread_range(4 * C, 16, tid, nth, &j0, &j1);
  layer_gemv(layer, 2, h, M, C, j0, j1, sh.fc, 4 * C, false);
  for (int64_t r = 0; r < M; ++r) gelu_tanh_inplace(sh.fc + r * 4 * C + j0, j1 - j0);
  team_barrier(nth);
  thread_range(C, 16, tid, nth, &j0, &j1);
  layer_gemv(layer, 3, sh.fc, M, 4 * C, j0, j1, x, C, true);
  team_barrier(nth);
}

// The same block on the blocked GEMM, for B * T >= kDecodeGemmRows rows of float32 weights: each
// matrix one sgemm (its own parallel region of nthreads), the row-wise stages in between
// (LayerNorm, attention, GELU, residual adds) each one region of the team. h: shared (M, C).
static inline void block_layer_gemm(const DecodeDims& d, const DecodeLayer& layer, int64_t pos,
                                    float eps, float* x, const Shared& sh, float* h,
                                    int nthreads) {
  const int64_t M = d.B * d.T, C = d.C;
  const float* const* p = layer.p;
  auto rows = [&](int64_t n, auto&& body) {  // body(r0, r1) on this thread's rows of n
    run_team(nthreads, [&](int tid, int nth) {
      int64_t r0, r1;
      thread_range(n, 1, tid, nth, &r0, &r1);
      if (r0 < r1) body(r0, r1, tid);
    });
  };
  auto linear = [&](const float* a, int64_t K, int m, int64_t N, float* out) {  // matrix m
    gemm::sgemm(M, N, K, a, K, 1, p[kQ8Params[m]], 1, K, out, N, p[kQ8Biases[m]], nthreads,
                layer.packed[m]);
  };
  auto add_h = [&](int64_t r0, int64_t r1, int) {  // x += h
    for (int64_t i = r0 * C; i < r1 * C; ++i) x[i] += h[i];
  };
  // attention: h = LN1(x); qkv = c_attn(h); per (sequence, head): the causal rows
  rows(M, [&](int64_t r0, int64_t r1, int) {
    layer_norm_rows(x + r0 * C, r1 - r0, C, p[ln_1_w], p[ln_1_b], eps, h + r0 * C);
  });
  linear(h, C, 0, 3 * C, sh.qkv);
  rows(d.B * d.nh, [&](int64_t u0, int64_t u1, int) {
    float* att = thread_scratch(size_t(d.S));
    for (int64_t u = u0; u < u1; ++u)
      attend_rows(d, layer, u / d.nh, u % d.nh, pos, sh.qkv, att, sh.y);
  });
  // x += attn.c_proj(y)
  linear(sh.y, C, 1, C, h);
  rows(M, add_h);
  // MLP: h = LN2(x); fc = gelu(c_fc(h)); x += mlp.c_proj(fc)
  rows(M, [&](int64_t r0, int64_t r1, int) {
    layer_norm_rows(x + r0 * C, r1 - r0, C, p[ln_2_w], p[ln_2_b], eps, h + r0 * C);
  });
  linear(h, C, 2, 4 * C, sh.fc);
  rows(M, [&](int64_t r0, int64_t r1, int) {
    gelu_tanh_inplace(sh.fc + r0 * 4 * C, (r1 - r0) * 4 * C);
  });
  linear(sh.fc, 4 * C, 3, C, h);
  rows(M, add_h);
}

// Scratch of the calling thread for a call with B sequences of C, plus `extra_floats`. Every
// region starts on a 64-byte line, so threads writing neighbouring column ranges of one never
// share a cache line at its start.
static inline Shared shared_scratch(int64_t B, int64_t C, int64_t extra_floats, float** extra) {
  static thread_local Scratch floats;
  auto lines = [](int64_t n) { return (n + 15) / 16 * 16; };
  const int64_t qkv = lines(B * 3 * C), y = lines(B * C), fc = lines(B * 4 * C);
  float* f = floats.get(size_t(qkv + y + fc + lines(extra_floats)));
  *extra = f + qkv + y + fc;
  return Shared{f, f + qkv, f + qkv + y};
}

// Threads for a call that reads `weight_bytes` of weights: below ~512 KiB one core is done in
// tens of microseconds and the barriers of a team would cost more than they save.
static inline int team_size(double weight_bytes, int nthreads) {
  return weight_bytes < 512.0 * 1024.0 ? 1 : std::max(1, nthreads);
}

// decode_block_: one block for x (B, C) in place.
static inline void decode_block(const DecodeDims& d, const DecodeLayer& layer, int64_t pos,
                                float eps, float* x, int nthreads) {
  float* unused;
  const Shared sh = shared_scratch(d.B, d.C, 0, &unused);
  const int nt = team_size(12.0 * double(d.C) * double(d.C) * sizeof(float), nthreads);
  run_team(nt, [&](int tid, int nth) {
    float* h = thread_scratch(size_t(d.B * d.C + d.S));
    block_layer(d, layer, pos, eps, x, sh, h, h + d.B * d.C, tid, nth);
  });
}

// argmax bookkeeping: the first NaN wins, else the largest value, ties to the lower index
// (torch.argmax's rule), for the (value, index) candidates of the threads' ranges.
static inline bool better(float v, int64_t i, float bv, int64_t bi) {
  if (std::isnan(bv)) return std::isnan(v) && i < bi;
  if (std::isnan(v)) return true;
  return v > bv || (v == bv && i < bi);
}

// The argmax of row[j0, j1) by that rule: the (NaN-aware) maximum, then its first index.
static inline void argmax_range(const float* row, int64_t j0, int64_t j1, float* val,
                                int64_t* idx) {
  const float m = row_max(row + j0, j1 - j0);
  int64_t j = j0;
  if (std::isnan(m)) {
    while (!std::isnan(row[j])) ++j;
  } else {
    while (row[j] != m) ++j;
  }
  *val = m;
  *idx = j;
}

// x (B * T, C) = wte[token of row b * T + t] + wpe[pos + t], for rows [r0, r1).
static inline void embed_rows(const DecodeStep& s, int64_t r0, int64_t r1, float* x) {
  const int64_t C = s.d.C, T = s.d.T;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / T, t = r % T;
    const float* te = s.wte + s.tokens[b * s.token_stride + t * s.token_step] * C;
    const float* pe = s.wpe + (s.pos + t) * C;
    for (int64_t c = 0; c < C; ++c) x[r * C + c] = te[c] + pe[c];
  }
}

// h (R, C) = ln_f of the rows of x whose logits are asked for: every row (R = B * T), or the
// last of each sequence (R = B); rows [i0, i1) of h.
static inline void ln_f_rows(const DecodeStep& s, const float* x, int64_t i0, int64_t i1,
                             float* h) {
  const int64_t C = s.d.C, T = s.d.T;
  if (s.all_logits || T == 1) {
    layer_norm_rows(x + i0 * C, i1 - i0, C, s.ln_f_w, s.ln_f_b, s.eps, h + i0 * C);
    return;
  }
  for (int64_t i = i0; i < i1; ++i)
    layer_norm_rows(x + (i * T + T - 1) * C, 1, C, s.ln_f_w, s.ln_f_b, s.eps, h + i * C);
}

// decode_step_ on the blocked GEMM (float32 weights, B * T >= kDecodeGemmRows rows: a prompt or a
// long verify): every block by block_layer_gemm, then the lm head by sgemm and the argmax of
// each row of logits by the thread that owns the row.
static inline void decode_step_gemm(const DecodeStep& s, int nthreads) {
  const DecodeDims& d = s.d;
  const int64_t M = d.B * d.T, C = d.C, V = s.vocab, R = s.all_logits ? M : d.B;
  const int64_t x_floats = (M * C + 15) / 16 * 16;
  float* x;
  const Shared sh = shared_scratch(M, C, 2 * x_floats, &x);
  float* h = x + x_floats;  // (M, C): LayerNorm outputs and the projections' results
  auto rows = [&](int64_t n, auto&& body) {
    run_team(nthreads, [&](int tid, int nth) {
      int64_t r0, r1;
      thread_range(n, 1, tid, nth, &r0, &r1);
      if (r0 < r1) body(r0, r1);
    });
  };
  rows(M, [&](int64_t r0, int64_t r1) { embed_rows(s, r0, r1, x); });
  for (int64_t l = 0; l < s.n_layer; ++l)  // every block
    block_layer_gemm(d, s.layers[l], s.pos, s.eps, x, sh, h, nthreads);
  rows(R, [&](int64_t r0, int64_t r1) { ln_f_rows(s, x, r0, r1, h); });
  gemm::sgemm(R, V, C, h, C, 1, s.wte, 1, C, s.logits, V, nullptr, nthreads, s.head_packed);
  rows(R, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float val;
      argmax_range(s.logits + r * V, 0, V, &val, s.next_tokens + r);
    }
  });
}

// decode_step_: the whole model for T new tokens per sequence (T = 1: the decode step,
// llama2.c's `forward`; a prompt's prefill; speculative decoding's verify): embeddings, every
// block, ln_f, the tied lm head into logits (of every row, or of each sequence's last), and
// the argmax of each row. Float32 weights and B * T >= kDecodeGemmRows rows: decode_step_gemm;
// else one region of the team.
static inline void decode_step(const DecodeStep& s, int nthreads) {
  const DecodeDims& d = s.d;
  const int64_t B = d.B, M = B * d.T, C = d.C, V = s.vocab, R = s.all_logits ? M : B;
  if (s.gemm) {
    decode_step_gemm(s, nthreads);
    return;
  }
  const double weight_bytes =
      (12.0 * double(C) * double(C) * double(s.n_layer) + double(V) * double(C)) * sizeof(float);
  const int nt = team_size(weight_bytes * double(d.T), nthreads);
  // shared: the residual x (M, C), then the (value, index) argmax candidates of every thread
  const int64_t x_floats = (M * C + 15) / 16 * 16;
  float* x;
  const Shared sh = shared_scratch(M, C, x_floats + 3 * int64_t(nt) * R, &x);
  int64_t* best_idx = reinterpret_cast<int64_t*>(x + x_floats);  // (nt, R), 64-byte aligned
  float* best_val = x + x_floats + 2 * nt * R;                   // (nt, R)
  run_team(nt, [&](int tid, int nth) {
    float* h = thread_scratch(size_t(M * C + d.S));  // this thread's LayerNorm output
    float* att = h + M * C;                          // and attention scores
    if (tid == 0) embed_rows(s, 0, M, x);
    team_barrier(nth);
    for (int64_t l = 0; l < s.n_layer; ++l)  // every block
      block_layer(d, s.layers[l], s.pos, s.eps, x, sh, h, att, tid, nth);
    // h = ln_f(x) (the rows asked for); logits = h wte^T; each thread's best (value, index)
    ln_f_rows(s, x, 0, R, h);
    float* my_val = best_val + tid * R;
    int64_t* my_idx = best_idx + tid * R;
    int64_t j0, j1;
    thread_range(V, 16, tid, nth, &j0, &j1);
    if (s.head_q4)
      gemv_cols_int4(h, nullptr, R, C, s.head_q4, s.head_q4_scale, s.q4_group, nullptr, j0, j1,
                     s.logits, V, false);
    else if (s.head_q)
      gemv_cols_int8(s.int8_activations, h, nullptr, R, C, s.head_q, s.head_scale, nullptr, j0,
                     j1, s.logits, V, false);
    else
      gemv_cols(h, R, C, s.wte, nullptr, j0, j1, s.logits, V, false);
    for (int64_t r = 0; r < R; ++r) {
      my_val[r] = -INFINITY;  // an empty range: a candidate that loses every comparison
      my_idx[r] = V;
      if (j0 < j1) argmax_range(s.logits + r * V, j0, j1, my_val + r, my_idx + r);
    }
    team_barrier(nth);
    // next_tokens[r] = argmax over every thread's candidate
    if (tid == 0) {
      for (int64_t r = 0; r < R; ++r) {
        float bv = best_val[r];
        int64_t bi = best_idx[r];
        for (int t = 1; t < nth; ++t)
          if (better(best_val[t * R + r], best_idx[t * R + r], bv, bi)) {
            bv = best_val[t * R + r];
            bi = best_idx[t * R + r];
          }
        s.next_tokens[r] = bi;
      }
    }
  });
}

}  // namespace decode
}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
