// JS class TargetingIndex: argument checks that name the offending path (targeting[1].country.any_of[0]),
// sync matching into a caller's bitset, and an AsyncWorker that matches on libuv's pool.
#include <napi.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "../targeting/targeting.h"
#include "util.h"

namespace funnel::binding {
namespace {

using targeting::Conjunction;
using targeting::Predicate;
using targeting::RequestAttribute;

// Own enumerable string keys (a conjunction's attribute names, a request's attributes); unlike
// napi_get_property_names this skips anything inherited.
Napi::Array own_keys(Napi::Env env, const Napi::Object& o) {
  napi_value result;
  napi_status st = napi_get_all_property_names(env, o, napi_key_own_only,
                                               static_cast<napi_key_filter>(napi_key_enumerable | napi_key_skip_symbols),
                                               napi_key_numbers_to_strings, &result);
  NAPI_THROW_IF_FAILED(env, st, Napi::Array());
  return Napi::Array(env, result);
}

bool is_plain_object(const Napi::Value& v) { return v.IsObject() && !v.IsArray() && !v.IsFunction() && !v.IsTypedArray(); }

std::vector<std::string> strings_arg(Napi::Env env, const Napi::Value& v, const std::string& what) {
  if (!v.IsArray()) throw_code(env, "ERR_INVALID_ARG", what + " must be an array of strings");
  Napi::Array a = v.As<Napi::Array>();
  const uint32_t n = a.Length();
  std::vector<std::string> out;
  out.reserve(n);
  for (uint32_t i = 0; i < n; ++i) {
    Napi::Value e = a.Get(i);
    if (!e.IsString()) throw_code(env, "ERR_INVALID_ARG", what + "[" + std::to_string(i) + "] must be a string");
    out.push_back(e.As<Napi::String>().Utf8Value());
  }
  return out;
}

// An ad's targeting: undefined/null = absent (everyone), else a non-empty array of conjunctions.
// Returns false for absent.
bool targeting_arg(Napi::Env env, const Napi::Value& v, std::vector<Conjunction>* out) {
  if (v.IsUndefined() || v.IsNull()) return false;
  if (!v.IsArray()) throw_code(env, "ERR_INVALID_ARG", "targeting must be an array of conjunctions, undefined or null");
  Napi::Array list = v.As<Napi::Array>();
  const uint32_t n = list.Length();
  if (n == 0) throw_code(env, "ERR_INVALID_ARG", "targeting must not be an empty list (omit it to target everyone)");
  out->resize(n);
  for (uint32_t i = 0; i < n; ++i) {
    const std::string at = "targeting[" + std::to_string(i) + "]";
    Napi::Value cv = list.Get(i);
    if (!is_plain_object(cv)) throw_code(env, "ERR_INVALID_ARG", at + " must be an object (attribute -> predicate)");
    Napi::Object c = cv.As<Napi::Object>();
    Napi::Array names = own_keys(env, c);
    Conjunction& conj = (*out)[i];
    conj.reserve(names.Length());
    for (uint32_t j = 0; j < names.Length(); ++j) {
      Napi::Value key = names.Get(j);
      const std::string name = key.As<Napi::String>().Utf8Value();
      const std::string pat = at + "." + name;
      Napi::Value pv = c.Get(key);
      if (!is_plain_object(pv)) throw_code(env, "ERR_INVALID_ARG", pat + " must be a predicate {any_of?, none_of?}");
      Napi::Object po = pv.As<Napi::Object>();
      Predicate pred;
      Napi::Array pkeys = own_keys(env, po);
      for (uint32_t k = 0; k < pkeys.Length(); ++k) {
        Napi::Value pk = pkeys.Get(k);
        const std::string kname = pk.As<Napi::String>().Utf8Value();
        Napi::Value lv = po.Get(pk);
        if (kname == "any_of") {
          if (!lv.IsUndefined()) pred.any_of = strings_arg(env, lv, pat + ".any_of");
        } else if (kname == "none_of") {
          if (!lv.IsUndefined()) pred.none_of = strings_arg(env, lv, pat + ".none_of");
        } else {
          throw_code(env, "ERR_INVALID_ARG", pat + " has unknown key \"" + kname + "\" (a predicate has any_of and/or none_of)");
        }
      }
      if (!pred.any_of && !pred.none_of) throw_code(env, "ERR_INVALID_ARG", pat + " needs any_of and/or none_of");
      conj.emplace_back(name, std::move(pred));
    }
  }
  return true;
}

// A request's attributes: an object of string arrays; an undefined value counts as absent.
std::vector<RequestAttribute> attrs_arg(Napi::Env env, const Napi::Value& v) {
  if (!is_plain_object(v)) throw_code(env, "ERR_INVALID_ARG", "attributes must be an object of string arrays");
  Napi::Object o = v.As<Napi::Object>();
  Napi::Array names = own_keys(env, o);
  std::vector<RequestAttribute> out;
  out.reserve(names.Length());
  for (uint32_t i = 0; i < names.Length(); ++i) {
    Napi::Value key = names.Get(i);
    Napi::Value val = o.Get(key);
    if (val.IsUndefined()) continue;
    std::string name = key.As<Napi::String>().Utf8Value();
    std::vector<std::string> values = strings_arg(env, val, "attributes." + name);
    out.push_back(RequestAttribute{std::move(name), std::move(values)});
  }
  return out;
}

// Options of match / matchIds / matchAsync; `keep` pins the arrays while a worker reads them.
struct MatchArgs {
  std::vector<RequestAttribute> attrs;
  const uint32_t* within = nullptr;
  size_t within_words = 0;
  Napi::Reference<Napi::Uint32Array> within_ref;
  Napi::Reference<Napi::Uint32Array> out_ref;
};

MatchArgs parse_match(Napi::Env env, const Napi::Value& av, const Napi::Value& ov, bool allow_out) {
  MatchArgs m;
  m.attrs = attrs_arg(env, av);
  if (ov.IsUndefined() || ov.IsNull()) return m;
  if (!ov.IsObject()) throw_code(env, "ERR_INVALID_ARG", "options must be an object");
  Napi::Object o = ov.As<Napi::Object>();
  Napi::Uint32Array within, out;
  if (o.Has("within") && !o.Get("within").IsUndefined()) {
    within = uint32_arg(env, o.Get("within"), "within");
    static const uint32_t kNothing = 0;  // an empty mask still masks: never pass null for it
    m.within = within.ElementLength() == 0 ? &kNothing : within.Data();
    m.within_words = within.ElementLength();
    m.within_ref = Napi::Persistent(within);
  }
  if (allow_out && o.Has("out") && !o.Get("out").IsUndefined()) {
    out = uint32_arg(env, o.Get("out"), "out");
    if (m.within != nullptr) {
      const uint32_t* a = out.Data();
      const uint32_t* b = m.within;
      if (a < b + m.within_words && b < a + out.ElementLength()) {
        throw_code(env, "ERR_INVALID_ARG", "out must not share memory with within");
      }
    }
    m.out_ref = Napi::Persistent(out);
  }
  return m;
}

Napi::Object match_object(Napi::Env env, const Napi::Uint32Array& bits, size_t count) {
  Napi::Object r = Napi::Object::New(env);
  r.Set("bits", bits);
  r.Set("count", Napi::Number::New(env, double(count)));
  return r;
}

// A finished answer (matched without an `out` buffer) as a new array.
Napi::Uint32Array deliver(Napi::Env env, const std::vector<uint32_t>& words) {
  Napi::Uint32Array bits = Napi::Uint32Array::New(env, words.size());
  if (!words.empty()) std::memcpy(bits.Data(), words.data(), words.size() * 4);
  return bits;
}

// Matches on libuv's pool; resolves with {bits, count} like match(), rejects with a coded Error.
// With an `out` buffer the pool thread writes the answer straight into it (its tail zeroed there
// too), so the JS thread neither copies nor clears it: the buffer is pinned by out_ref, and the
// caller leaves it alone until the promise settles.
class MatchWorker final : public Napi::AsyncWorker {
 public:
  MatchWorker(Napi::Env env, std::shared_ptr<targeting::TargetingIndex> ix, MatchArgs args)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), ix_(std::move(ix)), args_(std::move(args)) {
    if (!args_.out_ref.IsEmpty()) {
      Napi::Uint32Array out = args_.out_ref.Value();
      out_ = out.Data();
      out_words_ = out.ElementLength();
    }
  }
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    error_.capture([&] {
      count_ = out_ != nullptr ? ix_->match(args_.attrs, args_.within, args_.within_words, out_, out_words_)
                               : ix_->match(args_.attrs, args_.within, args_.within_words, &words_);
    });
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (error_.reject(env, deferred_)) return;
    try {
      Napi::Uint32Array bits = out_ != nullptr ? args_.out_ref.Value() : deliver(env, words_);
      deferred_.Resolve(match_object(env, bits, count_));
    } catch (const Napi::Error& e) {
      deferred_.Reject(e.Value());
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<targeting::TargetingIndex> ix_;
  MatchArgs args_;
  uint32_t* out_ = nullptr;
  size_t out_words_ = 0;
  std::vector<uint32_t> words_;
  size_t count_ = 0;
  WorkerError error_;
};

class TargetingWrap : public Napi::ObjectWrap<TargetingWrap> {
 public:
  static void Register(Napi::Env env, Napi::Object exports) {
    Napi::Function f = DefineClass(env, "TargetingIndex",
                                   {
                                       InstanceAccessor("size", &TargetingWrap::Size, nullptr),
                                       InstanceAccessor("capacity", &TargetingWrap::Capacity, nullptr),
                                       InstanceAccessor("epoch", &TargetingWrap::Epoch, nullptr),
                                       InstanceMethod("set", &TargetingWrap::Set),
                                       InstanceMethod("remove", &TargetingWrap::Remove),
                                       InstanceMethod("has", &TargetingWrap::Has),
                                       InstanceMethod("match", &TargetingWrap::Match),
                                       InstanceMethod("matchIds", &TargetingWrap::MatchIds),
                                       InstanceMethod("matchAsync", &TargetingWrap::MatchAsync),
                                       InstanceMethod("memoryBytes", &TargetingWrap::MemoryBytes),
                                   });
    exports.Set("TargetingIndex", f);
  }

