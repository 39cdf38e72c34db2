// BLIS-style single-precision GEMM of one ISA (no include guard: kernels.h includes this file
// once per ISA; see vec_math.h for V and W).
//
//   C (M x N, row-major, leading dimension ldc) = A (M x K) * B (K x N) [+ bias (N)]
//
// A and B are read through arbitrary element strides: A(i,k) = A[i*rsa + k*csa],
// B(k,j) = B[k*rsb + j*csb]. So a transposed operand costs nothing extra: `linear`
// (x @ W^T with W stored (N, K) row-major) passes B = W with rsb = 1, csb = K, and the
// backward's x^T @ grad passes a transposed view.
//
// Structure (Goto / BLIS):
//   for jc over N in NC columns            B block (KC x NC) packed once, shared by threads
//     for pc over K in KC                  (the K loop; first block writes bias, later ones add)
//       pack B(pc:pc+KC, jc:jc+NC) into NR-column micro-panels       (parallel over panels)
//       each thread owns a (rows x micro-panels) tile of C:
//         for ic over its rows in MC       A block (MC x KC) packed per thread into MR-row panels
//           for jr over its micro-panels   (B micro-panel stays in L1 / L2)
//             for ir over MR rows          MR x NR micro-kernel, MR * NR / W accumulators
// Micro-kernels: AVX-512 8 x 32 (16 zmm accumulators), AVX2 6 x 16 (12 ymm), plain C++ 4 x 4.
//
// Prepacked B (`bpacked`): the whole of B already in micro-panels (pack_b_all; the layout is
// packed_b_offset's), as the packed-weight cache of gemm.cpp keeps it for a linear layer's
// weight. Then nothing is packed per call but A, and the threads never wait for each other.
//
// Small M (decode, M <= kSmallM) skips packing: a GEMV-like path that streams B once.
// Threads: one OpenMP region (see common.h for why not at::parallel_for), `nthreads`
// supplied by the caller; torch's own libgomp is the one loaded, so the pool is ATen's.

