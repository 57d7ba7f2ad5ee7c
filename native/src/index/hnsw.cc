#include "hnsw.h"

#include <cmath>
#include <exception>
#include <queue>
#include <thread>

namespace funnel {
namespace {

constexpr size_t kLinkLockStripes = 1 << 16;
constexpr size_t kOpLockStripes = 1 << 10;
constexpr uint32_t kMaxLevel = 32;

// Below this share of allowed ids, a filtered graph search also walks through disallowed
// neighbours to their neighbours (ACORN-1 style two-hop expansion) instead of only filtering results.
constexpr double kTwoHopBelow = 0.3;
// Allowed sets up to this share of the index are scanned exactly (see search()).
constexpr double kScanBelowShare = 0.02;
// A filtered graph walk widens its beam by sqrt(0.5 / allowed share), at most this many times.
constexpr double kMaxFilterEfBoost = 3.0;

// File sections and header params.
enum Section : uint32_t { kLevels = 1, kDeleted, kLinks0, kVectors, kUpper, kCodes, kCodeAdd, kQMean };
enum Param : size_t {
  kDim = 0, kMetric, kM, kEfC, kEf, kInt8, kSeed, kCapacity, kEntry, kLive, kIdLimit, kTag, kQScale, kQReady
};

inline uint32_t load_acquire(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
inline uint32_t load_relaxed(const uint32_t* p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
inline void store_relaxed(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
inline void store_release(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline void prefetch(const void* p) { __builtin_prefetch(p, 0, 3); }

// Prefetches every cache line of a vector: the hardware prefetcher alone fetches the first
// lines late, and a 128-d float vector spans eight of them.
inline void prefetch_lines(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
}

// Per-thread scratch reused across searches: visited marks (epoch-tagged), a bitset for
// sorted-id filters, the query in stored form and its int8 code.
struct Scratch {
  Array<uint16_t> marks;  // huge-page backed past 2 MiB, as the arrays it indexes
  uint16_t epoch = 0;
  std::vector<uint32_t> bits;
  std::vector<float> query;
  std::vector<int8_t> code;
  std::vector<uint32_t> batch;

  void begin(size_t n) {
    if (marks.size() < n) {
      marks.resize(0);
      marks.resize(n + n / 2 + 64);  // zero-filled
      epoch = 0;
    }
    if (++epoch == 0) {
      std::memset(static_cast<void*>(marks.data()), 0, marks.size() * sizeof(uint16_t));
      epoch = 1;
    }
  }
  bool seen(uint32_t id) const { return marks[id] == epoch; }
  bool mark(uint32_t id) {
    if (marks[id] == epoch) return true;
    marks[id] = epoch;
    return false;
  }
};

thread_local Scratch tls;

using MinHeap = std::priority_queue<Scored, std::vector<Scored>, std::greater<Scored>>;

}  // namespace

HnswIndex::HnswIndex(const HnswParams& params)
    : p_(params),
      M0_(params.M * 2),
      level_mult_(1.0 / std::log(double(std::max<uint32_t>(params.M, 2)))),
      ef_(params.ef),
      link_locks_(new SpinLock[kLinkLockStripes]),
      op_locks_(new std::mutex[kOpLockStripes]) {
  if (p_.dim < 1 || p_.dim > 4096) throw IndexError("ERR_INVALID_ARG", "dim must be in 1..4096");
  if (p_.M < 2 || p_.M > 128) throw IndexError("ERR_INVALID_ARG", "M must be in 2..128");
  if (p_.ef_construction < 1 || p_.ef_construction > 4096) {
    throw IndexError("ERR_INVALID_ARG", "efConstruction must be in 1..4096");
  }
  if (p_.ef < 1 || p_.ef > 65536) throw IndexError("ERR_INVALID_ARG", "ef must be in 1..65536");
  if (p_.capacity > size_t(kMaxId) + 1) throw IndexError("ERR_INVALID_ARG", "capacity too large");
  if (p_.int8) qmean_.assign(p_.dim, 0.f);
  if (p_.capacity > 0) grow_locked(p_.capacity);
}

HnswIndex::~HnswIndex() = default;

uint32_t HnswIndex::level_of(uint32_t id) const { return uint32_t(levels_[id]) - 1; }

uint32_t* HnswIndex::links(uint32_t id, uint32_t level) const {
  if (level == 0) return links0_.data() + size_t(id) * (M0_ + 1);
  return upper_[id].get() + size_t(level - 1) * (p_.M + 1);
}

void HnswIndex::grow_locked(size_t cap) {
  levels_.resize(cap);
  deleted_.resize(cap);
  links0_.resize(cap * (M0_ + 1));
  vectors_.resize(cap * p_.dim);
  if (p_.int8) {
    codes_.resize(cap * p_.dim);
    code_add_.resize(cap);
  }
  upper_.resize(cap);
  capacity_ = cap;
}

void HnswIndex::ensure_capacity(size_t ids) {
  {
    std::shared_lock<std::shared_mutex> g(grow_mu_);
    if (ids <= capacity_) return;
  }
  std::unique_lock<std::shared_mutex> g(grow_mu_);
  if (ids <= capacity_) return;
  grow_locked(std::max(ids, std::min(capacity_ * 2, size_t(kMaxId) + 1)));
}

void HnswIndex::fit_quantizer(const float* vecs, size_t n) {
  std::lock_guard<std::mutex> g(qmu_);
  if (qready_.load() || n == 0) return;
  const size_t d = p_.dim;
  std::vector<float> row(d);
  std::vector<double> mean(d, 0.0);
  for (size_t i = 0; i < n; ++i) {
    to_stored_form(p_.metric, vecs + i * d, row.data(), d);
    for (size_t j = 0; j < d; ++j) mean[j] += row[j];
  }
  for (size_t j = 0; j < d; ++j) qmean_[j] = float(mean[j] / double(n));
  float maxabs = 0.f;
  for (size_t i = 0; i < n; ++i) {
    to_stored_form(p_.metric, vecs + i * d, row.data(), d);
    for (size_t j = 0; j < d; ++j) maxabs = std::max(maxabs, std::fabs(row[j] - qmean_[j]));
  }
  qscale_ = maxabs > 0.f ? maxabs / 127.f : 1.f;
  qready_.store(true);
}

// code = round((x - mean) / scale); approximate distance = coef * dot(code_q, code_x) + add_x + (query constant).
// l2: |q|^2 + |x|^2 - 2 q.x, with q.x ~ s^2 dot + mean.x + q.mean - mean.mean  -> add = |x|^2 - 2 mean.x
// ip/cos: -q.x                                                               -> add = -mean.x
void HnswIndex::encode(uint32_t id) {
  const size_t d = p_.dim;
  const float* x = vectors_.data() + size_t(id) * d;
  int8_t* c = codes_.data() + size_t(id) * d;
  double mx = 0, xx = 0;
  for (size_t j = 0; j < d; ++j) {
    float v = std::nearbyint((x[j] - qmean_[j]) / qscale_);
    c[j] = int8_t(std::max(-127.f, std::min(127.f, v)));
    mx += double(qmean_[j]) * x[j];
    xx += double(x[j]) * x[j];
  }
  code_add_[id] = p_.metric == Metric::kL2 ? float(xx - 2 * mx) : float(-mx);
}

float HnswIndex::dist_ids(uint32_t a, uint32_t b) const {
  const float* va = vectors_.data() + size_t(a) * p_.dim;
  const float* vb = vectors_.data() + size_t(b) * p_.dim;
  return distance(active_kernels(), p_.metric, va, vb, p_.dim);
}

float HnswIndex::dist_query(const float* q, uint32_t id) const {
  return distance(active_kernels(), p_.metric, q, vectors_.data() + size_t(id) * p_.dim, p_.dim);
}

// Greedy descent (float distances) through layers top..bottom+1; returns the closest node found.
uint32_t HnswIndex::greedy(const float* q, uint32_t ep, float* ep_dist, uint32_t top, uint32_t bottom) const {
  uint32_t cur = ep;
  float cur_d = *ep_dist;
  for (uint32_t l = top; l > bottom; --l) {
    bool changed = true;
    while (changed) {
      changed = false;
      const uint32_t* blk = links(cur, l);
      uint32_t n = std::min(load_acquire(blk), p_.M);
      for (uint32_t i = 0; i < n; ++i) {
        uint32_t nb = load_relaxed(blk + 1 + i);
        if (nb >= capacity_) continue;
        float d = dist_query(q, nb);
        if (d < cur_d) {
          cur_d = d;
          cur = nb;
          changed = true;
        }
      }
    }
  }
  *ep_dist = cur_d;
  return cur;
}

// Beam search on one layer, unfiltered, all nodes (removed ones too) eligible except `exclude`:
// the construction-time search. Best first.
std::vector<Scored> HnswIndex::search_layer(const float* q, uint32_t ep, uint32_t ef, uint32_t level,
                                            uint32_t exclude) const {
  Scratch& s = tls;
  s.begin(capacity_);
  MinHeap cand;
  TopK top(ef);
  float d0 = dist_query(q, ep);
  s.mark(ep);
  cand.push({d0, ep});
  if (ep != exclude) top.push(d0, ep);
  const uint32_t maxl = max_links(level);
  while (!cand.empty()) {
    Scored c = cand.top();
    if (top.full() && c.dist > top.worst()) break;
    cand.pop();
    if (level == 0 && !cand.empty()) prefetch_lines(links0_.data() + size_t(cand.top().id) * (M0_ + 1), (M0_ + 1) * sizeof(uint32_t));
    const uint32_t* blk = links(c.id, level);
    uint32_t n = std::min(load_acquire(blk), maxl);
    for (uint32_t i = 0; i < n; ++i) prefetch(s.marks.data() + std::min<size_t>(load_relaxed(blk + 1 + i), s.marks.size() - 1));
    s.batch.clear();
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t nb = load_relaxed(blk + 1 + i);
      if (nb >= capacity_ || s.mark(nb)) continue;
      prefetch(vectors_.data() + size_t(nb) * p_.dim);
      s.batch.push_back(nb);
    }
    const size_t nbatch = s.batch.size();
    if (nbatch > 0) prefetch_lines(vectors_.data() + size_t(s.batch[0]) * p_.dim, p_.dim * sizeof(float));
    for (size_t bi = 0; bi < nbatch; ++bi) {
      const uint32_t nb = s.batch[bi];
      if (bi + 1 < nbatch) prefetch_lines(vectors_.data() + size_t(s.batch[bi + 1]) * p_.dim, p_.dim * sizeof(float));
      float d = dist_query(q, nb);
      if (!top.full() || d < top.worst()) {
        cand.push({d, nb});
        if (nb != exclude) top.push(d, nb);
      }
    }
  }
  return top.take_sorted();
}

// Heuristic of the HNSW paper (algorithm 4): keep a candidate only if it is closer to the base
// than to every neighbour already kept, which spreads links across directions.
void HnswIndex::select_neighbors(std::vector<Scored>& cand, uint32_t m) const {
  std::sort(cand.begin(), cand.end());
  if (cand.size() <= m) return;
  std::vector<Scored> kept;
  kept.reserve(m);
  for (const Scored& c : cand) {
    bool good = true;
    for (const Scored& k : kept) {
      if (dist_ids(c.id, k.id) < c.dist) {
        good = false;
        break;
      }
    }
    if (good) {
      kept.push_back(c);
      if (kept.size() >= m) break;
    }
  }
  cand.swap(kept);
}

void HnswIndex::connect(uint32_t id, uint32_t level, std::vector<Scored>& cand) {
  select_neighbors(cand, p_.M);
  const uint32_t maxl = max_links(level);
  {
    std::lock_guard<SpinLock> g(link_locks_[id % kLinkLockStripes]);
    uint32_t* blk = links(id, level);
    uint32_t n = uint32_t(std::min<size_t>(cand.size(), maxl));
    for (uint32_t i = 0; i < n; ++i) store_relaxed(blk + 1 + i, cand[i].id);
    store_release(blk, n);
  }
  std::vector<Scored> pool;
  for (const Scored& c : cand) {
    const uint32_t nb = c.id;
    if (level > level_of(nb)) continue;
    std::lock_guard<SpinLock> g(link_locks_[nb % kLinkLockStripes]);
    uint32_t* blk = links(nb, level);
    uint32_t n = std::min(load_relaxed(blk), maxl);
    bool present = false;
    for (uint32_t i = 0; i < n && !present; ++i) present = load_relaxed(blk + 1 + i) == id;
    if (present) continue;
    if (n < maxl) {
      store_relaxed(blk + 1 + n, id);
      store_release(blk, n + 1);
      continue;
    }
    pool.clear();
    pool.push_back({c.dist, id});
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t x = load_relaxed(blk + 1 + i);
      pool.push_back({dist_ids(nb, x), x});
    }
    select_neighbors(pool, maxl);
    for (uint32_t i = 0; i < pool.size(); ++i) store_relaxed(blk + 1 + i, pool[i].id);
    store_release(blk, uint32_t(pool.size()));
  }
}

void HnswIndex::insert(uint32_t id, const float* vec) {
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  const size_t d = p_.dim;
  const bool existed = levels_[id] != 0;
  uint32_t level;
  if (existed) {
    level = level_of(id);
  } else {
    double u = double(splitmix64(p_.seed ^ (uint64_t(id) * 0x9E3779B97F4A7C15ull)) >> 11) * 0x1.0p-53;
    level = std::min<uint32_t>(kMaxLevel, uint32_t(-std::log(std::max(u, 1e-300)) * level_mult_));
  }
  float* stored = vectors_.data() + size_t(id) * d;
  to_stored_form(p_.metric, vec, stored, d);
  if (p_.int8) encode(id);
  if (!existed) {
    if (level > 0) {
      upper_[id].reset(new uint32_t[size_t(level) * (p_.M + 1)]());
    }
    __atomic_store_n(levels_.data() + id, uint8_t(level + 1), __ATOMIC_RELEASE);
  }

  uint64_t entry = entry_.load(std::memory_order_acquire);
  if (uint32_t(entry) == kNoId) {
    std::lock_guard<std::mutex> eg(entry_mu_);
    entry = entry_.load();
    if (uint32_t(entry) == kNoId) {
      entry_.store((uint64_t(level) << 32) | id, std::memory_order_release);
      entry = kNoId;
    }
  }
  if (uint32_t(entry) != kNoId) {
    uint32_t ep = uint32_t(entry);
    uint32_t max_level = uint32_t(entry >> 32);
    float ep_d = dist_query(stored, ep);
    uint32_t cur = ep;
    if (max_level > level) cur = greedy(stored, ep, &ep_d, max_level, level);
    for (int l = int(std::min(level, max_level)); l >= 0; --l) {
      std::vector<Scored> w = search_layer(stored, cur, p_.ef_construction, uint32_t(l), id);
      if (w.empty()) continue;
      cur = w.front().id;
      connect(id, uint32_t(l), w);
    }
    if (level > max_level) {
      std::lock_guard<std::mutex> eg(entry_mu_);
      if (level > uint32_t(entry_.load() >> 32)) entry_.store((uint64_t(level) << 32) | id, std::memory_order_release);
    }
  }
  if (!existed) {
    live_.fetch_add(1);
  } else if (__atomic_load_n(deleted_.data() + id, __ATOMIC_ACQUIRE)) {
    __atomic_store_n(deleted_.data() + id, uint8_t(0), __ATOMIC_RELEASE);
    live_.fetch_add(1);
  }
  size_t lim = id_limit_.load();
  while (size_t(id) + 1 > lim && !id_limit_.compare_exchange_weak(lim, size_t(id) + 1)) {
  }
}

void HnswIndex::add(uint32_t id, const float* vec) { add_batch(&id, vec, 1, 1); }

void HnswIndex::add_batch(const uint32_t* ids, const float* vecs, size_t n, unsigned threads) {
  if (n == 0) return;
  uint32_t max_id = 0;
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] > kMaxId) throw IndexError("ERR_INVALID_ARG", "id " + std::to_string(ids[i]) + " exceeds 2^31-1");
    max_id = std::max(max_id, ids[i]);
  }
  check_finite(vecs, n * p_.dim, "vectors");
  std::shared_lock<std::shared_mutex> wg(write_mu_);
  if (p_.int8 && !qready_.load()) fit_quantizer(vecs, n);
  ensure_capacity(size_t(max_id) + 1);
  auto one = [&](size_t i) {
    std::lock_guard<std::mutex> og(op_locks_[ids[i] % kOpLockStripes]);
    insert(ids[i], vecs + i * p_.dim);
  };
  threads = std::max(1u, std::min<unsigned>(threads, unsigned(std::min<size_t>(n, 256))));
  if (threads == 1) {
    for (size_t i = 0; i < n; ++i) one(i);
    return;
  }
  one(0);  // the entry point exists before workers race
  std::atomic<size_t> next{1};
  std::exception_ptr failure;
  std::mutex fail_mu;
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      try {
        for (size_t i = next.fetch_add(1); i < n; i = next.fetch_add(1)) one(i);
      } catch (...) {
        std::lock_guard<std::mutex> fg(fail_mu);
        if (!failure) failure = std::current_exception();
        next.store(n);
      }
    });
  }
  for (std::thread& t : pool) t.join();
  if (failure) std::rethrow_exception(failure);
}

