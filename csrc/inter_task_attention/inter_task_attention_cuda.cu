// Inter-task attention on CUDA, two kernels each way (one thread per pixel, the channel loop
// reading coalesced across pixels); same math as csrc/inter_task_attention/inter_task_attention_cpu.cpp:
//   forward  1: pooled = [max_C, mean_C](g x)
//            2: a = sigmoid(conv_kxk(pooled) + bias), y = a g x
//   backward 1: dz = (sum_C dy g x) a (1 - a), ties of the max
//            2: d pooled (transposed conv of dz), d weight / d bias, and dx = dc g with
//               dc = dy a + [g x == max] d max / #ties + d mean / C, and d gate = sum_HW dc x.
// The backward sums (d weight, d bias, d gate) have no atomics: each block (one image, up to
// kThreads pixels) reduces them with warp shuffles, then across its warps in shared memory in a
// fixed order, and writes one partial per block and column; at::sum adds the partials. The
// result is the same bit for bit from run to run.
// Any float dtype; arithmetic in its op-math type (fp32 for fp16/bf16). The conv parameters, the
// saved pooled maps and the attention are kept in that type too, as in the Triton kernels: kept
// in bf16, the d weight / d bias sums over B H W came out with 0.6-1.4 % relative error on an
// H200 (512 and 1024 channels), beyond tests/ops/test_at_scale.py's bound.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <tuple>

#include "../cuda_common.cuh"
#include "inter_task_attention_checks.h"

namespace hermes {
namespace cuda {
namespace {

constexpr int kThreads = 256;

using inter_task_attention::Shape;

template <typename scalar_t>
__global__ void pool_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                            Shape s, at::opmath_type<scalar_t>* __restrict__ pooled) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= s.b * s.hw) return;
  const int64_t b = e / s.hw, p = e % s.hw;
  acc_t mx = -INFINITY, sum = 0;
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const acc_t v = static_cast<acc_t>(static_cast<scalar_t>(g[b * s.c + ch] * x[(b * s.c + ch) * s.hw + p]));
    mx = (v > mx || v != v) ? v : mx;
    sum += v;
  }
  pooled[(b * 2) * s.hw + p] = mx;
  pooled[(b * 2 + 1) * s.hw + p] = sum / static_cast<acc_t>(s.c);
}

template <typename scalar_t>
__global__ void apply_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ g,
                             const at::opmath_type<scalar_t>* __restrict__ pooled,
                             const at::opmath_type<scalar_t>* __restrict__ w,
                             const at::opmath_type<scalar_t>* __restrict__ bias, Shape s,
                             scalar_t* __restrict__ y,
                             at::opmath_type<scalar_t>* __restrict__ attn) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= s.b * s.hw) return;
  const int64_t b = e / s.hw, p = e % s.hw, i = p / s.w, j = p % s.w;
  acc_t z = bias[0];
  for (int64_t ch = 0; ch < 2; ++ch) {
    const acc_t* map = pooled + (b * 2 + ch) * s.hw;
    for (int64_t u = 0; u < s.k; ++u) {
      const int64_t ii = i + u - s.r;
      if (ii < 0 || ii >= s.h) continue;
      for (int64_t v = 0; v < s.k; ++v) {
        const int64_t jj = j + v - s.r;
        if (jj < 0 || jj >= s.w) continue;
        z += w[(ch * s.k + u) * s.k + v] * map[ii * s.w + jj];
      }
    }
  }
  const acc_t a_acc = acc_t(1) / (acc_t(1) + exp(-z));
  attn[e] = a_acc;  // the backward's a (1 - a) from the unrounded sigmoid
  const scalar_t a = static_cast<scalar_t>(a_acc);
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const int64_t idx = (b * s.c + ch) * s.hw + p;
    y[idx] = a * static_cast<scalar_t>(g[b * s.c + ch] * x[idx]);
  }
}

