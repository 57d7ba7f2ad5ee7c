// Module entry: SIMD level reporting, kernel hooks for tests, bandwidth probe, index and targeting classes.
#include <napi.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>

#include "../kernels/bits.h"
#include "../kernels/dispatch.h"
#include "../kernels/mmr.h"
#include "util.h"

#if defined(__linux__)
#include <signal.h>
#include <sys/prctl.h>
#endif

namespace funnel::binding {

void init_index_classes(Napi::Env env, Napi::Object exports);
void init_targeting_class(Napi::Env env, Napi::Object exports);

namespace {

Napi::Value SimdLevelName(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), active_kernels().name);
}

Napi::Value AvailableSimdLevels(const Napi::CallbackInfo& info) {
  Napi::Array out = Napi::Array::New(info.Env());
  uint32_t n = 0;
  for (SimdLevel l : {SimdLevel::kScalar, SimdLevel::kAvx2, SimdLevel::kAvx512, SimdLevel::kNeon}) {
    if (kernels_for(l) != nullptr) out.Set(n++, Napi::String::New(info.Env(), simd_level_name(l)));
  }
  return out;
}

const KernelTable& table_arg(Napi::Env env, const Napi::Value& v) {
  if (!v.IsString()) throw_code(env, "ERR_INVALID_ARG", "level must be a string");
  std::string name = v.As<Napi::String>().Utf8Value();
  SimdLevel level;
  if (!parse_simd_level(name.c_str(), &level)) throw_code(env, "ERR_INVALID_ARG", "unknown SIMD level " + name);
  const KernelTable* t = kernels_for(level);
  if (t == nullptr) throw_code(env, "ERR_INVALID_ARG", "SIMD level " + name + " is not available on this CPU");
  return *t;
}

// kernel(level, 'dot'|'l2sq'|'cos', a, b): one f32 kernel call at a forced level.
Napi::Value Kernel(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KernelTable& t = table_arg(env, info[0]);
  std::string name = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  Napi::Float32Array a = float32_arg(env, info[2], "a");
  Napi::Float32Array b = float32_arg(env, info[3], "b");
  if (a.ElementLength() != b.ElementLength()) throw_code(env, "ERR_DIMENSION_MISMATCH", "a and b differ in length");
  size_t n = a.ElementLength();
  float r;
  if (name == "dot") r = t.dot_f32(a.Data(), b.Data(), n);
  else if (name == "l2sq") r = t.l2sq_f32(a.Data(), b.Data(), n);
  else if (name == "cos") r = t.cos_f32(a.Data(), b.Data(), n);
  else throw_code(env, "ERR_INVALID_ARG", "unknown kernel " + name);
  return Napi::Number::New(env, r);
}

// kernelRows(level, 'dot'|'l2sq', query, rows): the one-query-many-rows kernel; rows.length is a multiple of query.length.
Napi::Value KernelRows(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KernelTable& t = table_arg(env, info[0]);
  std::string name = info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
  Napi::Float32Array q = float32_arg(env, info[2], "query");
  Napi::Float32Array rows = float32_arg(env, info[3], "rows");
  size_t dim = q.ElementLength();
  if (dim == 0 || rows.ElementLength() % dim != 0) {
    throw_code(env, "ERR_DIMENSION_MISMATCH", "rows length is not a multiple of the query length");
  }
  size_t count = rows.ElementLength() / dim;
  Napi::Float32Array out = Napi::Float32Array::New(env, count);
  if (name == "dot") t.dot_f32_rows(q.Data(), rows.Data(), dim, count, dim, out.Data());
  else if (name == "l2sq") t.l2sq_f32_rows(q.Data(), rows.Data(), dim, count, dim, out.Data());
  else throw_code(env, "ERR_INVALID_ARG", "unknown kernel " + name);
  return out;
}

Napi::Value KernelI8(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KernelTable& t = table_arg(env, info[0]);
  auto i8 = [&](const Napi::Value& v, const char* what) {
    if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_int8_array) {
      throw_code(env, "ERR_INVALID_ARG", std::string(what) + " must be an Int8Array");
    }
    return v.As<Napi::Int8Array>();
  };
  Napi::Int8Array a = i8(info[1], "a"), b = i8(info[2], "b");
  if (a.ElementLength() != b.ElementLength()) throw_code(env, "ERR_DIMENSION_MISMATCH", "a and b differ in length");
  return Napi::Number::New(env, t.dot_i8(a.Data(), b.Data(), a.ElementLength()));
}

