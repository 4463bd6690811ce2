// Supervised contrastive loss on the CPU: tiled online log-sum-exp, never the N x M matrix.
//
// Tiles of kTileRows anchors x kTileCols contrasts are computed with a BLAS GEMM into a
// per-thread buffer, reduced at once and dropped; only per-anchor vectors (N floats) are kept
// for the backward pass, which recomputes the tiles. Memory is O((N + M) d) plus one tile per
// thread (and, in the backward pass, at most kAccumulatorBudget of per-thread dB partial sums).
//
// "all":          l_i = -(t/tb) * (sum_{p in P(i)} s_ip / |P(i)| - lse_i), where the positive
//                 sum comes from per-class sums of the contrasts (linear in a_i).
// "pos_plus_neg": l_i = (t/tb) / |P(i)| * sum_{p in P(i)} softplus(nlse_i - s_ip), with nlse_i
//                 the log-sum-exp over the negatives (a first tiled pass, then a second).
// s_ij = a_i . b_j / t; the self pair (j = self_offset + i) is never a positive and is left out
// of the "all" denominator.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>
#include <tuple>
#include <vector>

#include "../common.h"
#include "supcon_checks.h"

namespace hermes {
namespace {

constexpr int64_t kTileRows = 128;
constexpr int64_t kTileCols = 512;
// Upper bound (bytes) of the per-thread partial sums of the contrast gradient.
constexpr int64_t kAccumulatorBudget = int64_t(512) << 20;

struct Problem {
  at::Tensor a;       // (N, d) anchors, contiguous, float or double
  at::Tensor a_s;     // (N, d) anchors / temperature
  at::Tensor b;       // (M, d) contrasts
  at::Tensor ya, yb;  // (N,), (M,) int64
  int64_t n = 0, m = 0, d = 0;
  bool has_self = false;
  int64_t self_offset = 0;
  // Contrasts are the anchors themselves (same storage, labels and self pairs): the logits are
  // symmetric and each pair of tiles is computed once.
  bool symmetric = false;
  double temperature = 1.0;

  // Column of anchor i's own sample among the contrasts, or -1.
  int64_t self_col(int64_t i) const {
    if (!has_self) return -1;
    const int64_t j = i + self_offset;
    return (j >= 0 && j < m) ? j : -1;
  }
};

Problem make_problem(const char* fn, const at::Tensor& anchors, const at::Tensor& labels,
                     const at::Tensor& contrasts, const at::Tensor& contrast_labels,
                     double temperature, std::optional<int64_t> self_offset) {
  supcon::check_inputs(fn, anchors, labels, contrasts, contrast_labels);
  TORCH_CHECK(temperature > 0, fn, ": temperature must be > 0, got ", temperature);
  Problem p;
  // Detached: the tiles are computed with out= GEMMs (autograd is registered from Python).
  p.a = anchors.detach().contiguous();
  p.a_s = p.a / temperature;
  p.b = contrasts.detach().contiguous();
  p.ya = labels.contiguous();
  p.yb = contrast_labels.contiguous();
  p.n = p.a.size(0);
  p.m = p.b.size(0);
  p.d = p.a.size(1);
  p.has_self = self_offset.has_value();
  p.self_offset = self_offset.value_or(0);
  p.temperature = temperature;
  p.symmetric = p.has_self && p.self_offset == 0 && anchors.is_same(contrasts) &&
                labels.is_same(contrast_labels);
  return p;
}

// Calls visit(s, r0, rows, c0, cols) for each tile of row block [r0, r0 + rows) against all
// contrasts, s being the row-major (rows, cols) logits a_i . b_j / t in a reused buffer.
template <typename scalar_t, typename Visit>
void for_each_tile(const Problem& p, int64_t r0, int64_t rows, std::vector<scalar_t>& buffer,
                   const Visit& visit) {
  buffer.resize(kTileRows * kTileCols);
  const at::Tensor a_rows = p.a_s.narrow(0, r0, rows);
  for (int64_t c0 = 0; c0 < p.m; c0 += kTileCols) {
    const int64_t cols = std::min(kTileCols, p.m - c0);
    at::Tensor s = at::from_blob(buffer.data(), {rows, cols}, p.a.options());
    at::mm_out(s, a_rows, p.b.narrow(0, c0, cols).t());
    visit(buffer.data(), r0, rows, c0, cols);
  }
}

int64_t num_row_blocks(int64_t n) { return (n + kTileRows - 1) / kTileRows; }

// Online log-sum-exp over all tiles of the anchors' rows: lse[i] = log sum_j exp(s_ij) over the
// contrasts that `keep(i, j)` admits (-inf when none).
template <typename scalar_t, typename Keep>
void tiled_lse(const Problem& p, scalar_t* lse, const Keep& keep) {
  constexpr scalar_t kNegInf = -std::numeric_limits<scalar_t>::infinity();
  at::parallel_for(0, num_row_blocks(p.n), 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer;
    std::vector<scalar_t> mx(kTileRows), sum(kTileRows);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kTileRows, rows = std::min(kTileRows, p.n - r0);
      std::fill(mx.begin(), mx.end(), kNegInf);
      std::fill(sum.begin(), sum.end(), scalar_t(0));
      for_each_tile<scalar_t>(p, r0, rows, buffer, [&](scalar_t* s, int64_t, int64_t, int64_t c0,
                                                      int64_t cols) {
        for (int64_t r = 0; r < rows; ++r) {
          scalar_t* row = s + r * cols;
          keep(r0 + r, c0, cols, row);  // sets excluded entries to -inf
          const scalar_t local = row_max(row, cols);
          if (local == kNegInf) continue;
          const scalar_t new_max = std::max(mx[r], local);
          const scalar_t acc = row_sum_exp(row, cols, new_max);
          sum[r] = sum[r] * std::exp(mx[r] - new_max) + acc;
          mx[r] = new_max;
        }
      });
      for (int64_t r = 0; r < rows; ++r) {
        lse[r0 + r] = sum[r] > 0 ? mx[r] + std::log(sum[r]) : kNegInf;
      }
    }
  });
}

