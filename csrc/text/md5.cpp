// MD5 after RFC 1321, written once as a template over the word type so that the scalar path and
// the SIMD lanes (GCC vector extensions) run the same steps.
#include "text/md5.h"

#include <cstring>

#include "common/simd.h"

namespace lmk::text {
namespace {

constexpr uint32_t kInitial[4] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u};

// K[i] = floor(2^32 * |sin(i + 1)|).
constexpr uint32_t kSines[64] = {
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391};

constexpr int kShifts[4][4] = {{7, 12, 17, 22}, {5, 9, 14, 20}, {4, 11, 16, 23}, {6, 10, 15, 21}};

// Message word used by step i of each round.
constexpr int message_index(int i) {
  return i < 16 ? i : i < 32 ? (5 * i + 1) % 16 : i < 48 ? (3 * i + 5) % 16 : (7 * i) % 16;
}

// One 64-byte block into `state`. Word is uint32_t or a GCC vector of uint32_t (one message per lane).
template <typename Word>
__attribute__((always_inline)) inline void compress(Word state[4], const Word m[16]) {
  Word a = state[0], b = state[1], c = state[2], d = state[3];
#pragma GCC unroll 64
  for (int i = 0; i < 64; ++i) {
    Word f;
    if (i < 16) f = d ^ (b & (c ^ d));
    else if (i < 32) f = c ^ (d & (b ^ c));
    else if (i < 48) f = b ^ c ^ d;
    else f = c ^ (b | ~d);
    f = f + a + kSines[i] + m[message_index(i)];
    const int s = kShifts[i / 16][i % 4];
    a = d;
    d = c;
    c = b;
    b = b + ((f << s) | (f >> (32 - s)));
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
}

uint32_t load_le32(const uint8_t* p) {
  uint32_t w;
  std::memcpy(&w, p, 4);  // MD5 words are little-endian, as is every CPU this builds for
  return w;
}

void compress_bytes(uint32_t state[4], const uint8_t block[64]) {
  uint32_t m[16];
  for (int w = 0; w < 16; ++w) m[w] = load_le32(block + 4 * w);
  compress(state, m);
}

typedef uint32_t Lanes __attribute__((vector_size(4 * kMd5Lanes)));

}  // namespace

Md5State md5(std::string_view message) {
  uint32_t state[4] = {kInitial[0], kInitial[1], kInitial[2], kInitial[3]};
  const auto* bytes = reinterpret_cast<const uint8_t*>(message.data());
  size_t whole = message.size() / 64 * 64;
  for (size_t offset = 0; offset < whole; offset += 64) compress_bytes(state, bytes + offset);

  // The tail, 0x80, zeros, and the bit length (little-endian) fill one or two last blocks.
  uint8_t tail[128] = {};
  const size_t rest = message.size() - whole;
  if (rest) std::memcpy(tail, bytes + whole, rest);
  tail[rest] = 0x80;
  const size_t tail_size = rest < 56 ? 64 : 128;
  const uint64_t bits = uint64_t(message.size()) * 8;
  for (int i = 0; i < 8; ++i) tail[tail_size - 8 + i] = uint8_t(bits >> (8 * i));
  for (size_t offset = 0; offset < tail_size; offset += 64) compress_bytes(state, tail + offset);
  return Md5State{{state[0], state[1], state[2], state[3]}};
}

LMK_SIMD_CLONES
void md5_blocks(const Md5Blocks& blocks, uint32_t states[4][kMd5Lanes]) {
  // Lanes are wider than the machine's vectors: the compiler splits each operation into
  // independent vector operations, which hides the latency of MD5's serial chain of steps.
  Lanes m[16];
  for (int w = 0; w < 16; ++w) std::memcpy(&m[w], blocks.words[w], sizeof(Lanes));
  Lanes state[4];
  for (int i = 0; i < 4; ++i) state[i] = Lanes{} + kInitial[i];
  compress(state, m);
  for (int i = 0; i < 4; ++i) std::memcpy(states[i], &state[i], sizeof(Lanes));
}

Md5Modulo::Md5Modulo(uint32_t modulus) : modulus_(modulus), reciprocal_(~uint64_t(0) / modulus) {
  two_pow_32k_[0] = 1 % modulus;
  for (int k = 1; k < 4; ++k) two_pow_32k_[k] = (two_pow_32k_[k - 1] << 32) % modulus;
}

uint64_t Md5Modulo::mod(uint64_t x) const {
  // Barrett: the quotient estimate floor(x * reciprocal / 2^64) falls short of floor(x / d) by at
  // most 2, so the remainder estimate lies in [0, 3d) (below 2^33, as d <= 2^31).
  uint64_t r = x - uint64_t((unsigned __int128)x * reciprocal_ >> 64) * modulus_;
  if (r >= modulus_) r -= modulus_;
  if (r >= modulus_) r -= modulus_;
  return r;
}

uint32_t Md5Modulo::operator()(uint32_t a, uint32_t b, uint32_t c, uint32_t d) const {
  // The digest bytes are A, B, C, D little-endian, so read big-endian the 128-bit integer is
  // w0 2^96 + w1 2^64 + w2 2^32 + w3 with w = bswap(A, B, C, D). Each product below is under
  // 2^63, so both partial sums fit 64 bits.
  const uint64_t w0 = __builtin_bswap32(a), w1 = __builtin_bswap32(b), w2 = __builtin_bswap32(c),
                 w3 = __builtin_bswap32(d);
  const uint64_t low = mod(w2 * two_pow_32k_[1] + w3);
  const uint64_t high = mod(w0 * two_pow_32k_[3] + w1 * two_pow_32k_[2]);
  const uint64_t sum = low + high;
  return uint32_t(sum >= modulus_ ? sum - modulus_ : sum);
}

}  // namespace lmk::text
