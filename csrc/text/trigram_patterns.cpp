// The T-FREE pattern table. A row is drawn as in the official code:
//
//   for k in 0..m-1: j = 0, 1, ... until x = md5("{id}_{k}_{j}") mod v is new to the row; insert x
//   sort the row; then, when k_lowercase > 0 and the trigram is a mixed-case pattern over
//   [A-Za-z ], its last k_lowercase entries become those of its lowercase pattern's row.
//
// Rows live in one lazily zero-filled mapping of 2^24 rows (uint16 when v <= 65536, else int32)
// with one state byte per row: empty -> claimed -> ready. Whoever computes a row claims it, writes
// it and publishes it with a release store; a reader that finds a row not ready computes it into
// its own output, so nobody ever waits.
#include "text/trigram_patterns.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "common/errors.h"
#include "common/memory.h"
#include "common/parallel.h"
#include "text/md5.h"
#include "text/tfree_lowercase.h"

namespace lmk::text {
namespace {

constexpr int64_t kMaxVocab = int64_t(1) << 31;
constexpr int kMaxM = 64;
constexpr int64_t kMaxNarrowVocab = 65536;  // rows fit uint16
constexpr uint8_t kEmpty = 0, kClaimed = 1, kReady = 2;

// A private anonymous mapping: zero pages on first touch, so an untouched table costs nothing.
class ZeroMapping {
 public:
  explicit ZeroMapping(size_t bytes) : bytes_(bytes) {
    data_ = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (data_ == MAP_FAILED) fail(ErrorKind::Runtime, "pattern table: cannot map ", bytes, " bytes");
    // Lookups land anywhere in hundreds of megabytes: 2 MiB pages spare a TLB miss per lookup.
    advise_huge_pages(data_, bytes);
  }
  ~ZeroMapping() { munmap(data_, bytes_); }
  ZeroMapping(const ZeroMapping&) = delete;
  ZeroMapping& operator=(const ZeroMapping&) = delete;
  template <typename T>
  T* as() const { return static_cast<T*>(data_); }

 private:
  void* data_;
  size_t bytes_;
};

// Decimal digits of `value` at `out`; returns the end.
char* write_decimal(char* out, uint64_t value) {
  char digits[20];
  int n = 0;
  do {
    digits[n++] = char('0' + value % 10);
    value /= 10;
  } while (value);
  while (n) *out++ = digits[--n];
  return out;
}

bool is_ascii_letter_or_space(uint32_t byte) {
  return byte == 0x20 || (byte >= 'A' && byte <= 'Z') || (byte >= 'a' && byte <= 'z');
}

// The id of the lowercase pattern whose last entries replace this trigram's, or `id` itself
// when the trigram is not a mixed-case pattern over [A-Za-z ].
uint32_t lowercase_source(uint32_t id) {
  uint32_t lower = 0;
  for (int i = 0; i < 3; ++i) {
    const uint32_t byte = (id >> (8 * i)) & 0xFFu;
    if (!is_ascii_letter_or_space(byte)) return id;
    lower |= (byte == 0x20 ? byte : byte | 0x20u) << (8 * i);
  }
  return lower;
}

// Python's str.lower() of a UTF-8 word (see scripts/gen_tfree_lowercase.py).
class PythonLowercase {
 public:
  static std::string apply(std::string_view word) {
    if (std::all_of(word.begin(), word.end(), [](char c) { return uint8_t(c) < 0x80; })) {
      std::string lower(word);
      for (char& c : lower)
        if (c >= 'A' && c <= 'Z') c = char(c | 0x20);
      return lower;
    }
    const std::vector<uint32_t> points = decode(word);
    std::string lower;
    lower.reserve(word.size() + 2);
    for (size_t i = 0; i < points.size(); ++i) {
      const uint32_t c = points[i];
      if (c == kCapitalSigma) {
        encode(lower, final_sigma(points, i) ? 0x3C2 : 0x3C3);
      } else if (c == lowercase::kDottedCapitalI) {
        encode(lower, 'i');
        encode(lower, 0x307);
      } else {
        encode(lower, map(c));
      }
    }
    return lower;
  }

 private:
  static constexpr uint32_t kCapitalSigma = 0x3A3;