// ---- Symmetric case (contrasts = anchors): a fixed shift instead of running maxima ----------
//
// By Cauchy-Schwarz every logit lies in [-shift, shift] with shift = max_i |a_i|^2 / t, so
// E_ij = exp(s_ij - shift) cannot overflow, and cannot underflow to 0 when 2 shift < kMaxRange
// (t = 0.07 and unit features give 2 shift = 28.6). E is then symmetric: one tile serves the
// anchors of its rows and of its columns, which halves the GEMMs and the exps.
constexpr int64_t kSymTile = 256;

template <typename scalar_t>
constexpr double kMaxRange = 80.0;
template <>
constexpr double kMaxRange<double> = 600.0;

// The shift, or nullopt where the symmetric path does not apply.
template <typename scalar_t>
std::optional<scalar_t> symmetric_shift(const Problem& p) {
  if (!p.symmetric || p.n == 0) return std::nullopt;
  const double shift = p.a.pow(2).sum(1).max().item<double>() / p.temperature;
  if (!std::isfinite(shift) || 2 * shift >= kMaxRange<scalar_t>) return std::nullopt;
  return static_cast<scalar_t>(shift);
}

struct TilePairs {
  std::vector<std::pair<int64_t, int64_t>> pairs;  // (I, J) with I <= J
  int64_t slots;
};

TilePairs tile_pairs(int64_t n, int64_t slot_bytes) {
  TilePairs t;
  const int64_t blocks = (n + kSymTile - 1) / kSymTile;
  for (int64_t i = 0; i < blocks; ++i)
    for (int64_t j = i; j < blocks; ++j) t.pairs.emplace_back(i, j);
  t.slots = std::max<int64_t>(
      1, std::min<int64_t>({int64_t(at::get_num_threads()), int64_t(t.pairs.size()),
                            kAccumulatorBudget / std::max<int64_t>(1, slot_bytes)}));
  return t;
}

// Calls visit(e, r0, rows, c0, cols) with e = exp(s - shift) of tile (I, J), self pairs 0.
template <typename scalar_t, typename Visit>
void for_each_symmetric_tile(const Problem& p, scalar_t shift, const TilePairs& tp,
                             const Visit& visit) {
  at::parallel_for(0, tp.slots, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer(kSymTile * kSymTile);
    for (int64_t slot = begin; slot < end; ++slot) {
      for (size_t k = slot; k < tp.pairs.size(); k += tp.slots) {
        const int64_t r0 = tp.pairs[k].first * kSymTile, c0 = tp.pairs[k].second * kSymTile;
        const int64_t rows = std::min(kSymTile, p.n - r0), cols = std::min(kSymTile, p.n - c0);
        at::Tensor s = at::from_blob(buffer.data(), {rows, cols}, p.a.options());
        at::mm_out(s, p.a_s.narrow(0, r0, rows), p.a.narrow(0, c0, cols).t());
        scalar_t* e = buffer.data();
        for (int64_t r = 0; r < rows; ++r) row_scaled_exp(e + r * cols, cols, shift, scalar_t(1));
        if (r0 == c0) {
          for (int64_t r = 0; r < rows; ++r) e[r * cols + r] = 0;
        }
        visit(slot, e, r0, rows, c0, cols);
      }
    }
  });
}

