"""The experiment runner on a tiny phantom: tables, shared splits, skipping finished runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import hermes.train.loop
from hermes.eval.paired import read_per_image
from hermes.experiments import VARIANTS, Matrix, RunSpec, run_config, split_path
from hermes.experiments.__main__ import main
from hermes.experiments.runner import result_path

TINY = [
    "data.phantom_size=24",
    "data.phantom_image_size=64",
    "data.image_size=32",
    "data.batch_size=4",
    "data.unlabeled_batch_size=4",
    "data.cache_images=true",
    "model.preset=small",
    "model.cls_widths=[8,8,16,16]",
    "model.cls_stem_width=8",
    "model.seg_widths=[8,8,16,16]",
    "model.seg_stem_width=8",
    "model.decoder_channels=[16,8,8,8,8]",
    "model.embed_dim=8",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "model.consistency_dim=8",
    "method.max_samples=16",
    "method.max_views=4",
    "method.warmup_steps=1",
    "optim.steps=2",
    "eval.every=0",
    "eval.figure_images=0",
    "checkpoint_every=0",
    "threads=1",
    "device=cpu",
]
VARIANT_NAMES = ["supervised", "hermes"]


def _argv(out: Path, cache: Path, seeds: list[int]) -> list[str]:
    argv = [
        "--dataset",
        "phantom",
        "--config",
        "hermes/configs/experiments/phantom_cpu.yaml",
        "--budgets",
        "8",
        "--seeds",
        *map(str, seeds),
        "--variants",
        *VARIANT_NAMES,
        "--out",
        str(out),
        "--set",
        f"data.cache_dir={cache}",
    ]
    for item in TINY:
        argv += ["--set", item]
    return argv


class Counter:
    """Wraps the trainer's ``train`` and records which runs it trained."""

    def __init__(self) -> None:
        self.trained: list[str] = []
        self._train = hermes.train.loop.train

    def __call__(self, cfg, **kwargs):
        self.trained.append(cfg.out_dir)
        return self._train(cfg, **kwargs)


