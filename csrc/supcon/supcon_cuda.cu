// Supervised contrastive loss on CUDA: one block per anchor (forward, anchor gradient) or per
// contrast (contrast gradient); its warps stride over the other side, each lane holding a slice
// of the feature dimension. Only per-anchor vectors are stored (the N x M matrix never exists);
// the backward pass recomputes the similarities. Positives are found by comparing labels in the
// loop (no class table, so no host synchronisation). Same semantics and outputs as the CPU
// kernels (csrc/supcon/supcon_cpu.cpp); fp32 or fp64 (half precision is upcast by the caller).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "../cuda_common.cuh"
#include "supcon_checks.h"

namespace hermes {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps per block
constexpr int kWarps = kThreads / kWarp;
constexpr int kMaxDim = 1024;  // feature dimension held in registers in the backward pass
constexpr int kMaxSlices = kMaxDim / kWarp;

struct Args {
  int64_t n, m, d;
  bool has_self;
  int64_t self_offset;
  bool pos_plus_neg;
};

template <typename scalar_t>
__device__ __forceinline__ scalar_t dot_warp(const scalar_t* x, const scalar_t* y, int64_t d,
                                             int lane) {
  scalar_t acc = 0;
  for (int64_t k = lane; k < d; k += kWarp) acc += x[k] * y[k];
  return warp_sum(acc);
}

template <typename scalar_t>
__device__ __forceinline__ scalar_t softplus(scalar_t z) {
  return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z));
}

// Merges per-warp (max, sum) of an online log-sum-exp; every thread gets the block's value.
template <typename scalar_t>
__device__ scalar_t block_lse(scalar_t mx, scalar_t sum, scalar_t* sh_m, scalar_t* sh_l) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sh_m[warp] = mx;
    sh_l[warp] = sum;
  }
  __syncthreads();
  scalar_t m_all = -INFINITY;
  for (int w = 0; w < kWarps; ++w) m_all = sh_m[w] > m_all ? sh_m[w] : m_all;
  scalar_t l_all = 0;
  if (m_all != -INFINITY) {
    for (int w = 0; w < kWarps; ++w) l_all += sh_l[w] * exp(sh_m[w] - m_all);
  }
  __syncthreads();
  return l_all > 0 ? m_all + log(l_all) : -INFINITY;
}

template <typename scalar_t>
__device__ scalar_t block_sum(scalar_t v, scalar_t* sh) {
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  scalar_t total = 0;
  for (int w = 0; w < kWarps; ++w) total += sh[w];
  __syncthreads();
  return total;
}

template <typename scalar_t>
__global__ void supcon_fwd_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                  const int64_t* __restrict__ ya, const int64_t* __restrict__ yb,
                                  Args args, scalar_t inv_t, scalar_t scale, scalar_t* loss,
                                  scalar_t* lse_out, scalar_t* q_out, int64_t* npos_out) {
  __shared__ scalar_t sh_m[kWarps], sh_l[kWarps];
  const int64_t i = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t self = args.has_self ? i + args.self_offset : -1;
  const int64_t yi = ya[i];
  const scalar_t* ai = a + i * args.d;
  scalar_t mx = -INFINITY, sum = 0, pos_sum = 0, count = 0;
  for (int64_t j = warp; j < args.m; j += kWarps) {
    const scalar_t s = dot_warp(ai, b + j * args.d, args.d, lane) * inv_t;
    const bool same = yb[j] == yi, is_self = j == self;
    if (!args.pos_plus_neg && same && !is_self) {
      pos_sum += s;
      count += 1;
    }
    if (args.pos_plus_neg ? !same : !is_self) {
      if (s > mx) {
        sum = sum * exp(mx - s) + 1;
        mx = s;
      } else {
        sum += exp(s - mx);
      }
    }
  }
  const scalar_t lse = block_lse(mx, sum, sh_m, sh_l);
  if (!args.pos_plus_neg) {
    pos_sum = block_sum(pos_sum, sh_m);
    count = block_sum(count, sh_l);
    if (threadIdx.x == 0) {
      loss[i] = count > 0 ? -scale * (pos_sum / count - lse) : scalar_t(0);
      lse_out[i] = lse;
      q_out[i] = 0;
      npos_out[i] = static_cast<int64_t>(count);
    }
    return;
  }
  scalar_t sp = 0, qs = 0;
  for (int64_t j = warp; j < args.m; j += kWarps) {
    if (yb[j] != yi || j == self) continue;
    const scalar_t s = dot_warp(ai, b + j * args.d, args.d, lane) * inv_t;
    const scalar_t z = lse - s;
    sp += softplus(z);
    qs += scalar_t(1) / (scalar_t(1) + exp(-z));
    count += 1;
  }
  sp = block_sum(sp, sh_m);
  qs = block_sum(qs, sh_l);
  count = block_sum(count, sh_m);
  if (threadIdx.x == 0) {
    loss[i] = count > 0 ? scale * sp / count : scalar_t(0);
    lse_out[i] = lse;
    q_out[i] = qs;
    npos_out[i] = static_cast<int64_t>(count);
  }
}