template <typename scalar_t>
void symmetric_lse(const Problem& p, scalar_t shift, scalar_t* lse) {
  const TilePairs tp = tile_pairs(p.n, p.n * int64_t(sizeof(scalar_t)));
  at::Tensor sums = at::zeros({tp.slots, p.n}, p.a.options());
  scalar_t* sp = sums.data_ptr<scalar_t>();
  for_each_symmetric_tile<scalar_t>(p, shift, tp, [&](int64_t slot, const scalar_t* e, int64_t r0,
                                                      int64_t rows, int64_t c0, int64_t cols) {
    scalar_t* acc = sp + slot * p.n;
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* row = e + r * cols;
      scalar_t total = 0;
#pragma omp simd reduction(+ : total)
      for (int64_t j = 0; j < cols; ++j) total += row[j];
      acc[r0 + r] += total;
      if (r0 != c0) {
        scalar_t* col_acc = acc + c0;
#pragma omp simd
        for (int64_t j = 0; j < cols; ++j) col_acc[j] += row[j];
      }
    }
  });
  const at::Tensor total = tp.slots == 1 ? sums[0] : sums.sum(0);
  const scalar_t* tot = total.data_ptr<scalar_t>();
  for (int64_t i = 0; i < p.n; ++i) {
    lse[i] = tot[i] > 0 ? shift + std::log(tot[i]) : -std::numeric_limits<scalar_t>::infinity();
  }
}

// Dense part of the gradient with G_ij = coef_i exp(s_ij - lse_i): grad_a = (G + G^T) a, as
// H = E o (u_r + u_c) with u_i = coef_i exp(shift - lse_i), per pair of tiles.
template <typename scalar_t>
at::Tensor symmetric_backward(const Problem& p, scalar_t shift, const at::Tensor& coef,
                              const at::Tensor& lse) {
  // coef is 0 for anchors without a positive, whose lse may be -inf (no other contrast at all).
  const at::Tensor u_t =
      at::where(coef != 0, coef * (shift - lse).exp(), at::zeros_like(coef)).contiguous();
  const scalar_t* u = u_t.data_ptr<scalar_t>();
  const TilePairs tp = tile_pairs(p.n, p.n * p.d * int64_t(sizeof(scalar_t)));
  at::Tensor partial = at::zeros({tp.slots, p.n, p.d}, p.a.options());
  for_each_symmetric_tile<scalar_t>(p, shift, tp, [&](int64_t slot, scalar_t* e, int64_t r0,
                                                      int64_t rows, int64_t c0, int64_t cols) {
    const scalar_t* uc = u + c0;
    for (int64_t r = 0; r < rows; ++r) {
      scalar_t* row = e + r * cols;
      const scalar_t ur = u[r0 + r];
#pragma omp simd
      for (int64_t j = 0; j < cols; ++j) row[j] *= ur + uc[j];
    }
    const at::Tensor h = at::from_blob(e, {rows, cols}, p.a.options());
    at::Tensor acc = partial[slot];
    acc.narrow(0, r0, rows).addmm_(h, p.a.narrow(0, c0, cols));
    if (r0 != c0) acc.narrow(0, c0, cols).addmm_(h.t(), p.a.narrow(0, r0, rows));
  });
  return tp.slots == 1 ? partial[0] : partial.sum(0);
}

// Compact class ids of both label vectors, per-class contrast counts and sums.
struct Classes {
  at::Tensor of_a, of_b;  // (N,), (M,) int64 in [0, K)
  at::Tensor count;       // (K,) int64 contrasts per class
  at::Tensor sum_b;       // (K, d) sum of the contrasts of each class
};

