// Bit counting over bitsets (allowed-id filters, targeting result sets).
#pragma once
#include <cstddef>
#include <cstdint>
#include <utility>
#include <vector>

namespace funnel {

/// Set bits in `n` 64-bit words. The portable x86-64 baseline has no POPCNT (GCC would call
/// libgcc's __popcountdi2 per word), so a POPCNT version is chosen once by CPUID.
size_t popcount_words(const uint64_t* w, size_t n);

/// Set bits in `n` 32-bit words (any 4-byte alignment).
size_t popcount_words32(const uint32_t* w, size_t n);

/// out[i] = a[i] & b[i] for i < min(na, nb, nout) (a word past the end of `a` or `b` counts as
/// zero), zeros out[min(na, nb) .. nout), and returns the set bits written. `out` may be `a` or
/// `b` itself but must not partly overlap either.
size_t and_count_words32(const uint32_t* a, size_t na, const uint32_t* b, size_t nb, uint32_t* out, size_t nout);

/// One AND-and-count loop: out[0..words) = a & b, returns the set bits (any alignment; `out` may be `a` or `b`).
using AndCountFn = size_t (*)(const uint32_t* a, const uint32_t* b, uint32_t* out, size_t words);
/// and_count_words32 through a given loop (tests run every variant against bit-by-bit).
size_t and_count_words32_with(AndCountFn fn, const uint32_t* a, size_t na, const uint32_t* b, size_t nb, uint32_t* out,
                              size_t nout);
/// The loops this build and CPU can run, portable first; and_count_words32 uses the last.
std::vector<std::pair<const char*, AndCountFn>> and_count_variants();

}  // namespace funnel