// dL/ds_ij times base_temperature-scaled factors (see the CPU kernels): the coefficient G_ij
// with grad_a_i = sum_j G_ij b_j and grad_b_j = sum_i G_ij a_i.
template <typename scalar_t>
__device__ __forceinline__ scalar_t pair_grad(const Args& args, scalar_t s, bool same,
                                              bool is_self, scalar_t coef, int64_t npos,
                                              scalar_t lse, scalar_t q) {
  if (!args.pos_plus_neg) {
    const scalar_t p = is_self ? scalar_t(0) : exp(s - lse);
    return coef * (p - ((same && !is_self) ? scalar_t(1) / npos : scalar_t(0)));
  }
  const scalar_t c = coef / npos;
  if (!same) return c * q * exp(s - lse);
  if (is_self) return 0;
  return c * (scalar_t(1) / (scalar_t(1) + exp(lse - s)) - scalar_t(1));
}

// One block per row of `out` (an anchor for grad_a, a contrast for grad_b): out_r = sum over
// the other side o of G(r, o) other_o.
template <typename scalar_t, bool kAnchorRows>
__global__ void supcon_bwd_kernel(const scalar_t* __restrict__ a, const scalar_t* __restrict__ b,
                                  const int64_t* __restrict__ ya, const int64_t* __restrict__ yb,
                                  const scalar_t* __restrict__ grad, const scalar_t* __restrict__ lse,
                                  const scalar_t* __restrict__ q, const int64_t* __restrict__ npos,
                                  Args args, scalar_t inv_t, scalar_t inv_tb, scalar_t* out) {
  extern __shared__ unsigned char shared_raw[];
  scalar_t* partial = reinterpret_cast<scalar_t*>(shared_raw);  // (kWarps, d)
  const int64_t r = blockIdx.x;
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int64_t others = kAnchorRows ? args.m : args.n;
  const scalar_t* other = kAnchorRows ? b : a;
  scalar_t acc[kMaxSlices];
#pragma unroll
  for (int t = 0; t < kMaxSlices; ++t) acc[t] = 0;
  for (int64_t o = warp; o < others; o += kWarps) {
    const int64_t i = kAnchorRows ? r : o, j = kAnchorRows ? o : r;
    if (npos[i] <= 0) continue;  // uniform across the warp
    const scalar_t coef = grad[i] * inv_tb;
    const scalar_t* oth = other + o * args.d;
    const scalar_t s = dot_warp(a + i * args.d, b + j * args.d, args.d, lane) * inv_t;
    const bool is_self = args.has_self && j == i + args.self_offset;
    const scalar_t g = pair_grad(args, s, ya[i] == yb[j], is_self, coef, npos[i], lse[i], q[i]);
#pragma unroll
    for (int t = 0; t < kMaxSlices; ++t) {
      const int64_t k = lane + t * kWarp;
      if (k < args.d) acc[t] += g * oth[k];
    }
  }
#pragma unroll
  for (int t = 0; t < kMaxSlices; ++t) {
    const int64_t k = lane + t * kWarp;
    if (k < args.d) partial[warp * args.d + k] = acc[t];
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < args.d; k += blockDim.x) {
    scalar_t total = 0;
    for (int w = 0; w < kWarps; ++w) total += partial[w * args.d + k];
    out[r * args.d + k] = total;
  }
}

struct Inputs {
  at::Tensor a, b, ya, yb;
  Args args;
};

