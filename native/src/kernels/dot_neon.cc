// ISA: ARMv8-A Advanced SIMD (NEON), baseline on every arm64 CPU, so no target attribute is
// needed. Alignment: none required. Tail: a scalar loop for the last n % 4 floats
// (n % 16 bytes for int8).
#if defined(__aarch64__)
#include <arm_neon.h>

#include <cmath>

#include "dispatch.h"

namespace funnel {
namespace {

float dot_f32_neon(const float* a, const float* b, size_t n) {
  float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    s1 = vfmaq_f32(s1, vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
  }
  if (i + 4 <= n) {
    s0 = vfmaq_f32(s0, vld1q_f32(a + i), vld1q_f32(b + i));
    i += 4;
  }
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

float l2sq_f32_neon(const float* a, const float* b, size_t n) {
  float32x4_t s0 = vdupq_n_f32(0.f), s1 = vdupq_n_f32(0.f);
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    float32x4_t d0 = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
    float32x4_t d1 = vsubq_f32(vld1q_f32(a + i + 4), vld1q_f32(b + i + 4));
    s0 = vfmaq_f32(s0, d0, d0);
    s1 = vfmaq_f32(s1, d1, d1);
  }
  if (i + 4 <= n) {
    float32x4_t d = vsubq_f32(vld1q_f32(a + i), vld1q_f32(b + i));
    s0 = vfmaq_f32(s0, d, d);
    i += 4;
  }
  float s = vaddvq_f32(vaddq_f32(s0, s1));
  for (; i < n; ++i) {
    float d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

float cos_f32_neon(const float* a, const float* b, size_t n) {
  float32x4_t ab = vdupq_n_f32(0.f), aa = vdupq_n_f32(0.f), bb = vdupq_n_f32(0.f);
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    float32x4_t x = vld1q_f32(a + i), y = vld1q_f32(b + i);
    ab = vfmaq_f32(ab, x, y);
    aa = vfmaq_f32(aa, x, x);
    bb = vfmaq_f32(bb, y, y);
  }
  float sab = vaddvq_f32(ab), saa = vaddvq_f32(aa), sbb = vaddvq_f32(bb);
  for (; i < n; ++i) {
    sab += a[i] * b[i];
    saa += a[i] * a[i];
    sbb += b[i] * b[i];
  }
  if (saa == 0.f || sbb == 0.f) return 0.f;
  return sab / std::sqrt(saa * sbb);
}

int32_t dot_i8_neon(const int8_t* a, const int8_t* b, size_t n) {
  int32x4_t s0 = vdupq_n_s32(0), s1 = vdupq_n_s32(0);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    int8x16_t x = vld1q_s8(a + i), y = vld1q_s8(b + i);
    s0 = vpadalq_s16(s0, vmull_s8(vget_low_s8(x), vget_low_s8(y)));
    s1 = vpadalq_s16(s1, vmull_high_s8(x, y));
  }
  int32_t s = vaddvq_s32(vaddq_s32(s0, s1));
  for (; i < n; ++i) s += int32_t(a[i]) * int32_t(b[i]);
  return s;
}

void dot_f32_rows_neon(const float* q, const float* rows, size_t stride, size_t count, size_t n, float* out) {
  for (size_t j = 0; j < count; ++j) out[j] = dot_f32_neon(q, rows + j * stride, n);
}

void l2sq_f32_rows_neon(const float* q, const float* rows, size_t stride, size_t count, size_t n, float* out) {
  for (size_t j = 0; j < count; ++j) out[j] = l2sq_f32_neon(q, rows + j * stride, n);
}

}  // namespace

const KernelTable kNeonKernels = {
    SimdLevel::kNeon, "neon",           dot_f32_neon,       l2sq_f32_neon, cos_f32_neon,
    dot_i8_neon,      dot_f32_rows_neon, l2sq_f32_rows_neon,
};

}  // namespace funnel
#endif
