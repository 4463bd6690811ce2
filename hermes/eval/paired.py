"""Per-image predictions on a test set, and the paired comparison of two models on the same
images (``python -m hermes.compare``).

A per-image file is a CSV with one row per evaluated image: ``id, label, predicted,
p_<class>..., dice_lesion, iou_lesion`` (class names as in the data settings; probabilities
are the softmax, with test-time augmentation when it was on). ``python -m hermes.evaluate
--per-image`` writes one, and so does every training run (``report/test_predictions.csv``,
the final evaluation).

Two models evaluated on the same images are compared image by image, which removes the
difference between test sets from the comparison (what is left is the model difference and
the sampling of the test images):

- AUC (two classes): DeLong, DeLong and Clarke-Pearson's paired test (1988), with the
  structural components of Sun and Xu (2014): the difference of the two AUCs, its standard
  error from the covariance of the two ROC curves on the same images, a normal 95 % interval
  and a two-sided p-value.
- Accuracy: the difference of the proportions correct, a Wald 95 % interval for paired
  proportions, and McNemar's exact test on the images exactly one model gets right.
- Lesion Dice and IoU per image: the mean of the per-image differences, a t 95 % interval
  and the paired t-test's p-value.

Two methods over several seeds or folds (:func:`pool`): each pair of runs as above, then the
mean of the differences over the pairs with a 95 % interval from the test images (a bootstrap
over the distinct test images of all pairs, so an image in several pairs' test sets counts
once), a t interval over the pairs, and Cochran's Q test of whether the pairs differ by more
than their test images explain.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

COLUMNS = ("id", "label", "predicted")
"""The leading columns of a per-image file; then ``p_<class>`` per class, ``dice_lesion`` and
``iou_lesion``."""

PREDICTIONS_FILE = "test_predictions.csv"
"""The name of a run's per-image file (in ``report/`` of a training run, beside
``result.json`` of an experiment run)."""

Z95 = 1.959963984540054
"""The standard normal's 97.5 % quantile (two-sided 95 % intervals)."""


@dataclass(frozen=True)
class PerImage:
    """Per-image results of one evaluation, in evaluation order. Shapes: labels and
    predicted (N,) int64, probs (N, C), dice and iou (N,) (the lesion class)."""

    ids: list[str]
    classes: list[str]
    labels: np.ndarray
    predicted: np.ndarray
    probs: np.ndarray
    dice: np.ndarray
    iou: np.ndarray

    def __len__(self) -> int:
        return len(self.ids)


def write_per_image(path: str | Path, rows: PerImage) -> Path:
    """Write ``rows`` as a per-image CSV (to a temporary name first, then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, *(f"p_{c}" for c in rows.classes), "dice_lesion", "iou_lesion"])
        for i, sid in enumerate(rows.ids):
            writer.writerow(
                [
                    sid,
                    rows.classes[rows.labels[i]],
                    rows.classes[rows.predicted[i]],
                    *(f"{p:.6g}" for p in rows.probs[i]),
                    f"{rows.dice[i]:.6g}",
                    f"{rows.iou[i]:.6g}",
                ]
            )
    tmp.replace(path)
    return path


def read_per_image(path: str | Path) -> PerImage:
    """Read a per-image CSV written by :func:`write_per_image`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a missing column, an unknown class name, a value that is not a number, a
            repeated id or no rows; the message names the file (and the row).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"per-image file not found: {path}")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        classes = [h[2:] for h in header if h.startswith("p_")]
        missing = [c for c in (*COLUMNS, "dice_lesion", "iou_lesion") if c not in header]
        if missing or len(classes) < 2:
            what = ", ".join(missing) if missing else "p_<class> for at least two classes"
            raise ValueError(f"{path}: not a per-image file (missing column {what})")
        index = {c: i for i, c in enumerate(classes)}
        ids, labels, predicted, probs, dice, iou = [], [], [], [], [], []
        for line, row in enumerate(reader, start=2):
            try:
                labels.append(index[row["label"]])
                predicted.append(index[row["predicted"]])
                probs.append([float(row[f"p_{c}"]) for c in classes])
                dice.append(float(row["dice_lesion"]))
                iou.append(float(row["iou_lesion"]))
            except KeyError as exc:
                raise ValueError(
                    f"{path}, line {line}: unknown class {exc.args[0]!r} (classes: "
                    f"{', '.join(classes)})"
                ) from None
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from None
            ids.append(row["id"])
    if not ids:
        raise ValueError(f"{path}: no rows")
    repeated = sorted(i for i, k in Counter(ids).items() if k > 1)
    if repeated:
        raise ValueError(f"{path}: repeated image ids: {', '.join(repeated[:5])}")
    return PerImage(
        ids,
        classes,
        np.asarray(labels, dtype=np.int64),
        np.asarray(predicted, dtype=np.int64),
        np.asarray(probs, dtype=np.float64),
        np.asarray(dice, dtype=np.float64),
        np.asarray(iou, dtype=np.float64),
    )


