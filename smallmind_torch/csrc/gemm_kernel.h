// BLIS-style single-precision GEMM for the smallmind ops (CPU, float32).
//
//   C (M x N, row-major, leading dimension ldc) = A (M x K) * B (K x N) [+ bias (N)]
//
// A and B are read through arbitrary element strides: A(i,k) = A[i*rsa + k*csa],
// B(k,j) = B[k*rsb + j*csb]. So a transposed operand costs nothing extra: `linear`
// (x @ W^T with W stored (N, K) row-major) passes B = W with rsb = 1, csb = K, and the
// backward's x^T @ grad passes a transposed view.
//
// Structure (Goto / BLIS):
//   for jc over N in NC columns            B panel  (KC x NC) packed once, shared by threads
//     for pc over K in KC                  (the K loop; first block writes bias, later ones add)
//       pack B(pc:pc+KC, jc:jc+NC) into NR-column micro-panels       (parallel over panels)
//       each thread owns a (rows x micro-panels) tile of C:
//         for ic over its rows in MC       A block (MC x KC) packed per thread into MR-row panels
//           for jr over its micro-panels   (B micro-panel stays in L1)
//             for ir over MR rows          6x16 AVX2/FMA micro-kernel, 12 accumulators
// Small M (decode, M <= kSmallM) skips packing: a GEMV-like path that streams B once.
// Threads: one OpenMP region (see common.h for why not at::parallel_for), `nthreads`
// supplied by the caller; torch's own libgomp is the one loaded, so the pool is ATen's.
// Without AVX2+FMA at compile time the micro-kernels are plain loops (scalar fallback).
#pragma once

#include <omp.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "simd.h"
#include "vec_math.h"

namespace smallmind {
namespace gemm {

constexpr int MR = 6;
constexpr int NR = 16;
constexpr int64_t KC = 256;
constexpr int64_t MC = 120;   // multiple of MR; A block MC*KC*4 = 120 KiB (L2)
constexpr int64_t NC = 4096;  // multiple of NR; B panel KC*NC*4 = 4 MiB max (L3)
constexpr int64_t kSmallM = 4;  // M <= kSmallM: unpacked GEMV-like path

inline const char* kernel_name() {
  return SMALLMIND_AVX2 ? "avx2-fma-6x16" : "scalar";
}

// Packed A blocks (one per thread) and the shared packed B panel.
inline Scratch& scratch_a() {
  static thread_local Scratch s;
  return s;
}
inline Scratch& scratch_b() {
  static thread_local Scratch s;
  return s;
}

// ---------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------

// A(ic:ic+mc, pc:pc+kc) -> MR-row micro-panels, each kc x MR (k-major), zero padded.
inline void pack_a(const float* A, int64_t rsa, int64_t csa, int64_t mc, int64_t kc,
                   float* buf) {
  for (int64_t ip = 0; ip < mc; ip += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - ip);
    const float* a = A + ip * rsa;
    if (mr == MR && csa == 1) {
      const float* r0 = a;
      const float* r1 = a + rsa;
      const float* r2 = a + 2 * rsa;
      const float* r3 = a + 3 * rsa;
      const float* r4 = a + 4 * rsa;
      const float* r5 = a + 5 * rsa;
      for (int64_t k = 0; k < kc; ++k) {
        float* d = buf + k * MR;
        d[0] = r0[k]; d[1] = r1[k]; d[2] = r2[k];
        d[3] = r3[k]; d[4] = r4[k]; d[5] = r5[k];
      }
    } else if (mr == MR && rsa == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = a + k * csa;
        float* d = buf + k * MR;
        for (int r = 0; r < MR; ++r) d[r] = s[r];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = buf + k * MR;
        int r = 0;
        for (; r < mr; ++r) d[r] = a[r * rsa + k * csa];
        for (; r < MR; ++r) d[r] = 0.f;
      }
    }
    buf += MR * kc;
  }
}

