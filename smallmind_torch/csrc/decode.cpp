// Fused decode ops, inference only (no autograd formula): the whole model's decode step in one
// call (decode_step_), and one block (decode_block_). The kernels are decode_kernel.h's, in
// the current ISA's form; this file checks the arguments and lays out the pointers.
//
// decode_step_(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
//              n_head, eps, logits, next_tokens): T new tokens per sequence at absolute
// positions pos .. pos + T - 1 (T = 1: the decode step, llama2.c's `forward` for GPT-2; T > 1:
// a prompt's prefill, or speculative decoding's verify of T drafted tokens):
//   x = wte[tokens] + wpe[pos .. pos + T - 1]                         (B * T, C)
//   for each block l (its 12 tensors block_params[12 l : 12 l + 12], in decode_layout.h's
//   order, BLOCK_PARAMS of smallmind_torch/decode_layout.py):
//     x = decode_block(x)  (below, row after row: row t writes position pos + t of
//                           k_caches[l], v_caches[l] and attends over 0 .. pos + t: causal)
//   logits = ln_f(x) wte^T  (the lm head is tied to the token embedding), of every row
//                           (logits (B, T, V): verify) or of each sequence's last (B, 1, V)
//   next_tokens = argmax(logits, -1)  (torch.argmax's rule: first NaN, else first maximum)
// tokens: int64 (B,) or (B, T), ids in [0, V); wte (V, C), wpe (P, C) with pos + T <= P;
// caches (maxB, nh, S, hs), B <= maxB, pos + T <= S; logits (B, T, V), (B, 1, V) or, for
// T = 1, (B, V); next_tokens one per row of logits: (B, T), (B, 1) or (B,). Every float tensor
// is float32, every tensor written or read as a matrix contiguous; nothing written may share
// memory with anything else the op touches. Allocates nothing once its scratch has grown
// (scratch lives in thread_local buffers). On float32 weights with B * T >= kDecodeGemmRows
// (8) rows the matrices run on the blocked GEMM (decode_kernel.h: decode_step_gemm) on
// weights packed once (gemm.cpp's packed-weight cache).
//
// decode_step_q8_(..., weights_q8, scales_q8): the same step with int8 weights (weight-only,
// per output channel: the `weights` switch) for the four matrices of every block and the lm
// head, widened to float32 as they are read; biases, LayerNorms and embeddings stay float32.
// With int8_activations (the `w8a8` form) each matrix's input rows are quantized to int8 on
// the fly and the dot products are int8 (linear_lowp_kernel.h: VNNI where the CPU has it).
//
// decode_step_q4_(..., weights_q4, scales_q4, group_size): the same step with int4 weights,
// group-wise (weight_formats.quantize_int4: packed uint8 (N, K / 2), float32 scales
// (N, K / group_size)) for the same matrices, each input row quantized to int8 on the fly as
// w8a8's and each group's products summed exactly in int32 (linear_lowp_kernel.h).
//
// decode_block_(x, params, k_cache, v_cache, pos, n_head, eps): one pre-LN GPT-2 block, x
// (B, C) the residual stream updated in place; params its 12 tensors. Per row b:
//   h = LN1(x); q, k, v = (h c_attn_w^T + c_attn_b).split(C), each (nh, hs)
//   k_cache[b, :, pos] = k; v_cache[b, :, pos] = v
//   y_h = softmax(q_h K_h[0..pos]^T / sqrt(hs)) V_h[0..pos]
//   x += y attn_c_proj_w^T + attn_c_proj_b
//   h = LN2(x); fc = gelu_tanh(h c_fc_w^T + c_fc_b); x += fc mlp_c_proj_w^T + mlp_c_proj_b
// The kernels read step for step like decode_step_reference / decode_block_reference in
// smallmind_torch/fused_decode.py, with the same names. Why whole ops: through the module path
// a decode step is ~150 small op calls, each paying the dispatcher and Python, and every
// matrix-vector product forks and joins its threads; here one call pays once, and one
// OpenMP region serves the whole step. NaN in a cached key reaches x, as in torch.
#include <ATen/record_function.h>
#include <torch/custom_class.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "common.h"
#include "decode_layout.h"
#include "kernels.h"

