// Shared input validation for the smallmind C++ ops.
//
// Every check is a TORCH_CHECK, so bad input becomes a Python RuntimeError with a
// message naming the op, the argument, what it got and what is allowed (never a segfault).
// Usage, inside an op:
//     SMALLMIND_CHECK_CPU_FLOAT32(x, "linear", "x");
//     smallmind::check_cpu_float32(x, "linear", "x");
//     smallmind::check_dim(x, 2, "gemm", "a");
//     smallmind::check_same_size(a.size(1), b.size(0), "gemm", "a.size(1)", "b.size(0)");
#pragma once

#include <torch/all.h>  // at::Tensor, TORCH_CHECK, c10::ScalarType
#include <ATen/Parallel.h>

#include <cstdint>
#include <string>

namespace smallmind {

// Tensor lives on the CPU (these ops have CPU kernels only).
inline void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "smallmind::", op, ": '", name,
              "' must be a CPU tensor (only a CPU kernel is registered), got a tensor on ",
              t.device());
}

// Tensor has dtype `dt`.
inline void check_dtype(const at::Tensor& t, c10::ScalarType dt, const char* op,
                        const char* name) {
  TORCH_CHECK(t.scalar_type() == dt, "smallmind::", op, ": '", name, "' must have dtype ",
              c10::toString(dt), ", got ", t.scalar_type());
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

// Same device for two tensors.
inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* op,
                              const char* name_a, const char* name_b) {
  TORCH_CHECK(a.device() == b.device(), "smallmind::", op, ": '", name_a, "' is on ",
              a.device(), " but '", name_b, "' is on ", b.device());
}

// Threads for an OpenMP region, following torch.get_num_threads().
inline int num_threads() {
  int n = at::get_num_threads();
  return n < 1 ? 1 : n;
}

}  // namespace smallmind

#define SMALLMIND_CHECK_CPU_FLOAT32(t, op, name) ::smallmind::check_cpu_float32((t), (op), (name))
#define SMALLMIND_CHECK_CPU_LONG(t, op, name) ::smallmind::check_cpu_long((t), (op), (name))
#define SMALLMIND_CHECK_DIM(t, d, op, name) ::smallmind::check_dim((t), (d), (op), (name))
#define SMALLMIND_CHECK_CONTIGUOUS(t, op, name) ::smallmind::check_contiguous((t), (op), (name))