Inputs check(const char* fn, const at::Tensor& anchors, const at::Tensor& labels,
             const at::Tensor& contrasts, const at::Tensor& contrast_labels, double temperature,
             double base_temperature, std::optional<int64_t> self_offset, bool pos_plus_neg) {
  HERMES_CHECK_CUDA(anchors);
  supcon::check_inputs(fn, anchors, labels, contrasts, contrast_labels);
  TORCH_CHECK(anchors.size(1) <= kMaxDim, fn, ": the CUDA kernels take d <= ", kMaxDim, ", got ",
              anchors.size(1));
  TORCH_CHECK(temperature > 0 && base_temperature > 0, fn,
              ": temperature and base_temperature must be > 0, got ", temperature, " and ",
              base_temperature);
  Inputs in{anchors.detach().contiguous(), contrasts.detach().contiguous(), labels.contiguous(),
            contrast_labels.contiguous(), {}};
  in.args = {in.a.size(0), in.b.size(0), in.a.size(1), self_offset.has_value(),
             self_offset.value_or(0), pos_plus_neg};
  return in;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cuda(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrasts,
    const at::Tensor& contrast_labels, double temperature, double base_temperature,
    std::optional<int64_t> self_offset, bool pos_plus_neg) {
  const Inputs in = check("supcon_fwd", anchors, labels, contrasts, contrast_labels, temperature,
                          base_temperature, self_offset, pos_plus_neg);
  const c10::cuda::CUDAGuard guard(in.a.device());
  const int64_t n = in.args.n;
  at::Tensor loss = at::empty({n}, in.a.options());
  at::Tensor lse = at::empty({n}, in.a.options());
  at::Tensor q = at::empty({n}, in.a.options());
  at::Tensor num_pos = at::empty({n}, in.ya.options());
  if (n == 0) return {loss, lse, q, num_pos};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "supcon_fwd_cuda", [&] {
    supcon_fwd_kernel<scalar_t><<<n, kThreads, 0, stream>>>(
        in.a.data_ptr<scalar_t>(), in.b.data_ptr<scalar_t>(), in.ya.data_ptr<int64_t>(),
        in.yb.data_ptr<int64_t>(), in.args, static_cast<scalar_t>(1.0 / temperature),
        static_cast<scalar_t>(temperature / base_temperature), loss.data_ptr<scalar_t>(),
        lse.data_ptr<scalar_t>(), q.data_ptr<scalar_t>(), num_pos.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, lse, q, num_pos};
}

std::tuple<at::Tensor, at::Tensor> supcon_bwd_cuda(
    const at::Tensor& grad_loss, const at::Tensor& anchors, const at::Tensor& labels,
    const at::Tensor& contrasts, const at::Tensor& contrast_labels, const at::Tensor& lse,
    const at::Tensor& q, const at::Tensor& num_pos, double temperature, double base_temperature,
    std::optional<int64_t> self_offset, bool pos_plus_neg) {
  const Inputs in = check("supcon_bwd", anchors, labels, contrasts, contrast_labels, temperature,
                          base_temperature, self_offset, pos_plus_neg);
  for (const at::Tensor* t : {&grad_loss, &lse, &q}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == in.args.n && t->scalar_type() == in.a.scalar_type() &&
                    t->device() == in.a.device(),
                "supcon_bwd: grad_loss, lse and q must be (", in.args.n, ",) ", in.a.scalar_type(),
                " on ", in.a.device(), ", got ", t->scalar_type(), " ", t->sizes(), " on ",
                t->device());
  }
  TORCH_CHECK(num_pos.dim() == 1 && num_pos.size(0) == in.args.n &&
                  num_pos.scalar_type() == at::kLong && num_pos.device() == in.a.device(),
              "supcon_bwd: num_pos must be (", in.args.n, ",) int64 on ", in.a.device());
  const c10::cuda::CUDAGuard guard(in.a.device());
  const at::Tensor g = grad_loss.contiguous(), l = lse.contiguous(), qc = q.contiguous(),
                   np = num_pos.contiguous();
  at::Tensor grad_a = at::zeros_like(in.a);
  at::Tensor grad_b = at::zeros_like(in.b);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(in.a.scalar_type(), "supcon_bwd_cuda", [&] {
    const size_t shared = sizeof(scalar_t) * kWarps * in.args.d;
    const auto inv_t = static_cast<scalar_t>(1.0 / temperature);
    const auto inv_tb = static_cast<scalar_t>(1.0 / base_temperature);
    if (in.args.n > 0) {
      supcon_bwd_kernel<scalar_t, true><<<in.args.n, kThreads, shared, stream>>>(
          in.a.data_ptr<scalar_t>(), in.b.data_ptr<scalar_t>(), in.ya.data_ptr<int64_t>(),
          in.yb.data_ptr<int64_t>(), g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
          qc.data_ptr<scalar_t>(), np.data_ptr<int64_t>(), in.args, inv_t, inv_tb,
          grad_a.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (in.args.m > 0) {
      supcon_bwd_kernel<scalar_t, false><<<in.args.m, kThreads, shared, stream>>>(
          in.a.data_ptr<scalar_t>(), in.b.data_ptr<scalar_t>(), in.ya.data_ptr<int64_t>(),
          in.yb.data_ptr<int64_t>(), g.data_ptr<scalar_t>(), l.data_ptr<scalar_t>(),
          qc.data_ptr<scalar_t>(), np.data_ptr<int64_t>(), in.args, inv_t, inv_tb,
          grad_b.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return {grad_a, grad_b};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(hermes, CUDA, m) {
  m.impl("supcon_fwd", &cuda::supcon_fwd_cuda);
  m.impl("supcon_bwd", &cuda::supcon_bwd_cuda);
}

}  // namespace hermes
