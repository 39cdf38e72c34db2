// The vector layer of one ISA and the row helpers written on it (no include guard: kernels.h
// includes this file once per ISA, see there; everything here lives in SMALLMIND_ISA_NS).
//
// Layer 1, per ISA: V, a vector of W floats (__m512 and 16, __m256 and 8, float and 1), and the
// handful of operations the kernels use: vzero / vset1, vload / vstore (unaligned), vload_i8
// and vload_bf16 (W int8 or bfloat16 -> W floats), arithmetic, vfmadd (a * b + c), vfnmadd
// (c - a * b), horizontal vhsum / vhmax, NaN masks, vexp, vhsum8. vmin / vmax keep the x86 rule (when either operand is NaN the second is
// returned) on every ISA, plain C++ included. Writing the kernels once on this layer keeps
// the three paths the same algorithm: they differ in width, and so in the order of some
// float sums, never in steps.
//
//  * vexp: Cephes-style exp (range reduction x = n ln2 + r, |r| <= ln2/2, degree-6
//    polynomial, 2^n built from the exponent bits); max relative error about 2 ulp over
//    [-87, 88]; 0 below about -87.3; NaN for NaN. The plain-C++ path uses std::exp.
//  * vhsum8: 8 vectors -> their 8 horizontal sums (one query against 8 keys at once).
//
// Layer 2, generic: row_max, exp_sub_sum, scale_inplace, dot_weights (on float32, int8 or
// bfloat16 weights, widened by vload_weight) with dot and dot_q8, axpy, add_inplace,
// gelu_tanh_inplace, on one row of n floats: a loop of vectors, then a scalar tail.
//
// Non-finite input behaves as torch.softmax does: a NaN in a row makes row_max NaN and every
// exp(x - max) NaN, so the whole softmax row is NaN; a +inf gives exp(inf - inf) = NaN, so a
// row holding +inf is NaN too; a row of only -inf is NaN (0 / 0). Each of these holds in the
// vectorized part of a row and in its scalar tail alike.

namespace smallmind {
namespace SMALLMIND_ISA_NS {

#if SMALLMIND_ISA_LEVEL == 2  // ---- AVX-512 -------------------------------------------------

constexpr int W = 16;
using V = __m512;
using Mask = __mmask16;

static inline V vzero() { return _mm512_setzero_ps(); }
static inline V vset1(float a) { return _mm512_set1_ps(a); }
static inline V vload(const float* p) { return _mm512_loadu_ps(p); }
static inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
// W int8 -> W floats (weight-only int8: the weights stay int8 in memory, the math is float)
static inline V vload_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
// a bfloat16 is the high half of a float32: widen each to 32 bits, shift it up
static inline V vload_bf16(const c10::BFloat16* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(
      _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}
static inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm512_div_ps(a, b); }
static inline V vmin(V a, V b) { return _mm512_min_ps(a, b); }
static inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
static inline V vfmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
static inline V vfnmadd(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
static inline float vhsum(V v) { return _mm512_reduce_add_ps(v); }
static inline float vhmax(V v) { return _mm512_reduce_max_ps(v); }
static inline Mask vnan(V v) { return _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q); }
static inline Mask vmask_or(Mask a, Mask b) { return Mask(a | b); }
static inline bool vmask_any(Mask m) { return m != 0; }

static inline V vexp(V x) {
  // min/max return their second operand when either is NaN: x goes second, so NaN stays NaN
  // (and then 2^n below is 0 and y is NaN: the result is NaN).
  x = _mm512_min_ps(_mm512_set1_ps(88.0f), x);  // keeps 2^n finite
  x = _mm512_max_ps(_mm512_set1_ps(-88.3762626647949f), x);
  const V n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // ln2 split in two for exactness
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  V y = _mm512_set1_ps(1.9875691500E-4f);
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.3981999507E-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(8.3334519073E-3f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(4.1665795894E-2f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(1.6666665459E-1f));
  y = _mm512_fmadd_ps(y, r, _mm512_set1_ps(5.0000001201E-1f));
  y = _mm512_fmadd_ps(y, _mm512_mul_ps(r, r), r);
  y = _mm512_add_ps(y, _mm512_set1_ps(1.0f));
  // 2^n: n in [-127, 128]; n = -127 gives exponent bits 0 -> 0.0 (underflow to zero).
  __m512i e = _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127));
  e = _mm512_slli_epi32(_mm512_max_epi32(e, _mm512_setzero_si512()), 23);
  return _mm512_mul_ps(y, _mm512_castsi512_ps(e));
}

static inline __m256 hsum8x8_256(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4,
                                 __m256 a5, __m256 a6, __m256 a7) {
  __m256 t0 = _mm256_hadd_ps(a0, a1), t1 = _mm256_hadd_ps(a2, a3);
  __m256 t2 = _mm256_hadd_ps(a4, a5), t3 = _mm256_hadd_ps(a6, a7);
  t0 = _mm256_hadd_ps(t0, t1);
  t2 = _mm256_hadd_ps(t2, t3);
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20), _mm256_permute2f128_ps(t0, t2, 0x31));
}

