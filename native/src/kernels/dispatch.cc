#include "dispatch.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>

namespace funnel {
namespace {

bool cpu_has(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
      return true;
#if defined(__x86_64__) || defined(_M_X64)
    case SimdLevel::kAvx2:
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case SimdLevel::kAvx512:
      // libgcc's CPU model also checks XGETBV, so an OS that does not save ZMM state reports no AVX-512.
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
#if defined(__aarch64__)
    case SimdLevel::kNeon:
      return true;
#endif
    default:
      return false;
  }
}

const KernelTable* table_of(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
      return &kScalarKernels;
#if defined(__x86_64__) || defined(_M_X64)
    case SimdLevel::kAvx2:
      return &kAvx2Kernels;
    case SimdLevel::kAvx512:
      return &kAvx512Kernels;
#endif
#if defined(__aarch64__)
    case SimdLevel::kNeon:
      return &kNeonKernels;
#endif
    default:
      return nullptr;
  }
}

const KernelTable* choose() {
  const char* forced = std::getenv("FUNNEL_SIMD");
  SimdLevel level;
  if (forced != nullptr && *forced != '\0') {
    if (!parse_simd_level(forced, &level)) {
      std::fprintf(stderr, "funnel: FUNNEL_SIMD=%s is not one of scalar|avx2|avx512|neon; choosing by CPUID\n", forced);
    } else if (const KernelTable* t = kernels_for(level)) {
      return t;
    } else {
      std::fprintf(stderr, "funnel: FUNNEL_SIMD=%s is not available on this CPU or build; choosing by CPUID\n", forced);
    }
  }
  for (SimdLevel l : {SimdLevel::kAvx512, SimdLevel::kAvx2, SimdLevel::kNeon}) {
    if (const KernelTable* t = kernels_for(l)) return t;
  }
  return &kScalarKernels;
}

}  // namespace

const KernelTable* kernels_for(SimdLevel level) { return cpu_has(level) ? table_of(level) : nullptr; }

const KernelTable& active_kernels() {
  static const KernelTable* const table = choose();
  return *table;
}

const char* simd_level_name(SimdLevel level) {
  switch (level) {
    case SimdLevel::kScalar:
      return "scalar";
    case SimdLevel::kAvx2:
      return "avx2";
    case SimdLevel::kAvx512:
      return "avx512";
    case SimdLevel::kNeon:
      return "neon";
  }
  return "unknown";
}

bool parse_simd_level(const char* name, SimdLevel* out) {
  for (SimdLevel l : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512, SimdLevel::kNeon}) {
    if (std::strcmp(name, simd_level_name(l)) == 0) {
      *out = l;
      return true;
    }
  }
  return false;
}

}  // namespace funnel
