"""Augmentations of the method (the authors' code), built from ``torchvision.transforms.v2``.

Images travel as ``tv_tensors.Image`` (float, 3 channels, [0, 1]) and masks as
``tv_tensors.Mask``, so every geometric transform moves both together (masks with nearest
interpolation).

* geometry: with p=0.5 a random 90-degree rotation plus a flip, else with p=0.5 a random
  rotation in [-20, 20] degrees (else nothing);
* weak view = geometry; strong view = the same geometric result + ColorJitter(0.5, 0.5, 0.5,
  0.25) with p=0.8 + GaussianBlur with p=0.5;
* then ImageNet mean/std normalisation. Test: resize + normalise only.
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class RandomRot90Flip(v2.Transform):
    """Rotate by a random multiple of 90 degrees, then flip along a random axis.

    (The public code's ``random_rot_flip``: ``k ~ U{0..3}``, ``axis ~ U{0, 1}``.)
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        k = int(torch.randint(0, 4, ()).item())
        vertical = bool(torch.randint(0, 2, ()).item())
        return {"k": k, "vertical": vertical}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        out = F.rotate(inpt, 90.0 * params["k"]) if params["k"] else inpt
        return F.vertical_flip(out) if params["vertical"] else F.horizontal_flip(out)


def resize(image_size: int) -> v2.Transform:
    """Resize image (antialiased bilinear) and mask (nearest) to ``image_size`` square."""
    return v2.Resize((image_size, image_size), antialias=True)


GEOMETRIES = ("rot_flip", "flip_crop")


def geometry(kind: str = "rot_flip", image_size: int | None = None) -> v2.Transform:
    """The joint geometric augmentation of image and mask.

    ``rot_flip`` (the public code's): p=0.5 rot90+flip, p=0.25 rotation by up to 20 degrees,
    p=0.25 none. ``flip_crop``: a horizontal flip (p=0.5) and a random crop of 60-100 % of the
    area (aspect 3/4-4/3) resized back to ``image_size``: ultrasound images keep the skin at the
    top, so the probe's geometry is never turned upside down.
    """
    if kind == "rot_flip":
        return v2.RandomChoice(
            [RandomRot90Flip(), v2.RandomRotation(20.0), v2.Identity()], p=[0.5, 0.25, 0.25]
        )
    if kind == "flip_crop":
        if image_size is None:
            raise ValueError("geometry 'flip_crop' needs the image size")
        return v2.Compose(
            [
                v2.RandomHorizontalFlip(0.5),
                v2.RandomResizedCrop(image_size, scale=(0.6, 1.0), antialias=True),
            ]
        )
    raise ValueError(f"data.geometry must be one of {GEOMETRIES}, got {kind!r}")


def photometric(image_size: int) -> v2.Transform:
    """Strong-view colour augmentation (image only)."""
    kernel = 2 * max(1, image_size // 20) + 1  # about a tenth of the image, odd
    return v2.Compose(
        [
            v2.RandomApply([v2.ColorJitter(0.5, 0.5, 0.5, 0.25)], p=0.8),
            v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
        ]
    )


def normalize() -> v2.Transform:
    """ImageNet mean/std normalisation."""
    return v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize` and clamp to [0, 1] (for figures).

    Shapes:
        ``image``: (3, H, W) or (B, 3, H, W); returns the same shape.
    """
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0.0, 1.0)


def resize_pair(
    image: torch.Tensor, mask: torch.Tensor, image_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize an image (3, H, W) and its mask (H, W) to (3, S, S) and (S, S) together."""
    img, msk = resize(image_size)(tv_tensors.Image(image), tv_tensors.Mask(mask))
    return img.as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


class LabeledTransform:
    """Joint geometry (if ``augment``), then normalisation, of a resized image and mask.

    Call with an image (3, S, S) float in [0, 1] and a mask (S, S) int64 (see
    :func:`resize_pair`); returns ``(image (3, S, S) normalised, mask (S, S) int64)``.
    """

    def __init__(
        self, augment: bool = True, kind: str = "rot_flip", image_size: int | None = None
    ) -> None:
        self.geometry = geometry(kind, image_size) if augment else v2.Identity()
        self.normalize = normalize()

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        img, msk = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return self.normalize(img).as_subclass(torch.Tensor), msk.as_subclass(torch.Tensor)


class UnlabeledTransform:
    """Two views with one geometry: ``weak`` (geometry) and ``strong`` (+ colour, blur).

    Call with a resized image (3, S, S) and mask (S, S); returns ``(weak, strong, mask)``, each
    view (3, S, S) normalised, the mask (S, S) int64 moved with the same geometry.
    """

    def __init__(self, image_size: int, kind: str = "rot_flip") -> None:
        self.geometry = geometry(kind, image_size)
        self.photometric = photometric(image_size)
        self.normalize = normalize()

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        img, msk = self.geometry(tv_tensors.Image(image), tv_tensors.Mask(mask))
        weak = self.normalize(img)
        strong = self.normalize(self.photometric(img))
        return (
            weak.as_subclass(torch.Tensor),
            strong.as_subclass(torch.Tensor),
            msk.as_subclass(torch.Tensor),
        )
