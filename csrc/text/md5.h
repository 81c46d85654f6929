// MD5 (RFC 1321) and the T-FREE reduction of a digest: the 128-bit digest read as a big-endian
// integer (Python's int(md5(s).hexdigest(), 16)), modulo v.
//
// The pattern table hashes ~1.7e8 short decimal strings ("{id}_{k}_{j}", one 64-byte block
// each), so besides the general md5() there is md5_single_blocks(), which hashes kMd5Lanes
// one-block messages at once in SIMD lanes (AVX-512 / AVX2 / SSE2, picked at run time).
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

constexpr int kMd5Lanes = 16;
// The longest message that fits one block with its padding and length.
constexpr size_t kMd5MaxSingleBlock = 55;

// Writes `message` (at most kMd5MaxSingleBlock bytes) padded into one 64-byte MD5 block.
void md5_pad_single_block(std::string_view message, uint8_t block[64]);

// The states of kMd5Lanes messages, each already padded into one block by md5_pad_single_block.
void md5_single_blocks(const uint8_t blocks[kMd5Lanes][64], Md5State states[kMd5Lanes]);

// The digest as a 128-bit big-endian integer, mod a fixed modulus in [1, 2^31].
class Md5Modulo {
 public:
  explicit Md5Modulo(uint32_t modulus);
  uint32_t operator()(const Md5State& state) const;
  uint32_t modulus() const { return modulus_; }

 private:
  uint32_t modulus_;
  uint64_t two_pow_64_mod_;  // 2^64 mod modulus
};

}  // namespace lmk::text
