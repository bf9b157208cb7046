// IEEE 754 binary16 ("half", fp16) conversions on the host: the reference for the CUDA
// backend's __float2half_rn / __half2float, and the reader of fp16 safetensors.
#pragma once

#include <cstdint>

namespace hh {

// Round to nearest, ties to even, as __float2half_rn: subnormal halves below 2^-14,
// ±inf past 65504 (from 65520 up), NaN stays NaN (quiet, sign kept).
uint16_t float_to_half(float x);
// Exact: every half is a float.
float half_to_float(uint16_t h);

}  // namespace hh
