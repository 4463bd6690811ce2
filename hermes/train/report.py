"""The report folder of a run (and of a Hermes-vs-baseline comparison): metrics JSON, a
Markdown summary, the final evaluation per test image (CSV) and PNG figures (loss curves,
pseudo-label kept fractions and accuracy over time, predicted masks over test images)."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hermes.eval.metrics import METRICS  # noqa: E402
from hermes.eval.paired import (  # noqa: E402
    PREDICTIONS_FILE,
    compare,
    format_comparison,
    write_per_image,
)
from hermes.method.method import TRUTH_STATS_PER_CLASS  # noqa: E402

if TYPE_CHECKING:
    from hermes.train.state import RunResult

logger = logging.getLogger(__name__)

PSEUDO_LABEL_MODES = ("hermes", "fixmatch")  # the methods that log pseudo-label statistics

LOSS_KEYS = (
    "loss/total",
    "loss/ce_l",
    "loss/seg_sup",
    "loss/ce_u",
    "loss/dice_u",
    "loss/contrast_img",
    "loss/contrast_pix",
    "loss/itc",
    "loss/unsup_cls",
    "loss/unsup_seg",
)


def _series(history: list[dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    steps = np.array([h["step"] for h in history if key in h], dtype=float)
    values = np.array([h[key] for h in history if key in h], dtype=float)
    return steps, values


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Moving average ignoring NaNs (window clipped to the series)."""
    if window <= 1 or len(values) < 3:
        return values
    window = min(window, len(values))
    ok = np.isfinite(values)
    kernel = np.ones(window)
    num = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    den = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / den, np.nan)


