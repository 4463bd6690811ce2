"""The Hermes method: dual-threshold pseudo-labels, the losses, and the module that combines them.

>>> from hermes.method import HermesMethod, MethodConfig
>>> method = HermesMethod(model, MethodConfig())          # model: hermes.models.HermesModel
>>> loss, logs = method(labeled_batch, unlabeled_batch, step=t, total_steps=T)
"""

from hermes.method.config import LossWeights, MemoryBankConfig, MethodConfig
from hermes.method.contrast import image_contrast, pixel_contrast, sample_pixel_anchors
from hermes.method.losses import (
    consistency_loss,
    cross_entropy_mean,
    dice_loss,
    global_mean,
    global_sum,
    masked_cross_entropy,
)
from hermes.method.memory import ClassQueues
from hermes.method.method import HermesMethod
from hermes.method.schedules import consistency_weight, entropy_threshold, poly_factor, rampup

__all__ = [
    "ClassQueues",
    "HermesMethod",
    "LossWeights",
    "MemoryBankConfig",
    "MethodConfig",
    "consistency_loss",
    "consistency_weight",
    "cross_entropy_mean",
    "dice_loss",
    "entropy_threshold",
    "global_mean",
    "global_sum",
    "image_contrast",
    "masked_cross_entropy",
    "pixel_contrast",
    "poly_factor",
    "rampup",
    "sample_pixel_anchors",
]