static inline void vhsum8(const V* a, float* out) {
  __m256 h[8];
  for (int i = 0; i < 8; ++i)  // fold each 512-bit vector to 256 bits first
    h[i] = _mm256_add_ps(_mm512_castps512_ps256(a[i]), _mm512_extractf32x8_ps(a[i], 1));
  _mm256_storeu_ps(out, hsum8x8_256(h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]));
}

#elif SMALLMIND_ISA_LEVEL == 1  // ---- AVX2 + FMA ----------------------------------------------

constexpr int W = 8;
using V = __m256;
using Mask = __m256;

static inline V vzero() { return _mm256_setzero_ps(); }
static inline V vset1(float a) { return _mm256_set1_ps(a); }
static inline V vload(const float* p) { return _mm256_loadu_ps(p); }
static inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
static inline V vload_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
static inline V vload_bf16(const c10::BFloat16* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}
static inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
static inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
static inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
static inline V vdiv(V a, V b) { return _mm256_div_ps(a, b); }
static inline V vmin(V a, V b) { return _mm256_min_ps(a, b); }
static inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
static inline V vfmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
static inline V vfnmadd(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
static inline float vhsum(V v) {
  __m128 lo = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}
static inline float vhmax(V v) {
  __m128 lo = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_max_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  return _mm_cvtss_f32(_mm_max_ss(lo, sh));
}
static inline Mask vnan(V v) { return _mm256_cmp_ps(v, v, _CMP_UNORD_Q); }
static inline Mask vmask_or(Mask a, Mask b) { return _mm256_or_ps(a, b); }
static inline bool vmask_any(Mask m) { return _mm256_movemask_ps(m) != 0; }

static inline V vexp(V x) {
  // the same steps as the AVX-512 vexp above, 8 lanes at a time
  x = _mm256_min_ps(_mm256_set1_ps(88.0f), x);
  x = _mm256_max_ps(_mm256_set1_ps(-88.3762626647949f), x);
  const V n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  V r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  V y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
  y = _mm256_fmadd_ps(y, _mm256_mul_ps(r, r), r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127));
  e = _mm256_slli_epi32(_mm256_max_epi32(e, _mm256_setzero_si256()), 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline void vhsum8(const V* a, float* out) {
  __m256 t0 = _mm256_hadd_ps(a[0], a[1]), t1 = _mm256_hadd_ps(a[2], a[3]);
  __m256 t2 = _mm256_hadd_ps(a[4], a[5]), t3 = _mm256_hadd_ps(a[6], a[7]);
  t0 = _mm256_hadd_ps(t0, t1);  // per 128-bit lane: partial sums of a0..a3
  t2 = _mm256_hadd_ps(t2, t3);  // per 128-bit lane: partial sums of a4..a7
  _mm256_storeu_ps(out, _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20),
                                      _mm256_permute2f128_ps(t0, t2, 0x31)));
}

#else  // ---- plain C++ (the scalar fallback) ---------------------------------------------------

constexpr int W = 1;
using V = float;
using Mask = bool;

static inline V vzero() { return 0.f; }
static inline V vset1(float a) { return a; }
static inline V vload(const float* p) { return *p; }
static inline void vstore(float* p, V v) { *p = v; }
static inline V vload_i8(const int8_t* p) { return float(*p); }
static inline V vload_bf16(const c10::BFloat16* p) { return float(*p); }
static inline V vadd(V a, V b) { return a + b; }
static inline V vsub(V a, V b) { return a - b; }
static inline V vmul(V a, V b) { return a * b; }
static inline V vdiv(V a, V b) { return a / b; }
static inline V vmin(V a, V b) { return a < b ? a : b; }  // NaN: b, as minps
static inline V vmax(V a, V b) { return a > b ? a : b; }  // NaN: b, as maxps
static inline V vfmadd(V a, V b, V c) { return a * b + c; }
static inline V vfnmadd(V a, V b, V c) { return c - a * b; }
static inline float vhsum(V v) { return v; }
static inline float vhmax(V v) { return v; }
static inline Mask vnan(V v) { return std::isnan(v); }
static inline Mask vmask_or(Mask a, Mask b) { return a || b; }
static inline bool vmask_any(Mask m) { return m; }
static inline V vexp(V x) { return std::exp(x); }
static inline void vhsum8(const V* a, float* out) {
  for (int i = 0; i < 8; ++i) out[i] = a[i];
}

#endif

// ---- row helpers ------------------------------------------------------------------------

