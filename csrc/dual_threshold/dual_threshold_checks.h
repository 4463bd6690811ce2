// Input checks of hermes::dual_threshold_pass1 / _pass2 shared by the CPU kernels
// (dual_threshold_cpu.cpp) and the CUDA kernels (dual_threshold_cuda.cu). The CUDA kernels add
// that the first input is a CUDA tensor; the CPU pass 2 checks each label against the number of
// classes as it reads it.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace hermes {
namespace dual_threshold {

// Pass 1's logits (B, C, P) and whether a valid mask (B, P) was given.
struct Pass1Shape {
  int64_t batch, classes, positions;
  bool has_valid;
};

// logits (B, C, P) of a floating dtype with C >= 1; valid bool (B, P) on the logits' device, or
// an empty tensor (no mask).
inline Pass1Shape check_pass1(const at::Tensor& logits, const at::Tensor& valid) {
  TORCH_CHECK(logits.dim() == 3,
              "dual_threshold_pass1: logits must have 3 dimensions (B, C, P), got shape ",
              logits.sizes());
  TORCH_CHECK(at::isFloatingType(logits.scalar_type()),
              "dual_threshold_pass1: logits must be floating point, got ", logits.scalar_type());
  const int64_t batch = logits.size(0), classes = logits.size(1), positions = logits.size(2);
  TORCH_CHECK(classes >= 1, "dual_threshold_pass1: logits need at least one class, got shape ",
              logits.sizes());
  const bool has_valid = valid.numel() > 0 || valid.dim() == 2;
  if (has_valid) {
    TORCH_CHECK(valid.device() == logits.device(), "dual_threshold_pass1: valid must be on ",
                logits.device(), ", got ", valid.device());
    TORCH_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 2 && valid.size(0) == batch &&
                    valid.size(1) == positions,
                "dual_threshold_pass1: valid must be bool of shape (", batch, ", ", positions,
                ") or empty, got ", valid.scalar_type(), " ", valid.sizes());
  }
  return {batch, classes, positions, has_valid};
}

inline void check_pass2_dtype(const char* name, const at::Tensor& t, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype, "dual_threshold_pass2: ", name, " must be ", dtype,
              ", got ", t.scalar_type());
}

// labels int64, confidence and entropy fp32, ok bool, all with labels' number of entries;
// thresholds (C,); eta one value; all on labels' device.
inline void check_pass2(const at::Tensor& labels, const at::Tensor& confidence,
                        const at::Tensor& entropy, const at::Tensor& ok,
                        const at::Tensor& thresholds, const at::Tensor& eta) {
  for (const at::Tensor* t : {&confidence, &entropy, &ok, &thresholds, &eta}) {
    TORCH_CHECK(t->device() == labels.device(), "dual_threshold_pass2: inputs must be on ",
                labels.device(), ", got one on ", t->device());
  }
  check_pass2_dtype("labels", labels, at::kLong);
  check_pass2_dtype("confidence", confidence, at::kFloat);
  check_pass2_dtype("entropy", entropy, at::kFloat);
  check_pass2_dtype("ok", ok, at::kBool);
  TORCH_CHECK(thresholds.dim() == 1, "dual_threshold_pass2: thresholds must be (C,), got shape ",
              thresholds.sizes());
  TORCH_CHECK(eta.numel() == 1, "dual_threshold_pass2: eta must hold one value, got shape ",
              eta.sizes());
  const int64_t n = labels.numel();
  for (const at::Tensor* t : {&confidence, &entropy, &ok}) {
    TORCH_CHECK(t->numel() == n, "dual_threshold_pass2: inputs must have ", n,
                " entries like labels, got shape ", t->sizes());
  }
}

}  // namespace dual_threshold
}  // namespace hermes
