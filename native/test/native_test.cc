// Kernel parity tests: every SIMD kernel table this CPU and build offer is checked against the
// scalar table (and the scalar table against a double-precision reference) on seeded random data,
// every n in 0..300, pointer offsets 0..3 elements, NaN / sentinel padding around every input (so a
// tail that reads past n changes the result), guard pages after the last element (so such a read
// faults), plus special cases. Dependency-free: no test framework.
//
// Build: cmake -S native -B native/build-test -DFUNNEL_BUILD_TESTS=ON && cmake --build native/build-test
// Also builds standalone: g++ -std=c++20 -O2 native/src/kernels/*.cc native/test/native_test.cc
// Last line of output: "<N> passed, <M> failed"; exit status non-zero on any failure.
#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#define FUNNEL_TEST_GUARD_PAGES 1
#endif

#include "../src/kernels/bits.h"
#include "../src/kernels/dispatch.h"
#include "../src/kernels/mmr.h"

namespace {

using funnel::KernelTable;
using funnel::SimdLevel;

// ---------------------------------------------------------------------------------------------
// Bookkeeping

struct Counts {
  long passed = 0;
  long failed = 0;
};

Counts g_total;
Counts* g_level = nullptr;  // counts of the level under test, or nullptr
const char* g_level_name = "-";
int g_printed_failures = 0;
constexpr int kMaxPrintedFailures = 50;

// One named part of the run: record() counts into it while it lives.
struct Section {
  Counts counts;
  explicit Section(const char* name) {
    g_level = &counts;
    g_level_name = name;
  }
  ~Section() {
    g_level = nullptr;
    g_level_name = "-";
  }
  Section(const Section&) = delete;
  Section& operator=(const Section&) = delete;
};

void record(bool ok, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void record(bool ok, const char* fmt, ...) {
  Counts& c = g_total;
  if (ok) {
    ++c.passed;
    if (g_level) ++g_level->passed;
    return;
  }
  ++c.failed;
  if (g_level) ++g_level->failed;
  if (g_printed_failures++ < kMaxPrintedFailures) {
    std::fprintf(stdout, "FAIL [%s] ", g_level_name);
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stdout, fmt, ap);
    va_end(ap);
    std::fputc('\n', stdout);
  } else if (g_printed_failures == kMaxPrintedFailures + 1) {
    std::fprintf(stdout, "(further failures not printed)\n");
  }
}

// ---------------------------------------------------------------------------------------------
// Deterministic data (splitmix64: identical on every platform and standard library)

struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  float uniform(float lo, float hi) { return lo + (hi - lo) * float(next() >> 40) * (1.0f / 16777216.0f); }
  int8_t i8() { return int8_t(uint8_t(next() >> 56)); }
};

constexpr size_t kMaxOffset = 3;
constexpr size_t kPad = 64;  // elements of sentinel after the data (> any vector width)
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// A buffer of `n` values at element offset `off` from a 64-byte boundary, with sentinel values
// before and after (NaN for floats), so a kernel that reads outside [p, p+n) gets a wrong result.
template <typename T>
struct Padded {
  static constexpr size_t kFront = 64 / sizeof(T);  // one 64-byte line of sentinels in front
  std::vector<T> storage;
  T* p = nullptr;
  Padded(size_t n, size_t off, T sentinel) {
    storage.assign(64 / sizeof(T) + kFront + off + n + kPad, sentinel);
    uintptr_t base = reinterpret_cast<uintptr_t>(storage.data());
    uintptr_t aligned = (base + 63) & ~uintptr_t(63);
    p = reinterpret_cast<T*>(aligned) + kFront + off;
  }
};

void fill(float* p, size_t n, Rng& rng) {
  for (size_t i = 0; i < n; ++i) p[i] = rng.uniform(-1.f, 1.f);
}
void fill(int8_t* p, size_t n, Rng& rng) {
  for (size_t i = 0; i < n; ++i) p[i] = rng.i8();
}

// Double-precision references and error scales.
double ref_dot(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += double(a[i]) * double(b[i]);
  return s;
}
double abs_dot(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += std::fabs(double(a[i]) * double(b[i]));
  return s;
}
double ref_l2sq(const float* a, const float* b, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) {
    double d = double(a[i]) - double(b[i]);
    s += d * d;
  }
  return s;
}
int64_t ref_dot_i8(const int8_t* a, const int8_t* b, size_t n) {
  int64_t s = 0;
  for (size_t i = 0; i < n; ++i) s += int64_t(a[i]) * int64_t(b[i]);
  return s;
}

// |got - want| <= 1e-5 * scale + 1e-6 (false for NaN / inf).
bool close(double got, double want, double scale) {
  double tol = 1e-5 * scale + 1e-6;
  return std::isfinite(got) && std::fabs(got - want) <= tol;
}

// Scale of cos: sum|a_i b_i| / (|a| |b|); 0 when a norm is 0.
double cos_scale(const float* a, const float* b, size_t n) {
  double aa = ref_dot(a, a, n), bb = ref_dot(b, b, n);
  if (aa == 0 || bb == 0) return 0;
  return abs_dot(a, b, n) / std::sqrt(aa * bb);
}