namespace smallmind {
namespace {

using decode_layout::kNumParams;
using decode_layout::kParamNames;
using decode_layout::kQ8Params;
using decode_layout::kQ8PerBlock;

// Expected shape of parameter i (decode_layout.h's order) of a block of width C: rows, cols
// (cols = 0 for a 1-D tensor).
std::pair<int64_t, int64_t> param_shape(int64_t i, int64_t C) {
  const decode_layout::ParamShape s = decode_layout::kParamShapes[i];
  return {s.rows * C, s.cols * C};
}

void check_matrix(const at::Tensor& t, const char* op, const std::string& name) {
  check_cpu_float32(t, op, name.c_str());
  check_contiguous(t, op, name.c_str());
}

// One block parameter: CPU float32, contiguous, its shape. `name()` builds the name for a
// message: the checks run on every decode step, the names only on failure.
template <class NameFn>
void check_param(const at::Tensor& t, int64_t i, int64_t C, const char* op, NameFn name) {
  const auto [rows, cols] = param_shape(i, C);
  const bool shape_ok = cols == 0 ? (t.dim() == 1 && t.size(0) == rows)
                                  : (t.dim() == 2 && t.size(0) == rows && t.size(1) == cols);
  if (shape_ok && t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous())
    return;
  const std::string n = name();
  check_matrix(t, op, n);
  std::vector<int64_t> expected{rows};
  if (cols != 0) expected.push_back(cols);
  check_shape(t, expected, op, n.c_str());
}

// A KV cache: (maxB, n_head, S, head_dim), CPU float32, contiguous.
template <class NameFn>
void check_cache(const at::Tensor& t, int64_t nh, int64_t hs, const char* op, NameFn name) {
  if (t.dim() == 4 && t.size(1) == nh && t.size(3) == hs && t.device().is_cpu() &&
      t.scalar_type() == at::kFloat && t.is_contiguous())
    return;
  const std::string n = name();
  check_matrix(t, op, n);
  check_dim(t, 4, op, n.c_str());
  TORCH_CHECK(false, "smallmind::", op, ": '", n, "' must be (maxB, n_head, S, head_dim) = "
              "(maxB, ", nh, ", S, ", hs, "), got ", t.sizes());
}

// No tensor written by the op may share memory with any other tensor it reads or writes.
// Extents of every tensor, sorted by start, swept once: an interval overlaps an earlier one
// iff it starts before the furthest end seen so far (of a written one, or of any when it is
// written itself). `name(i)` builds the message only on failure.
struct Extent {
  const char* lo;
  const char* hi;
  int64_t id;
  bool written;
};

template <class NameFn>
void check_no_overlap(std::vector<Extent>& ext, const char* op, NameFn name) {
  std::sort(ext.begin(), ext.end(), [](const Extent& a, const Extent& b) { return a.lo < b.lo; });
  const Extent* far_any = nullptr;      // the extent reaching furthest so far
  const Extent* far_written = nullptr;  // the written one reaching furthest so far
  for (const Extent& e : ext) {
    const Extent* hit = nullptr;
    if (far_written != nullptr && e.lo < far_written->hi) hit = far_written;
    else if (e.written && far_any != nullptr && e.lo < far_any->hi) hit = far_any;
    if (hit != nullptr) {
      const Extent& w = hit->written ? *hit : e;  // the one written in place
      const Extent& other = hit->written ? e : *hit;
      TORCH_CHECK(false, "smallmind::", op, ": '", name(w.id), "' must not share memory with ",
                  name(other.id), " (it is written in place)");
    }
    if (far_any == nullptr || e.hi > far_any->hi) far_any = &e;
    if (e.written && (far_written == nullptr || e.hi > far_written->hi)) far_written = &e;
  }
}

Extent extent_of(const at::Tensor& t, int64_t id, bool written) {
  int64_t last = 0;  // offset of the farthest element (torch strides are >= 0)
  for (int64_t d = 0; d < t.dim(); ++d) last += (t.size(d) - 1) * t.stride(d);
  const char* lo = static_cast<const char*>(t.const_data_ptr());
  return Extent{lo, lo + (last + 1) * int64_t(t.element_size()), id, written};
}

// ---- decode_block_ -------------------------------------------------------------------------

DecodeDims check_block_args(const at::Tensor& x, at::TensorList params, const at::Tensor& k_cache,
                            const at::Tensor& v_cache, int64_t pos, int64_t n_head, double eps) {
  constexpr const char* op = "decode_block_";
  check_cpu_float32(x, op, "x");
  check_contiguous(x, op, "x");
  check_dim(x, 2, op, "x");
  const int64_t B = x.size(0), C = x.size(1);
  TORCH_CHECK(B >= 1 && C >= 1, "smallmind::", op, ": 'x' must be (B, C) with B, C >= 1, got ",
              x.sizes());
  TORCH_CHECK_VALUE(n_head >= 1 && C % n_head == 0, "smallmind::", op, ": n_head (", n_head,
                    ") must be positive and divide C = x.size(1) = ", C);
  check_eps(eps, op);
  TORCH_CHECK(int64_t(params.size()) == kNumParams, "smallmind::", op, ": 'params' must hold ",
              "the block's ", kNumParams, " tensors in decode_layout.BLOCK_PARAMS order (",
              kParamNames[0], ", ", kParamNames[1], ", ", kParamNames[2], ", ...), got ",
              params.size());
  auto param_name = [](int64_t i) {
    return "params[" + std::to_string(i) + "] (" + kParamNames[i] + ")";
  };
  for (int64_t i = 0; i < kNumParams; ++i)
    check_param(params[i], i, C, op, [&] { return param_name(i); });
  const int64_t nh = n_head, hs = C / n_head;
  check_cache(k_cache, nh, hs, op, [] { return std::string("k_cache"); });
  check_cache(v_cache, nh, hs, op, [] { return std::string("v_cache"); });
  TORCH_CHECK(k_cache.sizes() == v_cache.sizes(), "smallmind::", op,
              ": k_cache and v_cache must have the same shape, got ", k_cache.sizes(), " and ",
              v_cache.sizes());
  const int64_t maxB = k_cache.size(0), S = k_cache.size(2);
  TORCH_CHECK(B <= maxB, "smallmind::", op, ": batch B = ", B,
              " exceeds the KV cache's max batch ", maxB);
  TORCH_CHECK_VALUE(pos >= 0 && pos < S, "smallmind::", op, ": pos must lie in [0, ", S - 1,
                    "] (the cache holds S = ", S, " positions), got ", pos);
  // ids: 0 x, 1 k_cache, 2 v_cache (written), 3 + i params[i]
  std::vector<Extent> ext{extent_of(x, 0, true), extent_of(k_cache, 1, true),
                          extent_of(v_cache, 2, true)};
  for (int64_t i = 0; i < kNumParams; ++i) ext.push_back(extent_of(params[i], 3 + i, false));
  check_no_overlap(ext, op, [&](int64_t id) -> std::string {
    return id == 0 ? "x" : id == 1 ? "k_cache" : id == 2 ? "v_cache" : param_name(id - 3);
  });
  return {B, C, nh, hs, S};
}

DecodeLayer layer_of(at::TensorList params, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  DecodeLayer layer;
  for (int64_t i = 0; i < kNumParams; ++i) layer.p[i] = params[i].const_data_ptr<float>();
  layer.k_cache = k_cache.data_ptr<float>();
  layer.v_cache = v_cache.data_ptr<float>();
  return layer;
}

void run_decode_block(Isa isa, const DecodeDims& d, const DecodeLayer& layer, int64_t pos,
                      float eps, float* x, int nthreads) {
  SMALLMIND_DISPATCH(isa, decode::decode_block, d, layer, pos, eps, x, nthreads);
}

void decode_block_cpu(at::Tensor& x, at::TensorList params, at::Tensor& k_cache,
                      at::Tensor& v_cache, int64_t pos, int64_t n_head, double eps) {
  const DecodeDims d = check_block_args(x, params, k_cache, v_cache, pos, n_head, eps);
  run_decode_block(current_isa(), d, layer_of(params, k_cache, v_cache), pos,
                   static_cast<float>(eps), x.data_ptr<float>(), num_threads());
}

// ---- decode_step_ --------------------------------------------------------------------------

void run_decode_step(Isa isa, const DecodeStep& s, int nthreads) {
  SMALLMIND_DISPATCH(isa, decode::decode_step, s, nthreads);
}

// The low-precision weights of decode_step_q8_ (int8) and decode_step_q4_ (int4): per block
// its matrices (decode_layout.h's kQ8Params: c_attn, attn.c_proj, c_fc, mlp.c_proj), then the
// lm head, each shaped like the float32 weight (N, K) it stands for: int8 (N, K) with float32
// scales (N,), or int4 packed uint8 (N, K / 2) with float32 scales (N, K / group).
struct LowpWeights {
  at::TensorList w, scales;
  bool int4 = false;
  bool int8_activations = false;  // int8: w8a8; int4 always quantizes the activations
  int64_t group = 0;              // int4's group size
  const char* w_name() const { return int4 ? "weights_q4" : "weights_q8"; }
  const char* s_name() const { return int4 ? "scales_q4" : "scales_q8"; }
};

// Names in decode_step_'s messages: block parameter i, and item i of a list.
std::string step_param_name(int64_t i) {
  return "block_params[" + std::to_string(i) + "] (block " + std::to_string(i / kNumParams) +
         " " + kParamNames[i % kNumParams] + ")";
}

std::string list_item(const char* list, int64_t i) {
  return std::string(list) + "[" + std::to_string(i) + "]";
}

void check_lowp(const LowpWeights& lw, int64_t L, int64_t C, int64_t V, const char* op) {
  TORCH_CHECK(int64_t(lw.w.size()) == kQ8PerBlock * L + 1 && lw.scales.size() == lw.w.size(),
              "smallmind::", op, ": '", lw.w_name(), "' and '", lw.s_name(), "' must each hold ",
              kQ8PerBlock, " tensors per block (", kParamNames[kQ8Params[0]], ", ..., ",
              kParamNames[kQ8Params[kQ8PerBlock - 1]], ") and the lm head, ",
              kQ8PerBlock * L + 1, " for ", L, " blocks; got ", lw.w.size(), " and ",
              lw.scales.size());
  if (lw.int4) {
    TORCH_CHECK_VALUE(lw.group >= 1 && lw.group % 32 == 0, "smallmind::", op,
                      ": group_size must be a positive multiple of 32 (32, 64, 96, ...), got ",
                      lw.group);
    TORCH_CHECK(C % lw.group == 0, "smallmind::", op, ": group_size (", lw.group,
                ") must divide C = wte.size(1) = ", C, " (every matrix's K is C or 4C)");
  }
  for (int64_t i = 0; i < int64_t(lw.w.size()); ++i) {
    const bool head = i == kQ8PerBlock * L;
    const auto [N, K] = head ? std::make_pair(V, C) : param_shape(kQ8Params[i % kQ8PerBlock], C);
    const at::Tensor& w = lw.w[i];
    const at::Tensor& sc = lw.scales[i];
    const int64_t scale_cols = lw.int4 ? K / lw.group : 0;
    if (w.device().is_cpu() && w.scalar_type() == (lw.int4 ? at::kByte : at::kChar) &&
        w.dim() == 2 && w.size(0) == N && w.size(1) == (lw.int4 ? K / 2 : K) &&
        w.is_contiguous() && sc.device().is_cpu() && sc.scalar_type() == at::kFloat &&
        sc.dim() == (lw.int4 ? 2 : 1) && sc.size(0) == N &&
        (!lw.int4 || sc.size(1) == scale_cols) && sc.is_contiguous())
      continue;  // the names below only for a message: these checks run on every step
    const std::string name = list_item(lw.w_name(), i), sname = list_item(lw.s_name(), i);
    check_cpu(lw.w[i], op, name.c_str());
    check_dtype(lw.w[i], lw.int4 ? at::kByte : at::kChar, op, name.c_str());
    check_shape(lw.w[i], {N, lw.int4 ? K / 2 : K}, op, name.c_str());
    check_contiguous(lw.w[i], op, name.c_str());
    check_cpu_float32(lw.scales[i], op, sname.c_str());
    if (lw.int4)
      check_shape(lw.scales[i], {N, K / lw.group}, op, sname.c_str());
    else
      check_shape(lw.scales[i], {N}, op, sname.c_str());
    check_contiguous(lw.scales[i], op, sname.c_str());
  }
}

// The model's half of decode_step_'s arguments, checked: everything but the call's tokens,
// position and outputs. Returns its dims.
struct ModelDims {
  int64_t V, C, nh, hs, L, maxB, S;
};

ModelDims check_model(const at::Tensor& wte, const at::Tensor& wpe,
                      at::TensorList block_params, const at::Tensor& ln_f_w,
                      const at::Tensor& ln_f_b, at::TensorList k_caches,
                      at::TensorList v_caches, int64_t n_head, double eps,
                      const LowpWeights* lw, const char* op) {
  // the model: wte (V, C), wpe (P, C), n_head, eps
  check_matrix(wte, op, "wte");
  check_dim(wte, 2, op, "wte");
  const int64_t V = wte.size(0), C = wte.size(1);
  TORCH_CHECK(V >= 1 && C >= 1, "smallmind::", op, ": 'wte' must be (vocab, C) with vocab, "
              "C >= 1, got ", wte.sizes());
  check_matrix(wpe, op, "wpe");
  check_dim(wpe, 2, op, "wpe");
  check_same_size(wpe.size(1), C, op, "wpe.size(1)", "wte.size(1) (C)");
  TORCH_CHECK_VALUE(n_head >= 1 && C % n_head == 0, "smallmind::", op, ": n_head (", n_head,
                    ") must be positive and divide C = wte.size(1) = ", C);
  check_eps(eps, op);
  const int64_t nh = n_head, hs = C / n_head;
  // the blocks: 12 tensors each, one k and one v cache each
  TORCH_CHECK(block_params.size() >= size_t(kNumParams) && block_params.size() % kNumParams == 0,
              "smallmind::", op, ": 'block_params' must hold ", kNumParams, " tensors per block "
              "(decode_layout.BLOCK_PARAMS order, block after block) for at least one block, got ",
              block_params.size());
  const int64_t L = int64_t(block_params.size()) / kNumParams;
  TORCH_CHECK(int64_t(k_caches.size()) == L && int64_t(v_caches.size()) == L, "smallmind::", op,
              ": 'k_caches' and 'v_caches' must hold one cache per block (", L, "), got ",
              k_caches.size(), " and ", v_caches.size());
  for (int64_t i = 0; i < L * kNumParams; ++i)
    check_param(block_params[i], i % kNumParams, C, op, [&] { return step_param_name(i); });
  // ln_f is shaped like a block's LayerNorms
  check_param(ln_f_w, decode_layout::ln_1_w, C, op, [] { return std::string("ln_f_w"); });
  check_param(ln_f_b, decode_layout::ln_1_b, C, op, [] { return std::string("ln_f_b"); });
  for (int64_t l = 0; l < L; ++l) {
    check_cache(k_caches[l], nh, hs, op, [&] { return list_item("k_caches", l); });
    check_cache(v_caches[l], nh, hs, op, [&] { return list_item("v_caches", l); });
    TORCH_CHECK(k_caches[l].sizes() == k_caches[0].sizes() &&
                    v_caches[l].sizes() == k_caches[0].sizes(),
                "smallmind::", op, ": every cache must have the shape of k_caches[0] ",
                k_caches[0].sizes(), ", got ", k_caches[l].sizes(), " (k_caches[", l, "]) and ",
                v_caches[l].sizes(), " (v_caches[", l, "])");
  }
  if (lw) check_lowp(*lw, L, C, V, op);
  return {V, C, nh, hs, L, k_caches[0].size(0), k_caches[0].size(2)};
}

const char* step_op_name(const LowpWeights* lw) {
  return !lw ? "decode_step_" : lw->int4 ? "decode_step_q4_" : "decode_step_q8_";
}

void decode_step_impl(const at::Tensor& tokens, int64_t pos, const at::Tensor& wte,
                      const at::Tensor& wpe, at::TensorList block_params,
                      const at::Tensor& ln_f_w, const at::Tensor& ln_f_b,
                      at::TensorList k_caches, at::TensorList v_caches, int64_t n_head,
                      double eps, at::Tensor& logits, at::Tensor& next_tokens,
                      const LowpWeights* lw) {
  const char* op = step_op_name(lw);
  const auto [V, C, nh, hs, L, maxB, S] = check_model(wte, wpe, block_params, ln_f_w, ln_f_b,
                                                      k_caches, v_caches, n_head, eps, lw, op);
  // the call: tokens (B,) or (B, T) at pos .. pos + T - 1; outputs
  check_cpu_long(tokens, op, "tokens");
  TORCH_CHECK((tokens.dim() == 1 || tokens.dim() == 2) && tokens.size(0) >= 1 &&
                  (tokens.dim() == 1 || tokens.size(1) >= 1),
              "smallmind::", op, ": 'tokens' must be (B,) or (B, T) with B, T >= 1, got shape ",
              tokens.sizes());
  const int64_t B = tokens.size(0), T = tokens.dim() == 2 ? tokens.size(1) : 1;
  TORCH_CHECK(B <= maxB, "smallmind::", op, ": batch B = ", B,
              " exceeds the KV caches' max batch ", maxB);
  const int64_t positions = std::min(S, wpe.size(0));
  TORCH_CHECK_VALUE(pos >= 0 && pos <= positions - T, "smallmind::", op,
                    ": pos must lie in [0, ", positions - T, "] (the caches hold ", S,
                    " positions, wpe ", wpe.size(0), "; the T = ", T, " tokens take positions "
                    "pos .. pos + T - 1), got ", pos);
  const int64_t* tok = tokens.const_data_ptr<int64_t>();
  const int64_t tstride = tokens.stride(0), tstep = tokens.dim() == 2 ? tokens.stride(1) : 1;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const int64_t id = tok[b * tstride + t * tstep];
      TORCH_CHECK(id >= 0 && id < V, "smallmind::", op, ": token id out of range: tokens[", b,
                  T > 1 ? ", " + std::to_string(t) : std::string(), "] = ", id,
                  ", allowed range is [0, ", V, ") (vocab = wte.size(0))");
    }
  // logits of every token (B, T, V), or of each sequence's last (B, 1, V); (B, V) for T = 1
  check_matrix(logits, op, "logits");
  const bool all_logits = logits.dim() == 3 && logits.size(1) == T && T > 1;
  TORCH_CHECK((logits.dim() == 2 && T == 1 && logits.size(0) == B && logits.size(1) == V) ||
                  (logits.dim() == 3 && logits.size(0) == B && (logits.size(1) == 1 ||
                   logits.size(1) == T) && logits.size(2) == V),
              "smallmind::", op, ": 'logits' must be (B, T, vocab) = (", B, ", ", T, ", ", V,
              ") for every token's or (B, 1, vocab) for the last's", T == 1 ? " (or (B, vocab))"
              : "", ", got ", logits.sizes());
  const int64_t R = all_logits ? T : 1;  // rows of logits per sequence
  check_cpu_long(next_tokens, op, "next_tokens");
  check_contiguous(next_tokens, op, "next_tokens");
  TORCH_CHECK((next_tokens.dim() == 1 && R == 1 && next_tokens.size(0) == B) ||
                  (next_tokens.dim() == 2 && next_tokens.size(0) == B &&
                   next_tokens.size(1) == R),
              "smallmind::", op, ": 'next_tokens' must be (B, ", R, ")",
              R == 1 ? " or (B,)" : "", " with B = ", B, " (one per row of logits), got ",
              next_tokens.sizes());
  // nothing written overlaps anything else. ids: 0 logits, 1 next_tokens, 2 + l k_caches[l],
  // 2 + L + l v_caches[l] (written); then tokens, wte, wpe, ln_f_w, ln_f_b, block_params[i]
  static thread_local std::vector<Extent> ext;
  ext.clear();
  ext.push_back(extent_of(logits, 0, true));
  ext.push_back(extent_of(next_tokens, 1, true));
  for (int64_t l = 0; l < L; ++l) {
    ext.push_back(extent_of(k_caches[l], 2 + l, true));
    ext.push_back(extent_of(v_caches[l], 2 + L + l, true));
  }
  const int64_t first_read = 2 + 2 * L;
  const at::Tensor* named[] = {&tokens, &wte, &wpe, &ln_f_w, &ln_f_b};
  for (int64_t i = 0; i < 5; ++i) ext.push_back(extent_of(*named[i], first_read + i, false));
  for (int64_t i = 0; i < L * kNumParams; ++i)
    ext.push_back(extent_of(block_params[i], first_read + 5 + i, false));
  const int64_t first_q8 = first_read + 5 + L * kNumParams, n_q8 = lw ? int64_t(lw->w.size()) : 0;
  if (lw) {
    for (int64_t i = 0; i < n_q8; ++i) {
      ext.push_back(extent_of(lw->w[i], first_q8 + i, false));
      ext.push_back(extent_of(lw->scales[i], first_q8 + n_q8 + i, false));
    }
  }
  check_no_overlap(ext, op, [&](int64_t id) -> std::string {
    static const char* names[] = {"tokens", "wte", "wpe", "ln_f_w", "ln_f_b"};
    if (id == 0) return "logits";
    if (id == 1) return "next_tokens";
    if (id < 2 + L) return list_item("k_caches", id - 2);
    if (id < first_read) return list_item("v_caches", id - 2 - L);
    if (id < first_read + 5) return names[id - first_read];
    if (id < first_q8) return step_param_name(id - first_read - 5);
    if (id < first_q8 + n_q8) return list_item(lw->w_name(), id - first_q8);
    return list_item(lw->s_name(), id - first_q8 - n_q8);
  });

