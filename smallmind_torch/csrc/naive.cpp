// The naive loops at the top of the kernel headers, as ops of their own (smallmind_naive::*), so
// that the tests can hold each fast op, on every ISA, to its naive loop (tests/test_ops_*.py,
// `test_matches_naive_loop`). Test-facing only: no production op or model path calls them.
// They run the plain C++ build of each loop (isa_scalar's), whatever ISA is selected, take the
// production op's arguments (contiguous copies where the loop wants them), and check only what
// would make a loop read out of bounds; the production ops' checks are the ones with messages.
#include <ATen/ops/empty.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <optional>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace naive_op {  // (its own namespace: the unity build sees every op's file-local names)
namespace {

namespace scalar = ::smallmind::isa_scalar;  // the plain C++ build of the loops
using OptTensor = std::optional<at::Tensor>;

void expect(bool ok, const char* op) {
  TORCH_CHECK(ok, "smallmind_naive::", op, ": arguments this test-facing loop does not take");
}

bool is_cpu(const at::Tensor& t, at::ScalarType dtype) {
  return t.device().is_cpu() && t.scalar_type() == dtype;
}

// An optional (N,) float32 tensor: contiguous, or undefined when absent.
at::Tensor vector_of(const OptTensor& t, int64_t N, const char* op) {
  if (!t.has_value() || !t->defined()) return at::Tensor();
  expect(is_cpu(*t, at::kFloat) && t->dim() == 1 && t->size(0) == N, op);
  return t->contiguous();
}

// x (..., K) as a contiguous (M, K) matrix (K may be 0)
at::Tensor rows_of(const at::Tensor& x) {
  const int64_t M = c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  return x.reshape({M, x.size(-1)}).contiguous();
}

const float* data_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<float>() : nullptr;
}

at::Tensor gemm(const at::Tensor& a, const at::Tensor& b) {
  expect(is_cpu(a, at::kFloat) && is_cpu(b, at::kFloat) && a.dim() == 2 && b.dim() == 2 &&
             a.size(1) == b.size(0), "gemm");
  at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
  scalar::gemm::sgemm_naive(a.size(0), b.size(1), a.size(1), a.const_data_ptr<float>(),
                           a.stride(0), a.stride(1), b.const_data_ptr<float>(), b.stride(0),
                           b.stride(1), out.data_ptr<float>(), b.size(1), nullptr);
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& weight, const OptTensor& bias) {
  expect(is_cpu(x, at::kFloat) && is_cpu(weight, at::kFloat) && x.dim() >= 1 &&
             weight.dim() == 2 && x.size(-1) == weight.size(1), "linear");
  const int64_t N = weight.size(0), K = weight.size(1);
  const at::Tensor b = vector_of(bias, N, "linear"), x2 = rows_of(x);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor out = at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  // B(k, j) = weight[j, k], read through the weight's strides
  scalar::gemm::sgemm_naive(x2.size(0), N, K, x2.const_data_ptr<float>(), K, 1,
                           weight.const_data_ptr<float>(), weight.stride(1), weight.stride(0),
                           out.data_ptr<float>(), N, data_or_null(b));
  return out;
}

at::Tensor attention(const at::Tensor& q_, const at::Tensor& k_, const at::Tensor& v_,
                     int64_t q_offset) {
  expect(is_cpu(q_, at::kFloat) && is_cpu(k_, at::kFloat) && k_.sizes() == v_.sizes() &&
             is_cpu(v_, at::kFloat) && q_.dim() == 4 && k_.dim() == 4 &&
             q_.size(0) == k_.size(0) && q_.size(1) == k_.size(1) && q_.size(3) == k_.size(3) &&
             q_offset >= 0 && q_.size(2) <= k_.size(2) && q_offset <= k_.size(2) - q_.size(2),
         "attention");
  const at::Tensor q = q_.contiguous(), k = k_.contiguous(), v = v_.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  scalar::attention_naive(q.const_data_ptr<float>(), k.const_data_ptr<float>(),
                         v.const_data_ptr<float>(), q.size(0) * q.size(1), q.size(2), k.size(2),
                         q.size(3), q_offset, out.data_ptr<float>());
  return out;
}

