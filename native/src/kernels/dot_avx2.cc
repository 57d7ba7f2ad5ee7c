// ISA: AVX2 + FMA (Haswell, Zen 1 and later), each function compiled with target("avx2,fma").
// Alignment: none required (unaligned loads). Tail: masked loads (_mm256_maskload_ps) for
// float kernels, a scalar loop below 16 bytes for int8.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cmath>

#include "dispatch.h"

#define FUNNEL_AVX2 __attribute__((target("avx2,fma")))

namespace funnel {
namespace {

alignas(32) const int32_t kTailMask[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};

FUNNEL_AVX2 inline __m256i tail_mask(size_t rest) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kTailMask + 8 - rest));
}

FUNNEL_AVX2 inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v);
  __m128 hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  __m128 sh = _mm_movehdup_ps(lo);
  lo = _mm_add_ps(lo, sh);
  sh = _mm_movehl_ps(sh, lo);
  return _mm_cvtss_f32(_mm_add_ss(lo, sh));
}

FUNNEL_AVX2 float dot_f32_avx2(const float* a, const float* b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  if (i + 8 <= n) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    i += 8;
  }
  if (i < n) {
    __m256i m = tail_mask(n - i);
    s1 = _mm256_fmadd_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m), s1);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

FUNNEL_AVX2 float l2sq_f32_avx2(const float* a, const float* b, size_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8));
    s0 = _mm256_fmadd_ps(d0, d0, s0);
    s1 = _mm256_fmadd_ps(d1, d1, s1);
  }
  if (i + 8 <= n) {
    __m256 d = _mm256_sub_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i));
    s0 = _mm256_fmadd_ps(d, d, s0);
    i += 8;
  }
  if (i < n) {
    __m256i m = tail_mask(n - i);
    __m256 d = _mm256_sub_ps(_mm256_maskload_ps(a + i, m), _mm256_maskload_ps(b + i, m));
    s1 = _mm256_fmadd_ps(d, d, s1);
  }
  return hsum(_mm256_add_ps(s0, s1));
}

FUNNEL_AVX2 float cos_f32_avx2(const float* a, const float* b, size_t n) {
  __m256 ab = _mm256_setzero_ps(), aa = _mm256_setzero_ps(), bb = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(b + i);
    ab = _mm256_fmadd_ps(x, y, ab);
    aa = _mm256_fmadd_ps(x, x, aa);
    bb = _mm256_fmadd_ps(y, y, bb);
  }
  if (i < n) {
    __m256i m = tail_mask(n - i);
    __m256 x = _mm256_maskload_ps(a + i, m), y = _mm256_maskload_ps(b + i, m);
    ab = _mm256_fmadd_ps(x, y, ab);
    aa = _mm256_fmadd_ps(x, x, aa);
    bb = _mm256_fmadd_ps(y, y, bb);
  }
  float sab = hsum(ab), saa = hsum(aa), sbb = hsum(bb);
  if (saa == 0.f || sbb == 0.f) return 0.f;
  return sab / std::sqrt(saa * sbb);
}

FUNNEL_AVX2 int32_t dot_i8_avx2(const int8_t* a, const int8_t* b, size_t n) {
  __m256i s0 = _mm256_setzero_si256(), s1 = _mm256_setzero_si256();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m256i x0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    __m256i y0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    __m256i x1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i + 16)));
    __m256i y1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i + 16)));
    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(x0, y0));
    s1 = _mm256_add_epi32(s1, _mm256_madd_epi16(x1, y1));
  }
  if (i + 16 <= n) {
    __m256i x = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    __m256i y = _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    s0 = _mm256_add_epi32(s0, _mm256_madd_epi16(x, y));
    i += 16;
  }
  __m256i s = _mm256_add_epi32(s0, s1);
  __m128i h = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(1, 0, 3, 2)));
  h = _mm_add_epi32(h, _mm_shuffle_epi32(h, _MM_SHUFFLE(2, 3, 0, 1)));
  int32_t total = _mm_cvtsi128_si32(h);
  for (; i < n; ++i) total += int32_t(a[i]) * int32_t(b[i]);
  return total;
}