void HnswIndex::remove(uint32_t id) {
  std::shared_lock<std::shared_mutex> wg(write_mu_);
  std::lock_guard<std::mutex> og(op_locks_[id % kOpLockStripes]);
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  if (id >= capacity_ || levels_[id] == 0 || __atomic_load_n(deleted_.data() + id, __ATOMIC_ACQUIRE)) {
    throw IndexError("ERR_UNKNOWN_ID", "id " + std::to_string(id) + " is not in the index");
  }
  __atomic_store_n(deleted_.data() + id, uint8_t(1), __ATOMIC_RELEASE);
  live_.fetch_sub(1);
}

bool HnswIndex::has(uint32_t id) const {
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  return id < capacity_ && levels_[id] != 0 && !__atomic_load_n(deleted_.data() + id, __ATOMIC_ACQUIRE);
}

void HnswIndex::get_vector(uint32_t id, float* out) const {
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  if (id >= capacity_ || levels_[id] == 0 || deleted_[id]) {
    throw IndexError("ERR_UNKNOWN_ID", "id " + std::to_string(id) + " is not in the index");
  }
  std::memcpy(out, vectors_.data() + size_t(id) * p_.dim, p_.dim * sizeof(float));
}

void HnswIndex::scan(const float* q, const SearchParams& sp, QueryResult* out) const {
  TopK top(sp.k);
  const size_t limit = std::min(capacity_, id_limit());
  const float* base = vectors_.data();
  const size_t d = p_.dim;
  const KernelTable& kt = active_kernels();
  uint64_t visited = 0;
  // Allowed ids are gathered a block at a time and every vector of the block is prefetched before
  // the first is scored: the rows lie far apart, and one id of lookahead left the scan waiting on
  // each row's miss in turn (1M x 128, 0.1% allowed as ids: ~4,800 queries/s before, ~5,700 after).
  constexpr size_t kBlock = 16;
  uint32_t block[kBlock];
  size_t nblock = 0;
  const size_t vbytes = d * sizeof(float);
  auto flush = [&] {
    for (size_t i = 0; i < nblock; ++i) prefetch_lines(base + size_t(block[i]) * d, vbytes);
    for (size_t i = 0; i < nblock; ++i) {
      const uint32_t id = block[i];
      if (levels_[id] == 0 || deleted_[id]) continue;
      ++visited;
      top.push(distance(kt, p_.metric, q, base + size_t(id) * d, d), id);
    }
    nblock = 0;
  };
  sp.filter.for_each(uint32_t(limit), [&](uint32_t id) {
    block[nblock++] = id;
    if (nblock == kBlock) flush();
  });
  flush();
  fill_result(top.take_sorted(), sp.k, out);
  out->scanned = true;
  out->visited = visited;
}

