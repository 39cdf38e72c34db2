// Linear layers on low-precision weights (the `weights` switch), x float32 (..., K), bias
// float32 (N,) or None, a new (..., N) float32 result:
//   linear_q8(x, w_q, scale, bias) = x @ (scale[:, None] * w_q)^T + bias, w_q int8 (N, K),
//     scale float32 (N,): weight-only int8, float32 activations and arithmetic;
//   linear_bf16(x, w, bias) = bf16(x) @ w^T + bias, w bfloat16 (N, K): the activations are
//     rounded to bf16 as a bf16 dot product reads them, the products summed in float32;
//   linear_w8a8(x, w_q, scale, bias): linear_q8's weights with the rows of x quantized to int8
//     on the fly (symmetric, per row), exact int32 dot products (VNNI where the CPU has it);
//   linear_q4(x, w_packed, scales, group_size, bias): int4 weights, group-wise (uint8 (N, K / 2),
//     two per byte; float32 scales (N, K / group_size)), the rows of x quantized as w8a8's, exact
//     int32 sums per group: y = sx[m] * sum_g scale[n, g] * isum[m, n, g] + bias[n]. Inference
//     only (no autograd formula, no *_inference twin).
// The two int8 ops run the library's GEMM from kLibraryGemmRows rows on (prefill; see there).
// Each has a no-autograd twin (*_inference) and an out-variant (*_out) that writes a contiguous
// `out` (through a temporary when out overlaps an input). The kernels, once per ISA, are in
// linear_lowp_kernel.h; the formats and the plain-PyTorch references are in weight_formats.py
// (linear_w8a8_reference) and ops/_linear_q8.py, ops/_linear_bf16.py.
#include <ATen/Parallel.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace {

// The checks of every low-precision linear after its weight's: the bias (float32 (N,),
// contiguous, optional); returns the output shape (..., N).
std::vector<int64_t> checked_output_shape(const char* op, const at::Tensor& x, int64_t N,
                                          const std::optional<at::Tensor>& bias) {
  if (bias) {
    check_cpu_float32(*bias, op, "bias");
    check_shape(*bias, {N}, op, "bias");
    check_contiguous(*bias, op, "bias");
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  return shape;
}

// The checks the two ops share: x, the weight (dtype, 2-D, contiguous), bias; returns the output
// shape (..., N).
std::vector<int64_t> lowp_check(const char* op, const at::Tensor& x, const at::Tensor& w,
                                const char* w_name, at::ScalarType w_dtype,
                                const std::optional<at::Tensor>& bias) {
  check_cpu_float32(x, op, "x");
  check_min_dim(x, 1, op, "x");
  check_cpu(w, op, w_name);
  check_dtype(w, w_dtype, op, w_name);
  check_dim(w, 2, op, w_name);
  check_contiguous(w, op, w_name);
  const int64_t N = w.size(0), K = w.size(1);
  check_same_size(x.size(-1), K, op, "x.size(-1)", (std::string(w_name) + ".size(1) (K)").c_str());
  return checked_output_shape(op, x, N, bias);
}

void check_scale(const at::Tensor& scale, int64_t N, const char* op) {
  check_cpu_float32(scale, op, "scale");
  check_shape(scale, {N}, op, "scale");
  check_contiguous(scale, op, "scale");
}

// y (contiguous, the checked shape) = the op on x; kernel(x (M, K) contiguous, M, y) runs it
// when there is anything to compute.
template <class Kernel>
void lowp_into(const at::Tensor& x, int64_t K, const std::optional<at::Tensor>& bias,
               at::Tensor& y, const Kernel& kernel) {
  if (y.numel() == 0) return;
  if (K == 0) {
    y.zero_();
    if (bias) y.add_(*bias);
    return;
  }
  const at::Tensor xc = x.contiguous();
  kernel(xc, xc.numel() / K, y);
}

// out = the op, through a temporary when out overlaps an input (any of `inputs`).
template <class Into>
void lowp_out(const std::vector<int64_t>& shape, const char* op, at::Tensor& out, bool overlaps,
              const at::Tensor& x, const Into& into) {
  check_out_float32(out, shape, op, "out");
  if (overlaps) {
    at::Tensor tmp = at::empty(shape, x.options());  // out overwrites an input
    into(tmp);
    out.copy_(tmp);
    return;
  }
  into(out);
}

bool overlaps_any(const at::Tensor& out, const at::Tensor& x, const at::Tensor& w,
                  const std::optional<at::Tensor>& bias) {
  return may_overlap(out, x) || (bias.has_value() && may_overlap(out, *bias)) ||
         extents_intersect(out, w);
}

// ---- int8 weights: linear_q8 (float32 activations) and linear_w8a8 (int8 activations) ----

// From this many rows on (a prefill), the library's GEMM does the work: our kernels are shaped
// for decode (each weight row read once, against a handful of rows), and cannot block for a
// large M as a GEMM does. int8: the float32 GEMM on the weight dequantized (into scratch, a
// block of rows at a time); w8a8: the library's int8 GEMM (torch._int_mm) on the quantized
// rows and the int8 weight, whose int32 sums are exact as ours are.
constexpr int64_t kLibraryGemmRows = 32;

// The weight dequantized for int8_gemm, scale[n] * w_q[n, k], in per-thread scratch (a fresh
// allocation per call would page-fault through megabytes).
at::Tensor dequantized(const at::Tensor& w_q, const at::Tensor& scale) {
  static thread_local Scratch scratch;
  const int64_t N = w_q.size(0), K = w_q.size(1);
  float* w = scratch.get(size_t(N * K));
  const int8_t* q = w_q.const_data_ptr<int8_t>();
  const float* sw = scale.const_data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t k = 0; k < K; ++k) w[n * K + k] = float(q[n * K + k]) * sw[n];
  });
  return at::from_blob(w, {N, K}, w_q.options().dtype(at::kFloat));
}