at::Tensor causal_softmax(const at::Tensor& scores, int64_t q_offset) {
  expect(is_cpu(scores, at::kFloat) && scores.dim() >= 2 && q_offset >= 0 &&
             scores.size(-2) <= scores.size(-1) &&
             q_offset <= scores.size(-1) - scores.size(-2), "causal_softmax");
  const at::Tensor x = scores.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  const int64_t Tq = x.size(-2), Tk = x.size(-1);
  if (x.numel() > 0)
    scalar::causal_softmax_naive(x.const_data_ptr<float>(), x.numel() / Tk, Tq, Tk, q_offset,
                                out.data_ptr<float>());
  return out;
}

at::Tensor layer_norm(const at::Tensor& x_, const OptTensor& weight, const OptTensor& bias,
                      double eps) {
  expect(is_cpu(x_, at::kFloat) && x_.dim() >= 1, "layer_norm");
  const at::Tensor x = x_.contiguous();
  const int64_t C = x.size(-1);
  const at::Tensor w = vector_of(weight, C, "layer_norm"), b = vector_of(bias, C, "layer_norm");
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() > 0)
    scalar::layer_norm_naive(x.const_data_ptr<float>(), x.numel() / C, C, data_or_null(w),
                            data_or_null(b), static_cast<float>(eps), out.data_ptr<float>());
  return out;
}

// The arguments of a low-precision linear as its loop takes them: x (..., K) float32 as a
// contiguous (M, K) matrix, the weight (N, K) of `w_dtype`, its scales (N,) or none, the bias
// (N,) or none, and the result (..., N).
struct Lowp {
  at::Tensor x, w, scale, bias, out;
  int64_t M, K, N;
};

Lowp lowp(const char* op, const at::Tensor& x, const at::Tensor& w, at::ScalarType w_dtype,
          const OptTensor& scale, const OptTensor& bias) {
  expect(is_cpu(x, at::kFloat) && is_cpu(w, w_dtype) && x.dim() >= 1 && w.dim() == 2 &&
             x.size(-1) == w.size(1), op);
  Lowp a;
  a.N = w.size(0);
  a.K = w.size(1);
  a.x = rows_of(x);
  a.M = a.x.size(0);
  a.w = w.contiguous();
  a.scale = vector_of(scale, a.N, op);
  a.bias = vector_of(bias, a.N, op);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = a.N;
  a.out = at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  return a;
}

// linear_q8, and linear_w8a8 (the rows of x quantized too)
template <bool Int8Activations>
at::Tensor linear_int8(const at::Tensor& x, const at::Tensor& w_q, const at::Tensor& scale,
                       const OptTensor& bias) {
  const Lowp a = lowp(Int8Activations ? "linear_w8a8" : "linear_q8", x, w_q, at::kChar, scale,
                      bias);
  const auto loop = Int8Activations ? scalar::linear_w8a8_naive
                                    : scalar::linear_lowp_naive<int8_t>;
  loop(a.x.const_data_ptr<float>(), a.M, a.K, a.w.const_data_ptr<int8_t>(),
       a.scale.const_data_ptr<float>(), data_or_null(a.bias), a.out.data_ptr<float>(), a.N);
  return a.out;
}

at::Tensor linear_bf16(const at::Tensor& x, const at::Tensor& w, const OptTensor& bias) {
  // the activations rounded to bf16, as the op's dot products read them
  const Lowp a = lowp("linear_bf16", x.to(at::kBFloat16).to(at::kFloat), w, at::kBFloat16,
                      std::nullopt, bias);
  scalar::linear_lowp_naive(a.x.const_data_ptr<float>(), a.M, a.K,
                            a.w.const_data_ptr<c10::BFloat16>(), nullptr, data_or_null(a.bias),
                            a.out.data_ptr<float>(), a.N);
  return a.out;
}

