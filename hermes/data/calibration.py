"""Image statistics that compare the phantom with real ultrasound (and test its classes).

All measurements are made on the image as the network sees it: resized to ``size`` square,
greyscale (mean of the channels) in [0, 1], with its binary lesion mask.

* ``area``: lesion area fraction; ``aspect``: lesion width / height (bounding box; > 1 is
  wider than tall, i.e. parallel to the skin);
* ``solidity``: lesion area / convex hull area (1 for convex, lower for lobulated, angular or
  spiculated margins); ``roughness``: perimeter^2 / (4 pi area) (1 for a disc, higher for
  irregular margins);
* ``contrast``: mean intensity inside the lesion / mean in a ring around it (< 1 hypoechoic);
* ``posterior``: mean intensity below the lesion / mean at the same depth beside it (< 1
  shadowing, > 1 enhancement);
* ``speckle_axial``, ``speckle_lateral``: full width at half maximum (pixels) of the
  autocorrelation of the high-passed image, along depth and across.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

SHADOW_BELOW = 0.8
ENHANCEMENT_ABOVE = 1.2


@dataclass(frozen=True)
class LesionStats:
    """Statistics of one image and its lesion (see the module docstring)."""

    area: float
    aspect: float
    solidity: float
    roughness: float
    contrast: float
    posterior: float
    speckle_axial: float
    speckle_lateral: float


def solidity(mask: np.ndarray) -> float:
    """Area of the mask / area of the convex hull of its pixels (pixel corners)."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return float("nan")
    corners = np.concatenate(
        [np.stack([xs + dx, ys + dy], 1) for dx in (-0.5, 0.5) for dy in (-0.5, 0.5)]
    ).astype(np.float64)
    try:
        hull = ConvexHull(corners)
    except QhullError:
        return 1.0
    return float(ys.size / hull.volume)


def roughness(mask: np.ndarray) -> float:
    """Perimeter^2 / (4 pi area); the perimeter counts pixel edges between inside and outside."""
    m = np.pad(mask.astype(bool), 1)
    area = m.sum()
    if area == 0:
        return float("nan")
    edges = (m[1:, :] != m[:-1, :]).sum() + (m[:, 1:] != m[:, :-1]).sum()
    # A digital disc's edge count overestimates its perimeter by 4/pi; divide that out.
    perimeter = edges * np.pi / 4.0
    return float(perimeter**2 / (4.0 * np.pi * area))


def speckle_width(image: np.ndarray, highpass_sigma: float = 4.0) -> tuple[float, float]:
    """FWHM (pixels) of the autocorrelation of the high-passed image: (axial, lateral)."""
    img = image.astype(np.float64)
    hp = img - ndimage.gaussian_filter(img, highpass_sigma)
    hp -= hp.mean()
    spec = np.abs(np.fft.fft2(hp)) ** 2
    ac = np.real(np.fft.ifft2(spec))
    ac /= ac[0, 0]

    def fwhm(profile: np.ndarray) -> float:
        below = np.nonzero(profile < 0.5)[0]
        if below.size == 0:
            return float(profile.size)
        k = int(below[0])
        # linear interpolation between lag k-1 and k
        frac = (profile[k - 1] - 0.5) / (profile[k - 1] - profile[k])
        return 2.0 * (k - 1 + frac)

    return fwhm(ac[:, 0]), fwhm(ac[0, :])


