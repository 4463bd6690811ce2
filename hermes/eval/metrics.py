"""Test metrics: segmentation Dice and IoU, classification accuracy, sensitivity,
specificity and AUC. Plain tensor formulas, accumulated over a test set.

Conventions:
- Dice and IoU are computed per image and averaged over images (an image where both the
  prediction and the truth are empty for a class scores 1 for that class). ``*_lesion`` is
  class 1; ``*_mean`` averages background and lesion. ``dice_lesion_pooled`` is the lesion
  Dice of all test pixels pooled into one image (large lesions weigh more, and a missed small
  lesion costs little): higher than the per-image mean, reported beside it because some
  papers and scripts use it.
- Classification: with 2 classes the positive class is index 1 (``malignant``); with more,
  sensitivity, specificity and AUC are macro averages of one-vs-rest.
- A metric that is undefined for the images at hand is NaN (e.g. AUC, sensitivity or
  specificity when a class is absent); :func:`undefined_reasons` says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from hermes.eval.paired import PerImage

# What :meth:`MetricAccumulator.compute` returns besides the image count; higher is better.
METRICS = (
    "dice_lesion",
    "iou_lesion",
    "dice_lesion_pooled",
    "dice_mean",
    "iou_mean",
    "accuracy",
    "sensitivity",
    "specificity",
    "auc",
)


def dice_iou_per_image(pred: Tensor, target: Tensor, cls: int) -> tuple[Tensor, Tensor]:
    """Per-image Dice and IoU of class ``cls``. Shapes: pred, target (B, H, W) int -> (B,), (B,)."""
    p = (pred == cls).flatten(1).float()
    t = (target == cls).flatten(1).float()
    inter = (p * t).sum(1)
    total = p.sum(1) + t.sum(1)
    union = total - inter
    empty = total == 0
    dice = torch.where(empty, torch.ones_like(inter), 2 * inter / total.clamp(min=1))
    iou = torch.where(empty, torch.ones_like(inter), inter / union.clamp(min=1))
    return dice, iou


def auc_binary(scores: Tensor, positive: Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN when only one
    class is present. Shapes: scores (N,) float, positive (N,) bool."""
    scores = scores.double()
    n_pos = int(positive.sum())
    n_neg = int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    # average ranks over ties
    uniq, inverse, counts = torch.unique(sorted_scores, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inverse, ranks[order])
    avg = sums / counts
    ranks[order] = avg[inverse]
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def classification_metrics(probs: Tensor, labels: Tensor) -> dict[str, float]:
    """Accuracy, sensitivity, specificity, AUC. Shapes: probs (N, C), labels (N,) int64."""
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    out = {"accuracy": float((pred == labels).float().mean()) if len(labels) else math.nan}
    positives = [1] if num_classes == 2 else list(range(num_classes))
    sens, spec, aucs = [], [], []
    for c in positives:
        is_c, pred_c = labels == c, pred == c
        tp = int((is_c & pred_c).sum())
        fn = int((is_c & ~pred_c).sum())
        tn = int((~is_c & ~pred_c).sum())
        fp = int((~is_c & pred_c).sum())
        sens.append(tp / (tp + fn) if tp + fn else math.nan)
        spec.append(tn / (tn + fp) if tn + fp else math.nan)
        aucs.append(auc_binary(probs[:, c], is_c))

    def mean(values: list[float]) -> float:
        finite = [v for v in values if not math.isnan(v)]
        return sum(finite) / len(finite) if finite else math.nan

    out.update(sensitivity=mean(sens), specificity=mean(spec), auc=mean(aucs))
    return out