// ---------------------------------------------------------------------------------------------
// Checks of one table against the scalar table

const KernelTable& S() { return funnel::kScalarKernels; }

void check_pair_kernels(const KernelTable& t, const float* a, const float* b, size_t n, const char* what,
                        size_t oa, size_t ob) {
  {
    float got = t.dot_f32(a, b, n), want = S().dot_f32(a, b, n);
    record(close(got, want, abs_dot(a, b, n)), "dot_f32 %s n=%zu oa=%zu ob=%zu: got %.9g want %.9g", what, n, oa, ob,
           got, want);
  }
  {
    float got = t.l2sq_f32(a, b, n), want = S().l2sq_f32(a, b, n);
    record(close(got, want, ref_l2sq(a, b, n)), "l2sq_f32 %s n=%zu oa=%zu ob=%zu: got %.9g want %.9g", what, n, oa,
           ob, got, want);
  }
  {
    float got = t.cos_f32(a, b, n), want = S().cos_f32(a, b, n);
    record(close(got, want, cos_scale(a, b, n)), "cos_f32 %s n=%zu oa=%zu ob=%zu: got %.9g want %.9g", what, n, oa,
           ob, got, want);
  }
}

void test_random_f32(const KernelTable& t, Rng& rng) {
  for (size_t n = 0; n <= 300; ++n) {
    for (size_t oa = 0; oa <= kMaxOffset; ++oa) {
      for (size_t ob = 0; ob <= kMaxOffset; ++ob) {
        Padded<float> a(n, oa, kNaN), b(n, ob, kNaN);
        fill(a.p, n, rng);
        fill(b.p, n, rng);
        check_pair_kernels(t, a.p, b.p, n, "random", oa, ob);
      }
    }
  }
  // Larger dimensions (the main loops run many times; summation order differs most here).
  for (size_t n : {512u, 767u, 768u, 1536u, 4096u}) {
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      Padded<float> a(n, off, kNaN), b(n, (off + 1) % 4, kNaN);
      fill(a.p, n, rng);
      fill(b.p, n, rng);
      check_pair_kernels(t, a.p, b.p, n, "large", off, (off + 1) % 4);
    }
  }
  // Very large n: the scalar table's one-accumulator sum drifts by about n * 2^-24 / 2 relative
  // (l2sq: 8.7e-6 at n = 100000), too close to the 1e-5 tolerance to serve as the reference, so the
  // SIMD tables are checked against double precision here instead.
  if (&t != &S()) {
    const size_t n = 100000;
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      Padded<float> a(n, off, kNaN), b(n, (off + 1) % 4, kNaN);
      fill(a.p, n, rng);
      fill(b.p, n, rng);
      float d = t.dot_f32(a.p, b.p, n), l = t.l2sq_f32(a.p, b.p, n), c = t.cos_f32(a.p, b.p, n);
      double dw = ref_dot(a.p, b.p, n), lw = ref_l2sq(a.p, b.p, n);
      double cw = dw / std::sqrt(ref_dot(a.p, a.p, n) * ref_dot(b.p, b.p, n));
      record(close(d, dw, abs_dot(a.p, b.p, n)), "dot_f32 vs double n=%zu off=%zu: got %.9g want %.9g", n, off, d, dw);
      record(close(l, lw, lw), "l2sq_f32 vs double n=%zu off=%zu: got %.9g want %.9g", n, off, l, lw);
      record(close(c, cw, cos_scale(a.p, b.p, n)), "cos_f32 vs double n=%zu off=%zu: got %.9g want %.9g", n, off, c,
             cw);
    }
  }
}

void test_random_i8(const KernelTable& t, Rng& rng) {
  for (size_t n = 0; n <= 300; ++n) {
    for (size_t oa = 0; oa <= kMaxOffset; ++oa) {
      for (size_t ob = 0; ob <= kMaxOffset; ++ob) {
        // Sentinels are nonzero and of the same sign, so any over-read changes the sum.
        Padded<int8_t> a(n, oa, int8_t(-128)), b(n, ob, int8_t(-77));
        fill(a.p, n, rng);
        fill(b.p, n, rng);
        int32_t got = t.dot_i8(a.p, b.p, n), want = S().dot_i8(a.p, b.p, n);
        int64_t exact = ref_dot_i8(a.p, b.p, n);
        record(got == want && int64_t(got) == exact, "dot_i8 random n=%zu oa=%zu ob=%zu: got %d want %d exact %lld", n,
               oa, ob, got, want, (long long)exact);
      }
    }
  }
}