// One NR-column micro-panel of B(pc:pc+kc, j:j+nr) -> kc x NR (k-major), zero padded.
inline void pack_b_panel(const float* B, int64_t rsb, int64_t csb, int64_t kc, int64_t nr,
                         float* buf) {
  if (nr == NR && csb == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = B + k * rsb;
      float* d = buf + k * NR;
#if SMALLMIND_AVX2
      _mm256_store_ps(d, _mm256_loadu_ps(s));
      _mm256_store_ps(d + 8, _mm256_loadu_ps(s + 8));
#else
      for (int c = 0; c < NR; ++c) d[c] = s[c];
#endif
    }
  } else if (rsb == 1) {
    // Transposed layout (linear's W (N,K)): column j of B is row j of W, contiguous in k.
    // Read each W row sequentially, write with stride NR into the L1-resident panel.
    for (int64_t c = 0; c < nr; ++c) {
      const float* s = B + c * csb;
      for (int64_t k = 0; k < kc; ++k) buf[k * NR + c] = s[k];
    }
    for (int64_t c = nr; c < NR; ++c)
      for (int64_t k = 0; k < kc; ++k) buf[k * NR + c] = 0.f;
  } else {
    for (int64_t k = 0; k < kc; ++k) {
      float* d = buf + k * NR;
      int64_t c = 0;
      for (; c < nr; ++c) d[c] = B[k * rsb + c * csb];
      for (; c < NR; ++c) d[c] = 0.f;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Micro-kernel: tile (MR x NR) = Ap (kc x MR panel) * Bp (kc x NR panel)
//   C = (accumulate ? C : (bias ? bias : 0)) + tile      for a full MR x NR tile
// ---------------------------------------------------------------------------------------
inline void micro_kernel_full(int64_t kc, const float* __restrict Ap,
                              const float* __restrict Bp, float* C, int64_t ldc,
                              const float* bias, bool accumulate) {
#if SMALLMIND_AVX2
  __m256 c00 = _mm256_setzero_ps(), c01 = _mm256_setzero_ps();
  __m256 c10 = _mm256_setzero_ps(), c11 = _mm256_setzero_ps();
  __m256 c20 = _mm256_setzero_ps(), c21 = _mm256_setzero_ps();
  __m256 c30 = _mm256_setzero_ps(), c31 = _mm256_setzero_ps();
  __m256 c40 = _mm256_setzero_ps(), c41 = _mm256_setzero_ps();
  __m256 c50 = _mm256_setzero_ps(), c51 = _mm256_setzero_ps();
#pragma GCC unroll 4
  for (int64_t k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(Bp);
    const __m256 b1 = _mm256_load_ps(Bp + 8);
    __m256 a;
    a = _mm256_broadcast_ss(Ap + 0);
    c00 = _mm256_fmadd_ps(a, b0, c00); c01 = _mm256_fmadd_ps(a, b1, c01);
    a = _mm256_broadcast_ss(Ap + 1);
    c10 = _mm256_fmadd_ps(a, b0, c10); c11 = _mm256_fmadd_ps(a, b1, c11);
    a = _mm256_broadcast_ss(Ap + 2);
    c20 = _mm256_fmadd_ps(a, b0, c20); c21 = _mm256_fmadd_ps(a, b1, c21);
    a = _mm256_broadcast_ss(Ap + 3);
    c30 = _mm256_fmadd_ps(a, b0, c30); c31 = _mm256_fmadd_ps(a, b1, c31);
    a = _mm256_broadcast_ss(Ap + 4);
    c40 = _mm256_fmadd_ps(a, b0, c40); c41 = _mm256_fmadd_ps(a, b1, c41);
    a = _mm256_broadcast_ss(Ap + 5);
    c50 = _mm256_fmadd_ps(a, b0, c50); c51 = _mm256_fmadd_ps(a, b1, c51);
    Ap += MR;
    Bp += NR;
  }
  __m256 base0, base1;
  const bool use_bias = !accumulate && bias != nullptr;
  if (use_bias) {
    base0 = _mm256_loadu_ps(bias);
    base1 = _mm256_loadu_ps(bias + 8);
  }
#define SMALLMIND_STORE_ROW(r, x0, x1)                                     \
  {                                                                        \
    float* cr = C + (r) * ldc;                                             \
    if (accumulate) {                                                      \
      x0 = _mm256_add_ps(x0, _mm256_loadu_ps(cr));                         \
      x1 = _mm256_add_ps(x1, _mm256_loadu_ps(cr + 8));                     \
    } else if (use_bias) {                                                 \
      x0 = _mm256_add_ps(x0, base0);                                       \
      x1 = _mm256_add_ps(x1, base1);                                       \
    }                                                                      \
    _mm256_storeu_ps(cr, x0);                                              \
    _mm256_storeu_ps(cr + 8, x1);                                          \
  }
  SMALLMIND_STORE_ROW(0, c00, c01)
  SMALLMIND_STORE_ROW(1, c10, c11)
  SMALLMIND_STORE_ROW(2, c20, c21)
  SMALLMIND_STORE_ROW(3, c30, c31)
  SMALLMIND_STORE_ROW(4, c40, c41)
  SMALLMIND_STORE_ROW(5, c50, c51)
#undef SMALLMIND_STORE_ROW
#else
  float acc[MR][NR] = {};
  for (int64_t k = 0; k < kc; ++k) {
    for (int r = 0; r < MR; ++r) {
      const float a = Ap[r];
      for (int c = 0; c < NR; ++c) acc[r][c] += a * Bp[c];
    }
    Ap += MR;
    Bp += NR;
  }
  for (int r = 0; r < MR; ++r) {
    float* cr = C + r * ldc;
    for (int c = 0; c < NR; ++c) {
      const float base = accumulate ? cr[c] : (bias ? bias[c] : 0.f);
      cr[c] = base + acc[r][c];
    }
  }
#endif
}

// Edge tile (mr < MR or nr < NR): compute the full padded tile into a scratch tile, then
// write back only the valid part.
inline void micro_kernel_edge(int64_t kc, const float* Ap, const float* Bp, float* C,
                              int64_t ldc, const float* bias, bool accumulate, int64_t mr,
                              int64_t nr) {
  alignas(64) float tile[MR * NR];
  micro_kernel_full(kc, Ap, Bp, tile, NR, nullptr, false);
  for (int64_t r = 0; r < mr; ++r) {
    float* cr = C + r * ldc;
    const float* tr = tile + r * NR;
    for (int64_t c = 0; c < nr; ++c) {
      const float base = accumulate ? cr[c] : (bias ? bias[c] : 0.f);
      cr[c] = base + tr[c];
    }
  }
}

// ---------------------------------------------------------------------------------------
// Small-M path (decode): no packing.
// ---------------------------------------------------------------------------------------

// Columns [j0, j1) of C for rows [0, M), B(k,j) = B[j*csb + k] (contiguous in k, e.g.
// linear's W (N,K)); A rows contiguous in k (csa == 1). Dot products: 2 rows x 4 columns
// of accumulators, so each loaded W vector feeds two FMAs.
inline void small_m_dot(int64_t M, int64_t K, const float* A, int64_t rsa, const float* B,
                        int64_t csb, float* C, int64_t ldc, const float* bias, int64_t j0,
                        int64_t j1) {
  int64_t i = 0;
#if SMALLMIND_AVX2
  for (; i + 2 <= M; i += 2) {
    const float* a0 = A + i * rsa;
    const float* a1 = a0 + rsa;
    float* c0 = C + i * ldc;
    float* c1 = c0 + ldc;
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
      const float* b0 = B + j * csb;
      const float* b1 = b0 + csb;
      const float* b2 = b1 + csb;
      const float* b3 = b2 + csb;
      __m256 s00 = _mm256_setzero_ps(), s01 = _mm256_setzero_ps();
      __m256 s02 = _mm256_setzero_ps(), s03 = _mm256_setzero_ps();
      __m256 s10 = _mm256_setzero_ps(), s11 = _mm256_setzero_ps();
      __m256 s12 = _mm256_setzero_ps(), s13 = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) {
        const __m256 x0 = _mm256_loadu_ps(a0 + k), x1 = _mm256_loadu_ps(a1 + k);
        __m256 w = _mm256_loadu_ps(b0 + k);
        s00 = _mm256_fmadd_ps(x0, w, s00); s10 = _mm256_fmadd_ps(x1, w, s10);
        w = _mm256_loadu_ps(b1 + k);
        s01 = _mm256_fmadd_ps(x0, w, s01); s11 = _mm256_fmadd_ps(x1, w, s11);
        w = _mm256_loadu_ps(b2 + k);
        s02 = _mm256_fmadd_ps(x0, w, s02); s12 = _mm256_fmadd_ps(x1, w, s12);
        w = _mm256_loadu_ps(b3 + k);
        s03 = _mm256_fmadd_ps(x0, w, s03); s13 = _mm256_fmadd_ps(x1, w, s13);
      }
      float t[2][4] = {
          {vec::hsum256(s00), vec::hsum256(s01), vec::hsum256(s02), vec::hsum256(s03)},
          {vec::hsum256(s10), vec::hsum256(s11), vec::hsum256(s12), vec::hsum256(s13)}};
      for (; k < K; ++k) {
        t[0][0] += a0[k] * b0[k]; t[0][1] += a0[k] * b1[k];
        t[0][2] += a0[k] * b2[k]; t[0][3] += a0[k] * b3[k];
        t[1][0] += a1[k] * b0[k]; t[1][1] += a1[k] * b1[k];
        t[1][2] += a1[k] * b2[k]; t[1][3] += a1[k] * b3[k];
      }
      for (int c = 0; c < 4; ++c) {
        const float bv = bias ? bias[j + c] : 0.f;
        c0[j + c] = t[0][c] + bv;
        c1[j + c] = t[1][c] + bv;
      }
    }
    for (; j < j1; ++j) {
      const float* b = B + j * csb;
      float t0 = 0.f, t1 = 0.f;
      for (int64_t k = 0; k < K; ++k) { t0 += a0[k] * b[k]; t1 += a1[k] * b[k]; }
      const float bv = bias ? bias[j] : 0.f;
      c0[j] = t0 + bv;
      c1[j] = t1 + bv;
    }
  }
#endif
  for (; i < M; ++i) {
    const float* a = A + i * rsa;
    float* c = C + i * ldc;
    int64_t j = j0;
#if SMALLMIND_AVX2
    for (; j + 4 <= j1; j += 4) {
      const float* b0 = B + j * csb;
      const float* b1 = b0 + csb;
      const float* b2 = b1 + csb;
      const float* b3 = b2 + csb;
      __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
      __m256 s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
      int64_t k = 0;
      for (; k + 8 <= K; k += 8) {
        const __m256 av = _mm256_loadu_ps(a + k);
        s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b0 + k), s0);
        s1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b1 + k), s1);
        s2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b2 + k), s2);
        s3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(b3 + k), s3);
      }
      float t0 = vec::hsum256(s0), t1 = vec::hsum256(s1);
      float t2 = vec::hsum256(s2), t3 = vec::hsum256(s3);
      for (; k < K; ++k) {
        t0 += a[k] * b0[k]; t1 += a[k] * b1[k];
        t2 += a[k] * b2[k]; t3 += a[k] * b3[k];
      }
      if (bias) { t0 += bias[j]; t1 += bias[j + 1]; t2 += bias[j + 2]; t3 += bias[j + 3]; }
      c[j] = t0; c[j + 1] = t1; c[j + 2] = t2; c[j + 3] = t3;
    }