def align(a: PerImage, b: PerImage, names: Sequence[str] = ("A", "B")) -> PerImage:
    """``b``'s rows in ``a``'s order. Raises ValueError, naming ``names``, when the two do not
    hold the same images with the same labels and classes."""
    if a.classes != b.classes:
        raise ValueError(
            f"{names[0]} and {names[1]} have different classes: {a.classes} vs {b.classes}"
        )
    where = {sid: i for i, sid in enumerate(b.ids)}
    only_a = [i for i in a.ids if i not in where]
    only_b = sorted(set(b.ids) - set(a.ids))
    if only_a or only_b:
        raise ValueError(
            f"{names[0]} and {names[1]} are not evaluations of the same images: "
            f"{len(only_a)} only in {names[0]} ({', '.join(only_a[:3])}), "
            f"{len(only_b)} only in {names[1]} ({', '.join(only_b[:3])})"
        )
    order = np.asarray([where[i] for i in a.ids])
    if not np.array_equal(a.labels, b.labels[order]):
        bad = [a.ids[i] for i in np.flatnonzero(a.labels != b.labels[order])[:3]]
        raise ValueError(f"{names[0]} and {names[1]} give different labels to {', '.join(bad)}")
    return PerImage(
        a.ids,
        b.classes,
        a.labels,
        b.predicted[order],
        b.probs[order],
        b.dice[order],
        b.iou[order],
    )


def _structural_components(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, ...]:
    """DeLong's placement values: for each positive image the fraction of negatives it scores
    above (ties count half), for each negative the fraction of positives scoring above it.
    Shapes: scores (K, N), positive (N,) bool -> (K, m), (K, n)."""
    pos, neg = scores[:, positive], scores[:, ~positive]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    return psi.mean(2), psi.mean(1)


def delong_paired(
    scores_a: np.ndarray, scores_b: np.ndarray, positive: np.ndarray
) -> tuple[float, float, float]:
    """``(auc_a, auc_b, standard error of auc_b - auc_a)`` of two scores of the same images
    (DeLong et al. 1988). Shapes: (N,), (N,), positive (N,) bool with both classes present."""
    positive = np.asarray(positive, dtype=bool)
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        raise ValueError(f"DeLong needs two images of each class (got {m} positive, {n} negative)")
    v10, v01 = _structural_components(np.stack([scores_a, scores_b]).astype(np.float64), positive)
    s10, s01 = np.cov(v10), np.cov(v01)
    contrast = np.array([-1.0, 1.0])
    var = contrast @ s10 @ contrast / m + contrast @ s01 @ contrast / n
    auc = v10.mean(1)
    return float(auc[0]), float(auc[1]), math.sqrt(max(float(var), 0.0))


@dataclass(frozen=True)
class Difference:
    """One metric of two models on the same images: the values, ``b - a``, a 95 % interval of
    it, the two-sided p-value of no difference, and the test that gave them."""

    metric: str
    a: float
    b: float
    low: float
    high: float
    p: float
    test: str
    se: float = math.nan
    """The standard error of ``b - a`` from the test images."""

    @property
    def diff(self) -> float:
        return self.b - self.a


def _normal(metric: str, a: float, b: float, se: float, test: str) -> Difference:
    d = b - a
    z = d / se if se > 0 else (0.0 if d == 0 else math.inf)
    p = float(2 * stats.norm.sf(abs(z)))
    half = Z95 * se
    return Difference(metric, a, b, d - half, d + half, p, test, se)