  // On the blocked GEMM (float32 weights, many rows) every matrix comes packed from the
  // packed-weight cache: packed once per weight (and again when it changes), not per call.
  const bool gemm = !lw && B * T >= kDecodeGemmRows;
  const int nthreads = num_threads();
  static thread_local std::vector<std::shared_ptr<const float>> packed;  // alive for the call
  packed.clear();
  static thread_local std::vector<DecodeLayer> layers;
  layers.resize(size_t(L));
  for (int64_t l = 0; l < L; ++l) {
    layers[l] = layer_of(block_params.slice(size_t(l * kNumParams), kNumParams), k_caches[l],
                         v_caches[l]);
    for (int64_t m = 0; gemm && m < kQ8PerBlock; ++m) {
      packed.push_back(cached_packed_weight(block_params[l * kNumParams + kQ8Params[m]],
                                            nthreads));
      layers[l].packed[m] = packed.back().get();
    }
    for (int64_t m = 0; lw && m < kQ8PerBlock; ++m) {
      const at::Tensor& w = lw->w[l * kQ8PerBlock + m];
      const float* scales = lw->scales[l * kQ8PerBlock + m].const_data_ptr<float>();
      if (lw->int4) {
        layers[l].q4[m] = w.const_data_ptr<uint8_t>();
        layers[l].q4s[m] = scales;
      } else {
        layers[l].q[m] = w.const_data_ptr<int8_t>();
        layers[l].qs[m] = scales;
      }
    }
    layers[l].int8_activations = lw && lw->int8_activations;
    layers[l].q4_group = lw ? lw->group : 0;
  }
  DecodeStep s;
  s.d = DecodeDims{B, C, nh, hs, S, T};
  s.pos = pos;
  s.token_step = tstep;
  s.all_logits = all_logits;
  s.n_layer = L;
  s.vocab = V;
  s.tokens = tok;
  s.token_stride = tstride;
  s.wte = wte.const_data_ptr<float>();
  s.wpe = wpe.const_data_ptr<float>();
  s.layers = layers.data();
  s.ln_f_w = ln_f_w.const_data_ptr<float>();
  s.ln_f_b = ln_f_b.const_data_ptr<float>();
  s.eps = static_cast<float>(eps);
  s.logits = logits.data_ptr<float>();
  s.gemm = gemm;
  s.next_tokens = next_tokens.data_ptr<int64_t>();
  if (lw && lw->int4) {
    s.head_q4 = lw->w[kQ8PerBlock * L].const_data_ptr<uint8_t>();
    s.head_q4_scale = lw->scales[kQ8PerBlock * L].const_data_ptr<float>();
    s.q4_group = lw->group;
  } else if (lw) {
    s.head_q = lw->w[kQ8PerBlock * L].const_data_ptr<int8_t>();
    s.head_scale = lw->scales[kQ8PerBlock * L].const_data_ptr<float>();
    s.int8_activations = lw->int8_activations;
  }
  if (gemm && all_logits) {
    packed.push_back(cached_packed_weight(wte, nthreads));
    s.head_packed = packed.back().get();
  }
  run_decode_step(current_isa(), s, nthreads);
  packed.clear();
}

void decode_step_cpu(const at::Tensor& tokens, int64_t pos, const at::Tensor& wte,
                     const at::Tensor& wpe, at::TensorList block_params,
                     const at::Tensor& ln_f_w, const at::Tensor& ln_f_b,
                     at::TensorList k_caches, at::TensorList v_caches, int64_t n_head,
                     double eps, at::Tensor& logits, at::Tensor& next_tokens) {
  decode_step_impl(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                   n_head, eps, logits, next_tokens, nullptr);
}

void decode_step_q8_cpu(const at::Tensor& tokens, int64_t pos, const at::Tensor& wte,
                        const at::Tensor& wpe, at::TensorList block_params,
                        const at::Tensor& ln_f_w, const at::Tensor& ln_f_b,
                        at::TensorList k_caches, at::TensorList v_caches, int64_t n_head,
                        double eps, at::Tensor& logits, at::Tensor& next_tokens,
                        at::TensorList weights_q8, at::TensorList scales_q8,
                        bool int8_activations) {
  LowpWeights lw;
  lw.w = weights_q8;
  lw.scales = scales_q8;
  lw.int8_activations = int8_activations;
  decode_step_impl(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                   n_head, eps, logits, next_tokens, &lw);
}

void decode_step_q4_cpu(const at::Tensor& tokens, int64_t pos, const at::Tensor& wte,
                        const at::Tensor& wpe, at::TensorList block_params,
                        const at::Tensor& ln_f_w, const at::Tensor& ln_f_b,
                        at::TensorList k_caches, at::TensorList v_caches, int64_t n_head,
                        double eps, at::Tensor& logits, at::Tensor& next_tokens,
                        at::TensorList weights_q4, at::TensorList scales_q4, int64_t group_size) {
  LowpWeights lw;
  lw.w = weights_q4;
  lw.scales = scales_q4;
  lw.int4 = true;
  lw.group = group_size;
  decode_step_impl(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                   n_head, eps, logits, next_tokens, &lw);
}

}  // namespace

