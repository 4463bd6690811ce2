"""The PyTorch references of ``hermes.ops`` against independent formulations.

supcon: a per-pair Python loop (both denominators, contrasts, self_offset, weights),
pytorch-metric-learning's SupConLoss, and the SupContrast code (module, both contrast modes).
dual_threshold: thresholds and masks computed by hand. inter_task_attention: the formula with
explicit loops.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hermes.ops import (
    SupConLoss,
    dual_threshold_reference,
    inter_task_attention_reference,
    supcon_loss_reference,
)


def _features(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)


def supcon_loop(
    a,
    y,
    b=None,
    yb=None,
    *,
    t=0.07,
    bt=0.07,
    weights=None,
    denominator="all",
    self_offset=None,
    reduction="mean",
):
    """Per-anchor, per-pair SupCon in plain Python arithmetic on tensor scalars."""
    if b is None:
        b, yb, self_offset = a, y, 0
    losses, with_pos = [], 0
    for i in range(a.shape[0]):
        self_j = None if self_offset is None else self_offset + i
        s = [(a[i] @ b[j]) / t for j in range(b.shape[0])]
        pos = [j for j in range(b.shape[0]) if j != self_j and int(yb[j]) == int(y[i])]
        if not pos:
            losses.append(a.sum() * 0.0)
            continue
        with_pos += 1
        if denominator == "all":
            den = sum(torch.exp(s[j]) for j in range(b.shape[0]) if j != self_j)
            terms = [s[p] - torch.log(den) for p in pos]
        else:
            neg = sum(
                (torch.exp(s[j]) for j in range(b.shape[0]) if int(yb[j]) != int(y[i])),
                a.new_zeros(()),
            )
            terms = [s[p] - torch.log(torch.exp(s[p]) + neg) for p in pos]
        li = -(t / bt) * sum(terms) / len(pos)
        losses.append(li * (1.0 if weights is None else weights[i]))
    per_anchor = torch.stack(losses)
    if reduction == "none":
        return per_anchor
    return per_anchor.sum() / max(with_pos, 1)


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("n,classes", [(1, 2), (7, 3), (12, 2)])
def test_supcon_matches_pair_loop(denominator: str, n: int, classes: int) -> None:
    a = _features(n, 5, seed=n).requires_grad_(True)
    y = torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(1))
    ref = supcon_loss_reference(
        a, y, denominator=denominator, temperature=0.1, base_temperature=0.07
    )
    loop = supcon_loop(a, y, denominator=denominator, t=0.1, bt=0.07)
    torch.testing.assert_close(ref, loop.float(), rtol=1e-5, atol=1e-6)
    (g_ref,) = torch.autograd.grad(ref, a)
    (g_loop,) = torch.autograd.grad(loop, a)
    torch.testing.assert_close(g_ref.double(), g_loop, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("denominator", ["all", "pos_plus_neg"])
@pytest.mark.parametrize("self_offset", [None, 0, 3, 9])
def test_supcon_contrasts_weights_self_offset(denominator: str, self_offset: int | None) -> None:
    a = _features(5, 4, seed=2).requires_grad_(True)
    b = _features(11, 4, seed=3).requires_grad_(True)
    y = torch.tensor([0, 1, 2, 0, 1])
    yb = torch.tensor([0, 1, 1, 0, 0, 1, 2, 1, 0, 1, 0])
    w = torch.tensor([1.0, 0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    kw = dict(weights=w, denominator=denominator, self_offset=self_offset)
    for reduction in ("none", "mean"):
        ref = supcon_loss_reference(a, y, b, yb, reduction=reduction, **kw)
        loop = supcon_loop(a, y, b, yb, reduction=reduction, **kw)
        torch.testing.assert_close(ref, loop.float(), rtol=1e-5, atol=1e-6)
        g_ref = torch.autograd.grad(ref.sum(), (a, b))
        g_loop = torch.autograd.grad(loop.sum(), (a, b))
        for x, z in zip(g_ref, g_loop, strict=True):
            torch.testing.assert_close(x.double(), z, rtol=1e-4, atol=1e-6)


def test_supcon_self_offset_excludes_exactly_that_pair() -> None:
    # anchors are rows 4..7 of the contrasts: with self_offset=4 the result equals contrasts=None
    b = _features(10, 6, seed=4)
    yb = torch.tensor([0, 1, 0, 1, 0, 1, 1, 0, 0, 1])
    a, y = b[4:8], yb[4:8]
    with_offset = supcon_loss_reference(a, y, b, yb, self_offset=4, reduction="none")
    full = supcon_loss_reference(b, yb, reduction="none")[4:8]
    # full's denominators run over the same 9 non-self contrasts
    torch.testing.assert_close(with_offset, full)


def test_supcon_equals_pytorch_metric_learning() -> None:
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    a = _features(16, 8, seed=5).float()
    y = torch.tensor([0, 1, 2, 3] * 4)  # every anchor has positives
    ours = supcon_loss_reference(a, y, temperature=0.07, base_temperature=0.07)
    theirs = pml.SupConLoss(temperature=0.07)(a, y)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_supcon_edge_cases() -> None:
    a = _features(6, 4, seed=6)
    # anchors without positives contribute 0 and are left out of the mean's count
    y = torch.tensor([0, 0, 1, 2, 3, 4])
    per = supcon_loss_reference(a, y, reduction="none")
    assert torch.all(per[2:] == 0) and torch.all(per[:2] > 0)
    torch.testing.assert_close(supcon_loss_reference(a, y), per[:2].sum() / 2)
    # nobody has a positive: 0, not NaN
    lonely = supcon_loss_reference(a, torch.arange(6))
    assert lonely.item() == 0.0
    # a class absent from the batch changes nothing (labels 0 and 5, no 1..4)
    y2 = torch.tensor([0, 5, 0, 5, 0, 5])
    torch.testing.assert_close(
        supcon_loss_reference(a, y2), supcon_loss_reference(a, torch.tensor([0, 1, 0, 1, 0, 1]))
    )
    # every weight zero: the loss is zero (the count still has the anchors with positives)
    assert supcon_loss_reference(a, y2, weights=torch.zeros(6)).item() == 0.0


def supcontrast(features, labels, temperature=0.07, contrast_mode="all", base_temperature=0.07):
    """The SupContrast ``SupConLoss.forward`` (Khosla et al.), restated with a labels mask.

    As in SupContrast's ``losses.py`` since its fix for anchors without a positive: their
    positive count is taken as 1 (their loss is 0) and the mean runs over every anchor.
    """
    bsz, n_views = features.shape[:2]
    labels = labels.view(-1, 1)
    mask = torch.eq(labels, labels.T).float()
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    if contrast_mode == "one":
        anchor_feature, anchor_count = features[:, 0], 1
    else:
        anchor_feature, anchor_count = contrast_feature, n_views
    logits = anchor_feature @ contrast_feature.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(anchor_count, n_views)
    logits_mask = torch.scatter(
        torch.ones_like(mask), 1, torch.arange(bsz * anchor_count).view(-1, 1), 0
    )
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    pairs = mask.sum(1)
    pairs = torch.where(pairs < 1e-6, torch.ones_like(pairs), pairs)
    mean_log_prob_pos = (mask * log_prob).sum(1) / pairs
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, bsz).mean()


# labels of 6 samples: several per class; a class of one (no positive with one view); none.
LABELINGS = {"classes": [0, 1, 0, 2, 1, 0], "singletons": [0, 1, 0, 2, 3, 0], "none": None}


@pytest.mark.parametrize("n_views", [1, 2, 3])
@pytest.mark.parametrize("labeling", list(LABELINGS))
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_supcon_module_matches_supcontrast(
    any_backend, require_backend, contrast_mode: str, labeling: str, n_views: int
) -> None:
    """The drop-in's loss and gradient are SupContrast's in every mode, anchors without a
    positive included (they count 0 in SupContrast's mean; see ``SupConLoss``)."""
    name, device = any_backend
    g = torch.Generator().manual_seed(7)
    feats = F.normalize(torch.randn(6, n_views, 16, generator=g), dim=-1)
    labels = None if LABELINGS[labeling] is None else torch.tensor(LABELINGS[labeling])
    require_backend(
        "supcon_loss", name, dict(anchors=feats[:, 0].to(device), contrasts=None, weights=None)
    )
    module = SupConLoss(
        temperature=0.1, contrast_mode=contrast_mode, base_temperature=0.07, backend=name
    )
    mine = feats.to(device).requires_grad_(True)
    ours = module(mine, None if labels is None else labels.to(device))
    theirs_feats = feats.clone().requires_grad_(True)
    theirs = supcontrast(
        theirs_feats, labels if labels is not None else torch.arange(6), 0.1, contrast_mode, 0.07
    )
    torch.testing.assert_close(ours.cpu(), theirs, rtol=1e-5, atol=1e-6)
    (g1,) = torch.autograd.grad(ours, mine)
    (g2,) = torch.autograd.grad(theirs, theirs_feats)
    torch.testing.assert_close(g1.cpu(), g2, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- dual threshold
def _softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def test_dual_threshold_by_hand() -> None:
    logits = torch.tensor([[3.0, 0.0], [0.2, 0.0], [0.0, 4.0], [2.5, 0.0], [0.0, 0.1]])
    eta = 0.25
    out = dual_threshold_reference(logits, eta=eta, tau_max=0.95, tau_min=0.5)
    rows = [_softmax_row(r) for r in logits.tolist()]
    labels = [max(range(2), key=lambda c: p[c]) for p in rows]
    conf = [max(p) for p in rows]
    ent = [-sum(pc * math.log(pc + 1e-6) for pc in p) for p in rows]
    r = [labels.count(c) / 5 for c in range(2)]  # 0: 3/5, 1: 2/5
    tau = [0.95 - 0.45 * (1 - rc) for rc in r]
    reliable = [conf[i] > tau[labels[i]] and ent[i] < eta for i in range(5)]
    assert out.labels.tolist() == labels == [0, 0, 1, 0, 1]
    torch.testing.assert_close(out.thresholds, torch.tensor(tau))
    torch.testing.assert_close(out.confidence, torch.tensor(conf))
    torch.testing.assert_close(out.entropy, torch.tensor(ent))
    assert out.reliable.tolist() == reliable
    assert reliable == [True, False, True, False, False]
    assert conf[3] > tau[0] and ent[3] > eta  # sample 3: confident, but too uncertain
    s = out.stats
    assert s.histogram.tolist() == [3, 2]
    conf_ok = [conf[i] > tau[labels[i]] for i in range(5)]
    cert_ok = [ent[i] < eta for i in range(5)]
    for name, hits in (
        ("kept_confident", conf_ok),
        ("kept_certain", cert_ok),
        ("kept_reliable", reliable),
    ):
        expected = [
            sum(h for h, lab in zip(hits, labels, strict=True) if lab == c) / labels.count(c)
            for c in range(2)
        ]
        torch.testing.assert_close(getattr(s, name), torch.tensor(expected), msg=name)
    torch.testing.assert_close(s.mean_confidence, torch.tensor(sum(conf) / 5))
    torch.testing.assert_close(s.mean_entropy, torch.tensor(sum(ent) / 5))


def test_dual_threshold_per_pixel_equals_per_sample() -> None:
    g = torch.Generator().manual_seed(8)
    logits = torch.randn(2, 3, 4, 5, generator=g) * 3
    flat = logits.permute(0, 2, 3, 1).reshape(-1, 3)
    a = dual_threshold_reference(logits, eta=0.7)
    b = dual_threshold_reference(flat, eta=0.7)
    assert torch.equal(a.labels.reshape(-1), b.labels)
    assert torch.equal(a.reliable.reshape(-1), b.reliable)
    torch.testing.assert_close(a.thresholds, b.thresholds)


def test_dual_threshold_absent_class_valid_nonfinite_hook() -> None:
    logits = torch.tensor(
        [
            [5.0, 0.0, 0.0],
            [4.0, 0.0, 0.0],
            [float("nan"), 0.0, 0.0],
            [0.0, 6.0, 0.0],
            [0.0, float("inf"), 0.0],
        ]
    )
    valid = torch.tensor([True, True, True, True, False])
    out = dual_threshold_reference(logits, eta=10.0, valid=valid)
    # counted: rows 0, 1 (class 0) and row 3 (class 1); row 2 non-finite, row 4 invalid
    assert out.stats.histogram.tolist() == [2, 1, 0]
    torch.testing.assert_close(
        out.thresholds, torch.tensor([0.95 - 0.45 / 3, 0.95 - 0.45 * 2 / 3, 0.5])
    )  # class 2 absent: tau_min
    assert out.reliable.tolist() == [True, True, False, True, False]
    assert math.isnan(out.confidence[2].item()) and out.labels[2].item() == 0
    # everything masked: nothing reliable, zero statistics, thresholds tau_max - (max-min) = tau_min
    none = dual_threshold_reference(logits, eta=10.0, valid=torch.zeros(5, dtype=torch.bool))
    assert not none.reliable.any() and none.stats.histogram.sum().item() == 0
    torch.testing.assert_close(none.thresholds, torch.full((3,), 0.5))
    assert none.stats.mean_confidence.item() == 0.0
    # the hook's histogram sets the thresholds; the stats keep the local histogram
    hooked = dual_threshold_reference(
        logits, eta=10.0, valid=valid, histogram_hook=lambda h: h + torch.tensor([0, 0, 3])
    )
    torch.testing.assert_close(
        hooked.thresholds,
        torch.tensor([0.95 - 0.45 * 4 / 6, 0.95 - 0.45 * 5 / 6, 0.95 - 0.45 * 3 / 6]),
    )
    assert hooked.stats.histogram.tolist() == [2, 1, 0]


# ----------------------------------------------------------------------------- IAS
def test_inter_task_attention_by_hand() -> None:
    g = torch.Generator().manual_seed(9)
    b, c, h, w, k = 2, 3, 4, 5, 3
    x = torch.randn(b, c, h, w, generator=g, dtype=torch.float64)
    gate = torch.rand(b, c, generator=g, dtype=torch.float64)
    weight = torch.randn(1, 2, k, k, generator=g, dtype=torch.float64)
    bias = torch.randn(1, generator=g, dtype=torch.float64)
    out = inter_task_attention_reference(x, gate, weight, bias)
    expected = torch.empty_like(x)
    for n in range(b):
        gated = [
            [[gate[n, ch] * x[n, ch, i, j] for j in range(w)] for i in range(h)] for ch in range(c)
        ]
        mx = [[max(gated[ch][i][j] for ch in range(c)) for j in range(w)] for i in range(h)]
        mean = [[sum(gated[ch][i][j] for ch in range(c)) / c for j in range(w)] for i in range(h)]
        for i in range(h):
            for j in range(w):
                acc = bias[0]
                for di in range(k):
                    for dj in range(k):
                        ii, jj = i + di - k // 2, j + dj - k // 2
                        if 0 <= ii < h and 0 <= jj < w:  # zero padding
                            acc = acc + weight[0, 0, di, dj] * mx[ii][jj]
                            acc = acc + weight[0, 1, di, dj] * mean[ii][jj]
                a = 1.0 / (1.0 + math.exp(-float(acc)))
                for ch in range(c):
                    expected[n, ch, i, j] = a * gated[ch][i][j]
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