namespace smallmind {
namespace SMALLMIND_ISA_NS {
namespace gemm {

// The naive loop: sgemm (below) as one dot product per element of C, in the order of k. For
// reading, and for the tests, which hold every ISA's sgemm to it (naive.cpp).
static inline void sgemm_naive(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa,
                               int64_t csa, const float* B, int64_t rsb, int64_t csb, float* C,
                               int64_t ldc, const float* bias) {
  for (int64_t i = 0; i < M; ++i) {
    for (int64_t j = 0; j < N; ++j) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += A[i * rsa + k * csa] * B[k * rsb + j * csb];
      C[i * ldc + j] = s + (bias ? bias[j] : 0.f);
    }
  }
}

#if SMALLMIND_ISA_LEVEL == 2
constexpr int MR = 8;         // 8 x 2 zmm accumulators + 2 B vectors: 18 of 32 registers
constexpr int NV = 2;         // vectors per micro-tile row: NR = 32
constexpr int64_t MC = 128;   // multiple of MR; A block MC*KC*4 = 128 KiB (L2)
constexpr const char* kKernelName = "avx512-8x32";
#elif SMALLMIND_ISA_LEVEL == 1
constexpr int MR = 6;         // 6 x 2 ymm accumulators + 2 B vectors + 1 A: 15 of 16 registers
constexpr int NV = 2;         // NR = 16
constexpr int64_t MC = 120;
constexpr const char* kKernelName = "avx2-fma-6x16";
#else
constexpr int MR = 4;
constexpr int NV = 4;         // NR = 4
constexpr int64_t MC = 64;
constexpr const char* kKernelName = "scalar-4x4";
#endif
constexpr int NR = NV * W;
static inline const char* kernel_name() { return kKernelName; }
constexpr int64_t KC = 256;
constexpr int64_t NC = 4096;    // multiple of NR; B block KC*NC*4 = 4 MiB max (L3)
constexpr int64_t kSmallM = 4;  // M <= kSmallM: unpacked GEMV-like path

// Packed A blocks (one per thread) and the shared packed B block.
static inline Scratch& scratch_a() {
  static thread_local Scratch s;
  return s;
}
static inline Scratch& scratch_b() {
  static thread_local Scratch s;
  return s;
}

// ---------------------------------------------------------------------------------------
// Packing
// ---------------------------------------------------------------------------------------

// A(ic:ic+mc, pc:pc+kc) -> MR-row micro-panels, each kc x MR (k-major), zero padded.
static inline void pack_a(const float* A, int64_t rsa, int64_t csa, int64_t mc, int64_t kc,
                          float* buf) {
  for (int64_t ip = 0; ip < mc; ip += MR) {
    const int64_t mr = std::min<int64_t>(MR, mc - ip);
    const float* a = A + ip * rsa;
    if (mr == MR && csa == 1) {
      const float* rp[MR];
      for (int r = 0; r < MR; ++r) rp[r] = a + r * rsa;
      for (int64_t k = 0; k < kc; ++k) {
        float* d = buf + k * MR;
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) d[r] = rp[r][k];
      }
    } else if (mr == MR && rsa == 1) {
      for (int64_t k = 0; k < kc; ++k) {
        const float* s = a + k * csa;
        float* d = buf + k * MR;
#pragma GCC unroll 16
        for (int r = 0; r < MR; ++r) d[r] = s[r];
      }
    } else {
      for (int64_t k = 0; k < kc; ++k) {
        float* d = buf + k * MR;
        int64_t r = 0;
        for (; r < mr; ++r) d[r] = a[r * rsa + k * csa];
        for (; r < MR; ++r) d[r] = 0.f;
      }
    }
    buf += MR * kc;
  }
}

// One NR-column micro-panel of B(pc:pc+kc, j:j+nr) -> kc x NR (k-major), zero padded.
static inline void pack_b_panel(const float* B, int64_t rsb, int64_t csb, int64_t kc,
                                int64_t nr, float* buf) {
  if (nr == NR && csb == 1) {
    for (int64_t k = 0; k < kc; ++k) {
      const float* s = B + k * rsb;
      float* d = buf + k * NR;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) vstore(d + v * W, vload(s + v * W));
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

// The whole of B packed once: for the k-block starting at pc (kc = min(KC, K - pc) deep),
// micro-panel p (columns p*NR ..) lies at packed_b_offset(pc, kc, p, N).
static inline int64_t packed_b_floats(int64_t K, int64_t N) { return ((N + NR - 1) / NR) * NR * K; }
static inline int64_t packed_b_offset(int64_t pc, int64_t kc, int64_t p, int64_t N) {
  return pc * ((N + NR - 1) / NR) * NR + p * kc * NR;
}

static inline void pack_b_all(int64_t K, int64_t N, const float* B, int64_t rsb, int64_t csb,
                              float* out, int nthreads) {
  const int64_t panels = (N + NR - 1) / NR, blocks = (K + KC - 1) / KC;
  const int64_t units = panels * blocks;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(nthreads, units)));
#pragma omp parallel for num_threads(nt) if (nt > 1) schedule(static)
  for (int64_t u = 0; u < units; ++u) {
    const int64_t pc = (u / panels) * KC, p = u % panels;
    const int64_t kc = std::min<int64_t>(KC, K - pc), j = p * NR;
    pack_b_panel(B + pc * rsb + j * csb, rsb, csb, kc, std::min<int64_t>(NR, N - j),
                 out + packed_b_offset(pc, kc, p, N));
  }
}

// ---------------------------------------------------------------------------------------
// Micro-kernel: tile (MR x NR) = Ap (kc x MR panel) * Bp (kc x NR panel)
//   C = (accumulate ? C : (bias ? bias : 0)) + tile      for a full MR x NR tile
// ---------------------------------------------------------------------------------------

// The naive form of the micro-kernel, for reading: acc[r][c] += Ap[k*MR + r] * Bp[k*NR + c].
// micro_kernel_full below is the same loop nest with the NR columns of a row held in NV
// vectors, every accumulator in a register (the r / v loops are fully unrolled).
static inline void micro_kernel_full(int64_t kc, const float* __restrict Ap,
                                     const float* __restrict Bp, float* C, int64_t ldc,
                                     const float* bias, bool accumulate) {
  V acc[MR][NV];
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = vzero();
#pragma GCC unroll 2
  for (int64_t k = 0; k < kc; ++k) {
    V b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = vload(Bp + v * W);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V a = vset1(Ap[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = vfmadd(a, b[v], acc[r][v]);
    }
    Ap += MR;
    Bp += NR;
  }
  const bool use_bias = !accumulate && bias != nullptr;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    float* cr = C + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V x = acc[r][v];
      if (accumulate) x = vadd(x, vload(cr + v * W));
      else if (use_bias) x = vadd(x, vload(bias + v * W));
      vstore(cr + v * W, x);
    }
  }
}