void HnswIndex::graph_search(const float* q, const SearchParams& sp, size_t allowed, QueryResult* out) const {
  uint64_t entry = entry_.load(std::memory_order_acquire);
  if (uint32_t(entry) == kNoId) return;
  Scratch& s = tls;
  const size_t d = p_.dim;
  uint32_t ef = std::max(sp.ef ? sp.ef : ef_.load(std::memory_order_relaxed), sp.k);
  uint32_t rerank = 0;
  if (p_.int8) {
    rerank = sp.rerank ? std::max(sp.rerank, sp.k) : std::max(ef, 2 * sp.k);
    ef = std::max(ef, rerank);
  }

  // Sorted-id filters become a bitset for O(1) membership during traversal.
  Filter f = sp.filter;
  if (f.active && f.bits == nullptr) {
    s.bits.assign((capacity_ + 31) / 32, 0);
    for (size_t i = 0; i < f.id_count; ++i) {
      if (f.ids[i] < capacity_) s.bits[f.ids[i] >> 5] |= 1u << (f.ids[i] & 31);
    }
    f.bits = s.bits.data();
    f.bit_words = s.bits.size();
  }
  const double share = f.active ? double(allowed) / double(std::max<size_t>(size(), 1)) : 1.0;
  const bool two_hop = f.active && share < kTwoHopBelow;
  // A filtered walk admits only allowed ids to its beam, so at a low share it stops after
  // seeing far fewer nodes than an unfiltered walk with the same ef: at 10% allowed of 1M, ef 64
  // gave recall@10 0.938. The beam widens as the share falls (x2.2 at 10%, x1 from 50%).
  if (f.active) {
    const double boost = std::min(kMaxFilterEfBoost, std::max(1.0, std::sqrt(0.5 / std::max(share, 1e-9))));
    ef = uint32_t(std::min(65536.0, std::ceil(double(ef) * boost)));
  }

  uint32_t ep = uint32_t(entry);
  float ep_d = dist_query(q, ep);
  uint64_t visited = 1;
  ep = greedy(q, ep, &ep_d, uint32_t(entry >> 32), 0);

  // Level-0 distance: float, or int8 codes (the query encoded once).
  const int8_t* qc = nullptr;
  float coef = 0.f;
  if (p_.int8) {
    s.code.resize(d);
    for (size_t j = 0; j < d; ++j) {
      float v = std::nearbyint((q[j] - qmean_[j]) / qscale_);
      s.code[j] = int8_t(std::max(-127.f, std::min(127.f, v)));
    }
    qc = s.code.data();
    coef = (p_.metric == Metric::kL2 ? -2.f : -1.f) * qscale_ * qscale_;
  }
  const KernelTable& kt = active_kernels();
  auto dist0 = [&](uint32_t id) -> float {
    if (qc != nullptr) return coef * float(kt.dot_i8(qc, codes_.data() + size_t(id) * d, d)) + code_add_[id];
    return distance(kt, p_.metric, q, vectors_.data() + size_t(id) * d, d);
  };
  auto vec_addr = [&](uint32_t id) -> const void* {
    return qc != nullptr ? static_cast<const void*>(codes_.data() + size_t(id) * d)
                         : static_cast<const void*>(vectors_.data() + size_t(id) * d);
  };
  auto eligible = [&](uint32_t id) {
    return !__atomic_load_n(deleted_.data() + id, __ATOMIC_RELAXED) && f.allows(id);
  };

  s.begin(capacity_);
  MinHeap cand;
  TopK top(ef);
  float e0 = dist0(ep);
  s.mark(ep);
  cand.push({e0, ep});
  if (eligible(ep)) top.push(e0, ep);
  while (!cand.empty()) {
    Scored c = cand.top();
    if (top.full() && c.dist > top.worst()) break;
    cand.pop();
    // The next candidate's neighbour list arrives while this one's neighbours are scored; and
    // the visited marks of this list are fetched together rather than one dependent miss at a
    // time (the marks of 1M ids span 2 MiB).
    if (!cand.empty()) prefetch_lines(links0_.data() + size_t(cand.top().id) * (M0_ + 1), (M0_ + 1) * sizeof(uint32_t));
    const uint32_t* blk = links0_.data() + size_t(c.id) * (M0_ + 1);
    uint32_t n = std::min(load_acquire(blk), M0_);
    for (uint32_t i = 0; i < n; ++i) prefetch(s.marks.data() + std::min<size_t>(load_relaxed(blk + 1 + i), s.marks.size() - 1));
    s.batch.clear();
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t nb = load_relaxed(blk + 1 + i);
      if (nb >= capacity_ || s.mark(nb)) continue;
      if (!two_hop || f.allows(nb)) {
        prefetch(vec_addr(nb));
        s.batch.push_back(nb);
        continue;
      }
      const uint32_t* blk2 = links0_.data() + size_t(nb) * (M0_ + 1);
      uint32_t n2 = std::min(load_acquire(blk2), M0_);
      for (uint32_t j = 0; j < n2; ++j) {
        uint32_t nb2 = load_relaxed(blk2 + 1 + j);
        if (nb2 >= capacity_ || s.seen(nb2) || !f.allows(nb2)) continue;
        s.mark(nb2);
        prefetch(vec_addr(nb2));
        s.batch.push_back(nb2);
      }
    }
    const size_t vbytes = qc != nullptr ? d : d * sizeof(float);
    const size_t nbatch = s.batch.size();
    if (nbatch > 0) prefetch_lines(vec_addr(s.batch[0]), vbytes);
    for (size_t bi = 0; bi < nbatch; ++bi) {
      const uint32_t nb = s.batch[bi];
      if (bi + 1 < nbatch) prefetch_lines(vec_addr(s.batch[bi + 1]), vbytes);
      float dd = dist0(nb);
      ++visited;
      if (!top.full() || dd < top.worst()) {
        cand.push({dd, nb});
        if (eligible(nb)) top.push(dd, nb);
      }
    }
  }
  std::vector<Scored> best = top.take_sorted();
  if (qc != nullptr) {
    if (best.size() > rerank) best.resize(rerank);
    for (Scored& b : best) b.dist = dist_query(q, b.id);
    visited += best.size();
    std::sort(best.begin(), best.end());
  }
  fill_result(best, sp.k, out);
  out->visited = visited;
}

