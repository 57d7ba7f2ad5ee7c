#include "bits.h"

#include <cstring>

namespace funnel {
namespace {

// Reads 8 bytes at a time (memcpy: unaligned loads are fine); `bytes` is a multiple of 4. Inlined
// into each caller, so the popcount builtin is lowered under the caller's target.
__attribute__((always_inline)) inline size_t count(const void* p, size_t bytes) {
  const auto* b = static_cast<const unsigned char*>(p);
  size_t c = 0, i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t x;
    std::memcpy(&x, b + i, 8);
    c += size_t(__builtin_popcountll(x));
  }
  if (i < bytes) {
    uint32_t x;
    std::memcpy(&x, b + i, 4);
    c += size_t(__builtin_popcount(x));
  }
  return c;
}

size_t count_portable(const void* p, size_t bytes) { return count(p, bytes); }
#if defined(__x86_64__)
__attribute__((target("popcnt"))) size_t count_popcnt(const void* p, size_t bytes) { return count(p, bytes); }
#endif

using CountFn = size_t (*)(const void*, size_t);
const CountFn count_bits = [] {
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("popcnt")) return &count_popcnt;
#endif
  return &count_portable;
}();

}  // namespace

size_t popcount_words(const uint64_t* w, size_t n) { return count_bits(w, n * 8); }
size_t popcount_words32(const uint32_t* w, size_t n) { return count_bits(w, n * 4); }

}  // namespace funnel
