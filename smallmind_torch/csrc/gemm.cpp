// smallmind::gemm / gemm_out / linear / linear_out (and the *_inference twins): CPU float32
// kernels on the packed, cache-blocked GEMM of gemm_kernel.h, in the current ISA's form
// (simd.h). Plus the packed-weight cache of the inference linears.
//
// gemm: a (M, K) @ b (K, N). linear: x (..., K) @ weight (N, K)^T + bias (N), weight in
// nn.Linear's layout. The out-variants write into a caller's contiguous buffer and allocate
// nothing of size M*N, unless `out` shares memory with an input: then the product is
// computed into a temporary and copied, so the result is right (as torch.mm(a, b, out=a) is)
// rather than read back from half-written rows. Inputs may be strided views (read through
// strides; x is reshaped to (M, K), which copies only when its leading dims cannot be
// flattened as a view). The *_inference twins run the same kernels with no autograd formula.
//
// Packed weights. A GEMM packs B into micro-panels before it multiplies; for a prefill of a
// few dozen tokens, packing the weight on every call costs as much as the multiplication. So
// linear_inference and linear_out (the no-grad paths, where weights are reused call after
// call) keep each weight's packed copy in a cache, keyed by the weight's storage (held by a
// weak reference, so its address cannot be reused by another tensor while the entry lives),
// offset, shape, strides and the ISA, and valid while the tensor's version counter (bumped by
// every in-place op: optimizer steps, load_state_dict, copy_ under no_grad) is unchanged. Why
// a cache and not an explicit pack op: every caller (the model's linears, the lm head tied to
// the embedding, user code) gets it without being changed, and a weight that is modified or
// replaced repacks by itself. What it cannot see: a write that bypasses the version counter
// (through `.data`, numpy, or another tensor made by `.data` on the same memory); after such
// a write call packed_weight_cache(0) to drop the copies. Inference tensors (made under
// torch.inference_mode) have no version counter and are packed per call. The cache holds at
// most `capacity` bytes (SMALLMIND_PACKED_WEIGHTS_MB, default 1024 MiB; least recently used
// entries go first); the autograd `linear` and `gemm` never use it.
#include <ATen/ops/empty.h>
#include <c10/core/StorageImpl.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common.h"
#include "kernels.h"

