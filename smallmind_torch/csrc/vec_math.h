// Small vector-math helpers shared by the softmax, LayerNorm, attention and decode kernels:
// pure math on float pointers (no ATen), 8 floats at a time with AVX2 + FMA, plain loops
// otherwise (see simd.h).
//
//  * exp256      : Cephes-style exp for 8 floats (range reduction x = n ln2 + r, |r| <= ln2/2,
//                  degree-6 polynomial, 2^n by building the exponent bits). Max relative error
//                  about 2 ulp over [-87, 88]; returns 0 below about -87.3 and NaN for NaN.
//  * hsum256     : horizontal sum of one vector.
//  * hsum8x8     : 8 vectors -> one vector of their 8 horizontal sums (dot products of one
//                  query with 8 keys at once).
//  * row_max, exp_sub_sum, scale_inplace, dot, axpy: one row of n floats.
//
// Non-finite input behaves as torch.softmax does: a NaN in a row makes row_max NaN and every
// exp(x - max) NaN, so the whole softmax row is NaN; a +inf gives exp(inf - inf) = NaN, so a
// row holding +inf is NaN too; a row of only -inf is NaN (0 / 0). Each of these holds in the
// vectorized part of a row and in its scalar tail alike.
#pragma once

#include <cmath>
#include <cstdint>

#include "simd.h"

namespace smallmind {
namespace vec {

#if SMALLMIND_AVX2

static inline __m256 exp256(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.0f);  // keeps 2^n finite
  const __m256 lo = _mm256_set1_ps(-88.3762626647949f);
  const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
  const __m256 c1 = _mm256_set1_ps(0.693359375f);
  const __m256 c2 = _mm256_set1_ps(-2.12194440e-4f);
  // min/max return their second operand when either is NaN: x goes second, so NaN stays NaN
  // (and then 2^n below is 0 and y is NaN: the result is NaN).
  x = _mm256_min_ps(hi, x);
  x = _mm256_max_ps(lo, x);
  // n = round(x / ln2); r = x - n ln2 (ln2 split in two for exactness)
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, log2e), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, c1, x);
  r = _mm256_fnmadd_ps(n, c2, r);
  __m256 y = _mm256_set1_ps(1.9875691500E-4f);
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.3981999507E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(8.3334519073E-3f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(4.1665795894E-2f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(1.6666665459E-1f));
  y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(5.0000001201E-1f));
  __m256 r2 = _mm256_mul_ps(r, r);
  y = _mm256_fmadd_ps(y, r2, r);
  y = _mm256_add_ps(y, _mm256_set1_ps(1.0f));
  // 2^n: n in [-127, 128]; n = -127 gives exponent bits 0 -> 0.0 (underflow to zero).
  __m256i e = _mm256_cvtps_epi32(n);
  e = _mm256_add_epi32(e, _mm256_set1_epi32(127));
  e = _mm256_max_epi32(e, _mm256_setzero_si256());
  e = _mm256_slli_epi32(e, 23);
  return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float hsum256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_add_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

static inline float hmax256(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_max_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_max_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  lo = _mm_max_ss(lo, sh);
  return _mm_cvtss_f32(lo);
}

// [hsum(a0), hsum(a1), ..., hsum(a7)]
static inline __m256 hsum8x8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4,
                             __m256 a5, __m256 a6, __m256 a7) {
  __m256 t0 = _mm256_hadd_ps(a0, a1);
  __m256 t1 = _mm256_hadd_ps(a2, a3);
  __m256 t2 = _mm256_hadd_ps(a4, a5);
  __m256 t3 = _mm256_hadd_ps(a6, a7);
  t0 = _mm256_hadd_ps(t0, t1);  // per 128-bit lane: partial sums of a0..a3
  t2 = _mm256_hadd_ps(t2, t3);  // per 128-bit lane: partial sums of a4..a7
  return _mm256_add_ps(_mm256_permute2f128_ps(t0, t2, 0x20),
                       _mm256_permute2f128_ps(t0, t2, 0x31));
}

#endif  // SMALLMIND_AVX2

// Scalar exp used for tails and the fallback path.
static inline float exp_scalar(float x) { return std::exp(x); }

// max over p[0..n); NaN if any p[j] is NaN (max_ps alone would drop it in some lanes)
static inline float row_max(const float* p, int64_t n) {
  int64_t j = 0;
  float m = -INFINITY;
  bool nan = false;
#if SMALLMIND_AVX2
  if (n >= 8) {
    __m256 vm = _mm256_loadu_ps(p);
    __m256 vnan = _mm256_cmp_ps(vm, vm, _CMP_UNORD_Q);
    for (j = 8; j + 8 <= n; j += 8) {
      const __m256 v = _mm256_loadu_ps(p + j);
      vm = _mm256_max_ps(vm, v);
      vnan = _mm256_or_ps(vnan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    }
    m = hmax256(vm);
    nan = _mm256_movemask_ps(vnan) != 0;
  }
#endif
  for (; j < n; ++j) {
    m = p[j] > m ? p[j] : m;
    nan |= std::isnan(p[j]);
  }
  return nan ? NAN : m;
}

// y[j] = exp(x[j] - m) for j < n, returns the sum (x and y may alias).
static inline float exp_sub_sum(const float* x, float* y, int64_t n, float m) {
  int64_t j = 0;
  float s = 0.f;
#if SMALLMIND_AVX2
  __m256 vm = _mm256_set1_ps(m);
  __m256 vs0 = _mm256_setzero_ps(), vs1 = _mm256_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    __m256 e0 = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    __m256 e1 = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), vm));
    _mm256_storeu_ps(y + j, e0);
    _mm256_storeu_ps(y + j + 8, e1);
    vs0 = _mm256_add_ps(vs0, e0);
    vs1 = _mm256_add_ps(vs1, e1);
  }
  for (; j + 8 <= n; j += 8) {
    __m256 e0 = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), vm));
    _mm256_storeu_ps(y + j, e0);
    vs0 = _mm256_add_ps(vs0, e0);
  }
  s = hsum256(_mm256_add_ps(vs0, vs1));
#endif
  for (; j < n; ++j) {
    float e = exp_scalar(x[j] - m);
    y[j] = e;
    s += e;
  }
  return s;
}

// y[j] *= a
static inline void scale_inplace(float* y, int64_t n, float a) {
  int64_t j = 0;
#if SMALLMIND_AVX2
  __m256 va = _mm256_set1_ps(a);
  for (; j + 8 <= n; j += 8) _mm256_storeu_ps(y + j, _mm256_mul_ps(_mm256_loadu_ps(y + j), va));
#endif
  for (; j < n; ++j) y[j] *= a;
}

// dot(a, b) over n
static inline float dot(const float* a, const float* b, int64_t n) {
  int64_t j = 0;
  float s = 0.f;
#if SMALLMIND_AVX2
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  for (; j + 16 <= n; j += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j + 8), _mm256_loadu_ps(b + j + 8), s1);
  }
  for (; j + 8 <= n; j += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j), s0);
  s = hsum256(_mm256_add_ps(s0, s1));
#endif
  for (; j < n; ++j) s += a[j] * b[j];
  return s;
}

// y[j] += a * x[j]
static inline void axpy(float a, const float* x, float* y, int64_t n) {
  int64_t j = 0;
#if SMALLMIND_AVX2
  __m256 va = _mm256_set1_ps(a);
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(y + j, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + j), _mm256_loadu_ps(y + j)));
#endif
  for (; j < n; ++j) y[j] += a * x[j];
}

}  // namespace vec
}  // namespace smallmind
