"""The Hermes networks: a segmentation branch and a classification branch joined by IAS.

>>> from hermes.models import ModelConfig, build_model
>>> model = build_model(ModelConfig(preset="small", num_classes=2))
>>> sal = model.saliency(x)                       # (B, 1, H, W) or None
>>> seg = model.forward_seg(x, saliency=sal)      # SegOutput
>>> cls = model.forward_cls(x, seg_features=seg.features)  # ClsOutput
"""

from hermes.models.cls import ClassificationBranch, ClsOutput
from hermes.models.config import PRESETS, ModelConfig
from hermes.models.model import HermesModel, build_model
from hermes.models.seg import SegmentationBranch, SegOutput

__all__ = [
    "PRESETS",
    "ClassificationBranch",
    "ClsOutput",
    "HermesModel",
    "ModelConfig",
    "SegOutput",
    "SegmentationBranch",
    "build_model",
]
