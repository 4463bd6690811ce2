"""The ``triton`` backend of the fused ops: custom-op registrations, autograd, dispatch entries.

Imported lazily by :mod:`hermes.ops.dispatch`; importing it imports Triton and
``hermes.kernels`` (set ``TRITON_INTERPRET=1`` before that to run the kernels on the CPU).
It never queries CUDA at import time.
"""

from __future__ import annotations

from hermes.ops import dispatch
from hermes.ops.triton_backend import dual_threshold, inter_task_attention, supcon

dispatch.register("supcon_loss", "triton", supcon.supcon_loss, supcon.not_supported_reasons)
dispatch.register(
    "dual_threshold", "triton", dual_threshold.dual_threshold, dual_threshold.not_supported_reasons
)
dispatch.register(
    "inter_task_attention",
    "triton",
    inter_task_attention.inter_task_attention,
    inter_task_attention.not_supported_reasons,
)