// ---- DecodeModel: decode_step_'s model arguments, held in C++ ------------------------------
// What the fused step calls on its hot path (fused_decode.FusedStep). A Python call of
// decode_step_ converts each of its ~60 tensors through the dispatcher's schema, which at the
// seed shape costs about a tenth of the step; this object is made once when the phase's caches
// are set up and takes only the call's tokens, position and outputs. Every argument is checked
// when it is made and again, in C++, on every step (decode_step_impl): a parameter resized or
// re-pointed in place is caught, never read through a stale pointer. Each step is recorded for
// the profiler as the op it runs (smallmind::decode_step_, _q8_ or _q4_).
struct DecodeModel : torch::CustomClassHolder {
  at::Tensor wte, wpe, ln_f_w, ln_f_b;
  std::vector<at::Tensor> block_params, k_caches, v_caches, weights_lowp, scales_lowp;
  int64_t n_head;
  double eps;
  std::string format;
  LowpWeights lw;  // views of weights_lowp / scales_lowp for int8, w8a8 and int4

  DecodeModel(at::Tensor wte_, at::Tensor wpe_, std::vector<at::Tensor> block_params_,
              at::Tensor ln_f_w_, at::Tensor ln_f_b_, std::vector<at::Tensor> k_caches_,
              std::vector<at::Tensor> v_caches_, int64_t n_head_, double eps_,
              std::string format_, std::vector<at::Tensor> weights_lowp_,
              std::vector<at::Tensor> scales_lowp_, int64_t group_size)
      : wte(std::move(wte_)), wpe(std::move(wpe_)), ln_f_w(std::move(ln_f_w_)),
        ln_f_b(std::move(ln_f_b_)), block_params(std::move(block_params_)),
        k_caches(std::move(k_caches_)), v_caches(std::move(v_caches_)),
        weights_lowp(std::move(weights_lowp_)), scales_lowp(std::move(scales_lowp_)),
        n_head(n_head_), eps(eps_), format(std::move(format_)) {
    const bool fp32 = format == "fp32";
    TORCH_CHECK_VALUE(fp32 || format == "int8" || format == "w8a8" || format == "int4",
                      "smallmind::DecodeModel: format must be 'fp32', 'int8', 'w8a8' or 'int4', "
                      "got '", format, "'");
    TORCH_CHECK_VALUE(!fp32 || (weights_lowp.empty() && scales_lowp.empty()),
                      "smallmind::DecodeModel: format 'fp32' takes no low-precision weights, got ",
                      weights_lowp.size(), " weights and ", scales_lowp.size(), " scales");
    lw.w = weights_lowp;
    lw.scales = scales_lowp;
    lw.int4 = format == "int4";
    lw.int8_activations = format == "w8a8";
    lw.group = group_size;
    check_model(wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches, n_head, eps,
                lowp(), step_op_name(lowp()));
  }

