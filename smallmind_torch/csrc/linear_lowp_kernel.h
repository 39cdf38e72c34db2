// Matrix-vector products on low-precision weights, one ISA (no include guard: kernels.h
// includes this once per ISA): the kernels of the linear_q8, linear_bf16 and linear_w8a8 ops
// and of the int8 decode step (decode_kernel.h).
//
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] (+ bias[n]), x and y float32, w (N, K) int8
// quantized per output channel (row n of the float weight ~ scale[n] * w[n, :]) or bfloat16
// (no scale). A decode step reads every weight once, so int8 weights move a quarter and bf16
// weights half of the bytes of float32 ones. The generic path widens each weight vector as it
// is read (vload_weight) and fuses it into float32 accumulators, so the only error is the
// operands' rounding; on a CPU with AVX512_BF16, bf16 runs on its native dot product
// (vdpbf16ps: 32 bf16 products per instruction, summed into 16 float32 lanes).
//
// w8a8 (int8 weights and int8 activations, as the engines' int8 compute types do): each row
// of x is quantized on the fly (quantize_rows: symmetric, per row), the dot products are exact
// int32 sums of int8 products, then scaled: y = (sum * sx[m]) * sw[n] + bias[n]. With
// AVX512_VNNI one vpdpbusd adds 64 products (gemv_cols_w8a8_vnni); elsewhere vpmaddubsw +
// vpmaddwd (AVX2, also the AVX-512 path of a CPU without VNNI) or plain C++. vpmaddubsw takes
// unsigned bytes: it is given |w| and a with w's sign, so each product is a * w. That way round
// every int8 weight works, -128 included (|-128| is 128 as an unsigned byte, while -(-128)
// would not fit in a signed one), and |a| <= 127 (quantize_rows never gives -128) keeps the
// int16 pair sums within 2 * 128 * 127 < 2^15, unsaturated.

namespace smallmind {
namespace SMALLMIND_ISA_NS {

// Symmetric per-row quantization of x (M, K): sx[m] = max |x[m, :]| / 127 (1 for a row of
// zeros), q[m, k] = round(x[m, k] / sx[m]) (half to even) in [-127, 127]; a row holding NaN or
// inf gets sx[m] = NaN (its outputs are NaN: int8 cannot carry it). As weight_formats.py's
// quantize_rows, to the bit.
static inline void quantize_rows(const float* x, int64_t M, int64_t K, int8_t* q, float* sx) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xm = x + m * K;
    int8_t* qm = q + m * K;
    float amax = 0.f;
    bool finite = true;
    for (int64_t k = 0; k < K; ++k) {
      const float a = std::fabs(xm[k]);
      finite = finite && a <= std::numeric_limits<float>::max();
      amax = a > amax ? a : amax;
    }
    if (!finite) {
      sx[m] = std::numeric_limits<float>::quiet_NaN();
      std::fill(qm, qm + K, int8_t(0));
      continue;
    }
    const float s = amax > 0.f ? amax / 127.f : 1.f;
    sx[m] = s;
    for (int64_t k = 0; k < K; ++k) {
      const float r = std::nearbyint(xm[k] / s);
      qm[k] = int8_t(r > 127.f ? 127.f : (r < -127.f ? -127.f : r));
    }
  }
}

// The naive loops: the linear_q8, linear_bf16 and linear_w8a8 kernels (at the end) as one dot
// product per output. For reading, and for the tests, which hold every ISA's kernels to them
// (naive.cpp). x (M, K), w (N, K), y (M, N), all row-major; scale and bias may be null.

// y[m, n] = scale[n] * sum_k x[m, k] w[n, k] + bias[n]: int8 weights with their scales, or
// bf16 ones (no scale; x as the caller rounded it to bf16)
template <class Weight>
static inline void linear_lowp_naive(const float* x, int64_t M, int64_t K, const Weight* w,
                                     const float* scale, const float* bias, float* y, int64_t N) {
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * float(w[n * K + k]);
      y[m * N + n] = (scale ? s * scale[n] : s) + (bias ? bias[n] : 0.f);
    }
  }
}

