// JS classes HnswIndex and FlatIndex: argument checks, sync calls, and AsyncWorkers that run
// searches and batch inserts on libuv's pool, off the event loop.
#include <napi.h>

#include <memory>
#include <string>
#include <vector>

#include "../index/flat.h"
#include "../index/hnsw.h"
#include "util.h"

namespace funnel::binding {
namespace {

// One interface over both index kinds, so that the JS classes share every method.
class Handle {
 public:
  virtual ~Handle() = default;
  virtual size_t dim() const = 0;
  virtual Metric metric() const = 0;
  virtual size_t size() const = 0;
  virtual size_t id_limit() const = 0;
  virtual uint64_t tag() const = 0;
  virtual void add_batch(const uint32_t* ids, const float* vecs, size_t n, unsigned threads) = 0;
  virtual void remove(uint32_t id) = 0;
  virtual bool has(uint32_t id) const = 0;
  virtual void get_vector(uint32_t id, float* out) const = 0;
  virtual QueryResult search(const float* q, const SearchParams& sp) const = 0;
  virtual void search_batch(const float* qs, size_t nq, const SearchParams& sp, uint32_t* ids, float* scores) const = 0;
  virtual void save(const std::string& path, uint64_t tag) const = 0;
  virtual size_t memory_bytes() const = 0;
};

class HnswHandle final : public Handle {
 public:
  explicit HnswHandle(std::unique_ptr<HnswIndex> ix) : ix(std::move(ix)) {}
  size_t dim() const override { return ix->dim(); }
  Metric metric() const override { return ix->metric(); }
  size_t size() const override { return ix->size(); }
  size_t id_limit() const override { return ix->id_limit(); }
  uint64_t tag() const override { return ix->tag(); }
  void add_batch(const uint32_t* ids, const float* vecs, size_t n, unsigned threads) override {
    ix->add_batch(ids, vecs, n, threads);
  }
  void remove(uint32_t id) override { ix->remove(id); }
  bool has(uint32_t id) const override { return ix->has(id); }
  void get_vector(uint32_t id, float* out) const override { ix->get_vector(id, out); }
  QueryResult search(const float* q, const SearchParams& sp) const override { return ix->search(q, sp); }
  void search_batch(const float* qs, size_t nq, const SearchParams& sp, uint32_t* ids, float* scores) const override {
    const size_t k = sp.k;
    for (size_t i = 0; i < nq; ++i) {
      QueryResult r = ix->search(qs + i * ix->dim(), sp);
      for (size_t j = 0; j < k; ++j) {
        ids[i * k + j] = j < r.ids.size() ? r.ids[j] : kNoId;
        scores[i * k + j] = j < r.ids.size() ? r.scores[j] : -std::numeric_limits<float>::infinity();
      }
    }
  }
  void save(const std::string& path, uint64_t tag) const override { ix->save(path, tag); }
  size_t memory_bytes() const override { return ix->memory_bytes(); }
  std::unique_ptr<HnswIndex> ix;
};

class FlatHandle final : public Handle {
 public:
  explicit FlatHandle(std::unique_ptr<FlatIndex> ix) : ix(std::move(ix)) {}
  size_t dim() const override { return ix->dim(); }
  Metric metric() const override { return ix->metric(); }
  size_t size() const override { return ix->size(); }
  size_t id_limit() const override { return ix->id_limit(); }
  uint64_t tag() const override { return ix->tag(); }
  void add_batch(const uint32_t* ids, const float* vecs, size_t n, unsigned) override { ix->add_batch(ids, vecs, n); }
  void remove(uint32_t id) override { ix->remove(id); }
  bool has(uint32_t id) const override { return ix->has(id); }
  void get_vector(uint32_t id, float* out) const override { ix->get_vector(id, out); }
  QueryResult search(const float* q, const SearchParams& sp) const override {
    return ix->search(q, sp.k, sp.filter);
  }
  void search_batch(const float* qs, size_t nq, const SearchParams& sp, uint32_t* ids, float* scores) const override {
    ix->search_batch(qs, nq, sp.k, sp.filter, ids, scores);
  }
  void save(const std::string& path, uint64_t tag) const override { ix->save(path, tag); }
  size_t memory_bytes() const override { return ix->memory_bytes(); }
  std::unique_ptr<FlatIndex> ix;
};

// Parsed search arguments; `keep` pins the caller's filter arrays while a worker reads them.
struct SearchArgs {
  SearchParams sp;
  std::vector<Napi::Reference<Napi::Uint32Array>> keep;
};

SearchArgs parse_search(Napi::Env env, const Handle& h, const Napi::Value& kv, const Napi::Value& ov) {
  SearchArgs a;
  a.sp.k = k_arg(env, kv);
  if (ov.IsUndefined() || ov.IsNull()) return a;
  if (!ov.IsObject()) throw_code(env, "ERR_INVALID_ARG", "options must be an object");
  Napi::Object o = ov.As<Napi::Object>();
  if (o.Has("ef") && !o.Get("ef").IsUndefined()) a.sp.ef = uint32_t(int_arg(env, o.Get("ef"), "ef", 1, 65536));
  if (o.Has("rerank") && !o.Get("rerank").IsUndefined()) {
    a.sp.rerank = uint32_t(int_arg(env, o.Get("rerank"), "rerank", 1, 65536));
  }
  if (o.Has("plan") && !o.Get("plan").IsUndefined()) {
    std::string p = o.Get("plan").IsString() ? o.Get("plan").As<Napi::String>().Utf8Value() : "";
    if (p == "auto") a.sp.plan = Plan::kAuto;
    else if (p == "scan") a.sp.plan = Plan::kScan;
    else if (p == "graph") a.sp.plan = Plan::kGraph;
    else throw_code(env, "ERR_INVALID_ARG", "plan must be 'auto', 'scan' or 'graph'");
  }
  bool has_ids = o.Has("allowIds") && !o.Get("allowIds").IsUndefined();
  bool has_bits = o.Has("allowBits") && !o.Get("allowBits").IsUndefined();
  if (has_ids && has_bits) throw_code(env, "ERR_INVALID_ARG", "pass allowIds or allowBits, not both");
  if (has_ids) {
    Napi::Uint32Array ids = uint32_arg(env, o.Get("allowIds"), "allowIds");
    guard(env, [&] { check_sorted_ids(ids.Data(), ids.ElementLength(), "allowIds"); });
    a.sp.filter.active = true;
    a.sp.filter.ids = ids.Data();
    a.sp.filter.id_count = ids.ElementLength();
    a.keep.push_back(Napi::Persistent(ids));
  }
  if (has_bits) {
    Napi::Uint32Array bits = uint32_arg(env, o.Get("allowBits"), "allowBits");
    a.sp.filter.active = true;
    a.sp.filter.bits = bits.Data();
    a.sp.filter.bit_words = bits.ElementLength();
    a.keep.push_back(Napi::Persistent(bits));
  }
  (void)h;
  return a;
}

// A query (or batch of queries) of the right length; `batch` allows any positive multiple of dim.
Napi::Float32Array query_arg(Napi::Env env, const Handle& h, const Napi::Value& v, bool batch) {
  Napi::Float32Array q = float32_arg(env, v, batch ? "queries" : "query");
  size_t n = q.ElementLength();
  if (batch ? (n == 0 || n % h.dim() != 0) : n != h.dim()) {
    throw_code(env, "ERR_DIMENSION_MISMATCH",
               std::string(batch ? "queries length " : "query length ") + std::to_string(n) +
                   (batch ? " is not a positive multiple of dim " : " does not match dim ") + std::to_string(h.dim()));
  }
  return q;
}

Napi::Object result_object(Napi::Env env, const QueryResult& r) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Uint32Array ids = Napi::Uint32Array::New(env, r.ids.size());
  Napi::Float32Array scores = Napi::Float32Array::New(env, r.scores.size());
  if (!r.ids.empty()) {
    std::memcpy(ids.Data(), r.ids.data(), r.ids.size() * 4);
    std::memcpy(scores.Data(), r.scores.data(), r.scores.size() * 4);
  }
  o.Set("ids", ids);
  o.Set("scores", scores);
  o.Set("plan", Napi::String::New(env, r.scanned ? "scan" : "graph"));
  o.Set("visited", Napi::Number::New(env, double(r.visited)));
  return o;
}

Napi::Object batch_object(Napi::Env env, uint32_t k, const std::vector<uint32_t>& ids,
                          const std::vector<float>& scores) {
  Napi::Object o = Napi::Object::New(env);
  Napi::Uint32Array ia = Napi::Uint32Array::New(env, ids.size());
  Napi::Float32Array sa = Napi::Float32Array::New(env, scores.size());
  std::memcpy(ia.Data(), ids.data(), ids.size() * 4);
  std::memcpy(sa.Data(), scores.data(), scores.size() * 4);
  o.Set("k", Napi::Number::New(env, k));
  o.Set("ids", ia);
  o.Set("scores", sa);
  return o;
}

// Searches on libuv's pool; resolves with the same shape as the sync call, rejects with a coded Error.
class SearchWorker final : public Napi::AsyncWorker {
 public:
  SearchWorker(Napi::Env env, std::shared_ptr<Handle> h, const float* q, size_t nq, bool batch, SearchArgs args)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        h_(std::move(h)),
        queries_(q, q + nq * h_->dim()),
        nq_(nq),
        batch_(batch),
        args_(std::move(args)) {}
  Napi::Promise promise() { return deferred_.Promise(); }

