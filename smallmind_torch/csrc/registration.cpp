// The one TORCH_LIBRARY(smallmind, ...) block of the extension.
//
// All of csrc/*.cpp compile into one shared library, and a namespace may be defined by
// TORCH_LIBRARY only once; every op therefore declares its schema in a
// TORCH_LIBRARY_FRAGMENT(smallmind, m) block in its own .cpp and registers its kernel with
// TORCH_LIBRARY_IMPL(smallmind, CPU, m) there. (naive.cpp defines a library of its own,
// smallmind_naive: the kernels' naive loops, for the tests.)
#include <torch/library.h>

TORCH_LIBRARY(smallmind, m) {}