Classes compact_classes(const Problem& p) {
  const at::Tensor all = at::cat({p.ya, p.yb});
  at::Tensor inverse = std::get<1>(at::_unique2(all, /*sorted=*/true, /*return_inverse=*/true,
                                                /*return_counts=*/false))
                           .reshape({-1});
  Classes c;
  const int64_t k = inverse.numel() > 0 ? inverse.max().item<int64_t>() + 1 : 0;
  c.of_a = inverse.narrow(0, 0, p.n).contiguous();
  c.of_b = inverse.narrow(0, p.n, p.m).contiguous();
  c.count = at::bincount(c.of_b, {}, k);
  c.sum_b = at::zeros({k, p.d}, p.b.options()).index_add_(0, c.of_b, p.b);
  return c;
}

// Whether anchor i's self pair exists and has the anchor's label (it is then excluded from P(i)).
inline bool self_is_same(const Problem& p, const int64_t* ya, const int64_t* yb, int64_t i) {
  const int64_t j = p.self_col(i);
  return j >= 0 && yb[j] == ya[i];
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_all(const Problem& p,
                                                                      double scale) {
  constexpr scalar_t kNegInf = -std::numeric_limits<scalar_t>::infinity();
  at::Tensor lse = at::empty({p.n}, p.a.options());
  at::Tensor loss = at::empty({p.n}, p.a.options());
  at::Tensor num_pos = at::empty({p.n}, p.ya.options());
  scalar_t* lse_ptr = lse.data_ptr<scalar_t>();
  if (const auto shift = symmetric_shift<scalar_t>(p)) {
    symmetric_lse<scalar_t>(p, *shift, lse_ptr);
  } else {
    tiled_lse<scalar_t>(p, lse_ptr, [&](int64_t i, int64_t c0, int64_t cols, scalar_t* row) {
      const int64_t j = p.self_col(i);
      if (j >= c0 && j < c0 + cols) row[j - c0] = kNegInf;
    });
  }
  const Classes cls = compact_classes(p);
  const int64_t* ya = p.ya.data_ptr<int64_t>();
  const int64_t* yb = p.yb.data_ptr<int64_t>();
  const int64_t* ca = cls.of_a.data_ptr<int64_t>();
  const int64_t* count = cls.count.data_ptr<int64_t>();
  const scalar_t* sum_b = cls.sum_b.data_ptr<scalar_t>();
  const scalar_t* a_s = p.a_s.data_ptr<scalar_t>();
  const scalar_t* b = p.b.data_ptr<scalar_t>();
  scalar_t* loss_ptr = loss.data_ptr<scalar_t>();
  int64_t* np_ptr = num_pos.data_ptr<int64_t>();
  const int64_t d = p.d;
  at::parallel_for(0, p.n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const bool same_self = self_is_same(p, ya, yb, i);
      const int64_t npos = count[ca[i]] - (same_self ? 1 : 0);
      np_ptr[i] = npos;
      if (npos <= 0) {
        loss_ptr[i] = 0;
        continue;
      }
      const scalar_t* ai = a_s + i * d;
      const scalar_t* si = sum_b + ca[i] * d;
      const scalar_t* bs = same_self ? b + p.self_col(i) * d : nullptr;
      scalar_t dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int64_t k = 0; k < d; ++k) dot += ai[k] * (si[k] - (bs ? bs[k] : scalar_t(0)));
      loss_ptr[i] = static_cast<scalar_t>(-scale * (dot / npos - lse_ptr[i]));
    }
  });
  return {loss, lse, at::zeros({p.n}, p.a.options()), num_pos};
}

