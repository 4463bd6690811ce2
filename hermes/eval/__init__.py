"""Evaluation: test metrics, ``evaluate`` over a loader, folder prediction, and the paired
comparison of two models' per-image results.

The command lines are ``python -m hermes.evaluate``, ``python -m hermes.predict`` and
``python -m hermes.compare``.
"""

from hermes.eval.evaluate import Evaluation, evaluate, format_metrics, predict_batch
from hermes.eval.metrics import (
    MetricAccumulator,
    auc_binary,
    classification_metrics,
    dice_iou_per_image,
)
from hermes.eval.paired import PerImage, compare, read_per_image, write_per_image

__all__ = [
    "Evaluation",
    "MetricAccumulator",
    "PerImage",
    "auc_binary",
    "classification_metrics",
    "compare",
    "dice_iou_per_image",
    "evaluate",
    "format_metrics",
    "predict_batch",
    "read_per_image",
    "write_per_image",
]
