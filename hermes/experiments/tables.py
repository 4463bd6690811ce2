"""The paper's Tables 1 and 2 from a matrix's results: Markdown, a JSON summary and a figure.

Table 1: lesion Dice (%), Table 2: accuracy (%) (and the classification AUC, which says
whether a classifier ranks better than chance when its accuracy sits at a constant
prediction), rows = variants, columns = label budgets,
cells ``mean +- std (n)`` over seeds (sample standard deviation, ``ddof=1``). Because every
variant of a (budget, seed) pair shares a split, the gain of each variant over supervised-only
is also given as the mean +- std of the per-seed paired differences. Where the runs kept their
test predictions per image (``test_predictions.csv``), each (budget, seed) pair is also
compared image by image (:func:`hermes.eval.paired.compare`): how far the test images alone
could move a gain; and the seeds together (:func:`hermes.eval.paired.pool`).
"""

from __future__ import annotations

import itertools
import logging
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hermes.eval.paired import (
    PREDICTIONS_FILE,
    Difference,
    PooledDifference,
    compare,
    difference_record,
    pool,
    read_per_image,
)
from hermes.experiments.runner import Matrix, RunSpec, run_dir
from hermes.experiments.variants import Variant
from hermes.method.method import TRUTH_STATS_PER_CLASS

logger = logging.getLogger(__name__)

METRICS = (
    ("dice_lesion", "Table 1: lesion Dice (%)"),
    ("accuracy", "Table 2: accuracy (%)"),
    ("auc", "Not in the paper: classification AUC (%)"),
    ("iou_lesion", "Not in the paper: lesion IoU (%)"),
    ("dice_lesion_pooled", "Not in the paper: lesion Dice of the pooled test pixels (%)"),
)
PSEUDO_KEYS = (
    ("pseudo_cls/kept_unlabeled", "cls kept"),
    ("pseudo_cls/acc_kept_unlabeled", "cls acc kept"),
    ("pseudo_cls/acc_dropped_unlabeled", "cls acc dropped"),
    ("pseudo_seg/kept_unlabeled", "seg kept"),
    ("pseudo_seg/acc_kept_unlabeled", "seg acc kept"),
    ("pseudo_seg/acc_dropped_unlabeled", "seg acc dropped"),
)

LOSS_TERMS = (
    ("loss/ce_l", "", "CE_l"),
    ("loss/ce_u", "ce_u", "w CE_u"),
    ("loss/contrast_img", "contrast_img", "w L_con_img"),
    ("loss/seg_sup", "", "L_seg_sup"),
    ("loss/dice_u", "dice_u", "w Dice_u"),
    ("loss/contrast_pix", "contrast_pix", "w L_con_pix"),
    ("loss/itc", "itc", "lambda L_itc"),
    # the baselines' unlabeled terms (Mean Teacher, FixMatch), times their logged weights
    ("loss/unsup_cls", "schedule/weight_cls", "w U_cls"),
    ("loss/unsup_seg", "schedule/weight_seg", "w U_seg"),
)


def _weighted(result: dict[str, Any], key: str, weight: str) -> float:
    """A loss term at the end of training times its weight in the total (``itc``: times
    ``lambda(t)`` too), from a result's ``end_of_training`` means and its configuration."""
    end = result.get("end_of_training", {})
    value = float(end.get(key, math.nan))
    if not weight:
        return value
    if weight.startswith("schedule/"):  # a weight logged by the method at each step
        return value * float(end.get(weight, math.nan))
    factor = float(
        result.get("config", {}).get("method", {}).get("weights", {}).get(weight, math.nan)
    )
    if weight == "itc":
        factor *= float(end.get("schedule/lambda", math.nan))
    return value * factor