def compare(a: PerImage, b: PerImage, names: Sequence[str] = ("A", "B")) -> list[Difference]:
    """The paired differences ``b - a`` of AUC (two classes only), accuracy, lesion Dice and
    lesion IoU over the images both were evaluated on (see the module docstring)."""
    b = align(a, b, names)
    n = len(a)
    out: list[Difference] = []
    if len(a.classes) == 2:
        positive = a.labels == 1
        if 2 <= positive.sum() <= n - 2:
            auc_a, auc_b, se = delong_paired(a.probs[:, 1], b.probs[:, 1], positive)
            out.append(_normal("auc", auc_a, auc_b, se, "DeLong, paired"))
    right_a, right_b = a.predicted == a.labels, b.predicted == b.labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    d = (only_b - only_a) / n
    se = math.sqrt(max(only_a + only_b - n * d * d, 0.0)) / n
    half = Z95 * se
    p = stats.binomtest(only_b, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    test = f"McNemar exact: {only_a} right only in {names[0]}, {only_b} only in {names[1]}"
    out.append(
        Difference(
            "accuracy",
            float(right_a.mean()),
            float(right_b.mean()),
            d - half,
            d + half,
            float(p),
            test,
            se,
        )
    )
    for metric, x, y in (("dice_lesion", a.dice, b.dice), ("iou_lesion", a.iou, b.iou)):
        diff = y - x
        mean = float(diff.mean())
        sd = float(diff.std(ddof=1)) if n > 1 else 0.0
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n) if n > 1 else math.nan
        p = float(stats.ttest_rel(y, x).pvalue) if sd > 0 else (1.0 if mean == 0 else 0.0)
        out.append(
            Difference(
                metric,
                float(x.mean()),
                float(y.mean()),
                mean - half,
                mean + half,
                p,
                "paired t over images",
                sd / math.sqrt(n) if n > 1 else math.nan,
            )
        )
    return out


@dataclass(frozen=True)
class PooledDifference:
    """One metric of two methods over several pairs of runs (seeds or folds), each pair
    evaluated on its own test images.

    ``a``, ``b`` and ``diff`` are means over the pairs (``diff`` of the per-pair ``b - a``);
    ``sd`` is the sample standard deviation of the per-pair differences (their spread over
    seeds). ``low``, ``high``, ``p``: the 95 % interval and two-sided p-value of ``diff`` from
    the test images (a bootstrap over the distinct test images, :func:`pool`), what the test
    images leave open for these trained models. ``pairs_low``, ``pairs_high``: the t interval
    of the mean over the pairs (it holds the training's variation as well, with ``pairs - 1``
    degrees of freedom). ``heterogeneity_p``: Cochran's Q test of whether the pairs'
    differences lie further apart than their test images explain (small: the training's
    variation shows, and the test-image interval is too narrow for a new seed's gain)."""

    metric: str
    pairs: int
    a: float
    b: float
    diff: float
    sd: float
    low: float
    high: float
    p: float
    pairs_low: float
    pairs_high: float
    heterogeneity_p: float


def _placements(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """(m, n) matrix: 1 where positive i scores above negative j, 1/2 on a tie, else 0."""
    pos, neg = scores[positive], scores[~positive]
    return (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])


def weighted_auc_difference(
    scores_a: np.ndarray, scores_b: np.ndarray, positive: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """AUC(b) - AUC(a) with each image counted ``weights`` times (a bootstrap resample's
    multiplicities), for R weightings at once. Shapes: scores (N,), positive (N,) bool,
    weights (R, N) -> (R,); NaN where a weighting leaves a class empty."""
    positive = np.asarray(positive, dtype=bool)
    placed = _placements(scores_b, positive) - _placements(scores_a, positive)
    w_pos, w_neg = weights[:, positive], weights[:, ~positive]
    total = w_pos.sum(1) * w_neg.sum(1)
    num = np.einsum("rm,mn,rn->r", w_pos, placed, w_neg)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, num / np.where(total > 0, total, 1), np.nan)