void test_rows(const KernelTable& t, Rng& rng) {
  const size_t counts[] = {0, 1, 2, 3, 4, 5, 7, 8, 9, 13};
  for (size_t n = 0; n <= 300; ++n) {
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      const size_t oq = off, orow = (off + 2) % 4;
      for (size_t extra : {0u, 1u, 3u}) {
        const size_t stride = n + extra;
        for (size_t count : counts) {
          if (count == 0 && (extra != 0 || off != 0)) continue;
          Padded<float> q(n, oq, kNaN);
          // Rows area: count rows of `stride`, the last one only `n` long, NaN in the gaps.
          const size_t total = count == 0 ? 0 : (count - 1) * stride + n;
          Padded<float> rows(total, orow, kNaN);
          fill(q.p, n, rng);
          for (size_t j = 0; j < count; ++j) fill(rows.p + j * stride, n, rng);

          // out has canaries on both sides.
          std::vector<float> out_t(count + 2, -12345.f), out_s(count + 2, -12345.f);
          t.dot_f32_rows(q.p, rows.p, stride, count, n, out_t.data() + 1);
          S().dot_f32_rows(q.p, rows.p, stride, count, n, out_s.data() + 1);
          bool ok = out_t[0] == -12345.f && out_t[count + 1] == -12345.f;
          size_t bad = count;
          for (size_t j = 0; j < count && ok; ++j) {
            const float* r = rows.p + j * stride;
            if (!close(out_t[j + 1], out_s[j + 1], abs_dot(q.p, r, n))) ok = false, bad = j;
          }
          record(ok, "dot_f32_rows n=%zu stride=%zu count=%zu oq=%zu orow=%zu: row %zu (== count: out[] canary overwritten) got %.9g want %.9g", n, stride,
                 count, oq, orow, bad, bad < count ? out_t[bad + 1] : 0.f, bad < count ? out_s[bad + 1] : 0.f);

          std::fill(out_t.begin(), out_t.end(), -12345.f);
          std::fill(out_s.begin(), out_s.end(), -12345.f);
          t.l2sq_f32_rows(q.p, rows.p, stride, count, n, out_t.data() + 1);
          S().l2sq_f32_rows(q.p, rows.p, stride, count, n, out_s.data() + 1);
          ok = out_t[0] == -12345.f && out_t[count + 1] == -12345.f;
          bad = count;
          for (size_t j = 0; j < count && ok; ++j) {
            const float* r = rows.p + j * stride;
            if (!close(out_t[j + 1], out_s[j + 1], ref_l2sq(q.p, r, n))) ok = false, bad = j;
          }
          record(ok, "l2sq_f32_rows n=%zu stride=%zu count=%zu oq=%zu orow=%zu: row %zu (== count: out[] canary overwritten) got %.9g want %.9g", n, stride,
                 count, oq, orow, bad, bad < count ? out_t[bad + 1] : 0.f, bad < count ? out_s[bad + 1] : 0.f);
        }
      }
    }
  }
}

