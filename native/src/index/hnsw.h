// HNSW graph index (Malkov & Yashunin) with in-graph filtered search and optional int8 traversal.
// Pure C++: never includes napi.h.
//
// Concurrency: searches and writes (add, update, remove) may run at once from any threads.
// Readers never take a lock on the graph: neighbour lists are read with atomic loads while a
// writer holds a per-node spin lock for one list update. Growing past the id capacity is the one
// exclusive step (arrays double); pre-size `capacity` to avoid it on a serving path.
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <vector>

#include "common.h"
#include "storage.h"

namespace funnel {

/// Construction parameters.
struct HnswParams {
  size_t dim = 0;
  Metric metric = Metric::kL2;
  uint32_t M = 16;                 // upper-layer degree; level 0 keeps 2*M
  uint32_t ef_construction = 200;  // beam width while inserting
  uint32_t ef = 64;                // default search beam width
  bool int8 = false;               // traverse with int8 codes, re-rank in float
  uint64_t seed = 42;              // level generator seed (levels are a function of (seed, id))
  size_t capacity = 1024;          // initial id capacity
};

/// How a filtered query is answered.
enum class Plan { kAuto, kScan, kGraph };

/// Parameters of one search.
struct SearchParams {
  uint32_t k = 10;
  uint32_t ef = 0;      // 0 = index default; raised to k
  uint32_t rerank = 0;  // int8 mode: candidates re-ranked in float; 0 = max(ef, 2k)
  Plan plan = Plan::kAuto;
  Filter filter;
};

/// HNSW index over ids 0..kMaxId.
class HnswIndex {
 public:
  explicit HnswIndex(const HnswParams& params);
  ~HnswIndex();

  /// Loads a file written by save(); `mmap` keeps large arrays in a copy-on-write mapping shared
  /// by every process that maps the file. Throws ERR_IO / ERR_CORRUPT_INDEX.
  static std::unique_ptr<HnswIndex> load(const std::string& path, bool mmap, bool verify);

  /// Writes the index to `path` atomically; `tag` is stored for the caller (e.g. a change sequence).
  void save(const std::string& path, uint64_t tag) const;

  /// Inserts `id` or replaces its vector (re-linking it); `vec` has dim() floats, finite.
  void add(uint32_t id, const float* vec);
  /// add() for `n` ids, on `threads` threads (1 = the calling thread only).
  void add_batch(const uint32_t* ids, const float* vecs, size_t n, unsigned threads);
  /// Marks `id` removed: it is never returned again (it may still route searches). ERR_UNKNOWN_ID if absent.
  void remove(uint32_t id);
  bool has(uint32_t id) const;
  /// Copies the stored vector of `id` (unit length for cos). ERR_UNKNOWN_ID if absent.
  void get_vector(uint32_t id, float* out) const;

  /// k best ids for `query` (dim() floats) under params. Throws ERR_K_OUT_OF_RANGE, ERR_NON_FINITE.
  QueryResult search(const float* query, const SearchParams& params) const;

  size_t dim() const { return p_.dim; }
  Metric metric() const { return p_.metric; }
  uint32_t M() const { return p_.M; }
  uint32_t ef_construction() const { return p_.ef_construction; }
  uint32_t ef() const { return ef_.load(std::memory_order_relaxed); }
  void set_ef(uint32_t ef) { ef_.store(ef, std::memory_order_relaxed); }
  bool int8() const { return p_.int8; }
  bool mapped() const { return mapping_ != nullptr && vectors_.data() != nullptr && !vectors_.owned(); }
  uint64_t tag() const { return tag_; }
  /// Live (not removed) ids.
  size_t size() const { return live_.load(std::memory_order_relaxed); }
  /// One more than the largest id ever stored.
  size_t id_limit() const { return id_limit_.load(std::memory_order_relaxed); }
  size_t memory_bytes() const;

 private:
  struct Visited;
  uint32_t level_of(uint32_t id) const;
  uint32_t* links(uint32_t id, uint32_t level) const;
  uint32_t max_links(uint32_t level) const { return level == 0 ? M0_ : p_.M; }
  void ensure_capacity(size_t ids);
  void grow_locked(size_t cap);
  void fit_quantizer(const float* vecs, size_t n);
  void encode(uint32_t id);
  void insert(uint32_t id, const float* vec);
  float dist_ids(uint32_t a, uint32_t b) const;
  float dist_query(const float* q, uint32_t id) const;
  uint32_t greedy(const float* q, uint32_t ep, float* ep_dist, uint32_t top, uint32_t bottom) const;
  std::vector<Scored> search_layer(const float* q, uint32_t ep, uint32_t ef, uint32_t level, uint32_t exclude) const;
  void select_neighbors(std::vector<Scored>& cand, uint32_t m) const;
  void connect(uint32_t id, uint32_t level, std::vector<Scored>& cand);
  void scan(const float* q, const SearchParams& sp, QueryResult* out) const;
  /// `allowed`: the filter's allowed_count() (counted once per search by the caller).
  void graph_search(const float* q, const SearchParams& sp, size_t allowed, QueryResult* out) const;
  void validate_structure(const FileReader& r) const;

  HnswParams p_;
  uint32_t M0_;
  double level_mult_;
  std::atomic<uint32_t> ef_;
  uint64_t tag_ = 0;

  // Arrays indexed by id; sized to capacity_.
  size_t capacity_ = 0;
  Array<uint8_t> levels_;    // 0xFF: never added
  Array<uint8_t> deleted_;   // 1: removed
  Array<uint32_t> links0_;   // per id: count, then M0 ids
  Array<float> vectors_;     // per id: dim floats (stored form)
  Array<int8_t> codes_;      // int8 mode: per id dim codes
  Array<float> code_add_;    // int8 mode: per id additive term of the approximate distance
  std::vector<std::unique_ptr<uint32_t[]>> upper_;  // per id with level > 0: level blocks of (1 + M)

  // int8 quantizer: code = round((x - mean) / scale), distance ~ coef * dot(codes) + add.
  std::vector<float> qmean_;
  float qscale_ = 0.f;
  std::atomic<bool> qready_{false};
  std::mutex qmu_;

  std::atomic<uint64_t> entry_{uint64_t(kNoId)};  // (max_level << 32) | entry id
  std::atomic<size_t> live_{0};
  std::atomic<size_t> id_limit_{0};

  mutable std::shared_mutex grow_mu_;   // shared: any array access; unique: growth
  mutable std::shared_mutex write_mu_;  // shared: writers; unique: save (a consistent snapshot)
  std::mutex entry_mu_;
  mutable std::unique_ptr<SpinLock[]> link_locks_;
  std::unique_ptr<std::mutex[]> op_locks_;
  std::shared_ptr<MappedFile> mapping_;
};

}  // namespace funnel