// w8a8: the rows of x quantized (qx, sx), exact int32 sums, then
// y[m, n] = (sum * sx[m]) * sw[n] + bias[n]
static inline void linear_w8a8_naive(const float* x, int64_t M, int64_t K, const int8_t* w,
                                     const float* sw, const float* bias, float* y, int64_t N) {
  std::vector<int8_t> qx(M * K);
  std::vector<float> sx(M);
  quantize_rows(x, M, K, qx.data(), sx.data());
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      int32_t s = 0;
      for (int64_t k = 0; k < K; ++k) s += int32_t(qx[m * K + k]) * int32_t(w[n * K + k]);
      y[m * N + n] = float(s) * sx[m] * sw[n] + (bias ? bias[n] : 0.f);
    }
  }
}

constexpr int kLowpRows = 4;

// R rows of x (row r at x + r * K) against one weight row: R dot products sharing each widened
// weight vector (one row: dot_weights, whose two accumulators hide the FMA latency).
template <int R, class Weight>
static inline void dot_rows(const float* x, int64_t K, const Weight* w, float* t) {
  if constexpr (R == 1) {
    t[0] = dot_weights(x, w, K);
    return;
  }
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vzero();
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    const V wv = vload_weight(w + k);
    for (int r = 0; r < R; ++r) acc[r] = vfmadd(vload(x + r * K + k), wv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    t[r] = vhsum(acc[r]);
    for (int64_t j = k; j < K; ++j) t[r] += x[r * K + j] * float(w[j]);
  }
}

// For columns j in [j0, j1) and rows i < M in groups of kLowpRows (weight row outer, so each
// weight row is read from memory once per call): dots(i, R, j, t) fills t[0, R) with the sums
// of rows i .. i + R - 1 against weight row j (R a std::integral_constant: kLowpRows, or 1 for
// the rows left over); then out[i * ldo + j] = (or += if accumulate) value(i, j, t) + bias[j]
// (bias may be null).
template <class Sum, class Dots, class Value>
static inline void gemv_driver(int64_t M, int64_t j0, int64_t j1, const float* bias, float* out,
                               int64_t ldo, bool accumulate, const Dots& dots,
                               const Value& value) {
  Sum t[kLowpRows];
  for (int64_t j = j0; j < j1; ++j) {
    for (int64_t i = 0; i < M; i += kLowpRows) {
      const int rows = int(std::min<int64_t>(kLowpRows, M - i));
      if (rows == kLowpRows)
        dots(i, std::integral_constant<int, kLowpRows>(), j, t);
      else
        for (int r = 0; r < rows; ++r) dots(i + r, std::integral_constant<int, 1>(), j, t + r);
      for (int r = 0; r < rows; ++r) {
        const float v = value(i + r, j, t[r]) + (bias ? bias[j] : 0.f);
        float* o = out + (i + r) * ldo + j;
        *o = accumulate ? *o + v : v;
      }
    }
  }
}

// out[i * ldo + j] (=, or += if accumulate) scale[j] * dot(x_i, w_j) + bias[j] for rows i < M
// of x (M, K) and columns j in [j0, j1) of w (N, K): gemv_cols (decode_kernel.h) on
// low-precision weights, each weight vector widened once per group of rows. scale and bias
// may be null.
template <class Weight>
static inline void gemv_cols_lowp(const float* x, int64_t M, int64_t K, const Weight* w,
                                  const float* scale, const float* bias, int64_t j0, int64_t j1,
                                  float* out, int64_t ldo, bool accumulate) {
  gemv_driver<float>(
      M, j0, j1, bias, out, ldo, accumulate,
      [&](int64_t i, auto R, int64_t j, float* t) { dot_rows<R()>(x + i * K, K, w + j * K, t); },
      [&](int64_t, int64_t j, float t) { return scale ? t * scale[j] : t; });
}

static inline void gemv_cols_q8(const float* x, int64_t M, int64_t K, const int8_t* w,
                                const float* scale, const float* bias, int64_t j0, int64_t j1,
                                float* out, int64_t ldo, bool accumulate) {
  gemv_cols_lowp(x, M, K, w, scale, bias, j0, j1, out, ldo, accumulate);
}