void test_special(const KernelTable& t, Rng& rng) {
  std::vector<size_t> dims;
  for (size_t n = 1; n <= 40; ++n) dims.push_back(n);
  for (size_t n : {63u, 64u, 65u, 100u, 127u, 128u, 129u, 300u, 4096u}) dims.push_back(n);

  for (size_t n : dims) {
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      Padded<float> a(n, off, kNaN), b(n, (off + 3) % 4, kNaN), z(n, (off + 1) % 4, kNaN);
      fill(a.p, n, rng);
      fill(b.p, n, rng);
      std::fill(z.p, z.p + n, 0.f);
      // cos with a zero vector is exactly 0, never NaN.
      float c1 = t.cos_f32(z.p, b.p, n), c2 = t.cos_f32(a.p, z.p, n), c3 = t.cos_f32(z.p, z.p, n);
      record(c1 == 0.f && c2 == 0.f && c3 == 0.f, "cos_f32 zero vector n=%zu off=%zu: %.9g %.9g %.9g", n, off, c1, c2,
             c3);
      // dot with zero is 0; l2sq(a, a) is exactly 0; l2sq(a, 0) ~ |a|^2.
      float d0 = t.dot_f32(a.p, z.p, n), l0 = t.l2sq_f32(a.p, a.p, n), la = t.l2sq_f32(a.p, z.p, n);
      record(d0 == 0.f, "dot_f32 zero vector n=%zu off=%zu: %.9g", n, off, d0);
      record(l0 == 0.f, "l2sq_f32(a,a) n=%zu off=%zu: %.9g", n, off, l0);
      double aa = ref_dot(a.p, a.p, n);
      record(close(la, aa, aa), "l2sq_f32(a,0) n=%zu off=%zu: got %.9g want %.9g", n, off, la, aa);
      // cos(a, a) ~ 1, cos(a, -a) ~ -1, cos(a, 3a) ~ 1.
      Padded<float> na(n, off, kNaN), a3(n, (off + 2) % 4, kNaN);
      for (size_t i = 0; i < n; ++i) na.p[i] = -a.p[i], a3.p[i] = 3.f * a.p[i];
      float caa = t.cos_f32(a.p, a.p, n), cna = t.cos_f32(a.p, na.p, n), c3a = t.cos_f32(a.p, a3.p, n);
      record(close(caa, 1.0, 1.0) && close(cna, -1.0, 1.0) && close(c3a, 1.0, 1.0),
             "cos_f32 parallel n=%zu off=%zu: cos(a,a)=%.9g cos(a,-a)=%.9g cos(a,3a)=%.9g", n, off, caa, cna, c3a);
      // Against the double-precision reference directly (not only against the scalar table).
      float dg = t.dot_f32(a.p, b.p, n);
      record(close(dg, ref_dot(a.p, b.p, n), abs_dot(a.p, b.p, n)), "dot_f32 vs double n=%zu off=%zu: %.9g vs %.9g",
             n, off, dg, ref_dot(a.p, b.p, n));
    }
  }

  // int8 extremes: exact against an int64 reference, up to the documented exactness bound.
  // All -128 * -128 gives n * 16384, which fits in int32 for n < 2^17.
  struct Pattern {
    const char* name;
    int8_t (*a)(size_t);
    int8_t (*b)(size_t);
  };
  const Pattern patterns[] = {
      {"-128*-128", [](size_t) { return int8_t(-128); }, [](size_t) { return int8_t(-128); }},
      {"-128*127", [](size_t) { return int8_t(-128); }, [](size_t) { return int8_t(127); }},
      {"127*127", [](size_t) { return int8_t(127); }, [](size_t) { return int8_t(127); }},
      {"127*-128", [](size_t) { return int8_t(127); }, [](size_t) { return int8_t(-128); }},
      {"alt*-128", [](size_t i) { return int8_t(i & 1 ? 127 : -128); }, [](size_t) { return int8_t(-128); }},
      {"alt*alt", [](size_t i) { return int8_t(i & 1 ? 127 : -128); },
       [](size_t i) { return int8_t(i & 1 ? 127 : -128); }},
      {"alt*alt'", [](size_t i) { return int8_t(i & 1 ? 127 : -128); },
       [](size_t i) { return int8_t(i & 1 ? -128 : 127); }},
      {"-1*-128", [](size_t) { return int8_t(-1); }, [](size_t) { return int8_t(-128); }},
  };
  std::vector<size_t> i8dims;
  for (size_t n = 0; n <= 70; ++n) i8dims.push_back(n);
  for (size_t n : {127u, 128u, 129u, 255u, 256u, 257u, 4095u, 4096u, 4097u, 65536u, 100000u, 131071u})
    i8dims.push_back(n);
  for (const Pattern& pat : patterns) {
    for (size_t n : i8dims) {
      for (size_t off = 0; off <= kMaxOffset; ++off) {
        Padded<int8_t> a(n, off, int8_t(127)), b(n, (off + 1) % 4, int8_t(127));
        for (size_t i = 0; i < n; ++i) a.p[i] = pat.a(i), b.p[i] = pat.b(i);
        int64_t exact = ref_dot_i8(a.p, b.p, n);
        int32_t got = t.dot_i8(a.p, b.p, n);
        record(int64_t(got) == exact, "dot_i8 %s n=%zu off=%zu: got %d exact %lld", pat.name, n, off, got,
               (long long)exact);
      }
    }
  }
  // Random int8 at large n.
  for (size_t n : {4096u, 100000u, 131071u}) {
    for (size_t off = 0; off <= kMaxOffset; ++off) {
      Padded<int8_t> a(n, off, int8_t(127)), b(n, (off + 3) % 4, int8_t(127));
      fill(a.p, n, rng);
      fill(b.p, n, rng);
      int64_t exact = ref_dot_i8(a.p, b.p, n);
      int32_t got = t.dot_i8(a.p, b.p, n);
      record(int64_t(got) == exact, "dot_i8 random n=%zu off=%zu: got %d exact %lld", n, off, got, (long long)exact);
    }
  }
}

#if FUNNEL_TEST_GUARD_PAGES
// Inputs end exactly at a PROT_NONE page: a kernel that reads even one element past n faults.
void test_guard_pages(const KernelTable& t, Rng& rng) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  const size_t data_pages = 16;  // room for 4 rows of 300 floats + stride gaps
  const size_t len = (data_pages + 1) * page;
  void* mem[2];
  for (void*& m : mem) {
    m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED || mprotect(static_cast<char*>(m) + data_pages * page, page, PROT_NONE) != 0) {
      record(false, "guard pages: mmap/mprotect failed");
      return;
    }
  }
  char* end0 = static_cast<char*>(mem[0]) + data_pages * page;
  char* end1 = static_cast<char*>(mem[1]) + data_pages * page;
  for (size_t n = 0; n <= 300; ++n) {
    float* a = reinterpret_cast<float*>(end0) - n;
    float* b = reinterpret_cast<float*>(end1) - n;
    fill(a, n, rng);
    fill(b, n, rng);
    volatile float sink = t.dot_f32(a, b, n) + t.l2sq_f32(a, b, n) + t.cos_f32(a, b, n);
    (void)sink;
    int8_t* ia = reinterpret_cast<int8_t*>(end0) - n;
    int8_t* ib = reinterpret_cast<int8_t*>(end1) - n;
    fill(ia, n, rng);
    fill(ib, n, rng);
    int32_t gi = t.dot_i8(ia, ib, n);
    record(gi == S().dot_i8(ia, ib, n), "dot_i8 guard page n=%zu", n);
    // Rows: 5 rows (one 4-row block and a remainder), stride n + 1, the last row ending at the page.
    for (size_t count : {4u, 5u}) {
      const size_t stride = n + 1;
      const size_t total = (count - 1) * stride + n;
      float* rows = reinterpret_cast<float*>(end1) - total;
      float* q = reinterpret_cast<float*>(end0) - n;
      fill(rows, total, rng);
      fill(q, n, rng);
      float out[5], want[5];
      t.dot_f32_rows(q, rows, stride, count, n, out);
      S().dot_f32_rows(q, rows, stride, count, n, want);
      bool ok = true;
      for (size_t j = 0; j < count; ++j) ok = ok && close(out[j], want[j], abs_dot(q, rows + j * stride, n));
      t.l2sq_f32_rows(q, rows, stride, count, n, out);
      S().l2sq_f32_rows(q, rows, stride, count, n, want);
      for (size_t j = 0; j < count; ++j) ok = ok && close(out[j], want[j], ref_l2sq(q, rows + j * stride, n));
      record(ok, "rows guard page n=%zu count=%zu", n, count);
    }
    record(true, "guard page n=%zu", n);  // reaching here means no kernel faulted
  }
  for (void* m : mem) munmap(m, len);
}
#endif