// Edge tile (mr < MR or nr < NR): compute the full padded tile into a scratch tile, then
// write back only the valid part.
static inline void micro_kernel_edge(int64_t kc, const float* Ap, const float* Bp, float* C,
                                     int64_t ldc, const float* bias, bool accumulate,
                                     int64_t mr, int64_t nr) {
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
// Small-M path (decode): no packing. Dot products along k, both operands contiguous in k.
// ---------------------------------------------------------------------------------------

// t[r * 4 + c] = dot(a_r, b_c) over K, r < 2, c < 4, b_c = B + c * ldb: each loaded b vector
// feeds two FMAs, the 8 sums reduced together (vhsum8).
static inline void dot_2x4(const float* a0, const float* a1, const float* B, int64_t ldb,
                           int64_t K, float* t) {
  const float* b0 = B;
  const float* b1 = b0 + ldb;
  const float* b2 = b1 + ldb;
  const float* b3 = b2 + ldb;
  V s[8];
  for (int i = 0; i < 8; ++i) s[i] = vzero();
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    const V x0 = vload(a0 + k), x1 = vload(a1 + k);
    V w = vload(b0 + k);
    s[0] = vfmadd(x0, w, s[0]); s[4] = vfmadd(x1, w, s[4]);
    w = vload(b1 + k);
    s[1] = vfmadd(x0, w, s[1]); s[5] = vfmadd(x1, w, s[5]);
    w = vload(b2 + k);
    s[2] = vfmadd(x0, w, s[2]); s[6] = vfmadd(x1, w, s[6]);
    w = vload(b3 + k);
    s[3] = vfmadd(x0, w, s[3]); s[7] = vfmadd(x1, w, s[7]);
  }
  vhsum8(s, t);
  for (; k < K; ++k) {
    t[0] += a0[k] * b0[k]; t[1] += a0[k] * b1[k]; t[2] += a0[k] * b2[k]; t[3] += a0[k] * b3[k];
    t[4] += a1[k] * b0[k]; t[5] += a1[k] * b1[k]; t[6] += a1[k] * b2[k]; t[7] += a1[k] * b3[k];
  }
}

