// Shared pieces of the indexes: errors, metrics, filters, top-k heaps. Pure C++ (no napi.h).
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "../kernels/bits.h"
#include "../kernels/dispatch.h"

namespace funnel {

/// Error with a stable machine-readable code (ERR_INVALID_ARG, ERR_CORRUPT_INDEX, ...).
class IndexError : public std::runtime_error {
 public:
  IndexError(std::string code, const std::string& message) : std::runtime_error(message), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

/// Distance functions. Internally every index ranks by a distance, lower is better:
/// l2 = squared L2, ip = -dot, cos = -dot of unit vectors. Scores returned outward are -distance.
enum class Metric : uint32_t { kIp = 0, kCos = 1, kL2 = 2 };

/// Parses "ip" | "cos" | "l2"; false when unknown.
inline bool parse_metric(const std::string& s, Metric* out) {
  if (s == "ip") *out = Metric::kIp;
  else if (s == "cos") *out = Metric::kCos;
  else if (s == "l2") *out = Metric::kL2;
  else return false;
  return true;
}

/// Name of a metric, as parse_metric reads it.
inline const char* metric_name(Metric m) { return m == Metric::kIp ? "ip" : m == Metric::kCos ? "cos" : "l2"; }

/// Sentinel for "no id".
constexpr uint32_t kNoId = std::numeric_limits<uint32_t>::max();

/// Largest id an index accepts (ids index dense arrays).
constexpr uint32_t kMaxId = (1u << 31) - 1;

/// Distance of two stored-form vectors (for cos both are unit length).
inline float distance(const KernelTable& k, Metric m, const float* a, const float* b, size_t dim) {
  return m == Metric::kL2 ? k.l2sq_f32(a, b, dim) : -k.dot_f32(a, b, dim);
}

/// Distances of one query to `count` consecutive rows.
inline void distance_rows(const KernelTable& k, Metric m, const float* q, const float* rows, size_t stride,
                          size_t count, size_t dim, float* out) {
  if (m == Metric::kL2) {
    k.l2sq_f32_rows(q, rows, stride, count, dim, out);
  } else {
    k.dot_f32_rows(q, rows, stride, count, dim, out);
    for (size_t i = 0; i < count; ++i) out[i] = -out[i];
  }
}

/// Throws ERR_NON_FINITE unless every value is finite.
inline void check_finite(const float* v, size_t n, const char* what) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(v[i])) {
      throw IndexError("ERR_NON_FINITE", std::string(what) + " has a non-finite value at position " + std::to_string(i));
    }
  }
}

/// Copies `src` into `dst` in stored form: unit length for cos (a zero vector stays zero).
inline void to_stored_form(Metric m, const float* src, float* dst, size_t dim) {
  if (m != Metric::kCos) {
    if (dst != src) std::memcpy(dst, src, dim * sizeof(float));
    return;
  }
  double s = 0;
  for (size_t i = 0; i < dim; ++i) s += double(src[i]) * src[i];
  const float inv = s > 0 ? float(1.0 / std::sqrt(s)) : 0.f;
  for (size_t i = 0; i < dim; ++i) dst[i] = src[i] * inv;
}

/// The set of ids a query may return: a bitset, a sorted id list, or everything.
/// Views borrow the caller's memory, which must outlive the search.
struct Filter {
  const uint32_t* bits = nullptr;  // bit i of word i>>5
  size_t bit_words = 0;
  const uint32_t* ids = nullptr;  // sorted ascending, no duplicates
  size_t id_count = 0;
  bool active = false;

  /// True when id may be returned (ignores deletion, which the index checks itself).
  bool allows(uint32_t id) const {
    if (!active) return true;
    if (bits != nullptr) {
      size_t w = id >> 5;
      return w < bit_words && ((bits[w] >> (id & 31)) & 1u);
    }
    return std::binary_search(ids, ids + id_count, id);
  }

  /// Number of ids the filter admits (upper bound on allowed live ids).
  size_t allowed_count() const {
    if (!active) return std::numeric_limits<size_t>::max();
    if (bits == nullptr) return id_count;
    return popcount_words32(bits, bit_words);
  }

