// What every smallmind kernel may use besides math: input checks, memory-overlap tests, the
// thread count, a scratch allocator and strided row addressing (StridedRows, View4).
//
// Input checks. Each is a TORCH_CHECK, so bad input becomes a Python RuntimeError naming the
// op, the argument, what it got and what is allowed (a ValueError, via TORCH_CHECK_VALUE, for
// a scalar argument out of range): never a segfault, a hang or a silent wrong answer.
// Integer arguments are compared without arithmetic that could overflow (write
// `q_offset <= Tk - Tq` once `Tq <= Tk` holds, not `q_offset + Tq <= Tk`).
//
// Threads. Two styles, on purpose. Row-parallel kernels (softmax, LayerNorm, attention,
// embedding) use at::parallel_for: independent rows, one fork/join per call. The GEMM and
// the fused decode ops use one OpenMP region instead, because their threads meet at
// `omp barrier`s inside the region (the GEMM packs a B panel together, then each thread
// computes its own tile; the decode step runs every stage of every block between barriers)
// and at::parallel_for has no barrier. Both run on torch's OpenMP pool and follow
// torch.get_num_threads().
//
// The kernels themselves are in kernels.h, compiled once per instruction set (simd.h).
#pragma once

#include <ATen/MemoryOverlap.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace smallmind {

// ---- input checks ----------------------------------------------------------------------

// Tensor lives on the CPU (these ops have CPU kernels only).
inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "smallmind::", op, ": '", name,
              "' must be a CPU tensor (only a CPU kernel is registered), got a tensor on ",
              t.device());
}

// Tensor has dtype `dt`; the message gives both the C++ and the Python name.
inline void check_dtype(const at::Tensor& t, c10::ScalarType dt, const char* op,
                        const char* name) {
  TORCH_CHECK(t.scalar_type() == dt, "smallmind::", op, ": '", name, "' must have dtype ",
              c10::toString(dt), " (torch.", c10::getDtypeNames(dt).first, "), got ",
              t.scalar_type());
}

// The common case: a float32 tensor on the CPU.
inline void check_cpu_float32(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  check_dtype(t, at::kFloat, op, name);
}

// Integer index tensor (int64) on the CPU.
inline void check_cpu_long(const at::Tensor& t, const char* op, const char* name) {
  check_cpu(t, op, name);
  check_dtype(t, at::kLong, op, name);
}

// Exact number of dimensions.
inline void check_dim(const at::Tensor& t, int64_t dim, const char* op, const char* name) {
  TORCH_CHECK(t.dim() == dim, "smallmind::", op, ": '", name, "' must be ", dim,
              "-D, got a ", t.dim(), "-D tensor of shape ", t.sizes());
}

// At least `dim` dimensions.
inline void check_min_dim(const at::Tensor& t, int64_t dim, const char* op,
                          const char* name) {
  TORCH_CHECK(t.dim() >= dim, "smallmind::", op, ": '", name, "' must have at least ", dim,
              " dimension(s), got shape ", t.sizes());
}

// Two sizes that must agree.
inline void check_same_size(int64_t a, int64_t b, const char* op, const char* what_a,
                            const char* what_b) {
  TORCH_CHECK(a == b, "smallmind::", op, ": size mismatch, ", what_a, " = ", a, " but ",
              what_b, " = ", b, " (they must be equal)");
}

// Full shape equality, e.g. an out= tensor against the expected result shape.
inline void check_shape(const at::Tensor& t, at::IntArrayRef expected, const char* op,
                        const char* name) {
  TORCH_CHECK(t.sizes() == expected, "smallmind::", op, ": '", name, "' must have shape ",
              expected, ", got ", t.sizes());
}

// Contiguity (required for out= buffers written in place).
inline void check_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "smallmind::", op, ": '", name,
              "' must be contiguous (row-major), got strides ", t.strides());
}

// An out= tensor: CPU float32, contiguous, the expected shape.
inline void check_out_float32(const at::Tensor& out, at::IntArrayRef expected, const char* op,
                              const char* name = "out") {
  check_cpu_float32(out, op, name);
  check_shape(out, expected, op, name);
  check_contiguous(out, op, name);
}

// LayerNorm's eps: finite and >= 0 (NaN or inf would turn every row into NaN or the bias).
inline void check_eps(double eps, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0.0, "smallmind::", op,
                    ": eps must be a finite number >= 0, got ", eps);
}

// Causal offset of a (Tq, Tk) block: 0 <= q_offset and q_offset + Tq <= Tk, checked in an
// order that cannot overflow (q_offset may be anything a Python int converts to).
inline void check_q_offset(int64_t q_offset, int64_t Tq, int64_t Tk, const char* op) {
  TORCH_CHECK_VALUE(Tq <= Tk && q_offset >= 0 && q_offset <= Tk - Tq, "smallmind::", op,
                    ": q_offset must satisfy 0 <= q_offset <= Tk - Tq (query i attends "
                    "keys 0..q_offset+i), got q_offset = ", q_offset, ", Tq = ", Tq,
                    ", Tk = ", Tk);
}