namespace smallmind {
namespace {

// ---- dispatch to the current ISA's kernels ---------------------------------------------

void run_sgemm(Isa isa, int64_t M, int64_t N, int64_t K, const float* A, int64_t rsa,
               int64_t csa, const float* B, int64_t rsb, int64_t csb, float* C, int64_t ldc,
               const float* bias, int nthreads, const float* bpacked) {
  SMALLMIND_DISPATCH(isa, gemm::sgemm, M, N, K, A, rsa, csa, B, rsb, csb, C, ldc, bias,
                     nthreads, bpacked);
}

bool takes_small_m_path(Isa isa, int64_t M, int64_t rsb, int64_t csb, int64_t csa) {
  SMALLMIND_DISPATCH(isa, gemm::small_m_path, M, rsb, csb, csa);
}

int64_t packed_b_floats(Isa isa, int64_t K, int64_t N) {
  SMALLMIND_DISPATCH(isa, gemm::packed_b_floats, K, N);
}

void pack_b_all(Isa isa, int64_t K, int64_t N, const float* B, int64_t rsb, int64_t csb,
                float* out, int nthreads) {
  SMALLMIND_DISPATCH(isa, gemm::pack_b_all, K, N, B, rsb, csb, out, nthreads);
}

const char* kernel_name(Isa isa) { SMALLMIND_DISPATCH(isa, gemm::kernel_name); }

// ---- the packed-weight cache -------------------------------------------------------------

size_t default_capacity() {
  const char* env = std::getenv("SMALLMIND_PACKED_WEIGHTS_MB");
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    const long long mb = std::strtoll(env, &end, 10);
    if (end != env && *end == '\0' && mb >= 0) return size_t(mb) << 20;
  }
  return size_t(1024) << 20;
}

class PackedWeights {
 public:
  // The packed B = weight^T of a linear layer's weight (N, K) for `isa`, packing it on a
  // miss; null when it cannot be cached (no version counter, or larger than the capacity).
  std::shared_ptr<const float> get(const at::Tensor& weight, Isa isa, int nthreads) {
    const c10::TensorImpl* impl = weight.unsafeGetTensorImpl();
    if (weight.is_inference() || !impl->version_counter().enabled()) return nullptr;
    const uint32_t version = impl->version_counter().current_version();
    const Key key{weight.storage().unsafeGetStorageImpl(), weight.storage_offset(),
                  weight.size(0), weight.size(1), weight.stride(0), weight.stride(1), int(isa)};
    const void* data = weight.const_data_ptr();
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(key);
      if (it != map_.end()) {
        Entry& e = it->second;
        if (!e.storage.expired() && e.data == data && e.version == version) {
          e.last_use = ++clock_;
          return e.packed;
        }
        bytes_ -= e.bytes;  // stale: the weight was changed or its storage freed
        map_.erase(it);
      }
      if (capacity_ == 0) return nullptr;
    }
    const int64_t N = weight.size(0), K = weight.size(1);
    const size_t bytes = size_t(packed_b_floats(isa, K, N)) * sizeof(float);
    if (bytes > capacity()) return nullptr;
    float* buf = static_cast<float*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64));
    if (buf == nullptr) return nullptr;  // no memory for a copy: pack per call instead
    std::shared_ptr<const float> packed(buf,
                                        [](const float* p) { std::free(const_cast<float*>(p)); });
    // B(k, j) = weight[j, k]
    pack_b_all(isa, K, N, weight.const_data_ptr<float>(), weight.stride(1), weight.stride(0),
               buf, nthreads);
    std::lock_guard<std::mutex> lock(mu_);
    if (map_.count(key) == 0 && bytes <= capacity_) {  // (another thread may have packed it)
      map_.emplace(key, Entry{weight.storage().getWeakStorageImpl(), data, version, packed,
                              bytes, ++clock_});
      bytes_ += bytes;
      evict_locked(key);
    }
    return packed;
  }

  // Sets the capacity (evicting down to it; 0 empties the cache) when given; returns
  // [entries, bytes held, capacity].
  std::vector<int64_t> info(std::optional<int64_t> capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    if (capacity.has_value()) {
      capacity_ = size_t(*capacity);
      evict_locked(std::nullopt);
    }
    return {int64_t(map_.size()), int64_t(bytes_), int64_t(capacity_)};
  }

 private:
  struct Key {
    const void* storage;
    int64_t offset, n, k, s0, s1;
    int isa;
    bool operator==(const Key& o) const {
      return storage == o.storage && offset == o.offset && n == o.n && k == o.k && s0 == o.s0 &&
             s1 == o.s1 && isa == o.isa;
    }
  };
  struct KeyHash {
    size_t operator()(const Key& k) const {
      size_t h = std::hash<const void*>()(k.storage);
      for (int64_t v : {k.offset, k.n, k.k, k.s0, k.s1, int64_t(k.isa)})
        h = h * 1000003u ^ std::hash<int64_t>()(v);
      return h;
    }
  };
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    const void* data;
    uint32_t version;
    std::shared_ptr<const float> packed;
    size_t bytes;
    uint64_t last_use;
  };

  size_t capacity() {
    std::lock_guard<std::mutex> lock(mu_);
    return capacity_;
  }

  // Drops entries whose storage is gone, then the least recently used ones (never `keep`)
  // until the bytes held fit the capacity.
  void evict_locked(std::optional<Key> keep) {
    for (auto it = map_.begin(); it != map_.end();) {
      if (it->second.storage.expired() && !(keep && it->first == *keep)) {
        bytes_ -= it->second.bytes;
        it = map_.erase(it);
      } else {
        ++it;
      }
    }
    while (bytes_ > capacity_) {
      auto victim = map_.end();
      for (auto it = map_.begin(); it != map_.end(); ++it)
        if (!(keep && it->first == *keep) &&
            (victim == map_.end() || it->second.last_use < victim->second.last_use))
          victim = it;
      if (victim == map_.end()) break;
      bytes_ -= victim->second.bytes;
      map_.erase(victim);
    }
  }

  std::mutex mu_;
  std::unordered_map<Key, Entry, KeyHash> map_;
  size_t bytes_ = 0;
  size_t capacity_ = default_capacity();
  uint64_t clock_ = 0;
};

