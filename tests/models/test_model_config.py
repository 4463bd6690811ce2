"""ModelConfig: presets fill the unset fields, bad values are named."""

from __future__ import annotations

import pytest

from hermes.models import PRESETS, ModelConfig


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_fills_unset_fields(preset: str) -> None:
    cfg = ModelConfig(preset=preset)
    for name, value in PRESETS[preset].items():
        assert getattr(cfg, name) == value


def test_explicit_fields_override_the_preset_and_lists_become_tuples() -> None:
    cfg = ModelConfig(preset="small", decoder_channels=[8, 8, 8, 8, 8], embed_dim=32)
    assert cfg.decoder_channels == (8, 8, 8, 8, 8)
    assert cfg.embed_dim == 32
    assert cfg.cls_widths == PRESETS["small"]["cls_widths"]


def test_own_seg_encoder_does_not_inherit_preset_widths() -> None:
    cfg = ModelConfig(preset="small", seg_encoder="resnet34")
    assert cfg.seg_widths is None and cfg.seg_stem_width is None and cfg.seg_stem_type is None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("preset", "huge"),
        ("num_classes", 4),
        ("seg_classes", 1),
        ("attention", "yes"),
        ("decoder_channels", (8, 8)),
        ("cls_widths", (8, 8, 8, -1)),
        ("decoder_dropout", 1.0),
        ("attention_source", "middle"),
        ("cls_stem_type", "wide"),
        ("embed_dim", 0),
        ("pretrained_cls", 3),
    ],
)
def test_bad_value_is_named(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"ModelConfig.{field}"):
        ModelConfig(**{field: value})