  static uint32_t map(uint32_t c) {
    const auto* end = std::end(lowercase::kMappings);
    const auto* it = std::lower_bound(std::begin(lowercase::kMappings), end, c,
                                      [](const lowercase::Mapping& m, uint32_t x) { return m.code_point < x; });
    return it != end && it->code_point == c ? it->lower : c;
  }

  static uint8_t sigma_class(uint32_t c) {
    const auto* end = std::end(lowercase::kSigmaClasses);
    const auto* it = std::lower_bound(std::begin(lowercase::kSigmaClasses), end, c,
                                      [](const lowercase::ClassRange& r, uint32_t x) { return r.last < x; });
    return it != end && it->first <= c ? it->sigma_class : 0;
  }

  // CPython's Final_Sigma test: cased case-ignorable* SIGMA, not followed by case-ignorable* cased.
  static bool final_sigma(const std::vector<uint32_t>& points, size_t at) {
    size_t j = at;
    while (j > 0 && sigma_class(points[j - 1]) == lowercase::kCaseIgnorable) --j;
    if (j == 0 || sigma_class(points[j - 1]) != lowercase::kCased) return false;
    j = at + 1;
    while (j < points.size() && sigma_class(points[j]) == lowercase::kCaseIgnorable) ++j;
    return j == points.size() || sigma_class(points[j]) != lowercase::kCased;
  }

  static std::vector<uint32_t> decode(std::string_view s) {
    std::vector<uint32_t> points;
    points.reserve(s.size());
    for (size_t i = 0; i < s.size();) {
      const uint8_t lead = uint8_t(s[i]);
      int extra;
      uint32_t c, min;
      if (lead < 0x80) extra = 0, c = lead, min = 0;
      else if (lead >= 0xC2 && lead < 0xE0) extra = 1, c = lead & 0x1Fu, min = 0x80;
      else if (lead >= 0xE0 && lead < 0xF0) extra = 2, c = lead & 0x0Fu, min = 0x800;
      else if (lead >= 0xF0 && lead < 0xF5) extra = 3, c = lead & 0x07u, min = 0x10000;
      else fail(ErrorKind::Value, "word: invalid UTF-8 byte 0x", std::hex, int(lead), " at offset ", std::dec, i);
      if (i + extra >= s.size()) fail(ErrorKind::Value, "word: truncated UTF-8 sequence at offset ", i);
      for (int k = 1; k <= extra; ++k) {
        const uint8_t next = uint8_t(s[i + k]);
        if ((next & 0xC0u) != 0x80u) fail(ErrorKind::Value, "word: invalid UTF-8 continuation at offset ", i + k);
        c = c << 6 | (next & 0x3Fu);
      }
      if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
        fail(ErrorKind::Value, "word: invalid UTF-8 sequence at offset ", i);
      points.push_back(c);
      i += extra + 1;
    }
    return points;
  }

  static void encode(std::string& out, uint32_t c) {
    if (c < 0x80) {
      out += char(c);
    } else if (c < 0x800) {
      out += char(0xC0 | c >> 6);
      out += char(0x80 | (c & 0x3F));
    } else if (c < 0x10000) {
      out += char(0xE0 | c >> 12);
      out += char(0x80 | (c >> 6 & 0x3F));
      out += char(0x80 | (c & 0x3F));
    } else {
      out += char(0xF0 | c >> 18);
      out += char(0x80 | (c >> 12 & 0x3F));
      out += char(0x80 | (c >> 6 & 0x3F));
      out += char(0x80 | (c & 0x3F));
    }
  }
};

// Draws rows (sorted, before the lowercase surgery) for up to kBlockRows ids at a time: every
// first draw md5("{id}_{k}_0") goes through the SIMD lanes; the rare retries are hashed singly.
class RowDrawer {
 public:
  static constexpr int kBlockRows = 64;

  RowDrawer(const PatternConfig& config, const Md5Modulo& modulo) : m_(config.m), modulo_(modulo) {}