  const LowpWeights* lowp() const { return format == "fp32" ? nullptr : &lw; }

  // decode_step_ (or _q8_ / _q4_) on the held model: tokens (B,) or (B, T) at pos; writes
  // logits and next_tokens as the op does.
  void step(const at::Tensor& tokens, int64_t pos, at::Tensor logits, at::Tensor next_tokens) {
    RECORD_FUNCTION(std::string("smallmind::") + step_op_name(lowp()), std::vector<c10::IValue>());
    decode_step_impl(tokens, pos, wte, wpe, block_params, ln_f_w, ln_f_b, k_caches, v_caches,
                     n_head, eps, logits, next_tokens, lowp());
  }

  // Greedy decoding without a return to Python: for i in 0 .. count - 1, the step of
  // tokens[:, first + i - 1] at position pos + i, its argmax written to tokens[:, first + i].
  // tokens: int64 (B, N) (the run's token buffer), 1 <= first, first + count <= N. Each step
  // is recorded under the profiler label `label` (labels.region's name for a decode step).
  void generate_greedy(at::Tensor tokens, int64_t first, int64_t count, int64_t pos,
                       at::Tensor logits, at::Tensor next_tokens, const std::string& label) {
    constexpr const char* op = "DecodeModel.generate_greedy";
    check_cpu_long(tokens, op, "tokens");
    check_dim(tokens, 2, op, "tokens");
    TORCH_CHECK_VALUE(count >= 0 && first >= 1 && first <= tokens.size(1) - count,
                      "smallmind::", op, ": the new tokens' columns first .. first + count - 1 "
                      "must lie in [1, ", tokens.size(1) - 1, "] of the (B, N) = ", tokens.sizes(),
                      " token buffer (column first - 1 holds the last known token), got first = ",
                      first, ", count = ", count);
    check_contiguous(next_tokens, op, "next_tokens");
    TORCH_CHECK(next_tokens.numel() == tokens.size(0), "smallmind::", op, ": 'next_tokens' must ",
                "hold one id per sequence (B = ", tokens.size(0), "), got ", next_tokens.sizes());
    int64_t* buffer = tokens.data_ptr<int64_t>();
    const int64_t B = tokens.size(0), row = tokens.stride(0), col = tokens.stride(1);
    for (int64_t i = 0; i < count; ++i) {
      RECORD_USER_SCOPE(label);
      step(tokens.select(1, first + i - 1), pos + i, logits, next_tokens);
      const int64_t* ids = next_tokens.const_data_ptr<int64_t>();
      for (int64_t b = 0; b < B; ++b) buffer[b * row + (first + i) * col] = ids[b];
    }
  }
};

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def(
      "decode_block_(Tensor(a!) x, Tensor[] params, Tensor(b!) k_cache, Tensor(c!) v_cache, "
      "int pos, int n_head, float eps) -> ()");
  m.def(
      "decode_step_(Tensor tokens, int pos, Tensor wte, Tensor wpe, Tensor[] block_params, "
      "Tensor ln_f_w, Tensor ln_f_b, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, int n_head, "
      "float eps, Tensor(c!) logits, Tensor(d!) next_tokens) -> ()");
  m.def(
      "decode_step_q8_(Tensor tokens, int pos, Tensor wte, Tensor wpe, Tensor[] block_params, "
      "Tensor ln_f_w, Tensor ln_f_b, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, int n_head, "
      "float eps, Tensor(c!) logits, Tensor(d!) next_tokens, Tensor[] weights_q8, "
      "Tensor[] scales_q8, bool int8_activations=False) -> ()");
  m.def(
      "decode_step_q4_(Tensor tokens, int pos, Tensor wte, Tensor wpe, Tensor[] block_params, "
      "Tensor ln_f_w, Tensor ln_f_b, Tensor(a!)[] k_caches, Tensor(b!)[] v_caches, int n_head, "
      "float eps, Tensor(c!) logits, Tensor(d!) next_tokens, Tensor[] weights_q4, "
      "Tensor[] scales_q4, int group_size=32) -> ()");
  m.class_<DecodeModel>("DecodeModel")
      .def(torch::init<at::Tensor, at::Tensor, std::vector<at::Tensor>, at::Tensor, at::Tensor,
                       std::vector<at::Tensor>, std::vector<at::Tensor>, int64_t, double,
                       std::string, std::vector<at::Tensor>, std::vector<at::Tensor>, int64_t>())
      .def("step", &DecodeModel::step)
      .def("generate_greedy", &DecodeModel::generate_greedy);
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("decode_block_", &decode_block_cpu);
  m.impl("decode_step_", &decode_step_cpu);
  m.impl("decode_step_q8_", &decode_step_q8_cpu);
  m.impl("decode_step_q4_", &decode_step_q4_cpu);
}

}  // namespace smallmind