  explicit TargetingWrap(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<TargetingWrap>(info), ix_(std::make_shared<targeting::TargetingIndex>()) {}

 private:
  static uint32_t id_arg(Napi::Env env, const Napi::Value& v) { return uint32_t(int_arg(env, v, "id", 0, kMaxId)); }

  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(ix_->size())); }
  Napi::Value Capacity(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(ix_->capacity()));
  }

  Napi::Value Epoch(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(ix_->epoch())); }

  Napi::Value Set(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint32_t id = id_arg(env, info[0]);
    std::vector<Conjunction> t;
    const bool present = targeting_arg(env, info[1], &t);
    guard(env, [&] { ix_->set(id, present ? &t : nullptr); });
    return env.Undefined();
  }

  Napi::Value Remove(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    const uint32_t id = id_arg(env, info[0]);
    if (!guard(env, [&] { return ix_->remove(id); })) {
      throw_code(env, "ERR_UNKNOWN_ID", "id " + std::to_string(id) + " has no targeting");
    }
    return env.Undefined();
  }

  Napi::Value Has(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber()) throw_code(env, "ERR_INVALID_ARG", "id must be a number");
    const double d = info[0].As<Napi::Number>().DoubleValue();
    return Napi::Boolean::New(env, d >= 0 && d <= kMaxId && d == std::floor(d) && ix_->has(uint32_t(d)));
  }

  Napi::Value Match(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MatchArgs a = parse_match(env, info[0], info[1], true);
    Napi::Uint32Array bits =
        a.out_ref.IsEmpty() ? Napi::Uint32Array::New(env, ix_->words()) : a.out_ref.Value();
    const size_t count =
        guard(env, [&] { return ix_->match(a.attrs, a.within, a.within_words, bits.Data(), bits.ElementLength()); });
    return match_object(env, bits, count);
  }

  Napi::Value MatchIds(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MatchArgs a = parse_match(env, info[0], info[1], false);
    std::vector<uint32_t> words;
    const size_t count = guard(env, [&] { return ix_->match(a.attrs, a.within, a.within_words, &words); });
    Napi::Uint32Array ids = Napi::Uint32Array::New(env, count);
    uint32_t* p = ids.Data();
    for (size_t w = 0; w < words.size(); ++w) {
      for (uint32_t bits = words[w]; bits != 0; bits &= bits - 1) *p++ = uint32_t(w * 32 + size_t(__builtin_ctz(bits)));
    }
    return ids;
  }

  Napi::Value MatchAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    MatchArgs a = parse_match(env, info[0], info[1], true);
    auto* w = new MatchWorker(env, ix_, std::move(a));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value MemoryBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(ix_->memory_bytes()));
  }

  std::shared_ptr<targeting::TargetingIndex> ix_;
};

}  // namespace

void init_targeting_class(Napi::Env env, Napi::Object exports) { TargetingWrap::Register(env, exports); }

}  // namespace funnel::binding
