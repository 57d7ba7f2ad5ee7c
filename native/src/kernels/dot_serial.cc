// ISA: none (portable C++). Alignment: none required. Tail: no tail, plain loops.
// The reference every SIMD table is tested against; also the fallback on any CPU.
#include <cmath>

#include "dispatch.h"

namespace funnel {
namespace {

float dot_f32_serial(const float* a, const float* b, size_t n) {
  float s = 0.f;
  for (size_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

float l2sq_f32_serial(const float* a, const float* b, size_t n) {
  float s = 0.f;
  for (size_t i = 0; i < n; ++i) {
    float d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

float cos_f32_serial(const float* a, const float* b, size_t n) {
  float ab = 0.f, aa = 0.f, bb = 0.f;
  for (size_t i = 0; i < n; ++i) {
    ab += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  if (aa == 0.f || bb == 0.f) return 0.f;
  return ab / std::sqrt(aa * bb);
}

int32_t dot_i8_serial(const int8_t* a, const int8_t* b, size_t n) {
  int32_t s = 0;
  for (size_t i = 0; i < n; ++i) s += int32_t(a[i]) * int32_t(b[i]);
  return s;
}

void dot_f32_rows_serial(const float* q, const float* rows, size_t stride, size_t count, size_t n, float* out) {
  for (size_t j = 0; j < count; ++j) out[j] = dot_f32_serial(q, rows + j * stride, n);
}

void l2sq_f32_rows_serial(const float* q, const float* rows, size_t stride, size_t count, size_t n, float* out) {
  for (size_t j = 0; j < count; ++j) out[j] = l2sq_f32_serial(q, rows + j * stride, n);
}

}  // namespace

const KernelTable kScalarKernels = {
    SimdLevel::kScalar,  "scalar",           dot_f32_serial,       l2sq_f32_serial, cos_f32_serial,
    dot_i8_serial,       dot_f32_rows_serial, l2sq_f32_rows_serial,
};

}  // namespace funnel