def undefined_reasons(
    metrics: dict[str, float], label_counts: Sequence[int], classes: Sequence[str]
) -> dict[str, str]:
    """Why each NaN metric of ``metrics`` is undefined, ``{metric: reason}`` (empty when none
    is). ``label_counts``: evaluated images per class index; ``classes``: the class names."""
    undefined = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
    if not undefined:
        return {}
    total = sum(label_counts)
    missing = [name for name, n in zip(classes, label_counts, strict=False) if n == 0]
    present = ", ".join(f"{n} {name}" for name, n in zip(classes, label_counts, strict=False) if n)
    if total == 0:
        reason = "no image was evaluated"
    elif missing:
        reason = f"no {' or '.join(missing)} image among the {total} evaluated ({present})"
    else:
        reason = f"not computable from the {total} evaluated images ({present})"
    return dict.fromkeys(undefined, reason)


class MetricAccumulator:
    """Collects per-image segmentation scores and classification outputs over batches."""

    def __init__(self) -> None:
        self.dice: list[list[Tensor]] = [[], []]
        self.iou: list[list[Tensor]] = [[], []]
        self.pooled = torch.zeros(2, dtype=torch.float64)  # lesion pixels: overlap, both totals
        self.probs: list[Tensor] = []
        self.labels: list[Tensor] = []
        self.ids: list[str] = []

    def update(
        self,
        seg_logits: Tensor,
        masks: Tensor,
        cls_logits: Tensor,
        labels: Tensor,
        ids: Sequence[str] | None = None,
    ) -> None:
        """Shapes: seg_logits (B, K, H, W), masks (B, H, W), cls_logits (B, C), labels (B,);
        ``ids``: the images' ids (default: their positions in the evaluation order)."""
        start = len(self.ids)
        self.ids.extend(
            [str(i) for i in ids]
            if ids is not None
            else [str(start + i) for i in range(len(labels))]
        )
        pred = seg_logits.argmax(1).cpu()
        masks = masks.cpu()
        for c in (0, 1):
            d, i = dice_iou_per_image(pred, masks, c)
            self.dice[c].append(d)
            self.iou[c].append(i)
        p, t = pred == 1, masks == 1
        self.pooled += torch.tensor([(p & t).sum().item(), p.sum().item() + t.sum().item()])
        self.probs.append(torch.softmax(cls_logits.float(), 1).cpu())
        self.labels.append(labels.cpu())

    def compute(self) -> dict[str, float]:
        """``dice_lesion``, ``iou_lesion``, ``dice_lesion_pooled``, ``dice_mean``, ``iou_mean``,
        ``accuracy``, ``sensitivity``, ``specificity``, ``auc`` and ``images``."""
        if not self.labels:
            raise ValueError("MetricAccumulator.compute: no batches were added")
        dice = [torch.cat(d).mean().item() for d in self.dice]
        iou = [torch.cat(i).mean().item() for i in self.iou]
        out = {
            "dice_lesion": dice[1],
            "iou_lesion": iou[1],
            "dice_lesion_pooled": (
                2 * self.pooled[0].item() / self.pooled[1].item() if self.pooled[1] > 0 else 1.0
            ),
            "dice_mean": (dice[0] + dice[1]) / 2,
            "iou_mean": (iou[0] + iou[1]) / 2,
        }
        out.update(classification_metrics(torch.cat(self.probs), torch.cat(self.labels)))
        out["images"] = float(sum(len(x) for x in self.labels))
        return out

    def per_image(self, classes: Sequence[str]) -> PerImage:
        """The per-image results added so far (``classes``: the class names)."""
        if not self.labels:
            raise ValueError("MetricAccumulator.per_image: no batches were added")
        probs = torch.cat(self.probs).double().numpy()
        return PerImage(
            list(self.ids),
            list(classes),
            torch.cat(self.labels).numpy().astype(np.int64),
            probs.argmax(1),
            probs,
            torch.cat(self.dice[1]).double().numpy(),
            torch.cat(self.iou[1]).double().numpy(),
        )

    def label_counts(self, num_classes: int) -> list[int]:
        """Images added per class index."""
        labels = torch.cat(self.labels) if self.labels else torch.zeros(0, dtype=torch.long)
        return torch.bincount(labels, minlength=num_classes).tolist()
