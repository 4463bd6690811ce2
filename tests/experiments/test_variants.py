"""Variants turn the base configuration into the ablations; tables aggregate paired seeds."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from hermes.experiments import (
    VARIANTS,
    Matrix,
    RunSpec,
    get_variants,
    markdown,
    run_config,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]
PRESET = str(ROOT / "hermes/configs/experiments/phantom_cpu.yaml")


def _matrix(tmp_path: Path, budgets=(40,), seeds=(0, 1, 2)) -> Matrix:
    return Matrix(tmp_path, list(budgets), list(seeds), list(VARIANTS.values()), preset=PRESET)


def test_each_variant_changes_only_its_fields(tmp_path: Path) -> None:
    m = _matrix(tmp_path)
    cfgs = {name: run_config(m, RunSpec(v, 40, 1)) for name, v in VARIANTS.items()}
    base = cfgs["hermes"]
    assert base.method.mode == "hermes" and base.method.pseudo_labels == "dual"
    assert cfgs["supervised"].method.mode == "supervised"
    assert cfgs["fixed_threshold"].method.pseudo_labels == "fixed"
    assert cfgs["fixed_threshold"].method.fixed_threshold == 0.95
    assert not cfgs["no_ias"].model.attention and not cfgs["no_ias"].model.saliency
    assert base.model.attention and base.model.saliency
    assert cfgs["no_itc"].method.weights.itc == 0.0 and base.method.weights.itc > 0
    w = cfgs["no_contrast"].method.weights
    assert w.contrast_img == 0.0 and w.contrast_pix == 0.0
    assert cfgs["bn_every_pass"].method.freeze_bn_unlabeled is False
    assert cfgs["pixel_authors"].method.pixel_reliability == "authors"
    assert base.method.pixel_reliability == "and"
    assert cfgs["warmup_unlabeled"].warmup_epochs == 10.0
    assert cfgs["warmup_unlabeled"].warmup_epochs_of == "unlabeled"
    assert cfgs["views_apart"].method.concat_views is False and base.method.concat_views
    assert cfgs["strict_lesion"].method.seg_tau_min == 0.8 and base.method.seg_tau_min is None
    assert cfgs["itc_cls"].method.itc_trains == "cls"
    assert cfgs["itc_seg"].method.itc_trains == "seg"
    assert cfgs["dice_image"].method.dice_reduction == "image"
    assert base.method.dice_reduction == "batch"
    sup_image = cfgs["supervised_dice_image"].method
    assert replace(sup_image, dice_reduction="batch") == cfgs["supervised"].method
    assert cfgs["label_smooth"].method.label_smoothing == 0.1
    assert base.method.label_smoothing == 0.0
    sup_smooth = cfgs["supervised_label_smooth"].method
    assert replace(sup_smooth, label_smoothing=0.0) == cfgs["supervised"].method
    assert cfgs["mean_teacher"].method.mode == "mean_teacher"
    assert cfgs["fixmatch"].method.mode == "fixmatch"
    for name in ("mean_teacher", "fixmatch"):  # the baselines differ from Hermes in the mode only
        assert replace(cfgs[name].method, mode="hermes") == base.method
        assert cfgs[name].model == base.model
    for cfg in cfgs.values():
        assert cfg.seed == 1 and cfg.data.labeled == 40
        assert cfg.data.split_file == str(tmp_path / "splits" / "labeled40_seed1.json")
        assert cfg.optim == base.optim and cfg.data == base.data
    assert len({c.out_dir for c in cfgs.values()}) == len(VARIANTS)


def test_unknown_variant_and_bad_budget_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="nope"):
        get_variants(["hermes", "nope"])
    with pytest.raises(ValueError, match="budgets"):
        Matrix(tmp_path, [1], [0], get_variants(None))


def _fake(variant: str, budget: int, seed: int, dice: float, acc: float) -> dict:
    return {
        "variant": variant,
        "budget": budget,
        "seed": seed,
        "seconds": 1.0,
        "metrics": {"dice_lesion": dice, "accuracy": acc},
        "end_of_training": {"pseudo_cls/kept_unlabeled": 0.5},
    }


def test_summary_gives_mean_std_and_paired_gains(tmp_path: Path) -> None:
    m = Matrix(tmp_path, [40], [0, 1, 2], get_variants(["supervised", "hermes"]), preset=PRESET)
    sup = {0: 0.50, 1: 0.60, 2: 0.70}
    her = {0: 0.55, 1: 0.62, 2: 0.69}
    results = {}
    for seed in (0, 1, 2):
        results[RunSpec(VARIANTS["supervised"], 40, seed)] = _fake(
            "supervised", 40, seed, sup[seed], 0.8
        )
        results[RunSpec(VARIANTS["hermes"], 40, seed)] = _fake("hermes", 40, seed, her[seed], 0.9)
    s = summarize(m, results)
    assert s["dice_lesion"]["supervised"][40]["mean"] == pytest.approx(0.60)
    assert s["dice_lesion"]["supervised"][40]["std"] == pytest.approx(0.10)
    gain = s["dice_lesion"]["hermes"][40]["gain_vs_supervised"]
    diffs = [0.05, 0.02, -0.01]
    assert gain["values"] == pytest.approx(dict(enumerate(diffs)))
    assert gain["mean"] == pytest.approx(sum(diffs) / 3)
    mean = sum(diffs) / 3
    assert gain["std"] == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2))
    md = markdown(m, results, "t")
    assert "| supervised only | 60.00 ± 10.00 (3) |" in md
    assert f"| Hermes | +{mean * 100:.2f} ± {gain['std'] * 100:.2f} (3) |" in md
    # a missing seed shows as a smaller count, not a wrong mean
    del results[RunSpec(VARIANTS["hermes"], 40, 2)]
    assert "| Hermes | 58.50 ± 4.95 (2) |" in markdown(m, results, "t")


def test_a_field_added_later_at_its_default_keeps_results_valid(tmp_path: Path) -> None:
    from hermes.experiments.runner import same_config
    from hermes.train import to_dict

    cfg = run_config(_matrix(tmp_path), RunSpec(VARIANTS["hermes"], 40, 0))
    stored = to_dict(cfg)
    assert same_config(stored, cfg)
    del stored["method"]["concat_views"]  # as if the run predates the field
    assert same_config(stored, cfg)  # the current value is the default (True)
    cfg.method.concat_views = False
    assert not same_config(stored, cfg)  # not the default: the old run did something else
    stored = to_dict(cfg)
    stored["method"]["tau_max"] = 0.9
    assert not same_config(stored, cfg)
    stored = to_dict(cfg)
    stored["method"]["removed_field"] = 1
    assert not same_config(stored, cfg)


def test_a_field_renamed_since_keeps_results_valid(tmp_path: Path) -> None:
    """A run stored with method.detach_junctions is the same run as itc_trains: seg."""
    from hermes.experiments.runner import same_config
    from hermes.train import to_dict

    cfg = run_config(_matrix(tmp_path), RunSpec(VARIANTS["hermes"], 40, 0))
    stored = to_dict(cfg)
    del stored["method"]["itc_trains"]
    stored["method"]["detach_junctions"] = True
    assert same_config(stored, cfg)
    cfg.method.itc_trains = "cls"
    assert not same_config(stored, cfg)
    stored["method"]["detach_junctions"] = False
    cfg.method.itc_trains = "both"
    assert same_config(stored, cfg)


def test_loss_balance_weighs_the_baselines_terms_by_their_logged_weights() -> None:
    from hermes.experiments.tables import _weighted

    end = {"loss/unsup_cls": 0.2, "schedule/weight_cls": 5.0, "loss/ce_u": 0.5}
    result = {"end_of_training": end, "config": {"method": {"weights": {"ce_u": 0.1}}}}
    assert _weighted(result, "loss/unsup_cls", "schedule/weight_cls") == pytest.approx(1.0)
    assert _weighted(result, "loss/ce_u", "ce_u") == pytest.approx(0.05)
    assert math.isnan(_weighted(result, "loss/unsup_seg", "schedule/weight_seg"))