// Columns [j0, j1) of C for rows [0, M), B(k,j) = B[j*csb + k] (contiguous in k, e.g.
// linear's W (N,K)); A rows contiguous in k (csa == 1). Row pairs against 4 columns at a
// time; a last odd row one column after the other (a single sequential stream of B, which
// the prefetchers follow best).
static inline void small_m_dot(int64_t M, int64_t K, const float* A, int64_t rsa,
                               const float* B, int64_t csb, float* C, int64_t ldc,
                               const float* bias, int64_t j0, int64_t j1) {
  float t[8];
  int64_t i = 0;
  for (; i + 2 <= M; i += 2) {
    const float* a0 = A + i * rsa;
    const float* a1 = a0 + rsa;
    float* c0 = C + i * ldc;
    float* c1 = c0 + ldc;
    int64_t j = j0;
    for (; j + 4 <= j1; j += 4) {
      dot_2x4(a0, a1, B + j * csb, csb, K, t);
      for (int c = 0; c < 4; ++c) {
        const float bv = bias ? bias[j + c] : 0.f;
        c0[j + c] = t[c] + bv;
        c1[j + c] = t[4 + c] + bv;
      }
    }
    for (; j < j1; ++j) {
      const float bv = bias ? bias[j] : 0.f;
      c0[j] = dot(a0, B + j * csb, K) + bv;
      c1[j] = dot(a1, B + j * csb, K) + bv;
    }
  }
  for (; i < M; ++i) {
    const float* a = A + i * rsa;
    float* c = C + i * ldc;
    for (int64_t j = j0; j < j1; ++j) c[j] = dot(a, B + j * csb, K) + (bias ? bias[j] : 0.f);
  }
}