QueryResult HnswIndex::search(const float* query, const SearchParams& sp) const {
  check_finite(query, p_.dim, "query");
  const size_t live = size();
  if (sp.k == 0 || sp.k > live) {
    throw IndexError("ERR_K_OUT_OF_RANGE",
                     "k must be in 1..size (" + std::to_string(live) + "), got " + std::to_string(sp.k));
  }
  Scratch& s = tls;
  s.query.resize(p_.dim);
  to_stored_form(p_.metric, query, s.query.data(), p_.dim);
  const float* q = s.query.data();
  QueryResult out;
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  bool use_scan = sp.plan == Plan::kScan;
  // Counted once (O(bitset words) for a bitset): the planner and the graph walk read it; a forced scan does not.
  const size_t allowed = sp.plan == Plan::kScan ? 0 : sp.filter.allowed_count();
  if (sp.filter.active && sp.plan == Plan::kAuto) {
    uint32_t ef = std::max(sp.ef ? sp.ef : ef_.load(std::memory_order_relaxed), sp.k);
    // An exact scan of the allowed ids while they are few, in absolute terms or as a share of
    // the index: at 1M vectors a 1% allowed set (10,000 ids) walked in the graph returned
    // recall@10 of only 0.50-0.57 (bench:ann), while scanning it reads ~5 MiB.
    const size_t by_share = size_t(kScanBelowShare * double(size()));
    use_scan = allowed <= std::max<size_t>({1024, size_t(ef) * M0_, by_share});
  }
  auto run_scan = [&](QueryResult* r) {
    if (sp.filter.active) return scan(q, sp, r);
    std::vector<uint32_t> every(std::min(capacity_, id_limit()));
    for (uint32_t i = 0; i < every.size(); ++i) every[i] = i;
    SearchParams all = sp;
    all.filter.active = true;
    all.filter.ids = every.data();
    all.filter.id_count = every.size();
    scan(q, all, r);
  };
  if (use_scan) {
    run_scan(&out);
  } else {
    graph_search(q, sp, allowed, &out);
    // A walk that found fewer than k eligible ids (an allowed set the graph barely reaches, or
    // k near the index size) falls back to the exact scan: an answer is never short while
    // eligible ids remain.
    if (out.ids.size() < sp.k) {
      uint64_t walked = out.visited;
      run_scan(&out);
      out.visited += walked;
    }
  }
  return out;
}

