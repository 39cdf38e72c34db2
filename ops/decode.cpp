// smallmind::decode_block_: one whole GPT-2 block for one decode token, in one C++ call.
//
//   decode_block_(Tensor(a!) x, ln1_w, ln1_b, attn_w, attn_b, attn_proj_w, attn_proj_b,
//                 ln2_w, ln2_b, fc_w, fc_b, mlp_proj_w, mlp_proj_b,
//                 Tensor(b!) k_cache, Tensor(c!) v_cache, int pos, int n_head, float eps) -> ()
//
// x (B, C): the residual stream of one new token per sequence, all at absolute position
// `pos`; updated in place. Weights in nn.Linear layout (out, in). k_cache / v_cache
// (maxB, nh, S, hs), B <= maxB, pos < S; row pos of each (b, head) is written. Per row b:
//   h = LN1(x); qkv = h W_attn^T + b_attn; q, k, v = the 3 C-chunks, each (nh, hs)
//   k_cache[b, :, pos] = k; v_cache[b, :, pos] = v
//   y_h = softmax(q_h K_h[0..pos]^T / sqrt(hs)) V_h[0..pos]
//   x += y W_proj^T + b_proj
//   h = LN2(x); f = gelu_tanh(h W_fc^T + b_fc); x += f W_mlp_proj^T + b_mlp_proj
// A decode step of the seed model is ~150 small ATen / custom op calls at ~7-10 us of
// dispatch each; this op replaces a block's ~35 of them with one. Scratch lives in
// thread_local buffers (no allocation after the first call); the GEMVs run on the small-M
// path of gemm_kernel.h (threads as sgemm decides), LayerNorm on the row kernels of
// layer_norm_row.h, attention on vec_math.h. Inference only (no autograd formula).
#include <torch/library.h>

#include <algorithm>
#include <cmath>

#include "common.h"
#include "gemm_kernel.h"
#include "layer_norm_row.h"
#include "vec_math.h"

namespace smallmind {
namespace {

constexpr const char* kOp = "decode_block_";

void check_param(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  check_cpu_float32(t, kOp, name);
  check_shape(t, shape, kOp, name);
  check_contiguous(t, kOp, name);
}

// out (M x N) = a (M x K) @ w^T + bias, w (N, K) row-major.
inline void gemv_rows(int64_t M, int64_t N, int64_t K, const float* a, const float* w,
                      const float* bias, float* out, int nthreads) {
  gemm::sgemm(M, N, K, a, K, 1, w, 1, K, out, N, bias, nthreads);
}

inline void add_inplace(float* x, const float* y, int64_t n) {
  int64_t j = 0;
#if SMALLMIND_AVX2
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(x + j, _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
#endif
  for (; j < n; ++j) x[j] += y[j];
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
//              = x / (1 + exp(-2u))        (no cancellation near u = 0, none at large |u|)
inline void gelu_tanh_inplace(float* x, int64_t n) {
  constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
  constexpr float kA = 0.044715f;
  int64_t j = 0;
#if SMALLMIND_AVX2
  const __m256 m2c = _mm256_set1_ps(-2.0f * kC), va = _mm256_set1_ps(kA);
  const __m256 one = _mm256_set1_ps(1.0f);
  for (; j + 8 <= n; j += 8) {
    const __m256 v = _mm256_loadu_ps(x + j);
    const __m256 inner = _mm256_fmadd_ps(_mm256_mul_ps(va, v), _mm256_mul_ps(v, v), v);
    const __m256 e = vec::exp256(_mm256_mul_ps(m2c, inner));
    _mm256_storeu_ps(x + j, _mm256_div_ps(v, _mm256_add_ps(one, e)));
  }
#endif
  for (; j < n; ++j) {
    const float v = x[j];
    const float inner = v + kA * v * v * v;
    x[j] = v / (1.0f + std::exp(-2.0f * kC * inner));
  }
}

// One (sequence, head): y (hs) = softmax(q . K[0..L) * scale) V[0..L); scores: L floats.
inline void attend_one(const float* q, const float* K, const float* V, int64_t L, int64_t hs,
                       float scale, float* scores, float* y) {
  for (int64_t j = 0; j < L; ++j) scores[j] = vec::dot(q, K + j * hs, hs) * scale;
  const float m = vec::row_max(scores, L);
  const float s = vec::exp_sub_sum(scores, scores, L, m);
  std::fill(y, y + hs, 0.f);
  for (int64_t j = 0; j < L; ++j) vec::axpy(scores[j], V + j * hs, y, hs);
  vec::scale_inplace(y, hs, 1.0f / s);
}

void decode_block_cpu(at::Tensor& x, const at::Tensor& ln1_w, const at::Tensor& ln1_b,
                      const at::Tensor& attn_w, const at::Tensor& attn_b,
                      const at::Tensor& attn_proj_w, const at::Tensor& attn_proj_b,
                      const at::Tensor& ln2_w, const at::Tensor& ln2_b, const at::Tensor& fc_w,
                      const at::Tensor& fc_b, const at::Tensor& mlp_proj_w,
                      const at::Tensor& mlp_proj_b, at::Tensor& k_cache, at::Tensor& v_cache,
                      int64_t pos, int64_t n_head, double eps) {
  // ---- validation ----
  check_cpu_float32(x, kOp, "x");
  check_dim(x, 2, kOp, "x");
  check_contiguous(x, kOp, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(B >= 1 && C >= 1, "smallmind::", kOp, ": 'x' must be (B, C) with B, C >= 1, got ",
              x.sizes());
  TORCH_CHECK(n_head >= 1 && C % n_head == 0, "smallmind::", kOp, ": n_head (", n_head,
              ") must be positive and divide C = x.size(1) = ", C);
  TORCH_CHECK(eps >= 0.0, "smallmind::", kOp, ": eps must be >= 0, got ", eps);
  const int64_t nh = n_head, hs = C / n_head, H = 4 * C;
  check_param(ln1_w, {C}, "ln1_w");
  check_param(ln1_b, {C}, "ln1_b");
  check_param(attn_w, {3 * C, C}, "attn_w");
  check_param(attn_b, {3 * C}, "attn_b");
  check_param(attn_proj_w, {C, C}, "attn_proj_w");
  check_param(attn_proj_b, {C}, "attn_proj_b");
  check_param(ln2_w, {C}, "ln2_w");
  check_param(ln2_b, {C}, "ln2_b");
  check_param(fc_w, {H, C}, "fc_w");
  check_param(fc_b, {H}, "fc_b");
  check_param(mlp_proj_w, {C, H}, "mlp_proj_w");
  check_param(mlp_proj_b, {C}, "mlp_proj_b");
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&k_cache, "k_cache"},
                                {&v_cache, "v_cache"}}) {
    check_cpu_float32(*t, kOp, name);
    check_dim(*t, 4, kOp, name);
    check_contiguous(*t, kOp, name);
    TORCH_CHECK(t->size(1) == nh && t->size(3) == hs, "smallmind::", kOp, ": '", name,
                "' must be (maxB, n_head, S, head_dim) = (maxB, ", nh, ", S, ", hs,
                "), got ", t->sizes());
  }
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "smallmind::", kOp,
              ": k_cache and v_cache must have the same shape, got ", k_cache.sizes(), " and ",
              v_cache.sizes());
  const int64_t maxB = k_cache.size(0), S = k_cache.size(2);
  TORCH_CHECK(B <= maxB, "smallmind::", kOp, ": batch B = ", B,
              " exceeds the KV cache's max batch ", maxB);
  TORCH_CHECK(pos >= 0 && pos < S, "smallmind::", kOp, ": pos must lie in [0, ", S - 1,
              "] (the cache holds S = ", S, " positions), got ", pos);

