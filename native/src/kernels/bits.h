// Bit counting over bitsets (allowed-id filters, targeting result sets).
#pragma once
#include <cstddef>
#include <cstdint>

namespace funnel {

/// Set bits in `n` 64-bit words. The portable x86-64 baseline has no POPCNT (GCC would call
/// libgcc's __popcountdi2 per word), so a POPCNT version is chosen once by CPUID.
size_t popcount_words(const uint64_t* w, size_t n);

/// Set bits in `n` 32-bit words (any 4-byte alignment).
size_t popcount_words32(const uint32_t* w, size_t n);

}  // namespace funnel