#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
// bf16 on the native dot product: xb (M, K) are the activations rounded to bf16. Each
// vdpbf16ps adds a pair of products per lane; the tail of a row is read through a mask (zeros
// beyond K add nothing). Called only where cpu_has_bf16_dot().
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void gemv_cols_bf16_dot(const c10::BFloat16* xb, int64_t M, int64_t K,
                               const c10::BFloat16* w, const float* bias, int64_t j0, int64_t j1,
                               float* out, int64_t ldo) {
  constexpr int kPairs = 32;  // bf16 per 512-bit vector
  const int64_t full = K / kPairs * kPairs;
  const __mmask32 tail = static_cast<__mmask32>((uint64_t(1) << (K - full)) - 1);
  auto load = [](const c10::BFloat16* p) {
    return (__m512bh)_mm512_loadu_si512(reinterpret_cast<const void*>(p));
  };
  auto load_tail = [tail](const c10::BFloat16* p) {
    return (__m512bh)_mm512_maskz_loadu_epi16(tail, reinterpret_cast<const void*>(p));
  };
  for (int64_t j = j0; j < j1; ++j) {
    const c10::BFloat16* wj = w + j * K;
    for (int64_t i0 = 0; i0 < M; i0 += kLowpRows) {
      const int rows = int(std::min<int64_t>(kLowpRows, M - i0));
      __m512 acc[kLowpRows];
      for (int r = 0; r < kLowpRows; ++r) acc[r] = _mm512_setzero_ps();
      for (int64_t k = 0; k < full; k += kPairs) {
        const __m512bh wv = load(wj + k);
        for (int r = 0; r < rows; ++r) acc[r] = _mm512_dpbf16_ps(acc[r], load(xb + (i0 + r) * K + k), wv);
      }
      if (full < K) {
        const __m512bh wv = load_tail(wj + full);
        for (int r = 0; r < rows; ++r)
          acc[r] = _mm512_dpbf16_ps(acc[r], load_tail(xb + (i0 + r) * K + full), wv);
      }
      for (int r = 0; r < rows; ++r)
        out[(i0 + r) * ldo + j] = _mm512_reduce_add_ps(acc[r]) + (bias ? bias[j] : 0.f);
    }
  }
}
#endif

// ---- w8a8 ----

// The activations as gemv_cols_w8a8 reads them: x (M, K) quantized (quantize_rows) into qa
// (M, K) and sa (M,), qa signed, or offset by 128 where the kernel runs on VNNI (vpdpbusd takes
// unsigned bytes; 128 * sum(w) is taken off after the sums).
static inline void prepare_w8a8_rows(const float* x, int64_t M, int64_t K, int8_t* qa,
                                     float* sa) {
  quantize_rows(x, M, K, qa, sa);
#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
  if (cpu_has_vnni())
    for (int64_t n = 0; n < M * K; ++n) qa[n] = int8_t(uint8_t(qa[n]) ^ 0x80u);
#endif
}

// R int8 rows of a (row r at a + r * K) against one int8 weight row: R exact int32 sums.
#if SMALLMIND_ISA_LEVEL >= 1
// 256-bit vpmaddubsw + vpmaddwd: the AVX2 form, and the AVX-512 form on a CPU without VNNI
// (AVX-512 has no vpsignb to move w's sign onto a; with VNNI, gemv_cols_w8a8_vnni below
// replaces the whole loop).
template <int R>
static inline void dot_i8_rows(const int8_t* a, int64_t K, const int8_t* w, int32_t* t) {
  __m256i acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    const __m256i wv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + k));
    const __m256i w_abs = _mm256_abs_epi8(wv);  // as unsigned bytes: 0..128
    for (int r = 0; r < R; ++r) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + r * K + k));
      const __m256i pairs = _mm256_maddubs_epi16(w_abs, _mm256_sign_epi8(av, wv));
      acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(pairs, ones));
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[r]), _mm256_extracti128_si256(acc[r], 1));
    const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    t[r] = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xB1)));
    for (int64_t j = k; j < K; ++j) t[r] += int32_t(a[r * K + j]) * int32_t(w[j]);
  }
}
#else
template <int R>
static inline void dot_i8_rows(const int8_t* a, int64_t K, const int8_t* w, int32_t* t) {
  for (int r = 0; r < R; ++r) {
    int32_t s = 0;
    for (int64_t k = 0; k < K; ++k) s += int32_t(a[r * K + k]) * int32_t(w[k]);
    t[r] = s;
  }
}
#endif

