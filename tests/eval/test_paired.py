"""Per-image files and the paired comparison of two models (DeLong, McNemar, paired t)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from hermes.compare import main as compare_main
from hermes.eval import MetricAccumulator, auc_binary
from hermes.eval.paired import (
    PerImage,
    align,
    compare,
    delong_paired,
    format_comparison,
    format_pooled,
    pool,
    read_per_image,
    weighted_auc_difference,
    write_per_image,
)

CLASSES = ["benign", "malignant"]


def _rows(ids, labels, p_malignant, dice, iou=None) -> PerImage:
    p1 = np.asarray(p_malignant, dtype=np.float64)
    probs = np.stack([1 - p1, p1], 1)
    dice = np.asarray(dice, dtype=np.float64)
    return PerImage(
        list(ids),
        CLASSES,
        np.asarray(labels, dtype=np.int64),
        probs.argmax(1),
        probs,
        dice,
        np.asarray(iou if iou is not None else dice / (2 - dice), dtype=np.float64),
    )


def test_delong_by_hand() -> None:
    # positives first. A: positives 0.8, 0.4 against negatives 0.3, 0.6 -> placements
    # V10 = [1, 0.5], V01 = [1, 0.5], AUC 0.75. B: positives 0.7, 0.5 against 0.2, 0.9 ->
    # V10 = [0.5, 0.5], V01 = [1, 0], AUC 0.5. Sample covariances: S10 = [[0.125, 0], [0, 0]],
    # S01 = [[0.125, 0.25], [0.25, 0.5]]; var(B - A) = 0.125 / 2 + (0.125 + 0.5 - 0.5) / 2.
    positive = np.array([True, True, False, False])
    auc_a, auc_b, se = delong_paired(
        np.array([0.8, 0.4, 0.3, 0.6]), np.array([0.7, 0.5, 0.2, 0.9]), positive
    )
    assert (auc_a, auc_b) == (0.75, 0.5)
    assert se == pytest.approx(math.sqrt(0.125))


def test_delong_aucs_match_the_rank_auc_with_ties() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60).astype(bool)
    a = np.round(rng.random(60), 1)  # many ties
    b = np.round(a + rng.normal(0, 0.3, 60), 1)
    auc_a, auc_b, _ = delong_paired(a, b, labels)
    positive = torch.from_numpy(labels)
    assert auc_a == pytest.approx(auc_binary(torch.from_numpy(a), positive))
    assert auc_b == pytest.approx(auc_binary(torch.from_numpy(b), positive))


def test_delong_is_calibrated_when_the_two_models_are_alike() -> None:
    """Two noisy copies of one score: the z statistic has unit spread and the 95 % interval
    holds zero about 95 % of the time (400 draws of 80 images)."""
    rng = np.random.default_rng(1)
    z, covered = [], 0
    for _ in range(400):
        labels = np.repeat([True, False], 40)
        signal = labels + rng.normal(0, 1, 80)
        a, b = signal + rng.normal(0, 0.7, 80), signal + rng.normal(0, 0.7, 80)
        auc_a, auc_b, se = delong_paired(a, b, labels)
        z.append((auc_b - auc_a) / se)
        covered += abs(auc_b - auc_a) <= 1.96 * se
    assert 0.87 < np.std(z) < 1.13
    assert 0.91 <= covered / 400 <= 0.98


def test_delong_needs_two_images_per_class() -> None:
    with pytest.raises(ValueError, match="1 positive"):
        delong_paired(np.zeros(4), np.zeros(4), np.array([True, False, False, False]))


def test_compare_by_hand() -> None:
    labels = [1, 1, 1, 0, 0, 0, 0, 0]
    a = _rows("abcdefgh", labels, [0.9, 0.6, 0.4, 0.3, 0.2, 0.7, 0.1, 0.45], [0.5] * 8)
    # A is wrong on c and f. B (the same images in another order) is right on both and wrong
    # on g, so 1 image is right only in A and 2 only in B.
    b_by_id = {"a": 0.8, "b": 0.7, "c": 0.6, "d": 0.2, "e": 0.1, "f": 0.3, "g": 0.55, "h": 0.4}
    dice_b = {k: 0.5 + 0.05 * i for i, k in enumerate("abcdefgh")}
    order = "hgfedcba"
    b = _rows(
        order,
        [labels["abcdefgh".index(k)] for k in order],
        [b_by_id[k] for k in order],
        [dice_b[k] for k in order],
    )
    diffs = {d.metric: d for d in compare(a, b, ("A", "B"))}
    acc = diffs["accuracy"]
    assert (acc.a, acc.b) == (6 / 8, 7 / 8)
    # discordant: c and f right only in B, g right only in A -> exact binomial p of 1 in 3
    assert acc.p == pytest.approx(1.0) and "1 right only in A, 2 only in B" in acc.test
    half = 1.959963984540054 * math.sqrt(3 - 8 * (1 / 8) ** 2) / 8
    assert (acc.low, acc.high) == pytest.approx((1 / 8 - half, 1 / 8 + half))
    dice = diffs["dice_lesion"]
    diff = np.array([dice_b[k] for k in "abcdefgh"]) - 0.5
    assert dice.diff == pytest.approx(diff.mean())
    assert dice.p == pytest.approx(stats.ttest_1samp(diff, 0).pvalue)
    # A's positives 0.9, 0.6, 0.4 beat 5, 4 and 3 of its 5 negatives; B separates them all
    auc = diffs["auc"]
    assert auc.a == pytest.approx(12 / 15) and auc.b == pytest.approx(1.0)
    assert auc.low < auc.diff < auc.high


def test_compare_identical_models() -> None:
    a = _rows("abcdef", [1, 1, 0, 0, 1, 0], [0.9, 0.4, 0.2, 0.6, 0.7, 0.1], [0.7] * 6)
    for d in compare(a, a):
        assert d.diff == 0 and d.p == 1.0, d


def test_mcnemar_p_value() -> None:
    ids, labels = [str(i) for i in range(12)], [1] * 6 + [0] * 6
    right = np.array([0.9] * 6 + [0.1] * 6)
    # A is wrong on image 11 only; B on images 0-4 only: 5 images right only in A, 1 only in B
    p_a, p_b = right.copy(), right.copy()
    p_a[11], p_b[:5] = 0.9, 0.1
    a, b = _rows(ids, labels, p_a, [0.5] * 12), _rows(ids, labels, p_b, [0.5] * 12)
    acc = next(d for d in compare(a, b) if d.metric == "accuracy")
    assert acc.p == pytest.approx(2 * (1 + 6) / 64)  # exact two-sided, 1 of 6 discordant


def test_per_image_file_round_trip_and_errors(tmp_path: Path) -> None:
    rows = _rows(["x 1", "y,2", "z"], [0, 1, 1], [0.2, 0.7, 0.4], [1.0, 0.25, 0.0])
    path = write_per_image(tmp_path / "p.csv", rows)
    back = read_per_image(path)
    assert back.ids == rows.ids and back.classes == CLASSES
    np.testing.assert_array_equal(back.labels, rows.labels)
    np.testing.assert_array_equal(back.predicted, rows.predicted)
    np.testing.assert_allclose(back.probs, rows.probs, rtol=1e-6)
    np.testing.assert_allclose(back.dice, rows.dice)

    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_per_image(tmp_path / "nothing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label,p_benign,p_malignant\na,benign,0.5,0.5\n")
    with pytest.raises(ValueError, match=r"bad.csv.*missing column predicted, dice_lesion"):
        read_per_image(bad)
    text = path.read_text()
    bad.write_text(text.replace("malignant,malignant", "malignant,normal", 1))
    with pytest.raises(ValueError, match=r"bad.csv, line 3: unknown class 'normal'"):
        read_per_image(bad)
    bad.write_text(text.replace("\nz,", "\nx 1,"))
    with pytest.raises(ValueError, match="repeated image ids: x 1"):
        read_per_image(bad)


def test_align_names_the_images_that_differ() -> None:
    a = _rows("abc", [0, 1, 1], [0.2, 0.7, 0.4], [0.5] * 3)
    b = _rows("abd", [0, 1, 1], [0.2, 0.7, 0.4], [0.5] * 3)
    with pytest.raises(ValueError, match=r"1 only in sup \(c\), 1 only in hermes \(d\)"):
        align(a, b, ("sup", "hermes"))
    c = _rows("abc", [0, 1, 0], [0.2, 0.7, 0.4], [0.5] * 3)
    with pytest.raises(ValueError, match="different labels to c"):
        align(a, c)


def test_metric_accumulator_per_image_matches_its_metrics() -> None:
    torch.manual_seed(0)
    acc = MetricAccumulator()
    for start in (0, 3):
        seg = torch.randn(3, 2, 8, 8)
        masks = (torch.rand(3, 8, 8) > 0.6).long()
        acc.update(
            seg,
            masks,
            torch.randn(3, 2),
            torch.tensor([0, 1, 1]),
            [f"i{start + k}" for k in range(3)],
        )
    rows = acc.per_image(CLASSES)
    metrics = acc.compute()
    assert rows.ids == [f"i{k}" for k in range(6)]
    assert rows.dice.mean() == pytest.approx(metrics["dice_lesion"])
    assert rows.iou.mean() == pytest.approx(metrics["iou_lesion"])
    assert (rows.predicted == rows.labels).mean() == pytest.approx(metrics["accuracy"])
    positive = torch.from_numpy(rows.labels == 1)
    assert auc_binary(torch.from_numpy(rows.probs[:, 1]), positive) == pytest.approx(metrics["auc"])


def test_compare_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a = _rows("abcdef", [1, 1, 0, 0, 1, 0], [0.9, 0.4, 0.2, 0.6, 0.7, 0.1], [0.7] * 6)
    b = _rows("abcdef", [1, 1, 0, 0, 1, 0], [0.8, 0.6, 0.3, 0.4, 0.7, 0.2], [0.8] * 6)
    pa, pb = write_per_image(tmp_path / "a.csv", a), write_per_image(tmp_path / "b.csv", b)
    out = tmp_path / "diff.json"
    assert compare_main([str(pa), str(pb), "--names", "sup", "hermes", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "6 images (3 benign, 3 malignant)" in text and "A = sup, B = hermes" in text
    record = json.loads(out.read_text())
    by_metric = {d["metric"]: d for d in record["differences"]}
    assert by_metric["dice_lesion"]["diff"] == pytest.approx(0.1)
    assert by_metric["accuracy"]["diff"] == pytest.approx(2 / 6)
    assert compare_main([str(pa), str(tmp_path / "missing.csv")]) == 2
    assert "missing.csv" in capsys.readouterr().err


def test_three_classes_compare_without_auc() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
    labels = np.array([0, 1, 2, 1])
    a = PerImage(
        list("abcd"), ["n", "b", "m"], labels, probs.argmax(1), probs, np.ones(4), np.ones(4)
    )
    differences = compare(a, a)
    assert [d.metric for d in differences] == ["accuracy", "dice_lesion", "iou_lesion"]
    assert "two classes, not 3" in format_comparison(a, differences)


def _alike_pair(ids, rng, image_effect=None, gain=0.0, labels=None):
    """Two models' rows on ``ids`` (``labels``: alternating unless given): scores and Dice
    that differ by model noise (plus an image's own ``image_effect`` on the Dice difference,
    and a ``gain`` for B)."""
    n = len(ids)
    labels = np.arange(n) % 2 if labels is None else labels
    signal = labels + rng.normal(0, 1, n)
    p_a = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.7, n))))
    p_b = 1 / (1 + np.exp(-(signal + rng.normal(0, 0.7, n))))
    dice_a = np.clip(0.6 + rng.normal(0, 0.1, n), 0, 1)
    shift = gain + (image_effect if image_effect is not None else 0) + rng.normal(0, 0.05, n)
    return _rows(ids, labels, p_a, dice_a), _rows(ids, labels, p_b, dice_a + shift)


def test_weighted_auc_difference_counts_each_image_as_often_as_weighted() -> None:
    rng = np.random.default_rng(2)
    positive = np.arange(30) % 3 == 0
    a, b = np.round(rng.random(30), 1), np.round(rng.random(30), 1)  # ties included
    auc_a, auc_b, _ = delong_paired(a, b, positive)
    ones = np.ones((1, 30))
    assert weighted_auc_difference(a, b, positive, ones)[0] == pytest.approx(auc_b - auc_a)
    counts = rng.integers(0, 4, 30)
    counts[:2] = [1, 2]  # keep both classes
    expanded = np.repeat(np.arange(30), counts)
    auc_a, auc_b, _ = delong_paired(a[expanded], b[expanded], positive[expanded])
    got = weighted_auc_difference(a, b, positive, counts[None, :].astype(float))[0]
    assert got == pytest.approx(auc_b - auc_a)
    no_positive = np.where(positive, 0.0, 1.0)[None, :]
    assert np.isnan(weighted_auc_difference(a, b, positive, no_positive)[0])


def test_pool_is_the_mean_of_the_pairs_and_counts_a_shared_image_once() -> None:
    rng = np.random.default_rng(3)
    first = _alike_pair([f"i{k}" for k in range(60)], rng)
    second = _alike_pair([f"j{k}" for k in range(60)], rng)
    per_pair, pooled = pool([first, second], resamples=500)
    found = {d.metric: d for d in pooled}
    for m in ("auc", "accuracy", "dice_lesion", "iou_lesion"):
        diffs = [next(d for d in p if d.metric == m).diff for p in per_pair]
        assert found[m].diff == pytest.approx(np.mean(diffs))
        assert found[m].sd == pytest.approx(np.std(diffs, ddof=1))
        assert found[m].pairs == 2
    # the same pair twice is no more evidence than once: the interval stays as wide
    _, once = pool([first], resamples=500)
    _, twice = pool([first, first], resamples=500)
    for x, y in zip(once, twice, strict=True):
        assert (x.low, x.high) == pytest.approx((y.low, y.high))
        assert y.heterogeneity_p == pytest.approx(1.0)
    # two pairs on distinct images: about 1/sqrt(2) of one pair's width
    ratio = (found["dice_lesion"].high - found["dice_lesion"].low) / (once[2].high - once[2].low)
    assert 0.55 < ratio < 0.85, ratio


def test_pool_interval_holds_zero_95_percent_of_the_time_with_overlapping_test_sets() -> None:
    """Four pairs, each tested on 60 of the same 120 images; every image has its own effect on
    the Dice difference (as a hard image has for any pair of models), zero on average over
    the population the images are drawn from. The test-image interval must hold zero about 95 % of the time (200 draws)."""
    rng = np.random.default_rng(4)
    covered = {"auc": 0, "dice_lesion": 0}
    draws = 200
    for _ in range(draws):
        effect = rng.normal(0, 0.1, 120)  # the 120 images: a sample of a population
        pairs = []
        for _ in range(4):
            chosen = np.sort(rng.choice(120, 60, replace=False))
            ids = [f"i{k}" for k in chosen]
            pairs.append(_alike_pair(ids, rng, effect[chosen], labels=chosen % 2))
        _, pooled = pool(pairs, resamples=300, seed=int(rng.integers(1 << 30)))
        for d in pooled:
            if d.metric in covered:
                covered[d.metric] += d.low <= 0 <= d.high
    for metric, count in covered.items():
        assert 0.89 <= count / draws <= 0.99, (metric, count)


def test_pool_heterogeneity_and_a_real_gain() -> None:
    rng = np.random.default_rng(5)
    ids = [[f"{s}-{k}" for k in range(80)] for s in range(4)]
    apart = [_alike_pair(ids[s], rng, gain=g) for s, g in enumerate((0.15, -0.15, 0.15, -0.15))]
    dice = next(d for d in pool(apart, resamples=300)[1] if d.metric == "dice_lesion")
    assert dice.heterogeneity_p < 1e-6 and abs(dice.diff) < 0.02
    assert dice.pairs_low < -0.1 and dice.pairs_high > 0.1  # the t interval holds the spread
    ahead = [_alike_pair(ids[s], rng, gain=0.03) for s in range(4)]
    dice = next(d for d in pool(ahead, resamples=300)[1] if d.metric == "dice_lesion")
    assert dice.low > 0 and dice.p < 1e-3 and dice.heterogeneity_p > 0.01


def test_pool_errors_name_the_image_or_pair() -> None:
    rng = np.random.default_rng(6)
    first = _alike_pair(["a", "b", "c", "d"], rng)
    flipped = _rows("abcd", [1, 1, 0, 1], [0.5] * 4, [0.5] * 4)
    with pytest.raises(ValueError, match="image a is benign in an earlier pair and malignant"):
        pool([first, (flipped, flipped)])
    three = PerImage(
        list("ab"),
        ["n", "b", "m"],
        np.array([0, 1]),
        np.array([0, 1]),
        np.eye(3)[:2],
        np.ones(2),
        np.ones(2),
    )
    with pytest.raises(ValueError, match=r"A \(pair 2\) has classes"):
        pool([first, (three, three)])
    pairs = [(three, three), (three, three)]
    assert "two classes, not 3" in format_pooled(pairs, pool(pairs, resamples=20)[1])
    one_class = _rows("xyz", [0, 0, 1], [0.2, 0.3, 0.9], [0.5] * 3)
    pairs = [first, (one_class, one_class)]
    assert "auc: not pooled" in format_pooled(pairs, pool(pairs, resamples=20)[1])
    with pytest.raises(ValueError, match="no pairs"):
        pool([])
    other = _alike_pair(["a", "b", "c", "e"], rng)
    with pytest.raises(ValueError, match=r"only in A \(pair 1\)"):
        pool([(first[0], other[1])])


def test_compare_cli_pools_pairs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(7)
    args = []
    for s in range(3):
        a, b = _alike_pair([f"{s}{k}" for k in range(20)], rng, gain=0.05)
        args += ["--pair", str(write_per_image(tmp_path / f"a{s}.csv", a))]
        args.append(str(write_per_image(tmp_path / f"b{s}.csv", b)))
    out = tmp_path / "pooled.json"
    assert compare_main([*args, "--names", "sup", "hermes", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pair 3:" in text and "3 pairs pooled: 60 distinct test images, 20 per pair" in text
    record = json.loads(out.read_text())
    assert len(record["pairs"]) == 3 and record["names"] == ["sup", "hermes"]
    dice = next(d for d in record["pooled"] if d["metric"] == "dice_lesion")
    per_pair = [
        next(d["diff"] for d in p["differences"] if d["metric"] == "dice_lesion")
        for p in record["pairs"]
    ]
    assert dice["diff"] == pytest.approx(np.mean(per_pair)) and dice["low"] > 0
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path / "a0.csv"), str(tmp_path / "b0.csv"), *args[:3]])
    with pytest.raises(SystemExit):
        compare_main([*args, "--resamples", "1"])
    pairs = [
        (read_per_image(tmp_path / f"a{s}.csv"), read_per_image(tmp_path / f"b{s}.csv"))
        for s in range(3)
    ]
    assert "spread p" in format_pooled(pairs, pool(pairs, resamples=50)[1])
