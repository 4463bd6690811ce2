"""The optimisers' parameter groups, shared by the local optimisers and the DeepSpeed engine.

Each branch has two groups: its encoder (the pretrained backbone, at ``encoder_lr_scale`` times
the branch's learning rate) and the rest (heads, decoder, attention, at the branch's learning
rate). A branch without an ``encoder`` attribute is one group. Every group names its algorithm
(``sgd``, ``adam`` or ``adamw``) so that :class:`hermes.train.distributed.optim.BranchOptimizer`
can run all of them in one optimiser, and :func:`build_branch_optimizer` can run one branch's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hermes.train.config import OptimConfig

ALGORITHMS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


def _split(branch: nn.Module, name: str, lr: float, scale: float, **options: Any) -> list[dict]:
    """The branch's trainable parameters as [rest, encoder] groups (encoder only if it has one)."""
    encoder = getattr(branch, "encoder", None)
    inside = {id(p) for p in encoder.parameters()} if isinstance(encoder, nn.Module) else set()
    trainable = [p for p in branch.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in trainable if id(p) not in inside], "lr": lr, "name": name, **options}
    ]
    if inside:
        enc = [p for p in trainable if id(p) in inside]
        groups.append({"params": enc, "lr": lr * scale, "name": f"{name}.encoder", **options})
    return [g for g in groups if g["params"]]


def param_groups(cls_branch: nn.Module, seg_branch: nn.Module, cfg: OptimConfig) -> list[dict]:
    """The classification branch's groups (SGD or AdamW, ``cfg.cls_optimizer``), then the
    segmentation branch's (Adam); the first group of each branch is the one at its full
    learning rate."""
    cls_options: dict[str, Any] = {"algorithm": cfg.cls_optimizer}
    if cfg.cls_optimizer == "sgd":
        cls_options["momentum"] = cfg.cls_momentum
    cls_options["weight_decay"] = cfg.cls_weight_decay
    return [
        *_split(cls_branch, "cls", cfg.cls_lr, cfg.cls_encoder_lr_scale, **cls_options),
        *_split(
            seg_branch,
            "seg",
            cfg.seg_lr,
            cfg.seg_encoder_lr_scale,
            algorithm="adam",
            weight_decay=cfg.seg_weight_decay,
        ),
    ]


def build_branch_optimizer(groups: list[dict]) -> torch.optim.Optimizer:
    """One PyTorch optimiser over groups that share one algorithm (one branch's groups)."""
    algorithms = {g["algorithm"] for g in groups}
    if len(algorithms) != 1:
        raise ValueError(f"build_branch_optimizer: groups mix algorithms {sorted(algorithms)}")
    inner = [{k: v for k, v in g.items() if k != "algorithm"} for g in groups]
    return ALGORITHMS[algorithms.pop()](inner, lr=groups[0]["lr"])


def group_lrs(groups: list[dict]) -> dict[str, float]:
    """``{"lr/<group name>": lr}`` for the named groups (``lr/cls``, ``lr/cls.encoder``,
    ``lr/seg``, ``lr/seg.encoder``), from one optimiser's or several optimisers' groups."""
    return {f"lr/{g['name']}": float(g["lr"]) for g in groups if "name" in g}