// out[i * ldo + j] (=, or += if accumulate) (dot(qa_i, w_j) * sa[i]) * sw[j] + bias[j] for
// rows i < M of the activations qa, sa (prepare_w8a8_rows) and columns j in [j0, j1) of w (N,
// K): gemv_cols_lowp on int8 activations. bias may be null.
static inline void gemv_cols_w8a8_generic(const int8_t* qa, const float* sa, int64_t M,
                                          int64_t K, const int8_t* w, const float* sw,
                                          const float* bias, int64_t j0, int64_t j1, float* out,
                                          int64_t ldo, bool accumulate) {
  gemv_driver<int32_t>(
      M, j0, j1, bias, out, ldo, accumulate,
      [&](int64_t i, auto R, int64_t j, int32_t* t) {
        dot_i8_rows<R()>(qa + i * K, K, w + j * K, t);
      },
      [&](int64_t i, int64_t j, int32_t t) { return float(t) * sa[i] * sw[j]; });
}

#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
// gemv_cols_w8a8 on AVX512_VNNI. vpdpbusd multiplies unsigned by signed bytes: the
// activations come in as q + 128 (prepare_w8a8_rows), and 128 * sum(w), accumulated by a
// second vpdpbusd per weight vector, is taken off at the end. Weight row outer, each read
// once front to back (a stream the prefetcher follows); two accumulators per sum, so that
// consecutive vpdpbusd do not wait on each other.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void gemv_cols_w8a8_vnni(const int8_t* qa, const float* sa, int64_t M, int64_t K,
                                const int8_t* w, const float* sw, const float* bias, int64_t j0,
                                int64_t j1, float* out, int64_t ldo, bool accumulate) {
  const auto* au = reinterpret_cast<const uint8_t*>(qa);
  const __m512i offset = _mm512_set1_epi8(char(0x80));
  const int64_t full = K / 64 * 64;
  const __mmask64 tail = full < K ? (__mmask64(1) << (K - full)) - 1 : 0;
  for (int64_t j = j0; j < j1; ++j) {
    const int8_t* wj = w + j * K;
    for (int64_t i = 0; i < M; ++i) {
      const uint8_t* a = au + i * K;
      __m512i acc0 = _mm512_setzero_si512(), acc1 = acc0, corr0 = acc0, corr1 = acc0;
      int64_t k = 0;
      for (; k + 128 <= full; k += 128) {
        const __m512i w0 = _mm512_loadu_si512(wj + k), w1 = _mm512_loadu_si512(wj + k + 64);
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(a + k), w0);
        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_loadu_si512(a + k + 64), w1);
        corr0 = _mm512_dpbusd_epi32(corr0, offset, w0);
        corr1 = _mm512_dpbusd_epi32(corr1, offset, w1);
      }
      if (k < full) {
        const __m512i w0 = _mm512_loadu_si512(wj + k);
        acc0 = _mm512_dpbusd_epi32(acc0, _mm512_loadu_si512(a + k), w0);
        corr0 = _mm512_dpbusd_epi32(corr0, offset, w0);
      }
      if (tail) {  // beyond K: w reads as 0, so those lanes add nothing
        const __m512i w0 = _mm512_maskz_loadu_epi8(tail, wj + full);
        acc1 = _mm512_dpbusd_epi32(acc1, _mm512_maskz_loadu_epi8(tail, a + full), w0);
        corr1 = _mm512_dpbusd_epi32(corr1, offset, w0);
      }
      const __m512i sum = _mm512_sub_epi32(_mm512_add_epi32(acc0, acc1),
                                           _mm512_add_epi32(corr0, corr1));
      const float v = float(_mm512_reduce_add_epi32(sum)) * sa[i] * sw[j] + (bias ? bias[j] : 0.f);
      float* o = out + i * ldo + j;
      *o = accumulate ? *o + v : v;
    }
  }
}
#endif

static inline void gemv_cols_w8a8(const int8_t* qa, const float* sa, int64_t M, int64_t K,
                                  const int8_t* w, const float* sw, const float* bias, int64_t j0,
                                  int64_t j1, float* out, int64_t ldo, bool accumulate) {
#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
  if (cpu_has_vnni()) {
    gemv_cols_w8a8_vnni(qa, sa, M, K, w, sw, bias, j0, j1, out, ldo, accumulate);
    return;
  }
#endif
  gemv_cols_w8a8_generic(qa, sa, M, K, w, sw, bias, j0, j1, out, ldo, accumulate);
}