template <bool Int8Activations>
void int8_gemm(const at::Tensor& x2, const at::Tensor& w_q, const at::Tensor& scale,
               const std::optional<at::Tensor>& bias, at::Tensor y2) {
  const int64_t M = x2.size(0), K = x2.size(1), N = w_q.size(0);
  if constexpr (Int8Activations) {
    // the rows of x quantized (in scratch), then the library's int8 GEMM (exact int32 sums;
    // VNNI / AMX where the CPU has them), scaled as the kernels scale
    static thread_local Scratch scratch;
    float* s = scratch.get(size_t(M + (M * K + 3) / 4));
    auto* q = reinterpret_cast<int8_t*>(s + M);
    [&] {
      SMALLMIND_DISPATCH(current_isa(), quantize_rows, x2.const_data_ptr<float>(), M, K, q, s);
    }();
    // w_q (N, K) as the (K, N) operand: its transpose, strides (1, K); at K = 1 those are
    // (1, 1), which _int_mm misreads, so there the same memory as a (1, N) row-major view
    const at::Tensor w_t = K == 1 ? w_q.reshape({1, N}) : w_q.t();
    y2.copy_(at::_int_mm(at::from_blob(q, {M, K}, x2.options().dtype(at::kChar)), w_t));
    y2.mul_(at::from_blob(s, {M, 1}, x2.options())).mul_(scale);  // (sum * sx) * sw
    if (bias) y2.add_(*bias);
  } else {
    // the weight dequantized a block of rows at a time: its copy stays a few MiB, however
    // large N
    constexpr int64_t kBlockRows = 1024;
    for (int64_t n0 = 0; n0 < N; n0 += kBlockRows) {
      const int64_t rows = std::min(kBlockRows, N - n0);
      const at::Tensor w = dequantized(w_q.narrow(0, n0, rows), scale.narrow(0, n0, rows));
      at::Tensor y = y2.narrow(1, n0, rows);
      if (bias)
        at::addmm_out(y, bias->narrow(0, n0, rows), x2, w.t());
      else
        at::mm_out(y, x2, w.t());
    }
  }
}

template <bool Int8Activations>
void int8_into(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
               const std::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t N = w_q.size(0), K = w_q.size(1);
  lowp_into(x, K, bias, y, [&](const at::Tensor& xc, int64_t M, at::Tensor& out) {
    if (M >= kLibraryGemmRows) {
      int8_gemm<Int8Activations>(xc.view({M, K}), w_q, scale, bias, out.view({M, N}));
      return;
    }
    const float* b = bias ? bias->const_data_ptr<float>() : nullptr;
    if constexpr (Int8Activations) {
      // the activations quantized per row (prepared), in per-thread scratch (no allocation)
      static thread_local Scratch scratch;
      float* sa = scratch.get(size_t(M + (M * K + 3) / 4));
      auto* qa = reinterpret_cast<int8_t*>(sa + M);
      SMALLMIND_DISPATCH(current_isa(), linear_w8a8, xc.const_data_ptr<float>(), qa, sa, M, K,
                         w_q.const_data_ptr<int8_t>(), scale.const_data_ptr<float>(), b,
                         out.data_ptr<float>(), N, num_threads());
    } else {
      SMALLMIND_DISPATCH(current_isa(), linear_q8, xc.const_data_ptr<float>(), M, K,
                         w_q.const_data_ptr<int8_t>(), scale.const_data_ptr<float>(), b,
                         out.data_ptr<float>(), N, num_threads());
    }
  });
}

