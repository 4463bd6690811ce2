"""Pretrained encoder weights load from a local file; bad files are errors naming the path."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torchvision

from hermes.models import ModelConfig, build_model
from hermes.models.cls import ClassificationBranch
from hermes.models.seg import timm_resnet_args

SMALL = ModelConfig()


def _timm_resnet(widths: tuple[int, ...], stem: int, stem_type: str) -> torch.nn.Module:
    # A full ImageNet classifier (with fc), as a timm checkpoint would hold.
    return timm.create_model(
        "resnet18", pretrained=False, **timm_resnet_args(widths, stem, stem_type)
    )


def test_timm_state_dicts_load_into_both_encoders(tmp_path: Path) -> None:
    cls_src = _timm_resnet(SMALL.cls_widths, SMALL.cls_stem_width, SMALL.cls_stem_type)
    seg_src = _timm_resnet(SMALL.seg_widths, SMALL.seg_stem_width, SMALL.seg_stem_type)
    torch.save(cls_src.state_dict(), tmp_path / "cls.pth")
    torch.save({"state_dict": seg_src.state_dict()}, tmp_path / "seg.pth")  # wrapped checkpoint
    cfg = ModelConfig(
        pretrained_cls=str(tmp_path / "cls.pth"), pretrained_seg=str(tmp_path / "seg.pth")
    )
    model = build_model(cfg)
    for name, tensor in model.cls.encoder.state_dict().items():
        torch.testing.assert_close(tensor, cls_src.state_dict()[name], msg=name)
    for name, tensor in model.seg.encoder.state_dict().items():
        torch.testing.assert_close(tensor, seg_src.state_dict()[name], msg=name)


def test_torchvision_resnet18_loads_into_the_paper_classifier(tmp_path: Path) -> None:
    source = torchvision.models.resnet18(weights=None)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    cfg = ModelConfig(
        preset="paper", attention=False, pretrained_cls=str(tmp_path / "resnet18.pth")
    )
    branch = ClassificationBranch(cfg, seg_feature_channels=())
    torch.testing.assert_close(branch.encoder.conv1.weight, source.conv1.weight)
    torch.testing.assert_close(branch.encoder.layer4[1].bn2.bias, source.layer4[1].bn2.bias)


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        build_model(ModelConfig(pretrained_cls=str(path)))


def test_mismatched_keys_name_the_path(tmp_path: Path) -> None:
    wrong = timm.create_model("resnet34", pretrained=False)  # more blocks, other widths
    torch.save(wrong.state_dict(), tmp_path / "resnet34.pth")
    with pytest.raises(ValueError, match="resnet34.pth.*unexpected key") as info:
        build_model(ModelConfig(pretrained_seg=str(tmp_path / "resnet34.pth")))
    assert "shape mismatch" in str(info.value)


def test_not_a_state_dict_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "notes.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="notes.pth"):
        build_model(ModelConfig(pretrained_cls=str(tmp_path / "notes.pth")))