void test_mmr(const KernelTable& t);

void test_level(SimdLevel level) {
  const char* name = funnel::simd_level_name(level);
  const KernelTable* t = funnel::kernels_for(level);
  if (t == nullptr) {
    std::printf("level %-6s: skipped (not compiled in or not supported by this CPU)\n", name);
    return;
  }
  Section section(name);
  const Counts& counts = section.counts;
  record(t->level == level && std::strcmp(t->name, name) == 0, "table of %s says level %d name %s", name,
         int(t->level), t->name);
  Rng rng(0xF0E1D2C3B4A59687ull);  // the same data for every level
  test_random_f32(*t, rng);
  test_random_i8(*t, rng);
  test_rows(*t, rng);
  test_special(*t, rng);
  test_mmr(*t);
#if FUNNEL_TEST_GUARD_PAGES
  // FUNNEL_TEST_NO_GUARD_PAGES=1 skips this part, for emulators whose masked loads do not suppress
  // faults on masked-off lanes as hardware does (QEMU 7.2's vmaskmovps, SIMDe's AVX-512 masks).
  const char* no_guard = std::getenv("FUNNEL_TEST_NO_GUARD_PAGES");
  if (no_guard == nullptr || *no_guard == '\0' || std::strcmp(no_guard, "0") == 0) test_guard_pages(*t, rng);
#endif
  std::printf("level %-6s: %ld passed, %ld failed\n", name, counts.passed, counts.failed);
}

// The scalar table itself against double precision, so the reference is not taken on trust.
void test_scalar_reference() {
  Section section("reference");
  const Counts& counts = section.counts;
  Rng rng(12345);
  for (size_t n = 0; n <= 300; ++n) {
    Padded<float> a(n, n % 4, kNaN), b(n, (n / 4) % 4, kNaN);
    fill(a.p, n, rng);
    fill(b.p, n, rng);
    float d = S().dot_f32(a.p, b.p, n), l = S().l2sq_f32(a.p, b.p, n), c = S().cos_f32(a.p, b.p, n);
    double aa = ref_dot(a.p, a.p, n), bb = ref_dot(b.p, b.p, n);
    double cw = (aa == 0 || bb == 0) ? 0 : ref_dot(a.p, b.p, n) / std::sqrt(aa * bb);
    record(close(d, ref_dot(a.p, b.p, n), abs_dot(a.p, b.p, n)), "scalar dot_f32 n=%zu", n);
    record(close(l, ref_l2sq(a.p, b.p, n), ref_l2sq(a.p, b.p, n)), "scalar l2sq_f32 n=%zu", n);
    record(close(c, cw, cos_scale(a.p, b.p, n)), "scalar cos_f32 n=%zu", n);
  }
  std::printf("reference   : %ld passed, %ld failed (scalar table vs double precision)\n", counts.passed,
              counts.failed);
}

void test_dispatch() {
  Section section("dispatch");
  const Counts& counts = section.counts;
  // Names round-trip; unknown names are rejected.
  for (SimdLevel l : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512, SimdLevel::kNeon}) {
    SimdLevel parsed = SimdLevel::kScalar;
    bool ok = funnel::parse_simd_level(funnel::simd_level_name(l), &parsed);
    record(ok && parsed == l, "parse_simd_level(simd_level_name(%d))", int(l));
  }
  SimdLevel dummy = SimdLevel::kAvx2;
  record(!funnel::parse_simd_level("bogus", &dummy) && dummy == SimdLevel::kAvx2, "parse_simd_level(\"bogus\")");
  record(!funnel::parse_simd_level("", &dummy), "parse_simd_level(\"\")");
  record(std::strcmp(funnel::simd_level_name(SimdLevel::kScalar), "scalar") == 0 &&
             std::strcmp(funnel::simd_level_name(SimdLevel::kAvx2), "avx2") == 0 &&
             std::strcmp(funnel::simd_level_name(SimdLevel::kAvx512), "avx512") == 0 &&
             std::strcmp(funnel::simd_level_name(SimdLevel::kNeon), "neon") == 0,
         "simd_level_name");
  // Scalar is always available; other architectures' tables never are.
  record(funnel::kernels_for(SimdLevel::kScalar) == &funnel::kScalarKernels, "kernels_for(scalar)");