template <bool Int8Activations>
constexpr const char* int8_op_name() {
  return Int8Activations ? "linear_w8a8" : "linear_q8";
}

template <bool Int8Activations>
std::vector<int64_t> int8_check(const at::Tensor& x, const at::Tensor& w_q,
                                const at::Tensor& scale, const std::optional<at::Tensor>& bias) {
  constexpr const char* op = int8_op_name<Int8Activations>();
  std::vector<int64_t> shape = lowp_check(op, x, w_q, "w_q", at::kChar, bias);
  check_scale(scale, w_q.size(0), op);
  return shape;
}

template <bool Int8Activations>
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
                       const std::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty(int8_check<Int8Activations>(x, w_q, scale, bias),
                           x.options().memory_format(at::MemoryFormat::Contiguous));
  int8_into<Int8Activations>(x, w_q, scale, bias, y);
  return y;
}

template <bool Int8Activations>
void int8_linear_out(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
                     const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const std::vector<int64_t> shape = int8_check<Int8Activations>(x, w_q, scale, bias);
  lowp_out(shape, int8_op_name<Int8Activations>(), out,
           overlaps_any(out, x, w_q, bias) || may_overlap(out, scale), x,
           [&](at::Tensor& y) { int8_into<Int8Activations>(x, w_q, scale, bias, y); });
}

// ---- int4 weights: linear_q4 ----

// The checks of linear_q4; returns the output shape (..., N).
std::vector<int64_t> q4_check(const at::Tensor& x, const at::Tensor& w_packed,
                              const at::Tensor& scales, int64_t group_size,
                              const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear_q4";
  TORCH_CHECK_VALUE(group_size >= 1 && group_size % 32 == 0, "smallmind::", op,
                    ": group_size must be a positive multiple of 32 (32, 64, 96, ...), got ",
                    group_size);
  check_cpu_float32(x, op, "x");
  check_min_dim(x, 1, op, "x");
  check_cpu(w_packed, op, "w_packed");
  check_dtype(w_packed, at::kByte, op, "w_packed");
  check_dim(w_packed, 2, op, "w_packed");
  check_contiguous(w_packed, op, "w_packed");
  const int64_t N = w_packed.size(0), K = 2 * w_packed.size(1);
  check_same_size(x.size(-1), K, op, "x.size(-1)", "2 * w_packed.size(1) (K: two int4 per byte)");
  TORCH_CHECK(K % group_size == 0, "smallmind::", op, ": K = x.size(-1) = ", K,
              " must be a multiple of group_size = ", group_size);
  check_cpu_float32(scales, op, "scales");
  check_shape(scales, {N, K / group_size}, op, "scales");
  check_contiguous(scales, op, "scales");
  return checked_output_shape(op, x, N, bias);
}

void q4_into(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& scales,
             int64_t group_size, const std::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t N = w_packed.size(0), K = 2 * w_packed.size(1);
  lowp_into(x, K, bias, y, [&](const at::Tensor& xc, int64_t M, at::Tensor& out) {
    SMALLMIND_DISPATCH(current_isa(), linear_w4a8, xc.const_data_ptr<float>(), M, K,
                       w_packed.const_data_ptr<uint8_t>(), scales.const_data_ptr<float>(),
                       group_size, bias ? bias->const_data_ptr<float>() : nullptr,
                       out.data_ptr<float>(), N, num_threads());
  });
}

at::Tensor linear_q4(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& scales,
                     int64_t group_size, const std::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty(q4_check(x, w_packed, scales, group_size, bias),
                           x.options().memory_format(at::MemoryFormat::Contiguous));
  q4_into(x, w_packed, scales, group_size, bias, y);
  return y;
}

void linear_q4_out(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& scales,
                   int64_t group_size, const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const std::vector<int64_t> shape = q4_check(x, w_packed, scales, group_size, bias);
  lowp_out(shape, "linear_q4", out,
           overlaps_any(out, x, w_packed, bias) || may_overlap(out, scales), x,
           [&](at::Tensor& y) { q4_into(x, w_packed, scales, group_size, bias, y); });
}

std::string linear_q4_kernel_op() {
  if (current_isa() == Isa::avx512 && cpu_has_vnni()) return "avx512_vnni dot products";
  if (current_isa() == Isa::scalar) return "scalar int32 dot products";
  return "avx2 maddubs dot products";
}

// ---- bf16 ----

