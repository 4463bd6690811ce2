"""The ``cpp`` (CPU) and ``cuda`` backends: Python glue of the compiled extension ``hermes._C``.

Importing this package loads ``hermes._C`` (which registers the ``torch.ops.hermes.*``
operators for the CPU and, when built with CUDA, the CUDA dispatch keys), registers their
autograd and fake (meta) implementations (one module per op), and registers each op with
:mod:`hermes.ops.dispatch`. Without the extension the import fails and the dispatcher reports
the backend unavailable once.

Dtypes: the CPU kernels compute in fp32 (fp64 inputs in fp64); fp16/bf16 inputs are upcast to
fp32 here and the results cast back where the reference returns the input's dtype
(``inter_task_attention``).
"""

from __future__ import annotations

from hermes.ops import dispatch
from hermes.ops.cpp_backend import dual_threshold, inter_task_attention, supcon
from hermes.ops.cpp_backend._common import has_kernel

__all__ = ["dual_threshold", "has_kernel", "inter_task_attention", "supcon"]

for _backend, _device in (("cpp", "cpu"), ("cuda", "cuda")):
    dispatch.register(
        "supcon_loss",
        _backend,
        supcon.supcon_loss,
        supcon.not_supported_reasons(_device),
        supcon.cpu_auto_reasons if _device == "cpu" else supcon.cuda_auto_reasons,
    )
    dispatch.register(
        "dual_threshold",
        _backend,
        dual_threshold.dual_threshold,
        dual_threshold.not_supported_reasons(_device),
    )
    dispatch.register(
        "inter_task_attention",
        _backend,
        inter_task_attention.inter_task_attention,
        inter_task_attention.not_supported_reasons(_device),
    )