// ---- w4a8: int4 weights, group-wise, with int8 activations ----
//
// The weight (N, K) as weight_formats.quantize_int4 stores it: per (row n, group g of G inputs,
// G a multiple of 32 dividing K) a float32 scale[n, g], and q in [-7, 7] stored as q + 8, two
// per byte, ggml q4_0's layout in each block of 32 inputs (16 bytes: byte i holds input i in
// its low nibble and input i + 16 in its high one). The activations are w8a8's (quantize_rows),
// the dot products exact int32 sums per group, then
//   y[m, n] = sa[m] * sum_g scale[n, g] * isum[m, n, g] + bias[n].
// A decode step reads half a byte per weight (plus 4 bytes per group), half of int8's.

constexpr int64_t kQ4Block = 32;   // inputs per packed block (16 bytes)
constexpr int64_t kQ4Chunk = 128;  // 4 blocks: one 512-bit vector of packed weights

// The naive loop: the rows of x quantized (quantize_rows), each group's sum of products exact in
// int32, scaled by its weight scale, summed over groups in order, then times sx[m], plus bias.
static inline void linear_w4a8_naive(const float* x, int64_t M, int64_t K, const uint8_t* w,
                                     const float* scales, int64_t G, const float* bias,
                                     float* y, int64_t N) {
  std::vector<int8_t> qx(M * K);
  std::vector<float> sx(M);
  quantize_rows(x, M, K, qx.data(), sx.data());
  const int64_t groups = K / G;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      float acc = 0.f;
      for (int64_t g = 0; g < groups; ++g) {
        int32_t isum = 0;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) {
          const uint8_t byte = w[n * (K / 2) + k / kQ4Block * 16 + k % 16];
          const int32_t q = int32_t(k % kQ4Block < 16 ? byte & 0xF : byte >> 4) - 8;
          isum += q * int32_t(qx[m * K + k]);
        }
        acc += float(isum) * scales[n * groups + g];
      }
      y[m * N + n] = acc * sx[m] + (bias ? bias[n] : 0.f);
    }
  }
}

// The activations as the fast kernels read them, made once per input (prepare_w4a8_rows): per
// row its int8 values (quantize_rows) in chunks of 4 blocks, each chunk the low halves (inputs
// 0..15) of its 4 blocks, then their high halves, so that one vector of packed weights, its low
// nibbles and its high nibbles, meets two vectors of activations (zeros past K); and per chunk 16
// int32 corrections, lane 4b = -8 * (the sum of block b's 32 activations): the kernels multiply
// the unsigned nibbles q + 8, and sum (q + 8) a - 8 sum a = sum q a.
struct W4A8Rows {
  const int8_t* q;       // (M, chunks * 128)
  const int32_t* corr;   // (M, chunks * 16)
  const float* s;        // (M,)
  int64_t chunks;
};

static inline int64_t q4_chunks(int64_t K) { return (K + kQ4Chunk - 1) / kQ4Chunk; }

// Floats of scratch prepare_w4a8_rows needs for M rows of K.
static inline size_t w4a8_scratch_floats(int64_t M, int64_t K) {
  const int64_t c = q4_chunks(K);
  return size_t(M + M * c * 16 + M * c * kQ4Chunk / 4 + (K + 3) / 4);
}

static inline W4A8Rows prepare_w4a8_rows(const float* x, int64_t M, int64_t K, float* scratch) {
  const int64_t chunks = q4_chunks(K);
  float* s = scratch;
  auto* corr = reinterpret_cast<int32_t*>(s + M);
  auto* q = reinterpret_cast<int8_t*>(corr + M * chunks * 16);
  auto* row = q + M * chunks * kQ4Chunk;  // one row in its natural order
  const int64_t blocks = K / kQ4Block;
  for (int64_t m = 0; m < M; ++m) {
    quantize_rows(x + m * K, 1, K, row, s + m);
    int8_t* qm = q + m * chunks * kQ4Chunk;
    int32_t* cm = corr + m * chunks * 16;
    std::memset(qm, 0, size_t(chunks * kQ4Chunk));
    std::fill(cm, cm + chunks * 16, 0);
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const int64_t c = bi / 4, b = bi % 4;
      const int8_t* src = row + bi * kQ4Block;
      std::memcpy(qm + c * kQ4Chunk + b * 16, src, 16);
      std::memcpy(qm + c * kQ4Chunk + 64 + b * 16, src + 16, 16);
      int32_t sum = 0;
      for (int i = 0; i < kQ4Block; ++i) sum += src[i];
      cm[c * 16 + b * 4] = -8 * sum;
    }
  }
  return {q, corr, s, chunks};
}

