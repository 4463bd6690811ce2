// Dual-threshold pseudo-labels on the CPU, in two passes over (B, C, P) logits (P = H * W, or 1).
//
// Pass 1 reads the logits once per entry (b, p): argmax (first maximum), confidence 1 / sum_c
// exp(x_c - max), entropy -sum_c p_c log(p_c + 1e-6), finiteness, and the class histogram of the
// entries that take part (finite and valid). The thresholds are computed from the histogram in
// Python (after the histogram hook, e.g. an all-reduce); pass 2 applies them and counts what
// each threshold keeps. Logits of any float dtype are read as fp32, as in the reference.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <vector>

#include "../common.h"
#include "dual_threshold_checks.h"

namespace hermes {
namespace {

constexpr int64_t kChunk = 256;        // entries per task
constexpr float kEntropyEps = 1e-6f;  // as hermes.ops.dual_threshold.ENTROPY_EPS

template <typename scalar_t>
void pass1_kernel(const scalar_t* x, const bool* valid, int64_t batch, int64_t classes,
                  int64_t positions, int64_t* labels, float* confidence, float* entropy,
                  bool* ok, int64_t* hist_parts) {
  const int64_t chunks = (positions + kChunk - 1) / kChunk;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  at::parallel_for(0, batch * chunks, 1, [&](int64_t begin, int64_t end) {
    float mx[kChunk], sum[kChunk], ent[kChunk];
    int64_t arg[kChunk];
    bool finite[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / chunks, p0 = (task % chunks) * kChunk;
      const int64_t n = std::min(kChunk, positions - p0);
      const scalar_t* xb = x + b * classes * positions + p0;
      for (int64_t k = 0; k < n; ++k) {
        mx[k] = -std::numeric_limits<float>::infinity();
        arg[k] = 0;
        finite[k] = true;
        sum[k] = 0;
        ent[k] = 0;
      }
      for (int64_t c = 0; c < classes; ++c) {
        const scalar_t* row = xb + c * positions;
        for (int64_t k = 0; k < n; ++k) {
          const float v = static_cast<float>(row[k]);
          finite[k] = finite[k] && std::isfinite(v);
          if (v > mx[k]) {
            mx[k] = v;
            arg[k] = c;
          }
        }
      }
      for (int64_t c = 0; c < classes; ++c) {
        const scalar_t* row = xb + c * positions;
        for (int64_t k = 0; k < n; ++k) sum[k] += std::exp(static_cast<float>(row[k]) - mx[k]);
      }
      for (int64_t c = 0; c < classes; ++c) {
        const scalar_t* row = xb + c * positions;
        for (int64_t k = 0; k < n; ++k) {
          const float pc = std::exp(static_cast<float>(row[k]) - mx[k]) / sum[k];
          ent[k] -= pc * std::log(pc + kEntropyEps);
        }
      }
      int64_t* hist = hist_parts + task * classes;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t e = b * positions + p0 + k;
        const bool f = finite[k];
        labels[e] = f ? arg[k] : 0;
        confidence[e] = f ? 1.0f / sum[k] : nan;
        entropy[e] = f ? ent[k] : nan;
        ok[e] = f && (valid == nullptr || valid[e]);
        if (ok[e]) hist[labels[e]] += 1;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> dual_threshold_pass1_cpu(
    const at::Tensor& logits, const at::Tensor& valid) {
  const dual_threshold::Pass1Shape shape = dual_threshold::check_pass1(logits, valid);
  const int64_t batch = shape.batch, classes = shape.classes, positions = shape.positions;
  const bool has_valid = shape.has_valid;
  const at::Tensor x = logits.detach().contiguous();
  const at::Tensor v = has_valid ? valid.contiguous() : valid;
  const auto f32 = x.options().dtype(at::kFloat);
  at::Tensor labels = at::empty({batch, positions}, x.options().dtype(at::kLong));
  at::Tensor confidence = at::empty({batch, positions}, f32);
  at::Tensor entropy = at::empty({batch, positions}, f32);
  at::Tensor ok = at::empty({batch, positions}, x.options().dtype(at::kBool));
  const int64_t tasks = batch * ((positions + kChunk - 1) / kChunk);
  at::Tensor hist_parts = at::zeros({tasks, classes}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "dual_threshold_pass1",
                                  [&] {
    pass1_kernel<scalar_t>(x.data_ptr<scalar_t>(), has_valid ? v.data_ptr<bool>() : nullptr,
                           batch, classes, positions, labels.data_ptr<int64_t>(),
                           confidence.data_ptr<float>(), entropy.data_ptr<float>(),
                           ok.data_ptr<bool>(), hist_parts.data_ptr<int64_t>());
  });
  return {labels, confidence, entropy, ok, hist_parts.sum(0)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dual_threshold_pass2_cpu(
    const at::Tensor& labels, const at::Tensor& confidence, const at::Tensor& entropy,
    const at::Tensor& ok, const at::Tensor& thresholds, const at::Tensor& eta) {
  dual_threshold::check_pass2(labels, confidence, entropy, ok, thresholds, eta);
  const int64_t n = labels.numel(), classes = thresholds.size(0);
  const at::Tensor y = labels.contiguous(), conf = confidence.contiguous(),
                   ent = entropy.contiguous(), okc = ok.contiguous();
  const at::Tensor thr = thresholds.to(at::kFloat).contiguous();
  const float eta_value = eta.to(at::kFloat).item<float>();
  at::Tensor reliable = at::empty(labels.sizes(), ok.options());
  const int64_t tasks = std::max<int64_t>(1, (n + kChunk * 16 - 1) / (kChunk * 16));
  at::Tensor kept_parts = at::zeros({tasks, 3, classes}, labels.options());
  at::Tensor sum_parts = at::zeros({tasks, 2}, conf.options().dtype(at::kDouble));
  const int64_t* yp = y.data_ptr<int64_t>();
  const float* cp = conf.data_ptr<float>();
  const float* ep = ent.data_ptr<float>();
  const bool* op = okc.data_ptr<bool>();
  const float* tp = thr.data_ptr<float>();
  bool* rp = reliable.data_ptr<bool>();
  int64_t* kp = kept_parts.data_ptr<int64_t>();
  double* sp = sum_parts.data_ptr<double>();
  at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t e0 = task * kChunk * 16, e1 = std::min(n, e0 + kChunk * 16);
      int64_t* kept = kp + task * 3 * classes;
      double sum_conf = 0, sum_ent = 0;
      for (int64_t e = e0; e < e1; ++e) {
        const int64_t c = yp[e];
        TORCH_CHECK(c >= 0 && c < classes, "dual_threshold_pass2: label ", c, " outside [0, ",
                    classes, ")");
        const bool confident = cp[e] > tp[c];
        const bool certain = ep[e] < eta_value;
        rp[e] = confident && certain && op[e];
        if (!op[e]) continue;
        kept[c] += confident;
        kept[classes + c] += certain;
        kept[2 * classes + c] += confident && certain;
        sum_conf += cp[e];
        sum_ent += ep[e];
      }
      sp[task * 2] = sum_conf;
      sp[task * 2 + 1] = sum_ent;
    }
  });
  return {reliable, kept_parts.sum(0), sum_parts.sum(0).to(at::kFloat)};
}

}  // namespace

TORCH_LIBRARY_IMPL(hermes, CPU, m) {
  m.impl("dual_threshold_pass1", &dual_threshold_pass1_cpu);
  m.impl("dual_threshold_pass2", &dual_threshold_pass2_cpu);
}

}  // namespace hermes
