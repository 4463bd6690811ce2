// Dual-threshold pseudo-labels on CUDA: pass 1 (one thread per entry, the class loop reads the
// logits coalesced across entries; histogram in shared memory, merged with atomics) and pass 2
// (thresholds and eta read from device memory: no host synchronisation). Semantics as the CPU
// kernels (csrc/dual_threshold/dual_threshold_cpu.cpp); any float dtype, computed in fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../cuda_common.cuh"
#include "dual_threshold_checks.h"

namespace hermes {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxSharedClasses = 1024;  // above: counters go straight to global memory
constexpr float kEntropyEps = 1e-6f;

using ull = unsigned long long;

template <typename scalar_t>
__global__ void pass1_kernel(const scalar_t* __restrict__ x, const bool* __restrict__ valid,
                             int64_t batch, int64_t classes, int64_t positions,
                             int64_t* __restrict__ labels, float* __restrict__ confidence,
                             float* __restrict__ entropy, bool* __restrict__ ok,
                             int64_t* __restrict__ histogram) {
  extern __shared__ ull shared_hist[];
  const bool use_shared = classes <= kMaxSharedClasses;
  if (use_shared) {
    for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) shared_hist[c] = 0;
    __syncthreads();
  }
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e < batch * positions) {
    const int64_t b = e / positions, p = e % positions;
    const scalar_t* xe = x + b * classes * positions + p;
    float mx = -INFINITY;
    int64_t arg = 0;
    bool finite = true;
    for (int64_t c = 0; c < classes; ++c) {
      const float v = static_cast<float>(xe[c * positions]);
      finite = finite && isfinite(v);
      if (v > mx) {
        mx = v;
        arg = c;
      }
    }
    float sum = 0;
    for (int64_t c = 0; c < classes; ++c) sum += expf(static_cast<float>(xe[c * positions]) - mx);
    float ent = 0;
    for (int64_t c = 0; c < classes; ++c) {
      const float pc = expf(static_cast<float>(xe[c * positions]) - mx) / sum;
      ent -= pc * logf(pc + kEntropyEps);
    }
    const bool take = finite && (valid == nullptr || valid[e]);
    labels[e] = finite ? arg : 0;
    confidence[e] = finite ? 1.0f / sum : NAN;
    entropy[e] = finite ? ent : NAN;
    ok[e] = take;
    if (take) {
      if (use_shared) {
        atomicAdd(&shared_hist[arg], ull(1));
      } else {
        atomicAdd(reinterpret_cast<ull*>(histogram + arg), ull(1));
      }
    }
  }
  if (use_shared) {
    __syncthreads();
    for (int64_t c = threadIdx.x; c < classes; c += blockDim.x) {
      if (shared_hist[c] > 0) atomicAdd(reinterpret_cast<ull*>(histogram + c), shared_hist[c]);
    }
  }
}

