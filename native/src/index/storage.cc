#include "storage.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace funnel {
namespace {

constexpr char kMagic[8] = {'F', 'U', 'N', 'N', 'E', 'L', 'I', 'X'};

// Header layout (little-endian), kHeaderSize bytes:
//   magic[8] | u32 version | u32 kind | u32 section_count | u32 reserved
//   u64 params[kMaxParams] | SectionRef sections[kMaxSections] | u64 header_checksum | zero pad
constexpr size_t kParamsAt = 24;
constexpr size_t kSectionsAt = kParamsAt + kMaxParams * 8;
constexpr size_t kChecksumAt = kSectionsAt + kMaxSections * sizeof(SectionRef);
static_assert(kChecksumAt + 8 <= kHeaderSize, "header overflows");
static_assert(sizeof(SectionRef) == 32, "SectionRef layout");

constexpr uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull,
                   P4 = 0x85EBCA77C2B2AE63ull, P5 = 0x27D4EB2F165667C5ull;

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t round64(uint64_t acc, uint64_t v) { return rotl(acc + v * P2, 31) * P1; }
inline uint64_t read64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

std::string errno_text() { return std::strerror(errno); }

void write_all(int fd, const void* data, size_t n, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min<size_t>(n, size_t(1) << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      throw IndexError("ERR_IO", "cannot write " + path + ": " + errno_text());
    }
    p += w;
    n -= size_t(w);
  }
}

}  // namespace

uint64_t checksum64(const void* data, size_t n, uint64_t seed) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  const uint8_t* end = p + n;
  uint64_t h;
  if (n >= 32) {
    uint64_t v1 = seed + P1 + P2, v2 = seed + P2, v3 = seed, v4 = seed - P1;
    for (; p + 32 <= end; p += 32) {
      v1 = round64(v1, read64(p));
      v2 = round64(v2, read64(p + 8));
      v3 = round64(v3, read64(p + 16));
      v4 = round64(v4, read64(p + 24));
    }
    h = rotl(v1, 1) + rotl(v2, 7) + rotl(v3, 12) + rotl(v4, 18);
    for (uint64_t v : {v1, v2, v3, v4}) h = (h ^ round64(0, v)) * P1 + P4;
  } else {
    h = seed + P5;
  }
  h += uint64_t(n);
  for (; p + 8 <= end; p += 8) h = rotl(h ^ round64(0, read64(p)), 27) * P1 + P4;
  for (; p < end; ++p) h = rotl(h ^ (uint64_t(*p) * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  h ^= h >> 32;
  return h;
}

void* allocate_backing(size_t* bytes) {
  constexpr size_t kHuge = size_t(2) << 20;
  if (*bytes < kHuge) {
    void* p = std::aligned_alloc(64, *bytes);
    if (p == nullptr) throw std::bad_alloc();
    return p;
  }
  *bytes = (*bytes + kHuge - 1) / kHuge * kHuge;
  void* p = std::aligned_alloc(kHuge, *bytes);
  if (p == nullptr) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  // Advice only: where transparent huge pages are off (or "never"), this fails and 4 KiB pages serve.
  (void)::madvise(p, *bytes, MADV_HUGEPAGE);
#endif
  return p;
}

std::shared_ptr<MappedFile> MappedFile::open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw IndexError("ERR_IO", "cannot open index file " + path + ": " + errno_text());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string why = errno_text();
    ::close(fd);
    throw IndexError("ERR_IO", "cannot stat " + path + ": " + why);
  }
  std::shared_ptr<MappedFile> m(new MappedFile());
  m->path_ = path;
  m->size_ = size_t(st.st_size);
  if (m->size_ > 0) {
    void* p = ::mmap(nullptr, m->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string why = errno_text();
      ::close(fd);
      throw IndexError("ERR_IO", "cannot map " + path + ": " + why);
    }
    m->data_ = static_cast<uint8_t*>(p);
  }
  ::close(fd);
  return m;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) ::munmap(data_, size_);
}

FileWriter::FileWriter(const std::string& path, FileKind kind)
    : path_(path), tmp_(path + ".tmp-" + std::to_string(::getpid())), kind_(kind) {
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) throw IndexError("ERR_IO", "cannot create " + tmp_ + ": " + errno_text());
  std::vector<uint8_t> zero(kHeaderSize, 0);
  write_all(fd_, zero.data(), zero.size(), tmp_);
}

