"""The one validator behind the configuration sections' checks: an error that names the field,
what it expects and what it got."""

from __future__ import annotations


def require(ok: bool, name: str, expected: str, value: object) -> None:
    """``ValueError("<name>: expected <expected>, got <value!r>")`` unless ``ok``."""
    if not ok:
        raise ValueError(f"{name}: expected {expected}, got {value!r}")