__global__ void pass2_kernel(const int64_t* __restrict__ labels,
                             const float* __restrict__ confidence,
                             const float* __restrict__ entropy, const bool* __restrict__ ok,
                             const float* __restrict__ thresholds, const float* __restrict__ eta,
                             int64_t n, int64_t classes, bool* __restrict__ reliable,
                             int64_t* __restrict__ kept, float* __restrict__ sums) {
  extern __shared__ ull shared_kept[];  // (3, classes)
  const bool use_shared = classes <= kMaxSharedClasses;
  if (use_shared) {
    for (int64_t c = threadIdx.x; c < 3 * classes; c += blockDim.x) shared_kept[c] = 0;
    __syncthreads();
  }
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  float conf_sum = 0, ent_sum = 0;
  if (e < n) {
    const int64_t c = labels[e];
    const bool confident = confidence[e] > thresholds[c];
    const bool certain = entropy[e] < eta[0];
    const bool take = ok[e];
    reliable[e] = confident && certain && take;
    if (take) {
      conf_sum = confidence[e];
      ent_sum = entropy[e];
      const ull hits[3] = {ull(confident), ull(certain), ull(confident && certain)};
      for (int k = 0; k < 3; ++k) {
        if (hits[k] == 0) continue;
        if (use_shared) {
          atomicAdd(&shared_kept[k * classes + c], hits[k]);
        } else {
          atomicAdd(reinterpret_cast<ull*>(kept + k * classes + c), hits[k]);
        }
      }
    }
  }
  conf_sum = warp_sum(conf_sum);
  ent_sum = warp_sum(ent_sum);
  if (threadIdx.x % kWarp == 0) {
    atomicAdd(sums, conf_sum);
    atomicAdd(sums + 1, ent_sum);
  }
  if (use_shared) {
    __syncthreads();
    for (int64_t k = threadIdx.x; k < 3 * classes; k += blockDim.x) {
      if (shared_kept[k] > 0) atomicAdd(reinterpret_cast<ull*>(kept + k), shared_kept[k]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pass1_cuda(
    const at::Tensor& logits, const at::Tensor& valid) {
  HERMES_CHECK_CUDA(logits);
  const dual_threshold::Pass1Shape shape = dual_threshold::check_pass1(logits, valid);
  const int64_t batch = shape.batch, classes = shape.classes, positions = shape.positions;
  const bool has_valid = shape.has_valid;
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = logits.detach().contiguous();
  const at::Tensor v = has_valid ? valid.contiguous() : valid;
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor labels = at::empty({batch, positions}, x.options().dtype(at::kLong));
  at::Tensor confidence = at::empty({batch, positions}, f32);
  at::Tensor entropy = at::empty({batch, positions}, f32);
  at::Tensor ok = at::empty({batch, positions}, x.options().dtype(at::kBool));
  at::Tensor histogram = at::zeros({classes}, x.options().dtype(at::kLong));
  const int64_t n = batch * positions;
  if (n == 0) return {labels, confidence, entropy, ok, histogram};
  const size_t shared = classes <= kMaxSharedClasses ? classes * sizeof(ull) : 0;
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dual_threshold_pass1",
                                  [&] {
    pass1_kernel<scalar_t><<<blocks_for(n, kThreads), kThreads, shared, stream>>>(
        x.data_ptr<scalar_t>(), has_valid ? v.data_ptr<bool>() : nullptr, batch, classes,
        positions, labels.data_ptr<int64_t>(), confidence.data_ptr<float>(),
        entropy.data_ptr<float>(), ok.data_ptr<bool>(), histogram.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {labels, confidence, entropy, ok, histogram};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> pass2_cuda(
    const at::Tensor& labels, const at::Tensor& confidence, const at::Tensor& entropy,
    const at::Tensor& ok, const at::Tensor& thresholds, const at::Tensor& eta) {
  HERMES_CHECK_CUDA(labels);
  dual_threshold::check_pass2(labels, confidence, entropy, ok, thresholds, eta);
  const int64_t n = labels.numel(), classes = thresholds.size(0);
  const c10::cuda::CUDAGuard guard(labels.device());
  const at::Tensor y = labels.contiguous(), conf = confidence.contiguous(),
                   ent = entropy.contiguous(), okc = ok.contiguous();
  const at::Tensor thr = thresholds.to(at::kFloat).contiguous();
  const at::Tensor eta_f = eta.to(at::kFloat).reshape({1}).contiguous();
  at::Tensor reliable = at::empty(labels.sizes(), ok.options());
  at::Tensor kept = at::zeros({3, classes}, labels.options());
  at::Tensor sums = at::zeros({2}, conf.options());
  if (n == 0) return {reliable, kept, sums};
  const size_t shared = classes <= kMaxSharedClasses ? 3 * classes * sizeof(ull) : 0;
  pass2_kernel<<<blocks_for(n, kThreads), kThreads, shared, at::cuda::getCurrentCUDAStream()>>>(
      y.data_ptr<int64_t>(), conf.data_ptr<float>(), ent.data_ptr<float>(), okc.data_ptr<bool>(),
      thr.data_ptr<float>(), eta_f.data_ptr<float>(), n, classes, reliable.data_ptr<bool>(),
      kept.data_ptr<int64_t>(), sums.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {reliable, kept, sums};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(hermes, CUDA, m) {
  m.impl("dual_threshold_pass1", &cuda::pass1_cuda);
  m.impl("dual_threshold_pass2", &cuda::pass2_cuda);
}

}  // namespace hermes
