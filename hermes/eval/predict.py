"""``python -m hermes.predict``: a checkpoint and a folder of images -> lesion mask PNGs and a
CSV of class probabilities.

    python -m hermes.predict runs/hermes/best.pt images/ --out predictions/

Each image is resized to the training size and ImageNet-normalised (the test transform); the
predicted mask is brought back to the image's own size (bilinear on the logits) and written as
``<out>/<stem>_pred.png`` (0 background, 255 lesion). ``<out>/predictions.csv`` has one row per
image: ``file, predicted class, p_<class>...``. Files whose name ends in ``_mask`` are skipped.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from hermes.eval.evaluate import predict_batch

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of ``folder`` (sorted; masks named ``*_mask*`` left out)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = sorted(
        p for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem
    )  # fmt: skip
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def predict_folder(
    model: nn.Module,
    folder: str | Path,
    out: str | Path,
    image_size: int,
    classes: tuple[str, ...],
    device: torch.device | str = "cpu",
) -> list[dict[str, object]]:
    """Predict every image of ``folder``; write masks and ``predictions.csv`` into ``out``.
    Returns the CSV rows."""
    from hermes.data import IMAGENET_MEAN, IMAGENET_STD, load_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.eval()
    rows: list[dict[str, object]] = []
    for path in list_images(folder):
        image = load_image(path)  # (3, H, W) in [0, 1]
        h, w = image.shape[-2:]
        x = F.interpolate(image[None], size=(image_size, image_size), mode="bilinear",
                          antialias=True, align_corners=False)  # fmt: skip
        x = ((x - mean) / std).to(device)
        seg_logits, cls_logits = predict_batch(model, x)
        seg_logits = F.interpolate(seg_logits, size=(h, w), mode="bilinear", align_corners=False)
        mask = (seg_logits.argmax(1)[0] == 1).cpu().numpy().astype(np.uint8) * 255
        Image.fromarray(mask).save(out / f"{path.stem}_pred.png")
        probs = torch.softmax(cls_logits, 1)[0].cpu()
        row: dict[str, object] = {"file": path.name, "predicted": classes[int(probs.argmax())]}
        row.update({f"p_{c}": f"{float(p):.6f}" for c, p in zip(classes, probs, strict=False)})
        rows.append(row)
    with open(out / "predictions.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    logger.info("wrote %d masks and predictions.csv to %s", len(rows), out)
    return rows


def main(argv: list[str] | None = None) -> int:
    from hermes.train.checkpoint import load_model

    parser = argparse.ArgumentParser(
        prog="python -m hermes.predict",
        description="Predict lesion masks and class probabilities for a folder of images.",
    )
    parser.add_argument("checkpoint", help="a checkpoint written by python -m hermes.train")
    parser.add_argument("images", help="folder of images")
    parser.add_argument("--out", default="predictions", help="output folder")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        model, cfg = load_model(args.checkpoint, args.device)
        rows = predict_folder(
            model, args.images, args.out, cfg.data.image_size, cfg.data.classes, args.device
        )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{len(rows)} images -> {Path(args.out) / 'predictions.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
