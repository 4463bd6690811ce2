"""Configuration of the methods: Hermes (thresholds, loss weights, warm-up, switches) and the
two baselines beside it (Mean Teacher, FixMatch).

Every Hermes default is the paper's value; every loss term can be switched off (weight 0 or its
flag) for ablations. The baselines' defaults are their original papers' (see each class).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hermes.checks import require
from hermes.ops.supcon import FP32_PRECISIONS

MODES = ("hermes", "supervised", "mean_teacher", "fixmatch")
PSEUDO_LABELS = ("dual", "fixed")
PIXEL_RELIABILITY = ("and", "authors")
TEACHERS = ("student", "ema")
ITC_TRAINS = ("seg", "cls", "both")
DICE_REDUCTIONS = ("batch", "image")


@dataclass
class LossWeights:
    """Weights of the paper's total losses.

    ``L_cls = cls_total * (CE_l + ce_u * CE_u + contrast_img * L_contrast_img)``;
    ``L_seg = seg_total * (L_seg_sup + dice_u * Dice_u + contrast_pix * L_contrast_pix)
    + itc * lambda(t) * L_itc`` (``L_itc`` moves into ``L_cls`` with ``itc_trains: cls``). Inside ``L_seg_sup = seg_ce * CE + seg_dice * Dice``.
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
            require(
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
        require(
            isinstance(self.size, int) and self.size >= 1,
            "method.memory.size",
            "an int >= 1",
            self.size,
        )


def _check_numbers(section: str, obj: object, low: float, high: float = math.inf) -> None:
    for name, value in vars(obj).items():
        require(
            isinstance(value, (int, float))
            and not isinstance(value, bool)
            and low <= value <= high,
            f"method.{section}.{name}",
            f"a number in [{low}, {high}]",
            value,
        )


@dataclass
class MeanTeacherConfig:
    """Mean Teacher (Tarvainen & Valpola, 2017) for both branches (``method.mode: mean_teacher``).

    The teacher is an exponential moving average of the networks' weights,
    ``theta' <- a theta' + (1 - a) theta`` with ``a = min(1 - 1 / (t + 1), ema_decay)`` (the
    original's ramp); the consistency is the squared difference of the student's softmax on the
    strong view and the teacher's on the weak view, with weight
    ``weight * rampup(t, rampup * T)`` (the sigmoid ramp-up, over a fraction of the ``T`` steps).
    ``weight_cls`` 10 is the original's ImageNet setting; ``weight_seg`` 0.1 is SSL4MIS's
    per-pixel one.
    """

    ema_decay: float = 0.99
    weight_cls: float = 10.0
    weight_seg: float = 0.1
    rampup: float = 0.3

    def __post_init__(self) -> None:
        _check_numbers("mean_teacher", self, 0.0)
        require(
            self.ema_decay <= 1.0,
            "method.mean_teacher.ema_decay",
            "a number in [0, 1]",
            self.ema_decay,
        )


@dataclass
class FixMatchConfig:
    """FixMatch (Sohn et al., 2020) for both branches (``method.mode: fixmatch``): the weak
    view's prediction, kept where its confidence exceeds ``threshold``, is the target of a
    cross-entropy on the strong view, per image (``weight_cls``, the original's 1) and per pixel
    (``weight_seg``; 0.5 keeps UniMatch's ratio of unlabeled to supervised loss)."""

    threshold: float = 0.95
    weight_cls: float = 1.0
    weight_seg: float = 0.5

    def __post_init__(self) -> None:
        _check_numbers("fixmatch", self, 0.0)
        require(
            self.threshold <= 1.0, "method.fixmatch.threshold", "a number in [0, 1]", self.threshold
        )


@dataclass
class MethodConfig:
    """Everything the method needs besides the networks.

    Attributes:
        mode: ``"hermes"`` (semi-supervised), ``"supervised"`` (labeled data alone, same
            networks and supervised losses), or one of the baselines ``"mean_teacher"`` and
            ``"fixmatch"`` (same networks and supervised losses; their settings in
            ``mean_teacher`` and ``fixmatch``; ``freeze_bn_unlabeled`` applies to them too).
        pseudo_labels: ``"dual"`` (class-wise adaptive confidence AND entropy thresholds) or
            ``"fixed"`` (the ablation: confidence > ``fixed_threshold`` alone).
        tau_max, tau_min: bounds of the class-wise confidence threshold.
        seg_tau_min: the lower bound of the pixel (segmentation) class thresholds, ``None``
            (the paper) for ``tau_min``. A class's threshold falls towards the lower bound as
            its share of the predictions falls, so the lesion, a small share of the pixels,
            sits near it (``tau_max - (tau_max - seg_tau_min) * (1 - r_lesion)``) while the
            background stays near ``tau_max``: raising it makes the lesion pseudo-labels
            stricter and leaves the background's almost as they are. Unused by
            ``pseudo_labels: fixed``.
        pixel_reliability: which segmentation pixels the unlabeled terms use. ``"and"``
            (the project's reading of the paper): confident AND certain for both ``Dice_u`` and
            the pixel contrast. ``"authors"`` (the public code): confident OR certain for
            ``Dice_u``, certain (entropy test) alone for the pixel contrast; while the
            segmentation branch is unsure, AND keeps almost no background pixel.
        eta_start: the entropy threshold starts at ``eta_start * ln C`` and ramps up to
            ``ln C`` (the paper: ``eta(t) = (0.75 + 0.25 rampup(t, T)) ln C``).
        temperature, base_temperature: of both contrastive losses.
        contrast_fp32_precision: how the fused GPU kernels multiply the contrastive losses'
            fp32 features (``fp32_precision`` of :func:`hermes.ops.supcon_loss`): ``"ieee"``
            (fp32 accuracy) or ``"tf32"`` (tensor cores, about 1e-3 relative error: the class
            of the bf16 features an autocast network gives anyway).
        warmup_steps: the two contrastive losses start at this step (the paper: after a warm-up;
            the trainer converts ``train.warmup_epochs`` into steps).
        max_samples, max_views: ContrastiveSeg hard-anchor sampling.
        itc_every, itc_length: ``lambda(t) = rampup(t // itc_every, itc_length)``.
        itc_trains: which branch ``L_itc`` trains, the other branch's embedding being its
            detached target. ``"seg"`` (the paper's ``L_seg`` holds it; as the authors' code,
            where the classification optimiser discards its gradient): the segmentation branch.
            ``"cls"`` (not in the paper): the classification branch, pulled towards the
            segmentation branch's embedding, with the term in ``L_cls``. ``"both"``: gradients
            into both branches. (The segmentation features entering the attention are detached
            by the model, ``model.detach_seg_features``.)
        dice_reduction: how the segmentation Dice losses (the labeled one and ``Dice_u``) sum.
            ``"batch"`` (the paper's): over every pixel of the batch, so that large lesions
            outweigh small ones. ``"image"`` (not in the paper): per image, then the mean over
            the images, which weighs every lesion alike as the per-image Dice of the
            evaluation does.
        label_smoothing: the labeled classification cross-entropy ``CE_l`` against smoothed
            labels, ``1 - s`` on the true class plus ``s / C`` on every class (Szegedy et al.,
            2016; not in the paper, 0 there), in every mode: a classifier fitted to a few
            dozen images otherwise drives its labeled loss to zero and its confidence on
            unlabeled images to one, right or wrong, the confidence the pseudo-label thresholds
            read.
        concat_views: run the weak and strong unlabeled views through each branch as one batch
            (BatchNorm sees both views together); ``False`` runs two forward passes.
        unlabeled_truth_stats: log the pseudo-label accuracy against the unlabeled stream's true
            labels/masks when the batches carry them (monitoring only; never trained on).
        freeze_bn_unlabeled: the unlabeled passes normalise with their batch statistics but do
            not update BatchNorm's running statistics, so that these (used at test time) come
            from the labeled pass alone, the same path (with attention) as at test time. Not in
            the paper; off in the paper preset (docs/results.md says when it matters).
        teacher: where Hermes's pseudo-labels come from. ``"student"`` (the paper): the
            network's own weak-view prediction. ``"ema"`` (not in the paper): an exponential
            moving average of the networks (``teacher_decay``, Mean Teacher's update) predicts
            the weak view as at test time (saliency, attention); the student's own views still
            give the contrastive features. Costs one more forward pass of the weak view.
        teacher_decay: the EMA decay of ``teacher: ema``.
        distribution_alignment: align the classification pseudo-labels' class distribution
            with the labeled one before the dual thresholds (ReMixMatch's distribution
            alignment, not in the paper): the unlabeled image's probabilities times the running
            labeled class frequencies over the running mean unlabeled prediction, renormalised
            (:class:`hermes.method.alignment.DistributionAlignment`).
        alignment_momentum: the EMA decay of both running averages of the alignment.
        alignment_target: the class frequencies the aligned pseudo-labels follow: ``None``
            (ReMixMatch's), the running frequencies of the labeled batches; or one positive
            number per class (normalised), the unlabeled images' known class frequencies,
            e.g. a dataset's published composition when the labeled images were drawn
            class-balanced from an unbalanced dataset.
    """

    mode: str = "hermes"
    pseudo_labels: str = "dual"
    fixed_threshold: float = 0.95
    pixel_reliability: str = "and"
    tau_max: float = 0.95
    tau_min: float = 0.5
    seg_tau_min: float | None = None
    eta_start: float = 0.75
    temperature: float = 0.07
    base_temperature: float = 0.07
    contrast_fp32_precision: str = "ieee"
    warmup_steps: int = 0
    max_samples: int = 1024
    max_views: int = 100
    itc_every: int = 100
    itc_length: int = 40
    itc_trains: str = "seg"
    dice_reduction: str = "batch"
    label_smoothing: float = 0.0
    concat_views: bool = True
    unlabeled_truth_stats: bool = True
    freeze_bn_unlabeled: bool = False
    teacher: str = "student"
    teacher_decay: float = 0.99
    distribution_alignment: bool = False
    alignment_momentum: float = 0.99
    alignment_target: tuple[float, ...] | None = None
    weights: LossWeights = field(default_factory=LossWeights)
    memory: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    mean_teacher: MeanTeacherConfig = field(default_factory=MeanTeacherConfig)
    fixmatch: FixMatchConfig = field(default_factory=FixMatchConfig)

    @property
    def dice_per_image(self) -> bool:
        """Whether the segmentation Dice losses are computed per image (``dice_reduction``)."""
        return self.dice_reduction == "image"

    @property
    def pixel_tau_min(self) -> float:
        """The lower bound of the pixel class thresholds (``seg_tau_min``, else ``tau_min``)."""
        return self.tau_min if self.seg_tau_min is None else self.seg_tau_min

    def __post_init__(self) -> None:
        require(self.mode in MODES, "method.mode", f"one of {MODES}", self.mode)
        require(
            self.pseudo_labels in PSEUDO_LABELS,
            "method.pseudo_labels",
            f"one of {PSEUDO_LABELS}",
            self.pseudo_labels,
        )
        require(self.teacher in TEACHERS, "method.teacher", f"one of {TEACHERS}", self.teacher)
        require(
            isinstance(self.teacher_decay, (int, float)) and 0.0 <= self.teacher_decay <= 1.0,
            "method.teacher_decay",
            "a number in [0, 1]",
            self.teacher_decay,
        )
        require(
            isinstance(self.distribution_alignment, bool),
            "method.distribution_alignment",
            "true or false",
            self.distribution_alignment,
        )
        for name in ("alignment_momentum", "label_smoothing"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float))
                and not isinstance(value, bool)
                and 0.0 <= value < 1.0,
                f"method.{name}",
                "a number in [0, 1)",
                value,
            )
        if self.alignment_target is not None:
            target = self.alignment_target
            require(
                isinstance(target, (list, tuple))
                and len(target) >= 2
                and all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0
                    for t in target
                ),
                "method.alignment_target",
                "null or a list of one positive class frequency per class",
                target,
            )
        require(
            self.itc_trains in ITC_TRAINS,
            "method.itc_trains",
            f"one of {ITC_TRAINS}",
            self.itc_trains,
        )
        require(
            self.dice_reduction in DICE_REDUCTIONS,
            "method.dice_reduction",
            f"one of {DICE_REDUCTIONS}",
            self.dice_reduction,
        )
        require(
            self.pixel_reliability in PIXEL_RELIABILITY,
            "method.pixel_reliability",
            f"one of {PIXEL_RELIABILITY}",
            self.pixel_reliability,
        )
        for name in ("fixed_threshold", "tau_max", "tau_min", "eta_start"):
            value = getattr(self, name)
            require(
                isinstance(value, (int, float)) and 0.0 <= value <= 1.0,
                f"method.{name}",
                "a number in [0, 1]",
                value,
            )
        require(
            self.tau_min <= self.tau_max,
            "method.tau_min",
            f"<= method.tau_max ({self.tau_max})",
            self.tau_min,
        )
        if self.seg_tau_min is not None:
            require(
                isinstance(self.seg_tau_min, (int, float))
                and not isinstance(self.seg_tau_min, bool)
                and 0.0 <= self.seg_tau_min <= self.tau_max,
                "method.seg_tau_min",
                f"null or a number in [0, method.tau_max ({self.tau_max})]",
                self.seg_tau_min,
            )
        require(
            self.contrast_fp32_precision in FP32_PRECISIONS,
            "method.contrast_fp32_precision",
            f"one of {FP32_PRECISIONS}",
            self.contrast_fp32_precision,
        )
        for name in ("temperature", "base_temperature"):
            value = getattr(self, name)
            require(
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
            require(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"method.{name}",
                f"an int >= {low}",
                value,
            )
