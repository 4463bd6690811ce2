"""Test metrics against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from hermes.eval import MetricAccumulator, auc_binary, classification_metrics, dice_iou_per_image


def test_dice_iou_per_image_by_hand() -> None:
    pred = torch.tensor([[[1, 1, 0, 0]], [[0, 0, 0, 0]], [[1, 0, 0, 0]]])
    target = torch.tensor([[[1, 0, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 0, 1]]])
    dice, iou = dice_iou_per_image(pred, target, 1)
    # image 0: inter 1, |p| 2, |t| 1 -> dice 2/3, iou 1/2; image 1: both empty -> 1; image 2: 0
    torch.testing.assert_close(dice, torch.tensor([2 / 3, 1.0, 0.0]))
    torch.testing.assert_close(iou, torch.tensor([0.5, 1.0, 0.0]))
    dice0, iou0 = dice_iou_per_image(pred, target, 0)
    torch.testing.assert_close(dice0, torch.tensor([0.8, 1.0, 2 * 2 / 6]))
    torch.testing.assert_close(iou0, torch.tensor([2 / 3, 1.0, 0.5]))


def test_auc_by_hand_with_ties() -> None:
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    positive = torch.tensor([False, False, True, True, True])
    # pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8 > both, 0.4 > 0.1 yes, 0.4 = 0.4 half
    expected = (1 + 0 + 1 + 1 + 1 + 0.5) / 6
    assert auc_binary(scores, positive) == pytest.approx(expected)
    assert math.isnan(auc_binary(scores, torch.zeros(5, dtype=torch.bool)))


def test_classification_metrics_binary_and_multiclass() -> None:
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 1, 0])
    m = classification_metrics(probs, labels)
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["sensitivity"] == pytest.approx(2 / 3)  # malignant (1) found: rows 1, 3 of 1, 2, 3
    assert m["specificity"] == pytest.approx(1 / 2)  # benign kept: row 0 of rows 0, 4
    assert m["auc"] == pytest.approx(auc_binary(probs[:, 1], labels == 1))
    probs3 = torch.eye(3)[[0, 1, 2, 2]].float()
    m3 = classification_metrics(probs3, torch.tensor([0, 1, 2, 1]))
    assert m3["accuracy"] == pytest.approx(3 / 4)
    assert m3["sensitivity"] == pytest.approx((1 + 0.5 + 1) / 3)  # macro one-vs-rest


def test_accumulator_means_over_images() -> None:
    acc = MetricAccumulator()
    seg = torch.zeros(2, 2, 1, 2)
    seg[:, 1, 0, 0] = 5.0  # predicts lesion at pixel 0 in both images
    acc.update(
        seg,
        torch.tensor([[[1, 0]], [[1, 1]]]),
        torch.tensor([[2.0, 0.0], [0.0, 2.0]]),
        torch.tensor([0, 0]),
    )
    m = acc.compute()
    assert m["dice_lesion"] == pytest.approx((1.0 + 2 / 3) / 2)
    # pooled: 2 lesion pixels predicted, 3 true, 2 shared -> 2 * 2 / (2 + 3)
    assert m["dice_lesion_pooled"] == pytest.approx(0.8)
    assert m["accuracy"] == pytest.approx(0.5) and m["images"] == 2
