"""Evaluate networks on a test loader; ``python -m hermes.evaluate`` (checkpoint + data ->
metrics).

    python -m hermes.evaluate runs/hermes/best.pt                       # the run's own test split
    python -m hermes.evaluate best.pt --data /path/Dataset_BUSI_with_GT --dataset busi
    python -m hermes.evaluate best.pt --data /path/UDIAT --dataset udiat --split all

The images come from the data settings alone (:func:`evaluation_loader`): training-only
settings such as the label budget are not used. A metric that is undefined for the evaluated
images (AUC when they are all of one class) is printed as ``nan``, written as ``null`` by
``--out`` and named in a warning with the reason.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hermes.eval.metrics import METRICS, MetricAccumulator
from hermes.eval.paired import PerImage

if TYPE_CHECKING:
    from hermes.data import DataConfig

logger = logging.getLogger(__name__)


TTA = ("none", "hflip")
"""Test-time augmentation: ``none``, or ``hflip`` (the image and its mirror image, the mirror's
masks flipped back, the two softmaxes averaged)."""


def add_tta_argument(parser: argparse.ArgumentParser) -> None:
    """``--tta`` of the command lines that predict from a checkpoint (``None``: the
    checkpoint's ``eval.tta``)."""
    parser.add_argument(
        "--tta",
        choices=TTA,
        help="test-time augmentation: none, or hflip (each image and its mirror image, "
        "softmaxes averaged); default: the checkpoint's eval.tta",
    )


@torch.no_grad()
def predict_batch(model: nn.Module, x: Tensor, tta: str = "none") -> tuple[Tensor, Tensor]:
    """Segmentation and classification logits of the full model (saliency and attention as
    configured). Shapes: x (B, 3, H, W) -> (B, K, H, W), (B, C).

    With ``tta="hflip"`` the returned logits are the log of the mean of the softmaxes over the
    image and its horizontal mirror (costs a second pass); their softmax is that mean.
    """
    if tta not in TTA:
        raise ValueError(f"tta: expected one of {TTA}, got {tta!r}")
    seg, cls = _predict(model, x)
    if tta == "none":
        return seg, cls
    seg_m, cls_m = _predict(model, x.flip(-1))
    seg_p = (seg.softmax(1) + seg_m.flip(-1).softmax(1)) / 2
    cls_p = (cls.softmax(1) + cls_m.softmax(1)) / 2
    tiny = torch.finfo(seg_p.dtype).tiny
    return seg_p.clamp_min(tiny).log(), cls_p.clamp_min(tiny).log()


def _predict(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    sal = model.saliency(x)  # computes its input gradient internally
    seg = model.forward_seg(x, saliency=sal)
    features = seg.features if model.cfg.attention and seg.features else None
    cls = model.forward_cls(x, seg_features=features)
    return seg.logits.float(), cls.logits.float()


@dataclass
class Evaluation:
    """Metrics plus a few test images with their masks and predictions (for figures).
    ``label_counts``: evaluated images per class index; ``per_image``: every evaluated image's
    label, probabilities and lesion Dice and IoU (when ``evaluate`` was given class names)."""

    metrics: dict[str, float]
    per_image: PerImage | None = None
    label_counts: list[int] = field(default_factory=list)
    images: list[Tensor] = field(default_factory=list)
    masks: list[Tensor] = field(default_factory=list)
    predictions: list[Tensor] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)


def evaluate(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str = "cpu",
    *,
    max_batches: int | None = None,
    keep_images: int = 0,
    tta: str = "none",
    classes: Sequence[str] | None = None,
) -> Evaluation:
    """Run the model over ``loader`` (batches with ``image``, ``mask``, ``label``) in eval mode
    and compute :class:`~hermes.eval.metrics.MetricAccumulator` metrics, with the test-time
    augmentation ``tta`` (see :func:`predict_batch`); with the class names ``classes`` the
    result also holds the per-image results (ids from the batches' ``id``). The RNG state is
    left untouched (so evaluating inside a training run does not change it). The model's
    train/eval mode is restored afterwards."""
    if tta not in TTA:
        raise ValueError(f"tta: expected one of {TTA}, got {tta!r}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    acc = MetricAccumulator()
    out = Evaluation(metrics={})
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            x = batch["image"].to(device)
            seg_logits, cls_logits = predict_batch(model, x, tta)
            acc.update(seg_logits, batch["mask"], cls_logits, batch["label"], batch.get("id"))
            take = min(keep_images - len(out.images), len(x))
            if take > 0:
                out.images.extend(batch["image"][:take])
                out.masks.extend(batch["mask"][:take])
                out.predictions.extend(seg_logits.argmax(1)[:take].cpu())
                out.ids.extend(list(batch.get("id", [""] * take))[:take])
    model.train(was_training)
    out.metrics = acc.compute()
    out.label_counts = acc.label_counts(model.cfg.num_classes)
    if classes is not None:
        out.per_image = acc.per_image(classes)
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in METRICS if k in metrics)


def evaluation_loader(cfg: DataConfig, split: str = "test") -> DataLoader:
    """The images of ``cfg`` to evaluate on, unaugmented, in a fixed order.

    Args:
        cfg: the data settings; the label budget and the training loaders' settings are not
            used (a checkpoint can be evaluated on a dataset its budget does not fit).
        split: ``"test"``: the test part of ``cfg.split_file`` when it exists, else of the split
            made from ``cfg.seed`` and ``cfg.test_fraction`` (the one training makes);
            ``"all"``: every image.
    """
    from hermes.data import LabeledDataset, load_records
    from hermes.data.build import resolve_split

    if split not in ("test", "all"):
        raise ValueError(f"split: expected 'test' or 'all', got {split!r}")
    records, _ = load_records(cfg)
    if split == "test":
        split_file = cfg.split_file
        if split_file and not Path(split_file).is_file():
            logger.warning("split file %s not found: the split is made from data.seed", split_file)
            split_file = None
        # The test part is drawn before the labeled part and does not depend on the budget;
        # one image per class is a budget that always fits.
        budget = len({r.label for r in records})
        ids = resolve_split(replace(cfg, labeled=budget, split_file=split_file), records).test
        by_id = {r.id: r for r in records}
        records = [by_id[i] for i in ids]
    dataset = LabeledDataset(
        records, cfg.classes, cfg.image_size, augment=False, cache=cfg.cache_images
    )
    return DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=False, num_workers=cfg.num_workers
    )


def json_metrics(metrics: dict[str, float]) -> str:
    """``metrics`` as JSON, an undefined (non-finite) value as ``null``."""
    clean = {k: v if math.isfinite(v) else None for k, v in metrics.items()}
    return json.dumps(clean, indent=2, allow_nan=False)