PackedWeights& packed_weights() {
  static PackedWeights* cache = new PackedWeights();  // never destroyed: no exit-order issues
  return *cache;
}

}  // namespace

std::shared_ptr<const float> cached_packed_weight(const at::Tensor& weight, int nthreads) {
  return packed_weights().get(weight, current_isa(), nthreads);
}

namespace {

// ---- ops ---------------------------------------------------------------------------------

struct GemmDims {
  int64_t M, K, N;
};

GemmDims gemm_check(const at::Tensor& a, const at::Tensor& b) {
  constexpr const char* op = "gemm";
  check_cpu_float32(a, op, "a");
  check_cpu_float32(b, op, "b");
  check_dim(a, 2, op, "a");
  check_dim(b, 2, op, "b");
  check_same_size(a.size(1), b.size(0), op, "a.size(1) (K)", "b.size(0) (K)");
  return {a.size(0), a.size(1), b.size(1)};
}

// out: contiguous (M, N), not overlapping a or b
void gemm_into(const at::Tensor& a, const at::Tensor& b, const GemmDims& d, at::Tensor& out) {
  if (d.M == 0 || d.N == 0) return;
  run_sgemm(current_isa(), d.M, d.N, d.K, a.const_data_ptr<float>(), a.stride(0), a.stride(1),
            b.const_data_ptr<float>(), b.stride(0), b.stride(1), out.data_ptr<float>(), d.N,
            nullptr, num_threads(), nullptr);
}

at::Tensor gemm_cpu(const at::Tensor& a, const at::Tensor& b) {
  const GemmDims d = gemm_check(a, b);
  at::Tensor out = at::empty({d.M, d.N}, a.options());
  gemm_into(a, b, d, out);
  return out;
}

void gemm_out_cpu(const at::Tensor& a, const at::Tensor& b, at::Tensor& out) {
  const GemmDims d = gemm_check(a, b);
  check_out_float32(out, {d.M, d.N}, "gemm", "out");
  if (may_overlap(out, a) || may_overlap(out, b)) {
    at::Tensor tmp = at::empty({d.M, d.N}, a.options());
    gemm_into(a, b, d, tmp);
    out.copy_(tmp);
    return;
  }
  gemm_into(a, b, d, out);
}

// Validates and returns the output shape (..., N).
std::vector<int64_t> linear_check(const at::Tensor& x, const at::Tensor& weight,
                                  const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "linear";
  check_cpu_float32(x, op, "x");
  check_cpu_float32(weight, op, "weight");
  check_min_dim(x, 1, op, "x");
  TORCH_CHECK(weight.dim() == 2, "smallmind::linear: 'weight' must be 2-D (N, K) as ",
              "nn.Linear stores it, got shape ", weight.sizes());
  check_same_size(x.size(-1), weight.size(1), op, "x.size(-1) (K)", "weight.size(1) (K)");
  if (bias.has_value()) {
    check_cpu_float32(*bias, op, "bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0),
                "smallmind::linear: 'bias' must be 1-D of size N = weight.size(0) = ",
                weight.size(0), ", got shape ", bias->sizes());
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(weight.size(0));
  return shape;
}

// out: contiguous (..., N), not overlapping x, weight or bias. cache_weight: take the packed
// weight from the cache (the inference paths).
void linear_into(const at::Tensor& x, const at::Tensor& weight,
                 const std::optional<at::Tensor>& bias, at::Tensor& out, bool cache_weight) {
  const int64_t K = weight.size(1), N = weight.size(0);
  const int64_t M = out.numel() / std::max<int64_t>(N, 1);
  if (M == 0 || N == 0) return;
  // (M, K) view of x when possible; a copy only if the leading dims are not flattenable.
  const at::Tensor x2 = x.reshape({M, K});
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  const float* bias_ptr = b.defined() ? b.const_data_ptr<float>() : nullptr;
  const Isa isa = current_isa();
  const int nt = num_threads();
  // B(k, j) = weight[j, k]: the (N, K) weight read through transposed strides.
  std::shared_ptr<const float> packed;
  if (cache_weight && K > 0 &&
      !takes_small_m_path(isa, M, weight.stride(1), weight.stride(0), x2.stride(1)))
    packed = packed_weights().get(weight, isa, nt);
  run_sgemm(isa, M, N, K, x2.const_data_ptr<float>(), x2.stride(0), x2.stride(1),
            weight.const_data_ptr<float>(), weight.stride(1), weight.stride(0),
            out.data_ptr<float>(), N, bias_ptr, nt, packed.get());
}

at::Tensor linear_impl(const at::Tensor& x, const at::Tensor& weight,
                       const std::optional<at::Tensor>& bias, bool cache_weight) {
  const std::vector<int64_t> shape = linear_check(x, weight, bias);
  at::Tensor out = at::empty(shape, x.options());
  linear_into(x, weight, bias, out, cache_weight);
  return out;
}

// The autograd op's kernel: weights change between training steps, so no cache.
at::Tensor linear_cpu(const at::Tensor& x, const at::Tensor& weight,
                      const std::optional<at::Tensor>& bias) {
  return linear_impl(x, weight, bias, false);
}

at::Tensor linear_inference_cpu(const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias) {
  return linear_impl(x, weight, bias, true);
}

void linear_out_cpu(const at::Tensor& x, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, at::Tensor& out) {
  const std::vector<int64_t> shape = linear_check(x, weight, bias);
  check_out_float32(out, shape, "linear", "out");
  if (may_overlap(out, x) || may_overlap(out, weight) ||
      (bias.has_value() && may_overlap(out, *bias))) {
    // out overwrites an input: no cached copy of a weight about to change
    at::Tensor tmp = at::empty(shape, x.options());
    linear_into(x, weight, bias, tmp, false);
    out.copy_(tmp);
    return;
  }
  linear_into(x, weight, bias, out, true);
}

std::string gemm_kernel_name() { return kernel_name(current_isa()); }

std::vector<int64_t> packed_weight_cache(std::optional<int64_t> capacity_bytes) {
  TORCH_CHECK_VALUE(!capacity_bytes.has_value() || *capacity_bytes >= 0,
                    "smallmind::packed_weight_cache: capacity_bytes must be >= 0 (0 empties "
                    "and disables the cache), got ", *capacity_bytes);
  return packed_weights().info(capacity_bytes);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(smallmind, m) {
  m.def("gemm(Tensor a, Tensor b) -> Tensor");
  m.def("gemm_inference(Tensor a, Tensor b) -> Tensor");
  m.def("gemm_out(Tensor a, Tensor b, *, Tensor(a!) out) -> ()");
  m.def("linear(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_inference(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  m.def("linear_out(Tensor x, Tensor weight, Tensor? bias, *, Tensor(a!) out) -> ()");
  // The micro-kernel of the current ISA ("avx512-8x32", "avx2-fma-6x16", "scalar-4x4").
  m.def("gemm_kernel_name() -> str", &gemm_kernel_name);
  // The packed-weight cache: [entries, bytes, capacity]; capacity_bytes sets the capacity.
  m.def("packed_weight_cache(int? capacity_bytes=None) -> int[]", &packed_weight_cache);
}

TORCH_LIBRARY_IMPL(smallmind, CPU, m) {
  m.impl("gemm", &gemm_cpu);
  m.impl("gemm_inference", &gemm_cpu);
  m.impl("gemm_out", &gemm_out_cpu);
  m.impl("linear", &linear_cpu);
  m.impl("linear_inference", &linear_inference_cpu);
  m.impl("linear_out", &linear_out_cpu);
}

}  // namespace smallmind