// max over p[0..n); NaN if any p[j] is NaN (vmax alone would drop it in some lanes)
static inline float row_max(const float* p, int64_t n) {
  int64_t j = 0;
  float m = -INFINITY;
  bool nan = false;
  if (n >= W) {
    V vm = vload(p);
    Mask vn = vnan(vm);
    for (j = W; j + W <= n; j += W) {
      const V v = vload(p + j);
      vm = vmax(vm, v);
      vn = vmask_or(vn, vnan(v));
    }
    m = vhmax(vm);
    nan = vmask_any(vn);
  }
  for (; j < n; ++j) {
    m = p[j] > m ? p[j] : m;
    nan |= std::isnan(p[j]);
  }
  return nan ? NAN : m;
}

// y[j] = exp(x[j] - m) for j < n, returns the sum (x and y may alias).
static inline float exp_sub_sum(const float* x, float* y, int64_t n, float m) {
  int64_t j = 0;
  const V vm = vset1(m);
  V s0 = vzero(), s1 = vzero();
  for (; j + 2 * W <= n; j += 2 * W) {
    const V e0 = vexp(vsub(vload(x + j), vm));
    const V e1 = vexp(vsub(vload(x + j + W), vm));
    vstore(y + j, e0);
    vstore(y + j + W, e1);
    s0 = vadd(s0, e0);
    s1 = vadd(s1, e1);
  }
  for (; j + W <= n; j += W) {
    const V e0 = vexp(vsub(vload(x + j), vm));
    vstore(y + j, e0);
    s0 = vadd(s0, e0);
  }
  float s = vhsum(vadd(s0, s1));
  for (; j < n; ++j) {
    const float e = std::exp(x[j] - m);
    y[j] = e;
    s += e;
  }
  return s;
}

// y[j] *= a
static inline void scale_inplace(float* y, int64_t n, float a) {
  int64_t j = 0;
  const V va = vset1(a);
  for (; j + W <= n; j += W) vstore(y + j, vmul(vload(y + j), va));
  for (; j < n; ++j) y[j] *= a;
}

// W weights as floats: float32 as they are, int8 widened (weight-only int8: float32 math)
static inline V vload_weight(const float* p) { return vload(p); }
static inline V vload_weight(const int8_t* p) { return vload_i8(p); }
static inline V vload_weight(const c10::BFloat16* p) { return vload_bf16(p); }

// dot(a, w) over n, w float32 (dot), int8 (dot_q8) or bfloat16 (linear_lowp_kernel.h)
template <class Weight>
static inline float dot_weights(const float* a, const Weight* w, int64_t n) {
  int64_t j = 0;
  V s0 = vzero(), s1 = vzero();
  for (; j + 2 * W <= n; j += 2 * W) {
    s0 = vfmadd(vload(a + j), vload_weight(w + j), s0);
    s1 = vfmadd(vload(a + j + W), vload_weight(w + j + W), s1);
  }
  for (; j + W <= n; j += W) s0 = vfmadd(vload(a + j), vload_weight(w + j), s0);
  float s = vhsum(vadd(s0, s1));
  for (; j < n; ++j) s += a[j] * float(w[j]);
  return s;
}
static inline float dot(const float* a, const float* b, int64_t n) { return dot_weights(a, b, n); }
static inline float dot_q8(const float* a, const int8_t* w, int64_t n) {
  return dot_weights(a, w, n);
}

// y[j] += a * x[j]
static inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t j = 0;
  const V va = vset1(a);
  for (; j + W <= n; j += W) vstore(y + j, vfmadd(va, vload(x + j), vload(y + j)));
  for (; j < n; ++j) y[j] += a * x[j];
}

// x[j] += y[j]
static inline void add_inplace(float* x, const float* y, int64_t n) {
  int64_t j = 0;
  for (; j + W <= n; j += W) vstore(x + j, vadd(vload(x + j), vload(y + j)));
  for (; j < n; ++j) x[j] += y[j];
}

// gelu_tanh(x) = 0.5 x (1 + tanh(u)), u = sqrt(2/pi) (x + 0.044715 x^3)
//              = x / (1 + exp(-2u))        (no cancellation near u = 0, none at large |u|)
static inline void gelu_tanh_inplace(float* x, int64_t n) {
  constexpr float kC = 0.7978845608028654f;  // sqrt(2/pi)
  constexpr float kA = 0.044715f;
  int64_t j = 0;
  const V m2c = vset1(-2.0f * kC), va = vset1(kA), one = vset1(1.0f);
  for (; j + W <= n; j += W) {
    const V v = vload(x + j);
    const V inner = vfmadd(vmul(va, v), vmul(v, v), v);
    vstore(x + j, vdiv(v, vadd(one, vexp(vmul(m2c, inner)))));
  }
  for (; j < n; ++j) {
    const float v = x[j];
    const float inner = v + kA * v * v * v;
    x[j] = v / (1.0f + std::exp(-2.0f * kC * inner));
  }
}

}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
