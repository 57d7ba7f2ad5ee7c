#include "flat.h"

#include <vector>

namespace funnel {
namespace {

constexpr size_t kRowBlock = 256;  // rows per tile: 128 KiB at d=128, stays in L2 across a query batch
enum Section : uint32_t { kPresent = 1, kVectors = 2 };
enum Param : size_t { kDim = 0, kMetric, kCapacity, kLive, kTag };

}  // namespace

FlatIndex::FlatIndex(size_t dim, Metric metric, size_t capacity) : dim_(dim), metric_(metric) {
  if (dim < 1 || dim > 4096) throw IndexError("ERR_INVALID_ARG", "dim must be in 1..4096");
  if (capacity > size_t(kMaxId) + 1) throw IndexError("ERR_INVALID_ARG", "capacity too large");
  if (capacity > 0) grow_locked(capacity);
}

void FlatIndex::grow_locked(size_t cap) {
  vectors_.resize(cap * dim_);
  present_.resize(cap);
  capacity_ = cap;
}

void FlatIndex::add_batch(const uint32_t* ids, const float* vecs, size_t n) {
  uint32_t max_id = 0;
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] > kMaxId) throw IndexError("ERR_INVALID_ARG", "id " + std::to_string(ids[i]) + " exceeds 2^31-1");
    max_id = std::max(max_id, ids[i]);
  }
  check_finite(vecs, n * dim_, "vectors");
  std::unique_lock<std::shared_mutex> g(mu_);
  if (n > 0 && size_t(max_id) + 1 > capacity_) {
    grow_locked(std::max(size_t(max_id) + 1, std::min(capacity_ * 2, size_t(kMaxId) + 1)));
  }
  for (size_t i = 0; i < n; ++i) {
    to_stored_form(metric_, vecs + i * dim_, vectors_.data() + size_t(ids[i]) * dim_, dim_);
    if (!present_[ids[i]]) {
      present_[ids[i]] = 1;
      live_.fetch_add(1);
    }
    if (size_t(ids[i]) + 1 > id_limit_.load()) id_limit_.store(size_t(ids[i]) + 1);
  }
}

void FlatIndex::remove(uint32_t id) {
  std::unique_lock<std::shared_mutex> g(mu_);
  if (id >= capacity_ || !present_[id]) throw IndexError("ERR_UNKNOWN_ID", "id " + std::to_string(id) + " is not in the index");
  present_[id] = 0;
  live_.fetch_sub(1);
}

bool FlatIndex::has(uint32_t id) const {
  std::shared_lock<std::shared_mutex> g(mu_);
  return id < capacity_ && present_[id];
}

void FlatIndex::get_vector(uint32_t id, float* out) const {
  std::shared_lock<std::shared_mutex> g(mu_);
  if (id >= capacity_ || !present_[id]) throw IndexError("ERR_UNKNOWN_ID", "id " + std::to_string(id) + " is not in the index");
  std::memcpy(out, vectors_.data() + size_t(id) * dim_, dim_ * sizeof(float));
}

void FlatIndex::check_k(uint32_t k) const {
  const size_t live = size();
  if (k == 0 || k > live) {
    throw IndexError("ERR_K_OUT_OF_RANGE", "k must be in 1..size (" + std::to_string(live) + "), got " + std::to_string(k));
  }
}

QueryResult FlatIndex::search(const float* query, uint32_t k, const Filter& filter) const {
  QueryResult out;
  std::vector<uint32_t> ids(k);
  std::vector<float> scores(k);
  search_batch(query, 1, k, filter, ids.data(), scores.data());
  size_t n = 0;
  while (n < k && ids[n] != kNoId) ++n;
  ids.resize(n);
  scores.resize(n);
  out.ids = std::move(ids);
  out.scores = std::move(scores);
  out.scanned = true;
  return out;
}

