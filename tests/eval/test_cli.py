"""The three command lines on a tiny run: train (with the baseline), evaluate, predict."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hermes.compare import main as compare_main
from hermes.evaluate import main as evaluate_main
from hermes.predict import main as predict_main
from hermes.train.__main__ import main as train_main

TINY_MODEL = [
    "model.preset=small",  # random-init ResNet layout at tiny widths (the default is Lite0)
    "model.cls_widths=[8, 8, 16, 16]",
    "model.cls_stem_width=8",
    "model.seg_widths=[8, 8, 16, 16]",
    "model.seg_stem_width=8",
    "model.decoder_channels=[16, 8, 8, 8, 8]",
    "model.embed_dim=16",
    "model.proj_hidden=16",
    "model.proj_dim=8",
    "model.consistency_dim=8",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Hermes and the supervised baseline, 2 steps each, through ``python -m hermes.train``."""
    root = tmp_path_factory.mktemp("cli")
    sets = [
        f"data.cache_dir={root / 'cache'}",
        "data.phantom_size=24",
        "data.phantom_image_size=64",
        "data.image_size=32",
        "data.labeled=8",
        "data.batch_size=4",
        "data.unlabeled_batch_size=4",
        "optim.steps=2",
        "eval.every=0",
        "eval.max_batches=1",
        "eval.figure_images=2",
        "checkpoint_every=0",
        "progress=false",
        *TINY_MODEL,
    ]
    argv = ["--out", str(root / "runs"), "--backend", "torch"]
    for s in sets:
        argv += ["--set", s]
    assert train_main(argv) == 0
    return root / "runs"


def test_train_cli_compares_hermes_and_baseline(
    trained: Path, capsys: pytest.CaptureFixture
) -> None:
    summary = (trained / "report" / "summary.md").read_text()
    assert "| hermes | supervised |" in summary.replace("metric | ", "")
    # What the runs were made of, and a warning that random weights learn poorly.
    assert "Setup: segmentation encoder resnet18 (random initialisation)" in summary
    assert "How to read this" in summary and "trained from random initialisation" in summary
    # the two runs' test images compared one by one (4 images: eval.max_batches=1)
    paired = summary.split("Image by image, hermes - supervised")[1].split("```")[1]
    assert "4 images (" in paired and "McNemar exact" in paired and "dice_lesion" in paired
    runs = json.loads((trained / "report" / "metrics.json").read_text())
    assert [r["mode"] for r in runs] == ["hermes", "supervised"]
    # the pseudo-labels against the unlabeled stream's hidden truth, per true class too
    pseudo = runs[0]["pseudo_labels_last_20pct"]
    for task in ("cls", "seg"):
        for c in (0, 1):
            kept = pseudo[f"pseudo_{task}/kept_unlabeled_{c}"]
            assert kept is None or 0 <= kept <= 1
            assert f"pseudo_{task}/precision_kept_unlabeled_{c}" in pseudo
    assert (trained / "hermes" / "report" / "pseudo_labels.png").is_file()
    assert (trained / "report" / "test_metrics.png").is_file()
    for name in ("hermes", "supervised"):
        assert (trained / name / "report" / "summary.md").is_file()


def test_train_cli_rejects_bad_values(capsys: pytest.CaptureFixture) -> None:
    assert train_main(["--set", "optim.steps=0"]) == 2
    assert "optim.steps" in capsys.readouterr().err
    assert train_main(["--data", "/nowhere"]) == 2