// mmr(level, rows, dim, m, scores, lambda, want, order): greedy MMR over the first m rows of
// `rows` (m * dim floats, normalised in place) with relevance scores[0..m), on the calling thread
// (about 35 us at 150 rows of 64 floats with AVX2, twice that at 300); writes min(want, m) row
// indices to order[] and returns that number. `level` undefined = the active kernels.
Napi::Value Mmr(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const KernelTable& t = info[0].IsUndefined() ? active_kernels() : table_arg(env, info[0]);
  Napi::Float32Array rows = float32_arg(env, info[1], "rows");
  const size_t dim = size_t(int_arg(env, info[2], "dim", 1, 1 << 16));
  const size_t m = size_t(int_arg(env, info[3], "m", 0, uint64_t(1) << 31));
  Napi::Float64Array scores = float64_arg(env, info[4], "scores");
  if (!info[5].IsNumber()) throw_code(env, "ERR_INVALID_ARG", "lambda must be a number");
  const double lambda = info[5].As<Napi::Number>().DoubleValue();
  const size_t want = size_t(int_arg(env, info[6], "want", 0, uint64_t(1) << 31));
  Napi::Uint32Array order = uint32_arg(env, info[7], "order");
  if (rows.ElementLength() / dim < m) {
    throw_code(env, "ERR_DIMENSION_MISMATCH", "rows holds fewer than m rows of dim floats");
  }
  if (scores.ElementLength() < m) throw_code(env, "ERR_INVALID_ARG", "scores holds fewer than m values");
  if (order.ElementLength() < std::min(want, m)) throw_code(env, "ERR_INVALID_ARG", "order holds fewer than min(want, m) slots");
  const size_t n = guard(env, [&] { return mmr_select(t, rows.Data(), dim, m, scores.Data(), lambda, want, order.Data()); });
  return Napi::Number::New(env, double(n));
}

// andCount(a, b, out): out = a AND b word by word (a word past the end of a or b counts as 0),
// the rest of out zeroed; returns the set bits. out may be a or b, but not overlap either in part.
Napi::Value AndCount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Uint32Array a = uint32_arg(env, info[0], "a");
  Napi::Uint32Array b = uint32_arg(env, info[1], "b");
  Napi::Uint32Array out = uint32_arg(env, info[2], "out");
  const uint32_t* o = out.Data();
  const size_t on = out.ElementLength();
  for (const Napi::Uint32Array* x : {&a, &b}) {
    const uint32_t* p = x->Data();
    const size_t n = x->ElementLength();
    if (p != o && p < o + on && o < p + n) throw_code(env, "ERR_INVALID_ARG", "out must be a, b, or memory of its own");
  }
  return Napi::Number::New(env, double(and_count_words32(a.Data(), a.ElementLength(), b.Data(), b.ElementLength(),
                                                          out.Data(), on)));
}

// readBandwidth(bytes, reps): best-of-reps single-thread sequential read speed in bytes/s, read
// through the active dot kernel (a buffer dotted with itself loads each line once).
Napi::Value ReadBandwidth(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t bytes = size_t(int_arg(env, info[0], "bytes", 1 << 20, uint64_t(1) << 36));
  unsigned reps = unsigned(int_arg(env, info[1], "reps", 1, 1000));
  size_t n = bytes / sizeof(float);
  std::unique_ptr<float, decltype(&std::free)> buf(static_cast<float*>(std::aligned_alloc(64, (n * 4 + 63) / 64 * 64)),
                                                   &std::free);
  if (!buf) throw_code(env, "ERR_INVALID_ARG", "cannot allocate the probe buffer");
  for (size_t i = 0; i < n; ++i) buf.get()[i] = float(i & 7) * 0.125f;
  const KernelTable& t = active_kernels();
  double best = 0;
  volatile float sink = 0;
  for (unsigned r = 0; r < reps; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    sink = sink + t.dot_f32(buf.get(), buf.get(), n);
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s > 0) best = std::max(best, double(n * 4) / s);
  }
  return Napi::Number::New(env, best);
}

// Asks the kernel to SIGKILL this process when its parent dies (Linux; false elsewhere). A
// `funnel serve --workers N` worker must never outlive its primary: an orphan whose event loop is
// stuck would hold LMDB's write lock (and its connections) with nobody to restart or stop it.
Napi::Value SetParentDeathSignal(const Napi::CallbackInfo& info) {
#if defined(__linux__)
  return Napi::Boolean::New(info.Env(), prctl(PR_SET_PDEATHSIG, SIGKILL) == 0);
#else
  return Napi::Boolean::New(info.Env(), false);
#endif
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("simdLevel", Napi::Function::New(env, SimdLevelName, "simdLevel"));
  exports.Set("availableSimdLevels", Napi::Function::New(env, AvailableSimdLevels, "availableSimdLevels"));
  exports.Set("kernel", Napi::Function::New(env, Kernel, "kernel"));
  exports.Set("kernelRows", Napi::Function::New(env, KernelRows, "kernelRows"));
  exports.Set("kernelI8", Napi::Function::New(env, KernelI8, "kernelI8"));
  exports.Set("readBandwidth", Napi::Function::New(env, ReadBandwidth, "readBandwidth"));
  exports.Set("mmr", Napi::Function::New(env, Mmr, "mmr"));
  exports.Set("andCount", Napi::Function::New(env, AndCount, "andCount"));
  exports.Set("setParentDeathSignal", Napi::Function::New(env, SetParentDeathSignal, "setParentDeathSignal"));
  init_index_classes(env, exports);
  init_targeting_class(env, exports);
  return exports;
}

}  // namespace
}  // namespace funnel::binding

static Napi::Object InitModule(Napi::Env env, Napi::Object exports) { return funnel::binding::Init(env, exports); }

NODE_API_MODULE(funnel_native, InitModule)
