"""An exponential-moving-average copy of the two-branch model: Mean Teacher's teacher, and the
optional pseudo-label teacher of Hermes (``method.teacher: ema``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters take no gradient."""
    teacher = copy.deepcopy(model)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, step: int, decay: float) -> float:
    """``theta' <- a theta' + (1 - a) theta`` over the parameters, with
    ``a = min(1 - 1 / (step + 1), decay)`` (Mean Teacher's ramp: early steps follow the student
    closely). ``step`` >= 1 is the number of optimiser steps the student has taken; BatchNorm
    running statistics are the teacher's own. Returns ``a``."""
    a = min(1.0 - 1.0 / (step + 1), decay)
    weights = dict(student.named_parameters())
    for name, p in teacher.named_parameters():
        p.mul_(a).add_(weights[name].detach().to(p.dtype), alpha=1.0 - a)
    return a