  // ---- scratch (thread_local, grows once) ----
  static thread_local gemm::Scratch scratch;
  float* h = scratch.get(size_t(B) * size_t(C + 3 * C + C + C + H));
  float* qkv = h + B * C;     // (B, 3C)
  float* y = qkv + B * 3 * C; // (B, C)
  float* proj = y + B * C;    // (B, C)
  float* fc = proj + B * C;   // (B, 4C)

  const int nt = num_threads();
  const float feps = static_cast<float>(eps);
  float* xp = x.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t L = pos + 1;
  float shift, md, rstd;

  // ---- attention ----
  for (int64_t b = 0; b < B; ++b) {
    ln_row::row_moments(xp + b * C, C, feps, shift, md, rstd);
    ln_row::row_normalize(xp + b * C, h + b * C, ln1_w.data_ptr<float>(),
                          ln1_b.data_ptr<float>(), C, shift, md, rstd);
  }
  gemv_rows(B, 3 * C, C, h, attn_w.data_ptr<float>(), attn_b.data_ptr<float>(), qkv, nt);
  for (int64_t b = 0; b < B; ++b) {
    const float* kb = qkv + b * 3 * C + C;
    const float* vb = kb + C;
    for (int64_t hd = 0; hd < nh; ++hd) {
      const int64_t off = ((b * nh + hd) * S + pos) * hs;
      std::copy(kb + hd * hs, kb + (hd + 1) * hs, kc + off);
      std::copy(vb + hd * hs, vb + (hd + 1) * hs, vc + off);
    }
  }
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t units = B * nh;
  // ~2 flops per cached element read (q.k and p*v); split only when it outweighs a fork.
  const int at = (nt > 1 && double(units) * double(L) * double(hs) >= 65536.0)
                     ? int(std::min<int64_t>(nt, units)) : 1;
#pragma omp parallel for num_threads(at) if (at > 1) schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    static thread_local gemm::Scratch score_scratch;
    float* scores = score_scratch.get(size_t(L));
    const int64_t b = u / nh, hd = u % nh;
    const int64_t base = (b * nh + hd) * S * hs;
    attend_one(qkv + b * 3 * C + hd * hs, kc + base, vc + base, L, hs, scale, scores,
               y + b * C + hd * hs);
  }
  gemv_rows(B, C, C, y, attn_proj_w.data_ptr<float>(), attn_proj_b.data_ptr<float>(), proj, nt);
  add_inplace(xp, proj, B * C);

  // ---- MLP ----
  for (int64_t b = 0; b < B; ++b) {
    ln_row::row_moments(xp + b * C, C, feps, shift, md, rstd);
    ln_row::row_normalize(xp + b * C, h + b * C, ln2_w.data_ptr<float>(),
                          ln2_b.data_ptr<float>(), C, shift, md, rstd);
  }
  gemv_rows(B, H, C, h, fc_w.data_ptr<float>(), fc_b.data_ptr<float>(), fc, nt);
  gelu_tanh_inplace(fc, B * H);
  gemv_rows(B, C, H, fc, mlp_proj_w.data_ptr<float>(), mlp_proj_b.data_ptr<float>(), proj, nt);
  add_inplace(xp, proj, B * C);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def(
      "decode_block_(Tensor(a!) x, Tensor ln1_w, Tensor ln1_b, Tensor attn_w, Tensor attn_b, "
      "Tensor attn_proj_w, Tensor attn_proj_b, Tensor ln2_w, Tensor ln2_b, Tensor fc_w, "
      "Tensor fc_b, Tensor mlp_proj_w, Tensor mlp_proj_b, Tensor(b!) k_cache, "
      "Tensor(c!) v_cache, int pos, int n_head, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) { m.impl("decode_block_", &decode_block_cpu); }

}  // namespace smallmind
