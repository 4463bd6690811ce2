"""The variants of the comparison: supervised-only, Hermes, its ablations, and the standard
semi-supervised baselines (Mean Teacher, FixMatch).

Each variant is a name, a one-line description and the ``--set`` overrides (``(key, value)``
pairs of :func:`hermes.train.load_config`) that turn the base configuration into it. Every
variant trains the same networks with the same schedule on the same split; only the listed
fields differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One row of the tables.

    Attributes:
        name: short identifier (folder names, ``--variants``).
        label: the row title in the tables.
        overrides: ``(dotted key, value)`` pairs applied on top of the base configuration.
    """

    name: str
    label: str
    overrides: tuple[tuple[str, Any], ...] = ()


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("supervised", "supervised only", (("method.mode", "supervised"),)),
        Variant("hermes", "Hermes"),
        Variant(
            "fixed_threshold",
            "Hermes, fixed threshold 0.95 (no dual threshold)",
            (("method.pseudo_labels", "fixed"), ("method.fixed_threshold", 0.95)),
        ),
        Variant(
            "no_ias",
            "Hermes without IAS (no attention, no saliency)",
            (("model.attention", False), ("model.saliency", False)),
        ),
        Variant("no_itc", "Hermes without inter-task consistency", (("method.weights.itc", 0.0),)),
        Variant(
            "no_contrast",
            "Hermes without the contrastive terms (image and pixel)",
            (("method.weights.contrast_img", 0.0), ("method.weights.contrast_pix", 0.0)),
        ),
        # the method's mechanics at small scale (each differs from Hermes in one setting)
        Variant(
            "bn_every_pass",
            "Hermes, BatchNorm statistics from every pass",
            (("method.freeze_bn_unlabeled", False),),
        ),
        Variant(
            "pixel_authors",
            "Hermes, pixels: OR for Dice_u, entropy alone for the contrast (authors' code)",
            (("method.pixel_reliability", "authors"),),
        ),
        Variant(
            "warmup_unlabeled",
            "Hermes, warm-up of 10 unlabeled-loader epochs (authors' unit)",
            (
                ("warmup_epochs", 10.0),
                ("warmup_epochs_of", "unlabeled"),
                ("method.warmup_steps", 0),
            ),
        ),
        Variant(
            "views_apart",
            "Hermes, weak and strong views in separate passes",
            (("method.concat_views", False),),
        ),
        # improvements that are not in the paper
        Variant(
            "ema_teacher",
            "Hermes, pseudo-labels from an EMA teacher",
            (("method.teacher", "ema"),),
        ),
        Variant(
            "dist_align",
            "Hermes, class distribution alignment of the image pseudo-labels",
            (("method.distribution_alignment", True),),
        ),
        Variant(
            "strict_lesion",
            "Hermes, pixel class thresholds bounded below by 0.8 (stricter lesion pseudo-labels)",
            (("method.seg_tau_min", 0.8),),
        ),
        Variant(
            "itc_cls",
            "Hermes, inter-task consistency training the classification branch",
            (("method.itc_trains", "cls"),),
        ),
        Variant(
            "itc_seg",
            "Hermes, inter-task consistency training the segmentation branch (the paper)",
            (("method.itc_trains", "seg"),),
        ),
        Variant(
            "label_smooth",
            "Hermes, labeled image labels smoothed by 0.1",
            (("method.label_smoothing", 0.1),),
        ),
        Variant(
            "supervised_label_smooth",
            "supervised only, labeled image labels smoothed by 0.1",
            (("method.mode", "supervised"), ("method.label_smoothing", 0.1)),
        ),
        Variant(
            "dice_image",
            "Hermes, Dice losses per image",
            (("method.dice_reduction", "image"),),
        ),
        Variant(
            "supervised_dice_image",
            "supervised only, Dice loss per image",
            (("method.mode", "supervised"), ("method.dice_reduction", "image")),
        ),
        Variant("mean_teacher", "Mean Teacher", (("method.mode", "mean_teacher"),)),
        Variant("fixmatch", "FixMatch (threshold 0.95)", (("method.mode", "fixmatch"),)),
    )
}
"""All variants, in table order."""


def get_variants(names: list[str] | None) -> list[Variant]:
    """The variants called ``names`` in table order (``None``: all).

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if names is None:
        return list(VARIANTS.values())
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants: expected names among {list(VARIANTS)}, got {unknown}")
    wanted = set(names)
    return [v for v in VARIANTS.values() if v.name in wanted]
