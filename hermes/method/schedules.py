"""Ramp-ups and thresholds that depend on the training step (the paper's schedules)."""

from __future__ import annotations

import math


def rampup(t: float, length: float) -> float:
    """Sigmoid-shaped ramp-up ``exp(-5 (1 - clip(t, 0, T) / T)^2)``; 1 when ``length <= 0``."""
    if length <= 0:
        return 1.0
    phase = 1.0 - min(max(float(t), 0.0), float(length)) / float(length)
    return math.exp(-5.0 * phase * phase)


def entropy_threshold(step: int, total_steps: int, num_classes: int, start: float = 0.75) -> float:
    """``eta(t) = (start + (1 - start) * rampup(t, T)) * ln C`` in nats (the paper: start 0.75)."""
    return (start + (1.0 - start) * rampup(step, total_steps)) * math.log(num_classes)


def consistency_weight(step: int, every: int = 100, length: int = 40) -> float:
    """``lambda(t) = rampup(t // every, length)`` of the inter-task consistency loss."""
    return rampup(step // every, length)


def poly_factor(step: int, total_steps: int, power: float = 0.9) -> float:
    """Poly learning-rate factor ``(1 - t / T)^power``, clipped at 0."""
    return max(1.0 - step / max(total_steps, 1), 0.0) ** power