void linear_bf16_into(const at::Tensor& x, const at::Tensor& w,
                      const std::optional<at::Tensor>& bias, at::Tensor& y) {
  const int64_t N = w.size(0), K = w.size(1);
  lowp_into(x, K, bias, y, [&](const at::Tensor& xc, int64_t M, at::Tensor& out) {
    // The activations as the dot products read them: bf16 (round to nearest even), and the
    // same values as float32 for the widening path; in per-thread scratch, so that a decode
    // step allocates nothing here.
    static thread_local Scratch scratch;
    const int64_t n = M * K;
    float* xr = scratch.get(size_t(n + (n + 1) / 2));
    auto* xb = reinterpret_cast<c10::BFloat16*>(xr + n);
    const float* src = xc.const_data_ptr<float>();
    for (int64_t i = 0; i < n; ++i) {
      xb[i] = c10::BFloat16(src[i]);
      xr[i] = float(xb[i]);
    }
    SMALLMIND_DISPATCH(current_isa(), linear_bf16, xb, xr, M, K,
                       w.const_data_ptr<c10::BFloat16>(),
                       bias ? bias->const_data_ptr<float>() : nullptr, out.data_ptr<float>(), N,
                       num_threads());
  });
}

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w,
                       const std::optional<at::Tensor>& bias) {
  at::Tensor y = at::empty(lowp_check("linear_bf16", x, w, "w", at::kBFloat16, bias),
                           x.options().memory_format(at::MemoryFormat::Contiguous));
  linear_bf16_into(x, w, bias, y);
  return y;
}

void linear_bf16_out(const at::Tensor& x, const at::Tensor& w,
                     const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const std::vector<int64_t> shape = lowp_check("linear_bf16", x, w, "w", at::kBFloat16, bias);
  lowp_out(shape, "linear_bf16", out, overlaps_any(out, x, w, bias), x,
           [&](at::Tensor& y) { linear_bf16_into(x, w, bias, y); });
}

std::string linear_w8a8_kernel_op() {
  if (current_isa() == Isa::avx512 && cpu_has_vnni()) return "avx512_vnni dot products";
  if (current_isa() == Isa::scalar) return "scalar int32 dot products";
  return "avx2 maddubs dot products";
}

// Which kernel linear_bf16 runs now: "native bf16 dot products (avx512_bf16)" or "<isa>,
// bf16 widened to float32".
std::string linear_bf16_kernel_op() {
  if (current_isa() == Isa::avx512 && cpu_has_bf16_dot()) return "avx512_bf16 dot products";
  return std::string(isa_name(current_isa())) + ", bf16 widened to float32";
}

}  // namespace
}  // namespace smallmind

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("linear_q8(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def("linear_q8_inference(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def(
      "linear_q8_out(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None, *, Tensor(a!) out) "
      "-> ()");
  m.def("linear_bf16(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  m.def("linear_bf16_inference(Tensor x, Tensor w, Tensor? bias=None) -> Tensor");
  m.def("linear_bf16_out(Tensor x, Tensor w, Tensor? bias=None, *, Tensor(a!) out) -> ()");
  m.def("linear_bf16_kernel() -> str", &smallmind::linear_bf16_kernel_op);
  m.def("linear_w8a8(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def("linear_w8a8_inference(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor");
  m.def(
      "linear_w8a8_out(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None, *, Tensor(a!) out) "
      "-> ()");
  m.def("linear_w8a8_kernel() -> str", &smallmind::linear_w8a8_kernel_op);
  m.def(
      "linear_q4(Tensor x, Tensor w_packed, Tensor scales, int group_size, Tensor? bias=None) "
      "-> Tensor");
  m.def(
      "linear_q4_out(Tensor x, Tensor w_packed, Tensor scales, int group_size, "
      "Tensor? bias=None, *, Tensor(a!) out) -> ()");
  m.def("linear_q4_kernel() -> str", &smallmind::linear_q4_kernel_op);
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("linear_q8", &smallmind::int8_linear<false>);
  m.impl("linear_q8_inference", &smallmind::int8_linear<false>);
  m.impl("linear_q8_out", &smallmind::int8_linear_out<false>);
  m.impl("linear_bf16", &smallmind::linear_bf16);
  m.impl("linear_bf16_inference", &smallmind::linear_bf16);
  m.impl("linear_bf16_out", &smallmind::linear_bf16_out);
  m.impl("linear_w8a8", &smallmind::int8_linear<true>);
  m.impl("linear_w8a8_inference", &smallmind::int8_linear<true>);
  m.impl("linear_w8a8_out", &smallmind::int8_linear_out<true>);
  m.impl("linear_q4", &smallmind::linear_q4);
  m.impl("linear_q4_out", &smallmind::linear_q4_out);
}