  void Execute() override {
    error_.capture([&] {
      if (batch_) {
        ids_.resize(nq_ * args_.sp.k);
        scores_.resize(nq_ * args_.sp.k);
        h_->search_batch(queries_.data(), nq_, args_.sp, ids_.data(), scores_.data());
      } else {
        result_ = h_->search(queries_.data(), args_.sp);
      }
    });
  }
  void OnOK() override {
    Napi::Env env = Env();
    if (error_.reject(env, deferred_)) return;
    if (batch_) {
      deferred_.Resolve(batch_object(env, args_.sp.k, ids_, scores_));
    } else {
      deferred_.Resolve(result_object(env, result_));
    }
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Handle> h_;
  std::vector<float> queries_;
  size_t nq_;
  bool batch_;
  SearchArgs args_;
  QueryResult result_;
  std::vector<uint32_t> ids_;
  std::vector<float> scores_;
  WorkerError error_;
};

// Batch insert on libuv's pool; the caller's arrays are pinned, not copied.
class AddWorker final : public Napi::AsyncWorker {
 public:
  AddWorker(Napi::Env env, std::shared_ptr<Handle> h, Napi::Uint32Array ids, Napi::Float32Array vecs, unsigned threads)
      : Napi::AsyncWorker(env),
        deferred_(Napi::Promise::Deferred::New(env)),
        h_(std::move(h)),
        ids_ref_(Napi::Persistent(ids)),
        vecs_ref_(Napi::Persistent(vecs)),
        ids_(ids.Data()),
        vecs_(vecs.Data()),
        n_(ids.ElementLength()),
        threads_(threads) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    error_.capture([&] { h_->add_batch(ids_, vecs_, n_, threads_); });
  }
  void OnOK() override {
    if (!error_.reject(Env(), deferred_)) deferred_.Resolve(Env().Undefined());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Handle> h_;
  Napi::Reference<Napi::Uint32Array> ids_ref_;
  Napi::Reference<Napi::Float32Array> vecs_ref_;
  const uint32_t* ids_;
  const float* vecs_;
  size_t n_;
  unsigned threads_;
  WorkerError error_;
};

// Saves on libuv's pool (a checkpoint of a large index takes seconds): searches may run meanwhile;
// the caller keeps writes out until it settles.
class SaveWorker final : public Napi::AsyncWorker {
 public:
  SaveWorker(Napi::Env env, std::shared_ptr<Handle> h, std::string path, uint64_t tag)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)), h_(std::move(h)), path_(std::move(path)), tag_(tag) {}
  Napi::Promise promise() { return deferred_.Promise(); }
  void Execute() override {
    error_.capture([&] { h_->save(path_, tag_); });
  }
  void OnOK() override {
    if (!error_.reject(Env(), deferred_)) deferred_.Resolve(Env().Undefined());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Handle> h_;
  std::string path_;
  uint64_t tag_;
  WorkerError error_;
};

uint32_t id_arg(Napi::Env env, const Napi::Value& v) { return uint32_t(int_arg(env, v, "id", 0, kMaxId)); }

Metric metric_arg(Napi::Env env, const Napi::Object& o) {
  Metric m;
  std::string s = o.Get("metric").IsString() ? o.Get("metric").As<Napi::String>().Utf8Value() : "";
  if (!parse_metric(s, &m)) throw_code(env, "ERR_INVALID_ARG", "metric must be 'ip', 'cos' or 'l2'");
  return m;
}

Napi::Object options_arg(Napi::Env env, const Napi::Value& v, const char* what) {
  if (!v.IsObject()) throw_code(env, "ERR_INVALID_ARG", std::string(what) + " must be an object");
  return v.As<Napi::Object>();
}

uint64_t opt_int(Napi::Env env, const Napi::Object& o, const char* key, uint64_t dflt, uint64_t lo, uint64_t hi) {
  if (!o.Has(key) || o.Get(key).IsUndefined()) return dflt;
  return int_arg(env, o.Get(key), key, lo, hi);
}

bool opt_bool(const Napi::Object& o, const char* key, bool dflt) {
  if (!o.Has(key) || o.Get(key).IsUndefined()) return dflt;
  return o.Get(key).ToBoolean().Value();
}

// Both JS classes; Kind 0 = HnswIndex, 1 = FlatIndex.
template <int Kind>
class IndexWrap : public Napi::ObjectWrap<IndexWrap<Kind>> {
 public:
  static constexpr const char* kName = Kind == 0 ? "HnswIndex" : "FlatIndex";
  static Napi::FunctionReference* ctor;