template <typename scalar_t>
__global__ void dz_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                          const scalar_t* __restrict__ g,
                          const at::opmath_type<scalar_t>* __restrict__ pooled,
                          const at::opmath_type<scalar_t>* __restrict__ attn, Shape s,
                          float* __restrict__ dz,
                          float* __restrict__ ties) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (e >= s.b * s.hw) return;
  const int64_t b = e / s.hw, p = e % s.hw;
  const acc_t mx = pooled[(b * 2) * s.hw + p];
  acc_t da = 0, t = 0;
  for (int64_t ch = 0; ch < s.c; ++ch) {
    const int64_t idx = (b * s.c + ch) * s.hw + p;
    const scalar_t v = g[b * s.c + ch] * x[idx];
    da += static_cast<acc_t>(dy[idx]) * static_cast<acc_t>(v);
    t += static_cast<acc_t>(v) == mx ? acc_t(1) : acc_t(0);
  }
  const acc_t a = attn[e];
  dz[e] = static_cast<float>(da * a * (acc_t(1) - a));
  ties[e] = static_cast<float>(t);
}

constexpr int kWarps = kThreads / kWarp;

// Column sums over a block's threads, up to kWarp columns at a time: stage() reduces one value per
// thread within each warp (shuffles) and parks the warp's sum in shared memory; flush() adds the
// kWarps sums of each staged column in a fixed order and writes them to out[0 .. n). Every thread
// of the block must call both, with the same column and n (no thread may return early).
struct ColumnSums {
  float part[kWarps][kWarp];

  __device__ __forceinline__ void stage(float v, int column) {
    v = warp_sum(v);
    if (threadIdx.x % kWarp == 0) part[threadIdx.x / kWarp][column] = v;
  }

  __device__ __forceinline__ void flush(int n, float* __restrict__ out) {
    __syncthreads();
    if (static_cast<int>(threadIdx.x) < n) {
      float total = 0.f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) total += part[w][threadIdx.x];
      out[threadIdx.x] = total;
    }
    __syncthreads();
  }
};

