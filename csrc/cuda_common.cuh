// Shared helpers of the hermes._C CUDA kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cstdint>

namespace hermes {
namespace cuda {

#define HERMES_CHECK_CUDA(t) \
  TORCH_CHECK((t).is_cuda(), __func__, ": ", #t, " must be a CUDA tensor, got ", (t).device())

constexpr int kWarp = 32;

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

inline int64_t blocks_for(int64_t n, int threads) { return (n + threads - 1) / threads; }

}  // namespace cuda
}  // namespace hermes
