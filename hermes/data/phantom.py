"""A B-mode breast ultrasound phantom: the embedded default dataset.

Each image is simulated from a physical model:

1. **Tissue**: an echogenicity map (skin, subcutaneous fat with lobules, fibroglandular tissue
   with texture, chest-wall muscle with striations; wavy layer boundaries) and an attenuation
   map; one lesion per image.
2. **Scatterers**: complex Gaussian reflectivity on the pixel grid, i.e. many randomly placed
   sub-resolution scatterers per cell (fully developed speckle), scaled by the echogenicity;
   a few strong point scatterers for micro-calcifications.
3. **Point-spread function**: the baseband (IQ) Gaussian pulse of a linear array, narrow along
   depth and wide across; convolution by FFT.
4. **Attenuation and TGC**: round-trip amplitude loss ``exp(-2 cumsum(alpha))`` along depth,
   compensated by a time-gain curve that assumes the nominal tissue attenuation (with a random
   gain error); electronic noise is added before the TGC, so it grows with depth.
5. **Envelope detection and log compression**: ``|IQ|`` mapped to grey over a 45-60 dB
   dynamic range.

Lesions follow the BI-RADS descriptors that separate the classes (with overlap, as in real
data): benign masses are oval or round, circumscribed, parallel to the skin (wider than tall),
smaller, often posterior enhancement (low attenuation); malignant masses are irregular with
angular, spiculated or indistinct margins, more often not parallel (taller than wide),
hypoechoic and heterogeneous, sometimes with an echogenic halo and calcifications, and often
cast a posterior shadow (high attenuation). Shadow and enhancement arise from the attenuation
map, not from painting. Parameter ranges were calibrated against BUSI with
:mod:`hermes.data.calibration` (see docs/data.md; ``python -m hermes.data.phantom --calibrate``).

The dataset is written once per parameter set as the generic folder layout
(``images/``, ``masks/``, ``labels.csv``) under ``$HERMES_CACHE/phantom/<hash>/`` (default
``~/.cache/hermes``) and read back with :func:`hermes.data.readers.read_folder`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)

# Bump when the generator changes, so that cached datasets are regenerated.
GENERATOR_VERSION = 4
CLASSES = ("benign", "malignant")


@dataclass(frozen=True)
class PhantomConfig:
    """What to generate.

    Attributes:
        size: number of images.
        image_size: side of the square images in pixels.
        malignant_fraction: share of malignant images (exact up to rounding).
        seed: random seed; equal configs give identical datasets.
    """

    size: int = 400
    image_size: int = 224
    malignant_fraction: float = 0.5
    seed: int = 0

    def key(self) -> str:
        """Short hash of the config and the generator version (the cache folder name)."""
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class LesionParams:
    """The random draw of one lesion (in pixels unless stated)."""

    malignant: bool
    cx: float
    cz: float
    a: float  # lateral semi-axis before tilt
    b: float  # axial semi-axis before tilt
    tilt: float  # radians
    harmonics: tuple[tuple[int, float, float], ...]  # (order, amplitude, phase)
    spicules: tuple[tuple[float, float, float], ...]  # (angle, height as fraction, width rad)
    echo: float  # amplitude factor inside the lesion
    heterogeneity: float
    margin_width: float  # pixels of blurred echogenicity transition
    halo: float  # echogenic rim strength (0: none)
    posterior_factor: float  # amplitude factor behind the lesion centre (<1 shadow, >1 enhance)
    calcifications: int


def _smooth_noise(rng: np.random.Generator, n: int, sigmas: tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise fields (one per sigma, periodic), unit standard deviation.

    Shapes:
        returns (len(sigmas), n, n) float64.
    """
    white = rng.standard_normal((len(sigmas), n, n))
    f = np.fft.fftfreq(n)
    f2 = f[:, None] ** 2 + f[None, : n // 2 + 1] ** 2
    otf = np.exp(-2 * np.pi**2 * np.asarray(sigmas)[:, None, None] ** 2 * f2[None])
    field = np.fft.irfft2(np.fft.rfft2(white) * otf, s=(n, n))
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-12)


def _uniform_or_mid(rng: np.random.Generator, low: float, high: float) -> float:
    """Uniform in [low, high], or the midpoint when the interval is empty."""
    return float(rng.uniform(low, high)) if high > low else 0.5 * (low + high)


