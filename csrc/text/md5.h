// MD5 (RFC 1321) and the T-FREE reduction of a digest: the 128-bit digest read as a big-endian
// integer (Python's int(md5(s).hexdigest(), 16)), modulo v.
//
// The pattern table hashes ~1.7e8 short decimal strings ("{id}_{k}_0", one 64-byte block each),
// so besides the general md5() there is md5_blocks(), which hashes kMd5Lanes such messages at
// once in SIMD lanes (AVX-512 / AVX2 / SSE2, picked at run time).
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

// kMd5Lanes messages of at most 15 bytes, each padded into one block, word-major
// (words[w][lane]) so that the SIMD lanes load them. Words 4-13 and 15 stay zero.
struct Md5Blocks {
  alignas(64) uint32_t words[16][kMd5Lanes] = {};

  // Puts a message of `size` <= 15 bytes in `lane`, given as the little-endian 64-bit words `low`
  // and `high` of its bytes followed by 0x80 and zeros. Inline and from registers: it runs once
  // per hash of the pattern table.
  void set(int lane, uint64_t low, uint64_t high, size_t size) {
    words[0][lane] = uint32_t(low);
    words[1][lane] = uint32_t(low >> 32);
    words[2][lane] = uint32_t(high);
    words[3][lane] = uint32_t(high >> 32);
    words[14][lane] = uint32_t(size * 8);
  }
};

// The states of the kMd5Lanes messages, word-major (states[i][lane] is word i of lane's state).
void md5_blocks(const Md5Blocks& blocks, uint32_t states[4][kMd5Lanes]);

// The digest as a 128-bit big-endian integer, mod a fixed modulus in [1, 2^31].
class Md5Modulo {
 public:
  explicit Md5Modulo(uint32_t modulus);
  uint32_t operator()(uint32_t a, uint32_t b, uint32_t c, uint32_t d) const;
  uint32_t operator()(const Md5State& s) const { return (*this)(s.words[0], s.words[1], s.words[2], s.words[3]); }

 private:
  uint64_t mod(uint64_t x) const;

  uint32_t modulus_;
  uint64_t reciprocal_;       // floor((2^64 - 1) / modulus), for Barrett reduction
  uint64_t two_pow_32k_[4];  // 2^(32 k) mod modulus
};

}  // namespace lmk::text