  static void Register(Napi::Env env, Napi::Object exports) {
    using W = IndexWrap<Kind>;
    std::vector<typename Napi::ObjectWrap<W>::PropertyDescriptor> props = {
        W::InstanceAccessor("dim", &W::Dim, nullptr),
        W::InstanceAccessor("metric", &W::MetricName, nullptr),
        W::InstanceAccessor("size", &W::Size, nullptr),
        W::InstanceAccessor("capacity", &W::IdLimit, nullptr),
        W::InstanceAccessor("tag", &W::Tag, nullptr),
        W::InstanceMethod("add", &W::Add),
        W::InstanceMethod("addBatch", &W::AddBatch),
        W::InstanceMethod("addBatchAsync", &W::AddBatchAsync),
        W::InstanceMethod("remove", &W::Remove),
        W::InstanceMethod("has", &W::Has),
        W::InstanceMethod("getVector", &W::GetVector),
        W::InstanceMethod("gatherVectors", &W::GatherVectors),
        W::InstanceMethod("search", &W::Search),
        W::InstanceMethod("searchAsync", &W::SearchAsync),
        W::InstanceMethod("searchBatch", &W::SearchBatch),
        W::InstanceMethod("searchBatchAsync", &W::SearchBatchAsync),
        W::InstanceMethod("save", &W::Save),
        W::InstanceMethod("saveAsync", &W::SaveAsync),
        W::InstanceMethod("memoryBytes", &W::MemoryBytes),
        W::StaticMethod("load", &W::Load),
    };
    if constexpr (Kind == 0) {
      props.push_back(W::InstanceAccessor("ef", &W::Ef, &W::SetEf));
      props.push_back(W::InstanceAccessor("M", &W::GetM, nullptr));
      props.push_back(W::InstanceAccessor("efConstruction", &W::GetEfC, nullptr));
      props.push_back(W::InstanceAccessor("quantization", &W::Quantization, nullptr));
      props.push_back(W::InstanceAccessor("mapped", &W::Mapped, nullptr));
    }
    Napi::Function f = W::DefineClass(env, kName, props);
    ctor = new Napi::FunctionReference(Napi::Persistent(f));
    exports.Set(kName, f);
  }