#if defined(__x86_64__) || defined(_M_X64)
  record(funnel::kernels_for(SimdLevel::kNeon) == nullptr, "kernels_for(neon) on x86-64");
#elif defined(__aarch64__)
  record(funnel::kernels_for(SimdLevel::kNeon) == &funnel::kNeonKernels, "kernels_for(neon) on aarch64");
  record(funnel::kernels_for(SimdLevel::kAvx2) == nullptr && funnel::kernels_for(SimdLevel::kAvx512) == nullptr,
         "kernels_for(avx*) on aarch64");
#endif
  // FUNNEL_SIMD=scalar was set in main() before the first active_kernels() call.
  const KernelTable& active = funnel::active_kernels();
  record(&active == &funnel::kScalarKernels && active.level == SimdLevel::kScalar,
         "FUNNEL_SIMD=scalar: active_kernels() is %s", active.name);
  std::printf("dispatch    : %ld passed, %ld failed (active with FUNNEL_SIMD=scalar: %s)\n", counts.passed,
              counts.failed, active.name);
}

// Bit counts (the dispatched popcount, POPCNT where the CPU has it) against a bit-by-bit count,
// for every length 0..200 words at 4-byte offsets 0..3 from a 64-byte boundary.
void test_bits() {
  Section section("bits");
  const Counts& counts = section.counts;
  Rng rng(777);
  for (size_t n = 0; n <= 200; ++n) {
    for (size_t off = 0; off < 4; ++off) {
      Padded<uint32_t> w(n, off, 0xFFFFFFFFu);
      size_t want = 0;
      for (size_t i = 0; i < n; ++i) {
        uint32_t x = uint32_t(rng.next());
        x = i % 7 == 0 ? 0 : i % 5 == 0 ? 0xFFFFFFFFu : x;
        w.p[i] = x;
        for (int b = 0; b < 32; ++b) want += (x >> b) & 1u;
      }
      record(funnel::popcount_words32(w.p, n) == want, "popcount_words32 n=%zu off=%zu", n, off);
      if (off == 0 && n % 2 == 0) {
        uint64_t wide[100];
        std::memcpy(wide, w.p, n * 4);
        record(funnel::popcount_words(wide, n / 2) == want, "popcount_words n=%zu", n / 2);
      }
    }
  }
  std::printf("bits        : %ld passed, %ld failed (popcount vs bit-by-bit)\n", counts.passed, counts.failed);
}


// AND-and-count (the eligibility stage's per-request servable mask) against a bit-by-bit AND, for
// lengths of a, b and out on either side of each other, odd and even, and out aliasing a.
void test_and_count() {
  Section section("and_count");
  const Counts& counts = section.counts;
  Rng rng(4242);
  const size_t lens[] = {0, 1, 2, 3, 7, 8, 31, 32, 33, 100, 101};
  for (size_t na : lens) {
    for (size_t nb : lens) {
      for (size_t nout : lens) {
        for (int alias = 0; alias < 2; ++alias) {
          if (alias && nout != na) continue;
          std::vector<uint32_t> a(na + 1), b(nb + 1), out(nout + 2, 0xDEADBEEFu);
          for (auto& x : a) x = uint32_t(rng.next());
          for (auto& x : b) x = uint32_t(rng.next());
          if (na > 2) a[1] = 0xFFFFFFFFu;
          std::vector<uint32_t> want(nout, 0);
          size_t want_count = 0;
          for (size_t i = 0; i < nout; ++i) {
            want[i] = (i < na ? a[i] : 0) & (i < nb ? b[i] : 0);
            for (int k = 0; k < 32; ++k) want_count += (want[i] >> k) & 1u;
          }
          for (const auto& [name, fn] : funnel::and_count_variants()) {
            // a at a 4-byte (not 8-byte) offset half the time: loads and stores are unaligned.
            const size_t shift = (na + nb + nout) % 2;
            std::vector<uint32_t> a2(a.size() + 1, 0);
            std::copy(a.begin(), a.end(), a2.begin() + long(shift));
            std::fill(out.begin(), out.end(), 0xDEADBEEFu);
            uint32_t* o = alias ? a2.data() + shift : out.data() + 1;
            const size_t got = funnel::and_count_words32_with(fn, a2.data() + shift, na, b.data(), nb, o, nout);
            bool ok = got == want_count && std::equal(want.begin(), want.end(), o);
            if (!alias) ok = ok && out[0] == 0xDEADBEEFu && out[nout + 1] == 0xDEADBEEFu;
            record(ok, "and_count_words32 [%s] na=%zu nb=%zu nout=%zu alias=%d: count %zu want %zu", name, na, nb, nout,
                   alias, got, want_count);
          }
          std::vector<uint32_t> a3 = a;
          uint32_t* o = alias ? a3.data() : out.data() + 1;
          record(funnel::and_count_words32(a3.data(), na, b.data(), nb, o, nout) == want_count &&
                     std::equal(want.begin(), want.end(), o),
                 "and_count_words32 (dispatched) na=%zu nb=%zu nout=%zu alias=%d", na, nb, nout, alias);
        }
      }
    }
  }
  std::printf("and_count   : %ld passed, %ld failed (every variant vs bit-by-bit: %zu variants)\n", counts.passed,
              counts.failed, funnel::and_count_variants().size());
}