template <typename scalar_t>
inline scalar_t softplus(scalar_t z) {
  return z > 0 ? z + std::log1p(std::exp(-z)) : std::log1p(std::exp(z));
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> forward_pos_plus_neg(const Problem& p,
                                                                               double scale) {
  constexpr scalar_t kNegInf = -std::numeric_limits<scalar_t>::infinity();
  const int64_t* ya = p.ya.data_ptr<int64_t>();
  const int64_t* yb = p.yb.data_ptr<int64_t>();
  at::Tensor nlse = at::empty({p.n}, p.a.options());
  scalar_t* nlse_ptr = nlse.data_ptr<scalar_t>();
  // Pass 1: log-sum-exp over the negatives (labels differ; the self pair included if so).
  tiled_lse<scalar_t>(p, nlse_ptr, [&](int64_t i, int64_t c0, int64_t cols, scalar_t* row) {
    const int64_t yi = ya[i];
    const int64_t* ybc = yb + c0;
#pragma omp simd
    for (int64_t j = 0; j < cols; ++j) row[j] = ybc[j] == yi ? kNegInf : row[j];
  });
  // Pass 2: over the positive pairs.
  at::Tensor loss = at::empty({p.n}, p.a.options());
  at::Tensor q = at::empty({p.n}, p.a.options());
  at::Tensor num_pos = at::empty({p.n}, p.ya.options());
  scalar_t* loss_ptr = loss.data_ptr<scalar_t>();
  scalar_t* q_ptr = q.data_ptr<scalar_t>();
  int64_t* np_ptr = num_pos.data_ptr<int64_t>();
  at::parallel_for(0, num_row_blocks(p.n), 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer;
    std::vector<scalar_t> sp(kTileRows), qs(kTileRows);
    std::vector<int64_t> cnt(kTileRows);
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t r0 = blk * kTileRows, rows = std::min(kTileRows, p.n - r0);
      std::fill(sp.begin(), sp.end(), scalar_t(0));
      std::fill(qs.begin(), qs.end(), scalar_t(0));
      std::fill(cnt.begin(), cnt.end(), int64_t(0));
      for_each_tile<scalar_t>(p, r0, rows, buffer, [&](scalar_t* s, int64_t, int64_t, int64_t c0,
                                                      int64_t cols) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = r0 + r, yi = ya[i], self = p.self_col(i);
          const scalar_t* row = s + r * cols;
          for (int64_t j = 0; j < cols; ++j) {
            if (yb[c0 + j] != yi || c0 + j == self) continue;
            const scalar_t z = nlse_ptr[i] - row[j];
            sp[r] += softplus(z);
            qs[r] += scalar_t(1) / (scalar_t(1) + std::exp(-z));
            cnt[r] += 1;
          }
        }
      });
      for (int64_t r = 0; r < rows; ++r) {
        loss_ptr[r0 + r] = cnt[r] > 0 ? static_cast<scalar_t>(scale * sp[r] / cnt[r]) : 0;
        q_ptr[r0 + r] = qs[r];
        np_ptr[r0 + r] = cnt[r];
      }
    }
  });
  return {loss, nlse, q, num_pos};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> supcon_fwd_cpu(
    const at::Tensor& anchors, const at::Tensor& labels, const at::Tensor& contrasts,
    const at::Tensor& contrast_labels, double temperature, double base_temperature,
    std::optional<int64_t> self_offset, bool pos_plus_neg) {
  TORCH_CHECK(base_temperature > 0, "supcon_fwd: base_temperature must be > 0, got ",
              base_temperature);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem("supcon_fwd", anchors, labels, contrasts, contrast_labels,
                                 temperature, self_offset);
  const double scale = temperature / base_temperature;
  return AT_DISPATCH_FLOATING_TYPES(p.a.scalar_type(), "supcon_fwd_cpu", [&] {
    return pos_plus_neg ? forward_pos_plus_neg<scalar_t>(p, scale)
                        : forward_all<scalar_t>(p, scale);
  });
}

