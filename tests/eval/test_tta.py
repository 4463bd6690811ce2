"""Test-time augmentation of the predictions (``eval.tta``, ``--tta``)."""

from __future__ import annotations

import pytest
import torch

from hermes.eval import predict_batch
from hermes.models import ModelConfig, build_model
from hermes.train.config import load_config


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(preset="small")).eval()


def test_hflip_averages_the_image_and_its_mirror() -> None:
    model = small_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    seg, cls = predict_batch(model, x, "hflip")
    seg_a, cls_a = predict_batch(model, x)
    seg_b, cls_b = predict_batch(model, x.flip(-1))
    want_seg = (seg_a.softmax(1) + seg_b.flip(-1).softmax(1)) / 2
    want_cls = (cls_a.softmax(1) + cls_b.softmax(1)) / 2
    torch.testing.assert_close(seg.softmax(1), want_seg)
    torch.testing.assert_close(cls.softmax(1), want_cls)
    # an untrained network is not mirror-symmetric, so the augmentation changes the output
    assert not torch.allclose(seg.softmax(1), seg_a.softmax(1), atol=1e-4)


def test_hflip_predictions_follow_a_mirrored_input() -> None:
    """The mirror image's prediction is the image's prediction mirrored (masks flipped back)."""
    model = small_model()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    seg, cls = predict_batch(model, x, "hflip")
    seg_m, cls_m = predict_batch(model, x.flip(-1), "hflip")
    torch.testing.assert_close(seg_m.flip(-1), seg, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls_m, cls, atol=1e-5, rtol=1e-5)


def test_unknown_tta_is_refused() -> None:
    with pytest.raises(ValueError, match="tta: expected one of \\('none', 'hflip'\\), got 'vflip'"):
        predict_batch(small_model(), torch.zeros(1, 3, 32, 32), "vflip")
    with pytest.raises(ValueError, match="eval.tta"):
        load_config("default", ["eval.tta=vflip"])
