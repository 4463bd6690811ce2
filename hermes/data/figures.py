"""Sample figures of a dataset: a grid of images with their mask outlines, per class."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hermes.data.datasets import load_sample
from hermes.data.readers import read_folder


def phantom_grid(root: str | Path, out: str | Path, per_class: int = 6, size: int = 224) -> Path:
    """Save a grid (one row per class) of images of a folder-layout dataset with mask outlines.

    Args:
        root: dataset folder (e.g. a phantom from :func:`hermes.data.phantom.ensure_phantom`).
        out: PNG path to write.
        per_class: images per row.
        size: images are resized to ``size`` square.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_folder(root, classes=None)
    classes = sorted({r.label for r in records})
    fig, axes = plt.subplots(
        len(classes), per_class, figsize=(1.9 * per_class, 2.1 * len(classes)), squeeze=False
    )
    for row, cls in enumerate(classes):
        chosen = [r for r in records if r.label == cls][:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.set_axis_off()
            if col >= len(chosen):
                continue
            image, mask = load_sample(chosen[col], size)
            ax.imshow(image.mean(0).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.contour(
                mask.numpy().astype(np.float32), levels=[0.5], colors="#ffcc00", linewidths=0.8
            )
            ax.set_title(f"{cls}\n{chosen[col].id}", fontsize=7)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