  void draw(const uint32_t* ids, int n, int32_t* rows) {
    int pending = 0;
    for (int r = 0; r < n; ++r) {
      // "{id}_" is at most 9 bytes and "{k}_0" at most 4, so each message and its 0x80 fit 16
      // bytes, built in a 128-bit integer (byte stores read back as words would stall).
      char digits[16];
      char* digits_end = write_decimal(digits, ids[r]);
      *digits_end++ = '_';
      const int prefix_size = int(digits_end - digits);
      unsigned __int128 prefix = 0;
      for (int i = 0; i < prefix_size; ++i) prefix |= (unsigned __int128)uint8_t(digits[i]) << (8 * i);
      for (int k = 0; k < m_; ++k) {
        // "{k}_0" then 0x80, little-endian
        const uint64_t suffix = k < 10 ? uint64_t('0' + k) | uint64_t('_') << 8 | uint64_t('0') << 16 | 0x80ull << 24
                                       : uint64_t('0' + k / 10) | uint64_t('0' + k % 10) << 8 | uint64_t('_') << 16 |
                                             uint64_t('0') << 24 | 0x80ull << 32;
        const int size = prefix_size + (k < 10 ? 3 : 4);
        const unsigned __int128 message = prefix | (unsigned __int128)suffix << (8 * prefix_size);
        blocks_.set(pending, uint64_t(message), uint64_t(message >> 64), size_t(size));
        targets_[pending++] = rows + int64_t(r) * m_ + k;
        if (pending == kMd5Lanes) flush(pending);
      }
    }
    if (pending) flush(pending);
    for (int r = 0; r < n; ++r) resolve(ids[r], rows + int64_t(r) * m_);
  }

 private:
  void flush(int& pending) {
    alignas(64) uint32_t states[4][kMd5Lanes];
    md5_blocks(blocks_, states);
    for (int lane = 0; lane < pending; ++lane)
      *targets_[lane] = int32_t(modulo_(states[0][lane], states[1][lane], states[2][lane], states[3][lane]));
    pending = 0;
  }

  // row[k] holds draw j = 0 of each k; redraw collisions in k order, then sort. The values are
  // distinct, so each one's place is the count of smaller ones (no data-dependent branches,
  // which on random rows mispredict about twice per element in an insertion sort).
  void resolve(uint32_t id, int32_t* row) {
    for (int k = 1; k < m_; ++k) {
      for (uint32_t j = 1; std::find(row, row + k, row[k]) != row + k; ++j) {
        char message[48];
        char* end = write_decimal(message, id);
        *end++ = '_';
        end = write_decimal(end, k);
        *end++ = '_';
        end = write_decimal(end, j);
        row[k] = int32_t(modulo_(md5(std::string_view(message, size_t(end - message)))));
      }
    }
    int32_t drawn[kMaxM];
    std::copy_n(row, m_, drawn);
    for (int i = 0; i < m_; ++i) {
      int place = 0;
      for (int j = 0; j < m_; ++j) place += drawn[j] < drawn[i];
      row[place] = drawn[i];
    }
  }

  int m_;
  const Md5Modulo& modulo_;
  Md5Blocks blocks_;
  int32_t* targets_[kMd5Lanes];
};

}  // namespace

void check_config(const PatternConfig& config) {
  if (config.m < 1 || config.m > kMaxM)
    fail(ErrorKind::Value, "m: expected indices per trigram in [1, ", kMaxM, "], got ", config.m);
  if (config.k_lowercase < 0 || config.k_lowercase > config.m)
    fail(ErrorKind::Value, "k_lowercase: expected a value in [0, m = ", config.m, "], got ", config.k_lowercase);
  if (config.vocab_size < config.m || config.vocab_size > kMaxVocab)
    fail(ErrorKind::Value, "vocab_size: expected a value in [m = ", config.m, ", 2^31], got ", config.vocab_size);
}

void word_trigrams(std::string_view word, std::vector<uint32_t>& ids) {
  ids.clear();
  const size_t n = word.size();
  auto padded = [&](size_t i) -> uint32_t { return i == 0 || i == n + 1 ? 0x20u : uint8_t(word[i - 1]); };
  for (size_t i = 0; i < n; ++i) ids.push_back(padded(i) | padded(i + 1) << 8 | padded(i + 2) << 16);
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
}

struct PatternTable::Storage {
  explicit Storage(const PatternConfig& config)
      : m(config.m),
        narrow(config.vocab_size <= kMaxNarrowVocab),
        values(size_t(kTrigramIds) * size_t(config.m) * (narrow ? 2 : 4)),
        states(kTrigramIds),
        modulo(uint32_t(config.vocab_size)),
        config(config) {}

