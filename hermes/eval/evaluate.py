"""Evaluate networks on a test loader; ``python -m hermes.evaluate`` (checkpoint + data ->
metrics).

    python -m hermes.evaluate runs/hermes/best.pt                       # the run's own test split
    python -m hermes.evaluate best.pt --data /path/Dataset_BUSI_with_GT --dataset busi
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from hermes.eval.metrics import MetricAccumulator

logger = logging.getLogger(__name__)


@torch.no_grad()
def predict_batch(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """Segmentation and classification logits of the full model (saliency and attention as
    configured). Shapes: x (B, 3, H, W) -> (B, K, H, W), (B, C)."""
    sal = model.saliency(x)  # computes its input gradient internally
    seg = model.forward_seg(x, saliency=sal)
    features = seg.features if model.cfg.attention and seg.features else None
    cls = model.forward_cls(x, seg_features=features)
    return seg.logits.float(), cls.logits.float()


@dataclass
class Evaluation:
    """Metrics plus a few test images with their masks and predictions (for figures)."""

    metrics: dict[str, float]
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
) -> Evaluation:
    """Run the model over ``loader`` (batches with ``image``, ``mask``, ``label``) in eval mode
    and compute :class:`~hermes.eval.metrics.MetricAccumulator` metrics. The RNG state is left
    untouched (so evaluating inside a training run does not change it). The model's train/eval
    mode is restored afterwards."""
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
            seg_logits, cls_logits = predict_batch(model, x)
            acc.update(seg_logits, batch["mask"], cls_logits, batch["label"])
            take = min(keep_images - len(out.images), len(x))
            if take > 0:
                out.images.extend(batch["image"][:take])
                out.masks.extend(batch["mask"][:take])
                out.predictions.extend(seg_logits.argmax(1)[:take].cpu())
                out.ids.extend(list(batch.get("id", [""] * take))[:take])
    model.train(was_training)
    out.metrics = acc.compute()
    return out


def format_metrics(metrics: dict[str, float]) -> str:
    keys = ("dice_lesion", "iou_lesion", "dice_mean", "iou_mean", "accuracy", "sensitivity",
            "specificity", "auc")  # fmt: skip
    return "  ".join(f"{k}={metrics[k]:.4f}" for k in keys if k in metrics)


def main(argv: list[str] | None = None) -> int:
    from hermes.data import build_data
    from hermes.train.checkpoint import load_model

    parser = argparse.ArgumentParser(
        prog="python -m hermes.evaluate", description="Evaluate a checkpoint on a test split."
    )
    parser.add_argument("checkpoint", help="a checkpoint written by python -m hermes.train")
    parser.add_argument("--data", help="dataset folder (default: the checkpoint's own data)")
    parser.add_argument("--dataset", choices=("busi", "udiat", "folder", "phantom"))
    parser.add_argument("--split-file", help="a split JSON to evaluate the test part of")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batches", type=int, default=None)
    parser.add_argument("--out", help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    try:
        model, cfg = load_model(args.checkpoint, args.device)
        data_cfg = cfg.data
        if args.data is not None or args.dataset is not None:
            if args.data is None or args.dataset is None:
                raise ValueError("--data and --dataset go together")
            data_cfg = replace(data_cfg, dataset=args.dataset, root=args.data, split_file=None)
        if args.split_file is not None:
            data_cfg = replace(data_cfg, split_file=args.split_file)
        data = build_data(data_cfg)
        result = evaluate(model, data.test, args.device, max_batches=args.max_batches)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_metrics(result.metrics))
    if args.out:
        Path(args.out).write_text(json.dumps(result.metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
