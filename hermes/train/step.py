"""One optimisation step of the method in one process: the step of
:class:`hermes.train.engine.LocalEngine` (a DeepSpeed engine runs its own forward, backward and
step; see :class:`hermes.train.distributed.engine.DeepSpeedEngine`)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

Batch = dict[str, Any]


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move a batch's tensors to ``device`` (other entries, e.g. ids, are kept)."""
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
    }


def autocast_context(device: torch.device, enabled: bool) -> tuple[Any, torch.dtype | None]:
    """Mixed precision on a GPU: bf16 where supported, else fp16 (then a GradScaler is needed).
    Returns ``(context manager, dtype or None)``; on the CPU or when disabled, a null context."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def train_step(
    method: nn.Module,
    optimizers: Sequence[torch.optim.Optimizer],
    schedulers: Sequence[Any],
    labeled: Batch,
    unlabeled: Batch | None,
    step: int,
    total_steps: int,
    *,
    amp: bool = False,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
) -> dict[str, Tensor]:
    """Zero the gradients, compute the method's loss, one backward pass, step every optimiser
    and schedule. Batches must already be on the method's device.

    With the detached junctions (the seg features entering the attention and the cls embedding in ``L_itc``), one backward of ``L_cls + L_seg``
    gives each branch exactly the gradient of its own loss, so stepping the two optimisers after
    one backward equals the public code's two backward passes.

    Returns:
        The method's logs (detached tensors, no host synchronisation here).
    """
    device = next(method.parameters()).device
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    ctx, _ = autocast_context(device, amp)
    with ctx:
        loss, logs = method(labeled, unlabeled, step=step, total_steps=total_steps)
    if scaler is not None:
        scaler.scale(loss).backward()
        for opt in optimizers:
            scaler.unscale_(opt)
    else:
        loss.backward()
    if grad_clip is not None:
        for opt in optimizers:
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for opt in optimizers:
        if scaler is not None:
            scaler.step(opt)
        else:
            opt.step()
    if scaler is not None:
        scaler.update()
    for sched in schedulers:
        sched.step()
    return logs