// Accumulates, for every row block, G (rows x cols, filled in place from the logits tile by
// `fill(s, r0, rows, c0, cols)`) into grad_a[rows] += G b[cols] and grad_b[cols] += G^T a[rows].
// The contrast gradient is summed into per-slot partial sums (one slot per parallel worker,
// bounded by kAccumulatorBudget), so that no two threads write the same rows.
template <typename scalar_t, typename Fill>
std::tuple<at::Tensor, at::Tensor> tiled_backward(const Problem& p, const Fill& fill) {
  at::Tensor grad_a = at::zeros_like(p.a);
  const int64_t blocks = num_row_blocks(p.n);
  const int64_t bytes = std::max<int64_t>(1, p.m * p.d * int64_t(sizeof(scalar_t)));
  const int64_t slots = std::max<int64_t>(
      1, std::min<int64_t>({int64_t(at::get_num_threads()), blocks, kAccumulatorBudget / bytes}));
  at::Tensor partial = at::zeros({slots, p.m, p.d}, p.b.options());
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    std::vector<scalar_t> buffer;
    for (int64_t slot = begin; slot < end; ++slot) {
      at::Tensor grad_b_slot = partial[slot];
      for (int64_t blk = slot; blk < blocks; blk += slots) {
        const int64_t r0 = blk * kTileRows, rows = std::min(kTileRows, p.n - r0);
        at::Tensor ga_rows = grad_a.narrow(0, r0, rows);
        const at::Tensor a_rows = p.a.narrow(0, r0, rows);
        for_each_tile<scalar_t>(p, r0, rows, buffer, [&](scalar_t* s, int64_t, int64_t,
                                                         int64_t c0, int64_t cols) {
          fill(s, r0, rows, c0, cols);
          const at::Tensor g = at::from_blob(s, {rows, cols}, p.a.options());
          ga_rows.addmm_(g, p.b.narrow(0, c0, cols));
          at::Tensor gb_cols = grad_b_slot.narrow(0, c0, cols);
          gb_cols.addmm_(g.t(), a_rows);
        });
      }
    }
  });
  return {grad_a, slots == 1 ? partial[0] : partial.sum(0)};
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> backward_all(const Problem& p, const at::Tensor& grad_loss,
                                                const at::Tensor& lse, const at::Tensor& num_pos,
                                                double base_temperature) {
  const scalar_t* g = grad_loss.data_ptr<scalar_t>();
  const scalar_t* lse_ptr = lse.data_ptr<scalar_t>();
  const int64_t* np_ptr = num_pos.data_ptr<int64_t>();
  const scalar_t inv_tb = static_cast<scalar_t>(1.0 / base_temperature);
  // Dense part: G_ij = g_i / tb * exp(s_ij - lse_i), self pair 0, rows without positive 0.
  at::Tensor grad_a, grad_b;
  if (const auto shift = symmetric_shift<scalar_t>(p)) {
    const at::Tensor coef = at::where(num_pos > 0, grad_loss * inv_tb, at::zeros_like(grad_loss));
    grad_a = symmetric_backward<scalar_t>(p, *shift, coef, lse);
    grad_b = at::zeros_like(p.b);  // the same tensor as the anchors: autograd adds both
  } else {
    std::tie(grad_a, grad_b) = tiled_backward<scalar_t>(
        p, [&](scalar_t* s, int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t i = r0 + r;
            scalar_t* row = s + r * cols;
            const scalar_t coef = np_ptr[i] > 0 ? g[i] * inv_tb : scalar_t(0);
            if (coef == 0) {
              std::fill(row, row + cols, scalar_t(0));
              continue;
            }
            row_scaled_exp(row, cols, lse_ptr[i], coef);
            const int64_t self = p.self_col(i);
            if (self >= c0 && self < c0 + cols) row[self - c0] = 0;
          }
        });
  }
  // Positive part, through the class sums: with c_i = g_i / (tb |P(i)|),
  // grad_a_i -= c_i (S_{y_i} - [self same] b_self), grad_b_j -= T_{y_j} - [j self of i] c_i a_i,
  // T_k = sum_{i in class k} c_i a_i.
  const Classes cls = compact_classes(p);
  at::Tensor coef = at::where(num_pos > 0, grad_loss * inv_tb / num_pos.clamp_min(1),
                              at::zeros_like(grad_loss));
  const int64_t k = cls.sum_b.size(0);
  at::Tensor t_sum = at::zeros({k, p.d}, p.a.options()).index_add_(0, cls.of_a, p.a * coef.unsqueeze(1));
  grad_a.sub_(coef.unsqueeze(1) * cls.sum_b.index_select(0, cls.of_a));
  grad_b.sub_(t_sum.index_select(0, cls.of_b));
  const int64_t* ya = p.ya.data_ptr<int64_t>();
  const int64_t* yb = p.yb.data_ptr<int64_t>();
  const scalar_t* c = coef.data_ptr<scalar_t>();
  const scalar_t* a = p.a.data_ptr<scalar_t>();
  const scalar_t* b = p.b.data_ptr<scalar_t>();
  scalar_t* ga = grad_a.data_ptr<scalar_t>();
  scalar_t* gb = grad_b.data_ptr<scalar_t>();
  // Self pairs map anchors to distinct contrasts, so rows never collide.
  at::parallel_for(0, p.n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      if (!self_is_same(p, ya, yb, i) || c[i] == 0) continue;
      const int64_t j = p.self_col(i);
      for (int64_t x = 0; x < p.d; ++x) {
        ga[i * p.d + x] += c[i] * b[j * p.d + x];
        gb[j * p.d + x] += c[i] * a[i * p.d + x];
      }
    }
  });
  return {grad_a, grad_b};
}

