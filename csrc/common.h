// Shared helpers of the hermes._C CPU kernels: a vectorisable exp and row reductions (the input
// checks of each op are in csrc/<op>/<op>_checks.h, shared with its CUDA kernels).
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace hermes {

// exp(x) for x <= 0 in float, branch-free so that GCC vectorises the loops that call it
// (Cephes expf polynomial, max relative error about 2 ulp); exactly 0 below -87.3 (and for -inf).
inline float exp_nonpos(float x) {
  const float xc = x < -87.3f ? -87.3f : x;
  // Round to nearest with the 1.5 * 2^23 trick (floor would call libm and stop vectorisation).
  const float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < -87.3f ? 0.0f : p * scale;
}

inline double exp_nonpos(double x) { return std::exp(x); }

// Hot row loops are compiled for AVX2 + FMA and for the baseline, chosen at load time (GCC
// function multiversioning), so that the extension stays portable without -march flags.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define HERMES_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define HERMES_TARGET_CLONES
#endif

// max_j row[j] (-inf for an empty row).
template <typename scalar_t>
HERMES_TARGET_CLONES scalar_t row_max(const scalar_t* row, int64_t n) {
  scalar_t m = -std::numeric_limits<scalar_t>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = row[j] > m ? row[j] : m;
  return m;
}

// sum_j exp(row[j] - shift), for shift >= max_j row[j].
template <typename scalar_t>
HERMES_TARGET_CLONES scalar_t row_sum_exp(const scalar_t* row, int64_t n, scalar_t shift) {
  scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += exp_nonpos(row[j] - shift);
  return acc;
}

// row[j] = coef * exp(row[j] - shift), in place, for shift >= max_j row[j].
template <typename scalar_t>
HERMES_TARGET_CLONES void row_scaled_exp(scalar_t* row, int64_t n, scalar_t shift, scalar_t coef) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) row[j] = coef * exp_nonpos(row[j] - shift);
}

}  // namespace hermes
