// Growable arrays that may start life inside a copy-on-write file mapping, and the index file
// container (versioned header, checksummed sections). Pure C++.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "common.h"

namespace funnel {

/// A read-write private mapping of a whole file: pages are shared with every other process
/// mapping the same file until one of them writes (copy-on-write, MAP_PRIVATE).
class MappedFile {
 public:
  /// Maps `path`; throws ERR_IO naming the path when it cannot be opened or mapped.
  static std::shared_ptr<MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  uint8_t* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

/// Allocates `*bytes` (a multiple of 64) 64-byte aligned. Blocks of 2 MiB and more are rounded up
/// to whole 2 MiB pages, 2 MiB aligned, and asked to be backed by transparent huge pages before
/// first touch: graph searches read vectors and link lists at random across hundreds of MiB, and
/// with 4 KiB pages nearly every read also misses the TLB. `*bytes` becomes the size allocated.
/// Throws std::bad_alloc.
void* allocate_backing(size_t* bytes);

/// Array of trivially copyable T, either owned (64-byte aligned, zero-filled on growth) or a
/// view into a MappedFile. Growing a view copies it into owned memory.
template <typename T>
class Array {
 public:
  Array() = default;
  ~Array() { release(); }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;

  T* data() const { return data_; }
  size_t size() const { return size_; }
  bool owned() const { return owned_; }
  T& operator[](size_t i) const { return data_[i]; }

  /// Resizes to `n` elements keeping the first min(n, size) and zeroing the rest.
  void resize(size_t n) {
    if (n == size_ && (owned_ || n == 0)) return;
    T* fresh = nullptr;
    if (n > 0) {
      size_t bytes = ((n * sizeof(T)) + 63) / 64 * 64;
      fresh = static_cast<T*>(allocate_backing(&bytes));
      size_t keep = std::min(n, size_);
      if (keep > 0) std::memcpy(fresh, data_, keep * sizeof(T));
      std::memset(static_cast<void*>(fresh + keep), 0, bytes - keep * sizeof(T));
    }
    release();
    data_ = fresh;
    size_ = n;
    owned_ = true;
  }

  /// Points at `n` elements inside a mapping (kept alive by the index that owns the mapping).
  void view(T* data, size_t n) {
    release();
    data_ = data;
    size_ = n;
    owned_ = false;
  }

 private:
  void release() {
    if (owned_) std::free(data_);
    data_ = nullptr;
    size_ = 0;
    owned_ = false;
  }
  T* data_ = nullptr;
  size_t size_ = 0;
  bool owned_ = false;
};

/// 64-bit checksum (four-lane multiply-rotate mix, in the manner of XXH64) of `n` bytes.
uint64_t checksum64(const void* data, size_t n, uint64_t seed = 0);

/// Kinds of index file.
enum class FileKind : uint32_t { kHnsw = 1, kFlat = 2 };

/// Current (and highest readable) file format version.
constexpr uint32_t kFormatVersion = 1;
constexpr size_t kHeaderSize = 4096;
constexpr size_t kMaxSections = 16;
constexpr size_t kMaxParams = 32;

/// One checksummed block of the file body.
struct SectionRef {
  uint32_t id;
  uint32_t reserved;
  uint64_t offset;
  uint64_t size;
  uint64_t checksum;
};

/// Writes an index file: sections are appended, then the header; the file appears under its
/// name only when complete (written to a temporary name, fsynced, renamed).
class FileWriter {
 public:
  FileWriter(const std::string& path, FileKind kind);
  ~FileWriter();
  void section(uint32_t id, const void* data, size_t bytes);
  void param(size_t slot, uint64_t value) { params_.at(slot) = value; }
  void commit();

 private:
  std::string path_, tmp_;
  FileKind kind_;
  int fd_ = -1;
  uint64_t offset_ = kHeaderSize;
  std::vector<SectionRef> sections_;
  std::vector<uint64_t> params_ = std::vector<uint64_t>(kMaxParams, 0);
  bool committed_ = false;
};

/// A parsed, validated index file held in a mapping.
class FileReader {
 public:
  /// Opens and checks magic, version, kind, header checksum, section bounds and (when
  /// `verify`) section checksums. Throws ERR_IO or ERR_CORRUPT_INDEX naming the path.
  FileReader(const std::string& path, FileKind kind, bool verify);
  uint64_t param(size_t slot) const { return params_.at(slot); }
  /// Section `id` as T elements; throws ERR_CORRUPT_INDEX if absent or its size is not `count` elements.
  template <typename T>
  T* section(uint32_t id, size_t count) const {
    const SectionRef* s = find(id);
    if (s->size != count * sizeof(T)) fail("section " + std::to_string(id) + " has the wrong size");
    return reinterpret_cast<T*>(map_->data() + s->offset);
  }
  /// Size in bytes of section `id`.
  size_t section_bytes(uint32_t id) const { return find(id)->size; }
  const std::shared_ptr<MappedFile>& mapping() const { return map_; }
  [[noreturn]] void fail(const std::string& why) const;

 private:
  const SectionRef* find(uint32_t id) const;
  std::shared_ptr<MappedFile> map_;
  std::vector<SectionRef> sections_;
  std::vector<uint64_t> params_;
};

}  // namespace funnel
