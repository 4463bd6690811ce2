"""Image-level and pixel-level contrast, hard-anchor sampling and the class queues."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hermes.method import ClassQueues, image_contrast, pixel_contrast, sample_pixel_anchors


def test_image_contrast_by_hand() -> None:
    # two samples, orthogonal, both views identical: every anchor has one positive (its other
    # view, similarity 1) and two non-self contrasts at similarity 0.
    e = torch.eye(2)
    labels = torch.tensor([0, 1])
    per_anchor = math.log(math.e + 2) - 1.0  # -(1 - log(e^1 + e^0 + e^0)) with t = bt = 1
    loss = image_contrast(e, e, labels, torch.ones(2), temperature=1.0, base_temperature=1.0)
    assert loss.item() == pytest.approx(per_anchor, rel=1e-6)
    # the reliable mask weighs the anchors; the count stays that of anchors with a positive
    half = image_contrast(
        e, e, labels, torch.tensor([1.0, 0.0]), temperature=1.0, base_temperature=1.0
    )
    assert half.item() == pytest.approx(per_anchor / 2, rel=1e-6)


def test_image_contrast_with_bank_adds_contrasts() -> None:
    e = torch.eye(2)
    bank = ClassQueues(num_classes=2, size=4, dim=2)
    bank.enqueue(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    loss = image_contrast(
        e, e, torch.tensor([0, 1]), torch.ones(2), temperature=1.0, base_temperature=1.0, bank=bank
    )
    # class-0 anchors gain a positive at similarity 1; class-1 anchors a negative at similarity 0
    den0 = 2 * math.e + 2  # non-self: other view (e), other sample's 2 views (1, 1), bank (e)
    l0 = -(1 - math.log(den0))  # both positives at similarity 1
    den1 = math.e + 3
    l1 = -(1 - math.log(den1))
    assert loss.item() == pytest.approx((2 * l0 + 2 * l1) / 4, rel=1e-6)


def test_hard_anchor_sampling_counts_and_choice() -> None:
    # 1 image, 10x10 grid; class 0: 60 pixels (20 predicted 1 = hard), class 1: 40 (all easy)
    h = w = 10
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels.view(-1)[60:] = 1
    preds = labels.clone()
    preds.view(-1)[:20] = 1
    emb = torch.arange(h * w, dtype=torch.float32).view(1, 1, h, w).repeat(1, 3, 1, 1)
    feats, classes = sample_pixel_anchors(emb, labels, preds, max_samples=40, max_views=30)
    # both classes qualify (> 30 pixels): n_view = min(40 // 2, 30) = 20
    assert classes.tolist() == [0, 1] and feats.shape == (2, 20, 3)
    picked0 = feats[0, :, 0].long()
    assert (picked0 < 20).sum() == 10 and ((picked0 >= 20) & (picked0 < 60)).sum() == 10
    assert len(set(picked0.tolist())) == 20
    picked1 = feats[1, :, 0].long()  # no hard pixel: all easy
    assert bool((picked1 >= 60).all()) and len(set(picked1.tolist())) == 20
    # ignored pixels (-1) never qualify; too small classes are skipped
    labels[:, :, :] = -1
    labels.view(-1)[:5] = 0
    feats, classes = sample_pixel_anchors(emb, labels, preds, max_samples=40, max_views=30)
    assert feats.shape[0] == 0 and classes.numel() == 0


def contrastive_seg(x_: torch.Tensor, y_: torch.Tensor, t: float, bt: float) -> torch.Tensor:
    """ContrastiveSeg's ``_contrastive`` (Wang et al. 2021), restated."""
    anchor_num, n_view = x_.shape[:2]
    labels = y_.view(-1, 1)
    mask = torch.eq(labels, labels.T).float()
    feats = torch.cat(torch.unbind(x_, dim=1), dim=0)
    logits = feats @ feats.T / t
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(n_view, n_view)
    neg_mask = 1 - mask
    logits_mask = torch.ones_like(mask).scatter_(
        1, torch.arange(anchor_num * n_view).view(-1, 1), 0
    )
    mask = mask * logits_mask
    neg_logits = (torch.exp(logits) * neg_mask).sum(1, keepdim=True)
    log_prob = logits - torch.log(torch.exp(logits) + neg_logits)
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return (-(t / bt) * mean_log_prob_pos).mean()


def test_pixel_contrast_matches_contrastive_seg() -> None:
    g = torch.Generator().manual_seed(0)
    emb = F.normalize(torch.randn(2, 8, 8, 8, generator=g), dim=1)
    labels = (torch.rand(2, 32, 32, generator=g) > 0.5).long()
    labels[:, :16] = 0
    labels[:, 16:] = 1
    labels[1, :4] = -1
    preds = (torch.rand(2, 32, 32, generator=g) > 0.3).long()
    loss, anchors, anchor_labels = pixel_contrast(
        emb, labels, preds, max_samples=64, max_views=10, temperature=0.1, base_temperature=0.07
    )
    # rebuild (A, n_view, d) from the view-major anchors and compare with ContrastiveSeg
    n_classes = 4  # two images x two classes
    n_view = anchors.shape[0] // n_classes
    assert n_view == min(64 // 4, 10)
    x_ = anchors.view(n_view, n_classes, -1).transpose(0, 1)
    y_ = anchor_labels[:n_classes]
    torch.testing.assert_close(loss, contrastive_seg(x_, y_, 0.1, 0.07), rtol=1e-5, atol=1e-6)


def test_class_queues_fifo_and_overflow() -> None:
    q = ClassQueues(num_classes=2, size=3, dim=1)
    f = torch.arange(1.0, 6.0).view(5, 1)
    q.enqueue(f, torch.tensor([0, 1, 0, 0, 1]), keep=torch.tensor([True, True, False, True, True]))
    feats, labels = q.filled()
    assert labels.tolist() == [0, 0, 1, 1] and feats.view(-1).tolist() == [1, 4, 2, 5]
    # class 0 gets 3 more (label 5 is out of range, skipped): a ring of 3 keeps the newest 3
    q.enqueue(torch.tensor([[6.0], [7.0], [8.0], [9.0]]), torch.tensor([0, 0, 0, 5]))
    feats, labels = q.filled()
    class0 = sorted(feats[labels == 0].view(-1).tolist())
    assert class0 == [6.0, 7.0, 8.0]
    assert q.count.tolist() == [3, 2]
    # more than `size` at once keeps the last `size`
    q.enqueue(torch.arange(10.0, 15.0).view(5, 1), torch.ones(5, dtype=torch.long))
    feats, labels = q.filled()
    assert sorted(feats[labels == 1].view(-1).tolist()) == [12.0, 13.0, 14.0]


def test_contrasts_pass_fp32_precision_to_the_op(monkeypatch) -> None:
    """Both losses hand ``fp32_precision`` (``method.contrast_fp32_precision``) to supcon_loss."""
    from hermes.method import contrast

    seen = []
    real = contrast.supcon_loss

    def spy(*args, **kwargs):
        seen.append(kwargs.get("fp32_precision"))
        return real(*args, **kwargs)

    monkeypatch.setattr(contrast, "supcon_loss", spy)
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    image_contrast(z, z.flip(0), torch.tensor([0, 1, 0, 1]), torch.ones(4), fp32_precision="tf32")
    emb = torch.randn(1, 8, 4, 4, generator=g)
    labels = torch.randint(0, 2, (1, 4, 4), generator=g)
    pixel_contrast(emb, labels, labels, max_views=2, fp32_precision="tf32")
    assert seen == ["tf32", "tf32"]
