// ISA: none of its own (portable C++); the dot products go through the KernelTable it is given.
// Built with -ffp-contract=off (CMakeLists.txt): every double operation rounds on its own, as in
// JavaScript, so no fused multiply-add can change a pick on targets where FMA is baseline.
#include "mmr.h"

#include <cmath>
#include <limits>
#include <vector>

namespace funnel {
namespace {

struct Scratch {
  std::vector<double> rel, max_sim, value;
  std::vector<float> sims;
  std::vector<uint8_t> taken;
  void fit(size_t m) {
    if (rel.size() >= m) return;
    rel.resize(m);
    max_sim.resize(m);
    value.resize(m);
    sims.resize(m);
    taken.resize(m);
  }
};

// Scales a row of squared length `ss` to unit length (zeros when ss is 0, infinite or NaN), each
// element rounded from double as a Float32Array store rounds it.
inline void scale(float* r, size_t dim, double ss) {
  const double inv = ss > 0 && ss != std::numeric_limits<double>::infinity() ? 1 / std::sqrt(ss) : 0;
  for (size_t j = 0; j < dim; ++j) r[j] = float(double(r[j]) * inv);
}

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

size_t mmr_select(const KernelTable& t, float* rows, size_t dim, size_t m, const double* scores, double lambda,
                  size_t want, uint32_t* order) {
  if (want > m) want = m;
  if (want == 0) return 0;
  Scratch& sc = scratch();
  sc.fit(m);
  double* rel = sc.rel.data();
  double* max_sim = sc.max_sim.data();
  double* value = sc.value.data();
  float* sims = sc.sims.data();
  uint8_t* taken = sc.taken.data();

  double max_score = 0;
  for (size_t i = 0; i < m; ++i) {
    if (scores[i] > max_score) max_score = scores[i];
  }
  for (size_t i = 0; i < m; ++i) {
    const double s = scores[i];
    rel[i] = max_score > 0 && s > 0 ? s / max_score : 0;
  }
  // Each row's squared length is summed in index order (as JavaScript sums it), a chain of
  // dependent adds; four rows at a time keep four independent chains in flight.
  size_t i = 0;
  for (; i + 4 <= m; i += 4) {
    float* r0 = rows + i * dim;
    float* r1 = r0 + dim;
    float* r2 = r1 + dim;
    float* r3 = r2 + dim;
    double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t j = 0; j < dim; ++j) {
      s0 += double(r0[j]) * double(r0[j]);
      s1 += double(r1[j]) * double(r1[j]);
      s2 += double(r2[j]) * double(r2[j]);
      s3 += double(r3[j]) * double(r3[j]);
    }
    scale(r0, dim, s0);
    scale(r1, dim, s1);
    scale(r2, dim, s2);
    scale(r3, dim, s3);
  }
  for (; i < m; ++i) {
    float* r = rows + i * dim;
    double ss = 0;
    for (size_t j = 0; j < dim; ++j) ss += double(r[j]) * double(r[j]);
    scale(r, dim, ss);
  }

  size_t first = 0;
  for (size_t i = 1; i < m; ++i) {
    if (lambda * rel[i] > lambda * rel[first]) first = i;
  }
  size_t n = 0;
  order[n++] = uint32_t(first);
  for (size_t i = 0; i < m; ++i) {
    taken[i] = 0;
    max_sim[i] = -std::numeric_limits<double>::infinity();
  }
  taken[first] = 1;
  const double penalty = 1 - lambda;
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  size_t free_from = 0;  // no row below it is free
  while (n < want) {
    const size_t last = order[n - 1];
    t.dot_f32_rows(rows + last * dim, rows, dim, m, dim, sims);
    // The JavaScript loop, with the same result in three passes that carry no dependency from one
    // row to the next except a max: it keeps the first free row f, then moves to a later row only
    // when its value is strictly greater. So the pick is f when f's value is NaN (nothing is greater
    // than NaN), else the first free row holding the largest non-NaN value (NaN is never greater;
    // -0 and +0 are equal). Taken rows' running max is updated too: it is never read again.
    for (size_t i = 0; i < m; ++i) {
      const double s = sims[i];
      const double ms = s > max_sim[i] ? s : max_sim[i];
      max_sim[i] = ms;
      value[i] = lambda * rel[i] - penalty * ms;
    }
    while (taken[free_from]) ++free_from;
    size_t best = free_from;
    if (!std::isnan(value[best])) {
      double mx[4] = {kNone, kNone, kNone, kNone};
      size_t i = 0;
      for (; i + 4 <= m; i += 4) {
        for (size_t k = 0; k < 4; ++k) {
          const double v = taken[i + k] ? kNone : value[i + k];
          mx[k] = v > mx[k] ? v : mx[k];
        }
      }
      for (; i < m; ++i) {
        const double v = taken[i] ? kNone : value[i];
        mx[0] = v > mx[0] ? v : mx[0];
      }
      double top = mx[0];
      for (size_t k = 1; k < 4; ++k) top = mx[k] > top ? mx[k] : top;
      while (taken[best] || value[best] != top) ++best;
    }
    order[n++] = uint32_t(best);
    taken[best] = 1;
  }
  return n;
}

}  // namespace funnel
