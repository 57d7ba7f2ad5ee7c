// Targeting index: chunked compressed postings per (attribute, value), evaluated chunk by chunk.
#include "targeting.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <mutex>

#include "../kernels/bits.h"

namespace funnel::targeting {

namespace {

constexpr size_t kWords = ChunkSet::kWords;

// A slot's postings are kept as entries (attribute << 34 | kind << 32 | value id) so that
// replacing or removing an ad knows exactly which sets to leave.
constexpr uint32_t kAny = 0;       // any_of lists the value: slot in Pos_a and P(a,v)
constexpr uint32_t kNone = 1;      // none_of lists the value: slot in N(a,v)
constexpr uint32_t kEmptyAny = 2;  // any_of is []: slot in Pos_a only (never satisfied)

inline uint64_t make_entry(uint32_t attr, uint32_t kind, uint32_t vid) {
  return (uint64_t(attr) << 34) | (uint64_t(kind) << 32) | vid;
}
inline uint32_t entry_attr(uint64_t e) { return uint32_t(e >> 34); }
inline uint32_t entry_kind(uint64_t e) { return uint32_t(e >> 32) & 3u; }
inline uint32_t entry_vid(uint64_t e) { return uint32_t(e); }

inline bool test_bit(const uint64_t* w, uint32_t lo) { return (w[lo >> 6] >> (lo & 63)) & 1u; }

[[noreturn]] void invalid(const std::string& message) { throw IndexError("ERR_INVALID_ARG", message); }

// Per-thread scratch: the chunk being evaluated and the OR of matching any_of sets.
struct Scratch {
  std::unique_ptr<uint64_t[]> res{new uint64_t[kWords]};
  std::unique_ptr<uint64_t[]> match{new uint64_t[kWords]};
  std::vector<const ChunkSet::Container*> hits;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

void load(const ChunkSet::Container& c, uint64_t* dst) {
  if (c.dense()) {
    std::memcpy(dst, c.bitmap.get(), kWords * sizeof(uint64_t));
  } else {
    std::memset(dst, 0, kWords * sizeof(uint64_t));
    for (uint16_t lo : c.array) dst[lo >> 6] |= uint64_t(1) << (lo & 63);
  }
}

void or_into(uint64_t* dst, const ChunkSet::Container& c) {
  if (c.dense()) {
    const uint64_t* b = c.bitmap.get();
    for (size_t w = 0; w < kWords; ++w) dst[w] |= b[w];
  } else {
    for (uint16_t lo : c.array) dst[lo >> 6] |= uint64_t(1) << (lo & 63);
  }
}

// dst &= ~c; returns whether any bit of dst is left (exact for bitmaps, conservative for arrays).
bool and_not(uint64_t* dst, const ChunkSet::Container& c) {
  if (c.dense()) {
    const uint64_t* b = c.bitmap.get();
    uint64_t acc = 0;
    for (size_t w = 0; w < kWords; ++w) acc |= (dst[w] &= ~b[w]);
    return acc != 0;
  }
  for (uint16_t lo : c.array) dst[lo >> 6] &= ~(uint64_t(1) << (lo & 63));
  return true;
}

// res &= ~pos | OR(hits): slots with an any_of on this attribute survive only where some
// request value is listed. Returns whether any bit is left (conservative for a sparse pos).
bool apply_any(uint64_t* res, const ChunkSet::Container& pos, const std::vector<const ChunkSet::Container*>& hits,
               uint64_t* match) {
  if (hits.empty()) return and_not(res, pos);
  // The request's listings as one bitmap (clearing 8 KiB costs less than binary searches of
  // sorted arrays, whose mispredicted branches dominated when both sides were arrays).
  const uint64_t* m;
  if (hits.size() == 1 && hits[0]->dense()) {
    m = hits[0]->bitmap.get();
  } else {
    std::memset(match, 0, kWords * sizeof(uint64_t));
    for (const ChunkSet::Container* h : hits) or_into(match, *h);
    m = match;
  }
  if (!pos.dense()) {
    // Branch-free: a data-dependent branch per member mispredicts about half the time.
    for (uint16_t lo : pos.array) res[lo >> 6] &= ~(uint64_t(1) << (lo & 63)) | m[lo >> 6];
    return true;
  }
  const uint64_t* p = pos.bitmap.get();
  uint64_t acc = 0;
  for (size_t w = 0; w < kWords; ++w) acc |= (res[w] &= ~p[w] | m[w]);
  return acc != 0;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// ChunkSet

bool ChunkSet::Container::contains(uint16_t lo) const {
  if (bitmap) return test_bit(bitmap.get(), lo);
  return std::binary_search(array.begin(), array.end(), lo);
}

const ChunkSet::Container* ChunkSet::find(uint32_t key) const {
  auto it = std::lower_bound(keys_.begin(), keys_.end(), key);
  if (it == keys_.end() || *it != key) return nullptr;
  return &containers_[size_t(it - keys_.begin())];
}

bool ChunkSet::contains(uint32_t x) const {
  const Container* c = find(x >> 16);
  return c != nullptr && c->contains(uint16_t(x & 0xFFFF));
}

bool ChunkSet::add(uint32_t x) {
  const uint16_t key = uint16_t(x >> 16), lo = uint16_t(x & 0xFFFF);
  size_t i;
  if (!keys_.empty() && keys_.back() == key) {  // ascending loads touch the last chunk
    i = keys_.size() - 1;
  } else {
    i = size_t(std::lower_bound(keys_.begin(), keys_.end(), key) - keys_.begin());
    if (i == keys_.size() || keys_[i] != key) {
      keys_.insert(keys_.begin() + ptrdiff_t(i), key);
      containers_.emplace(containers_.begin() + ptrdiff_t(i));
    }
  }
  Container& c = containers_[i];
  if (c.dense()) {
    uint64_t& w = c.bitmap[lo >> 6];
    const uint64_t m = uint64_t(1) << (lo & 63);
    if (w & m) return false;
    w |= m;
  } else {
    auto it = c.array.end();
    if (!c.array.empty() && c.array.back() >= lo) {
      it = std::lower_bound(c.array.begin(), c.array.end(), lo);
      if (*it == lo) return false;
    }
    if (c.card >= kArrayMax) {
      c.bitmap.reset(new uint64_t[kWords]());
      for (uint16_t v : c.array) c.bitmap[v >> 6] |= uint64_t(1) << (v & 63);
      c.bitmap[lo >> 6] |= uint64_t(1) << (lo & 63);
      std::vector<uint16_t>().swap(c.array);
    } else {
      c.array.insert(it, lo);
    }
  }
  ++c.card;
  ++card_;
  return true;
}

bool ChunkSet::remove(uint32_t x) {
  const uint16_t key = uint16_t(x >> 16), lo = uint16_t(x & 0xFFFF);
  auto kit = std::lower_bound(keys_.begin(), keys_.end(), key);
  if (kit == keys_.end() || *kit != key) return false;
  const size_t i = size_t(kit - keys_.begin());
  Container& c = containers_[i];
  if (c.dense()) {
    uint64_t& w = c.bitmap[lo >> 6];
    const uint64_t m = uint64_t(1) << (lo & 63);
    if (!(w & m)) return false;
    w &= ~m;
  } else {
    auto it = std::lower_bound(c.array.begin(), c.array.end(), lo);
    if (it == c.array.end() || *it != lo) return false;
    c.array.erase(it);
  }
  --c.card;
  --card_;
  if (c.card == 0) {
    keys_.erase(kit);
    containers_.erase(containers_.begin() + ptrdiff_t(i));
  } else if (c.dense() && c.card < kArrayMin) {
    c.array.reserve(c.card);
    for (size_t w = 0; w < kWords; ++w) {
      for (uint64_t bits = c.bitmap[w]; bits != 0; bits &= bits - 1) {
        c.array.push_back(uint16_t(w * 64 + size_t(__builtin_ctzll(bits))));
      }
    }
    c.bitmap.reset();
  }
  return true;
}

size_t ChunkSet::memory_bytes() const {
  size_t b = sizeof(*this) + keys_.capacity() * sizeof(uint16_t) + containers_.capacity() * sizeof(Container);
  for (const Container& c : containers_) {
    b += c.dense() ? kWords * sizeof(uint64_t) : c.array.capacity() * sizeof(uint16_t);
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// TargetingIndex internals

// One space of conjunction slots: its postings and, per slot, the entries it was posted under.
struct TargetingIndex::Space {
  struct Attr {
    ChunkSet pos;
    std::vector<ChunkSet> any;   // by value id
    std::vector<ChunkSet> none;  // by value id
  };
  struct SlotRef {
    uint32_t off = 0, len = 0;
  };
  static constexpr size_t kPage = 65536;

  ChunkSet present;
  std::vector<Attr> attrs;  // by attribute id
  std::vector<uint64_t> arena;
  std::vector<std::unique_ptr<SlotRef[]>> pages;  // slot >> 16 -> 65,536 refs, allocated on demand
  size_t garbage = 0;

  SlotRef& ref(uint32_t slot) {
    const size_t p = slot >> 16;
    if (p >= pages.size()) pages.resize(p + 1);
    if (!pages[p]) pages[p].reset(new SlotRef[kPage]());
    return pages[p][slot & 0xFFFF];
  }

  // Drops the arena space of removed slots once it is more than half of the arena.
  void maybe_compact() {
    if (garbage < 65536 || garbage * 2 < arena.size()) return;
    std::vector<uint64_t> fresh;
    fresh.reserve(arena.size() - garbage);
    for (auto& page : pages) {
      if (!page) continue;
      for (size_t i = 0; i < kPage; ++i) {
        SlotRef& r = page[i];
        if (r.len == 0) continue;
        const uint32_t off = uint32_t(fresh.size());
        fresh.insert(fresh.end(), arena.begin() + r.off, arena.begin() + r.off + r.len);
        r.off = off;
      }
    }
    arena.swap(fresh);
    garbage = 0;
  }

  size_t memory_bytes() const {
    size_t b = sizeof(*this) + present.memory_bytes() + arena.capacity() * sizeof(uint64_t) +
               pages.capacity() * sizeof(pages[0]) + attrs.capacity() * sizeof(Attr);
    for (const auto& page : pages) b += page ? kPage * sizeof(SlotRef) : 0;
    for (const Attr& a : attrs) {
      b += a.pos.memory_bytes();
      for (const ChunkSet& s : a.any) b += s.memory_bytes();
      for (const ChunkSet& s : a.none) b += s.memory_bytes();
      b += (a.any.capacity() - a.any.size() + a.none.capacity() - a.none.size()) * sizeof(ChunkSet);
    }
    return b;
  }
};

// Interned values of one attribute, reference-counted by the entries that use them, so that
// values no ad lists any more (an old community, a retired campaign id) are forgotten.
struct TargetingIndex::Vocab {
  NameMap ids;
  std::vector<const std::string*> names;  // value id -> key stored in `ids` (stable node address)
  std::vector<uint32_t> refs;
  std::vector<uint32_t> free;
};

// The sets one request reads in one space: per attribute with any_of postings, Pos_a and the
// P(a,v) of the request's values; then the N(a,v) of every request (a,v).
struct TargetingIndex::Plan {
  struct AnyStep {
    const ChunkSet* pos;
    uint32_t first, count;  // any_sets[first .. first + count)
  };
  std::vector<AnyStep> steps;
  std::vector<const ChunkSet*> any_sets;
  std::vector<const ChunkSet*> none_sets;
};

TargetingIndex::TargetingIndex() : primary_(std::make_unique<Space>()), extra_(std::make_unique<Space>()) {}
TargetingIndex::~TargetingIndex() = default;

uint32_t TargetingIndex::intern_attr(const std::string& name) {
  auto it = attr_ids_.find(std::string_view(name));
  if (it != attr_ids_.end()) return it->second;
  const uint32_t id = uint32_t(vocab_.size());
  if (id >= (1u << 29)) invalid("too many distinct attribute names");
  attr_ids_.emplace(name, id);
  vocab_.push_back(std::make_unique<Vocab>());
  return id;
}

uint32_t TargetingIndex::intern_value(uint32_t attr, const std::string& value) {
  Vocab& v = *vocab_[attr];
  auto it = v.ids.find(std::string_view(value));
  if (it != v.ids.end()) return it->second;
  uint32_t vid;
  if (!v.free.empty()) {
    vid = v.free.back();
    v.free.pop_back();
  } else {
    vid = uint32_t(v.names.size());
    v.names.push_back(nullptr);
    v.refs.push_back(0);
  }
  auto ins = v.ids.emplace(value, vid).first;
  v.names[vid] = &ins->first;
  v.refs[vid] = 0;
  return vid;
}

void TargetingIndex::unref_value(uint32_t attr, uint32_t vid) {
  Vocab& v = *vocab_[attr];
  if (--v.refs[vid] != 0) return;
  const std::string key = *v.names[vid];
  v.ids.erase(key);
  v.names[vid] = nullptr;
  v.free.push_back(vid);
}

void TargetingIndex::compile(const Conjunction& c, std::vector<uint64_t>* entries) {
  entries->clear();
  for (const auto& [name, pred] : c) {
    const uint32_t a = intern_attr(name);
    if (pred.any_of) {
      if (pred.any_of->empty()) entries->push_back(make_entry(a, kEmptyAny, 0));
      for (const std::string& s : *pred.any_of) entries->push_back(make_entry(a, kAny, intern_value(a, s)));
    }
    if (pred.none_of) {
      for (const std::string& s : *pred.none_of) entries->push_back(make_entry(a, kNone, intern_value(a, s)));
    }
  }
  std::sort(entries->begin(), entries->end());
  entries->erase(std::unique(entries->begin(), entries->end()), entries->end());
  for (uint64_t e : *entries) {
    if (entry_kind(e) != kEmptyAny) ++vocab_[entry_attr(e)]->refs[entry_vid(e)];
  }
}

void TargetingIndex::insert_slot(Space& s, uint32_t slot, const std::vector<uint64_t>& entries) {
  for (uint64_t e : entries) {
    const uint32_t a = entry_attr(e), vid = entry_vid(e);
    if (a >= s.attrs.size()) s.attrs.resize(a + 1);
    Space::Attr& at = s.attrs[a];
    switch (entry_kind(e)) {
      case kAny:
        at.pos.add(slot);
        if (vid >= at.any.size()) at.any.resize(vid + 1);
        at.any[vid].add(slot);
        break;
      case kNone:
        if (vid >= at.none.size()) at.none.resize(vid + 1);
        at.none[vid].add(slot);
        break;
      default:
        at.pos.add(slot);
        break;
    }
  }
  s.present.add(slot);
  Space::SlotRef& r = s.ref(slot);
  r.off = uint32_t(s.arena.size());
  r.len = uint32_t(entries.size());
  s.arena.insert(s.arena.end(), entries.begin(), entries.end());
}

void TargetingIndex::erase_slot(Space& s, uint32_t slot) {
  Space::SlotRef& r = s.ref(slot);
  for (uint32_t i = 0; i < r.len; ++i) {
    const uint64_t e = s.arena[r.off + i];
    const uint32_t a = entry_attr(e), vid = entry_vid(e);
    Space::Attr& at = s.attrs[a];
    switch (entry_kind(e)) {
      case kAny:
        at.pos.remove(slot);
        at.any[vid].remove(slot);
        unref_value(a, vid);
        break;
      case kNone:
        at.none[vid].remove(slot);
        unref_value(a, vid);
        break;
      default:
        at.pos.remove(slot);
        break;
    }
  }
  s.garbage += r.len;
  r = Space::SlotRef{};
  s.present.remove(slot);
  s.maybe_compact();
}

void TargetingIndex::remove_locked(uint32_t ad) {
  erase_slot(*primary_, ad);
  --ads_;
  auto it = ad_extra_.find(ad);
  if (it == ad_extra_.end()) return;
  for (uint32_t slot : it->second) {
    erase_slot(*extra_, slot);
    slot_ad_[slot] = kNoId;
    free_slots_.push_back(slot);
  }
  ad_extra_.erase(it);
}

// ---------------------------------------------------------------------------------------------
// Writes

void TargetingIndex::set(uint32_t ad, const std::vector<Conjunction>* targeting) {
  if (ad > kMaxId) invalid("ad id " + std::to_string(ad) + " is above " + std::to_string(kMaxId));
  if (targeting != nullptr) {
    if (targeting->empty()) invalid("targeting must not be an empty list (omit it to target everyone)");
    for (size_t i = 0; i < targeting->size(); ++i) {
      const Conjunction& c = (*targeting)[i];
      for (size_t j = 0; j < c.size(); ++j) {
        if (!c[j].second.any_of && !c[j].second.none_of) {
          invalid("targeting[" + std::to_string(i) + "]." + c[j].first + " needs any_of and/or none_of");
        }
        for (size_t k = 0; k < j; ++k) {
          if (c[k].first == c[j].first) {
            invalid("targeting[" + std::to_string(i) + "] names attribute " + c[j].first + " twice");
          }
        }
      }
    }
  }
  static const std::vector<Conjunction> kEveryone{Conjunction{}};
  const std::vector<Conjunction>& conj = targeting != nullptr ? *targeting : kEveryone;

  std::unique_lock lock(mu_);
  epoch_.fetch_add(1, std::memory_order_release);
  // Compile (and take references on values) before dropping the old postings, so values shared
  // by the old and new targeting are never forgotten and re-interned.
  std::vector<std::vector<uint64_t>> compiled(conj.size());
  for (size_t i = 0; i < conj.size(); ++i) compile(conj[i], &compiled[i]);
  if (primary_->present.contains(ad)) remove_locked(ad);

  insert_slot(*primary_, ad, compiled[0]);
  ++ads_;
  if (compiled.size() > 1) {
    std::vector<uint32_t>& slots = ad_extra_[ad];
    for (size_t i = 1; i < compiled.size(); ++i) {
      uint32_t slot;
      if (!free_slots_.empty()) {
        slot = free_slots_.back();
        free_slots_.pop_back();
      } else {
        if (slot_ad_.size() > kMaxId) invalid("too many extra conjunctions");
        slot = uint32_t(slot_ad_.size());
        slot_ad_.push_back(kNoId);
      }
      slot_ad_[slot] = ad;
      insert_slot(*extra_, slot, compiled[i]);
      slots.push_back(slot);
    }
  }
  capacity_ = std::max(capacity_, ad + 1);
}

bool TargetingIndex::remove(uint32_t ad) {
  std::unique_lock lock(mu_);
  if (ad > kMaxId || !primary_->present.contains(ad)) return false;
  epoch_.fetch_add(1, std::memory_order_release);
  remove_locked(ad);
  return true;
}

bool TargetingIndex::has(uint32_t ad) const {
  std::shared_lock lock(mu_);
  return primary_->present.contains(ad);
}

size_t TargetingIndex::size() const {
  std::shared_lock lock(mu_);
  return ads_;
}

uint32_t TargetingIndex::capacity() const {
  std::shared_lock lock(mu_);
  return capacity_;
}

size_t TargetingIndex::words() const {
  std::shared_lock lock(mu_);
  return (size_t(capacity_) + 31) / 32;
}

size_t TargetingIndex::memory_bytes() const {
  std::shared_lock lock(mu_);
  size_t b = sizeof(*this) + primary_->memory_bytes() + extra_->memory_bytes() +
             slot_ad_.capacity() * sizeof(uint32_t) + free_slots_.capacity() * sizeof(uint32_t);
  for (const auto& [ad, slots] : ad_extra_) b += 48 + slots.capacity() * sizeof(uint32_t);
  for (const auto& [name, id] : attr_ids_) b += 48 + name.capacity();
  for (const auto& v : vocab_) {
    b += sizeof(Vocab) + v->names.capacity() * sizeof(void*) + v->refs.capacity() * 4 + v->free.capacity() * 4;
    for (const auto& [name, id] : v->ids) b += 48 + (name.size() > 15 ? name.capacity() : 0);
  }
  return b;
}

// ---------------------------------------------------------------------------------------------
// Reads

TargetingIndex::Plan TargetingIndex::make_plan(const Space& s,
                                               const std::vector<std::pair<uint32_t, uint32_t>>& req) const {
  Plan p;
  size_t r = 0;
  for (uint32_t a = 0; a < s.attrs.size(); ++a) {
    const Space::Attr& at = s.attrs[a];
    while (r < req.size() && req[r].first < a) ++r;
    if (at.pos.empty()) continue;
    Plan::AnyStep step{&at.pos, uint32_t(p.any_sets.size()), 0};
    for (size_t q = r; q < req.size() && req[q].first == a; ++q) {
      const uint32_t vid = req[q].second;
      if (vid < at.any.size() && !at.any[vid].empty()) p.any_sets.push_back(&at.any[vid]);
    }
    step.count = uint32_t(p.any_sets.size()) - step.first;
    p.steps.push_back(step);
  }
  for (const auto& [a, vid] : req) {
    if (a >= s.attrs.size()) continue;
    const Space::Attr& at = s.attrs[a];
    if (vid < at.none.size() && !at.none[vid].empty()) p.none_sets.push_back(&at.none[vid]);
  }
  return p;
}

namespace {

// Evaluates one space chunk by chunk over its live slots; calls sink(key, res, alive) per chunk,
// where res holds the chunk's satisfied slots; alive false means none (res is then stale).
// `within` masks slots directly (primary space only).
template <typename PlanT, typename Sink>
void eval_space(const ChunkSet& present, const PlanT& plan, const uint32_t* within, size_t within_words, Sink&& sink) {
  Scratch& sc = scratch();
  uint64_t* res = sc.res.get();
  for (size_t ci = 0; ci < present.chunk_count(); ++ci) {
    const uint32_t key = present.key_at(ci);
    load(present.at(ci), res);
    bool alive = true;
    if (within != nullptr) {
      const size_t base = size_t(key) * (kWords * 2);
      uint64_t acc = 0;
      if (base + kWords * 2 <= within_words) {
        const uint32_t* wb = within + base;
        for (size_t w = 0; w < kWords; ++w) {
          acc |= (res[w] &= uint64_t(wb[2 * w]) | (uint64_t(wb[2 * w + 1]) << 32));
        }
      } else {
        for (size_t w = 0; w < kWords; ++w) {
          const size_t j = base + 2 * w;
          const uint64_t lo = j < within_words ? within[j] : 0, hi = j + 1 < within_words ? within[j + 1] : 0;
          acc |= (res[w] &= lo | (hi << 32));
        }
      }
      alive = acc != 0;
    }
    for (const auto& step : plan.steps) {
      if (!alive) break;
      const ChunkSet::Container* pos = step.pos->find(key);
      if (pos == nullptr) continue;
      sc.hits.clear();
      for (uint32_t i = 0; i < step.count; ++i) {
        const ChunkSet::Container* h = plan.any_sets[step.first + i]->find(key);
        if (h != nullptr) sc.hits.push_back(h);
      }
      alive = apply_any(res, *pos, sc.hits, sc.match.get());
    }
    for (const ChunkSet* n : plan.none_sets) {
      if (!alive) break;
      const ChunkSet::Container* c = n->find(key);
      if (c != nullptr) alive = and_not(res, *c);
    }
    sink(key, res, alive);
  }
}

}  // namespace

size_t TargetingIndex::match(const std::vector<RequestAttribute>& attrs, const uint32_t* within, size_t within_words,
                             uint32_t* out, size_t out_words) const {
  std::shared_lock lock(mu_);
  return match_locked(attrs, within, within_words, out, out_words);
}

size_t TargetingIndex::match(const std::vector<RequestAttribute>& attrs, const uint32_t* within, size_t within_words,
                             std::vector<uint32_t>* out) const {
  std::shared_lock lock(mu_);
  out->resize((size_t(capacity_) + 31) / 32);
  return match_locked(attrs, within, within_words, out->data(), out->size());
}

size_t TargetingIndex::match_locked(const std::vector<RequestAttribute>& attrs, const uint32_t* within,
                                    size_t within_words, uint32_t* out, size_t out_words) const {
  const size_t need = (size_t(capacity_) + 31) / 32;
  if (out_words < need) {
    invalid("out holds " + std::to_string(out_words) + " words; the index needs " + std::to_string(need) +
            " (ceil(capacity / 32))");
  }

  // The request as sorted distinct (attribute id, value id) pairs; unknown names are skipped:
  // no slot can list them.
  std::vector<std::pair<uint32_t, uint32_t>> req;
  for (const RequestAttribute& ra : attrs) {
    auto it = attr_ids_.find(std::string_view(ra.name));
    if (it == attr_ids_.end()) continue;
    const Vocab& v = *vocab_[it->second];
    for (const std::string& s : ra.values) {
      auto jt = v.ids.find(std::string_view(s));
      if (jt != v.ids.end()) req.emplace_back(it->second, jt->second);
    }
  }
  std::sort(req.begin(), req.end());
  req.erase(std::unique(req.begin(), req.end()), req.end());

  size_t count = 0;
  size_t next = 0;  // first word of `out` not written yet
  const Plan primary_plan = make_plan(*primary_, req);
  eval_space(primary_->present, primary_plan, within, within_words,
             [&](uint32_t key, const uint64_t* res, bool alive) {
               const size_t base = size_t(key) * (kWords * 2);
               if (base >= out_words) return;
               if (next < base) std::memset(out + next, 0, (base - next) * sizeof(uint32_t));
               const size_t end = std::min(out_words, base + kWords * 2);
               if (!alive) {
                 std::memset(out + base, 0, (end - base) * sizeof(uint32_t));
               } else {
                 const size_t full = (end - base) / 2;
                 if constexpr (std::endian::native == std::endian::little) {
                   std::memcpy(out + base, res, full * sizeof(uint64_t));
                 } else {
                   for (size_t w = 0; w < full; ++w) {
                     out[base + 2 * w] = uint32_t(res[w]);
                     out[base + 2 * w + 1] = uint32_t(res[w] >> 32);
                   }
                 }
                 count += popcount_words(res, full);
                 if (base + 2 * full < end) {  // odd word count: the low 32 bits of the next word
                   const uint64_t x = uint32_t(res[full]);
                   out[base + 2 * full] = uint32_t(x);
                   count += popcount_words(&x, 1);
                 }
               }
               next = end;
             });
  if (next < out_words) std::memset(out + next, 0, (out_words - next) * sizeof(uint32_t));

  if (!extra_->present.empty()) {
    const Plan extra_plan = make_plan(*extra_, req);
    eval_space(extra_->present, extra_plan, nullptr, 0, [&](uint32_t key, const uint64_t* res, bool alive) {
      if (!alive) return;
      for (size_t w = 0; w < kWords; ++w) {
        for (uint64_t bits = res[w]; bits != 0; bits &= bits - 1) {
          const uint32_t slot = (key << 16) | uint32_t(w * 64 + size_t(__builtin_ctzll(bits)));
          const uint32_t ad = slot_ad_[slot];
          if (within != nullptr && ((ad >> 5) >= within_words || !((within[ad >> 5] >> (ad & 31)) & 1u))) continue;
          uint32_t& o = out[ad >> 5];
          const uint32_t m = uint32_t(1) << (ad & 31);
          count += (o & m) == 0;  // an ad whose first conjunction matched is already counted
          o |= m;
        }
      }
    });
  }
  return count;
}

}  // namespace funnel::targeting