def draw_lesion(rng: np.random.Generator, malignant: bool, n: int) -> LesionParams:
    """Draw the lesion of one image of side ``n`` (distributions calibrated against BUSI)."""
    if malignant:
        area = float(np.clip(np.exp(rng.normal(np.log(0.11), 0.8)), 0.012, 0.35))
        aspect = float(np.exp(rng.normal(np.log(1.35), 0.3)))  # tilted: ~25% taller than wide
        tilt = float(rng.normal(0.0, 0.35))
        n_harm = int(rng.integers(3, 7))
        harmonics = tuple(
            (int(k), float(rng.uniform(0.03, 0.09)), float(rng.uniform(0, 2 * np.pi)))
            for k in rng.choice(np.arange(3, 11), n_harm, replace=False)
        )
        n_spic = int(rng.integers(1, 10)) if rng.random() < 0.5 else 0
        spicules = tuple(
            (
                float(rng.uniform(0, 2 * np.pi)),
                float(rng.uniform(0.1, 0.35)),
                float(rng.uniform(0.03, 0.07)),
            )
            for _ in range(n_spic)
        )
        echo = float(rng.uniform(0.08, 0.35))
        heterogeneity = float(rng.uniform(0.2, 0.6))
        margin_width = float(rng.uniform(1.5, 5.0)) if rng.random() < 0.6 else 0.7
        halo = float(rng.uniform(0.3, 0.9)) if rng.random() < 0.3 else 0.0
        u = rng.random()
        if u < 0.5:
            posterior = float(rng.uniform(0.12, 0.5))  # shadowing
        elif u < 0.7:
            posterior = float(rng.uniform(1.4, 2.5))  # enhancement
        else:
            posterior = float(rng.uniform(0.8, 1.2))
        calcifications = int(rng.integers(2, 10)) if rng.random() < 0.35 else 0
    else:
        area = float(np.clip(np.exp(rng.normal(np.log(0.035), 1.2)), 0.005, 0.3))
        aspect = float(np.exp(rng.normal(np.log(1.4), 0.3)))  # wider than tall
        tilt = float(rng.normal(0.0, 0.15))
        n_harm = int(rng.integers(0, 3))
        harmonics = tuple(
            (int(k), float(rng.uniform(0.01, 0.06)), float(rng.uniform(0, 2 * np.pi)))
            for k in rng.choice(np.arange(2, 5), n_harm, replace=False)
        )
        spicules = ()
        if rng.random() < 0.1:  # some benign masses look irregular too
            harmonics += ((int(rng.integers(4, 8)), float(rng.uniform(0.05, 0.1)), 0.0),)
        echo = float(rng.uniform(0.01, 0.25))
        heterogeneity = float(rng.uniform(0.0, 0.3))
        margin_width = 0.7 if rng.random() < 0.85 else float(rng.uniform(1.5, 3.0))
        halo = 0.0
        u = rng.random()
        if u < 0.65:
            posterior = float(rng.uniform(1.8, 3.5))
        elif u < 0.7:
            posterior = float(rng.uniform(0.3, 0.6))
        else:
            posterior = float(rng.uniform(0.85, 1.2))
        calcifications = int(rng.integers(1, 4)) if rng.random() < 0.05 else 0
    # semi-axes from area fraction and aspect (lateral / axial)
    ab = area * n * n / np.pi
    a = float(np.sqrt(ab * aspect))
    b = float(np.sqrt(ab / aspect))
    margin = max(a, b) * 1.1
    cx = _uniform_or_mid(rng, max(margin, 0.2 * n), min(n - margin, 0.8 * n))
    cz = _uniform_or_mid(rng, 0.12 * n + 1.1 * b, min(0.62 * n, n - 1.6 * b))
    return LesionParams(
        malignant=malignant,
        cx=cx,
        cz=cz,
        a=a,
        b=b,
        tilt=tilt,
        harmonics=harmonics,
        spicules=spicules,
        echo=echo,
        heterogeneity=heterogeneity,
        margin_width=margin_width,
        halo=halo,
        posterior_factor=posterior,
        calcifications=calcifications,
    )