  uint8_t state(uint32_t id) const { return __atomic_load_n(states.as<uint8_t>() + id, __ATOMIC_ACQUIRE); }

  void read(uint32_t id, int32_t* out) const {
    const size_t at = size_t(id) * size_t(m);
    if (narrow) std::copy_n(values.as<uint16_t>() + at, m, out);
    else std::copy_n(values.as<int32_t>() + at, m, out);
  }

  void write(uint32_t id, const int32_t* row) {
    const size_t at = size_t(id) * size_t(m);
    if (narrow) std::transform(row, row + m, values.as<uint16_t>() + at, [](int32_t x) { return uint16_t(x); });
    else std::copy_n(row, m, values.as<int32_t>() + at);
  }

  // Stores a computed row unless another thread already claimed it; true if stored. The caller
  // adds the stored rows to `computed` once per block (a shared counter per row would bounce
  // its cache line between the threads).
  bool publish(uint32_t id, const int32_t* row) {
    uint8_t expected = kEmpty;
    if (!__atomic_compare_exchange_n(states.as<uint8_t>() + id, &expected, kClaimed, false, __ATOMIC_ACQUIRE,
                                     __ATOMIC_RELAXED))
      return false;
    write(id, row);
    __atomic_store_n(states.as<uint8_t>() + id, kReady, __ATOMIC_RELEASE);
    return true;
  }

  // Rows of `ids` (sorted draws and the lowercase surgery) into rows[n * m].
  void compute(RowDrawer& drawer, const uint32_t* ids, int n, int32_t* rows) {
    drawer.draw(ids, n, rows);
    const int k = config.k_lowercase;
    if (k == 0) return;
    for (int r = 0; r < n; ++r) {
      const uint32_t source = lowercase_source(ids[r]);
      if (source == ids[r]) continue;
      int32_t lower_row[kMaxM];
      if (state(source) == kReady) read(source, lower_row);
      else drawer.draw(&source, 1, lower_row);
      std::copy_n(lower_row + m - k, k, rows + int64_t(r) * m + m - k);
    }
  }

  // Rows of up to kBlockRows ids: ready ones are read, missing ones computed together and
  // published; all are written to rows[n * m] unless rows is null.
  void fill(RowDrawer& drawer, const uint32_t* ids, int n, int32_t* rows) {
    uint32_t missing[RowDrawer::kBlockRows];
    int positions[RowDrawer::kBlockRows];
    int n_missing = 0;
    // Every lookup is a likely cache miss: issue them all before waiting on the first.
    for (int i = 0; i < n; ++i) {
      __builtin_prefetch(states.as<uint8_t>() + ids[i]);
      __builtin_prefetch(values.as<char>() + size_t(ids[i]) * size_t(m) * (narrow ? 2 : 4));
    }
    for (int i = 0; i < n; ++i) {
      if (state(ids[i]) != kReady) {
        missing[n_missing] = ids[i];
        positions[n_missing++] = i;
      } else if (rows) {
        read(ids[i], rows + int64_t(i) * m);
      }
    }
    if (n_missing == 0) return;
    int32_t drawn[RowDrawer::kBlockRows * kMaxM];
    compute(drawer, missing, n_missing, drawn);
    int stored = 0;
    for (int r = 0; r < n_missing; ++r) {
      stored += publish(missing[r], drawn + r * m);
      if (rows) std::copy_n(drawn + r * m, m, rows + int64_t(positions[r]) * m);
    }
    computed.fetch_add(stored, std::memory_order_relaxed);
  }

