// Kernel dispatch: one table per instruction set, the active one chosen once at load.
#pragma once
#include <cstddef>
#include <cstdint>

namespace funnel {

/// Instruction sets a kernel table may be built for.
enum class SimdLevel : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2, kNeon = 3 };

/// Function pointers of one instruction set. Every kernel takes unaligned pointers and any n >= 0.
struct KernelTable {
  SimdLevel level;
  const char* name;
  /// sum a[i]*b[i]
  float (*dot_f32)(const float* a, const float* b, size_t n);
  /// sum (a[i]-b[i])^2
  float (*l2sq_f32)(const float* a, const float* b, size_t n);
  /// dot(a,b) / (|a| |b|); 0 when either norm is 0
  float (*cos_f32)(const float* a, const float* b, size_t n);
  /// sum a[i]*b[i] over int8, exact in int32 for n < 2^17
  int32_t (*dot_i8)(const int8_t* a, const int8_t* b, size_t n);
  /// out[j] = dot(q, rows + j*stride) for j < count: one query against consecutive rows
  void (*dot_f32_rows)(const float* q, const float* rows, size_t stride, size_t count, size_t n, float* out);
  /// out[j] = l2sq(q, rows + j*stride) for j < count
  void (*l2sq_f32_rows)(const float* q, const float* rows, size_t stride, size_t count, size_t n, float* out);
};

/// The table in use: chosen once, at first call, by CPUID (or FUNNEL_SIMD when it names an available set).
const KernelTable& active_kernels();

/// The table of `level`, or nullptr when it is not compiled in or this CPU lacks it.
const KernelTable* kernels_for(SimdLevel level);

/// Name of a level: "scalar", "avx2", "avx512", "neon".
const char* simd_level_name(SimdLevel level);

/// Parses a level name; false when unknown.
bool parse_simd_level(const char* name, SimdLevel* out);

// Per-ISA tables, defined in dot_<isa>.cc; only those compiled for this architecture exist.
extern const KernelTable kScalarKernels;
#if defined(__x86_64__) || defined(_M_X64)
extern const KernelTable kAvx2Kernels;
extern const KernelTable kAvx512Kernels;
#endif
#if defined(__aarch64__)
extern const KernelTable kNeonKernels;
#endif

}  // namespace funnel