  explicit IndexWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<IndexWrap<Kind>>(info) {
    Napi::Env env = info.Env();
    if (info.Length() == 1 && info[0].IsExternal()) {  // from load()
      h_ = *info[0].As<Napi::External<std::shared_ptr<Handle>>>().Data();
      return;
    }
    Napi::Object o = options_arg(env, info[0], "options");
    size_t dim = size_t(opt_int(env, o, "dim", 0, 1, 4096));
    if (dim == 0) throw_code(env, "ERR_INVALID_ARG", "dim is required (1..4096)");
    Metric m = metric_arg(env, o);
    size_t capacity = size_t(opt_int(env, o, "capacity", 1024, 0, kMaxId));
    guard(env, [&] {
      if constexpr (Kind == 0) {
        HnswParams p;
        p.dim = dim;
        p.metric = m;
        p.capacity = capacity;
        p.M = uint32_t(opt_int(env, o, "M", 16, 2, 128));
        p.ef_construction = uint32_t(opt_int(env, o, "efConstruction", 200, 1, 4096));
        p.ef = uint32_t(opt_int(env, o, "ef", 64, 1, 65536));
        p.seed = opt_int(env, o, "seed", 42, 0, uint64_t(1) << 53);
        if (o.Has("quantization") && !o.Get("quantization").IsUndefined()) {
          std::string qz = o.Get("quantization").IsString() ? o.Get("quantization").As<Napi::String>().Utf8Value() : "";
          if (qz != "none" && qz != "int8") throw_code(env, "ERR_INVALID_ARG", "quantization must be 'none' or 'int8'");
          p.int8 = qz == "int8";
        }
        h_ = std::make_shared<HnswHandle>(std::make_unique<HnswIndex>(p));
      } else {
        h_ = std::make_shared<FlatHandle>(std::make_unique<FlatIndex>(dim, m, capacity));
      }
    });
  }

