// MD5 (RFC 1321) and the T-FREE reduction of a digest: the 128-bit digest read as a big-endian
// integer (Python's int(md5(s).hexdigest(), 16)), modulo v.
//
// The pattern table hashes ~1.7e8 short decimal strings ("{id}_{k}_{j}", one 64-byte block
// each), so besides the general md5() there is md5_blocks(), which hashes kMd5Lanes one-block
// messages at once in SIMD lanes (AVX-512 / AVX2 / SSE2, picked at run time).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace lmk::text {

// The four state words A, B, C, D after hashing; the digest bytes are their little-endian bytes.
struct Md5State {
  uint32_t words[4];
};

Md5State md5(std::string_view message);

constexpr int kMd5Lanes = 32;
// The longest message that fits one block with its padding and length.
constexpr size_t kMd5MaxSingleBlock = 55;

// kMd5Lanes one-block messages, word-major (words[w][lane]) so that the SIMD lanes load them.
struct Md5Blocks {
  alignas(64) uint32_t words[16][kMd5Lanes] = {};

  // Puts `message` (at most kMd5MaxSingleBlock bytes), padded, in `lane`.
  void set(int lane, std::string_view message);
  // The same for a message of at most 15 bytes given already padded, as the little-endian
  // 64-bit words `low` and `high` of its bytes, then 0x80, then zeros up to 16 bytes. Inline and
  // from registers: it runs once per hash of the pattern table.
  void set_short(int lane, uint64_t low, uint64_t high, size_t size) {
    words[0][lane] = uint32_t(low);
    words[1][lane] = uint32_t(low >> 32);
    words[2][lane] = uint32_t(high);
    words[3][lane] = uint32_t(high >> 32);
    for (int w = 4; w < words_used_[lane]; ++w) words[w][lane] = 0;
    words_used_[lane] = 4;
    words[14][lane] = uint32_t(size * 8);
  }

 private:
  uint8_t words_used_[kMd5Lanes] = {};  // words before the length that may be non-zero
};

// The states of the kMd5Lanes messages, word-major (states[i][lane] is word i of lane's state).
void md5_blocks(const Md5Blocks& blocks, uint32_t states[4][kMd5Lanes]);

// The digest as a 128-bit big-endian integer, mod a fixed modulus in [1, 2^31].
class Md5Modulo {
 public:
  explicit Md5Modulo(uint32_t modulus);
  uint32_t operator()(uint32_t a, uint32_t b, uint32_t c, uint32_t d) const;
  uint32_t operator()(const Md5State& s) const { return (*this)(s.words[0], s.words[1], s.words[2], s.words[3]); }
  uint32_t modulus() const { return modulus_; }

 private:
  uint64_t mod(uint64_t x) const;

  uint32_t modulus_;
  uint64_t reciprocal_;       // floor((2^64 - 1) / modulus), for Barrett reduction
  uint64_t two_pow_32k_[4];  // 2^(32 k) mod modulus
};

}  // namespace lmk::text
