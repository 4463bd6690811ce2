"""Reading images and masks from disk, normalised alike whatever their storage format.

Images may be greyscale, RGB, RGBA, palette or 16-bit; :func:`load_image` returns them all as
3-channel float in [0, 1]. Masks may be 0/255, 0/1, greyscale or RGB; :func:`load_mask` returns a
binary (H, W) int64 mask, and :func:`load_masks` combines several masks of one image with OR.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def image_size(path: str | Path, *, decode: bool = False) -> tuple[int, int]:
    """Return ``(width, height)`` of an image file, reading only its header, or, with
    ``decode``, decoding it in full (which also finds files whose header is intact but whose
    pixel data is not: a truncated PNG or JPEG).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not an image PIL can identify (or decode); the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            if decode:
                im.load()
            return im.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err


def _read_array(path: Path) -> np.ndarray:
    """Decode an image file into a numpy array (H, W) or (H, W, C) of its native dtype."""
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode == "CMYK" or im.mode == "YCbCr":
                im = im.convert("RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from err
    return arr


def _to_unit(arr: np.ndarray, path: Path) -> np.ndarray:
    """Scale an integer or float array to float32 in [0, 1] according to its dtype."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype in (np.uint16, np.int32, np.int16) or arr.dtype.kind in "iu":
        # PIL gives 16-bit PNGs as mode "I;16" (uint16) or "I" (int32).
        return np.clip(arr.astype(np.float32) / 65535.0, 0.0, 1.0)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind == "f":
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ValueError(f"unsupported pixel type {arr.dtype} in image {path}")


def load_image(path: str | Path) -> torch.Tensor:
    """Load an image as 3-channel float in [0, 1].

    Greyscale is replicated to three channels, an alpha channel is dropped, 16-bit data is
    divided by 65535.

    Args:
        path: image file (PNG, JPEG, BMP, TIFF).

    Shapes:
        returns ``(3, H, W)`` float32.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file cannot be decoded (message names the file).
    """
    path = Path(path)
    arr = _to_unit(_read_array(path), path)
    if arr.ndim == 2:
        arr = np.repeat(arr[None], 3, axis=0)
    elif arr.ndim == 3:
        channels = arr.shape[2]
        if channels == 1:
            arr = np.repeat(arr[..., 0][None], 3, axis=0)
        elif channels == 2:  # greyscale + alpha
            arr = np.repeat(arr[..., 0][None], 3, axis=0)
        else:  # RGB or RGBA: keep the colour channels
            arr = np.ascontiguousarray(arr[..., :3].transpose(2, 0, 1))
    else:
        raise ValueError(f"unexpected array shape {arr.shape} for image {path}")
    return torch.from_numpy(np.ascontiguousarray(arr))


def load_mask(path: str | Path) -> torch.Tensor:
    """Load a binary mask: foreground where the value exceeds half the mask's maximum.

    Works for 0/255, 0/1 and 16-bit masks; colour masks use the maximum over channels.

    Shapes:
        returns ``(H, W)`` int64 in {0, 1}.
    """
    path = Path(path)
    arr = _read_array(path)
    if arr.ndim == 3:
        arr = arr[..., : min(arr.shape[2], 3)].max(axis=2)
    arr = arr.astype(np.float32)
    peak = float(arr.max()) if arr.size else 0.0
    binary = arr > peak / 2.0 if peak > 0 else np.zeros(arr.shape, dtype=bool)
    return torch.from_numpy(binary.astype(np.int64))


def load_masks(paths: Sequence[str | Path], image_path: str | Path | None = None) -> torch.Tensor:
    """Load one or more masks of the same image and combine them with OR.

    Args:
        paths: mask files, at least one.
        image_path: the image they belong to, only for error messages.

    Shapes:
        returns ``(H, W)`` int64 in {0, 1}.

    Raises:
        ValueError: no mask given, or the masks differ in size (message names the files).
    """
    if not paths:
        raise ValueError(f"no mask file given for image {image_path}")
    first = Path(paths[0])
    combined = load_mask(first)
    for p in paths[1:]:
        m = load_mask(p)
        if m.shape != combined.shape:
            raise ValueError(
                f"mask {p} has size {tuple(m.shape)} (H, W) but mask {first} of the same image "
                f"has size {tuple(combined.shape)}"
            )
        combined = combined | m
    return combined