// Columns [j0, j1) of C for rows [0, M), B(k,j) = B[k*rsb + j] (row-major B): axpy over
// the rows of B, 8 vectors of accumulators at a time.
static inline void small_m_axpy(int64_t M, int64_t K, const float* A, int64_t rsa, int64_t csa,
                                const float* B, int64_t rsb, float* C, int64_t ldc,
                                const float* bias, int64_t j0, int64_t j1) {
  for (int64_t i = 0; i < M; ++i) {
    const float* a = A + i * rsa;
    float* c = C + i * ldc;
    int64_t j = j0;
    for (; j + 8 * W <= j1; j += 8 * W) {
      V acc[8];
#pragma GCC unroll 8
      for (int t = 0; t < 8; ++t) acc[t] = bias ? vload(bias + j + t * W) : vzero();
      for (int64_t k = 0; k < K; ++k) {
        const V av = vset1(a[k * csa]);
        const float* b = B + k * rsb + j;
#pragma GCC unroll 8
        for (int t = 0; t < 8; ++t) acc[t] = vfmadd(av, vload(b + t * W), acc[t]);
      }
#pragma GCC unroll 8
      for (int t = 0; t < 8; ++t) vstore(c + j + t * W, acc[t]);
    }
    for (; j + W <= j1; j += W) {
      V acc = bias ? vload(bias + j) : vzero();
      for (int64_t k = 0; k < K; ++k) acc = vfmadd(vset1(a[k * csa]), vload(B + k * rsb + j), acc);
      vstore(c + j, acc);
    }
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

// Split `units_m` row units (MR rows) and `units_n` column units (NR columns) over `nth`
// threads as a tm x tn grid. Cost of a thread's tile, rows x cols elements: the FMAs
// (rows * cols per k) plus the operands it streams into L1 (rows + cols per k, weighted 2:
// about one vector load per 16 FMA lanes against one float of A or B per column / row), so
// a small M splits the columns (each thread streams half of B) and a small N the rows.
static inline void thread_grid(int nth, int64_t units_m, int64_t units_n, int* tm, int* tn) {
  double best = -1.0;
  for (int m = nth; m >= 1; --m) {
    if (nth % m) continue;
    const int n = nth / m;
    const double rows = double((units_m + m - 1) / m) * MR;
    const double cols = double((units_n + n - 1) / n) * NR;
    const double cost = rows * cols + 2.0 * (rows + cols);
    if (best < 0 || cost < best) {
      best = cost;
      *tm = m;
      *tn = n;
    }
  }
}

static inline void fill_bias(int64_t M, int64_t N, float* C, int64_t ldc, const float* bias) {
  for (int64_t i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (bias) std::memcpy(c, bias, sizeof(float) * N);
    else std::memset(c, 0, sizeof(float) * N);
  }
}

// Whether sgemm takes the small-M path (no packing) for these shapes and strides.
static inline bool small_m_path(int64_t M, int64_t rsb, int64_t csb, int64_t csa) {
  return M <= kSmallM && (csb == 1 || (rsb == 1 && csa == 1));
}

// C (M x N, row stride ldc, column stride 1) = A * B (+ bias). C must not alias A or B.
// bpacked: null, or B already packed by pack_b_all (then B's pointer and strides are only
// read on the small-M path).
static inline void sgemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa,
                         int64_t csa, const float* B, int64_t rsb, int64_t csb, float* C,
                         int64_t ldc, const float* bias, int nthreads,
                         const float* bpacked = nullptr) {
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
  const bool small_m = small_m_path(M, rsb, csb, csa);
  // Decoding (small M) is bound by streaming B from memory, and one core cannot saturate
  // the memory bus: split it once B is larger than the L2 cache (256 KiB), whatever the FLOPs.
  const bool streams_b = small_m && double(N) * double(K) * sizeof(float) >= 256.0 * 1024.0;
  if (flops < 2e6 && !streams_b) nt = 1;

  if (small_m) {
    const bool dot_form = !(csb == 1);
    const int64_t align = dot_form ? 8 : 8 * W;
    const int64_t chunks = (N + align - 1) / align;
    if (nt > chunks) nt = int(chunks);
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
      const int tid = omp_get_thread_num();
      const int nth = omp_get_num_threads();
      const int64_t c0 = chunks * tid / nth, c1 = chunks * (tid + 1) / nth;
      const int64_t j0 = c0 * align, j1 = std::min<int64_t>(N, c1 * align);
      if (j0 < j1) {
        if (dot_form) small_m_dot(M, K, A, rsa, B, csb, C, ldc, bias, j0, j1);
        else small_m_axpy(M, K, A, rsa, csa, B, rsb, C, ldc, bias, j0, j1);
      }
    }
    return;
  }

  const bool prepacked = bpacked != nullptr;
  const int64_t kc_max = std::min<int64_t>(K, KC);
  const int64_t nc_max = std::min<int64_t>(((N + NR - 1) / NR) * NR, NC);
  float* bpack = prepacked ? nullptr : scratch_b().get(size_t(kc_max) * size_t(nc_max));
  const int64_t units_m = (M + MR - 1) / MR;
  if (nt > units_m * ((N + NR - 1) / NR)) nt = int(units_m * ((N + NR - 1) / NR));

#pragma omp parallel num_threads(nt) if (nt > 1)
  {
    const int tid = omp_get_thread_num();
    const int nth = omp_get_num_threads();
    float* apack = scratch_a().get(size_t(MC) * size_t(kc_max));
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
        if (!prepacked) {
#pragma omp for schedule(static)
          for (int64_t p = 0; p < panels; ++p) {
            const int64_t j = jc + p * NR;
            pack_b_panel(B + pc * rsb + j * csb, rsb, csb, kc, std::min<int64_t>(NR, N - j),
                         bpack + p * NR * kc);
          }
          // (implicit barrier: the whole B block is packed)
        }
        for (int64_t ic = m0; ic < m1; ic += MC) {
          const int64_t mc = std::min<int64_t>(MC, m1 - ic);
          pack_a(A + ic * rsa + pc * csa, rsa, csa, mc, kc, apack);
          for (int64_t p = p0; p < p1; ++p) {
            const int64_t j = jc + p * NR;
            const int64_t nr = std::min<int64_t>(NR, N - j);
            const float* bp = prepacked ? bpacked + packed_b_offset(pc, kc, jc / NR + p, N)
                                        : bpack + p * NR * kc;
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
        if (!prepacked) {
#pragma omp barrier
        }
      }
    }
  }
}

}  // namespace gemm
}  // namespace SMALLMIND_ISA_NS
}  // namespace smallmind