  int m;
  bool narrow;
  ZeroMapping values;
  ZeroMapping states;
  Md5Modulo modulo;
  PatternConfig config;
  std::atomic<int64_t> computed{0};
};

PatternTable::PatternTable(const PatternConfig& config) : config_(config), storage_(nullptr) {
  check_config(config);
  storage_ = new Storage(config);
}

PatternTable::~PatternTable() { delete storage_; }

void PatternTable::row(uint32_t id, int32_t* out) {
  if (id >= kTrigramIds) fail(ErrorKind::Index, "id: expected a trigram id below 2^24, got ", id);
  if (storage_->state(id) == kReady) return storage_->read(id, out);
  RowDrawer drawer(config_, storage_->modulo);
  storage_->fill(drawer, &id, 1, out);
}

void PatternTable::hashed_word(std::string_view word, int32_t* out) const {
  const Md5Modulo& modulo = storage_->modulo;
  const int cased = config_.m - config_.k_lowercase;
  std::string message;
  for (int i = 0; i < cased; ++i) {
    message.assign(word);
    message += '_';
    message += std::to_string(i);
    out[i] = int32_t(modulo(md5(message)));
  }
  if (config_.k_lowercase == 0) return;
  const std::string lower = PythonLowercase::apply(word);
  for (int i = 0; i < config_.k_lowercase; ++i) {
    message.assign(lower);
    message += "_lower_";
    message += std::to_string(i);
    out[cased + i] = int32_t(modulo(md5(message)));
  }
}

void PatternTable::rows(const uint32_t* ids, int64_t n, int32_t* out) {
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] >= kTrigramIds) fail(ErrorKind::Index, "ids: expected trigram ids below 2^24, got ", ids[i]);
  const int m = config_.m;
  parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    RowDrawer drawer(config_, storage_->modulo);
    for (int64_t block = begin; block < end; block += RowDrawer::kBlockRows)
      storage_->fill(drawer, ids + block, int(std::min<int64_t>(end - block, RowDrawer::kBlockRows)), out + block * m);
  });
}

void PatternTable::precompute() {
  parallel_for(0, kTrigramIds, 1 << 14, [&](int64_t begin, int64_t end) {
    RowDrawer drawer(config_, storage_->modulo);
    uint32_t ids[RowDrawer::kBlockRows];
    for (int64_t block = begin; block < end; block += RowDrawer::kBlockRows) {
      const int n = int(std::min<int64_t>(end - block, RowDrawer::kBlockRows));
      for (int i = 0; i < n; ++i) ids[i] = uint32_t(block + i);
      storage_->fill(drawer, ids, n, nullptr);
    }
  });
}

int64_t PatternTable::rows_computed() const { return storage_->computed.load(std::memory_order_relaxed); }

// ---- file format -------------------------------------------------------------------------------
// Header (little-endian): magic "LMKTFPT\0", u32 version, u32 m, i64 vocab_size, u32 k_lowercase,
// u32 bytes per index, u64 rows computed; then a bitmap of 2^24 bits (bit id % 8 of byte id / 8:
// row computed); then the computed rows in ascending id order, m indices each.

