// N-API helpers: argument checks that throw JS errors carrying a `code`.
#pragma once
#include <napi.h>

#include <cmath>
#include <string>

#include "../index/common.h"

namespace funnel::binding {

/// Throws a JS Error with `code` set.
[[noreturn]] inline void throw_code(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  throw e;
}

/// A JS Error with `code` set, for promise rejections.
inline Napi::Value make_error(Napi::Env env, const std::string& code, const std::string& message) {
  Napi::Error e = Napi::Error::New(env, message);
  e.Set("code", Napi::String::New(env, code));
  return e.Value();
}

/// An error caught on a worker thread, rethrown on the JS thread as a coded Error.
struct WorkerError {
  std::string code, message;
  /// Runs `fn` (on a worker), keeping any failure instead of letting it escape.
  template <typename Fn>
  void capture(Fn&& fn) {
    try {
      fn();
    } catch (const IndexError& e) {
      code = e.code();
      message = e.what();
    } catch (const std::exception& e) {
      code = "ERR_INVALID_ARG";
      message = e.what();
    }
  }
  bool failed() const { return !code.empty(); }
  /// Rejects `deferred` with the kept error; false when nothing failed.
  bool reject(Napi::Env env, Napi::Promise::Deferred& deferred) const {
    if (!failed()) return false;
    deferred.Reject(make_error(env, code, message));
    return true;
  }
};

/// Runs `fn`, turning core IndexErrors and std exceptions into coded JS errors.
template <typename Fn>
auto guard(Napi::Env env, Fn&& fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const IndexError& e) {
    throw_code(env, e.code(), e.what());
  } catch (const std::bad_alloc&) {
    throw_code(env, "ERR_INVALID_ARG", "out of memory");
  }
}

/// The Float32Array at `v`, or ERR_INVALID_ARG naming `what`.
inline Napi::Float32Array float32_arg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
    throw_code(env, "ERR_INVALID_ARG", std::string(what) + " must be a Float32Array");
  }
  return v.As<Napi::Float32Array>();
}

/// The Float64Array at `v`, or ERR_INVALID_ARG naming `what`.
inline Napi::Float64Array float64_arg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_float64_array) {
    throw_code(env, "ERR_INVALID_ARG", std::string(what) + " must be a Float64Array");
  }
  return v.As<Napi::Float64Array>();
}

/// The Uint32Array at `v`, or ERR_INVALID_ARG naming `what`.
inline Napi::Uint32Array uint32_arg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint32_array) {
    throw_code(env, "ERR_INVALID_ARG", std::string(what) + " must be a Uint32Array");
  }
  return v.As<Napi::Uint32Array>();
}

/// An integer in [lo, hi] at `v`, or ERR_INVALID_ARG naming `what`.
inline uint64_t int_arg(Napi::Env env, const Napi::Value& v, const char* what, uint64_t lo, uint64_t hi) {
  if (!v.IsNumber()) throw_code(env, "ERR_INVALID_ARG", std::string(what) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d) || d < double(lo) || d > double(hi)) {
    throw_code(env, "ERR_INVALID_ARG",
               std::string(what) + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
  }
  return uint64_t(d);
}

/// k: an integer >= 1; the upper bound (index size) is checked by the index.
inline uint32_t k_arg(Napi::Env env, const Napi::Value& v) {
  if (!v.IsNumber()) throw_code(env, "ERR_INVALID_ARG", "k must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!std::isfinite(d) || d != std::floor(d)) throw_code(env, "ERR_INVALID_ARG", "k must be an integer");
  if (d < 1 || d > 1e6) throw_code(env, "ERR_K_OUT_OF_RANGE", "k must be in 1..size, got " + std::to_string(int64_t(d)));
  return uint32_t(d);
}

}  // namespace funnel::binding
