// smallmind::decode_block_: one whole pre-LN GPT-2 block for one decode token per sequence,
// in one C++ call. Inference only (no autograd formula).
//
// x (B, C): the residual stream of one new token per sequence, all at absolute position
// `pos`; updated in place. params: the block's 12 tensors in the order of `Param` below,
// which is smallmind_torch/fused_decode.py's BLOCK_PARAMS (weights in nn.Linear layout
// (out, in)), all contiguous. k_cache / v_cache (maxB, nh, S, hs), B <= maxB, 0 <= pos < S;
// row `pos` of each (b, head) is written. x, the caches and the parameters must not share
// memory. Per row b:
//   h = LN1(x); q, k, v = (h c_attn_w^T + c_attn_b).split(C), each (nh, hs)
//   k_cache[b, :, pos] = k; v_cache[b, :, pos] = v
//   y_h = softmax(q_h K_h[0..pos]^T / sqrt(hs)) V_h[0..pos]
//   x += y attn_c_proj_w^T + attn_c_proj_b
//   h = LN2(x); fc = gelu_tanh(h c_fc_w^T + c_fc_b); x += fc mlp_c_proj_w^T + mlp_c_proj_b
// decode_block_cpu reads step for step like decode_block_reference in fused_decode.py, with
// the same names. Why one op: through the module path a block is a few dozen small op calls,
// each paying the dispatcher and Python; here it pays once. Scratch lives in thread_local
// buffers (no allocation after the first call); the GEMVs run on the small-M path of
// gemm_kernel.h (threads as sgemm decides), LayerNorm on the row kernels of
// layer_norm_row.h, attention on vec_math.h (NaN in a cached key reaches x, as in torch).
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common.h"
#include "gemm_kernel.h"
#include "layer_norm_row.h"
#include "simd.h"
#include "vec_math.h"