namespace {

constexpr char kMagic[8] = {'L', 'M', 'K', 'T', 'F', 'P', 'T', '\0'};
constexpr uint32_t kVersion = 1;
constexpr size_t kBitmapBytes = kTrigramIds / 8;

struct FileHeader {
  char magic[8];
  uint32_t version;
  uint32_t m;
  int64_t vocab_size;
  uint32_t k_lowercase;
  uint32_t index_bytes;
  uint64_t rows;
};
static_assert(sizeof(FileHeader) == 40, "the header has no padding");

struct FileCloser {
  void operator()(std::FILE* f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

File open_file(const std::string& path, const char* mode) {
  if (path.find('\0') != std::string::npos) fail(ErrorKind::Value, "path: expected no NUL character");
  File file(std::fopen(path.c_str(), mode));
  if (!file) fail(ErrorKind::Runtime, "path: cannot open '", path, "' (", std::strerror(errno), ")");
  return file;
}

}  // namespace

void PatternTable::save(const std::string& path) const {
  const Storage& storage = *storage_;
  std::vector<uint8_t> bitmap(kBitmapBytes, 0);
  std::vector<uint32_t> ids;
  for (uint32_t id = 0; id < kTrigramIds; ++id)
    if (storage.state(id) == kReady) {
      bitmap[id / 8] |= uint8_t(1u << (id % 8));
      ids.push_back(id);
    }
  FileHeader header{};
  std::memcpy(header.magic, kMagic, sizeof(kMagic));
  header.version = kVersion;
  header.m = uint32_t(config_.m);
  header.vocab_size = config_.vocab_size;
  header.k_lowercase = uint32_t(config_.k_lowercase);
  header.index_bytes = storage.narrow ? 2 : 4;
  header.rows = ids.size();

  File file = open_file(path, "wb");
  bool ok = std::fwrite(&header, sizeof(header), 1, file.get()) == 1 &&
            std::fwrite(bitmap.data(), 1, bitmap.size(), file.get()) == bitmap.size();
  const size_t row_bytes = size_t(config_.m) * header.index_bytes;
  std::vector<uint8_t> chunk;
  for (size_t begin = 0; ok && begin < ids.size(); begin += 4096) {
    const size_t end = std::min(ids.size(), begin + 4096);
    chunk.resize((end - begin) * row_bytes);
    for (size_t i = begin; i < end; ++i)
      std::memcpy(chunk.data() + (i - begin) * row_bytes,
                  storage.values.as<uint8_t>() + size_t(ids[i]) * row_bytes, row_bytes);
    ok = std::fwrite(chunk.data(), 1, chunk.size(), file.get()) == chunk.size();
  }
  if (!ok || std::fflush(file.get()) != 0)
    fail(ErrorKind::Runtime, "path: cannot write '", path, "' (", std::strerror(errno), ")");
}

PatternTable* PatternTable::load(const std::string& path) {
  File file = open_file(path, "rb");
  FileHeader header{};
  if (std::fread(&header, sizeof(header), 1, file.get()) != 1)
    fail(ErrorKind::Value, "path: '", path, "' is too short for a pattern table header");
  if (std::memcmp(header.magic, kMagic, sizeof(kMagic)) != 0)
    fail(ErrorKind::Value, "path: '", path, "' is not an lmkernels pattern table (bad magic)");
  if (header.version != kVersion)
    fail(ErrorKind::Value, "path: '", path, "' has format version ", header.version, ", expected ", kVersion);
  const PatternConfig config{header.vocab_size, int(std::min(header.m, uint32_t(kMaxM + 1))),
                             int(std::min(header.k_lowercase, uint32_t(kMaxM + 1)))};
  try {
    check_config(config);
  } catch (const Error& e) {
    fail(ErrorKind::Value, "path: '", path, "' holds a bad config (", e.what(), ")");
  }
  auto table = std::make_unique<PatternTable>(config);
  Storage& storage = *table->storage_;
  const uint32_t index_bytes = storage.narrow ? 2 : 4;
  if (header.index_bytes != index_bytes || header.rows > kTrigramIds)
    fail(ErrorKind::Value, "path: '", path, "' has a corrupt header (", header.index_bytes, " bytes per index, ",
         header.rows, " rows)");

  std::vector<uint8_t> bitmap(kBitmapBytes);
  if (std::fread(bitmap.data(), 1, bitmap.size(), file.get()) != bitmap.size())
    fail(ErrorKind::Value, "path: '", path, "' is truncated (in the row bitmap)");
  uint64_t marked = 0;
  for (uint8_t byte : bitmap) marked += uint64_t(__builtin_popcount(byte));
  if (marked != header.rows)
    fail(ErrorKind::Value, "path: '", path, "' is corrupt: the bitmap marks ", marked, " rows, the header says ",
         header.rows);

  const int m = config.m;
  const size_t row_bytes = size_t(m) * index_bytes;
  std::vector<uint8_t> row_bytes_buffer(row_bytes);
  int32_t row[kMaxM];
  for (uint32_t id = 0; id < kTrigramIds; ++id) {
    if (!(bitmap[id / 8] >> (id % 8) & 1u)) continue;
    if (std::fread(row_bytes_buffer.data(), 1, row_bytes, file.get()) != row_bytes)
      fail(ErrorKind::Value, "path: '", path, "' is truncated (in the rows)");
    for (int i = 0; i < m; ++i) {
      if (index_bytes == 2) {
        uint16_t x;
        std::memcpy(&x, row_bytes_buffer.data() + 2 * i, 2);
        row[i] = x;
      } else {
        std::memcpy(&row[i], row_bytes_buffer.data() + 4 * i, 4);
      }
      if (row[i] < 0 || row[i] >= config.vocab_size)
        fail(ErrorKind::Value, "path: '", path, "' is corrupt: row ", id, " holds index ", row[i],
             " outside [0, vocab_size = ", config.vocab_size, ")");
    }
    storage.computed += storage.publish(id, row);
  }
  if (std::fgetc(file.get()) != EOF)
    fail(ErrorKind::Value, "path: '", path, "' is corrupt: data after the last row");
  return table.release();
}

}  // namespace lmk::text
