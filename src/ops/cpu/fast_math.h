// exp and tanh for the CPU ops, written so that g++ -O3 -mavx2 -mfma vectorises loops
// that call them (std::exp / std::tanh stay scalar calls into libm without -ffast-math).
// Both are accurate to a few float ulps over the ranges the ops use; tests compare the
// ops against float64 PyTorch at 1e-5 relative.
#pragma once

#include <cstdint>
#include <cstring>

namespace hh::cpu {

// exp(x) by range reduction x = n·ln2 + r, |r| <= ln2/2, then a degree-6 polynomial for
// e^r (Cephes expf coefficients) and 2^n built in the exponent bits. Inputs are clamped
// to [-87.3, 88.3] (so exp of very negative x is ~1e-38, not 0: harmless in a softmax).
inline float fast_exp(float x) {
  x = x < -87.3f ? -87.3f : x;
  x = x > 88.3f ? 88.3f : x;
  // Round x·log2(e) to the nearest integer with the 1.5·2^23 trick (no call to rint).
  const float kRound = 12582912.0f;
  float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;  // ln2 split in two parts for an exact product
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &bits, sizeof(two_n));
  return p * two_n;
}

// tanh(x) as a 13/6 rational function of x (Eigen's float tanh), clamped where
// tanh(x) rounds to ±1 in float. Past the clamp the result is exactly ±1 by selection,
// not by the rational function landing on it: an FMA-contracted evaluation (nvcc's, for
// cuda/gelu.cu's copy) can miss ±1 by an ulp, and then GELU's gradient, which multiplies
// 1 − tanh² by x³, is no longer exactly 0 there.
inline float fast_tanh(float x) {
  const float kClamp = 7.90531110763549805f;
  const float saturated = x < 0.0f ? -1.0f : 1.0f;
  const bool outside = x <= -kClamp || x >= kClamp;
  x = x < -kClamp ? -kClamp : x;
  x = x > kClamp ? kClamp : x;
  float x2 = x * x;
  float p = -2.76076847742355e-16f;
  p = p * x2 + 2.00018790482477e-13f;
  p = p * x2 + -8.60467152213735e-11f;
  p = p * x2 + 5.12229709037114e-08f;
  p = p * x2 + 1.48572235717979e-05f;
  p = p * x2 + 6.37261928875436e-04f;
  p = p * x2 + 4.89352455891786e-03f;
  p = p * x;
  float q = 1.19825839466702e-06f;
  q = q * x2 + 1.18534705686654e-04f;
  q = q * x2 + 2.26843463243900e-03f;
  q = q * x2 + 4.89352518554385e-03f;
  return outside ? saturated : p / q;
}

}  // namespace hh::cpu
