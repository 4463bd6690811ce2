"""Validation against the paper: supervised-only, Hermes and ablations over label budgets and
seeds on shared saved splits, summarised as the paper's Tables 1 (Dice) and 2 (accuracy).

``python -m hermes.experiments --help``; see :mod:`hermes.experiments.runner` for the folder
layout and the resume rules.
"""

from hermes.experiments.runner import (
    Matrix,
    RunSpec,
    ensure_split,
    execute,
    fingerprint,
    run_config,
    run_matrix,
    split_path,
)
from hermes.experiments.tables import markdown, plot, summarize
from hermes.experiments.variants import VARIANTS, Variant, get_variants

__all__ = [
    "Matrix",
    "RunSpec",
    "VARIANTS",
    "Variant",
    "ensure_split",
    "execute",
    "fingerprint",
    "get_variants",
    "markdown",
    "plot",
    "run_config",
    "run_matrix",
    "split_path",
    "summarize",
]
