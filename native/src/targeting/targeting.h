// Targeting index: which ads a request's attributes satisfy, as a bitset over ad ids, without
// touching every ad. Pure C++: never includes napi.h.
//
// Semantics (CONTRACT section 1): an ad's targeting is absent (everyone) or a non-empty list of
// conjunctions, and the ad matches when ANY conjunction holds. A conjunction holds when ALL its
// predicates hold (`{}` always holds). `any_of` holds when the request's values for the attribute
// intersect the list (a request without the attribute, or with no values for it, fails);
// `none_of` holds when they do not intersect it (a request without the attribute passes).
// Strings are compared byte for byte.
//
// Layout: every conjunction occupies a slot in one of two spaces. An ad's first conjunction (or
// the empty conjunction standing for absent targeting) lives in the primary space at slot == ad
// id; its 2nd+ conjunctions live in the extra space, whose slots map back to ad ids. Per space
// and attribute a: Pos_a = slots with an any_of on a, P(a,v) = slots whose any_of on a lists v,
// N(a,v) = slots whose none_of on a lists v, Present = live slots; each is a chunked compressed
// set (per 65,536 ids: a sorted uint16 array up to 1,024 members, else a 1,024-word bitmap).
// A request is answered per space and per chunk as
//   res = Present [& within]; for each a with Pos_a: res &= ~Pos_a | OR_v P(a,v); for each (a,v): res &= ~N(a,v)
// and the extra space's surviving slots are OR-ed into the primary answer through their ad ids.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "../index/common.h"

namespace funnel::targeting {

/// One attribute's predicate; an absent list is not checked. An empty any_of never holds, an
/// empty none_of always holds. At least one of the two must be present.
struct Predicate {
  std::optional<std::vector<std::string>> any_of;
  std::optional<std::vector<std::string>> none_of;
};

/// Attribute name -> predicate; holds when every predicate holds. Names must be distinct.
using Conjunction = std::vector<std::pair<std::string, Predicate>>;

/// One attribute of a request: its values (order and repeats do not matter). A name given twice
/// has the union of its values.
struct RequestAttribute {
  std::string name;
  std::vector<std::string> values;
};

/// A set of 32-bit ids stored per 65,536-id chunk as a sorted uint16 array (small) or a
/// 1,024 x 64-bit bitmap (dense), converting with hysteresis (an array above 1,024 members
/// becomes a bitmap; a bitmap below 512 becomes an array again). Roaring's 4,096 minimises
/// memory; 1,024 is for speed: one pass over a bitmap costs about what 1,000 scattered array
/// members do, and a request reads every Pos set.
class ChunkSet {
 public:
  static constexpr uint32_t kArrayMax = 1024;
  static constexpr uint32_t kArrayMin = 512;
  static constexpr size_t kWords = 1024;

  /// The members of one chunk; exactly one of `array` / `bitmap` is in use.
  struct Container {
    uint32_t card = 0;
    std::vector<uint16_t> array;          // sorted ascending, when bitmap is null
    std::unique_ptr<uint64_t[]> bitmap;   // kWords words, bit (lo & 63) of word lo >> 6
    bool dense() const { return bitmap != nullptr; }
    bool contains(uint16_t lo) const;
  };

  /// Adds x; false when already present.
  bool add(uint32_t x);
  /// Removes x; false when absent.
  bool remove(uint32_t x);
  bool contains(uint32_t x) const;
  uint64_t cardinality() const { return card_; }
  bool empty() const { return card_ == 0; }
  /// The container of chunk `key` (ids key << 16 ..), or null when that chunk is empty.
  const Container* find(uint32_t key) const;
  /// Non-empty chunks, ascending by key.
  size_t chunk_count() const { return keys_.size(); }
  uint32_t key_at(size_t i) const { return keys_[i]; }
  const Container& at(size_t i) const { return containers_[i]; }
  size_t memory_bytes() const;

 private:
  std::vector<uint16_t> keys_;
  std::vector<Container> containers_;
  uint64_t card_ = 0;
};

/// DNF targeting index over ad ids 0..kMaxId. Thread-safe: match() takes a shared lock, writes an
/// exclusive one.
class TargetingIndex {
 public:
  TargetingIndex();
  ~TargetingIndex();
  TargetingIndex(const TargetingIndex&) = delete;
  TargetingIndex& operator=(const TargetingIndex&) = delete;

  /// Replaces the targeting of `ad` (null = absent = everyone). Throws ERR_INVALID_ARG (and
  /// changes nothing) for an empty list, a predicate with neither list, a repeated attribute name
  /// in one conjunction, or an id above kMaxId.
  void set(uint32_t ad, const std::vector<Conjunction>* targeting);
  /// Removes `ad`; false when it was not set.
  bool remove(uint32_t ad);
  bool has(uint32_t ad) const;
  /// Number of ads set.
  size_t size() const;
  /// One more than the largest ad id ever set (never shrinks).
  uint32_t capacity() const;
  /// 32-bit words of a full answer: ceil(capacity() / 32).
  size_t words() const;
  /// Write epoch: moves (under the write lock, before the change) on every set() that gets past
  /// its checks and every remove() that removes, and on nothing else. A match taken after reading
  /// epoch E describes the index at E if the epoch still reads E after the match.
  uint64_t epoch() const { return epoch_.load(std::memory_order_acquire); }

  /// Fills out[0..out_words) with the bitset of matching ads (bit i of word i >> 5; words past
  /// the answer are zeroed) and returns their number. `within` is a bitset of allowed ads of
  /// `within_words` words, AND-ed in (ids past its end are not allowed); null means no mask, so
  /// an empty mask must still be a non-null pointer. Throws ERR_INVALID_ARG when
  /// out_words < words().
  size_t match(const std::vector<RequestAttribute>& attrs, const uint32_t* within, size_t within_words,
               uint32_t* out, size_t out_words) const;
  /// Same, into `out` resized to words() under the same lock (safe while other threads write).
  size_t match(const std::vector<RequestAttribute>& attrs, const uint32_t* within, size_t within_words,
               std::vector<uint32_t>* out) const;

  /// Approximate bytes held.
  size_t memory_bytes() const;

 private:
  struct Space;
  struct Vocab;
  struct Plan;
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using NameMap = std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>;

  uint32_t intern_attr(const std::string& name);
  uint32_t intern_value(uint32_t attr, const std::string& value);
  void unref_value(uint32_t attr, uint32_t vid);
  void compile(const Conjunction& c, std::vector<uint64_t>* entries);
  void insert_slot(Space& s, uint32_t slot, const std::vector<uint64_t>& entries);
  void erase_slot(Space& s, uint32_t slot);
  void remove_locked(uint32_t ad);
  Plan make_plan(const Space& s, const std::vector<std::pair<uint32_t, uint32_t>>& req) const;
  size_t match_locked(const std::vector<RequestAttribute>& attrs, const uint32_t* within, size_t within_words,
                      uint32_t* out, size_t out_words) const;

  mutable std::shared_mutex mu_;
  NameMap attr_ids_;
  std::vector<std::unique_ptr<Vocab>> vocab_;      // by attribute id
  std::unique_ptr<Space> primary_, extra_;
  std::vector<uint32_t> slot_ad_;                  // extra slot -> ad id (kNoId when free)
  std::vector<uint32_t> free_slots_;
  std::unordered_map<uint32_t, std::vector<uint32_t>> ad_extra_;  // ad -> its extra slots
  size_t ads_ = 0;
  uint32_t capacity_ = 0;
  std::atomic<uint64_t> epoch_{0};
};

}  // namespace funnel::targeting