// MMR as its definition reads, on table t: rows normalised in double as mmr_select does, then each
// step recomputes every remaining row's value from the dots of ALL picks so far (kept per pick,
// one t.dot_f32_rows call each, so the dots are those mmr_select sees) instead of a running max.
std::vector<uint32_t> mmr_definition(const KernelTable& t, std::vector<float> rows, size_t dim, size_t m,
                                     const std::vector<double>& scores, double lambda, size_t want) {
  double max_score = 0;
  for (size_t i = 0; i < m; ++i) max_score = scores[i] > max_score ? scores[i] : max_score;
  std::vector<double> rel(m);
  for (size_t i = 0; i < m; ++i) {
    rel[i] = max_score > 0 && scores[i] > 0 ? scores[i] / max_score : 0;
    double ss = 0;
    for (size_t j = 0; j < dim; ++j) ss += double(rows[i * dim + j]) * double(rows[i * dim + j]);
    const double inv = ss > 0 && std::isfinite(ss) ? 1 / std::sqrt(ss) : 0;
    for (size_t j = 0; j < dim; ++j) rows[i * dim + j] = float(double(rows[i * dim + j]) * inv);
  }
  std::vector<uint32_t> order;
  std::vector<std::vector<float>> dots;  // dots[k][i] = dot(row of pick k, row i)
  std::vector<bool> taken(m, false);
  while (order.size() < std::min(want, m)) {
    size_t best = m;
    double best_value = 0;
    for (size_t i = 0; i < m; ++i) {
      if (taken[i]) continue;
      double v;
      if (order.empty()) {
        v = lambda * rel[i];
      } else {
        double sim = -std::numeric_limits<double>::infinity();
        for (const auto& d : dots) sim = std::max(sim, double(d[i]));
        v = lambda * rel[i] - (1 - lambda) * sim;
      }
      if (best == m || v > best_value) best = i, best_value = v;
    }
    order.push_back(uint32_t(best));
    taken[best] = true;
    dots.emplace_back(m);
    t.dot_f32_rows(rows.data() + best * dim, rows.data(), dim, m, dim, dots.back().data());
  }
  return order;
}

// How far `order` falls short of greedy MMR computed in double precision (exact cosines): at each
// step, the best value over the remaining rows minus the chosen row's, given the order's own picks.
double mmr_shortfall(const std::vector<float>& rows, size_t dim, size_t m, const std::vector<double>& scores,
                     double lambda, const std::vector<uint32_t>& order) {
  std::vector<double> unit(m * dim, 0.0);
  for (size_t i = 0; i < m; ++i) {
    double ss = 0;
    for (size_t j = 0; j < dim; ++j) ss += double(rows[i * dim + j]) * double(rows[i * dim + j]);
    if (ss > 0) for (size_t j = 0; j < dim; ++j) unit[i * dim + j] = double(rows[i * dim + j]) / std::sqrt(ss);
  }
  double max_score = 0;
  for (size_t i = 0; i < m; ++i) max_score = scores[i] > max_score ? scores[i] : max_score;
  auto value = [&](size_t i, size_t k) {
    const double rel = max_score > 0 && scores[i] > 0 ? scores[i] / max_score : 0;
    if (k == 0) return lambda * rel;
    double sim = -std::numeric_limits<double>::infinity();
    for (size_t p = 0; p < k; ++p) {
      double d = 0;
      for (size_t j = 0; j < dim; ++j) d += unit[order[p] * dim + j] * unit[i * dim + j];
      sim = std::max(sim, d);
    }
    return lambda * rel - (1 - lambda) * sim;
  };
  double worst = 0;
  std::vector<bool> taken(m, false);
  for (size_t k = 0; k < order.size(); ++k) {
    double best = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < m; ++i) if (!taken[i]) best = std::max(best, value(i, k));
    worst = std::max(worst, best - value(order[k], k));
    taken[order[k]] = true;
  }
  return worst;
}

