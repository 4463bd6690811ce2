"""Transforms keep image and mask aligned; weak and strong views share one geometry."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
import torchvision.transforms.v2 as v2
from torchvision import tv_tensors

from hermes.data.transforms import (
    LabeledTransform,
    UnlabeledTransform,
    denormalize,
    geometry,
    normalize,
)

S = 32


def blob_mask() -> torch.Tensor:
    """An asymmetric L-shaped mask (S, S) int64, so every rotation/flip is distinguishable."""
    m = torch.zeros(S, S, dtype=torch.int64)
    m[6:26, 8:14] = 1
    m[20:26, 8:24] = 1
    m[6:9, 20:23] = 1
    return m


def as_image(mask: torch.Tensor) -> torch.Tensor:
    return mask.float().expand(3, -1, -1).clone()


def agreement(image: torch.Tensor, mask: torch.Tensor) -> float:
    """Fraction of pixels where the (denormalised) image thresholded at 0.5 equals the mask."""
    return float(((denormalize(image)[0] > 0.5).long() == mask).float().mean())


def test_labeled_augmentation_keeps_image_and_mask_aligned() -> None:
    torch.manual_seed(0)
    mask = blob_mask()
    transform = LabeledTransform(augment=True)
    exact = 0
    for _ in range(60):
        image, out_mask = transform(as_image(mask), mask)
        assert image.shape == (3, S, S) and out_mask.shape == (S, S)
        assert out_mask.dtype == torch.int64 and set(out_mask.unique().tolist()) <= {0, 1}
        # bilinear vs nearest interpolation may disagree on a few boundary pixels only
        assert agreement(image, out_mask) > 0.97
        exact += int(agreement(image, out_mask) == 1.0)
    assert exact >= 30  # the 90-degree branch and the identity are exact


def test_geometry_branch_probabilities() -> None:
    """p=0.5 rot90+flip (a reflection), else p=0.5 a small rotation, else nothing."""
    torch.manual_seed(1)
    mask = blob_mask()
    reflections = [torch.flip(torch.rot90(mask, k), dims=(1,)) for k in range(4)]
    outcome: Counter[str] = Counter()
    geo = geometry()
    n = 300
    for _ in range(n):
        out = geo(tv_tensors.Mask(mask)).as_subclass(torch.Tensor)
        if torch.equal(out, mask):
            outcome["identity"] += 1
        elif any(torch.equal(out, r) for r in reflections):
            outcome["rot90_flip"] += 1
        else:
            outcome["rotation"] += 1
    # a rotation by a tiny angle can look like the identity: compare with margins
    assert abs(outcome["rot90_flip"] / n - 0.5) < 0.09
    assert abs((outcome["identity"] + outcome["rotation"]) / n - 0.5) < 0.09
    assert outcome["rotation"] / n > 0.15 and outcome["identity"] / n > 0.15


def test_weak_and_strong_share_geometry() -> None:
    mask = blob_mask()
    transform = UnlabeledTransform(S)
    transform.photometric = v2.Identity()  # without colour: the two views must be equal
    torch.manual_seed(2)
    for _ in range(20):
        weak, strong, out_mask = transform(as_image(mask), mask)
        assert torch.equal(weak, strong)
        assert agreement(weak, out_mask) > 0.97


def test_strong_view_changes_colour_not_geometry() -> None:
    mask = blob_mask()
    transform = UnlabeledTransform(S)
    torch.manual_seed(3)
    differs = 0
    for _ in range(30):
        weak, strong, out_mask = transform(as_image(mask), mask)
        differs += int(not torch.allclose(weak, strong))
        s = denormalize(strong)[0]
        lo, hi = float(s[out_mask == 0].median()), float(s[out_mask == 1].median())
        assert hi > lo  # colour jitter is monotone on a grey image: the lesion stays on top
        seg = (s > (lo + hi) / 2).long()
        iou = float((seg & out_mask).sum() / (seg | out_mask).sum())
        assert iou > 0.8  # blur softens edges; the shape stays where the mask is
    assert differs >= 20  # p(colour jitter or blur) = 0.9


def test_test_transform_is_deterministic_and_invertible() -> None:
    image = torch.rand(3, S, S)
    mask = blob_mask()
    transform = LabeledTransform(augment=False)
    a, ma = transform(image, mask)
    b, mb = transform(image, mask)
    assert torch.equal(a, b) and torch.equal(ma, mask) and torch.equal(mb, mask)
    torch.testing.assert_close(denormalize(a), image, atol=1e-6, rtol=0)
    torch.testing.assert_close(a, normalize()(image))


@pytest.mark.parametrize("batched", [False, True])
def test_denormalize_shapes(batched: bool) -> None:
    x = torch.rand(2, 3, 5, 5) if batched else torch.rand(3, 5, 5)
    assert denormalize(normalize()(x)).shape == x.shape


def test_flip_crop_keeps_image_and_mask_aligned_and_the_probe_on_top() -> None:
    torch.manual_seed(0)
    mask = blob_mask()
    transform = LabeledTransform(augment=True, kind="flip_crop", image_size=S)
    changed = 0
    for _ in range(40):
        out, out_mask = transform(as_image(mask), mask)
        assert out.shape == (3, S, S) and out_mask.shape == (S, S)
        assert set(out_mask.unique().tolist()) <= {0, 1}
        assert agreement(out, out_mask) > 0.9  # bilinear vs nearest upscaling at the boundary
        changed += int(not torch.equal(out_mask, mask))
    assert changed >= 30
    # A bright band at the top (the skin line) stays at the top: no rotation, no vertical flip.
    band = torch.zeros(S, S, dtype=torch.int64)
    band[:3] = 1
    for _ in range(20):
        out, out_mask = transform(as_image(band), band)
        assert out_mask[-1].sum() == 0 and out_mask[:, 0].sum() <= out_mask[0].sum()
    with pytest.raises(ValueError, match="must be one of"):
        geometry("upside_down", S)
