"""The training loop end to end on a tiny phantom: exact resume, checkpoints, the report."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from hermes.train import BatchStream, load_config, train
from hermes.train.checkpoint import atomic_save

LOSS_KEYS = (
    "loss/total",
    "loss/ce_l",
    "loss/seg_sup",
    "loss/ce_u",
    "loss/dice_u",
    "loss/contrast_img",
    "loss/contrast_pix",
    "loss/itc",
)


@pytest.mark.parametrize(
    "method",
    ["mode=hermes", "mode=mean_teacher", "mode=fixmatch", "teacher=ema"],
    ids=["hermes", "mean_teacher", "fixmatch", "hermes_ema_teacher"],
)
def test_resume_is_exact(tiny_overrides: list[str], tmp_path: Path, method: str) -> None:
    cfg = load_config(
        "default", [*tiny_overrides, "optim.steps=4", "eval.every=0", f"method.{method}"]
    )
    full = train(replace(cfg, out_dir=str(tmp_path / "full")), report=False)
    half = train(replace(cfg, out_dir=str(tmp_path / "half")), stop_after=2, report=False)
    assert half.state.step == 2 and half.final is None
    resumed = train(
        replace(cfg, out_dir=str(tmp_path / "half")), resume=half.checkpoint, report=False
    )
    assert [h["step"] for h in resumed.state.history] == [0.0, 1.0, 2.0, 3.0]
    for a, b in zip(full.state.history, resumed.state.history, strict=True):
        keys = [k for k in a if k.startswith(("loss/", "schedule/", "pseudo_", "teacher/"))]
        assert set(LOSS_KEYS) <= set(keys) or cfg.method.mode != "hermes"
        for key in keys:
            assert a[key] == b[key] or (math.isnan(a[key]) and math.isnan(b[key])), (
                a["step"],
                key,
                a[key],
                b[key],
            )
    assert full.metrics == resumed.metrics
    # the networks end identical too; checkpoints hold tensors and plain values only
    sa = torch.load(full.checkpoint, weights_only=True)["method"]
    sb = torch.load(resumed.checkpoint, weights_only=True)["method"]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_train_refuses_a_folder_holding_another_run(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    cfg = load_config("default", [*tiny_overrides, "optim.steps=1", "eval.every=0"])
    first = train(cfg, report=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, report=False)  # refused before anything is built
    assert torch.load(first.checkpoint, weights_only=True)["step"] == 1
    again = train(cfg, report=False, overwrite=True)
    assert again.state.step == 1
    assert len(list((again.out_dir / "tensorboard").iterdir())) == 1  # the old log went too


def test_run_writes_checkpoints_tensorboard_and_report(
    tiny_overrides: list[str], tmp_path: Path
) -> None:
    cfg = load_config("default", tiny_overrides)
    result = train(cfg)
    out = Path(cfg.out_dir)
    for name in ("last.pt", "best.pt", "config.yaml"):
        assert (out / name).is_file(), name
    assert any((out / "tensorboard").iterdir())
    report = out / "report"
    for name in ("metrics.json", "summary.md", "losses.png", "pseudo_labels.png", "masks.png"):
        assert (report / name).is_file(), name
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["steps"] == 4 and len(metrics["evals"]) == 2
    for key in (
        "dice_lesion",
        "iou_lesion",
        "dice_mean",
        "iou_mean",
        "accuracy",
        "sensitivity",
        "specificity",
        "auc",
    ):
        assert key in metrics["final"]
    assert 0.0 <= result.metrics["dice_lesion"] <= 1.0
    # dual-threshold statistics logged every step
    assert all(
        "pseudo_cls/threshold_0" in h and "pseudo_seg/kept" in h for h in result.state.history
    )
    first = result.state.history[0]  # each optimiser group's learning rate, by name
    assert {"lr/cls", "lr/cls.encoder", "lr/seg", "lr/seg.encoder"} <= set(first)
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_atomic_save_replaces_whole_file(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    atomic_save({"a": 1}, path)
    atomic_save({"a": 2}, path)
    assert torch.load(path)["a"] == 2 and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def test_stream_order_depends_on_seed_and_epoch_only() -> None:
    from torch.utils.data import DataLoader, RandomSampler

    data = list(range(10))

    def loader() -> DataLoader:
        return DataLoader(data, batch_size=3, sampler=RandomSampler(data), drop_last=True)

    a = BatchStream(loader(), seed=1, name="x")
    first = [next(a).tolist() for _ in range(7)]  # crosses two epoch boundaries (3 per epoch)
    b = BatchStream(loader(), seed=1, name="x")
    b.load_state_dict({"epoch": 1, "index": 1})
    assert [next(b).tolist() for _ in range(3)] == first[4:7]
    c = BatchStream(loader(), seed=2, name="x")
    assert [next(c).tolist() for _ in range(3)] != first[:3]


def test_channels_last_in_one_process_only(tiny_overrides: list[str]) -> None:
    from hermes.train.build import build_everything

    cfg = load_config("default", [*tiny_overrides, "channels_last=true"])
    conv = _first_conv(build_everything(cfg).model)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    # DeepSpeed's parameter broadcast needs contiguous tensors: not used with several workers.
    cfg = load_config("default", [*tiny_overrides, "channels_last=true", "distributed.workers=2"])
    assert _first_conv(build_everything(cfg).model).is_contiguous()


def _first_conv(model: torch.nn.Module) -> torch.Tensor:
    return next(p for p in model.parameters() if p.dim() == 4)