 private:
  static Napi::Value Load(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw_code(env, "ERR_INVALID_ARG", "file must be a string");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    bool mmap = false, verify = true;
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      Napi::Object o = options_arg(env, info[1], "options");
      mmap = opt_bool(o, "mmap", false);
      verify = opt_bool(o, "verify", true);
    }
    std::shared_ptr<Handle> h = guard(env, [&]() -> std::shared_ptr<Handle> {
      if constexpr (Kind == 0) return std::make_shared<HnswHandle>(HnswIndex::load(path, mmap, verify));
      else return std::make_shared<FlatHandle>(FlatIndex::load(path, verify));
    });
    return ctor->New({Napi::External<std::shared_ptr<Handle>>::New(env, &h)});
  }

  HnswIndex& hnsw() { return *static_cast<HnswHandle&>(*h_).ix; }

  Napi::Value Dim(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(h_->dim())); }
  Napi::Value MetricName(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), metric_name(h_->metric()));
  }
  Napi::Value Size(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(h_->size())); }
  Napi::Value IdLimit(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(h_->id_limit())); }
  Napi::Value Tag(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), double(h_->tag())); }
  Napi::Value Ef(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), hnsw().ef()); }
  void SetEf(const Napi::CallbackInfo& info, const Napi::Value& v) {
    hnsw().set_ef(uint32_t(int_arg(info.Env(), v, "ef", 1, 65536)));
  }
  Napi::Value GetM(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), hnsw().M()); }
  Napi::Value GetEfC(const Napi::CallbackInfo& info) { return Napi::Number::New(info.Env(), hnsw().ef_construction()); }
  Napi::Value Quantization(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), hnsw().int8() ? "int8" : "none");
  }
  Napi::Value Mapped(const Napi::CallbackInfo& info) { return Napi::Boolean::New(info.Env(), hnsw().mapped()); }

  Napi::Value Add(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id = id_arg(env, info[0]);
    Napi::Float32Array v = query_arg(env, *h_, info[1], false);
    guard(env, [&] { h_->add_batch(&id, v.Data(), 1, 1); });
    return env.Undefined();
  }

  void batch_args(const Napi::CallbackInfo& info, Napi::Uint32Array* ids, Napi::Float32Array* vecs, unsigned* threads) {
    Napi::Env env = info.Env();
    *ids = uint32_arg(env, info[0], "ids");
    *vecs = float32_arg(env, info[1], "vectors");
    if (vecs->ElementLength() != ids->ElementLength() * h_->dim()) {
      throw_code(env, "ERR_DIMENSION_MISMATCH",
                 "vectors length " + std::to_string(vecs->ElementLength()) + " is not ids.length * dim (" +
                     std::to_string(ids->ElementLength() * h_->dim()) + ")");
    }
    *threads = info.Length() > 2 && !info[2].IsUndefined() ? unsigned(int_arg(env, info[2], "threads", 1, 256)) : 1;
  }

  Napi::Value AddBatch(const Napi::CallbackInfo& info) {
    Napi::Uint32Array ids;
    Napi::Float32Array vecs;
    unsigned threads;
    batch_args(info, &ids, &vecs, &threads);
    guard(info.Env(), [&] { h_->add_batch(ids.Data(), vecs.Data(), ids.ElementLength(), threads); });
    return info.Env().Undefined();
  }

  Napi::Value AddBatchAsync(const Napi::CallbackInfo& info) {
    Napi::Uint32Array ids;
    Napi::Float32Array vecs;
    unsigned threads;
    batch_args(info, &ids, &vecs, &threads);
    auto* w = new AddWorker(info.Env(), h_, ids, vecs, threads);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value Remove(const Napi::CallbackInfo& info) {
    uint32_t id = id_arg(info.Env(), info[0]);
    guard(info.Env(), [&] { h_->remove(id); });
    return info.Env().Undefined();
  }

  Napi::Value Has(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!info[0].IsNumber()) throw_code(env, "ERR_INVALID_ARG", "id must be a number");
    double d = info[0].As<Napi::Number>().DoubleValue();
    bool ok = d >= 0 && d <= kMaxId && d == std::floor(d) && h_->has(uint32_t(d));
    return Napi::Boolean::New(env, ok);
  }

  Napi::Value GetVector(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id = id_arg(env, info[0]);
    Napi::Float32Array out = Napi::Float32Array::New(env, h_->dim());
    guard(env, [&] { h_->get_vector(id, out.Data()); });
    return out;
  }

  // gatherVectors(ids, out): copies the vectors of ids.length ids into `out` (row-major,
  // ids.length * dim floats); an id not in the index gets a row of zeros. Returns how many were found.
  Napi::Value GatherVectors(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Uint32Array ids = uint32_arg(env, info[0], "ids");
    Napi::Float32Array out = float32_arg(env, info[1], "out");
    const size_t n = ids.ElementLength();
    const size_t dim = h_->dim();
    if (out.ElementLength() < n * dim) {
      throw_code(env, "ERR_INVALID_ARG", "out has " + std::to_string(out.ElementLength()) + " floats, ids.length * dim = " + std::to_string(n * dim) + " are needed");
    }
    size_t found = 0;
    guard(env, [&] {
      const uint32_t* id = ids.Data();
      float* o = out.Data();
      for (size_t i = 0; i < n; ++i, o += dim) {
        if (h_->has(id[i])) {
          h_->get_vector(id[i], o);
          ++found;
        } else {
          std::fill(o, o + dim, 0.0f);
        }
      }
    });
    return Napi::Number::New(env, double(found));
  }

  Napi::Value Search(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float32Array q = query_arg(env, *h_, info[0], false);
    SearchArgs a = parse_search(env, *h_, info[1], info[2]);
    QueryResult r = guard(env, [&] { return h_->search(q.Data(), a.sp); });
    return result_object(env, r);
  }

  Napi::Value SearchAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float32Array q = query_arg(env, *h_, info[0], false);
    SearchArgs a = parse_search(env, *h_, info[1], info[2]);
    auto* w = new SearchWorker(env, h_, q.Data(), 1, false, std::move(a));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value SearchBatch(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float32Array q = query_arg(env, *h_, info[0], true);
    SearchArgs a = parse_search(env, *h_, info[1], info[2]);
    size_t nq = q.ElementLength() / h_->dim();
    std::vector<uint32_t> ids(nq * a.sp.k);
    std::vector<float> scores(nq * a.sp.k);
    guard(env, [&] { h_->search_batch(q.Data(), nq, a.sp, ids.data(), scores.data()); });
    return batch_object(env, a.sp.k, ids, scores);
  }

  Napi::Value SearchBatchAsync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Float32Array q = query_arg(env, *h_, info[0], true);
    SearchArgs a = parse_search(env, *h_, info[1], info[2]);
    auto* w = new SearchWorker(env, h_, q.Data(), q.ElementLength() / h_->dim(), true, std::move(a));
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  static void save_args(const Napi::CallbackInfo& info, std::string* path, uint64_t* tag) {
    Napi::Env env = info.Env();
    if (!info[0].IsString()) throw_code(env, "ERR_INVALID_ARG", "file must be a string");
    *path = info[0].As<Napi::String>().Utf8Value();
    *tag = 0;
    if (info.Length() > 1 && !info[1].IsUndefined()) {
      Napi::Object o = options_arg(env, info[1], "options");
      *tag = opt_int(env, o, "tag", 0, 0, (uint64_t(1) << 53) - 1);
    }
  }

  Napi::Value Save(const Napi::CallbackInfo& info) {
    std::string path;
    uint64_t tag;
    save_args(info, &path, &tag);
    guard(info.Env(), [&] { h_->save(path, tag); });
    return info.Env().Undefined();
  }

  Napi::Value SaveAsync(const Napi::CallbackInfo& info) {
    std::string path;
    uint64_t tag;
    save_args(info, &path, &tag);
    auto* w = new SaveWorker(info.Env(), h_, std::move(path), tag);
    Napi::Promise p = w->promise();
    w->Queue();
    return p;
  }

  Napi::Value MemoryBytes(const Napi::CallbackInfo& info) {
    return Napi::Number::New(info.Env(), double(h_->memory_bytes()));
  }

  std::shared_ptr<Handle> h_;
};

template <int Kind>
Napi::FunctionReference* IndexWrap<Kind>::ctor = nullptr;

}  // namespace

void init_index_classes(Napi::Env env, Napi::Object exports) {
  IndexWrap<0>::Register(env, exports);
  IndexWrap<1>::Register(env, exports);
}

}  // namespace funnel::binding