FileWriter::~FileWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

void FileWriter::section(uint32_t id, const void* data, size_t bytes) {
  if (sections_.size() >= kMaxSections) throw IndexError("ERR_IO", "too many sections");
  static const uint8_t pad[64] = {0};
  size_t aligned = (offset_ + 63) / 64 * 64;
  if (aligned > offset_) write_all(fd_, pad, aligned - offset_, tmp_);
  offset_ = aligned;
  if (bytes > 0) write_all(fd_, data, bytes, tmp_);
  sections_.push_back({id, 0, offset_, uint64_t(bytes), checksum64(data, bytes, id)});
  offset_ += bytes;
}

void FileWriter::commit() {
  std::vector<uint8_t> header(kHeaderSize, 0);
  std::memcpy(header.data(), kMagic, 8);
  uint32_t words[4] = {kFormatVersion, uint32_t(kind_), uint32_t(sections_.size()), 0};
  std::memcpy(header.data() + 8, words, sizeof(words));
  std::memcpy(header.data() + kParamsAt, params_.data(), kMaxParams * 8);
  if (!sections_.empty()) std::memcpy(header.data() + kSectionsAt, sections_.data(), sections_.size() * sizeof(SectionRef));
  uint64_t sum = checksum64(header.data(), kChecksumAt);
  std::memcpy(header.data() + kChecksumAt, &sum, 8);
  if (::pwrite(fd_, header.data(), header.size(), 0) != ssize_t(header.size())) {
    throw IndexError("ERR_IO", "cannot write header of " + tmp_ + ": " + errno_text());
  }
  if (::fsync(fd_) != 0) throw IndexError("ERR_IO", "cannot fsync " + tmp_ + ": " + errno_text());
  ::close(fd_);
  fd_ = -1;
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) {
    throw IndexError("ERR_IO", "cannot rename " + tmp_ + " to " + path_ + ": " + errno_text());
  }
  committed_ = true;
}

FileReader::FileReader(const std::string& path, FileKind kind, bool verify) : map_(MappedFile::open(path)) {
  const uint8_t* h = map_->data();
  if (map_->size() < 8 || std::memcmp(h, kMagic, 8) != 0) fail("not a funnel index file (bad magic)");
  if (map_->size() < kHeaderSize) {
    fail("truncated: " + std::to_string(map_->size()) + " bytes, the header alone needs " + std::to_string(kHeaderSize));
  }
  uint32_t words[4];
  std::memcpy(words, h + 8, sizeof(words));
  uint64_t sum;
  std::memcpy(&sum, h + kChecksumAt, 8);
  if (words[0] > kFormatVersion) {
    fail("format version " + std::to_string(words[0]) + " is newer than this build reads (" +
         std::to_string(kFormatVersion) + ")");
  }
  if (sum != checksum64(h, kChecksumAt)) fail("header checksum mismatch");
  if (words[1] != uint32_t(kind)) fail("holds another kind of index (" + std::to_string(words[1]) + ")");
  if (words[2] > kMaxSections) fail("bad section count");
  params_.resize(kMaxParams);
  std::memcpy(params_.data(), h + kParamsAt, kMaxParams * 8);
  sections_.resize(words[2]);
  if (!sections_.empty()) std::memcpy(sections_.data(), h + kSectionsAt, sections_.size() * sizeof(SectionRef));
  for (const SectionRef& s : sections_) {
    if (s.offset < kHeaderSize || s.offset > map_->size() || s.size > map_->size() - s.offset) {
      fail("truncated: section " + std::to_string(s.id) + " ends at byte " + std::to_string(s.offset + s.size) +
           " but the file has " + std::to_string(map_->size()));
    }
    if (s.offset % 64 != 0) fail("misaligned section " + std::to_string(s.id));
    if (verify && checksum64(map_->data() + s.offset, s.size, s.id) != s.checksum) {
      fail("checksum mismatch in section " + std::to_string(s.id));
    }
  }
}

const SectionRef* FileReader::find(uint32_t id) const {
  for (const SectionRef& s : sections_) {
    if (s.id == id) return &s;
  }
  fail("missing section " + std::to_string(id));
}

void FileReader::fail(const std::string& why) const {
  throw IndexError("ERR_CORRUPT_INDEX", "index file " + map_->path() + ": " + why);
}

}  // namespace funnel
