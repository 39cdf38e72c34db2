// Weight-only int8 linear, one ISA (no include guard: kernels.h includes this once per ISA).
//
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] (+ bias[n]), x and y float32, w int8 (N, K)
// quantized per output channel (row n of the float weight ~ scale[n] * w[n, :]). A decode step
// reads every weight once, so int8 weights move a quarter of the bytes of float32 ones; the
// arithmetic stays float32 (each weight vector is widened with vload_i8 and fused into float
// accumulators), so the only error is the weights' rounding.
//
// Rows of x go in groups of up to kRows: each weight vector is loaded and widened once per
// group and multiplied into kRows accumulators, so a short prefill reads the weights once per
// group instead of once per row. Threads split the output features n (each thread one
// contiguous range, whole weight rows): one OpenMP region per call, none for a single thread.

namespace smallmind {
namespace SMALLMIND_ISA_NS {

constexpr int kQ8Rows = 4;

// R rows of x (row r at x + r * K) against weight rows [n0, n1): y row r at y + r * N.
template <int R>
static inline void linear_q8_rows(const float* x, int64_t K, const int8_t* w, const float* scale,
                                  const float* bias, float* y, int64_t N, int64_t n0,
                                  int64_t n1) {
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* wn = w + n * K;
    V acc[R];
    for (int r = 0; r < R; ++r) acc[r] = vzero();
    int64_t k = 0;
    for (; k + W <= K; k += W) {
      const V wv = vload_i8(wn + k);
      for (int r = 0; r < R; ++r) acc[r] = vfmadd(wv, vload(x + r * K + k), acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      float s = vhsum(acc[r]);
      for (int64_t j = k; j < K; ++j) s += float(wn[j]) * x[r * K + j];
      y[r * N + n] = s * scale[n] + (bias ? bias[n] : 0.0f);
    }
  }
}

// x (M, K) row-major, y (M, N) row-major; bias may be null.
static inline void linear_q8(const float* x, int64_t M, int64_t K, const int8_t* w,
                             const float* scale, const float* bias, float* y, int64_t N,
                             int nthreads) {
  auto range = [&](int64_t n0, int64_t n1) {
    int64_t m = 0;
    for (; m + kQ8Rows <= M; m += kQ8Rows)
      linear_q8_rows<kQ8Rows>(x + m * K, K, w, scale, bias, y + m * N, N, n0, n1);
    for (; m < M; ++m) linear_q8_rows<1>(x + m * K, K, w, scale, bias, y + m * N, N, n0, n1);
  };
  // a thread per at least 64 weight rows: below that the region costs more than it saves
  const int64_t teams = std::max<int64_t>(1, std::min<int64_t>(nthreads, N / 64));
  if (teams <= 1) {
    range(0, N);
    return;
  }
#pragma omp parallel num_threads(int(teams))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    range(N * t / nt, N * (t + 1) / nt);
  }
}

}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
