// Weight-only int8 matrix-vector products, one ISA (no include guard: kernels.h includes this
// once per ISA): the kernel of the linear_q8 op and of the int8 decode step (decode_kernel.h).
//
// y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] (+ bias[n]), x and y float32, w int8 (N, K)
// quantized per output channel (row n of the float weight ~ scale[n] * w[n, :]). A decode step
// reads every weight once, so int8 weights move a quarter of the bytes of float32 ones; the
// arithmetic stays float32 (each weight vector is widened with vload_i8 and fused into float
// accumulators), so the only error is the weights' rounding.

namespace smallmind {
namespace SMALLMIND_ISA_NS {

constexpr int kQ8Rows = 4;

// R rows of x (row r at x + r * K) against one int8 weight row: R dot products sharing each
// widened weight vector.
template <int R>
static inline void dot_q8_rows(const float* x, int64_t K, const int8_t* w, float* t) {
  V acc[R];
  for (int r = 0; r < R; ++r) acc[r] = vzero();
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    const V wv = vload_i8(w + k);
    for (int r = 0; r < R; ++r) acc[r] = vfmadd(vload(x + r * K + k), wv, acc[r]);
  }
  for (int r = 0; r < R; ++r) {
    t[r] = vhsum(acc[r]);
    for (int64_t j = k; j < K; ++j) t[r] += x[r * K + j] * float(w[j]);
  }
}

// out[i * ldo + j] (=, or += if accumulate) scale[j] * dot(x_i, w_j) + bias[j] for rows i < M
// of x (M, K) and columns j in [j0, j1) of w (N, K): gemv_cols (decode_kernel.h) on int8
// weights. Weight row outer, rows of x inner in groups of kQ8Rows, so each int8 row is read
// from memory once per call and widened once per group. bias may be null.
static inline void gemv_cols_q8(const float* x, int64_t M, int64_t K, const int8_t* w,
                                const float* scale, const float* bias, int64_t j0, int64_t j1,
                                float* out, int64_t ldo, bool accumulate) {
  auto emit = [&](int64_t i, int64_t j, float t) {
    const float v = t * scale[j] + (bias ? bias[j] : 0.f);
    float* o = out + i * ldo + j;
    *o = accumulate ? *o + v : v;
  };
  float t[kQ8Rows];
  for (int64_t j = j0; j < j1; ++j) {
    const int8_t* wj = w + j * K;
    int64_t i = 0;
    for (; i + kQ8Rows <= M; i += kQ8Rows) {
      dot_q8_rows<kQ8Rows>(x + i * K, K, wj, t);
      for (int r = 0; r < kQ8Rows; ++r) emit(i + r, j, t[r]);
    }
    for (; i < M; ++i) emit(i, j, dot_q8(x + i * K, wj, K));
  }
}

// The linear_q8 op: x (M, K) row-major, y (M, N) row-major. Threads split the output features
// (each thread one contiguous range of whole weight rows): one OpenMP region per call, none for
// a single thread or a small N.
static inline void linear_q8(const float* x, int64_t M, int64_t K, const int8_t* w,
                             const float* scale, const float* bias, float* y, int64_t N,
                             int nthreads) {
  // a thread per at least 64 weight rows: below that the region costs more than it saves
  const int64_t teams = std::max<int64_t>(1, std::min<int64_t>(nthreads, N / 64));
  if (teams <= 1) {
    gemv_cols_q8(x, M, K, w, scale, bias, 0, N, y, N, false);
    return;
  }
#pragma omp parallel num_threads(int(teams))
  {
    const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
    gemv_cols_q8(x, M, K, w, scale, bias, N * t / nt, N * (t + 1) / nt, y, N, false);
  }
}

}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