def pool(
    pairs: Sequence[tuple[PerImage, PerImage]],
    names: Sequence[str] = ("A", "B"),
    resamples: int = 2000,
    seed: int = 0,
) -> tuple[list[list[Difference]], list[PooledDifference]]:
    """Two methods compared over several pairs of runs (``(a, b)`` per seed or fold, each pair
    on its own test images): each pair by :func:`compare`, and the mean over the pairs of each
    metric's difference ``b - a`` with the intervals of :class:`PooledDifference`.

    The test-image interval comes from a bootstrap over the distinct test images of all pairs
    together (per class, so each resample keeps the class counts): a resample draws images with
    replacement, every pair's difference is recomputed with each of its images counted as often
    as it was drawn, and the pairs' mean is taken; the standard deviation over ``resamples``
    resamples is the standard error of the mean difference (normal 95 % interval and p-value).
    Because an image is drawn once for all the pairs that tested it, test sets that overlap (the
    random splits of one dataset per seed) are not counted as independent evidence. The trained
    models are held fixed: the interval says what the test images leave open, and Cochran's Q
    (:class:`PooledDifference`) says whether the pairs differ by more than that.

    Returns ``(per_pair, pooled)``: :func:`compare`'s differences for each pair, and one
    :class:`PooledDifference` per metric that every pair has (AUC only with two classes).

    Raises:
        ValueError: no pairs, a pair of files of different images, classes that differ between
            pairs, or an image with different labels in two pairs (the message names it).
    """
    if not pairs:
        raise ValueError("no pairs to pool")
    classes = pairs[0][0].classes
    label_of: dict[str, int] = {}
    per_pair: list[list[Difference]] = []
    aligned: list[tuple[PerImage, PerImage]] = []
    for k, (a, b) in enumerate(pairs):
        pair_names = (f"{names[0]} (pair {k + 1})", f"{names[1]} (pair {k + 1})")
        if a.classes != classes:
            raise ValueError(
                f"{pair_names[0]} has classes {a.classes}, pair 1 has {classes}: pairs of "
                "different tasks cannot be pooled"
            )
        per_pair.append(compare(a, b, pair_names))
        aligned.append((a, align(a, b, pair_names)))
        for sid, label in zip(a.ids, a.labels.tolist(), strict=True):
            if label_of.setdefault(sid, label) != label:
                raise ValueError(
                    f"image {sid} is {classes[label_of[sid]]} in an earlier pair and "
                    f"{classes[label]} in pair {k + 1}: the pairs disagree about its label"
                )
    metrics = [d.metric for d in per_pair[0]]
    metrics = [m for m in metrics if all(any(d.metric == m for d in p) for p in per_pair)]
    found = [{d.metric: d for d in p} for p in per_pair]

    ids = list(label_of)
    position = {sid: i for i, sid in enumerate(ids)}
    labels = np.asarray([label_of[i] for i in ids])
    rng = np.random.default_rng(seed)
    weights = np.zeros((resamples, len(ids)))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        weights[:, members] = rng.multinomial(
            len(members), np.full(len(members), 1 / len(members)), size=resamples
        )

    boot: dict[str, list[np.ndarray]] = {m: [] for m in metrics}
    for a, b in aligned:
        w = weights[:, [position[i] for i in a.ids]]
        count = w.sum(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            right = (b.predicted == b.labels).astype(float) - (a.predicted == a.labels)
            per_metric = {
                "accuracy": w @ right / count,
                "dice_lesion": w @ (b.dice - a.dice) / count,
                "iou_lesion": w @ (b.iou - a.iou) / count,
            }
        if "auc" in metrics:
            per_metric["auc"] = weighted_auc_difference(
                a.probs[:, 1], b.probs[:, 1], a.labels == 1, w
            )
        for m in metrics:
            boot[m].append(per_metric[m])

    k = len(pairs)
    out = []
    for m in metrics:
        diffs = np.asarray([f[m].diff for f in found])
        mean = float(diffs.mean())
        se = float(np.nanstd(np.mean(boot[m], axis=0), ddof=1))
        z = mean / se if se > 0 else (0.0 if mean == 0 else math.inf)
        sd = float(diffs.std(ddof=1)) if k > 1 else math.nan
        half = float(stats.t.ppf(0.975, k - 1)) * sd / math.sqrt(k) if k > 1 else math.nan
        ses = np.asarray([f[m].se for f in found])
        if k > 1 and np.all(ses > 0):
            w_k = 1 / ses**2
            q = float((w_k * (diffs - (w_k * diffs).sum() / w_k.sum()) ** 2).sum())
            heterogeneity = float(stats.chi2.sf(q, k - 1))
        else:
            heterogeneity = math.nan
        out.append(
            PooledDifference(
                m,
                k,
                float(np.mean([f[m].a for f in found])),
                float(np.mean([f[m].b for f in found])),
                mean,
                sd,
                mean - Z95 * se,
                mean + Z95 * se,
                float(2 * stats.norm.sf(abs(z))),
                mean - half,
                mean + half,
                heterogeneity,
            )
        )
    return per_pair, out


def difference_record(d: Difference | PooledDifference) -> dict[str, Any]:
    """``d`` as a JSON-ready dict with its ``diff``, non-finite numbers as None."""
    record = {**asdict(d), "diff": d.diff}
    return {
        k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in record.items()
    }


def format_pooled(
    pairs: Sequence[tuple[PerImage, PerImage]],
    pooled: Sequence[PooledDifference],
    names: Sequence[str] = ("A", "B"),
) -> str:
    """A plain-text table of :func:`pool`'s pooled differences."""
    distinct = len({i for a, _ in pairs for i in a.ids})
    sizes = sorted({len(a) for a, _ in pairs})
    size = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    lines = [
        f"{len(pairs)} pairs pooled: {distinct} distinct test images, {size} per pair; "
        f"A = {names[0]}, B = {names[1]}; means over the pairs",
        f"{'metric':<12} {'A':>7} {'B':>7} {'B - A':>8} {'sd':>7}  "
        f"{'95% (test images)':<19} {'p':>6}  {'95% (pairs, t)':<19} {'spread p':>8}",
    ]
    for d in pooled:
        lines.append(
            f"{d.metric:<12} {d.a:7.4f} {d.b:7.4f} {d.diff:+8.4f} {d.sd:7.4f}  "
            f"[{d.low:+.4f}, {d.high:+.4f}]  {d.p:6.3f}  "
            f"[{d.pairs_low:+.4f}, {d.pairs_high:+.4f}]  {d.heterogeneity_p:8.3f}"
        )
    classes = pairs[0][0].classes if pairs else []
    if len(classes) == 2 and not any(d.metric == "auc" for d in pooled):
        lines.append("auc: not pooled (a pair has fewer than two images of a class)")
    elif len(classes) > 2:
        lines.append(
            f"auc: not compared (the paired test here takes two classes, not {len(classes)})"
        )
    lines.append(
        "sd: spread of the per-pair differences; 95% (test images): bootstrap over the distinct "
        "test images, models fixed; 95% (pairs, t): over the pairs; spread p: Cochran's Q, "
        "small when the pairs differ by more than their test images explain"
    )
    return "\n".join(lines)


def format_comparison(
    a: PerImage, differences: Sequence[Difference], names: Sequence[str] = ("A", "B")
) -> str:
    """A plain-text table of :func:`compare`'s differences."""
    counts = ", ".join(f"{int((a.labels == i).sum())} {c}" for i, c in enumerate(a.classes))
    lines = [
        f"{len(a)} images ({counts}), matched by id; A = {names[0]}, B = {names[1]}",
        f"{'metric':<12} {'A':>7} {'B':>7} {'B - A':>8}  {'95% interval':<19} {'p':>6}  test",
    ]
    for d in differences:
        lines.append(
            f"{d.metric:<12} {d.a:7.4f} {d.b:7.4f} {d.diff:+8.4f}  "
            f"[{d.low:+.4f}, {d.high:+.4f}]  {d.p:6.3f}  {d.test}"
        )
    if len(a.classes) > 2:
        lines.append(
            f"auc: not compared (the paired test here takes two classes, not {len(a.classes)})"
        )
    elif not any(d.metric == "auc" for d in differences):
        lines.append("auc: not compared (needs at least two images of each class)")
    return "\n".join(lines)