def _lesion_geometry(p: LesionParams, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed distance-like field (pixels; < 0 inside) and the binary mask of the lesion."""
    z, x = np.mgrid[0:n, 0:n].astype(np.float64)
    dx, dz = x - p.cx, z - p.cz
    c, s = np.cos(p.tilt), np.sin(p.tilt)
    u, v = c * dx + s * dz, -s * dx + c * dz  # lesion frame
    rho = np.hypot(u, v)
    theta = np.arctan2(v, u)
    # the radius as a function of angle, tabulated once and interpolated
    table = np.linspace(-np.pi, np.pi, 1441)
    base = p.a * p.b / np.sqrt((p.b * np.cos(table)) ** 2 + (p.a * np.sin(table)) ** 2)
    mod = np.ones_like(table)
    for k, amp, phase in p.harmonics:
        mod += amp * np.cos(k * table + phase)
    for angle, height, width in p.spicules:
        d = np.angle(np.exp(1j * (table - angle)))
        mod += height * np.exp(-0.5 * (d / width) ** 2)
    radius = np.interp(theta, table, base * np.maximum(mod, 0.3))
    sdist = rho - radius
    return sdist, sdist < 0


def simulate(rng: np.random.Generator, malignant: bool, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one B-mode image and its lesion mask.

    Shapes:
        returns image (n, n) float32 in [0, 1] and mask (n, n) bool.
    """
    p = draw_lesion(rng, malignant, n)
    zz = np.arange(n, dtype=np.float64)[:, None] / n  # depth in [0, 1)
    xs = np.arange(n)

    def boundary(mean: float, amp: float, scale: float) -> np.ndarray:
        wave = ndimage.gaussian_filter1d(rng.standard_normal(n), scale, mode="wrap")
        return mean + amp * wave / (wave.std() + 1e-12)

    skin = boundary(rng.uniform(0.03, 0.06), 0.004, n / 6)
    fat = boundary(rng.uniform(0.12, 0.3), 0.03, n / 5)
    chest = boundary(rng.uniform(0.78, 1.05), 0.04, n / 4)
    texture, lobules, hetero = _smooth_noise(rng, n, (n / 40, n / 18, 2.5))
    echo = np.where(zz < skin[None, xs], 1.5, 0.0)
    fat_region = (zz >= skin[None, xs]) & (zz < fat[None, xs])
    gland_region = (zz >= fat[None, xs]) & (zz < chest[None, xs])
    muscle_region = zz >= chest[None, xs]
    echo = echo + fat_region * 0.2 * np.exp(0.3 * lobules)
    gland = np.exp(0.5 * texture) * np.where(lobules > 0.8, 0.35, 1.0)
    echo = echo + gland_region * rng.uniform(0.8, 1.1) * gland
    striation = 1.0 + 0.5 * np.sin(2 * np.pi * zz * n / rng.uniform(5, 9) + 0.8 * texture)
    echo = echo + muscle_region * 0.5 * striation

    sdist, mask = _lesion_geometry(p, n)
    inside = 1.0 / (1.0 + np.exp(sdist / max(p.margin_width, 0.3)))  # soft 1 inside, 0 out
    internal = p.echo * np.exp(p.heterogeneity * hetero)
    echo = echo * (1 - inside) + internal * inside
    if p.halo > 0:
        echo = echo * (1 + p.halo * np.exp(-0.5 * ((sdist - 2.5) / 1.5) ** 2))

    # attenuation (per pixel, one way): nominal tissue value plus the lesion's excess
    alpha0 = rng.uniform(1.0, 1.6) / n
    thickness = max(float(mask.sum(axis=0).max()), 1.0)
    alpha = np.full((n, n), alpha0) - np.log(p.posterior_factor) / (2 * thickness) * inside
    attenuation = np.exp(-2 * np.cumsum(alpha, axis=0))

    # two compounded frames (steered views of the same tissue decorrelate the speckle)
    scatter = (rng.standard_normal((2, n, n)) + 1j * rng.standard_normal((2, n, n))) / np.sqrt(2)
    reflect = scatter * echo
    if p.calcifications:
        ys, xs_in = np.nonzero(mask)
        pick = rng.choice(ys.size, min(p.calcifications, ys.size), replace=False)
        reflect[:, ys[pick], xs_in[pick]] += 8.0 * np.exp(1j * rng.uniform(0, 2 * np.pi, pick.size))

    # baseband PSF: Gaussian, narrow along depth, wide across (focal blur grows with depth
    # is neglected); FFT convolution
    sig_z, sig_x = rng.uniform(1.3, 1.5), rng.uniform(2.6, 3.1)
    fz = np.fft.fftfreq(n)[:, None]
    fx = np.fft.fftfreq(n)[None, :]
    otf = np.exp(-2 * np.pi**2 * ((fz * sig_z) ** 2 + (fx * sig_x) ** 2))
    iq = np.fft.ifft2(np.fft.fft2(reflect * attenuation) * otf)
    # electronic noise 45-55 dB below the echo level near the skin
    level = np.sqrt(np.mean(np.abs(iq[:, : n // 5]) ** 2)) * 10 ** (-rng.uniform(45, 55) / 20)
    noise = (rng.standard_normal(iq.shape) + 1j * rng.standard_normal(iq.shape)) * level
    tgc = np.exp(2 * alpha0 * np.arange(n) * rng.uniform(0.85, 1.1))[:, None]
    envelope = np.abs(iq + noise).mean(axis=0) * tgc

    ref = np.percentile(envelope[gland_region] if gland_region.any() else envelope, 99)
    dyn = rng.uniform(50, 60)
    grey = (20 * np.log10(envelope / ref + 1e-9) + dyn) / dyn
    grey = np.clip(grey, 0, 1) ** rng.uniform(2.0, 2.8)  # the scanner's grey map
    return np.clip(grey, 0, 1).astype(np.float32), mask


def generate(cfg: PhantomConfig, out_dir: str | Path) -> Path:
    """Write the phantom dataset of ``cfg`` into ``out_dir`` (folder layout); return it."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    n_mal = int(round(cfg.size * cfg.malignant_fraction))
    order = np.random.default_rng(cfg.seed).permutation(cfg.size)
    malignant = np.zeros(cfg.size, dtype=bool)
    malignant[order[:n_mal]] = True
    rows = ["id,label"]
    for i in range(cfg.size):
        rng = np.random.default_rng([cfg.seed, i, GENERATOR_VERSION])
        image, mask = simulate(rng, bool(malignant[i]), cfg.image_size)
        sid = f"phantom_{i:05d}"
        Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out / "images" / f"{sid}.png")
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{sid}.png")
        rows.append(f"{sid},{CLASSES[int(malignant[i])]}")
    (out / "labels.csv").write_text("\n".join(rows) + "\n")
    (out / "params.json").write_text(
        json.dumps({**asdict(cfg), "version": GENERATOR_VERSION}, indent=1) + "\n"
    )
    return out


def cache_root() -> Path:
    """``$HERMES_CACHE`` or ``~/.cache/hermes``."""
    return Path(os.environ.get("HERMES_CACHE", Path.home() / ".cache" / "hermes"))


def ensure_phantom(cfg: PhantomConfig, cache_dir: str | Path | None = None) -> Path:
    """Return the folder of the phantom dataset of ``cfg``, generating it on first use.

    Generation writes into a temporary folder that is renamed into place, so concurrent
    processes (e.g. distributed ranks) never see a half-written dataset.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root() / "phantom"
    final = root / cfg.key()
    if (final / "labels.csv").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    logger.info("generating phantom (%d images of %d px) into %s", cfg.size, cfg.image_size, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cfg.key()}-", dir=root))
    try:
        generate(cfg, tmp)
        try:
            tmp.rename(final)
        except OSError:  # another process finished first
            if not (final / "labels.csv").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> None:
    """``python -m hermes.data.phantom``: generate, or compare with real data."""
    from hermes.data import calibration

    parser = argparse.ArgumentParser(
        prog="python -m hermes.data.phantom", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--size", type=int, default=400)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--malignant-fraction", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write here instead of the cache")
    parser.add_argument("--calibrate", metavar="BUSI_DIR", help="print the phantom-vs-BUSI table")
    parser.add_argument("--figure", metavar="PNG", help="save a grid of samples with mask outlines")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = PhantomConfig(args.size, args.image_size, args.malignant_fraction, args.seed)
    folder = generate(cfg, args.out) if args.out else ensure_phantom(cfg)
    print(f"phantom: {cfg.size} images in {folder}")
    if args.figure:
        from hermes.data.figures import phantom_grid

        phantom_grid(folder, args.figure)
        print(f"figure: {args.figure}")
    if args.calibrate:
        print(calibration.comparison_table(folder, args.calibrate))


if __name__ == "__main__":
    main()
