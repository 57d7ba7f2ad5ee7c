// Maximal marginal relevance (MMR) over packed rows, on the dispatched dot kernels. Pure C++.
#pragma once
#include <cstddef>
#include <cstdint>

#include "dispatch.h"

namespace funnel {

/// Greedy MMR over `m` rows of `dim` floats packed in `rows` (row-major, normalised here in place
/// to unit length; a zero or non-finite-length row becomes all zeros and so has similarity 0 to
/// everything) with relevance scores `scores[0..m)`. Writes min(want, m) row indices to `order`,
/// in pick order, and returns that number. Step one takes the argmax of lambda * rel (rel =
/// score / max score, 0 for a score <= 0 or when no score is > 0); each later step takes the
/// argmax of lambda * rel - (1 - lambda) * (max dot with the rows already taken), ties to the
/// lower index. Each step's dots are one `t.dot_f32_rows` call over all m rows. The arithmetic
/// is double, in the order the Diversifier's JavaScript loop uses, so both pick the same rows.
size_t mmr_select(const KernelTable& t, float* rows, size_t dim, size_t m, const double* scores, double lambda,
                  size_t want, uint32_t* order);

}  // namespace funnel