// Scans stream rows: fetch the four rows two groups ahead so the loads below find them in cache
// (prefetches never fault, so running past the last row is harmless).
FUNNEL_AVX2 inline void prefetch_ahead(const float* r0, size_t stride) {
  const char* p = reinterpret_cast<const char*>(r0 + 8 * stride);
  const size_t bytes = 4 * stride * sizeof(float);
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

// Four rows per pass: each query chunk is loaded once for four FMAs.
FUNNEL_AVX2 void dot_f32_rows_avx2(const float* q, const float* rows, size_t stride, size_t count, size_t n,
                                   float* out) {
  size_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float* r0 = rows + j * stride;
    const float* r1 = r0 + stride;
    const float* r2 = r1 + stride;
    const float* r3 = r2 + stride;
    prefetch_ahead(r0, stride);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
           s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256 x = _mm256_loadu_ps(q + i);
      s0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r0 + i), s0);
      s1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r1 + i), s1);
      s2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r2 + i), s2);
      s3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r3 + i), s3);
    }
    if (i < n) {
      __m256i m = tail_mask(n - i);
      __m256 x = _mm256_maskload_ps(q + i, m);
      s0 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r0 + i, m), s0);
      s1 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r1 + i, m), s1);
      s2 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r2 + i, m), s2);
      s3 = _mm256_fmadd_ps(x, _mm256_maskload_ps(r3 + i, m), s3);
    }
    out[j] = hsum(s0);
    out[j + 1] = hsum(s1);
    out[j + 2] = hsum(s2);
    out[j + 3] = hsum(s3);
  }
  for (; j < count; ++j) out[j] = dot_f32_avx2(q, rows + j * stride, n);
}

FUNNEL_AVX2 void l2sq_f32_rows_avx2(const float* q, const float* rows, size_t stride, size_t count, size_t n,
                                    float* out) {
  size_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float* r0 = rows + j * stride;
    const float* r1 = r0 + stride;
    const float* r2 = r1 + stride;
    const float* r3 = r2 + stride;
    prefetch_ahead(r0, stride);
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(),
           s3 = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
      __m256 x = _mm256_loadu_ps(q + i);
      __m256 d0 = _mm256_sub_ps(x, _mm256_loadu_ps(r0 + i));
      __m256 d1 = _mm256_sub_ps(x, _mm256_loadu_ps(r1 + i));
      __m256 d2 = _mm256_sub_ps(x, _mm256_loadu_ps(r2 + i));
      __m256 d3 = _mm256_sub_ps(x, _mm256_loadu_ps(r3 + i));
      s0 = _mm256_fmadd_ps(d0, d0, s0);
      s1 = _mm256_fmadd_ps(d1, d1, s1);
      s2 = _mm256_fmadd_ps(d2, d2, s2);
      s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    if (i < n) {
      __m256i m = tail_mask(n - i);
      __m256 x = _mm256_maskload_ps(q + i, m);
      __m256 d0 = _mm256_sub_ps(x, _mm256_maskload_ps(r0 + i, m));
      __m256 d1 = _mm256_sub_ps(x, _mm256_maskload_ps(r1 + i, m));
      __m256 d2 = _mm256_sub_ps(x, _mm256_maskload_ps(r2 + i, m));
      __m256 d3 = _mm256_sub_ps(x, _mm256_maskload_ps(r3 + i, m));
      s0 = _mm256_fmadd_ps(d0, d0, s0);
      s1 = _mm256_fmadd_ps(d1, d1, s1);
      s2 = _mm256_fmadd_ps(d2, d2, s2);
      s3 = _mm256_fmadd_ps(d3, d3, s3);
    }
    out[j] = hsum(s0);
    out[j + 1] = hsum(s1);
    out[j + 2] = hsum(s2);
    out[j + 3] = hsum(s3);
  }
  for (; j < count; ++j) out[j] = l2sq_f32_avx2(q, rows + j * stride, n);
}

}  // namespace

const KernelTable kAvx2Kernels = {
    SimdLevel::kAvx2, "avx2",           dot_f32_avx2,       l2sq_f32_avx2, cos_f32_avx2,
    dot_i8_avx2,      dot_f32_rows_avx2, l2sq_f32_rows_avx2,
};

}  // namespace funnel
#endif
