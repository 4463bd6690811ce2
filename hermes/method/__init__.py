"""The Hermes method: dual-threshold pseudo-labels, the losses, and the module that combines them;
and the baselines beside it (Mean Teacher, FixMatch) with the same interface.

>>> from hermes.method import HermesMethod, MethodConfig, build_method
>>> method = HermesMethod(model, MethodConfig())          # model: hermes.models.HermesModel
>>> loss, logs = method(labeled_batch, unlabeled_batch, step=t, total_steps=T)
>>> baseline = build_method(model, MethodConfig(mode="fixmatch"))   # or "mean_teacher"
"""

from hermes.method.alignment import DistributionAlignment
from hermes.method.baselines import FixMatchMethod, MeanTeacherMethod, build_method
from hermes.method.config import (
    FixMatchConfig,
    LossWeights,
    MeanTeacherConfig,
    MemoryBankConfig,
    MethodConfig,
)
from hermes.method.contrast import image_contrast, pixel_contrast, sample_pixel_anchors
from hermes.method.losses import (
    consistency_loss,
    cross_entropy_mean,
    dice_loss,
    global_mean,
    global_sum,
    masked_cross_entropy,
    softmax_mse,
)
from hermes.method.memory import ClassQueues
from hermes.method.method import HermesMethod
from hermes.method.schedules import consistency_weight, entropy_threshold, poly_factor, rampup

__all__ = [
    "ClassQueues",
    "DistributionAlignment",
    "FixMatchConfig",
    "FixMatchMethod",
    "HermesMethod",
    "LossWeights",
    "MeanTeacherConfig",
    "MeanTeacherMethod",
    "MemoryBankConfig",
    "MethodConfig",
    "consistency_loss",
    "consistency_weight",
    "cross_entropy_mean",
    "dice_loss",
    "build_method",
    "entropy_threshold",
    "global_mean",
    "global_sum",
    "image_contrast",
    "masked_cross_entropy",
    "pixel_contrast",
    "poly_factor",
    "rampup",
    "sample_pixel_anchors",
    "softmax_mse",
]
