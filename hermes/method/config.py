"""Configuration of the Hermes method: thresholds, loss weights, warm-up, switches.

Every default is the paper's value; every loss term can be switched off (weight 0 or its
flag) for ablations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MODES = ("hermes", "supervised")
PSEUDO_LABELS = ("dual", "fixed")


def _require(ok: bool, name: str, expected: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")


@dataclass
class LossWeights:
    """Weights of the paper's total losses.

    ``L_cls = cls_total * (CE_l + ce_u * CE_u + contrast_img * L_contrast_img)``;
    ``L_seg = seg_total * (L_seg_sup + dice_u * Dice_u + contrast_pix * L_contrast_pix)
    + itc * lambda(t) * L_itc``. Inside ``L_seg_sup = seg_ce * CE + seg_dice * Dice``.
    """

    cls_total: float = 1.1
    seg_total: float = 0.5
    ce_u: float = 0.1
    contrast_img: float = 0.2
    dice_u: float = 0.1
    contrast_pix: float = 0.8
    itc: float = 1.0
    seg_ce: float = 0.25
    seg_dice: float = 0.25
    dice_u_scale: float = 0.5

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            _require(
                isinstance(value, (int, float)) and math.isfinite(value) and value >= 0,
                f"method.weights.{name}",
                "a finite number >= 0",
                value,
            )


@dataclass
class MemoryBankConfig:
    """Per-class queues of past (detached) features extending the contrast sets (the project's
    option, not in the paper: off in the paper preset). ``size`` entries per class."""

    image: bool = False
    pixel: bool = False
    size: int = 256

    def __post_init__(self) -> None:
        _require(
            isinstance(self.size, int) and self.size >= 1,
            "method.memory.size",
            "an int >= 1",
            self.size,
        )


@dataclass
class MethodConfig:
    """Everything the method needs besides the networks.

    Attributes:
        mode: ``"hermes"`` (semi-supervised) or ``"supervised"`` (labeled data alone, same
            networks and supervised losses).
        pseudo_labels: ``"dual"`` (class-wise adaptive confidence AND entropy thresholds) or
            ``"fixed"`` (the ablation: confidence > ``fixed_threshold`` alone).
        tau_max, tau_min: bounds of the class-wise confidence threshold.
        eta_start: the entropy threshold starts at ``eta_start * ln C`` and ramps up to
            ``ln C`` (the paper: ``eta(t) = (0.75 + 0.25 rampup(t, T)) ln C``).
        temperature, base_temperature: of both contrastive losses.
        warmup_steps: the two contrastive losses start at this step (the paper: after a warm-up;
            the trainer converts ``train.warmup_epochs`` into steps).
        max_samples, max_views: ContrastiveSeg hard-anchor sampling.
        itc_every, itc_length: ``lambda(t) = rampup(t // itc_every, itc_length)``.
        detach_junctions: the project's decision where the paper is silent (as the authors'
            code): the classification embedding inside ``L_itc`` is detached (the segmentation features entering the attention are detached by the
            model, ``model.detach_seg_features``). ``False`` lets gradients flow, for experiments.
        concat_views: run the weak and strong unlabeled views through each branch as one batch
            (BatchNorm sees both views together); ``False`` runs two forward passes.
        unlabeled_truth_stats: log the pseudo-label accuracy against the unlabeled stream's true
            labels/masks when the batches carry them (monitoring only; never trained on).
        freeze_bn_unlabeled: the unlabeled passes normalise with their batch statistics but do
            not update BatchNorm's running statistics, so that these (used at test time) come
            from the labeled pass alone, the same path (with attention) as at test time. Not in
            the paper; off in the paper preset (docs/results.md says when it matters).
    """

    mode: str = "hermes"
    pseudo_labels: str = "dual"
    fixed_threshold: float = 0.95
    tau_max: float = 0.95
    tau_min: float = 0.5
    eta_start: float = 0.75
    temperature: float = 0.07
    base_temperature: float = 0.07
    warmup_steps: int = 0
    max_samples: int = 1024
    max_views: int = 100
    itc_every: int = 100
    itc_length: int = 40
    detach_junctions: bool = True
    concat_views: bool = True
    unlabeled_truth_stats: bool = True
    freeze_bn_unlabeled: bool = False
    weights: LossWeights = field(default_factory=LossWeights)
    memory: MemoryBankConfig = field(default_factory=MemoryBankConfig)

    def __post_init__(self) -> None:
        _require(self.mode in MODES, "method.mode", f"one of {MODES}", self.mode)
        _require(
            self.pseudo_labels in PSEUDO_LABELS,
            "method.pseudo_labels",
            f"one of {PSEUDO_LABELS}",
            self.pseudo_labels,
        )
        for name in ("fixed_threshold", "tau_max", "tau_min", "eta_start"):
            value = getattr(self, name)
            _require(
                isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
                f"method.{name}",
                "a number in [0, 1]",
                value,
            )
        _require(
            self.tau_min <= self.tau_max,
            "method.tau_min",
            f"<= method.tau_max ({self.tau_max})",
            self.tau_min,
        )
        for name in ("temperature", "base_temperature"):
            value = getattr(self, name)
            _require(
                isinstance(value, (int, float)) and value > 0,
                f"method.{name}",
                "a number > 0",
                value,
            )
        for name, low in (
            ("warmup_steps", 0),
            ("max_samples", 2),
            ("max_views", 1),
            ("itc_every", 1),
            ("itc_length", 1),
        ):
            value = getattr(self, name)
            _require(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"method.{name}",
                f"an int >= {low}",
                value,
            )
