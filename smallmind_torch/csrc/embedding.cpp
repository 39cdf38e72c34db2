// smallmind::embedding (and embedding_inference, the same kernel with no autograd formula)
// and smallmind::embedding_backward: CPU, float32 weights, int64 ids.
//
// embedding gathers weight (V, D) rows: out (*indices.shape, D) = weight[indices].
// embedding_backward is its gradient: grad_weight (num_weights, D), row v = the sum of
// grad_output's rows whose id is v. It is the sorted / segment-reduced form: a stable
// counting sort groups the positions of each token id (ids in [0, V), so the sort is
// O(n + V)); then every id's run is summed into its row, in increasing position order, by
// exactly one thread. No atomics, no scatter races: the result is deterministic run to run
// and whatever the thread count, and it adds in the same order as ATen's sequential
// index_add_ path. Every id is range-checked, even when the result is empty (D = 0).
#include <ATen/ops/empty.h>
#include <ATen/ops/index_select.h>
#include <torch/library.h>

#include <cstring>
#include <limits>
#include <vector>

#include "common.h"

namespace smallmind {
namespace {

void check_ids_in_range(const int64_t* ids, int64_t n, int64_t V, const char* op) {
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = ids[i];
    TORCH_CHECK(t >= 0 && t < V, "smallmind::", op, ": index out of range: indices[", i,
                "] (flattened) = ", t, ", allowed range is [0, ", V, ") (num_weights = ", V,
                ")");
  }
}

at::Tensor embedding_cpu(const at::Tensor& indices, const at::Tensor& weight) {
  constexpr const char* op = "embedding";
  check_cpu_long(indices, op, "indices");
  check_cpu_float32(weight, op, "weight");
  check_dim(weight, 2, op, "weight");
  const int64_t V = weight.size(0), D = weight.size(1);
  at::Tensor ids = indices.contiguous();
  at::Tensor w = weight.contiguous();
  const int64_t n = ids.numel();
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(D);
  check_ids_in_range(ids.const_data_ptr<int64_t>(), n, V, op);
  at::Tensor out = at::empty(shape, weight.options());
  if (n == 0 || D == 0) return out;
  // ids validated above: a row gather (ATen's index_select, vectorized and parallel)
  at::Tensor out2d = out.view({n, D});
  at::index_select_out(out2d, w, 0, ids.view({n}));
  return out;
}

at::Tensor embedding_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                  int64_t num_weights) {
  constexpr const char* op = "embedding_backward";
  check_cpu_float32(grad_output, op, "grad_output");
  check_cpu_long(indices, op, "indices");
  TORCH_CHECK_VALUE(num_weights >= 0,
                    "smallmind::embedding_backward: num_weights must be >= 0, got ", num_weights);
  check_min_dim(grad_output, 1, op, "grad_output");
  TORCH_CHECK(grad_output.dim() == indices.dim() + 1 &&
                  grad_output.sizes().slice(0, indices.dim()) == indices.sizes(),
              "smallmind::embedding_backward: 'grad_output' must have shape (*indices.shape, D)"
              " = (", indices.sizes(), ", D), got ", grad_output.sizes());
  const int64_t V = num_weights, D = grad_output.size(-1);
  // V * D floats must be addressable; larger fails here instead of inside the allocator
  constexpr int64_t kMaxFloats = std::numeric_limits<int64_t>::max() / int64_t(sizeof(float));
  TORCH_CHECK_VALUE(D == 0 || V <= kMaxFloats / D,
                    "smallmind::embedding_backward: num_weights * D = ", V, " * ", D,
                    " floats cannot be allocated");
  const int64_t n = indices.numel();
  at::Tensor ids = indices.contiguous();
  const int64_t* id = ids.const_data_ptr<int64_t>();
  check_ids_in_range(id, n, V, op);  // also when the result is empty (V = 0 or D = 0)
  at::Tensor g = grad_output.contiguous();
  at::Tensor grad_weight = at::empty({V, D}, grad_output.options());
  if (V == 0 || D == 0) return grad_weight;

  // Stable counting sort of positions by id: start[v] .. start[v+1] are id v's positions.
  std::vector<int64_t> start(V + 1, 0);
  for (int64_t i = 0; i < n; ++i) ++start[id[i] + 1];
  for (int64_t v = 0; v < V; ++v) start[v + 1] += start[v];
  std::vector<int64_t> order(n);
  {
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < n; ++i) order[fill[id[i]]++] = i;
  }

  // Segment reduce: one row per id, each owned by one thread.
  const float* gp = g.const_data_ptr<float>();
  float* out = grad_weight.data_ptr<float>();
  // Split rows over threads only when there is real work (>= ~1M floats touched): below
  // that one core takes tens of microseconds (the seed's 8x128 ids, D=256, are well below),
  // and a fork/join with a descheduled partner thread on a busy machine costs far more.
  const int64_t work = (n + V) * D;
  const int64_t grain = work < (int64_t(1) << 20) ? V : std::max<int64_t>(1, 8192 / D);
  at::parallel_for(0, V, grain, [&](int64_t vb, int64_t ve) {
    for (int64_t v = vb; v < ve; ++v) {
      float* row = out + v * D;
      const int64_t s = start[v], e = start[v + 1];
      if (s == e) {
        std::memset(row, 0, sizeof(float) * D);
        continue;
      }
      std::memcpy(row, gp + order[s] * D, sizeof(float) * D);
      for (int64_t r = s + 1; r < e; ++r) {
        const float* src = gp + order[r] * D;
        for (int64_t d = 0; d < D; ++d) row[d] += src[d];
      }
    }
  });
  return grad_weight;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("embedding(Tensor indices, Tensor weight) -> Tensor");
  m.def("embedding_inference(Tensor indices, Tensor weight) -> Tensor");
  m.def("embedding_backward(Tensor grad_output, Tensor indices, SymInt num_weights) -> Tensor");
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("embedding", &embedding_cpu);
  m.impl("embedding_inference", &embedding_cpu);
  m.impl("embedding_backward", &embedding_backward_cpu);
}

}  // namespace smallmind