#endif
    for (; j < j1; ++j) {
      const float* b = B + j * csb;
      float t = 0.f;
      for (int64_t k = 0; k < K; ++k) t += a[k] * b[k];
      c[j] = t + (bias ? bias[j] : 0.f);
    }
  }
}

// Columns [j0, j1) of C for rows [0, M), B(k,j) = B[k*rsb + j] (row-major B): axpy over
// the rows of B, 64 columns of accumulators at a time.
inline void small_m_axpy(int64_t M, int64_t K, const float* A, int64_t rsa, int64_t csa,
                         const float* B, int64_t rsb, float* C, int64_t ldc,
                         const float* bias, int64_t j0, int64_t j1) {
  for (int64_t i = 0; i < M; ++i) {
    const float* a = A + i * rsa;
    float* c = C + i * ldc;
    int64_t j = j0;
#if SMALLMIND_AVX2
    for (; j + 64 <= j1; j += 64) {
      __m256 acc[8];
      for (int t = 0; t < 8; ++t)
        acc[t] = bias ? _mm256_loadu_ps(bias + j + 8 * t) : _mm256_setzero_ps();
      for (int64_t k = 0; k < K; ++k) {
        const __m256 av = _mm256_set1_ps(a[k * csa]);
        const float* b = B + k * rsb + j;
        for (int t = 0; t < 8; ++t) acc[t] = _mm256_fmadd_ps(av, _mm256_loadu_ps(b + 8 * t), acc[t]);
      }
      for (int t = 0; t < 8; ++t) _mm256_storeu_ps(c + j + 8 * t, acc[t]);
    }
    for (; j + 8 <= j1; j += 8) {
      __m256 acc = bias ? _mm256_loadu_ps(bias + j) : _mm256_setzero_ps();
      for (int64_t k = 0; k < K; ++k)
        acc = _mm256_fmadd_ps(_mm256_set1_ps(a[k * csa]), _mm256_loadu_ps(B + k * rsb + j), acc);
      _mm256_storeu_ps(c + j, acc);
    }
#endif
    if (j < j1) {
      for (int64_t jj = j; jj < j1; ++jj) c[jj] = bias ? bias[jj] : 0.f;
      for (int64_t k = 0; k < K; ++k) {
        const float av = a[k * csa];
        const float* b = B + k * rsb;
        for (int64_t jj = j; jj < j1; ++jj) c[jj] += av * b[jj];
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------

// Split `units_m` row units and `units_n` column units over `nth` threads as a tm x tn
// grid with the smallest per-thread tile (ties: more row splits, so B stays shared).
inline void thread_grid(int nth, int64_t units_m, int64_t units_n, int* tm, int* tn) {
  int64_t best = -1;
  for (int m = nth; m >= 1; --m) {
    if (nth % m) continue;
    const int n = nth / m;
    const int64_t cost = ((units_m + m - 1) / m) * ((units_n + n - 1) / n);
    if (best < 0 || cost < best) {
      best = cost;
      *tm = m;
      *tn = n;
    }
  }
}

inline void fill_bias(int64_t M, int64_t N, float* C, int64_t ldc, const float* bias) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (bias) std::memcpy(c, bias, sizeof(float) * N);
    else std::memset(c, 0, sizeof(float) * N);
  }
}

// C (M x N, row stride ldc, column stride 1) = A * B (+ bias). C must not alias A or B.
inline void sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa, int64_t csa,
                  const float* B, int64_t rsb, int64_t csb, float* C, int64_t ldc,
                  const float* bias, int nthreads) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    fill_bias(M, N, C, ldc, bias);
    return;
  }
  const double flops = 2.0 * double(M) * double(N) * double(K);
  int nt = nthreads < 1 ? 1 : nthreads;
  // Below ~2 MFLOP (e.g. 100^3) one thread finishes in tens of microseconds: a fork/join,
  // and on a busy machine a descheduled partner thread, cost more than the split saves. The
  // small-M path streams B: split it only from ~2 MFLOP too (decode shapes stay on one thread).
  const bool small_m = M <= kSmallM && (csb == 1 || (rsb == 1 && csa == 1));
  // Decoding (small M) is bound by streaming B from memory, and one core cannot saturate
  // the memory bus: split it once B is larger than the L2 cache (256 KiB), whatever the FLOPs.
  const bool streams_b = small_m && double(N) * double(K) * sizeof(float) >= 256.0 * 1024.0;
  if (flops < 2e6 && !streams_b) nt = 1;

  if (small_m) {
    const bool dot = !(csb == 1);
    const int64_t align = dot ? 4 : 64;
    const int64_t chunks = (N + align - 1) / align;
    if (nt > chunks) nt = int(chunks);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      const int tid = omp_get_thread_num();
      const int nth = omp_get_num_threads();
      const int64_t c0 = chunks * tid / nth, c1 = chunks * (tid + 1) / nth;
      const int64_t j0 = c0 * align, j1 = std::min<int64_t>(N, c1 * align);
      if (j0 < j1) {
        if (dot) small_m_dot(M, K, A, rsa, B, csb, C, ldc, bias, j0, j1);
        else small_m_axpy(M, K, A, rsa, csa, B, rsb, C, ldc, bias, j0, j1);
      }
    }
    return;
  }

  const int64_t kc_max = std::min<int64_t>(K, KC);
  const int64_t nc_max = std::min<int64_t>(((N + NR - 1) / NR) * NR, NC);
  float* bpack = scratch_b().get(size_t(kc_max) * size_t(nc_max));
  {
    const int64_t units = ((M + MR - 1) / MR) * ((N + NR - 1) / NR);
    if (nt > units) nt = int(units);
  }

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    float* apack = scratch_a().get(size_t(MC) * size_t(kc_max));
    const int64_t units_m = (M + MR - 1) / MR;
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min<int64_t>(NC, N - jc);
      const int64_t panels = (nc + NR - 1) / NR;
      int tm = 1, tn = 1;
      thread_grid(nth, units_m, panels, &tm, &tn);
      const int ti = tid / tn, tj = tid % tn;
      const int64_t m0 = std::min<int64_t>(M, (units_m * ti / tm) * MR);
      const int64_t m1 = std::min<int64_t>(M, (units_m * (ti + 1) / tm) * MR);
      const int64_t p0 = panels * tj / tn, p1 = panels * (tj + 1) / tn;
      for (int64_t pc = 0; pc < K; pc += KC) {
        const int64_t kc = std::min<int64_t>(KC, K - pc);
        const bool accumulate = pc > 0;
#pragma omp for schedule(static)
        for (int64_t p = 0; p < panels; ++p) {
          const int64_t j = jc + p * NR;
          pack_b_panel(B + pc * rsb + j * csb, rsb, csb, kc,
                       std::min<int64_t>(NR, N - j), bpack + p * NR * kc);
        }
        // (implicit barrier: the whole B panel is packed)
        for (int64_t ic = m0; ic < m1; ic += MC) {
          const int64_t mc = std::min<int64_t>(MC, m1 - ic);
          pack_a(A + ic * rsa + pc * csa, rsa, csa, mc, kc, apack);
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t j = jc + p * NR;
            const int64_t nr = std::min<int64_t>(NR, N - j);
            const float* bp = bpack + p * NR * kc;
            const float* bias_j = bias ? bias + j : nullptr;
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int64_t mr = std::min<int64_t>(MR, mc - ir);
              float* c = C + (ic + ir) * ldc + j;
              const float* ap = apack + ir * kc;
              if (mr == MR && nr == NR)
                micro_kernel_full(kc, ap, bp, c, ldc, bias_j, accumulate);
              else
                micro_kernel_edge(kc, ap, bp, c, ldc, bias_j, accumulate, mr, nr);
            }
          }
        }
#pragma omp barrier
      }
    }
  }
}

}  // namespace gemm
}  // namespace smallmind