def lesion_stats(image: np.ndarray, mask: np.ndarray) -> LesionStats:
    """Measure one image (H, W) in [0, 1] with its binary mask (H, W)."""
    mask = mask.astype(bool)
    h, w = mask.shape
    nan = float("nan")
    sa, sl = speckle_width(image)
    if not mask.any():
        return LesionStats(0.0, nan, nan, nan, nan, nan, sa, sl)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    lh, lw = y1 - y0, x1 - x0
    ring = ndimage.binary_dilation(mask, iterations=max(2, int(0.15 * max(lh, lw)))) & ~mask
    inside = image[mask].mean()
    contrast = inside / max(image[ring].mean(), 1e-6) if ring.any() else nan
    # posterior: below the lesion (its columns, half its height), against the same rows beside
    p0, p1 = y1, min(h, y1 + max(2, lh // 2))
    posterior = nan
    if p1 - p0 >= 2:
        below = image[p0:p1, x0:x1].mean()
        sides = []
        if x0 - lw // 2 >= 0:
            sides.append(image[p0:p1, x0 - lw // 2 : x0])
        if x1 + lw // 2 <= w:
            sides.append(image[p0:p1, x1 : x1 + lw // 2])
        side_vals = [s.mean() for s in sides if s.size]
        if side_vals:
            posterior = below / max(float(np.mean(side_vals)), 1e-6)
    return LesionStats(
        area=float(mask.mean()),
        aspect=float(lw / lh),
        solidity=solidity(mask),
        roughness=roughness(mask),
        contrast=float(contrast),
        posterior=float(posterior),
        speckle_axial=sa,
        speckle_lateral=sl,
    )


def summarize(stats: Iterable[LesionStats]) -> dict[str, dict[str, float]]:
    """Median and inter-quartile range of each statistic, plus shadow/enhancement rates."""
    rows = [asdict(s) for s in stats]
    out: dict[str, dict[str, float]] = {}
    if not rows:
        return out
    for key in rows[0]:
        vals = np.array([r[key] for r in rows], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size:
            q1, med, q3 = np.percentile(vals, [25, 50, 75])
            out[key] = {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(vals.size)}
    post = np.array([r["posterior"] for r in rows], dtype=np.float64)
    post = post[np.isfinite(post)]
    if post.size:
        out["shadowed"] = {"rate": float((post < SHADOW_BELOW).mean()), "n": int(post.size)}
        out["enhanced"] = {"rate": float((post > ENHANCEMENT_ABOVE).mean()), "n": int(post.size)}
    return out


def measure_records(records: Iterable, size: int = 224) -> dict[str, list[LesionStats]]:
    """Measure every record (:class:`~hermes.data.readers.Record`) that has a lesion, by class.

    Images are resized to ``size`` square first, as the network sees them.
    """
    from hermes.data.datasets import load_sample

    by_class: dict[str, list[LesionStats]] = {}
    for rec in records:
        image, mask = load_sample(rec, size)
        if mask.sum() == 0:
            continue
        stats = lesion_stats(image.mean(0).numpy(), mask.numpy())
        by_class.setdefault(rec.label, []).append(stats)
    return by_class


_TABLE_ROWS = (
    ("area", "lesion area fraction"),
    ("aspect", "aspect ratio width/height"),
    ("solidity", "solidity (area / convex hull)"),
    ("roughness", "boundary roughness P^2/(4 pi A)"),
    ("contrast", "contrast inside / ring"),
    ("posterior", "posterior / beside"),
    ("speckle_axial", "speckle FWHM axial (px)"),
    ("speckle_lateral", "speckle FWHM lateral (px)"),
)


def _cell(summary: dict[str, dict[str, float]], key: str) -> str:
    if key in ("shadowed", "enhanced"):
        s = summary.get(key)
        return f"{100 * s['rate']:.0f}%" if s else "-"
    s = summary.get(key)
    if not s:
        return "-"
    return f"{s['median']:.3g} [{s['q1']:.3g}, {s['q3']:.3g}]"


def comparison_table(phantom_root: str | Path, busi_root: str | Path, size: int = 224) -> str:
    """Markdown table "phantom vs BUSI": median [quartiles] per class of each statistic.

    Args:
        phantom_root: a phantom dataset folder (folder layout).
        busi_root: the ``Dataset_BUSI_with_GT`` folder.
        size: images are resized to ``size`` square before measuring.
    """
    from hermes.data.readers import read_busi, read_folder

    classes = ("benign", "malignant")
    busi = {
        c: summarize(v) for c, v in measure_records(read_busi(busi_root, classes), size).items()
    }
    phantom = {
        c: summarize(v)
        for c, v in measure_records(read_folder(phantom_root, classes), size).items()
    }
    n = {c: (busi[c]["area"]["n"], phantom[c]["area"]["n"]) for c in classes}
    lines = [
        "| statistic | BUSI benign (n={}) | phantom benign (n={}) | BUSI malignant (n={}) "
        "| phantom malignant (n={}) |".format(*n["benign"], *n["malignant"]),
        "|---|---|---|---|---|",
    ]
    rows = (
        *_TABLE_ROWS,
        ("shadowed", "shadowed (posterior < 0.8)"),
        ("enhanced", "enhanced (posterior > 1.2)"),
    )
    for key, title in rows:
        cells = [_cell(src[c], key) for c in classes for src in (busi, phantom)]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