// d pooled (gather form of the transposed conv), d weight and d bias, d x and d gate.
// Grid: (pixel blocks, min(B, 65535)); blockIdx.y strides over the batch. Block (b, q) writes
// row b * gridDim.x + q of wpart ((2 k^2 + 1) columns: d weight, then d bias) and of gpart
// (C columns: d gate); the caller sums the rows.
template <typename scalar_t>
__global__ void grad_kernel(const scalar_t* __restrict__ dy, const scalar_t* __restrict__ x,
                            const scalar_t* __restrict__ g,
                            const at::opmath_type<scalar_t>* __restrict__ w,
                            const at::opmath_type<scalar_t>* __restrict__ pooled,
                            const at::opmath_type<scalar_t>* __restrict__ attn,
                            const float* __restrict__ dz, const float* __restrict__ ties, Shape s,
                            scalar_t* __restrict__ dx, float* __restrict__ gpart,
                            float* __restrict__ wpart) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ ColumnSums sums;
  const int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool live = p < s.hw;
  const int64_t i = p / s.w, j = p % s.w;
  const int64_t nw = 2 * s.k * s.k + 1;
  for (int64_t b = blockIdx.y; b < s.b; b += gridDim.y) {
    const int64_t e = b * s.hw + p;
    const int64_t row = b * gridDim.x + blockIdx.x;
    float* wout = wpart + row * nw;
    float dpool[2] = {0.f, 0.f};
    // d weight[ch, u, v] += dz[i, j] * pooled[ch, i + u - r, j + v - r]; d bias += dz[i, j].
    // Columns are staged in weight order, kWarp at a time: column `col` of the chunk starting
    // at `first` is weight (ch * k + u) * k + v.
    const float dzp = live ? dz[e] : 0.f;
    int col = 0;
    int64_t first = 0;
    for (int64_t ch = 0; ch < 2; ++ch) {
      const acc_t* map = pooled + (b * 2 + ch) * s.hw;
      for (int64_t u = 0; u < s.k; ++u) {
        for (int64_t v = 0; v < s.k; ++v) {
          const float wv = static_cast<float>(w[(ch * s.k + u) * s.k + v]);
          float contrib = 0.f;
          const int64_t ii = i + u - s.r, jj = j + v - s.r;
          if (live && ii >= 0 && ii < s.h && jj >= 0 && jj < s.w) {
            contrib = dzp * static_cast<float>(map[ii * s.w + jj]);
          }
          // this pixel as an input of the conv: output (i - u + r, j - v + r)
          const int64_t oi = i - u + s.r, oj = j - v + s.r;
          if (live && oi >= 0 && oi < s.h && oj >= 0 && oj < s.w) {
            dpool[ch] += wv * dz[b * s.hw + oi * s.w + oj];
          }
          sums.stage(contrib, col);
          if (++col == kWarp) {
            sums.flush(col, wout + first);
            first += col;
            col = 0;
          }
        }
      }
    }
    sums.stage(dzp, col);  // d bias: the last column
    sums.flush(col + 1, wout + first);

    const acc_t a = live ? attn[e] : acc_t(0);
    const acc_t mx = live ? pooled[(b * 2) * s.hw + p] : acc_t(0);
    const float t = live ? ties[e] : 0.f;
    const acc_t dmax = t > 0 ? dpool[0] / t : 0.f;
    const acc_t dmean = dpool[1] / static_cast<acc_t>(s.c);
    float* gout = gpart + row * s.c;
    for (int64_t c0 = 0; c0 < s.c; c0 += kWarp) {
      const int n = static_cast<int>(s.c - c0 < kWarp ? s.c - c0 : kWarp);
      for (int q = 0; q < n; ++q) {
        const int64_t ch = c0 + q;
        float contrib = 0.f;
        if (live) {
          const int64_t idx = (b * s.c + ch) * s.hw + p;
          const acc_t gc = static_cast<acc_t>(g[b * s.c + ch]);
          const scalar_t v = g[b * s.c + ch] * x[idx];
          const acc_t dc =
              static_cast<acc_t>(dy[idx]) * a + (static_cast<acc_t>(v) == mx ? dmax : acc_t(0)) + dmean;
          dx[idx] = static_cast<scalar_t>(dc * gc);
          contrib = static_cast<float>(dc * static_cast<acc_t>(x[idx]));
        }
        sums.stage(contrib, q);
      }
      sums.flush(n, gout + c0);
    }
  }
}