namespace smallmind {
namespace {

constexpr const char* kOp = "decode_block_";

// The parameter list, in the model's names (BLOCK_PARAMS in fused_decode.py).
enum Param : int64_t {
  ln_1_w, ln_1_b,
  c_attn_w, c_attn_b, attn_c_proj_w, attn_c_proj_b,
  ln_2_w, ln_2_b,
  c_fc_w, c_fc_b, mlp_c_proj_w, mlp_c_proj_b,
  kNumParams
};
constexpr const char* kParamNames[kNumParams] = {
    "params[0] (ln_1.weight)",        "params[1] (ln_1.bias)",
    "params[2] (attn.c_attn.weight)", "params[3] (attn.c_attn.bias)",
    "params[4] (attn.c_proj.weight)", "params[5] (attn.c_proj.bias)",
    "params[6] (ln_2.weight)",        "params[7] (ln_2.bias)",
    "params[8] (mlp.c_fc.weight)",    "params[9] (mlp.c_fc.bias)",
    "params[10] (mlp.c_proj.weight)", "params[11] (mlp.c_proj.bias)"};

std::vector<int64_t> param_shape(int64_t i, int64_t C) {
  switch (i) {
    case c_attn_w: return {3 * C, C};
    case c_attn_b: return {3 * C};
    case attn_c_proj_w: return {C, C};
    case c_fc_w: return {4 * C, C};
    case c_fc_b: return {4 * C};
    case mlp_c_proj_w: return {C, 4 * C};
    default: return {C};  // LayerNorm weights and biases, the projections' biases
  }
}

struct DecodeDims {
  int64_t B, C, nh, hs, S;
};

void check_decode_tensor(const at::Tensor& t, const char* name) {
  check_cpu_float32(t, kOp, name);
  check_contiguous(t, kOp, name);
}

DecodeDims check_decode_args(const at::Tensor& x, at::TensorList params,
                             const at::Tensor& k_cache, const at::Tensor& v_cache, int64_t pos,
                             int64_t n_head, double eps) {
  check_decode_tensor(x, "x");
  check_dim(x, 2, kOp, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(B >= 1 && C >= 1, "smallmind::", kOp, ": 'x' must be (B, C) with B, C >= 1, got ",
              x.sizes());
  TORCH_CHECK_VALUE(n_head >= 1 && C % n_head == 0, "smallmind::", kOp, ": n_head (",
                    n_head, ") must be positive and divide C = x.size(1) = ", C);
  check_eps(eps, kOp);
  TORCH_CHECK(int64_t(params.size()) == kNumParams, "smallmind::", kOp, ": 'params' must hold ",
              "the block's ", int64_t(kNumParams), " tensors in fused_decode.BLOCK_PARAMS order ",
              "(ln_1.weight, ln_1.bias, attn.c_attn.weight, ...), got ", params.size());
  for (int64_t i = 0; i < kNumParams; ++i) {
    check_decode_tensor(params[i], kParamNames[i]);
    check_shape(params[i], param_shape(i, C), kOp, kParamNames[i]);
  }
  const int64_t nh = n_head, hs = C / n_head;
  for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&k_cache, "k_cache"},
                                {&v_cache, "v_cache"}}) {
    check_decode_tensor(*t, name);
    check_dim(*t, 4, kOp, name);
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
  TORCH_CHECK_VALUE(pos >= 0 && pos < S, "smallmind::", kOp, ": pos must lie in [0, ",
                    S - 1, "] (the cache holds S = ", S, " positions), got ", pos);
  // Everything is contiguous, so extents are exact: x and the caches are written while the
  // parameters and the other caches' rows are read.
  TORCH_CHECK(!extents_intersect(x, k_cache) && !extents_intersect(x, v_cache) &&
                  !extents_intersect(k_cache, v_cache),
              "smallmind::", kOp, ": x, k_cache and v_cache must not share memory");
  for (int64_t i = 0; i < kNumParams; ++i) {
    for (const auto& [t, name] : {std::pair<const at::Tensor*, const char*>{&x, "x"},
                                  {&k_cache, "k_cache"}, {&v_cache, "v_cache"}}) {
      TORCH_CHECK(!extents_intersect(*t, params[i]), "smallmind::", kOp, ": '", name,
                  "' must not share memory with ", kParamNames[i], " (it is written in place)");
    }
  }
  return {B, C, nh, hs, S};
}

// out (M, N) = a (M, K) @ w^T + bias, w (N, K) row-major: F.linear on the GEMM's small-M path.
void linear_rows(const float* a, int64_t M, int64_t K, const float* w, const float* bias,
                 int64_t N, float* out, int nthreads) {
  gemm::sgemm(M, N, K, a, K, 1, w, 1, K, out, N, bias, nthreads);
}

// h (B, C) = F.layer_norm(x, (C,), w, b, eps), row by row.
void layer_norm_rows(const float* x, int64_t B, int64_t C, const float* w, const float* b,
                     float eps, float* h) {
  for (int64_t r = 0; r < B; ++r) {
    float shift, md, rstd;
    ln_row::row_moments(x + r * C, C, eps, shift, md, rstd);
    ln_row::row_normalize(x + r * C, h + r * C, w, b, C, shift, md, rstd);
  }
}

void add_inplace(float* x, const float* y, int64_t n) {
  int64_t j = 0;
#if SMALLMIND_AVX2
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(x + j, _mm256_add_ps(_mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
#endif
  for (; j < n; ++j) x[j] += y[j];
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
//              = x / (1 + exp(-2u))        (no cancellation near u = 0, none at large |u|)
void gelu_tanh_inplace(float* x, int64_t n) {
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

// k_cache[b, :, pos] = k; v_cache[b, :, pos] = v for b < B, from the k and v thirds of qkv.
void write_kv_cache(const float* qkv, const DecodeDims& d, int64_t pos, float* k_cache,
                    float* v_cache) {
  const int64_t C = d.C, hs = d.hs;
  for (int64_t b = 0; b < d.B; ++b) {
    const float* k = qkv + b * 3 * C + C;
    const float* v = k + C;
    for (int64_t hd = 0; hd < d.nh; ++hd) {
      const int64_t off = ((b * d.nh + hd) * d.S + pos) * hs;
      std::copy(k + hd * hs, k + (hd + 1) * hs, k_cache + off);
      std::copy(v + hd * hs, v + (hd + 1) * hs, v_cache + off);
    }
  }
}

// One (sequence, head): y (hs) = softmax(q . keys[0..L) * scale) values[0..L); att: L floats.
void attend_one(const float* q, const float* keys, const float* values, int64_t L, int64_t hs,
                float scale, float* att, float* y) {
  for (int64_t j = 0; j < L; ++j) att[j] = vec::dot(q, keys + j * hs, hs) * scale;
  const float m = vec::row_max(att, L);
  const float s = vec::exp_sub_sum(att, att, L, m);
  std::fill(y, y + hs, 0.f);
  for (int64_t j = 0; j < L; ++j) vec::axpy(att[j], values + j * hs, y, hs);
  vec::scale_inplace(y, hs, 1.0f / s);
}

// y (B, C) = softmax(q K^T / sqrt(hs)) V over positions 0..pos, every (sequence, head).
void attention_rows(const float* qkv, const DecodeDims& d, int64_t pos, const float* k_cache,
                    const float* v_cache, float* y, int nt) {
  const int64_t C = d.C, nh = d.nh, hs = d.hs, L = pos + 1;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hs));
  const int64_t units = d.B * nh;
  // ~2 flops per cached element read (q.k and p*v); split only when it outweighs a fork.
  const int threads = (nt > 1 && double(units) * double(L) * double(hs) >= 65536.0)
                          ? int(std::min<int64_t>(nt, units)) : 1;
#pragma omp parallel for num_threads(threads) if (threads > 1) schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    static thread_local Scratch att_scratch;
    float* att = att_scratch.get(size_t(L));
    const int64_t b = u / nh, hd = u % nh;
    const int64_t base = (b * nh + hd) * d.S * hs;
    attend_one(qkv + b * 3 * C + hd * hs, k_cache + base, v_cache + base, L, hs, scale, att,
               y + b * C + hd * hs);
  }
}

void decode_block_cpu(at::Tensor& x_, at::TensorList params, at::Tensor& k_cache_,
                      at::Tensor& v_cache_, int64_t pos, int64_t n_head, double eps_) {
  const DecodeDims d = check_decode_args(x_, params, k_cache_, v_cache_, pos, n_head, eps_);
  const int64_t B = d.B, C = d.C;
  const float eps = static_cast<float>(eps_);
  const int nt = num_threads();
  auto w = [&](Param i) { return params[i].const_data_ptr<float>(); };
  float* x = x_.data_ptr<float>();
  float* k_cache = k_cache_.data_ptr<float>();
  float* v_cache = v_cache_.data_ptr<float>();

  // scratch (thread_local, grows once): h (B, C), qkv (B, 3C), y (B, C), proj (B, C), fc (B, 4C)
  static thread_local Scratch scratch;
  float* h = scratch.get(size_t(B) * size_t(10 * C));
  float* qkv = h + B * C;
  float* y = qkv + B * 3 * C;
  float* proj = y + B * C;
  float* fc = proj + B * C;

  // attention
  layer_norm_rows(x, B, C, w(ln_1_w), w(ln_1_b), eps, h);                 // h = LN1(x)
  linear_rows(h, B, C, w(c_attn_w), w(c_attn_b), 3 * C, qkv, nt);         // q, k, v = c_attn(h)
  write_kv_cache(qkv, d, pos, k_cache, v_cache);                          // cache[:B, :, pos]
  attention_rows(qkv, d, pos, k_cache, v_cache, y, nt);                   // y = softmax(qK^T)V
  linear_rows(y, B, C, w(attn_c_proj_w), w(attn_c_proj_b), C, proj, nt);  // attn.c_proj(y)
  add_inplace(x, proj, B * C);                                            // x += ...
  // MLP
  layer_norm_rows(x, B, C, w(ln_2_w), w(ln_2_b), eps, h);                 // h = LN2(x)
  linear_rows(h, B, C, w(c_fc_w), w(c_fc_b), 4 * C, fc, nt);              // fc = c_fc(h)
  gelu_tanh_inplace(fc, B * 4 * C);                                       // fc = gelu(fc)
  linear_rows(fc, B, 4 * C, w(mlp_c_proj_w), w(mlp_c_proj_b), C, proj, nt);  // mlp.c_proj(fc)
  add_inplace(x, proj, B * C);                                            // x += ...
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def(
      "decode_block_(Tensor(a!) x, Tensor[] params, Tensor(b!) k_cache, Tensor(c!) v_cache, "
      "int pos, int n_head, float eps) -> ()");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) { m.impl("decode_block_", &decode_block_cpu); }

}  // namespace smallmind