template <typename scalar_t>
std::tuple<at::Tensor, at::Tensor> backward_pos_plus_neg(const Problem& p,
                                                         const at::Tensor& grad_loss,
                                                         const at::Tensor& nlse,
                                                         const at::Tensor& q,
                                                         const at::Tensor& num_pos,
                                                         double base_temperature) {
  const scalar_t* g = grad_loss.data_ptr<scalar_t>();
  const scalar_t* nlse_ptr = nlse.data_ptr<scalar_t>();
  const scalar_t* q_ptr = q.data_ptr<scalar_t>();
  const int64_t* np_ptr = num_pos.data_ptr<int64_t>();
  const int64_t* ya = p.ya.data_ptr<int64_t>();
  const int64_t* yb = p.yb.data_ptr<int64_t>();
  // With c_i = g_i / (tb |P(i)|): G_ip = c_i (sigmoid(s_ip - nlse_i) - 1) on positives,
  // G_in = c_i Q_i exp(s_in - nlse_i) on negatives, 0 elsewhere, where
  // Q_i = sum_p sigmoid(nlse_i - s_ip) (d log_prob_ip / d s_in = -exp(s_in - nlse_i) (1 - q_ip)).
  return tiled_backward<scalar_t>(
      p, [&](scalar_t* s, int64_t r0, int64_t rows, int64_t c0, int64_t cols) {
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t i = r0 + r, yi = ya[i], self = p.self_col(i);
          scalar_t* row = s + r * cols;
          const scalar_t coef =
              np_ptr[i] > 0 ? g[i] / (static_cast<scalar_t>(base_temperature) * np_ptr[i]) : 0;
          if (coef == 0) {
            std::fill(row, row + cols, scalar_t(0));
            continue;
          }
          const scalar_t shift = nlse_ptr[i], qi = q_ptr[i];
          for (int64_t j = 0; j < cols; ++j) {
            const scalar_t sj = row[j];
            if (yb[c0 + j] != yi) {
              row[j] = coef * qi * exp_nonpos(sj - shift);
            } else if (c0 + j == self) {
              row[j] = 0;
            } else {
              row[j] = coef * (scalar_t(1) / (scalar_t(1) + std::exp(shift - sj)) - scalar_t(1));
            }
          }
        }
      });
}

std::tuple<at::Tensor, at::Tensor> supcon_bwd_cpu(
    const at::Tensor& grad_loss, const at::Tensor& anchors, const at::Tensor& labels,
    const at::Tensor& contrasts, const at::Tensor& contrast_labels, const at::Tensor& lse,
    const at::Tensor& q, const at::Tensor& num_pos, double temperature, double base_temperature,
    std::optional<int64_t> self_offset, bool pos_plus_neg) {
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const Problem p = make_problem("supcon_bwd", anchors, labels, contrasts, contrast_labels,
                                 temperature, self_offset);
  TORCH_CHECK(base_temperature > 0, "supcon_bwd: base_temperature must be > 0, got ",
              base_temperature);
  for (const at::Tensor* t : {&grad_loss, &lse, &q}) {
    TORCH_CHECK(t->dim() == 1 && t->size(0) == p.n && t->scalar_type() == p.a.scalar_type(),
                "supcon_bwd: grad_loss, lse and q must be (", p.n, ",) ", p.a.scalar_type(),
                ", got ", t->scalar_type(), " ", t->sizes());
  }
  TORCH_CHECK(num_pos.dim() == 1 && num_pos.size(0) == p.n && num_pos.scalar_type() == at::kLong,
              "supcon_bwd: num_pos must be (", p.n, ",) int64, got ", num_pos.scalar_type(), " ",
              num_pos.sizes());
  const at::Tensor g = grad_loss.contiguous(), l = lse.contiguous(), qc = q.contiguous(),
                   np = num_pos.contiguous();
  return AT_DISPATCH_FLOATING_TYPES(p.a.scalar_type(), "supcon_bwd_cpu", [&] {
    return pos_plus_neg ? backward_pos_plus_neg<scalar_t>(p, g, l, qc, np, base_temperature)
                        : backward_all<scalar_t>(p, g, l, np, base_temperature);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(hermes, CPU, m) {
  m.impl("supcon_fwd", &supcon_fwd_cpu);
  m.impl("supcon_bwd", &supcon_bwd_cpu);
}

}  // namespace hermes