def test_evaluate_cli(trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "metrics.json"
    assert evaluate_main([str(trained / "hermes" / "last.pt"), "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    assert metrics["images"] > 0 and 0.0 <= metrics["dice_lesion"] <= 1.0
    assert "dice_lesion=" in capsys.readouterr().out
    assert evaluate_main([str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err


def test_per_image_results_and_compare(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """``--per-image`` and the run's report/test_predictions.csv hold the images the metrics
    came from; ``python -m hermes.compare`` pairs two runs on them."""
    ckpt = trained / "hermes" / "last.pt"
    per_image, out = tmp_path / "hermes.csv", tmp_path / "metrics.json"
    assert evaluate_main([str(ckpt), "--out", str(out), "--per-image", str(per_image)]) == 0
    metrics = json.loads(out.read_text())
    rows = list(csv.DictReader(open(per_image)))
    assert len(rows) == metrics["images"] and rows[0]["id"]
    assert {r["label"] for r in rows} <= {"benign", "malignant"}
    dice = [float(r["dice_lesion"]) for r in rows]
    assert sum(dice) / len(dice) == pytest.approx(metrics["dice_lesion"], abs=1e-5)
    right = [r["predicted"] == r["label"] for r in rows]
    assert sum(right) / len(right) == pytest.approx(metrics["accuracy"])
    # the run's own final evaluation (eval.max_batches=1: the first batch), with its report
    report = trained / "hermes" / "report" / "test_predictions.csv"
    report_rows = list(csv.DictReader(open(report)))
    assert len(report_rows) == 4 and report_rows == rows[:4]
    capsys.readouterr()
    supervised = trained / "supervised" / "report" / "test_predictions.csv"
    diff = tmp_path / "diff.json"
    argv = [str(supervised), str(report), "--names", "supervised", "hermes", "--out", str(diff)]
    assert compare_main(argv) == 0
    assert "A = supervised, B = hermes" in capsys.readouterr().out
    metrics_b = {d["metric"]: d for d in json.loads(diff.read_text())["differences"]}
    hermes_dice = [float(r["dice_lesion"]) for r in report_rows]
    assert metrics_b["dice_lesion"]["b"] == pytest.approx(sum(hermes_dice) / 4)


def test_predict_cli(trained: Path, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    sizes = {"a": (50, 70), "b": (64, 64)}
    for stem, (h, w) in sizes.items():
        Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(images / f"{stem}.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(images / "b_mask.png")  # skipped
    out = tmp_path / "pred"
    assert (
        predict_main([str(trained / "supervised" / "best.pt"), str(images), "--out", str(out)]) == 0
    )
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"] for r in rows] == ["a.png", "b.png"]
    for r in rows:
        p = float(r["p_benign"]) + float(r["p_malignant"])
        assert p == pytest.approx(1.0, abs=1e-5) and r["predicted"] in ("benign", "malignant")
    for stem, (h, w) in sizes.items():
        mask = np.array(Image.open(out / f"{stem}_pred.png"))
        assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}


def test_predict_cli_skips_unreadable_images_and_keeps_every_mask(
    trained: Path, tmp_path: Path
) -> None:
    """``a.png`` and ``a.jpg`` get two masks; a truncated PNG and a junk file are skipped,
    listed in failed.csv and named on stderr, and the exit status says so."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.png", "a.jpg", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 255, (40, 48), dtype=np.uint8)).save(images / name)
    (images / "c.png").write_bytes((images / "c.png").read_bytes()[:-60])  # truncated
    (images / "d.png").write_bytes(b"not an image")
    out = tmp_path / "pred"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hermes.predict",
            str(trained / "supervised" / "best.pt"),
            str(images),
            "--out",
            str(out),
        ],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "c.png" in result.stderr and "d.png" in result.stderr
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [(r["file"], r["mask"]) for r in rows] == [
        ("a.jpg", "a_jpg_pred.png"),
        ("a.png", "a_png_pred.png"),
        ("b.png", "b_pred.png"),
    ]
    for r in rows:
        assert np.array(Image.open(out / r["mask"])).shape == (40, 48)
    assert sorted(p.name for p in out.glob("*_pred.png")) == sorted(r["mask"] for r in rows)
    failed = list(csv.DictReader(open(out / "failed.csv")))
    assert [f["file"] for f in failed] == ["c.png", "d.png"]
    assert "truncated" in failed[0]["error"] and "d.png" in failed[1]["error"]


def test_predict_csv_is_written_row_by_row(trained: Path, tmp_path: Path, monkeypatch) -> None:
    """Interrupted after the first image: its mask and its CSV row are both on disk."""
    from hermes.eval import predict
    from hermes.train.checkpoint import load_model

    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(np.full((32, 32), 80, np.uint8)).save(images / name)
    calls = []

    def interrupted(model, x, tta="none"):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, x, tta)

    real = predict.predict_batch
    monkeypatch.setattr(predict, "predict_batch", interrupted)
    model, cfg = load_model(trained / "supervised" / "best.pt")
    out = tmp_path / "pred"
    with pytest.raises(KeyboardInterrupt):
        predict.predict_folder(model, images, out, cfg.data.image_size, cfg.data.classes)
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["file"] for r in rows] == ["a.png"] and (out / rows[0]["mask"]).is_file()


def test_mask_names_are_distinct() -> None:
    from hermes.eval.predict import mask_names

    paths = [Path(n) for n in ("a.png", "a.jpg", "a_png.bmp", "b.tif", "B.TIF")]
    names = mask_names(paths)
    assert len({n.lower() for n in names.values()}) == len(paths)
    assert names[Path("a_png.bmp")] != names[Path("a.png")]


def test_train_cli_resume_of_a_finished_run(trained: Path, capsys: pytest.CaptureFixture) -> None:
    # the checkpoint's own configuration is used; a finished run is only re-evaluated
    assert train_main(["--resume", str(trained / "hermes" / "last.pt")]) == 0
    assert "dice_lesion" in capsys.readouterr().out


def _evaluate(args: list[str]) -> subprocess.CompletedProcess[str]:
    """``python -m hermes.evaluate`` in a subprocess, from the repository root."""
    repo = Path(__file__).resolve().parents[2]
    return subprocess.run(
        [sys.executable, "-m", "hermes.evaluate", *args],
        cwd=repo,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
        timeout=600,
    )


def _reject_nan(name: str) -> None:
    raise ValueError(f"not JSON: {name}")


def test_evaluate_writes_null_for_an_undefined_metric(trained: Path, tmp_path: Path) -> None:
    from hermes.data import load_records
    from hermes.train.checkpoint import load_model

    _, cfg = load_model(trained / "hermes" / "last.pt")
    benign = sorted(r.id for r in load_records(cfg.data)[0] if r.label == "benign")
    split = tmp_path / "benign.json"  # a test part of one class: AUC and sensitivity undefined
    split.write_text(json.dumps({"labeled": [], "unlabeled": [], "test": benign}))
    out = tmp_path / "metrics.json"
    proc = _evaluate(
        [str(trained / "hermes" / "last.pt"), "--split-file", str(split), "--out", str(out)]
    )
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(out.read_text(), parse_constant=_reject_nan)
    assert metrics["auc"] is None and metrics["sensitivity"] is None
    assert metrics["images"] == len(benign) and metrics["specificity"] is not None
    for name in ("auc", "sensitivity"):
        assert f"{name} is undefined: no malignant image among the {len(benign)} evaluated" in (
            proc.stderr
        )


def test_evaluate_on_another_dataset_ignores_the_label_budget(
    trained: Path, tmp_path: Path
) -> None:
    from hermes.data.phantom import PhantomConfig, ensure_phantom

    # 6 images: the run's budget of 8 labeled images does not fit their train part
    other = ensure_phantom(PhantomConfig(size=6, image_size=48, seed=7), tmp_path / "cache")
    ckpt = str(trained / "hermes" / "last.pt")
    test = _evaluate(
        [ckpt, "--data", str(other), "--dataset", "folder", "--out", str(tmp_path / "test.json")]
    )
    assert test.returncode == 0, test.stderr
    assert "labeled budget" not in test.stderr
    assert json.loads((tmp_path / "test.json").read_text())["images"] == 2  # 30% of 3 per class
    every = _evaluate(
        [
            ckpt,
            "--data",
            str(other),
            "--dataset",
            "folder",
            "--split",
            "all",
            "--out",
            str(tmp_path / "all.json"),
        ]
    )
    assert every.returncode == 0, every.stderr
    assert json.loads((tmp_path / "all.json").read_text())["images"] == 6


def test_evaluate_cli_with_tta(trained: Path, tmp_path: Path) -> None:
    plain, flipped = tmp_path / "plain.json", tmp_path / "flipped.json"
    ckpt = str(trained / "hermes" / "last.pt")
    assert evaluate_main([ckpt, "--out", str(plain)]) == 0
    assert evaluate_main([ckpt, "--tta", "hflip", "--out", str(flipped)]) == 0
    a, b = json.loads(plain.read_text()), json.loads(flipped.read_text())
    assert a["images"] == b["images"] > 0 and 0.0 <= b["dice_lesion"] <= 1.0
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70), dtype=np.uint8)).save(images / "a.png")
    out = tmp_path / "pred"
    assert predict_main([ckpt, str(images), "--tta", "hflip", "--out", str(out)]) == 0
    assert np.array(Image.open(out / "a_pred.png")).shape == (50, 70)
