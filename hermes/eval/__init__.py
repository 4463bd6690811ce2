"""Evaluation: test metrics, ``evaluate`` over a loader, and folder prediction.

The command lines are ``python -m hermes.evaluate`` and ``python -m hermes.predict``.
"""

from hermes.eval.evaluate import Evaluation, evaluate, format_metrics, predict_batch
from hermes.eval.metrics import (
    MetricAccumulator,
    auc_binary,
    classification_metrics,
    dice_iou_per_image,
)

__all__ = [
    "Evaluation",
    "MetricAccumulator",
    "auc_binary",
    "classification_metrics",
    "dice_iou_per_image",
    "evaluate",
    "format_metrics",
    "predict_batch",
]