def _matrix(out: Path, cache: Path, seeds: list[int]) -> Matrix:
    return Matrix(
        out,
        [8],
        seeds,
        [VARIANTS[n] for n in VARIANT_NAMES],
        preset="hermes/configs/experiments/phantom_cpu.yaml",
        overrides=[("data.dataset", "phantom"), f"data.cache_dir={cache}", *TINY],
    )


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One invocation of the CLI on 2 variants x 1 budget x 2 seeds."""
    root = tmp_path_factory.mktemp("experiments")
    out, cache = root / "out", root / "cache"
    counter = Counter()
    mp = pytest.MonkeyPatch()
    mp.setattr(hermes.train.loop, "train", counter)
    mp.chdir(Path(__file__).resolve().parents[2])
    try:
        assert main(_argv(out, cache, [0, 1])) == 0
    finally:
        mp.undo()
    return {"out": out, "cache": cache, "trained": counter.trained}


def _mtimes(paths: list[Path]) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in paths}


def test_trains_every_run_once_and_writes_the_tables(first_run: dict) -> None:
    out = first_run["out"]
    assert len(first_run["trained"]) == 4
    assert len(set(first_run["trained"])) == 4
    md = (out / "results.md").read_text()
    assert "Table 1: lesion Dice (%)" in md and "Table 2: accuracy (%)" in md
    table1 = md.split("## Table 1")[1].split("## Table 2")[0]
    assert "| supervised only | " in table1 and "| Hermes | " in table1
    # two seeds per cell: mean +- std (2)
    assert table1.count("(2)") >= 3  # two rows plus the gain row
    assert (out / "results.png").stat().st_size > 0
    # each seed's test images, Hermes against supervised-only image by image
    per_image = md.split("## Gains per test image")[1].split("## Pseudo")[0]
    rows = [r.split(" | ") for r in per_image.splitlines() if r.startswith("| Hermes | 8 |")]
    assert [r[2] for r in rows] == ["0", "1", "pooled (2)"]  # and the two seeds together
    assert all(", p " in cell for r in rows for cell in r[3:])
    dice = [float(r[4].split(" [")[0]) for r in rows]
    assert dice[2] == pytest.approx((dice[0] + dice[1]) / 2, abs=0.1)  # cells are rounded
    # the pseudo-labels per true class, for images and pixels
    per_class = md.split("## Pseudo-labels per true class")[1].split("## Loss")[0]
    assert "Classes: images 0 = " in per_class
    rows = [r.split(" | ") for r in per_class.splitlines() if r.startswith("| Hermes | 8 |")]
    assert [r[2] for r in rows] == ["images", "pixels"] and all(len(r) == 3 + 8 for r in rows)
    kept = [float(r[3]) for r in rows]  # class 0 kept, in %
    assert all(0 <= k <= 100 for k in kept)
    gains = json.loads((out / "gains_per_image.json").read_text())
    assert [(g["variant"], g["seed"]) for g in gains] == [
        ("hermes", 0),
        ("hermes", 1),
        ("hermes", "pooled"),
    ]
    pooled = {d["metric"]: d for d in gains[2]["differences"]}
    seeds = [{d["metric"]: d for d in g["differences"]} for g in gains[:2]]
    assert gains[2]["seeds"] == [0, 1] and "heterogeneity_p" in pooled["dice_lesion"]
    want = (seeds[0]["dice_lesion"]["diff"] + seeds[1]["dice_lesion"]["diff"]) / 2
    assert pooled["dice_lesion"]["diff"] == pytest.approx(want)
    summary = json.loads((out / "summary.json").read_text())
    cell = summary["dice_lesion"]["hermes"]["8"]
    assert cell["n"] == 2 and len(cell["values"]) == 2
    assert len(cell["gain_vs_supervised"]["values"]) == 2


def test_a_per_image_file_of_other_images_is_left_out_of_the_tables(first_run: dict) -> None:
    from hermes.experiments.tables import paired_image_tests

    out = first_run["out"]
    matrix = _matrix(out, first_run["cache"], [0, 1])
    path = result_path(out, RunSpec(VARIANTS["hermes"], 8, 1)).parent / "test_predictions.csv"
    kept = path.read_text()
    try:
        lines = kept.splitlines()
        path.write_text("\n".join([lines[0], *("other_" + line for line in lines[1:])]) + "\n")
        rows = paired_image_tests(matrix)
    finally:
        path.write_text(kept)
    assert [r.split(" | ")[2] for r in rows] == ["0"]  # seed 1 is left out, seed 0 stays


def test_each_run_keeps_its_test_predictions_per_image(first_run: dict) -> None:
    """``test_predictions.csv`` beside ``result.json``: the images its metrics came from."""
    out = first_run["out"]
    for seed in (0, 1):
        result = json.loads(result_path(out, RunSpec(VARIANTS["hermes"], 8, seed)).read_text())
        rows = read_per_image(
            result_path(out, RunSpec(VARIANTS["hermes"], 8, seed)).parent / "test_predictions.csv"
        )
        assert len(rows) == result["metrics"]["images"]
        assert rows.dice.mean() == pytest.approx(result["metrics"]["dice_lesion"], abs=1e-5)
        accuracy = (rows.predicted == rows.labels).mean()
        assert accuracy == pytest.approx(result["metrics"]["accuracy"])


def test_every_variant_uses_the_same_split_file(first_run: dict) -> None:
    out = first_run["out"]
    splits = sorted((out / "splits").glob("*.json"))
    assert [p.name for p in splits] == ["labeled8_seed0.json", "labeled8_seed1.json"]
    assert splits[0].read_text() != splits[1].read_text()  # the seed changes the split
    for seed in (0, 1):
        results = [
            json.loads(result_path(out, RunSpec(VARIANTS[n], 8, seed)).read_text())
            for n in VARIANT_NAMES
        ]
        expected = str(split_path(out, 8, seed))
        assert {r["split_file"] for r in results} == {expected}
        assert {r["config"]["data"]["split_file"] for r in results} == {expected}
        assert len({r["split_sha256"] for r in results}) == 1
        assert {r["variant"] for r in results} == set(VARIANT_NAMES)
        assert results[0]["config"]["method"]["mode"] == "supervised"
        assert results[1]["config"]["method"]["mode"] == "hermes"


def test_second_invocation_skips_finished_runs(first_run: dict, monkeypatch) -> None:
    out, cache = first_run["out"], first_run["cache"]
    files = sorted(out.glob("runs/**/result.json")) + sorted(out.glob("splits/*.json"))
    assert len(files) == 6
    before = _mtimes(files)
    counter = Counter()
    monkeypatch.setattr(hermes.train.loop, "train", counter)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(_argv(out, cache, [0, 1])) == 0
    assert counter.trained == []
    assert _mtimes(files) == before


def test_only_missing_runs_are_trained(first_run: dict, monkeypatch) -> None:
    """A lost result is retrained, the others are not; the split file is reused as is."""
    out = first_run["out"]
    lost = result_path(out, RunSpec(VARIANTS["hermes"], 8, 1))
    lost.unlink()
    kept = sorted(p for p in out.glob("runs/**/result.json"))
    before = _mtimes([*kept, split_path(out, 8, 1)])
    counter = Counter()
    monkeypatch.setattr(hermes.train.loop, "train", counter)
    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert main(_argv(out, first_run["cache"], [0, 1])) == 0
    assert counter.trained == [str(lost.parent)]
    assert json.loads(lost.read_text())["variant"] == "hermes"
    assert _mtimes([*kept, split_path(out, 8, 1)]) == before


def test_a_changed_configuration_is_retrained(first_run: dict, monkeypatch) -> None:
    """A result made with another configuration does not count as done."""
    matrix = _matrix(first_run["out"], first_run["cache"], [0])
    spec = RunSpec(VARIANTS["supervised"], 8, 0)
    from hermes.experiments.runner import is_done

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert is_done(matrix, spec)
    matrix.overrides.append("optim.steps=3")
    assert not is_done(matrix, spec)
    assert run_config(matrix, spec).optim.steps == 3