def mean_std(values: list[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (NaN for fewer than two values) and count of the finite
    ``values``."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan, 0
    std = statistics.stdev(finite) if len(finite) > 1 else math.nan
    return statistics.fmean(finite), std, len(finite)


def _cell(values: list[float], scale: float = 100.0, signed: bool = False) -> str:
    mean, std, n = mean_std(values)
    if n == 0:
        return "-"
    sign = "+" if signed else ""
    text = f"{mean * scale:{sign}.2f}"
    if n > 1:
        text += f" ± {std * scale:.2f}"
    return f"{text} ({n})"


def collect(
    matrix: Matrix, results: dict[RunSpec, dict[str, Any]]
) -> dict[str, dict[int, dict[int, dict[str, Any]]]]:
    """``results`` as ``{variant: {budget: {seed: result}}}`` (missing runs left out)."""
    table: dict[str, dict[int, dict[int, dict[str, Any]]]] = {}
    for spec, result in results.items():
        table.setdefault(spec.variant.name, {}).setdefault(spec.budget, {})[spec.seed] = result
    return table


def _metric(table: dict, variant: str, budget: int, metric: str) -> dict[int, float]:
    runs = table.get(variant, {}).get(budget, {})
    return {seed: float(r["metrics"].get(metric, math.nan)) for seed, r in runs.items()}


def summarize(matrix: Matrix, results: dict[RunSpec, dict[str, Any]]) -> dict[str, Any]:
    """Means, stds and per-seed values of both metrics, and paired gains over supervised-only.

    Returns ``{metric: {variant: {budget: {"values": {seed: v}, "mean", "std", "n",
    "gain_vs_supervised": {"mean", "std", "n", "values"}}}}}``.
    """
    table = collect(matrix, results)
    out: dict[str, Any] = {}
    for metric, _title in METRICS:
        out[metric] = {}
        for v in matrix.variants:
            out[metric][v.name] = {}
            for b in matrix.budgets:
                values = _metric(table, v.name, b, metric)
                mean, std, n = mean_std(list(values.values()))
                entry: dict[str, Any] = {"values": values, "mean": mean, "std": std, "n": n}
                base = _metric(table, "supervised", b, metric)
                diffs = {s: values[s] - base[s] for s in values if s in base}
                if v.name != "supervised" and diffs:
                    g_mean, g_std, g_n = mean_std(list(diffs.values()))
                    entry["gain_vs_supervised"] = {
                        "values": diffs,
                        "mean": g_mean,
                        "std": g_std,
                        "n": g_n,
                    }
                out[metric][v.name][b] = entry
    return out


@dataclass(frozen=True)
class ImageComparison:
    """A variant against supervised-only image by image at one budget: for one seed
    (``seed``; ``differences`` from :func:`hermes.eval.paired.compare`) or pooled over the
    ``seeds`` (``seed`` None; :func:`hermes.eval.paired.pool`)."""

    variant: Variant
    budget: int
    seed: int | None
    seeds: tuple[int, ...]
    differences: list[Difference] | list[PooledDifference]

    def record(self) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers as None)."""
        return {
            "variant": self.variant.name,
            "budget": self.budget,
            "seed": self.seed if self.seed is not None else "pooled",
            "seeds": list(self.seeds),
            "differences": [difference_record(d) for d in self.differences],
        }


def image_comparisons(matrix: Matrix) -> list[ImageComparison]:
    """Every variant against supervised-only image by image, for every (variant, budget, seed)
    whose run and supervised-only run both kept their per-image test predictions, and per
    (variant, budget) with two such seeds or more, pooled over them; empty without a
    supervised-only variant. A file of other images is left out with a warning."""
    base = next((v for v in matrix.variants if v.name == "supervised"), None)
    if base is None:
        return []
    out = []
    for v in matrix.variants:
        if v.name == "supervised":
            continue
        for b in matrix.budgets:
            pairs, seeds = [], []
            for s in matrix.seeds:
                files = [
                    run_dir(matrix.out, RunSpec(x, b, s)) / PREDICTIONS_FILE for x in (base, v)
                ]
                if not all(f.is_file() for f in files):
                    continue
                try:
                    pair = (read_per_image(files[0]), read_per_image(files[1]))
                    found = compare(*pair, ("supervised", v.name))
                except ValueError as exc:  # e.g. a stale file of other images
                    logger.warning("no per-image comparison for %s: %s", files[1].parent, exc)
                    continue
                pairs.append(pair)
                seeds.append(s)
                out.append(ImageComparison(v, b, s, (s,), found))
            if len(pairs) > 1:
                try:
                    pooled = pool(pairs, ("supervised", v.name))[1]
                except ValueError as exc:  # the seeds' files disagree about an image's label
                    logger.warning("no pooled comparison for %s at %d labels: %s", v.name, b, exc)
                    continue
                out.append(ImageComparison(v, b, None, tuple(seeds), pooled))
    return out


def paired_image_tests(matrix: Matrix) -> list[str]:
    """Markdown rows ``variant | budget | seed | AUC | Dice | accuracy`` of
    :func:`image_comparisons` (difference, 95 % interval, p-value in points), a row
    ``pooled (n)`` for the seeds together; empty when no run kept its predictions."""
    return [
        _row(
            c.variant.label,
            [
                str(c.budget),
                str(c.seed) if c.seed is not None else f"pooled ({len(c.seeds)})",
                *_image_cells(c.differences),
            ],
        )
        for c in image_comparisons(matrix)
    ]


def _image_cells(differences: Sequence[Difference | PooledDifference]) -> list[str]:
    found = {d.metric: d for d in differences}
    return [
        f"{d.diff * 100:+.1f} [{d.low * 100:+.1f}, {d.high * 100:+.1f}], p {d.p:.2f}"
        if (d := found.get(m)) is not None
        else "-"
        for m in ("auc", "dice_lesion", "accuracy")
    ]


PER_CLASS_KEYS = tuple(
    (f"{name}_unlabeled", label)
    for name, label in zip(
        TRUTH_STATS_PER_CLASS,
        ("kept", "right, kept", "right, dropped", "precision, kept"),
        strict=True,
    )
)
"""Per true class ``c`` (``<key>_<c>`` in a run's ``end_of_training``): the fraction of the
class's entries kept, the fraction right among its kept and its dropped entries, and the
fraction right among the kept entries pseudo-labeled ``c``."""


def pseudo_labels_per_class(matrix: Matrix, table: dict) -> list[str]:
    """Markdown lines of the pseudo-label statistics per true class at the end of training
    (mean over seeds, %), a row per variant, budget and task (images, pixels); empty when no
    run logged them (runs of earlier versions)."""
    rows, classes = [], 0
    for v in matrix.variants:
        if v.name == "supervised":
            continue
        for b in matrix.budgets:
            ends = [r.get("end_of_training", {}) for r in table.get(v.name, {}).get(b, {}).values()]
            for task, what in (("cls", "images"), ("seg", "pixels")):
                cells: list[str] = []
                for c in itertools.count():
                    keys = [f"pseudo_{task}/{k}_{c}" for k, _ in PER_CLASS_KEYS]
                    if not any(keys[0] in end for end in ends):
                        break
                    for key in keys:
                        mean, _, n = mean_std([float(end.get(key, math.nan)) for end in ends])
                        cells.append(f"{mean * 100:.1f}" if n else "-")
                if cells:
                    classes = max(classes, len(cells) // len(PER_CLASS_KEYS))
                    rows.append((v.label, str(b), what, cells))
    if not rows:
        return []
    names = _class_names(table, classes)
    legend = ", ".join(f"{c} = {n}" for c, n in enumerate(names[:classes]))
    head = [f"{c}: {label}" for c in range(classes) for _, label in PER_CLASS_KEYS]
    width = len(head)  # pixels have two classes where images may have more
    return [
        "",
        "## Pseudo-labels per true class at the end of training (last quarter of the steps, "
        "unlabeled stream; mean over seeds, %)",
        "",
        "Per true class: the fraction of its images (pixels) kept, right among its kept and "
        "among its dropped ones, and right among those kept with its label (precision). "
        f"Classes: images {legend}; pixels 0 = background, 1 = lesion.",
        "",
        _row("method", ["labeled", "task", *head]),
        "|" + "---|" * (len(head) + 3),
        *(
            _row(label, [b, what, *cells, *["-"] * (width - len(cells))])
            for label, b, what, cells in rows
        ),
    ]


def _class_names(table: dict, count: int) -> list[str]:
    """The image classes of the runs' configuration (``data.classes``), else ``class <c>``."""
    for budgets in table.values():
        for runs in budgets.values():
            for r in runs.values():
                names = r.get("config", {}).get("data", {}).get("classes")
                if isinstance(names, list) and len(names) >= count:
                    return [str(n) for n in names]
    return [f"class {c}" for c in range(count)]


def _row(label: str, cells: list[str]) -> str:
    return "| " + " | ".join([label, *cells]) + " |"


def markdown(matrix: Matrix, results: dict[RunSpec, dict[str, Any]], title: str = "") -> str:
    """The tables as Markdown: per metric, the values and the paired gains over supervised-only,
    then the pseudo-label statistics at the end of training and the run times."""
    table = collect(matrix, results)
    head = [f"{b} labeled" for b in matrix.budgets]
    sep = "|" + "---|" * (len(head) + 1)
    lines = [f"# {title}" if title else "# Results", ""]
    lines.append(
        "Cells: mean ± sample std over seeds (number of seeds), in %. Gains are the mean ± std of "
        "the per-seed paired differences (same split, same seed) against supervised-only."
    )
    for metric, caption in METRICS:
        lines += ["", f"## {caption}", "", _row("method", head), sep]
        for v in matrix.variants:
            cells = [
                _cell(list(_metric(table, v.name, b, metric).values())) for b in matrix.budgets
            ]
            lines.append(_row(v.label, cells))
        shead = [f"{b}, seed {s}" for b in matrix.budgets for s in matrix.seeds]
        lines += [
            "",
            f"Per seed ({caption.split(': ')[1]}):",
            "",
            _row("method", shead),
            "|" + "---|" * (len(shead) + 1),
        ]
        for v in matrix.variants:
            cells = []
            for b in matrix.budgets:
                values = _metric(table, v.name, b, metric)
                cells += [f"{values[s] * 100:.2f}" if s in values else "-" for s in matrix.seeds]
            lines.append(_row(v.label, cells))
        if any(v.name == "supervised" for v in matrix.variants):
            lines += [
                "",
                f"Gain over supervised-only ({caption.split(': ')[1]}, paired by seed):",
                "",
                _row("method", head),
                sep,
            ]
            for v in matrix.variants:
                if v.name == "supervised":
                    continue
                cells = []
                for b in matrix.budgets:
                    values = _metric(table, v.name, b, metric)
                    base = _metric(table, "supervised", b, metric)
                    cells.append(
                        _cell([values[s] - base[s] for s in values if s in base], signed=True)
                    )
                lines.append(_row(v.label, cells))
    paired = paired_image_tests(matrix)
    if paired:
        lines += [
            "",
            "## Gains per test image (each seed's test images, paired against supervised-only)",
            "",
            "Difference in points [95 % interval], p-value: AUC by DeLong's paired test, lesion "
            "Dice by the paired t-test over images, accuracy by McNemar's exact test "
            "(`python -m hermes.compare`). The interval is what the test images alone leave "
            "open; the spread over seeds above adds the training's. A row `pooled (n)` is the "
            "mean over n seeds, its interval from a bootstrap over the distinct test images of "
            "all of them (an image in several seeds' test sets counts once).",
            "",
            _row("method", ["labeled", "seed", "AUC", "lesion Dice", "accuracy"]),
            "|---|---|---|---|---|---|",
            *paired,
        ]
    lines += [
        "",
        "## Pseudo-labels at the end of training (last quarter of the steps, unlabeled "
        "stream, measured against its hidden truth; mean over seeds, %)",
        "",
    ]
    phead = [f"{label} ({b})" for b in matrix.budgets for _, label in PSEUDO_KEYS]
    lines += [_row("method", phead), "|" + "---|" * (len(phead) + 1)]
    for v in matrix.variants:
        if v.name == "supervised":
            continue
        cells = []
        for b in matrix.budgets:
            runs = table.get(v.name, {}).get(b, {})
            for key, _ in PSEUDO_KEYS:
                vals = [
                    float(r.get("end_of_training", {}).get(key, math.nan)) for r in runs.values()
                ]
                mean, _, n = mean_std(vals)
                cells.append(f"{mean * 100:.1f}" if n else "-")
        lines.append(_row(v.label, cells))
    lines += pseudo_labels_per_class(matrix, table)
    lines += [
        "",
        "## Loss balance at the end of training (last quarter of the steps, weighted "
        "terms as they enter the total, mean over seeds)",
        "",
    ]
    lhead = [f"{label} ({b})" for b in matrix.budgets for _, _, label in LOSS_TERMS]
    lines += [_row("method", lhead), "|" + "---|" * (len(lhead) + 1)]
    for v in matrix.variants:
        cells = []
        for b in matrix.budgets:
            runs = list(table.get(v.name, {}).get(b, {}).values())
            for key, weight, _ in LOSS_TERMS:
                vals = [_weighted(r, key, weight) for r in runs]
                mean, _, n = mean_std(vals)
                cells.append(f"{mean:.3f}" if n else "-")
        lines.append(_row(v.label, cells))
    seconds = [r.get("seconds", math.nan) for r in results.values()]
    mean, _, n = mean_std(seconds)
    if n:
        lines += [
            "",
            f"{n} runs, {mean:.0f} s per run on average ({sum(seconds) / 60:.1f} min in all).",
        ]
    return "\n".join(lines) + "\n"


def plot(
    matrix: Matrix, results: dict[RunSpec, dict[str, Any]], path: Path, title: str = ""
) -> Path:
    """Grouped bars (mean ± std over seeds) per budget and variant, one panel per metric, with
    each seed's value as a dot. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = collect(matrix, results)
    variants: list[Variant] = matrix.variants
    fig, axes = plt.subplots(1, len(METRICS), figsize=(6 * len(METRICS), 4.2), squeeze=False)
    width = 0.8 / len(variants)
    colors = plt.get_cmap("tab10")
    for ax, (metric, caption) in zip(axes[0], METRICS, strict=True):
        for i, v in enumerate(variants):
            for j, b in enumerate(matrix.budgets):
                vals = [
                    x * 100 for x in _metric(table, v.name, b, metric).values() if math.isfinite(x)
                ]
                if not vals:
                    continue
                mean, std, _ = mean_std(vals)
                x = j + (i - (len(variants) - 1) / 2) * width
                ax.bar(
                    x,
                    mean,
                    width,
                    yerr=std if math.isfinite(std) else None,
                    capsize=2,
                    color=colors(i),
                    label=v.name if j == 0 else None,
                )
                ax.scatter([x] * len(vals), vals, s=8, color="black", zorder=3)
        ax.set_xticks(range(len(matrix.budgets)), [f"{b} labeled" for b in matrix.budgets])
        ax.set_title(caption)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_pseudo(
    matrix: Matrix, path: Path, variant: str = "hermes", title: str = ""
) -> Path | None:
    """Pseudo-label trajectories of ``variant`` (mean over seeds, per budget): thresholds, kept
    fraction and accuracy of kept vs dropped pseudo-labels on the unlabeled stream, for the
    classification (per image) and segmentation (per pixel) tasks. Reads each run's
    ``history.json``; returns ``None`` when there is none."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hermes.experiments.runner import run_dir
    from hermes.experiments.variants import VARIANTS

    panels = [
        (
            "cls",
            (
                "threshold_0",
                "threshold_1",
                "kept_unlabeled",
                "acc_kept_unlabeled",
                "acc_dropped_unlabeled",
            ),
        ),
        (
            "seg",
            (
                "threshold_0",
                "threshold_1",
                "kept_unlabeled",
                "acc_kept_unlabeled",
                "acc_dropped_unlabeled",
            ),
        ),
    ]
    fig, axes = plt.subplots(
        len(matrix.budgets), 2, figsize=(11, 3.2 * len(matrix.budgets)), squeeze=False
    )
    found = False
    for i, b in enumerate(matrix.budgets):
        histories = []
        for s in matrix.seeds:
            f = run_dir(matrix.out, RunSpec(VARIANTS[variant], b, s)) / "history.json"
            if f.is_file():
                histories.append(json.loads(f.read_text()))
        for j, (task, names) in enumerate(panels):
            ax = axes[i][j]
            ax.set_title(f"{task}, {b} labeled ({len(histories)} seeds)", fontsize=9)
            if not histories:
                continue
            found = True
            steps = min(len(h) for h in histories)
            for name in names:
                key = f"pseudo_{task}/{name}"
                ys = []
                for k in range(steps):
                    vals = [h[k].get(key, math.nan) for h in histories]
                    ys.append(mean_std(vals)[0])
                ax.plot(range(steps), ys, label=name)
            ax.set_ylim(-0.02, 1.02)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
    if not found:
        plt.close(fig)
        return None
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
