// Exact index: a SIMD scan over contiguous rows. Batched search tiles rows so that one pass over
// memory serves many queries. Pure C++: never includes napi.h.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>

#include "common.h"
#include "storage.h"

namespace funnel {

/// Exact k-nearest-neighbour index over ids 0..kMaxId.
class FlatIndex {
 public:
  FlatIndex(size_t dim, Metric metric, size_t capacity);

  /// Loads a file written by save(); throws ERR_IO / ERR_CORRUPT_INDEX.
  static std::unique_ptr<FlatIndex> load(const std::string& path, bool verify);
  /// Writes the index atomically; `tag` is stored for the caller.
  void save(const std::string& path, uint64_t tag) const;

  /// Inserts or replaces `n` vectors (dim() floats each, finite).
  void add_batch(const uint32_t* ids, const float* vecs, size_t n);
  /// Removes `id`; ERR_UNKNOWN_ID if absent.
  void remove(uint32_t id);
  bool has(uint32_t id) const;
  void get_vector(uint32_t id, float* out) const;

  /// Exact k best for one query (dim() floats); only ids the filter allows.
  QueryResult search(const float* query, uint32_t k, const Filter& filter) const;
  /// Exact k best for `nq` queries; out_ids/out_scores hold nq*k slots, missing ones are
  /// kNoId / -inf. One pass over the rows serves every query of the batch.
  void search_batch(const float* queries, size_t nq, uint32_t k, const Filter& filter, uint32_t* out_ids,
                    float* out_scores) const;

  size_t dim() const { return dim_; }
  Metric metric() const { return metric_; }
  size_t size() const { return live_.load(std::memory_order_relaxed); }
  size_t id_limit() const { return id_limit_.load(std::memory_order_relaxed); }
  uint64_t tag() const { return tag_; }
  size_t memory_bytes() const;

 private:
  void grow_locked(size_t cap);
  void check_k(uint32_t k) const;

  size_t dim_;
  Metric metric_;
  size_t capacity_ = 0;
  uint64_t tag_ = 0;
  Array<float> vectors_;
  Array<uint8_t> present_;
  std::atomic<size_t> live_{0};
  std::atomic<size_t> id_limit_{0};
  mutable std::shared_mutex mu_;  // shared: searches; unique: writes (one row each)
};

}  // namespace funnel