void FlatIndex::search_batch(const float* queries, size_t nq, uint32_t k, const Filter& filter, uint32_t* out_ids,
                             float* out_scores) const {
  check_finite(queries, nq * dim_, "query");
  check_k(k);
  std::vector<float> stored(nq * dim_);
  for (size_t q = 0; q < nq; ++q) to_stored_form(metric_, queries + q * dim_, stored.data() + q * dim_, dim_);
  std::vector<TopK> tops(nq, TopK(k));
  const KernelTable& kt = active_kernels();
  std::shared_lock<std::shared_mutex> g(mu_);
  const size_t limit = std::min(capacity_, id_limit());
  const size_t allowed = filter.allowed_count();
  if (filter.active && allowed * 8 < limit) {
    // Few allowed ids: gather them instead of streaming every row.
    filter.for_each(uint32_t(limit), [&](uint32_t id) {
      if (!present_[id]) return;
      const float* row = vectors_.data() + size_t(id) * dim_;
      for (size_t q = 0; q < nq; ++q) tops[q].push(distance(kt, metric_, stored.data() + q * dim_, row, dim_), id);
    });
  } else {
    std::vector<float> dist(kRowBlock);
    for (size_t r0 = 0; r0 < limit; r0 += kRowBlock) {
      const size_t rows = std::min(kRowBlock, limit - r0);
      const float* block = vectors_.data() + r0 * dim_;
      for (size_t q = 0; q < nq; ++q) {
        distance_rows(kt, metric_, stored.data() + q * dim_, block, dim_, rows, dim_, dist.data());
        TopK& top = tops[q];
        for (size_t j = 0; j < rows; ++j) {
          uint32_t id = uint32_t(r0 + j);
          if (dist[j] <= top.worst() && present_[id] && filter.allows(id)) top.push(dist[j], id);
        }
      }
    }
  }
  for (size_t q = 0; q < nq; ++q) {
    std::vector<Scored> best = tops[q].take_sorted();
    for (size_t i = 0; i < k; ++i) {
      out_ids[q * k + i] = i < best.size() ? best[i].id : kNoId;
      out_scores[q * k + i] = i < best.size() ? -best[i].dist : -std::numeric_limits<float>::infinity();
    }
  }
}

size_t FlatIndex::memory_bytes() const {
  std::shared_lock<std::shared_mutex> g(mu_);
  return vectors_.size() * 4 + present_.size();
}

void FlatIndex::save(const std::string& path, uint64_t tag) const {
  std::shared_lock<std::shared_mutex> g(mu_);
  const size_t n = std::min(capacity_, id_limit());
  FileWriter w(path, FileKind::kFlat);
  w.section(kPresent, present_.data(), n);
  w.section(kVectors, vectors_.data(), n * dim_ * 4);
  w.param(kDim, dim_);
  w.param(kMetric, uint64_t(metric_));
  w.param(kCapacity, n);
  w.param(kLive, live_.load());
  w.param(kTag, tag);
  w.commit();
}

std::unique_ptr<FlatIndex> FlatIndex::load(const std::string& path, bool verify) {
  FileReader r(path, FileKind::kFlat, verify);
  const size_t dim = r.param(kDim), n = r.param(kCapacity);
  if (dim < 1 || dim > 4096 || r.param(kMetric) > 2 || n > size_t(kMaxId) + 1) r.fail("bad parameters");
  std::unique_ptr<FlatIndex> ix(new FlatIndex(dim, Metric(r.param(kMetric)), 0));
  ix->grow_locked(n);
  const uint8_t* present = r.section<uint8_t>(kPresent, n);
  std::memcpy(ix->present_.data(), present, n);
  std::memcpy(ix->vectors_.data(), r.section<float>(kVectors, n * dim), n * dim * 4);
  size_t live = 0;
  for (size_t i = 0; i < n; ++i) {
    if (present[i] > 1) r.fail("bad presence flag of id " + std::to_string(i));
    live += present[i];
  }
  if (live != r.param(kLive)) r.fail("live count mismatch");
  ix->live_.store(live);
  ix->id_limit_.store(n);
  ix->tag_ = r.param(kTag);
  return ix;
}

}  // namespace funnel
