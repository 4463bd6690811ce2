"""``python -m hermes.predict``: a checkpoint and a folder of images -> lesion mask PNGs and a
CSV of class probabilities.

    python -m hermes.predict runs/hermes/best.pt images/ --out predictions/

Each image is resized to the training size and ImageNet-normalised (the test transform); the
predicted mask is brought back to the image's own size (bilinear on the logits) and written as
``<out>/<stem>_pred.png`` (0 background, 255 lesion). Images that share a stem (``a.png`` and
``a.jpg``) get ``<stem>_<extension>_pred.png`` (``a_png_pred.png``, ``a_jpg_pred.png``), and a
number is added if a name is still taken, so no mask overwrites another.
``<out>/predictions.csv`` has one row per predicted image: ``file, mask, predicted,
p_<class>...``; it is written row by row, so an interrupted run keeps the rows of the masks it
wrote. An image that cannot be read is skipped with a warning and listed in
``<out>/failed.csv`` (``file, error``; header only when none failed); the exit status is then 1.
Files whose name contains ``_mask`` are skipped.
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

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
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and "_mask" not in p.stem
    )
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files


def mask_names(paths: list[Path]) -> dict[Path, str]:
    """A distinct mask file name per image: ``<stem>_pred.png``, ``<stem>_<ext>_pred.png`` when
    images share a stem, and a number added while a name is taken (compared case-insensitively)."""
    stems = Counter(p.stem.lower() for p in paths)
    names: dict[Path, str] = {}
    taken: set[str] = set()
    for path in paths:
        base = path.stem if stems[path.stem.lower()] == 1 else f"{path.stem}_{path.suffix[1:]}"
        name, n = f"{base}_pred.png", 1
        while name.lower() in taken:
            n += 1
            name = f"{base}_{n}_pred.png"
        taken.add(name.lower())
        names[path] = name
    return names


class Prediction(NamedTuple):
    """What :func:`predict_folder` did: the CSV rows written, and ``(file name, error)`` of
    each image that could not be read."""

    rows: list[dict[str, object]]
    failed: list[tuple[str, str]]


def predict_folder(
    model: nn.Module,
    folder: str | Path,
    out: str | Path,
    image_size: int,
    classes: tuple[str, ...],
    device: torch.device | str = "cpu",
    tta: str = "none",
) -> Prediction:
    """Predict every image of ``folder``; write masks, ``predictions.csv`` and ``failed.csv``
    into ``out`` (see the module docstring). An unreadable image is skipped and reported.
    ``tta``: test-time augmentation (:func:`hermes.eval.evaluate.predict_batch`)."""
    from hermes.data import IMAGENET_MEAN, IMAGENET_STD, load_image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    model.eval()
    paths = list_images(folder)
    names = mask_names(paths)
    result = Prediction([], [])
    fields = ["file", "mask", "predicted", *(f"p_{c}" for c in classes)]
    with (
        open(out / "predictions.csv", "w", newline="") as pred_file,
        open(out / "failed.csv", "w", newline="") as failed_file,
    ):
        writer = csv.DictWriter(pred_file, fieldnames=fields)
        writer.writeheader()
        failed = csv.writer(failed_file)
        failed.writerow(["file", "error"])
        for path in paths:
            try:
                image = load_image(path)  # (3, H, W) in [0, 1]
            except (ValueError, FileNotFoundError) as exc:
                logger.warning("skipped %s: %s", path, exc)
                result.failed.append((path.name, str(exc)))
                failed.writerow([path.name, str(exc)])
                failed_file.flush()
                continue
            h, w = image.shape[-2:]
            x = F.interpolate(
                image[None],
                size=(image_size, image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
            x = ((x - mean) / std).to(device)
            seg_logits, cls_logits = predict_batch(model, x, tta)
            seg_logits = F.interpolate(
                seg_logits, size=(h, w), mode="bilinear", align_corners=False
            )
            mask = (seg_logits.argmax(1)[0] == 1).cpu().numpy().astype(np.uint8) * 255
            Image.fromarray(mask).save(out / names[path])
            probs = torch.softmax(cls_logits, 1)[0].cpu()
            row: dict[str, object] = {
                "file": path.name,
                "mask": names[path],
                "predicted": classes[int(probs.argmax())],
            }
            row.update({f"p_{c}": f"{float(p):.6f}" for c, p in zip(classes, probs, strict=True)})
            writer.writerow(row)
            pred_file.flush()
            result.rows.append(row)
    logger.info(
        "wrote %d masks and predictions.csv to %s; %d image(s) unreadable (failed.csv)",
        len(result.rows),
        out,
        len(result.failed),
    )
    return result