// The weight scales of chunk c's 4 blocks (0 past the row's last block) into s4; a pointer to
// them (into the scales themselves where the groups are the blocks and the chunk is whole).
static inline const float* q4_chunk_scales(const float* sj, int64_t c, int64_t blocks,
                                           int64_t G, float* s4) {
  if (G == kQ4Block && 4 * c + 4 <= blocks) return sj + 4 * c;
  for (int64_t b = 0; b < 4; ++b) {
    const int64_t bi = 4 * c + b;
    s4[b] = bi < blocks ? sj[bi * kQ4Block / G] : 0.f;
  }
  return s4;
}

// R prepared rows (from row i) against one int4 weight row (wj packed, sj its scales): R sums
// sum_g scale[g] * isum[g] (the rows' sa not yet applied).
#if SMALLMIND_ISA_LEVEL >= 1
// 256-bit: the nibbles (unsigned) times the activations (signed) by vpmaddubsw, whose int16 pair
// sums stay below 2 * 15 * 127 (two of them added: below 2^15), widened by vpmaddwd; the AVX2
// form, and the AVX-512 form on a CPU without VNNI.
template <int R>
static inline void dot_q4_rows(const W4A8Rows& a, int64_t i, int64_t K, const uint8_t* wj,
                               const float* sj, int64_t G, float* t) {
  const int64_t blocks = K / kQ4Block;
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  __m256 acc[R];
  for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
  float s4[4];
  for (int64_t c = 0; c < a.chunks; ++c) {
    const __m128 sv4 = _mm_loadu_ps(q4_chunk_scales(sj, c, blocks, G, s4));
    const int64_t left = blocks - 4 * c;  // blocks of this chunk, if fewer than 4
    for (int h = 0; h < 2; ++h) {
      if (2 * h >= left) break;
      const uint8_t* p = wj + c * 64 + h * 32;
      const __m256i pw = 2 * h + 1 < left
          ? _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))
          : _mm256_zextsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
      const __m256i lo = _mm256_and_si256(pw, low);
      const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(pw, 4), low);
      const __m256 sv = _mm256_permutevar8x32_ps(
          _mm256_castps128_ps256(sv4), _mm256_setr_epi32(2 * h, 2 * h, 2 * h, 2 * h, 2 * h + 1,
                                                         2 * h + 1, 2 * h + 1, 2 * h + 1));
      for (int r = 0; r < R; ++r) {
        const int8_t* ar = a.q + (i + r) * a.chunks * kQ4Chunk + c * kQ4Chunk + h * 32;
        const __m256i alo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar));
        const __m256i ahi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ar + 64));
        const __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(lo, alo),
                                               _mm256_maddubs_epi16(hi, ahi));
        const __m256i corr = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(a.corr + (i + r) * a.chunks * 16 + c * 16 + h * 8));
        const __m256i sums = _mm256_add_epi32(_mm256_madd_epi16(pairs, ones), corr);
        acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), sv, acc[r]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(acc[r]), _mm256_extractf128_ps(acc[r], 1));
    const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    t[r] = _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
  }
}
#else
template <int R>
static inline void dot_q4_rows(const W4A8Rows& a, int64_t i, int64_t K, const uint8_t* wj,
                               const float* sj, int64_t G, float* t) {
  const int64_t blocks = K / kQ4Block, per_group = G / kQ4Block;
  for (int r = 0; r < R; ++r) {
    const int8_t* ar = a.q + (i + r) * a.chunks * kQ4Chunk;
    float acc = 0.f;
    int32_t isum = 0;
    for (int64_t bi = 0; bi < blocks; ++bi) {
      const int8_t* ab = ar + bi / 4 * kQ4Chunk + bi % 4 * 16;  // low half; high at + 64
      const uint8_t* wb = wj + bi * 16;
      for (int k = 0; k < 16; ++k)
        isum += (int32_t(wb[k] & 0xF) - 8) * ab[k] + (int32_t(wb[k] >> 4) - 8) * ab[64 + k];
      if ((bi + 1) % per_group == 0) {
        acc += float(isum) * sj[bi / per_group];
        isum = 0;
      }
    }
    t[r] = acc;
  }
}
#endif

