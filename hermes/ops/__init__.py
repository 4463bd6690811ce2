"""The public fused ops of Hermes (contracts in each op's docstring). Importing this imports torch only.

>>> from hermes.ops import supcon_loss, dual_threshold, inter_task_attention, SupConLoss
"""

from hermes.ops.dual_threshold import (
    DualThresholdOutput,
    DualThresholdStats,
    dual_threshold,
    dual_threshold_reference,
)
from hermes.ops.inter_task_attention import (
    InterTaskAttention,
    inter_task_attention,
    inter_task_attention_reference,
)
from hermes.ops.supcon import SupConLoss, supcon_loss, supcon_loss_reference

__all__ = [
    "DualThresholdOutput",
    "DualThresholdStats",
    "InterTaskAttention",
    "SupConLoss",
    "dual_threshold",
    "dual_threshold_reference",
    "inter_task_attention",
    "inter_task_attention_reference",
    "supcon_loss",
    "supcon_loss_reference",
]