size_t HnswIndex::memory_bytes() const {
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  size_t b = levels_.size() + deleted_.size() + links0_.size() * 4 + vectors_.size() * 4 + codes_.size() +
             code_add_.size() * 4 + upper_.size() * sizeof(void*);
  for (size_t i = 0; i < std::min(capacity_, id_limit()); ++i) {
    if (upper_[i]) b += size_t(level_of(uint32_t(i))) * (p_.M + 1) * 4;
  }
  return b;
}

void HnswIndex::save(const std::string& path, uint64_t tag) const {
  std::unique_lock<std::shared_mutex> wg(write_mu_);
  std::shared_lock<std::shared_mutex> g(grow_mu_);
  const size_t n = std::min(capacity_, id_limit());
  FileWriter w(path, FileKind::kHnsw);
  std::vector<uint32_t> upper;
  for (size_t i = 0; i < n; ++i) {
    if (levels_[i] == 0 || !upper_[i]) continue;
    const uint32_t* u = upper_[i].get();
    upper.insert(upper.end(), u, u + size_t(level_of(uint32_t(i))) * (p_.M + 1));
  }
  w.section(kLevels, levels_.data(), n);
  w.section(kDeleted, deleted_.data(), n);
  w.section(kLinks0, links0_.data(), n * (M0_ + 1) * 4);
  w.section(kVectors, vectors_.data(), n * p_.dim * 4);
  w.section(kUpper, upper.data(), upper.size() * 4);
  if (p_.int8) {
    w.section(kCodes, codes_.data(), n * p_.dim);
    w.section(kCodeAdd, code_add_.data(), n * 4);
    w.section(kQMean, qmean_.data(), p_.dim * 4);
  }
  uint32_t scale_bits;
  std::memcpy(&scale_bits, &qscale_, 4);
  w.param(kDim, p_.dim);
  w.param(kMetric, uint64_t(p_.metric));
  w.param(kM, p_.M);
  w.param(kEfC, p_.ef_construction);
  w.param(kEf, ef_.load());
  w.param(kInt8, p_.int8 ? 1 : 0);
  w.param(kSeed, p_.seed);
  w.param(kCapacity, n);
  w.param(kEntry, entry_.load());
  w.param(kLive, live_.load());
  w.param(kIdLimit, n);
  w.param(kTag, tag);
  w.param(kQScale, scale_bits);
  w.param(kQReady, qready_.load() ? 1 : 0);
  w.commit();
}