// The shared checks (any float dtype) and that x is a CUDA tensor.
Shape check(const char* fn, const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight) {
  HERMES_CHECK_CUDA(x);
  return inter_task_attention::check_inputs(fn, x, gate, weight, /*any_float=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> inter_task_attention_fwd_cuda(const at::Tensor& x,
                                                            const at::Tensor& gate,
                                                            const at::Tensor& weight,
                                                            const at::Tensor& bias) {
  const Shape s = check("inter_task_attention_fwd", x, gate, weight);
  TORCH_CHECK(bias.numel() == 1 && bias.device() == x.device(),
              "inter_task_attention_fwd: bias must be (1,) on ", x.device());
  const c10::cuda::CUDAGuard guard(x.device());
  // pooled maps, attention and the conv parameters in the op-math type (fp32 for fp16/bf16)
  const auto acc = x.options().dtype(at::toOpMathType(x.scalar_type()));
  const at::Tensor xc = x.detach().contiguous(), gc = gate.detach().contiguous(),
                   wc = weight.detach().to(acc).contiguous(),
                   bc = bias.detach().to(acc).contiguous();
  at::Tensor y = at::empty_like(xc);
  at::Tensor pooled = at::empty({s.b, 2, s.h, s.w}, acc);
  at::Tensor attn = at::empty({s.b, s.h, s.w}, acc);
  const int64_t n = s.b * s.hw;
  if (n == 0 || s.c == 0) return {y, pooled, attn};
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "inter_task_attention_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pool_kernel<scalar_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), s, pooled.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    apply_kernel<scalar_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
        xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(), pooled.data_ptr<acc_t>(),
        wc.data_ptr<acc_t>(), bc.data_ptr<acc_t>(), s, y.data_ptr<scalar_t>(),
        attn.data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, pooled, attn};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> inter_task_attention_bwd_cuda(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gate,
    const at::Tensor& weight, const at::Tensor& pooled, const at::Tensor& attention) {
  const Shape s = check("inter_task_attention_bwd", x, gate, weight);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type() &&
                  grad_y.device() == x.device(),
              "inter_task_attention_bwd: grad_y must match x");
  TORCH_CHECK(pooled.numel() == s.b * 2 * s.hw && attention.numel() == s.b * s.hw &&
                  pooled.device() == x.device() && attention.device() == x.device(),
              "inter_task_attention_bwd: pooled must be (B, 2, H, W) and attention (B, H, W) on ",
              x.device());
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  TORCH_CHECK(pooled.scalar_type() == acc && attention.scalar_type() == acc,
              "inter_task_attention_bwd: pooled and attention must be ", acc,
              " (the forward's), got ", pooled.scalar_type(), " and ", attention.scalar_type());
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor dy = grad_y.contiguous(), xc = x.detach().contiguous(),
                   gc = gate.detach().contiguous(), wc = weight.detach().to(acc).contiguous(),
                   pc = pooled.contiguous(), ac = attention.contiguous();
  const auto f32 = xc.options().dtype(at::kFloat);
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dgate = at::zeros({s.b, s.c}, f32);
  at::Tensor dweight = at::zeros({2 * s.k * s.k + 1}, f32);
  at::Tensor dz = at::empty({s.b, s.hw}, f32);
  at::Tensor ties = at::empty({s.b, s.hw}, f32);
  const int64_t n = s.b * s.hw;
  if (n > 0 && s.c > 0) {
    const auto stream = at::cuda::getCurrentCUDAStream();
    // One row of partial sums per (image, pixel block): summed below, no atomics.
    const int64_t pixel_blocks = blocks_for(s.hw, kThreads);
    const dim3 grid(static_cast<unsigned>(pixel_blocks),
                    static_cast<unsigned>(s.b < 65535 ? s.b : 65535));
    at::Tensor gpart = at::empty({s.b, pixel_blocks, s.c}, f32);
    at::Tensor wpart = at::empty({s.b * pixel_blocks, 2 * s.k * s.k + 1}, f32);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, xc.scalar_type(), "inter_task_attention_bwd_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      dz_kernel<scalar_t><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
          pc.data_ptr<acc_t>(), ac.data_ptr<acc_t>(), s, dz.data_ptr<float>(),
          ties.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
          dy.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
          wc.data_ptr<acc_t>(), pc.data_ptr<acc_t>(), ac.data_ptr<acc_t>(),
          dz.data_ptr<float>(), ties.data_ptr<float>(), s, dx.data_ptr<scalar_t>(),
          gpart.data_ptr<float>(), wpart.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    dgate = gpart.sum(1);
    dweight = wpart.sum(0);
  } else {
    dx.zero_();
  }
  const int64_t kk = 2 * s.k * s.k;
  return {dx, dgate.to(x.scalar_type()),
          dweight.narrow(0, 0, kk).reshape({1, 2, s.k, s.k}).to(weight.scalar_type()),
          dweight.narrow(0, kk, 1).to(weight.scalar_type())};
}

}  // namespace
}  // namespace cuda

TORCH_LIBRARY_IMPL(hermes, CUDA, m) {
  m.impl("inter_task_attention_fwd", &cuda::inter_task_attention_fwd_cuda);
  m.impl("inter_task_attention_bwd", &cuda::inter_task_attention_bwd_cuda);
}

}  // namespace hermes