#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
// R rows on AVX512_VNNI: one 512-bit vector of packed weights is a chunk of 4 blocks; its low
// nibbles and its high nibbles each meet a vector of activations in one vpdpbusd (unsigned
// nibbles times signed activations), on top of the rows' corrections, so that lane 4b..4b+3
// hold block b's exact sum; those are scaled per lane (each block's group scale) and summed in
// float32, two accumulators per row (consecutive chunks do not wait on each other).
// One chunk c (pw: its packed weights) of R rows into their accumulators acc.
template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni"), always_inline))
static inline void q4_chunk_vnni(const int8_t* const* ar, const int32_t* const* cr, int64_t c,
                                 __m512i pw, __m512 sv, __m512* acc) {
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i lo = _mm512_and_si512(pw, low);
  const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(pw, 4), low);
  for (int r = 0; r < R; ++r) {
    __m512i sum = _mm512_loadu_si512(cr[r] + c * 16);
    sum = _mm512_dpbusd_epi32(sum, lo, _mm512_loadu_si512(ar[r] + c * kQ4Chunk));
    sum = _mm512_dpbusd_epi32(sum, hi, _mm512_loadu_si512(ar[r] + c * kQ4Chunk + 64));
    acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), sv, acc[r]);
  }
}

template <int R>
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
static void dot_q4_rows_vnni(const W4A8Rows& a, int64_t i, int64_t K, const uint8_t* wj,
                             const float* sj, int64_t G, float* t) {
  const int64_t blocks = K / kQ4Block;
  const __m512i lane_block = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc0[R], acc1[R];
  for (int r = 0; r < R; ++r) acc0[r] = acc1[r] = _mm512_setzero_ps();
  const int8_t* ar[R];
  const int32_t* cr[R];
  for (int r = 0; r < R; ++r) {
    ar[r] = a.q + (i + r) * a.chunks * kQ4Chunk;
    cr[r] = a.corr + (i + r) * a.chunks * 16;
  }
  float s4[4];
  auto scales_of = [&](int64_t c) {  // each block's group scale on its 4 lanes
    return _mm512_permutexvar_ps(
        lane_block, _mm512_castps128_ps512(_mm_loadu_ps(q4_chunk_scales(sj, c, blocks, G, s4))));
  };
  const int64_t full = blocks / 4;
  int64_t c = 0;
  for (; c + 2 <= full; c += 2) {
    q4_chunk_vnni<R>(ar, cr, c, _mm512_loadu_si512(wj + c * 64), scales_of(c), acc0);
    q4_chunk_vnni<R>(ar, cr, c + 1, _mm512_loadu_si512(wj + c * 64 + 64), scales_of(c + 1), acc1);
  }
  if (c < full) {
    q4_chunk_vnni<R>(ar, cr, c, _mm512_loadu_si512(wj + c * 64), scales_of(c), acc0);
    ++c;
  }
  if (c < a.chunks) {  // the last blocks, fewer than 4: 16 bytes each, zeros beyond
    const __mmask64 bytes = (__mmask64(1) << ((blocks - 4 * c) * 16)) - 1;
    q4_chunk_vnni<R>(ar, cr, c, _mm512_maskz_loadu_epi8(bytes, wj + c * 64), scales_of(c), acc1);
  }
  for (int r = 0; r < R; ++r) t[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc0[r], acc1[r]));
}
#endif

