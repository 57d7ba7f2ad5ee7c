#include "bits.h"

#include <algorithm>
#include <cstring>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

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

// out = a & b over `words` 32-bit words, 8 bytes at a time; returns the set bits. Inlined like count().
__attribute__((always_inline)) inline size_t and_count(const uint32_t* a, const uint32_t* b, uint32_t* out,
                                                       size_t words) {
  size_t c = 0, i = 0;
  for (; i + 2 <= words; i += 2) {
    uint64_t x, y;
    std::memcpy(&x, a + i, 8);
    std::memcpy(&y, b + i, 8);
    x &= y;
    std::memcpy(out + i, &x, 8);
    c += size_t(__builtin_popcountll(x));
  }
  if (i < words) {
    const uint32_t x = a[i] & b[i];
    out[i] = x;
    c += size_t(__builtin_popcount(x));
  }
  return c;
}

size_t count_portable(const void* p, size_t bytes) { return count(p, bytes); }
size_t and_count_portable(const uint32_t* a, const uint32_t* b, uint32_t* out, size_t words) {
  return and_count(a, b, out, words);
}
#if defined(__x86_64__)
__attribute__((target("popcnt"))) size_t count_popcnt(const void* p, size_t bytes) { return count(p, bytes); }
__attribute__((target("popcnt"))) size_t and_count_popcnt(const uint32_t* a, const uint32_t* b, uint32_t* out,
                                                          size_t words) {
  return and_count(a, b, out, words);
}

// AVX2: 8 words per step (unaligned loads and stores); each byte's bits counted by a nibble table
// (vpshufb) and summed per 64-bit lane (vpsadbw), as in Mula, Kurz and Lemire's popcount paper.
// Tail: the popcnt loop above for the last words (< 8).
__attribute__((target("avx2,popcnt"))) size_t and_count_avx2(const uint32_t* a, const uint32_t* b, uint32_t* out,
                                                             size_t words) {
  const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2,
                                       3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0f);
  __m256i acc = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 8 <= words; i += 8) {
    const __m256i x = _mm256_and_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)),
                                       _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), x);
    const __m256i lo = _mm256_shuffle_epi8(lut, _mm256_and_si256(x, low));
    const __m256i hi = _mm256_shuffle_epi8(lut, _mm256_and_si256(_mm256_srli_epi16(x, 4), low));
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256()));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
  return size_t(lanes[0] + lanes[1] + lanes[2] + lanes[3]) + and_count(a + i, b + i, out + i, words - i);
}

bool has_popcnt() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("popcnt");
}
bool has_avx2() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
}
#endif

using CountFn = size_t (*)(const void*, size_t);
const CountFn count_bits = [] {
#if defined(__x86_64__)
  if (has_popcnt()) return &count_popcnt;
#endif
  return &count_portable;
}();

const AndCountFn and_count_bits = [] {
#if defined(__x86_64__)
  if (has_avx2()) return &and_count_avx2;
  if (has_popcnt()) return &and_count_popcnt;
#endif
  return &and_count_portable;
}();

}  // namespace

size_t popcount_words(const uint64_t* w, size_t n) { return count_bits(w, n * 8); }
size_t popcount_words32(const uint32_t* w, size_t n) { return count_bits(w, n * 4); }

size_t and_count_words32(const uint32_t* a, size_t na, const uint32_t* b, size_t nb, uint32_t* out, size_t nout) {
  return and_count_words32_with(and_count_bits, a, na, b, nb, out, nout);
}

size_t and_count_words32_with(AndCountFn fn, const uint32_t* a, size_t na, const uint32_t* b, size_t nb, uint32_t* out,
                              size_t nout) {
  const size_t both = std::min(std::min(na, nb), nout);
  const size_t c = fn(a, b, out, both);
  if (nout > both) std::memset(out + both, 0, (nout - both) * sizeof(uint32_t));
  return c;
}

std::vector<std::pair<const char*, AndCountFn>> and_count_variants() {
  std::vector<std::pair<const char*, AndCountFn>> v{{"portable", &and_count_portable}};
#if defined(__x86_64__)
  if (has_popcnt()) v.emplace_back("popcnt", &and_count_popcnt);
  if (has_avx2()) v.emplace_back("avx2", &and_count_avx2);
#endif
  return v;
}

}  // namespace funnel
