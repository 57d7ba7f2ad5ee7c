// ISA: AVX-512 F/BW/VL/DQ (Skylake-SP, Ice Lake, Sapphire Rapids, Zen 4 and later), each function
// compiled with its own target attribute. Alignment: none required. Tail: masked loads
// (_mm512_maskz_loadu_ps / _mm256_maskz_loadu_epi8), never a read past the end.
#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>

#include <cmath>

#include "dispatch.h"

#define FUNNEL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))

namespace funnel {
namespace {

FUNNEL_AVX512 inline __mmask16 mask16(size_t rest) { return __mmask16((1u << rest) - 1u); }

FUNNEL_AVX512 float dot_f32_avx512(const float* a, const float* b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  if (i + 16 <= n) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    i += 16;
  }
  if (i < n) {
    __mmask16 m = mask16(n - i);
    s1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

FUNNEL_AVX512 float l2sq_f32_avx512(const float* a, const float* b, size_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512 d0 = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    __m512 d1 = _mm512_sub_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16));
    s0 = _mm512_fmadd_ps(d0, d0, s0);
    s1 = _mm512_fmadd_ps(d1, d1, s1);
  }
  if (i + 16 <= n) {
    __m512 d = _mm512_sub_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i));
    s0 = _mm512_fmadd_ps(d, d, s0);
    i += 16;
  }
  if (i < n) {
    __mmask16 m = mask16(n - i);
    __m512 d = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i));
    s1 = _mm512_fmadd_ps(d, d, s1);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

FUNNEL_AVX512 float cos_f32_avx512(const float* a, const float* b, size_t n) {
  __m512 ab = _mm512_setzero_ps(), aa = _mm512_setzero_ps(), bb = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 x = _mm512_loadu_ps(a + i), y = _mm512_loadu_ps(b + i);
    ab = _mm512_fmadd_ps(x, y, ab);
    aa = _mm512_fmadd_ps(x, x, aa);
    bb = _mm512_fmadd_ps(y, y, bb);
  }
  if (i < n) {
    __mmask16 m = mask16(n - i);
    __m512 x = _mm512_maskz_loadu_ps(m, a + i), y = _mm512_maskz_loadu_ps(m, b + i);
    ab = _mm512_fmadd_ps(x, y, ab);
    aa = _mm512_fmadd_ps(x, x, aa);
    bb = _mm512_fmadd_ps(y, y, bb);
  }
  float sab = _mm512_reduce_add_ps(ab), saa = _mm512_reduce_add_ps(aa), sbb = _mm512_reduce_add_ps(bb);
  if (saa == 0.f || sbb == 0.f) return 0.f;
  return sab / std::sqrt(saa * sbb);
}

FUNNEL_AVX512 int32_t dot_i8_avx512(const int8_t* a, const int8_t* b, size_t n) {
  __m512i s = _mm512_setzero_si512();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512i x = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
    __m512i y = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + i)));
    s = _mm512_add_epi32(s, _mm512_madd_epi16(x, y));
  }
  if (i < n) {
    __mmask32 m = __mmask32((uint64_t(1) << (n - i)) - 1u);
    __m512i x = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, a + i));
    __m512i y = _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, b + i));
    s = _mm512_add_epi32(s, _mm512_madd_epi16(x, y));
  }
  return _mm512_reduce_add_epi32(s);
}

// Scans stream rows: fetch the four rows two groups ahead so the loads below find them in cache
// (prefetches never fault, so running past the last row is harmless).
FUNNEL_AVX512 inline void prefetch_ahead(const float* r0, size_t stride) {
  const char* p = reinterpret_cast<const char*>(r0 + 8 * stride);
  const size_t bytes = 4 * stride * sizeof(float);
  for (size_t off = 0; off < bytes; off += 64) _mm_prefetch(p + off, _MM_HINT_T0);
}

// Four rows per pass: each query chunk is loaded once for four FMAs.
FUNNEL_AVX512 void dot_f32_rows_avx512(const float* q, const float* rows, size_t stride, size_t count, size_t n,
                                       float* out) {
  size_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float* r0 = rows + j * stride;
    const float* r1 = r0 + stride;
    const float* r2 = r1 + stride;
    const float* r3 = r2 + stride;
    prefetch_ahead(r0, stride);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
           s3 = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
      __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : mask16(n - i);
      __m512 x = _mm512_maskz_loadu_ps(m, q + i);
      s0 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r0 + i), s0);
      s1 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r1 + i), s1);
      s2 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r2 + i), s2);
      s3 = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(m, r3 + i), s3);
    }
    out[j] = _mm512_reduce_add_ps(s0);
    out[j + 1] = _mm512_reduce_add_ps(s1);
    out[j + 2] = _mm512_reduce_add_ps(s2);
    out[j + 3] = _mm512_reduce_add_ps(s3);
  }
  for (; j < count; ++j) out[j] = dot_f32_avx512(q, rows + j * stride, n);
}

FUNNEL_AVX512 void l2sq_f32_rows_avx512(const float* q, const float* rows, size_t stride, size_t count, size_t n,
                                        float* out) {
  size_t j = 0;
  for (; j + 4 <= count; j += 4) {
    const float* r0 = rows + j * stride;
    const float* r1 = r0 + stride;
    const float* r2 = r1 + stride;
    const float* r3 = r2 + stride;
    prefetch_ahead(r0, stride);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(),
           s3 = _mm512_setzero_ps();
    for (size_t i = 0; i < n; i += 16) {
      __mmask16 m = n - i >= 16 ? __mmask16(0xFFFF) : mask16(n - i);
      __m512 x = _mm512_maskz_loadu_ps(m, q + i);
      __m512 d0 = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, r0 + i));
      __m512 d1 = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, r1 + i));
      __m512 d2 = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, r2 + i));
      __m512 d3 = _mm512_sub_ps(x, _mm512_maskz_loadu_ps(m, r3 + i));
      s0 = _mm512_fmadd_ps(d0, d0, s0);
      s1 = _mm512_fmadd_ps(d1, d1, s1);
      s2 = _mm512_fmadd_ps(d2, d2, s2);
      s3 = _mm512_fmadd_ps(d3, d3, s3);
    }
    out[j] = _mm512_reduce_add_ps(s0);
    out[j + 1] = _mm512_reduce_add_ps(s1);
    out[j + 2] = _mm512_reduce_add_ps(s2);
    out[j + 3] = _mm512_reduce_add_ps(s3);
  }
  for (; j < count; ++j) out[j] = l2sq_f32_avx512(q, rows + j * stride, n);
}

}  // namespace

const KernelTable kAvx512Kernels = {
    SimdLevel::kAvx512, "avx512",           dot_f32_avx512,       l2sq_f32_avx512, cos_f32_avx512,
    dot_i8_avx512,      dot_f32_rows_avx512, l2sq_f32_rows_avx512,
};

}  // namespace funnel
#endif
