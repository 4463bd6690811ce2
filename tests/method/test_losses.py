"""The method's non-contrastive terms and schedules against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hermes.method import (
    consistency_loss,
    consistency_weight,
    cross_entropy_mean,
    dice_loss,
    entropy_threshold,
    masked_cross_entropy,
    poly_factor,
    rampup,
)


def test_rampup_and_schedules_by_hand() -> None:
    assert rampup(0, 10) == pytest.approx(math.exp(-5.0))
    assert rampup(5, 10) == pytest.approx(math.exp(-5.0 * 0.25))
    assert rampup(10, 10) == 1.0 and rampup(99, 10) == 1.0 and rampup(-3, 10) == rampup(0, 10)
    # eta(t) = (0.75 + 0.25 rampup(t, T)) ln C
    assert entropy_threshold(0, 100, 2) == pytest.approx((0.75 + 0.25 * math.exp(-5)) * math.log(2))
    assert entropy_threshold(100, 100, 3) == pytest.approx(math.log(3))
    # lambda(t) = rampup(t // 100, 40)
    assert consistency_weight(250) == pytest.approx(math.exp(-5 * (1 - 2 / 40) ** 2))
    assert consistency_weight(4000) == 1.0
    assert poly_factor(0, 100) == 1.0
    assert poly_factor(50, 100) == pytest.approx(0.5**0.9)
    assert poly_factor(100, 100) == 0.0


def test_dice_loss_by_hand() -> None:
    # one image 1x2: lesion probabilities via logits (l0, l1) -> p1 = sigmoid(l1 - l0)
    logits = torch.tensor([[[[0.0, 0.0]], [[0.0, math.log(3.0)]]]])  # p1 = [0.5, 0.75]
    target = torch.tensor([[[1, 0]]])
    p = [0.5, 0.75]
    inter = p[0] * 1
    union = p[0] ** 2 + p[1] ** 2 + 1
    expected = 1 - (2 * inter + 1e-5) / (union + 1e-5)
    assert dice_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # the weight (reliable mask) restricts the sums to the kept pixels
    weight = torch.tensor([[[True, False]]])
    expected_w = 1 - (2 * 0.5 + 1e-5) / (0.25 + 1 + 1e-5)
    assert dice_loss(logits, target, weight=weight).item() == pytest.approx(expected_w, rel=1e-6)
    # summed over the batch, not averaged per image
    two = torch.cat([logits, torch.zeros_like(logits)])  # second image: p1 = [0.5, 0.5]
    t2 = torch.cat([target, torch.zeros_like(target)])  # ... and no lesion
    expected_batch = 1 - (2 * inter + 1e-5) / (union + 0.5 + 1e-5)
    assert dice_loss(two, t2).item() == pytest.approx(expected_batch, rel=1e-6)


def test_dice_loss_per_image_is_the_mean_of_the_images_losses() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 4, 5)
    target = torch.zeros(3, 4, 5, dtype=torch.long)
    target[0, :2, :2] = 1  # a small lesion
    target[1, :, 1:] = 1  # a large one
    # image 2 has no lesion: it scores 1 - eps / (sum(p^2) + eps), about 1
    weight = torch.rand(3, 4, 5) > 0.3
    for w in (None, weight):
        each = [
            dice_loss(logits[i : i + 1], target[i : i + 1], None if w is None else w[i : i + 1])
            for i in range(3)
        ]
        per_image = dice_loss(logits, target, weight=w, per_image=True)
        assert per_image.item() == pytest.approx(sum(e.item() for e in each) / 3, rel=1e-6)
        # the batch Dice weighs the large lesion more: the two reductions differ
        assert abs(per_image.item() - dice_loss(logits, target, weight=w).item()) > 1e-2
    assert each[2].item() == pytest.approx(1.0, abs=1e-4)
    # an image that predicts nothing where there is nothing scores 0
    empty = torch.stack([torch.full((4, 5), 30.0), torch.full((4, 5), -30.0)])[None]
    none = torch.zeros(1, 4, 5, dtype=torch.long)
    assert dice_loss(empty, none, per_image=True).item() == pytest.approx(0.0, abs=1e-6)


def test_cross_entropies_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    target = torch.tensor([0, 0, 1])
    ce = [-math.log(math.exp(2) / (math.exp(2) + 1)), -math.log(1 / (1 + math.e)), math.log(2)]
    assert cross_entropy_mean(logits, target).item() == pytest.approx(sum(ce) / 3, rel=1e-6)
    # smoothed labels: 1 - s + s / C on the target, s / C on the other class
    s = 0.2
    logp = torch.log_softmax(logits, dim=1)
    smooth = [
        -((1 - s + s / 2) * logp[i, t] + (s / 2) * logp[i, 1 - t]).item()
        for i, t in enumerate(target.tolist())
    ]
    assert cross_entropy_mean(logits, target, label_smoothing=s).item() == pytest.approx(
        sum(smooth) / 3, rel=1e-6
    )
    mask = torch.tensor([True, False, True])
    # masked entries count as zero; the mean is over the whole batch
    assert masked_cross_entropy(logits, target, mask).item() == pytest.approx(
        (ce[0] + ce[2]) / 3, rel=1e-6
    )


def test_consistency_loss_by_hand() -> None:
    z_cls = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z_seg = torch.tensor([[3.0, 3.0], [0.0, -1.0]])
    expected = 1 - (math.cos(math.pi / 4) + -1.0) / 2
    assert consistency_loss(z_cls, z_seg).item() == pytest.approx(expected, rel=1e-6)
