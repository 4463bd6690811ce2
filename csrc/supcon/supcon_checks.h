// Input checks of hermes::supcon_fwd / supcon_bwd shared by the CPU kernels (supcon_cpu.cpp) and
// the CUDA kernels (supcon_cuda.cu). Each backend adds its own: the temperatures (the CPU and
// CUDA messages differ), CUDA's d <= kMaxDim and that the anchors are CUDA tensors, and the
// backward pass's checks of grad_loss, lse, q and num_pos.
#pragma once

#include <ATen/ATen.h>

namespace hermes {
namespace supcon {

// anchors (N, d) and contrasts (M, d), both fp32 or both fp64; labels (N,) and
// contrast_labels (M,) int64; all on the anchors' device. `fn` names the op in the messages.
inline void check_inputs(const char* fn, const at::Tensor& anchors, const at::Tensor& labels,
                         const at::Tensor& contrasts, const at::Tensor& contrast_labels) {
  for (const at::Tensor* t : {&labels, &contrasts, &contrast_labels}) {
    TORCH_CHECK(t->device() == anchors.device(), fn, ": all inputs must be on ", anchors.device(),
                ", got one on ", t->device());
  }
  TORCH_CHECK(anchors.dim() == 2, fn, ": anchors must be (N, d), got shape ", anchors.sizes());
  TORCH_CHECK(contrasts.dim() == 2 && contrasts.size(1) == anchors.size(1), fn,
              ": contrasts must be (M, ", anchors.size(1), "), got shape ", contrasts.sizes());
  TORCH_CHECK(anchors.scalar_type() == at::kFloat || anchors.scalar_type() == at::kDouble, fn,
              ": anchors must be float32 or float64 (upcast half precision first), got ",
              anchors.scalar_type());
  TORCH_CHECK(contrasts.scalar_type() == anchors.scalar_type(), fn,
              ": contrasts must have the anchors' dtype ", anchors.scalar_type(), ", got ",
              contrasts.scalar_type());
  TORCH_CHECK(labels.scalar_type() == at::kLong && labels.dim() == 1 &&
                  labels.size(0) == anchors.size(0),
              fn, ": labels must be int64 of shape (", anchors.size(0), ",), got ",
              labels.scalar_type(), " ", labels.sizes());
  TORCH_CHECK(contrast_labels.scalar_type() == at::kLong && contrast_labels.dim() == 1 &&
                  contrast_labels.size(0) == contrasts.size(0),
              fn, ": contrast_labels must be int64 of shape (", contrasts.size(0), ",), got ",
              contrast_labels.scalar_type(), " ", contrast_labels.sizes());
}

}  // namespace supcon
}  // namespace hermes