std::unique_ptr<HnswIndex> HnswIndex::load(const std::string& path, bool mmap, bool verify) {
  FileReader r(path, FileKind::kHnsw, verify);
  HnswParams p;
  p.dim = r.param(kDim);
  if (r.param(kMetric) > 2) r.fail("unknown metric");
  p.metric = Metric(r.param(kMetric));
  p.M = uint32_t(r.param(kM));
  p.ef_construction = uint32_t(r.param(kEfC));
  p.ef = uint32_t(r.param(kEf));
  p.int8 = r.param(kInt8) != 0;
  p.seed = r.param(kSeed);
  p.capacity = 0;
  const size_t n = r.param(kCapacity);
  if (n > size_t(kMaxId) + 1 || r.param(kIdLimit) != n) r.fail("bad capacity");
  std::unique_ptr<HnswIndex> ix;
  try {
    ix.reset(new HnswIndex(p));
  } catch (const IndexError& e) {
    r.fail(std::string("bad parameters: ") + e.what());
  }
  HnswIndex& x = *ix;
  const size_t d = p.dim;
  auto place = [&](auto& arr, auto* src, size_t count) {
    if (mmap) {
      arr.view(src, count);
    } else {
      arr.resize(count);
      if (count > 0) std::memcpy(arr.data(), src, count * sizeof(*src));
    }
  };
  place(x.levels_, r.section<uint8_t>(kLevels, n), n);
  place(x.deleted_, r.section<uint8_t>(kDeleted, n), n);
  place(x.links0_, r.section<uint32_t>(kLinks0, n * (x.M0_ + 1)), n * (x.M0_ + 1));
  place(x.vectors_, r.section<float>(kVectors, n * d), n * d);
  if (p.int8) {
    place(x.codes_, r.section<int8_t>(kCodes, n * d), n * d);
    place(x.code_add_, r.section<float>(kCodeAdd, n), n);
    const float* qm = r.section<float>(kQMean, d);
    x.qmean_.assign(qm, qm + d);
    uint32_t scale_bits = uint32_t(r.param(kQScale));
    std::memcpy(&x.qscale_, &scale_bits, 4);
    x.qready_.store(r.param(kQReady) != 0);
    if (!(x.qscale_ > 0.f) || !std::isfinite(x.qscale_)) r.fail("bad quantizer scale");
  }
  x.capacity_ = n;
  x.upper_.resize(n);
  x.entry_.store(r.param(kEntry));
  x.live_.store(r.param(kLive));
  x.id_limit_.store(n);
  x.tag_ = r.param(kTag);
  x.validate_structure(r);
  if (mmap) x.mapping_ = r.mapping();
  return ix;
}