// ---- memory overlap --------------------------------------------------------------------

// Whether the bytes two tensors can touch intersect: [lowest, highest element] of each.
// Exact for contiguous tensors, a superset for strided views.
inline bool extents_intersect(const at::Tensor& a, const at::Tensor& b) {
  if (a.numel() == 0 || b.numel() == 0) return false;
  auto extent = [](const at::Tensor& t, const char*& lo, const char*& hi) {
    int64_t last = 0;  // offset of the farthest element (strides are >= 0 in torch)
    for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
    lo = static_cast<const char*>(t.const_data_ptr());
    hi = lo + (last + 1) * static_cast<int64_t>(t.element_size());
  };
  const char *alo, *ahi, *blo, *bhi;
  extent(a, alo, ahi);
  extent(b, blo, bhi);
  return alo < bhi && blo < ahi;
}

// Whether writing `out` may change what is read from `in`: ATen's answer where it has one,
// else (strided views) whether their extents intersect.
inline bool may_overlap(const at::Tensor& out, const at::Tensor& in) {
  switch (at::get_overlap_status(out, in)) {
    case at::MemOverlapStatus::Full:
    case at::MemOverlapStatus::Partial:
      return true;
    case at::MemOverlapStatus::No:
      return false;
    default:
      return extents_intersect(out, in);
  }
}

// ---- threads and scratch ---------------------------------------------------------------

// Threads for an OpenMP region, following torch.get_num_threads().
// The packed copy of a float32 weight (N, K) (nn.Linear's layout) for the blocked GEMM of the
// current ISA, from gemm.cpp's packed-weight cache (packed on a miss, repacked when the weight
// changed); null where the cache cannot hold it (then the GEMM packs it per call).
std::shared_ptr<const float> cached_packed_weight(const at::Tensor& weight, int nthreads);

inline int num_threads() {
  int n = at::get_num_threads();
  return n < 1 ? 1 : n;
}

// A growable 64-byte aligned float buffer. Kernels keep one per thread (thread_local), so
// repeated calls allocate nothing once it has grown to the largest size asked for.
struct Scratch {
  float* ptr = nullptr;
  size_t cap = 0;
  float* get(size_t n) {
    if (n > cap) {
      std::free(ptr);
      size_t bytes = ((n * sizeof(float) + 63) / 64) * 64;
      ptr = static_cast<float*>(std::aligned_alloc(64, bytes == 0 ? 64 : bytes));
      if (!ptr) throw std::bad_alloc();
      cap = n;
    }
    return ptr;
  }
  ~Scratch() { std::free(ptr); }
};

// ---- strided rows ----------------------------------------------------------------------

// Offsets of the rows of a tensor whose last dim is contiguous (stride 1) and whose other
// dims have arbitrary strides (views such as a transpose or a cache slice): row r is the
// r-th index over all dims but the last, in row-major order.
struct StridedRows {
  int64_t ndim = 0;         // number of leading dims (all but the last)
  int64_t sizes[16] = {0};
  int64_t strides[16] = {0};
  bool contiguous = true;   // rows evenly spaced by row_stride
  int64_t row_stride = 0;

  explicit StridedRows(const at::Tensor& t) {
    ndim = t.dim() - 1;
    TORCH_CHECK(ndim < 16, "smallmind: tensors with more than 16 dims are not supported, got ",
                t.dim(), " dims");
    for (int64_t d = 0; d < ndim; ++d) {
      sizes[d] = t.size(d);
      strides[d] = t.stride(d);
    }
    // collapse to one stride when the leading dims are uniformly spaced
    row_stride = ndim > 0 ? strides[ndim - 1] : 0;
    int64_t expect = row_stride;
    for (int64_t d = ndim - 1; d >= 0; --d) {
      if (sizes[d] != 1 && strides[d] != expect) contiguous = false;
      expect *= sizes[d];
    }
  }
  inline int64_t offset(int64_t r) const {
    if (contiguous) return r * row_stride;
    int64_t off = 0;
    for (int64_t d = ndim - 1; d >= 0; --d) {
      int64_t idx = r % sizes[d];
      r /= sizes[d];
      off += idx * strides[d];
    }
    return off;
  }
};

// A (B, nh, T, hs) float tensor whose last dim has stride 1: row (b, h, t) at
// p + b*s0 + h*s1 + t*s2 (views such as k_cache[:B, :, :T] of a bigger cache).
struct View4 {
  float* p;
  int64_t s0, s1, s2;
  inline float* row(int64_t b, int64_t h, int64_t t) const { return p + b * s0 + h * s1 + t * s2; }
};

}  // namespace smallmind
