// Inter-task attention (the IAS block after its convolutions) on the CPU, in two passes over the
// feature map each way:
//   forward  1: c = g x, channel max and mean of c per pixel -> pooled (B, 2, H, W)
//            2: a = sigmoid(conv_kxk(pooled) + bias) (small), y = a c
//   backward 1: da = sum_C dy c, ties of the max -> dz = da a (1 - a), then the small transposed
//               conv for d pooled, d weight, d bias
//            2: dc = dy a + [c == max] d max / #ties + d mean / C; dx = dc g, dg = sum_HW dc x
// (the max's gradient is shared evenly among tied channels, as torch.amax's backward does).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common.h"
#include "inter_task_attention_checks.h"

namespace hermes {
namespace {

using inter_task_attention::Shape;

template <typename scalar_t>
inline scalar_t sigmoid(scalar_t z) {
  return scalar_t(1) / (scalar_t(1) + std::exp(-z));
}

template <typename scalar_t>
void forward_kernel(const Shape& s, const scalar_t* x, const scalar_t* g, const scalar_t* w,
                    scalar_t bias, scalar_t* y, scalar_t* pooled, scalar_t* attn) {
  at::parallel_for(0, s.b, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      scalar_t* mx = pooled + b * 2 * s.hw;
      scalar_t* mean = mx + s.hw;
      const scalar_t* xb = x + b * s.c * s.hw;
      std::fill(mx, mx + s.hw, -std::numeric_limits<scalar_t>::infinity());
      std::fill(mean, mean + s.hw, scalar_t(0));
      for (int64_t ch = 0; ch < s.c; ++ch) {  // pass 1
        const scalar_t gc = g[b * s.c + ch];
        const scalar_t* row = xb + ch * s.hw;
#pragma omp simd
        for (int64_t p = 0; p < s.hw; ++p) {
          const scalar_t v = gc * row[p];
          mx[p] = (v > mx[p] || v != v) ? v : mx[p];  // NaN propagates as in torch.amax
          mean[p] += v;
        }
      }
      for (int64_t p = 0; p < s.hw; ++p) mean[p] /= static_cast<scalar_t>(s.c);
      scalar_t* ab = attn + b * s.hw;
      for (int64_t i = 0; i < s.h; ++i) {  // the k x k conv of the two pooled maps
        for (int64_t j = 0; j < s.w; ++j) {
          scalar_t z = bias;
          for (int64_t ch = 0; ch < 2; ++ch) {
            const scalar_t* map = pooled + (b * 2 + ch) * s.hw;
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
          ab[i * s.w + j] = sigmoid(z);
        }
      }
      for (int64_t ch = 0; ch < s.c; ++ch) {  // pass 2
        const scalar_t gc = g[b * s.c + ch];
        const scalar_t* row = xb + ch * s.hw;
        scalar_t* out = y + (b * s.c + ch) * s.hw;
#pragma omp simd
        for (int64_t p = 0; p < s.hw; ++p) out[p] = ab[p] * (gc * row[p]);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> inter_task_attention_fwd_cpu(
    const at::Tensor& x, const at::Tensor& gate, const at::Tensor& weight, const at::Tensor& bias) {
  const Shape s = inter_task_attention::check_inputs("inter_task_attention_fwd", x, gate, weight,
                                                     /*any_float=*/false);
  TORCH_CHECK(bias.numel() == 1, "inter_task_attention_fwd: bias must be (1,), got shape ",
              bias.sizes());
  const at::Tensor xc = x.detach().contiguous(), gc = gate.detach().contiguous(),
                   wc = weight.detach().contiguous();
  at::Tensor y = at::empty_like(xc);
  at::Tensor pooled = at::empty({s.b, 2, s.h, s.w}, xc.options());
  at::Tensor attn = at::empty({s.b, s.h, s.w}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "inter_task_attention_fwd_cpu", [&] {
    forward_kernel<scalar_t>(s, xc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                             wc.data_ptr<scalar_t>(), bias.detach().to(xc.scalar_type()).item<scalar_t>(),
                             y.data_ptr<scalar_t>(), pooled.data_ptr<scalar_t>(),
                             attn.data_ptr<scalar_t>());
  });
  return {y, pooled, attn};
}

template <typename scalar_t>
void backward_kernel(const Shape& s, const scalar_t* dy, const scalar_t* x, const scalar_t* g,
                     const scalar_t* w, const scalar_t* pooled, const scalar_t* attn,
                     scalar_t* dx, scalar_t* dg, scalar_t* dw_parts, scalar_t* dmax,
                     scalar_t* dmean) {
  const int64_t kk = 2 * s.k * s.k;
  // Pass 1 per image: da, ties of the max, dz, then d pooled (into dmax / dmean, already divided
  // by the number of ties and by C) and this image's share of d weight and d bias.
  at::parallel_for(0, s.b, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> da(s.hw), ties(s.hw), dz(s.hw);
    for (int64_t b = begin; b < end; ++b) {
      const scalar_t* mx = pooled + b * 2 * s.hw;
      std::fill(da.begin(), da.end(), scalar_t(0));
      std::fill(ties.begin(), ties.end(), scalar_t(0));
      for (int64_t ch = 0; ch < s.c; ++ch) {
        const scalar_t gc = g[b * s.c + ch];
        const scalar_t* xr = x + (b * s.c + ch) * s.hw;
        const scalar_t* dr = dy + (b * s.c + ch) * s.hw;
#pragma omp simd
        for (int64_t p = 0; p < s.hw; ++p) {
          const scalar_t v = gc * xr[p];
          da[p] += dr[p] * v;
          ties[p] += v == mx[p] ? scalar_t(1) : scalar_t(0);
        }
      }
      const scalar_t* ab = attn + b * s.hw;
      for (int64_t p = 0; p < s.hw; ++p) dz[p] = da[p] * ab[p] * (scalar_t(1) - ab[p]);
      scalar_t* dwb = dw_parts + b * (kk + 1);
      scalar_t dbias = 0;
      for (int64_t p = 0; p < s.hw; ++p) dbias += dz[p];
      dwb[kk] = dbias;
      for (int64_t ch = 0; ch < 2; ++ch) {
        const scalar_t* map = pooled + (b * 2 + ch) * s.hw;
        scalar_t* dmap = (ch == 0 ? dmax : dmean) + b * s.hw;
        std::fill(dmap, dmap + s.hw, scalar_t(0));
        for (int64_t u = 0; u < s.k; ++u) {
          for (int64_t v = 0; v < s.k; ++v) {
            const scalar_t wv = w[(ch * s.k + u) * s.k + v];
            scalar_t acc = 0;
            // output pixel (i, j) read input (i + u - r, j + v - r)
            const int64_t i0 = std::max<int64_t>(0, s.r - u), i1 = std::min(s.h, s.h + s.r - u);
            const int64_t j0 = std::max<int64_t>(0, s.r - v), j1 = std::min(s.w, s.w + s.r - v);
            for (int64_t i = i0; i < i1; ++i) {
              const scalar_t* dzr = dz.data() + i * s.w;
              const int64_t off = (i + u - s.r) * s.w + (v - s.r);
              for (int64_t j = j0; j < j1; ++j) {
                acc += dzr[j] * map[off + j];
                dmap[off + j] += wv * dzr[j];
              }
            }
            dwb[(ch * s.k + u) * s.k + v] = acc;
          }
        }
        if (ch == 0) {
          for (int64_t p = 0; p < s.hw; ++p) dmap[p] = ties[p] > 0 ? dmap[p] / ties[p] : 0;
        } else {
          for (int64_t p = 0; p < s.hw; ++p) dmap[p] /= static_cast<scalar_t>(s.c);
        }
      }
    }
  });
  // Pass 2 per (image, channel).
  at::parallel_for(0, s.b * s.c, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bc = begin; bc < end; ++bc) {
      const int64_t b = bc / s.c;
      const scalar_t gc = g[bc];
      const scalar_t* xr = x + bc * s.hw;
      const scalar_t* dr = dy + bc * s.hw;
      const scalar_t* mx = pooled + b * 2 * s.hw;
      const scalar_t* ab = attn + b * s.hw;
      const scalar_t* dmx = dmax + b * s.hw;
      const scalar_t* dmn = dmean + b * s.hw;
      scalar_t* out = dx + bc * s.hw;
      scalar_t acc = 0;
#pragma omp simd reduction(+ : acc)
      for (int64_t p = 0; p < s.hw; ++p) {
        const scalar_t v = gc * xr[p];
        const scalar_t dc = dr[p] * ab[p] + (v == mx[p] ? dmx[p] : scalar_t(0)) + dmn[p];
        out[p] = dc * gc;
        acc += dc * xr[p];
      }
      dg[bc] = acc;
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> inter_task_attention_bwd_cpu(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& gate,
    const at::Tensor& weight, const at::Tensor& pooled, const at::Tensor& attention) {
  const Shape s = inter_task_attention::check_inputs("inter_task_attention_bwd", x, gate, weight,
                                                     /*any_float=*/false);
  TORCH_CHECK(grad_y.sizes() == x.sizes() && grad_y.scalar_type() == x.scalar_type(),
              "inter_task_attention_bwd: grad_y must match x ", x.sizes(), " ", x.scalar_type(),
              ", got ", grad_y.sizes(), " ", grad_y.scalar_type());
  TORCH_CHECK(pooled.numel() == s.b * 2 * s.hw && attention.numel() == s.b * s.hw,
              "inter_task_attention_bwd: pooled must be (B, 2, H, W) and attention (B, H, W), got ",
              pooled.sizes(), " and ", attention.sizes());
  const at::Tensor dy = grad_y.contiguous(), xc = x.detach().contiguous(),
                   gc = gate.detach().contiguous(), wc = weight.detach().contiguous(),
                   pc = pooled.contiguous(), ac = attention.contiguous();
  at::Tensor dx = at::empty_like(xc);
  at::Tensor dg = at::empty({s.b, s.c}, xc.options());
  const int64_t kk = 2 * s.k * s.k;
  at::Tensor dw_parts = at::empty({s.b, kk + 1}, xc.options());
  at::Tensor dmax = at::empty({s.b, s.hw}, xc.options());
  at::Tensor dmean = at::empty({s.b, s.hw}, xc.options());
  AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "inter_task_attention_bwd_cpu", [&] {
    backward_kernel<scalar_t>(s, dy.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                              gc.data_ptr<scalar_t>(), wc.data_ptr<scalar_t>(),
                              pc.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(),
                              dx.data_ptr<scalar_t>(), dg.data_ptr<scalar_t>(),
                              dw_parts.data_ptr<scalar_t>(), dmax.data_ptr<scalar_t>(),
                              dmean.data_ptr<scalar_t>());
  });
  const at::Tensor dw_all = dw_parts.sum(0);
  return {dx, dg, dw_all.narrow(0, 0, kk).reshape({1, 2, s.k, s.k}), dw_all.narrow(0, kk, 1)};
}

}  // namespace

TORCH_LIBRARY_IMPL(hermes, CPU, m) {
  m.impl("inter_task_attention_fwd", &inter_task_attention_fwd_cpu);
  m.impl("inter_task_attention_bwd", &inter_task_attention_bwd_cpu);
}

}  // namespace hermes
