"""What the training loop drives: an :class:`Engine` takes one optimisation step, names its
learning rates and runs an evaluation the way it needs to.

Two engines implement it: :class:`LocalEngine` here (the method, its two optimisers and poly
schedules and, for fp16 autocast, a GradScaler, in one process) and
:class:`hermes.train.distributed.engine.DeepSpeedEngine` (the same method inside one DeepSpeed
engine on each Ray worker). The loop (:func:`hermes.train.loop.run_loop`) is written once
against this protocol; what differs is the engine and where its checkpoints go
(:class:`hermes.train.checkpoint.Checkpoints`).

The engine's own state is not part of the protocol, because it is held differently: the local
engine's is a dict inside the run's checkpoint file (:meth:`LocalEngine.state_dict`), the
DeepSpeed engine's is DeepSpeed's sharded checkpoint folder.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import Tensor

from hermes.eval.evaluate import Evaluation
from hermes.train.build import Components
from hermes.train.config import TrainConfig
from hermes.train.optim import group_lrs
from hermes.train.step import Batch, autocast_context, to_device, train_step


class Engine(Protocol):
    """One optimisation step at a time, for :func:`hermes.train.loop.run_loop`."""

    def step(
        self, labeled: Batch, unlabeled: Batch | None, step: int, total: int
    ) -> dict[str, Tensor]:
        """Train on one batch (as the streams yield it, on the host) at ``step`` of ``total``;
        returns the method's logs (detached tensors, not yet on the host)."""
        ...

    def lrs(self) -> dict[str, float]:
        """The current learning rate of every optimiser group, by name (``lr/cls``, ...)."""
        ...

    def evaluate(self, run: Callable[[], Evaluation]) -> Evaluation:
        """Run ``run`` (an evaluation of the networks) as this engine needs it run; every
        process of the run calls it, and every process gets the same metrics back."""
        ...


def make_scaler(cfg: TrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 autocast on a GPU; ``None`` for bf16, fp32 or the CPU."""
    _, dtype = autocast_context(device, cfg.amp)
    return torch.amp.GradScaler("cuda") if dtype == torch.float16 else None


class LocalEngine:
    """The method with its two optimisers (SGD or AdamW on the classification branch, Adam on
    the segmentation branch), their poly schedules and the loss scaler, in one process.

    Args:
        comps: what :func:`hermes.train.build.build_everything` built.
    """

    def __init__(self, comps: Components) -> None:
        self.comps = comps
        self.scaler = make_scaler(comps.cfg, comps.device)

    def step(
        self, labeled: Batch, unlabeled: Batch | None, step: int, total: int
    ) -> dict[str, Tensor]:
        c, device = self.comps, self.comps.device
        return train_step(
            c.method,
            c.optimizers,
            c.schedulers,
            to_device(labeled, device),
            None if unlabeled is None else to_device(unlabeled, device),
            step,
            total,
            amp=c.cfg.amp,
            scaler=self.scaler,
            grad_clip=c.cfg.optim.grad_clip,
        )

    def lrs(self) -> dict[str, float]:
        return group_lrs([g for o in self.comps.optimizers for g in o.param_groups])

    def evaluate(self, run: Callable[[], Evaluation]) -> Evaluation:
        return run()

    def state_dict(self) -> dict[str, Any]:
        """``method``, ``optimizers``, ``schedulers`` and ``scaler``: the checkpoint entries
        that belong to the engine."""
        c = self.comps
        return {
            "method": c.method.state_dict(),
            "optimizers": [o.state_dict() for o in c.optimizers],
            "schedulers": [s.state_dict() for s in c.schedulers],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load :meth:`state_dict`'s entries (a checkpoint holding more is fine)."""
        c = self.comps
        c.method.load_state_dict(state["method"])
        for opt, sd in zip(c.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)
        for sched, sd in zip(c.schedulers, state["schedulers"], strict=True):
            sched.load_state_dict(sd)
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
