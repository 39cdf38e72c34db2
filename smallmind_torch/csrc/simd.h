// The one SIMD switch of the smallmind kernels.
//
// SMALLMIND_AVX2 is 1 when the compiler targets AVX2 and FMA (the build passes
// -march=native), else 0. Every kernel includes this header and guards its intrinsics with
// `#if SMALLMIND_AVX2`; each such block is followed by a plain-loop version of the same
// computation, so a machine without AVX2 gets correct, only slower, results.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define SMALLMIND_AVX2 1
#else
#define SMALLMIND_AVX2 0
#endif