def plot_losses(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Every loss term over the steps (moving average)."""
    keys = [k for k in LOSS_KEYS if any(k in h for h in history)]
    window = max(len(history) // 30, 1)
    fig, axes = plt.subplots(2, 4, figsize=(16, 6.5), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        steps, values = _series(history, key)
        ax.plot(steps, values, color="0.8", lw=0.8)
        ax.plot(steps, _smooth(values, window), color="C0")
        ax.set_title(key.split("/", 1)[1])
        ax.set_xlabel("step")
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.suptitle(f"{title} losses (grey: per step, blue: moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_pseudo_labels(history: list[dict[str, float]], path: Path, title: str = "") -> None:
    """Kept fractions, thresholds, and pseudo-label accuracy of kept vs dropped entries."""
    window = max(len(history) // 30, 1)
    fig, axes = plt.subplots(2, 4, figsize=(21, 8), squeeze=False)
    for row, task in enumerate(("cls", "seg")):
        p = f"pseudo_{task}/"
        panels = [
            (
                "kept fraction",
                [(f"{p}kept", "unlabeled (reliable)"), (f"{p}kept_labeled", "labeled batch")],
            ),
            ("class thresholds tau_c", [(f"{p}threshold_{c}", f"class {c}") for c in range(3)]),
            (
                "pseudo-label accuracy",
                [
                    (f"{p}acc_kept_labeled", "kept, labeled"),
                    (f"{p}acc_dropped_labeled", "dropped, labeled"),
                    (f"{p}acc_kept_unlabeled", "kept, unlabeled truth"),
                    (f"{p}acc_dropped_unlabeled", "dropped, unlabeled truth"),
                ],
            ),
            (
                "per true class, unlabeled truth",
                [
                    series
                    for c in range(3)
                    for series in (
                        (f"{p}kept_unlabeled_{c}", f"class {c}: kept"),
                        (f"{p}acc_kept_unlabeled_{c}", f"class {c}: right among kept"),
                    )
                ],
            ),
        ]
        for col, (name, series) in enumerate(panels):
            ax = axes[row, col]
            for key, label in series:
                steps, values = _series(history, key)
                if len(steps) and np.isfinite(values).any():
                    ax.plot(steps, _smooth(values, window), label=label)
            ax.set_title(f"{task}: {name}")
            ax.set_xlabel("step")
            ax.set_ylim(-0.02, 1.02)
            if ax.lines:
                ax.legend(fontsize=8)
    fig.suptitle(f"{title} dual-threshold pseudo-labels (moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_masks(
    images: Sequence[Any], masks: Sequence[Any], preds: Sequence[Any], path: Path, title: str = ""
) -> None:
    """Test images with the true (green) and predicted (red) lesion outlines."""
    from hermes.data import denormalize

    n = len(images)
    if n == 0:
        return
    cols = min(n, 4)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, mask, pred in zip(axes.flat, images, masks, preds, strict=False):
        ax.imshow(denormalize(image).permute(1, 2, 0).numpy())
        for m, color in ((mask, "lime"), (pred, "red")):
            arr = (np.asarray(m) == 1).astype(float)
            if arr.any() and not arr.all():
                ax.contour(arr, levels=[0.5], colors=color, linewidths=1.2)
    fig.suptitle(f"{title} test images: truth (green), prediction (red)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _clean(values: dict[str, float]) -> dict[str, float | None]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in values.items()}


def _fmt(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{value:.4f}"
    )


def _tail_mean(history: list[dict[str, float]], key: str, fraction: float = 0.2) -> float:
    values = [h[key] for h in history if key in h]
    values = values[-max(int(len(values) * fraction), 1) :]
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


PER_CLASS_KEY = re.compile(rf"pseudo_(cls|seg)/({'|'.join(TRUTH_STATS_PER_CLASS)})_unlabeled_\d+")
"""The per-true-class pseudo-label statistics of the unlabeled stream
(:func:`hermes.method.method.log_truth`)."""


def run_summary(result: RunResult) -> dict[str, Any]:
    """The run's numbers for ``metrics.json``."""
    h = result.state.history
    pseudo = {
        key: _tail_mean(h, key)
        for key in (
            "pseudo_cls/kept",
            "pseudo_seg/kept",
            "pseudo_cls/acc_kept_labeled",
            "pseudo_cls/acc_dropped_labeled",
            "pseudo_seg/acc_kept_labeled",
            "pseudo_seg/acc_dropped_labeled",
            "pseudo_cls/acc_kept_unlabeled",
            "pseudo_cls/acc_dropped_unlabeled",
            "pseudo_seg/acc_kept_unlabeled",
            "pseudo_seg/acc_dropped_unlabeled",
            *(key for key in (h[-1] if h else {}) if PER_CLASS_KEY.fullmatch(key)),
        )
    }
    return {
        "name": result.cfg.name,
        "mode": result.cfg.method.mode,
        "steps": result.state.step,
        "seconds": round(result.seconds, 1),
        "final": _clean(result.metrics),
        "best": _clean(result.state.best or {}),
        "evals": [_clean(e) for e in result.state.evals],
        "pseudo_labels_last_20pct": _clean(pseudo),
    }


def write_run_report(result: RunResult, classes: Sequence[str]) -> Path:
    """``<out_dir>/report/``: metrics.json, summary.md, losses.png, pseudo_labels.png,
    masks.png and test_predictions.csv (the final evaluation per image, the file
    ``python -m hermes.compare`` reads). Returns the folder."""
    folder = result.out_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    summary = run_summary(result)
    summary["classes"] = list(classes)
    (folder / "metrics.json").write_text(json.dumps(summary, indent=2))
    name = result.cfg.name
    plot_losses(result.state.history, folder / "losses.png", name)
    if result.cfg.method.mode in PSEUDO_LABEL_MODES:
        plot_pseudo_labels(result.state.history, folder / "pseudo_labels.png", name)
    if result.final is not None and result.final.per_image is not None:
        write_per_image(folder / PREDICTIONS_FILE, result.final.per_image)
    if result.final is not None:
        plot_masks(
            result.final.images,
            result.final.masks,
            result.final.predictions,
            folder / "masks.png",
            name,
        )
    lines = [
        f"# {name}: {result.cfg.method.mode}, {summary['steps']} steps, {summary['seconds']} s",
        "",
        f"Data: {result.cfg.data.dataset} ({', '.join(classes)}), "
        f"{int(result.metrics.get('images', 0))} test images.",
        "",
        "| metric | final | best checkpoint |",
        "|---|---|---|",
    ]
    best = summary["best"]
    for key in METRICS:
        lines.append(f"| {key} | {_fmt(summary['final'].get(key))} | {_fmt(best.get(key))} |")
    lines += ["", "![losses](losses.png)", ""]
    if result.cfg.method.mode in PSEUDO_LABEL_MODES:
        lines += ["Pseudo-labels (mean of the last 20% of steps):", ""]
        lines += [f"- {k}: {_fmt(v)}" for k, v in summary["pseudo_labels_last_20pct"].items()]
        lines += ["", "![pseudo-labels](pseudo_labels.png)", ""]
    lines += ["![masks](masks.png)", ""]
    (folder / "summary.md").write_text("\n".join(lines))
    logger.info("report written to %s", folder)
    return folder


def setup_lines(cfg: Any) -> list[str]:
    """What the runs were made of and how to read one seed's numbers (Markdown lines)."""
    m, d = cfg.model, cfg.data
    weights = {"none": "random initialisation", "imagenet": "ImageNet weights"}

    def describe(encoder: str, spec: str | None) -> str:
        return f"{encoder} ({weights.get(spec or 'none', f'weights from {spec}')})"

    lines = [
        "Setup: segmentation encoder "
        + describe(m.seg_encoder, m.pretrained_seg)
        + ", classification encoder "
        + describe(m.cls_encoder, m.pretrained_cls)
        + f"; dataset {d.dataset} at {d.image_size} px, {d.labeled} labeled images, "
        f"{cfg.optim.steps} steps, seed {cfg.seed}.",
        "",
        "How to read this: these are one seed's numbers on one test split. Across seeds and "
        "splits the test metrics of the same configuration spread by several points (lesion "
        "Dice and AUC; docs/results.md in the repository has the 5-seed spreads on BUSI), so a "
        "difference of a few points between the two columns is not evidence either way.",
    ]
    if "none" in (m.pretrained_seg or "none", m.pretrained_cls or "none"):
        lines += [
            "",
            "An encoder was trained from random initialisation: on small labeled sets expect "
            "weak results (model.pretrained_* = imagenet, or the lite0 preset, learn far better).",
        ]
    return lines


def write_comparison_report(results: Sequence[RunResult], folder: str | Path) -> Path:
    """Side by side: ``metrics.json`` and ``summary.md`` with one column per run, linking each
    run's own report, and a figure of the test metrics over the evaluations."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    summaries = [run_summary(r) for r in results]
    (folder / "metrics.json").write_text(json.dumps(summaries, indent=2))
    names = [s["name"] for s in summaries]
    lines = [
        "# " + " vs ".join(names),
        "",
        "Final test metrics (same data, split, networks and schedule):",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in METRICS:
        lines.append(
            f"| {key} | " + " | ".join(_fmt(s["final"].get(key)) for s in summaries) + " |"
        )
    lines.append("| seconds | " + " | ".join(str(s["seconds"]) for s in summaries) + " |")
    paired = paired_comparison(results)
    if paired:
        lines += [
            "",
            f"Image by image, {names[0]} - {names[1]} on the same test images (`python -m "
            "hermes.compare`; the interval is what the test images alone leave open, not the "
            "spread between training runs):",
            "",
            "```",
            paired,
            "```",
        ]
    lines += ["", *setup_lines(results[0].cfg), ""]
    lines += ["", "![test metrics over training](test_metrics.png)", ""]
    for r in results:
        rel = Path("..") / r.out_dir.name / "report" / "summary.md"
        lines.append(f"- {r.cfg.name}: [{rel}]({rel})")
    (folder / "summary.md").write_text("\n".join(lines) + "\n")

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key in zip(axes, ("dice_lesion", "accuracy"), strict=False):
        for s in summaries:
            steps = [e["step"] for e in s["evals"]]
            values = [np.nan if e.get(key) is None else e[key] for e in s["evals"]]
            ax.plot(steps, values, marker="o", label=s["name"])
        ax.set_title(f"test {key}")
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "test_metrics.png", dpi=100)
    plt.close(fig)
    return folder


def paired_comparison(results: Sequence[RunResult]) -> str:
    """Two runs' final evaluations compared image by image, the first run minus the second
    (:func:`hermes.eval.paired.compare`); empty unless there are two runs with per-image
    results of the same images."""
    if len(results) != 2 or any(r.final is None or r.final.per_image is None for r in results):
        return ""
    names = [results[1].cfg.name, results[0].cfg.name]
    base, run = (r.final.per_image for r in (results[1], results[0]))  # type: ignore[union-attr]
    try:
        return format_comparison(base, compare(base, run, names), names)
    except ValueError as exc:  # not the same images
        logger.warning("no image-by-image comparison: %s", exc)
        return ""


def comparison_table(results: Sequence[RunResult]) -> str:
    """A plain-text table of the final metrics, one column per run (for the terminal)."""
    names = [r.cfg.name for r in results]
    width = max(14, *(len(n) + 2 for n in names))
    lines = ["metric".ljust(14) + "".join(n.rjust(width) for n in names)]
    for key in METRICS:
        lines.append(
            key.ljust(14) + "".join(_fmt(r.metrics.get(key)).rjust(width) for r in results)
        )
    return "\n".join(lines)