// out[i * ldo + j] (=, or += if accumulate) sa[i] * sum_g scale[j, g] * isum[i, j, g] + bias[j]
// for rows i < M of the prepared activations `a` and columns j in [j0, j1) of the int4 weight
// w (N, K / 2 bytes) with scales (N, K / G). bias may be null.
static inline void gemv_cols_w4a8(const W4A8Rows& a, int64_t M, int64_t K, const uint8_t* w,
                                  const float* scales, int64_t G, const float* bias, int64_t j0,
                                  int64_t j1, float* out, int64_t ldo, bool accumulate) {
  const int64_t groups = K / G;
  auto value = [&](int64_t i, int64_t, float t) { return t * a.s[i]; };
#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
  if (cpu_has_vnni()) {
    gemv_driver<float>(
        M, j0, j1, bias, out, ldo, accumulate,
        [&](int64_t i, auto R, int64_t j, float* t) {
          dot_q4_rows_vnni<R()>(a, i, K, w + j * (K / 2), scales + j * groups, G, t);
        },
        value);
    return;
  }
#endif
  gemv_driver<float>(
      M, j0, j1, bias, out, ldo, accumulate,
      [&](int64_t i, auto R, int64_t j, float* t) {
        dot_q4_rows<R()>(a, i, K, w + j * (K / 2), scales + j * groups, G, t);
      },
      value);
}

// Threads split the output features (each thread one contiguous range of whole weight rows):
// one OpenMP region per call, none for a single thread or a small N. part(j0, j1) computes
// columns [j0, j1).
template <class Part>
static inline void split_columns(int64_t N, int nthreads, const Part& part) {
  // a thread per at least 64 weight rows: below that the region costs more than it saves
  const int64_t teams = std::max<int64_t>(1, std::min<int64_t>(nthreads, N / 64));
  if (teams <= 1) {
    part(int64_t(0), N);
    return;
  }
#pragma omp parallel num_threads(int(teams))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    part(N * t / nt, N * (t + 1) / nt);
  }
}

// The linear_q8 op: x (M, K) row-major, y (M, N) row-major.
static inline void linear_q8(const float* x, int64_t M, int64_t K, const int8_t* w,
                             const float* scale, const float* bias, float* y, int64_t N,
                             int nthreads) {
  split_columns(N, nthreads, [&](int64_t j0, int64_t j1) {
    gemv_cols_q8(x, M, K, w, scale, bias, j0, j1, y, N, false);
  });
}

// The linear_bf16 op: xb (M, K) the activations rounded to bf16, xr the same values as float32
// (the generic path reads these), y (M, N) row-major.
static inline void linear_bf16(const c10::BFloat16* xb, const float* xr, int64_t M, int64_t K,
                               const c10::BFloat16* w, const float* bias, float* y, int64_t N,
                               int nthreads) {
#if SMALLMIND_ISA_LEVEL == 2 && SMALLMIND_X86
  if (cpu_has_bf16_dot()) {
    split_columns(N, nthreads, [&](int64_t j0, int64_t j1) {
      gemv_cols_bf16_dot(xb, M, K, w, bias, j0, j1, y, N);
    });
    return;
  }
#endif
  (void)xb;
  split_columns(N, nthreads, [&](int64_t j0, int64_t j1) {
    gemv_cols_lowp(xr, M, K, w, static_cast<const float*>(nullptr), bias, j0, j1, y, N, false);
  });
}

// The linear_w8a8 op: x (M, K) prepared into qa (M, K) and sa (M,) (prepare_w8a8_rows), then
// y (M, N) row-major.
static inline void linear_w8a8(const float* x, int8_t* qa, float* sa, int64_t M, int64_t K,
                               const int8_t* w, const float* sw, const float* bias, float* y,
                               int64_t N, int nthreads) {
  prepare_w8a8_rows(x, M, K, qa, sa);
  split_columns(N, nthreads, [&](int64_t j0, int64_t j1) {
    gemv_cols_w8a8(qa, sa, M, K, w, sw, bias, j0, j1, y, N, false);
  });
}

// The linear_q4 op: x (M, K) prepared (prepare_w4a8_rows) in per-thread scratch (no allocation
// once grown), then y (M, N) row-major on the int4 weight w with its scales (N, K / G).
static inline void linear_w4a8(const float* x, int64_t M, int64_t K, const uint8_t* w,
                               const float* scales, int64_t G, const float* bias, float* y,
                               int64_t N, int nthreads) {
  static thread_local Scratch scratch;
  const W4A8Rows a = prepare_w4a8_rows(x, M, K, scratch.get(w4a8_scratch_floats(M, K)));
  split_columns(N, nthreads, [&](int64_t j0, int64_t j1) {
    gemv_cols_w4a8(a, M, K, w, scales, G, bias, j0, j1, y, N, false);
  });
}

}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
