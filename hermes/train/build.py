"""Everything a training run is made of, built from a :class:`TrainConfig`.

``build_everything(cfg)`` is shared by the single-process trainer and the distributed one
(``hermes.train.distributed``): it returns the data, the networks, the method module
(:func:`hermes.method.build_method`: Hermes or a baseline, by ``method.mode``), the two
optimisers and their poly schedules.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR

from hermes.comm import Comm
from hermes.data import Data, build_data
from hermes.method import build_method, poly_factor
from hermes.models import HermesModel, build_model
from hermes.train.config import OptimConfig, TrainConfig
from hermes.train.optim import build_branch_optimizer, param_groups

logger = logging.getLogger(__name__)


@dataclass
class Components:
    """What :func:`build_everything` returns.

    ``optimizers`` is ``[SGD (or AdamW) over model.cls, Adam over model.seg]`` and
    ``schedulers`` their
    poly schedules, in the same order.
    """

    cfg: TrainConfig
    data: Data
    model: HermesModel
    method: torch.nn.Module
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[LambdaLR]
    device: torch.device


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizers(
    model: HermesModel, cfg: OptimConfig
) -> tuple[list[torch.optim.Optimizer], list[LambdaLR]]:
    """The paper's optimisers: SGD (or AdamW, ``cfg.cls_optimizer``) on the classification
    branch, Adam on the segmentation branch, over :func:`hermes.train.optim.param_groups`, each
    with the poly schedule ``(1 - t / steps)^poly_power``."""
    groups = param_groups(model.cls, model.seg, cfg)
    optimizers = [
        build_branch_optimizer([g for g in groups if g["name"].split(".")[0] == branch])
        for branch in ("cls", "seg")
    ]

    def poly(step: int) -> float:
        return poly_factor(step, cfg.steps, cfg.poly_power)

    return optimizers, [LambdaLR(o, poly) for o in optimizers]


def build_everything(
    cfg: TrainConfig, comm: Comm | None = None, device: torch.device | None = None
) -> Components:
    """Data, networks (on ``device``), method, optimisers and schedules of ``cfg``.

    Seeds every RNG with ``cfg.seed`` first, so the initial weights depend on the seed only.
    ``cfg.backend`` is passed to the networks' and the method's fused ops as an argument.
    """
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    device = device if device is not None else resolve_device(cfg.device)
    data = build_data(cfg.data)
    method_cfg = cfg.method
    if cfg.warmup_epochs is not None:
        loader = data.labeled if cfg.warmup_epochs_of == "labeled" else data.unlabeled
        steps = int(round(cfg.warmup_epochs * len(loader)))
        method_cfg = replace(method_cfg, warmup_steps=steps)
    backend = None if cfg.backend == "auto" else cfg.backend
    seed_everything(cfg.seed)
    model = build_model(cfg.model, backend=backend).to(device)
    if cfg.channels_last and cfg.distributed.workers == 1:
        model = model.to(memory_format=torch.channels_last)
    elif cfg.channels_last:
        # DeepSpeed's parameter broadcast views every tensor as bytes, which needs the
        # contiguous (channels-first) layout.
        logger.info("channels_last: not used with distributed.workers > 1 (DeepSpeed)")
    method = build_method(model, method_cfg, comm=comm, backend=backend).to(device)
    optimizers, schedulers = build_optimizers(model, cfg.optim)
    n_cls = sum(p.numel() for p in model.cls.parameters())
    n_seg = sum(p.numel() for p in model.seg.parameters())
    logger.info(
        "model: %.2fM parameters (cls %.2fM, seg %.2fM) on %s",
        (n_cls + n_seg) / 1e6,
        n_cls / 1e6,
        n_seg / 1e6,
        device,
    )
    return Components(cfg, data, model, method, optimizers, schedulers, device)