// mmr_select on every table: equal to the definition on the same table (incremental max, tie
// to the lower index), equal to the scalar table's picks when every dot is exact in float (rows
// of 0 and +-2^-k with a power-of-four count of non-zeros: unit length, exact products and sums),
// and within float rounding of exact greedy MMR on random rows.
void test_mmr(const KernelTable& t) {
  Rng rng(0x5EED0F3A3Aull);
  const size_t ms[] = {1, 2, 3, 4, 5, 7, 8, 9, 31, 64, 150, 301};
  const size_t dims[] = {1, 3, 4, 8, 13, 16, 17, 64, 100};
  const double lambdas[] = {0, 0.3, 0.5, 0.7, 0.99, 1};
  size_t cases = 0;
  for (size_t m : ms) {
    for (size_t dim : dims) {
      for (int kind = 0; kind < 4; ++kind) {
        const double lambda = lambdas[(m + dim + size_t(kind)) % 6];
        const size_t want = (m * 7 + dim) % (m + 3) + 1;  // sometimes more than m
        std::vector<float> rows(m * dim, 0.f);
        std::vector<double> scores(m);
        for (size_t i = 0; i < m; ++i) {
          const uint64_t r = rng.next();
          // Scores with repeats, zeros and negatives (relevance 0), so ties are common.
          scores[i] = r % 5 == 0 ? 0 : r % 7 == 0 ? -1 : double((r >> 8) % 6) * 0.25;
          float* row = rows.data() + i * dim;
          if (kind == 0 || kind == 3) {
            fill(row, dim, rng);
            if (r % 11 == 0) std::fill(row, row + dim, 0.f);                      // missing vector
            if (i > 0 && r % 13 == 0) std::copy(row - dim, row, row);             // exact duplicate
            if (kind == 3 && r % 5 == 1) scores[i] = std::numeric_limits<double>::infinity();  // rel NaN
            if (kind == 3 && r % 9 == 2) row[r % dim] = r % 2 ? kNaN : std::numeric_limits<float>::infinity();
          } else {
            // Unit rows with exact dots: 1, 4 or 16 non-zeros of +-1, +-1/2 or +-1/4.
            size_t nz = dim >= 16 && r % 3 == 0 ? 16 : dim >= 4 && r % 3 == 1 ? 4 : 1;
            const float mag = nz == 16 ? 0.25f : nz == 4 ? 0.5f : 1.f;
            if (r % 17 == 0) nz = 0;
            for (size_t k = 0; k < nz; ++k) {
              const size_t j = size_t(rng.next() % dim);
              row[j] = row[j] != 0 ? row[j] : ((rng.next() & 1) ? mag : -mag);
            }
            double ss = 0;
            for (size_t j = 0; j < dim; ++j) ss += double(row[j]) * row[j];
            if (ss != 1) std::fill(row, row + dim, 0.f);  // a collision left it short of unit: zero row
            if (kind == 2 && i > 0 && r % 4 == 0) std::copy(row - dim, row, row);
          }
        }
        std::vector<float> work = rows;
        std::vector<uint32_t> got(std::min(want, m) + 1, 0xFFFFFFFFu);
        const size_t n = funnel::mmr_select(t, work.data(), dim, m, scores.data(), lambda, want, got.data());
        got.resize(n + 1);
        const bool canary = got[n] == 0xFFFFFFFFu;
        got.resize(n);
        const std::vector<uint32_t> def = mmr_definition(t, rows, dim, m, scores, lambda, want);
        record(canary && n == std::min(want, m) && got == def, "mmr m=%zu dim=%zu kind=%d lambda=%g want=%zu: %zu picks, %s the definition",
               m, dim, kind, lambda, want, n, got == def ? "equal to" : "NOT equal to");
        if (kind == 3) {
          // Non-finite scores and rows: NaN relevance and similarities, handled as the JS loop handles them (checked above).
        } else if (kind > 0) {
          std::vector<float> w2 = rows;
          std::vector<uint32_t> scalar(std::min(want, m));
          funnel::mmr_select(funnel::kScalarKernels, w2.data(), dim, m, scores.data(), lambda, want, scalar.data());
          record(got == scalar, "mmr exact dots m=%zu dim=%zu kind=%d lambda=%g: picks differ from the scalar table's", m,
                 dim, kind, lambda);
        } else {
          const double gap = mmr_shortfall(rows, dim, m, scores, lambda, got);
          record(gap <= 1e-5, "mmr m=%zu dim=%zu lambda=%g: %g short of exact greedy MMR", m, dim, lambda, gap);
        }
        // The rows are left normalised, as the Diversifier's own loop leaves them.
        bool normalised = true;
        for (size_t i = 0; i < m && normalised; ++i) {
          double ss = 0;
          for (size_t j = 0; j < dim; ++j) ss += double(work[i * dim + j]) * work[i * dim + j];
          normalised = kind == 3 || ss == 0 || std::fabs(ss - 1) < 1e-5;
        }
        record(normalised, "mmr m=%zu dim=%zu: rows normalised in place", m, dim);
        ++cases;
      }
    }
  }
  // want 0 writes nothing; m 0 likewise.
  float row = 1.f;
  double score = 1;
  uint32_t slot = 7;
  record(funnel::mmr_select(t, &row, 1, 1, &score, 0.5, 0, &slot) == 0 && slot == 7, "mmr want=0");
  record(funnel::mmr_select(t, &row, 1, 0, &score, 0.5, 3, &slot) == 0 && slot == 7, "mmr m=0");
  (void)cases;
}

}  // namespace

int main() {
  // Must precede the first active_kernels() call, which caches its choice.
  setenv("FUNNEL_SIMD", "scalar", 1);
  setvbuf(stdout, nullptr, _IOLBF, 0);

  test_dispatch();
  test_scalar_reference();
  test_bits();
  test_and_count();
  for (SimdLevel l : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512, SimdLevel::kNeon}) test_level(l);

  std::printf("%ld passed, %ld failed\n", g_total.passed, g_total.failed);
  return g_total.failed == 0 ? 0 : 1;
}
