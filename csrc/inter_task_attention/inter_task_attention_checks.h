// Input checks of hermes::inter_task_attention_fwd / _bwd shared by the CPU kernels
// (inter_task_attention_cpu.cpp) and the CUDA kernels (inter_task_attention_cuda.cu), and the
// shape they return. Each backend adds its own: the dtypes it takes (`any_float`), that x is a
// CUDA tensor, and the checks of bias, grad_y, pooled and attention.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include <cstdint>
#include <string>

namespace hermes {
namespace inter_task_attention {

// x (B, C, H, W), the conv weight (1, 2, k, k) with k odd and its radius r = k / 2 (hw = H * W).
struct Shape {
  int64_t b, c, h, w, hw, k, r;
};

// x (B, C, H, W); gate (B, C) of x's dtype and weight (1, 2, k, k) with k odd, of x's dtype or
// its op-math type (fp32 for fp16/bf16); both on x's device.
// x's dtype: any floating type if `any_float`, else float32 or float64. `fn` names the op in the
// messages.
inline Shape check_inputs(const char* fn, const at::Tensor& x, const at::Tensor& gate,
                          const at::Tensor& weight, bool any_float) {
  TORCH_CHECK(x.dim() == 4, fn, ": x must be (B, C, H, W), got shape ", x.sizes());
  if (any_float) {
    TORCH_CHECK(at::isFloatingType(x.scalar_type()), fn, ": x must be floating point, got ",
                x.scalar_type());
  } else {
    TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, fn,
                ": x must be float32 or float64 (upcast half precision first), got ",
                x.scalar_type());
  }
  TORCH_CHECK(gate.dim() == 2 && gate.size(0) == x.size(0) && gate.size(1) == x.size(1), fn,
              ": gate must be (", x.size(0), ", ", x.size(1), "), got shape ", gate.sizes());
  TORCH_CHECK(weight.dim() == 4 && weight.size(0) == 1 && weight.size(1) == 2 &&
                  weight.size(2) == weight.size(3) && weight.size(2) % 2 == 1,
              fn, ": weight must be (1, 2, k, k) with k odd, got shape ", weight.sizes());
  TORCH_CHECK(gate.scalar_type() == x.scalar_type(), fn, ": gate must have x's dtype ",
              x.scalar_type(), ", got ", gate.scalar_type());
  // the conv weight: x's dtype or its op-math type (fp32 for fp16/bf16 x)
  const at::ScalarType acc = at::toOpMathType(x.scalar_type());
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() || weight.scalar_type() == acc, fn,
              ": weight must have x's dtype ", x.scalar_type(),
              acc == x.scalar_type() ? std::string() : std::string(" or ") + c10::toString(acc),
              ", got ", weight.scalar_type());
  for (const at::Tensor* t : {&gate, &weight}) {
    TORCH_CHECK(t->device() == x.device(), fn, ": inputs must be on ", x.device(), ", got ",
                t->device());
  }
  const int64_t k = weight.size(2);
  return {x.size(0), x.size(1), x.size(2), x.size(3), x.size(2) * x.size(3), k, k / 2};
}

}  // namespace inter_task_attention
}  // namespace hermes
