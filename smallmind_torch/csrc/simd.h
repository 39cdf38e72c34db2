// Which instruction set (ISA) the smallmind kernels run on: chosen at load, switchable.
//
// Every kernel is compiled three times into the one library: for AVX-512 (F, BW, DQ, VL), for
// AVX2 + FMA, and as plain C++ (the scalar fallback, the only path on other architectures).
// kernels.h does it: it includes the kernel headers once per ISA, each time inside a
// `#pragma GCC target(...)` region and in that ISA's namespace (isa_avx512, isa_avx2,
// isa_scalar). The library itself is compiled for the baseline x86-64 (the build passes no
// -march=native on x86), so a build made on an AVX-512 host loads and runs on an AVX2-only or
// an older one: only the paths the CPU supports are ever called.
//
// At load the widest ISA the CPU (and OS) supports is selected, or the one the environment
// variable SMALLMIND_ISA names, which may only narrow it (avx512 > avx2 > scalar).
// smallmind::set_isa(name) switches at run time for the whole process, so an AVX-512 host tests
// its AVX2 and scalar code too. Each op reads the selection once per call (`current_isa()`)
// and runs that ISA's kernel for the whole call (SMALLMIND_DISPATCH): a switch per op call,
// never per row or element.
#pragma once

#include <atomic>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define SMALLMIND_X86 1
#include <immintrin.h>
#else
#define SMALLMIND_X86 0
#endif

namespace smallmind {

enum class Isa : int { scalar = 0, avx2 = 1, avx512 = 2 };

inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "scalar";
  }
}

// The widest ISA this CPU and its OS support (libgcc's cpuid + xgetbv checks).
inline Isa detect_isa() {
#if SMALLMIND_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
    return Isa::avx512;
  if (avx2) return Isa::avx2;
#endif
  return Isa::scalar;
}

// Native bf16 dot products (AVX512_BF16's vdpbf16ps): the bf16 linear op's fast path, within
// the AVX-512 ISA (an AVX-512 CPU without them widens bf16 to float32 instead).
inline bool cpu_has_bf16_dot() {
#if SMALLMIND_X86
  static const bool has = (__builtin_cpu_init(), __builtin_cpu_supports("avx512bf16"));
  return has;
#else
  return false;
#endif
}

// AVX512_VNNI's int8 dot products (vpdpbusd): the w8a8 path of the AVX-512 ISA.
inline bool cpu_has_vnni() {
#if SMALLMIND_X86
  static const bool has = (__builtin_cpu_init(), __builtin_cpu_supports("avx512vnni"));
  return has;
#else
  return false;
#endif
}

inline Isa best_isa() {
  static const Isa best = detect_isa();
  return best;
}

// The ISAs this CPU allows, widest first.
inline std::vector<Isa> supported_isas() {
  std::vector<Isa> out;
  for (int i = int(best_isa()); i >= 0; --i) out.push_back(Isa(i));
  return out;
}

inline std::string allowed_isa_list() {
  std::string s;
  for (Isa i : supported_isas()) s += (s.empty() ? "" : ", ") + std::string(isa_name(i));
  return s;
}

// Name -> ISA; false for a name that is no ISA of these kernels.
inline bool parse_isa(const std::string& name, Isa* out) {
  for (Isa i : {Isa::avx512, Isa::avx2, Isa::scalar}) {
    if (name == isa_name(i)) {
      *out = i;
      return true;
    }
  }
  return false;
}

// The empty string when `name` is an ISA this CPU runs, else the reason it is not.
inline std::string isa_problem(const std::string& name) {
  Isa isa;
  if (!parse_isa(name, &isa))
    return "unknown ISA '" + name + "' (the kernels have avx512, avx2 and scalar paths); " +
           "this CPU allows: " + allowed_isa_list();
  if (int(isa) > int(best_isa()))
    return "ISA '" + name + "' is not supported by this CPU; it allows: " + allowed_isa_list();
  return "";
}

// Selected at load: SMALLMIND_ISA when it names an ISA this CPU runs, else the widest. (A bad
// value cannot throw here, during dlopen; the Python loader re-applies the variable through
// set_isa, which raises the error that names what this CPU allows.)
inline Isa initial_isa() {
  const char* env = std::getenv("SMALLMIND_ISA");
  Isa isa;
  if (env != nullptr && *env != '\0' && isa_problem(env).empty() && parse_isa(env, &isa))
    return isa;
  return best_isa();
}

inline std::atomic<int>& isa_state() {
  static std::atomic<int> state{int(initial_isa())};
  return state;
}

inline Isa current_isa() { return Isa(isa_state().load(std::memory_order_relaxed)); }
inline void select_isa(Isa isa) { isa_state().store(int(isa), std::memory_order_relaxed); }

}  // namespace smallmind

// Calls `fn(args...)` of the namespace of `isa` (isa_avx512::fn, isa_avx2::fn or
// isa_scalar::fn) and returns its result: one switch per op call.
#if SMALLMIND_X86
#define SMALLMIND_DISPATCH(isa, fn, ...)                                \
  do {                                                                  \
    switch (isa) {                                                      \
      case ::smallmind::Isa::avx512: return isa_avx512::fn(__VA_ARGS__); \
      case ::smallmind::Isa::avx2: return isa_avx2::fn(__VA_ARGS__);     \
      default: return isa_scalar::fn(__VA_ARGS__);                      \
    }                                                                   \
  } while (0)
#else
#define SMALLMIND_DISPATCH(isa, fn, ...) \
  do {                                   \
    (void)(isa);                         \
    return isa_scalar::fn(__VA_ARGS__);  \
  } while (0)
#endif
