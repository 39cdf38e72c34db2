// Row kernels of the fused LayerNorm (layer_norm.cpp), shared with the fused decode block
// (decode.cpp): one row of C floats, vectorized with AVX2 where available. Pure math.
#pragma once

#include <cmath>
#include <cstdint>

#include "simd.h"
#include "vec_math.h"

namespace smallmind {
namespace ln_row {

// Moments of one row, shifted by its first element for accuracy: d_j = x_j - x_0 is exact
// when the row's values are close to each other (Sterbenz), so a large common offset (|mean| >>
// spread) costs no precision: md = mean(d), var = mean((d - md)^2); mean = x_0 + md.
// The normalized value is then ((x_j - x_0) - md) * rstd.
static inline void row_moments(const float* x, int64_t C, float eps, float& shift, float& md,
                               float& rstd) {
  const float x0 = x[0];
  int64_t j = 0;
  float s = 0.f;
#if SMALLMIND_AVX2
  const __m256 v0 = _mm256_set1_ps(x0);
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
  for (; j + 16 <= C; j += 16) {
    a0 = _mm256_add_ps(a0, _mm256_sub_ps(_mm256_loadu_ps(x + j), v0));
    a1 = _mm256_add_ps(a1, _mm256_sub_ps(_mm256_loadu_ps(x + j + 8), v0));
  }
  for (; j + 8 <= C; j += 8) a0 = _mm256_add_ps(a0, _mm256_sub_ps(_mm256_loadu_ps(x + j), v0));
  s = vec::hsum256(_mm256_add_ps(a0, a1));
#endif
  for (; j < C; ++j) s += x[j] - x0;
  const float m = s / static_cast<float>(C);
  j = 0;
  float v = 0.f;
#if SMALLMIND_AVX2
  const __m256 vm = _mm256_set1_ps(m);
  a0 = _mm256_setzero_ps();
  a1 = _mm256_setzero_ps();
  for (; j + 16 <= C; j += 16) {
    __m256 d0 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), v0), vm);
    __m256 d1 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j + 8), v0), vm);
    a0 = _mm256_fmadd_ps(d0, d0, a0);
    a1 = _mm256_fmadd_ps(d1, d1, a1);
  }
  for (; j + 8 <= C; j += 8) {
    __m256 d0 = _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), v0), vm);
    a0 = _mm256_fmadd_ps(d0, d0, a0);
  }
  v = vec::hsum256(_mm256_add_ps(a0, a1));
#endif
  for (; j < C; ++j) {
    const float d = (x[j] - x0) - m;
    v += d * d;
  }
  shift = x0;
  md = m;
  rstd = 1.0f / std::sqrt(v / static_cast<float>(C) + eps);
}

// y = ((x - shift) - md) * rstd * w + b   (w, b may be null). y may equal x.
static inline void row_normalize(const float* x, float* y, const float* w, const float* b,
                                 int64_t C, float shift, float md, float rstd) {
  int64_t j = 0;
#if SMALLMIND_AVX2
  const __m256 vs = _mm256_set1_ps(shift), vm = _mm256_set1_ps(md), vr = _mm256_set1_ps(rstd);
  for (; j + 8 <= C; j += 8) {
    __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(x + j), vs), vm), vr);
    if (w) t = _mm256_mul_ps(t, _mm256_loadu_ps(w + j));
    if (b) t = _mm256_add_ps(t, _mm256_loadu_ps(b + j));
    _mm256_storeu_ps(y + j, t);
  }
#endif
  for (; j < C; ++j) {
    float t = ((x[j] - shift) - md) * rstd;
    if (w) t *= w[j];
    if (b) t += b[j];
    y[j] = t;
  }
}

}  // namespace ln_row
}  // namespace smallmind