  /// Calls fn(id) for every admitted id below `limit`, in ascending order.
  template <typename Fn>
  void for_each(uint32_t limit, Fn&& fn) const {
    if (bits != nullptr) {
      const size_t words = std::min(bit_words, (size_t(limit) + 31) / 32);
      auto visit = [&](size_t w) {
        uint32_t word = bits[w];
        while (word != 0) {
          uint32_t id = uint32_t(w * 32 + size_t(__builtin_ctz(word)));
          word &= word - 1;
          if (id < limit) fn(id);
        }
      };
      // Sparse sets are mostly zero words: test eight at a time (one branch per 256 ids).
      size_t w = 0;
      for (; w + 8 <= words; w += 8) {
        const uint32_t* b = bits + w;
        if ((b[0] | b[1] | b[2] | b[3] | b[4] | b[5] | b[6] | b[7]) == 0) continue;
        for (size_t j = w; j < w + 8; ++j) visit(j);
      }
      for (; w < words; ++w) visit(w);
    } else {
      for (size_t i = 0; i < id_count && ids[i] < limit; ++i) fn(ids[i]);
    }
  }
};

/// Validates a sorted id list: throws ERR_INVALID_ARG when not strictly ascending.
inline void check_sorted_ids(const uint32_t* ids, size_t n, const char* what) {
  for (size_t i = 1; i < n; ++i) {
    if (ids[i] <= ids[i - 1]) {
      throw IndexError("ERR_INVALID_ARG", std::string(what) + " must be sorted ascending without duplicates (position " +
                                              std::to_string(i) + ")");
    }
  }
}

/// (distance, id) pair ordered by distance then id.
struct Scored {
  float dist;
  uint32_t id;
  bool operator<(const Scored& o) const { return dist < o.dist || (dist == o.dist && id < o.id); }
  bool operator>(const Scored& o) const { return o < *this; }
};

/// Keeps the k smallest distances seen; `worst()` is the admission threshold once full.
class TopK {
 public:
  explicit TopK(size_t k) : k_(k) { heap_.reserve(k + 1); }
  size_t size() const { return heap_.size(); }
  bool full() const { return heap_.size() >= k_; }
  float worst() const { return full() ? heap_.front().dist : std::numeric_limits<float>::infinity(); }
  void push(float dist, uint32_t id) {
    if (heap_.size() < k_) {
      heap_.push_back({dist, id});
      std::push_heap(heap_.begin(), heap_.end());
    } else if (Scored{dist, id} < heap_.front()) {
      std::pop_heap(heap_.begin(), heap_.end());
      heap_.back() = {dist, id};
      std::push_heap(heap_.begin(), heap_.end());
    }
  }
  /// Best first; empties the heap.
  std::vector<Scored> take_sorted() {
    std::sort_heap(heap_.begin(), heap_.end());
    return std::move(heap_);
  }

 private:
  size_t k_;
  std::vector<Scored> heap_;
};

/// Result of one query, best first. score = -distance.
struct QueryResult {
  std::vector<uint32_t> ids;
  std::vector<float> scores;
  bool scanned = false;  // true when the planner chose an exact scan
  uint64_t visited = 0;  // distance evaluations
};

/// Fills a QueryResult from sorted (distance, id) pairs.
inline void fill_result(const std::vector<Scored>& best, size_t k, QueryResult* out) {
  size_t n = std::min(k, best.size());
  out->ids.resize(n);
  out->scores.resize(n);
  for (size_t i = 0; i < n; ++i) {
    out->ids[i] = best[i].id;
    out->scores[i] = -best[i].dist;
  }
}

/// Tiny spin lock for striped per-node locks (held for one neighbour-list update).
class SpinLock {
 public:
  void lock() {
    while (flag_.test_and_set(std::memory_order_acquire)) {
      while (flag_.test(std::memory_order_relaxed)) {
#if defined(__x86_64__)
        __builtin_ia32_pause();
#elif defined(__aarch64__)
        asm volatile("yield");
#endif
      }
    }
  }
  void unlock() { flag_.clear(std::memory_order_release); }

 private:
  std::atomic_flag flag_ = ATOMIC_FLAG_INIT;
};

}  // namespace funnel