// linear_q4: int4 weights (uint8 (N, K / 2), scales (N, K / G)), the rows of x quantized
at::Tensor linear_q4(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& scales,
                     int64_t group_size, const OptTensor& bias) {
  constexpr const char* op = "linear_q4";
  expect(is_cpu(x, at::kFloat) && is_cpu(w_packed, at::kByte) && is_cpu(scales, at::kFloat) &&
             x.dim() >= 1 && w_packed.dim() == 2 && group_size >= 32 && group_size % 32 == 0 &&
             x.size(-1) == 2 * w_packed.size(1) && x.size(-1) % group_size == 0 &&
             scales.dim() == 2 && scales.size(0) == w_packed.size(0) &&
             scales.size(1) == x.size(-1) / group_size, op);
  const int64_t N = w_packed.size(0), K = x.size(-1);
  const at::Tensor b = vector_of(bias, N, op), x2 = rows_of(x), w = w_packed.contiguous(),
                   s = scales.contiguous();
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = N;
  at::Tensor out = at::empty(shape, x.options().memory_format(at::MemoryFormat::Contiguous));
  scalar::linear_w4a8_naive(x2.const_data_ptr<float>(), x2.size(0), K,
                            w.const_data_ptr<uint8_t>(), s.const_data_ptr<float>(), group_size,
                            data_or_null(b), out.data_ptr<float>(), N);
  return out;
}

void decode_block_(at::Tensor& x, at::TensorList params, at::Tensor& k_cache,
                   at::Tensor& v_cache, int64_t pos, int64_t n_head, double eps) {
  constexpr const char* op = "decode_block_";
  expect(is_cpu(x, at::kFloat) && x.is_contiguous() && x.dim() == 2 && n_head >= 1 &&
             x.size(1) % n_head == 0 && int64_t(params.size()) == decode_layout::kNumParams, op);
  const int64_t B = x.size(0), C = x.size(1), hs = C / n_head;
  DecodeLayer layer;
  for (int64_t i = 0; i < decode_layout::kNumParams; ++i) {
    const decode_layout::ParamShape shape = decode_layout::kParamShapes[i];
    const at::Tensor& p = params[i];
    expect(is_cpu(p, at::kFloat) && p.is_contiguous() &&
               p.numel() == shape.rows * C * (shape.cols ? shape.cols * C : 1), op);
    layer.p[i] = p.const_data_ptr<float>();
  }
  for (const at::Tensor* cache : {&k_cache, &v_cache})
    expect(is_cpu(*cache, at::kFloat) && cache->is_contiguous() && cache->dim() == 4 &&
               cache->size(0) >= B && cache->size(1) == n_head && cache->size(3) == hs &&
               cache->sizes() == k_cache.sizes() && pos >= 0 && pos < cache->size(2), op);
  layer.k_cache = k_cache.data_ptr<float>();
  layer.v_cache = v_cache.data_ptr<float>();
  scalar::decode::decode_block_naive(DecodeDims{B, C, n_head, hs, k_cache.size(2)}, layer, pos,
                                    static_cast<float>(eps), x.data_ptr<float>());
}

}  // namespace

TORCH_LIBRARY(smallmind_naive, m) {
  m.def("gemm(Tensor a, Tensor b) -> Tensor", &gemm);
  m.def("linear(Tensor x, Tensor weight, Tensor? bias=None) -> Tensor", &linear);
  m.def("attention(Tensor q, Tensor k, Tensor v, int q_offset=0) -> Tensor", &attention);
  m.def("causal_softmax(Tensor scores, int q_offset=0) -> Tensor", &causal_softmax);
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps=1e-05) -> Tensor",
        &layer_norm);
  m.def("linear_q8(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor",
        &linear_int8<false>);
  m.def("linear_bf16(Tensor x, Tensor w, Tensor? bias=None) -> Tensor", &linear_bf16);
  m.def("linear_w8a8(Tensor x, Tensor w_q, Tensor scale, Tensor? bias=None) -> Tensor",
        &linear_int8<true>);
  m.def(
      "linear_q4(Tensor x, Tensor w_packed, Tensor scales, int group_size, Tensor? bias=None) "
      "-> Tensor",
      &linear_q4);
  m.def(
      "decode_block_(Tensor(a!) x, Tensor[] params, Tensor(b!) k_cache, Tensor(c!) v_cache, "
      "int pos, int n_head, float eps) -> ()",
      &decode_block_);
}

}  // namespace naive_op
}  // namespace smallmind