// Checks everything a search dereferences, so that a damaged file that passed (or skipped) the
// checksums is refused instead of crashing: levels, link counts and targets, the upper-layer
// pool, the entry point and the live count.
void HnswIndex::validate_structure(const FileReader& r) const {
  const size_t n = capacity_;
  const size_t upper_words = r.section_bytes(kUpper) / 4;
  if (r.section_bytes(kUpper) % 4 != 0) r.fail("bad upper-layer section");
  const uint32_t* pool = upper_words ? r.section<uint32_t>(kUpper, upper_words) : nullptr;
  size_t used = 0, live = 0;
  auto& upper = const_cast<std::vector<std::unique_ptr<uint32_t[]>>&>(upper_);
  for (size_t i = 0; i < n; ++i) {
    uint8_t lv = levels_[i];
    if (lv == 0) continue;
    if (lv > kMaxLevel + 1) r.fail("bad level of id " + std::to_string(i));
    if (deleted_[i] > 1) r.fail("bad removal flag of id " + std::to_string(i));
    if (!deleted_[i]) ++live;
    uint32_t levels = uint32_t(lv) - 1;
    if (levels > 0) {
      size_t words = size_t(levels) * (p_.M + 1);
      if (used + words > upper_words) r.fail("truncated upper-layer links");
      upper[i].reset(new uint32_t[words]);
      std::memcpy(upper[i].get(), pool + used, words * 4);
      used += words;
    }
    for (uint32_t l = 0; l <= levels; ++l) {
      const uint32_t* blk = links(uint32_t(i), l);
      if (blk[0] > max_links(l)) r.fail("bad link count of id " + std::to_string(i));
      for (uint32_t j = 0; j < blk[0]; ++j) {
        uint32_t t = blk[1 + j];
        if (t >= n || levels_[t] == 0 || uint32_t(levels_[t]) - 1 < l) {
          r.fail("link of id " + std::to_string(i) + " points to a missing node");
        }
      }
    }
  }
  if (used != upper_words) r.fail("upper-layer section size mismatch");
  if (live != live_.load()) r.fail("live count mismatch");
  uint64_t entry = entry_.load();
  uint32_t ep = uint32_t(entry);
  if (ep != kNoId && (ep >= n || levels_[ep] == 0 || uint32_t(levels_[ep]) - 1 != uint32_t(entry >> 32))) {
    r.fail("bad entry point");
  }
  if (ep == kNoId && live > 0) r.fail("missing entry point");
}

}  // namespace funnel
