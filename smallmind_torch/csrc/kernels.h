// Every kernel of the smallmind ops, compiled once per ISA (see simd.h for the design).
//
// The kernel headers below have no include guard: this file includes each of them three
// times, widest ISA first, with SMALLMIND_ISA_LEVEL (2 AVX-512, 1 AVX2 + FMA, 0 plain C++) and
// SMALLMIND_ISA_NS (the namespace: isa_avx512, isa_avx2, isa_scalar) defined, the first two
// inside `#pragma GCC target(...)` so that their intrinsics compile into a library built for
// the baseline x86-64. Each ISA's layer uses only itself (no kernel names another ISA's
// namespace), so any one of them compiles alone. Everything they use from the standard
// library, OpenMP and ATen is included here first, outside the target regions. The ops' .cpp
// files include this header and call a kernel through SMALLMIND_DISPATCH(current_isa(), ...).
//
// In reading order: vec_math.h (the vector type of the ISA and row helpers), layer_norm_row.h,
// gemm_kernel.h, attention_kernel.h (also the causal softmax rows), linear_lowp_kernel.h (int8 and
// bf16 weights), decode_kernel.h (the fused decode block and the whole-model decode step, on
// float32 or int8 weights). Each of the kernel headers after vec_math.h starts with its naive
// loop (sgemm_naive, attention_naive, ...): the algorithm in a few plain lines, which the tests
// hold every ISA's fast form to, through the test-facing smallmind_naive ops of naive.cpp.
#pragma once

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common.h"
#include "decode_layout.h"
#include "simd.h"

namespace smallmind {

// ---- argument bundles of the fused decode kernels (one definition for every ISA) ----------

// Shapes of a decode call: B sequences of T new tokens each (rows b * T + t), C = n_embd =
// nh * hs, caches (maxB, nh, S, hs).
struct DecodeDims {
  int64_t B, C, nh, hs, S;
  int64_t T = 1;
};

// One block: its parameters in decode_layout.h's order (contiguous, nn.Linear layout) and its
// KV cache (contiguous (maxB, nh, S, hs)).
struct DecodeLayer {
  const float* p[decode_layout::kNumParams];
  float* k_cache;
  float* v_cache;
  // int8 weights (decode_step_q8_), or null: matrix m (N, K) int8 with float32 scales (N,)
  // standing for p[kQ8Params[m]] (c_attn, attn.c_proj, c_fc, mlp.c_proj)
  const int8_t* q[decode_layout::kQ8PerBlock] = {};
  const float* qs[decode_layout::kQ8PerBlock] = {};
  bool int8_activations = false;  // w8a8: each matrix's input rows quantized on the fly
  // int4 weights (decode_step_q4_), or null: matrix m packed uint8 (N, K / 2) with float32
  // scales (N, K / q4_group), its input rows quantized to int8 on the fly
  const uint8_t* q4[decode_layout::kQ8PerBlock] = {};
  const float* q4s[decode_layout::kQ8PerBlock] = {};
  int64_t q4_group = 0;
  // the float32 matrices already packed for the blocked GEMM (the packed-weight cache of
  // gemm.cpp), or null: packed on every call of the GEMM path
  const float* packed[decode_layout::kQ8PerBlock] = {};
};

// Rows (B * T) from which decode_step_ runs its float32 matrices on the blocked GEMM
// (gemm::sgemm on the cached packed weights) instead of the row-batched matrix-vector
// products, which re-read every input row for each 8 columns of a weight. Measured on both
// shapes (seed, GPT-2 small) and 1 and 2 threads: the GEMM wins from 8 rows on each; from 5
// (its packed path) on 1 thread only.
constexpr int64_t kDecodeGemmRows = 8;

// The whole-model decode step (decode_step_ in decode.cpp): d.T tokens per sequence at
// positions pos .. pos + T - 1.
struct DecodeStep {
  DecodeDims d;
  int64_t pos, n_layer, vocab;
  const int64_t* tokens;  // token t of sequence b at tokens[b * token_stride + t * token_step]
  int64_t token_stride;
  int64_t token_step = 1;
  bool all_logits = false;  // logits of every row (B * T, verify), else of each last (B, prefill)
  const float* wte;       // (vocab, C): token embedding and tied lm head
  const float* wpe;       // (>= pos + T, C)
  const DecodeLayer* layers;
  const float* ln_f_w;
  const float* ln_f_b;
  float eps;
  float* logits;          // (B * T, vocab) with all_logits, else (B, vocab)
  int64_t* next_tokens;   // one per row of logits: the argmax of the row
  const int8_t* head_q = nullptr;     // the lm head as int8 (vocab, C), or null: wte
  const float* head_scale = nullptr;  // its scales (vocab,)
  bool int8_activations = false;      // w8a8 (the layers' flag too)
  const uint8_t* head_q4 = nullptr;   // the lm head as int4 (vocab, C / 2), or null
  const float* head_q4_scale = nullptr;  // its scales (vocab, C / q4_group)
  int64_t q4_group = 0;
  bool gemm = false;  // float32 matrices on the blocked GEMM (B * T >= kDecodeGemmRows)
  const float* head_packed = nullptr;  // wte packed for the blocked GEMM (all_logits), or null
};

}  // namespace smallmind

#if SMALLMIND_X86

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define SMALLMIND_ISA_LEVEL 2
#define SMALLMIND_ISA_NS isa_avx512
#include "vec_math.h"
#include "layer_norm_row.h"
#include "gemm_kernel.h"
#include "attention_kernel.h"
#include "linear_lowp_kernel.h"
#include "decode_kernel.h"
#undef SMALLMIND_ISA_NS
#undef SMALLMIND_ISA_LEVEL
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,bmi,bmi2,lzcnt,popcnt")
#define SMALLMIND_ISA_LEVEL 1
#define SMALLMIND_ISA_NS isa_avx2
#include "vec_math.h"
#include "layer_norm_row.h"
#include "gemm_kernel.h"
#include "attention_kernel.h"
#include "linear_lowp_kernel.h"
#include "decode_kernel.h"
#undef SMALLMIND_ISA_NS
#undef SMALLMIND_ISA_LEVEL
#pragma GCC pop_options

#endif  // SMALLMIND_X86

#define SMALLMIND_ISA_LEVEL 0
#define SMALLMIND_ISA_NS isa_scalar
#include "vec_math.h"
#include "layer_norm_row.h"
#include "gemm_kernel.h"
#include "attention_kernel.h"
#include "linear_lowp_kernel.h"
#include "decode_kernel.h"
#undef SMALLMIND_ISA_NS
#undef SMALLMIND_ISA_LEVEL
