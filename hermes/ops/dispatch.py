"""Backend selection for the fused ops.

Each op has up to four implementations (``torch``, ``triton``, ``cpp``, ``cuda``). Every
implementation says, for given inputs, why it *cannot* take them (as xformers'
``not_supported_reasons``); the dispatcher walks a priority list by device and takes the first
implementation with no reasons. A forced backend (argument ``backend=`` or the environment
variables ``HERMES_BACKEND_<OP>`` / ``HERMES_BACKEND``) that cannot serve raises an error that
lists every reason. A backend whose module fails to import (a missing compiled extension, no
Triton) is reported once in the log, never raised at import.

Automatic choice on CUDA: ``triton``, then ``cuda``, then the reference; but the ``cuda``
``supcon_loss`` is never chosen automatically where Triton is available (it has no data reuse:
one block per anchor, no shared-memory tiling, no tensor cores), so inputs the Triton kernels
decline (fp64, d > 256) go to the reference. ``backend="cuda"`` still selects it.

Determinism (:data:`NONDETERMINISTIC`): the GPU ``dual_threshold`` kernels (``triton``,
``cuda``) sum floats with atomics, in an order that can change from run to run. Under
``torch.use_deterministic_algorithms(True)`` they are not chosen on CUDA tensors (the reference
is, with PyTorch's deterministic kernels) and forcing one is an error; with ``warn_only=True``
they stay usable and a warning says so once. The other GPU kernels add floats in a fixed order
(per-block partial sums added by torch, no atomics), so they stay available in that mode:
``inter_task_attention`` (``triton``, ``cuda``) and the ``cuda`` ``supcon_loss`` give the same
bits from run to run in any mode, the ``triton`` ``supcon_loss`` under the mode (its class sums
use ``index_add_``, which PyTorch makes deterministic there).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

logger = logging.getLogger("hermes.ops")

BACKENDS = ("torch", "triton", "cpp", "cuda")
OPS = ("supcon_loss", "dual_threshold", "inter_task_attention")

# Modules that register the fast backends when imported. Imported lazily, on the first dispatch.
_BACKEND_MODULES: dict[str, str] = {
    "triton": "hermes.ops.triton_backend",
    "cpp": "hermes.ops.cpp_backend",
    "cuda": "hermes.ops.cpp_backend",
}

# Automatic choice, fastest first, by the inputs' device type. A backend may still decline a
# given input for automatic use through ``auto_reasons`` (e.g. slower than the reference there).
AUTO_ORDER: dict[str, tuple[str, ...]] = {
    "cuda": ("triton", "cuda", "torch"),
    "cpu": ("cpp", "torch"),
}


def _no_reasons(**_: Any) -> list[str]:
    return []


@dataclass(frozen=True)
class Implementation:
    """One backend's implementation of one op.

    ``fn`` takes the op's normalised keyword arguments and returns its kernels' outputs only
    (the public op checks the inputs and applies weights, reductions and statistics, alike for
    every backend). ``not_supported_reasons`` takes the same and returns why this
    implementation cannot compute them at all; ``auto_reasons`` returns why it should not be
    *chosen automatically* for them (it may still be forced).
    """

    op: str
    backend: str
    fn: Callable[..., Any]
    not_supported_reasons: Callable[..., list[str]] = _no_reasons
    auto_reasons: Callable[..., list[str]] = field(default=_no_reasons)


# (op, device type): the backends whose float sums there depend on the order of atomics.
NONDETERMINISTIC: dict[tuple[str, str], tuple[str, ...]] = {
    ("dual_threshold", "cuda"): ("triton", "cuda"),
}

_REGISTRY: dict[str, dict[str, Implementation]] = {op: {} for op in OPS}
_LOAD_ERRORS: dict[str, str] = {}
_LOADED: set[str] = set()
_LOGGED: set[tuple] = set()


def register(
    op: str,
    backend: str,
    fn: Callable[..., Any],
    not_supported_reasons: Callable[..., list[str]] = _no_reasons,
    auto_reasons: Callable[..., list[str]] = _no_reasons,
) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op``."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {OPS}")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    _REGISTRY[op][backend] = Implementation(op, backend, fn, not_supported_reasons, auto_reasons)


def load_backends() -> dict[str, str]:
    """Import every backend module once. Returns ``{backend: why it is unavailable}``."""
    for module in set(_BACKEND_MODULES.values()):
        if module in _LOADED:
            continue
        _LOADED.add(module)
        try:
            importlib.import_module(module)
        except Exception as exc:  # noqa: BLE001 - any failure means "not available", said once
            reason = f"{module} could not be imported ({type(exc).__name__}: {exc})"
            for name, mod in _BACKEND_MODULES.items():
                if mod == module:
                    _LOAD_ERRORS[name] = reason
            logger.info("hermes.ops: backend unavailable: %s", reason)
    return dict(_LOAD_ERRORS)


def _reasons(op: str, backend: str, inputs: dict[str, Any]) -> list[str]:
    impl = _REGISTRY[op].get(backend)
    if impl is None:
        return [_LOAD_ERRORS.get(backend, f"backend {backend!r} has no implementation of {op}")]
    return list(impl.not_supported_reasons(**inputs))


def determinism_reasons(op: str, backend: str, device_type: str) -> list[str]:
    """Why ``backend``'s ``op`` may not run under ``torch.use_deterministic_algorithms(True)`` on
    this device type (empty when it may, or when only a warning was asked for)."""
    if backend not in NONDETERMINISTIC.get((op, device_type), ()):
        return []
    if not torch.are_deterministic_algorithms_enabled():
        return []
    if torch.is_deterministic_algorithms_warn_only_enabled():
        key = ("deterministic-warning", op, backend, device_type)
        if key not in _LOGGED:
            _LOGGED.add(key)
            logger.warning(
                "hermes.ops.%s: backend %r on %s sums floats with atomics (not deterministic)",
                op,
                backend,
                device_type,
            )
        return []
    return [
        "its float sums are not deterministic and torch.use_deterministic_algorithms(True) is "
        "set (the torch backend is)"
    ]


def is_registered(op: str, backend: str) -> bool:
    """Whether ``backend`` has an implementation of ``op`` (its module imported); imports
    nothing, so it may be called under ``torch.compile``."""
    return backend in _REGISTRY[op]


def not_supported_reasons(op: str, backend: str, inputs: dict[str, Any]) -> list[str]:
    """Why ``backend`` cannot run ``op`` on ``inputs`` (the op's normalised keyword arguments);
    empty when it can. A backend that failed to import gives its import error."""
    load_backends()
    return _reasons(op, backend, inputs)


def requested_backend(op: str, backend: str | None) -> str | None:
    """The backend asked for by argument or environment (``None`` or ``"auto"``: automatic)."""
    name = (
        backend
        or os.environ.get(f"HERMES_BACKEND_{op.upper()}")
        or os.environ.get("HERMES_BACKEND")
    )
    if name in (None, "", "auto"):
        return None
    if name not in BACKENDS:
        raise ValueError(
            f"hermes.ops.{op}: backend must be one of {('auto',) + BACKENDS}, got {name!r}"
        )
    return name


def select(
    op: str, backend: str | None, device: torch.device, inputs: dict[str, Any]
) -> Implementation:
    """Pick the implementation of ``op`` for ``inputs`` (see the module docstring).

    Under ``torch.compile`` the backend modules are not imported (Dynamo cannot trace an
    import): call :func:`load_backends` before compiling, as the trainer does.
    """
    if not torch.compiler.is_compiling():
        load_backends()
    forced = requested_backend(op, backend)
    if forced is not None:
        reasons = _reasons(op, forced, inputs) + determinism_reasons(op, forced, device.type)
        if reasons:
            raise RuntimeError(
                f"hermes.ops.{op}: backend {forced!r} cannot run these inputs: "
                + "; ".join(reasons)
            )
        return _REGISTRY[op][forced]

    declined: list[str] = []
    for name in AUTO_ORDER.get(device.type, ("torch",)):
        impl = _REGISTRY[op].get(name)
        reasons = _reasons(op, name, inputs) + determinism_reasons(op, name, device.type)
        if impl is not None and not reasons:
            reasons = list(impl.auto_reasons(**inputs))
        if not reasons:
            if declined:
                _log_choice(op, device.type, name, declined)
            return impl  # type: ignore[return-value]
        declined.append(f"{name}: " + ", ".join(reasons))
    raise RuntimeError(f"hermes.ops.{op}: no backend can run these inputs: " + "; ".join(declined))


def _log_choice(op: str, device: str, name: str, declined: list[str]) -> None:
    """Log an automatic choice once per (op, device, backend) at INFO; the same choice for
    other reasons (e.g. other input sizes) once each at DEBUG."""
    choice = (op, device, name)
    detail = (*choice, tuple(declined))
    if detail in _LOGGED:
        return
    level = logging.DEBUG if choice in _LOGGED else logging.INFO
    _LOGGED.update((choice, detail))
    logger.log(level, "hermes.ops.%s on %s: using %r (%s)", op, device, name, "; ".join(declined))


def available() -> dict[str, dict[str, str]]:
    """``{op: {backend: "ok" or why not}}`` for ``python -m hermes.info``."""
    load_backends()
    table: dict[str, dict[str, str]] = {}
    for op in OPS:
        table[op] = {}
        for name in BACKENDS:
            if name in _REGISTRY[op]:
                table[op][name] = "registered"
            else:
                table[op][name] = _LOAD_ERRORS.get(name, "not implemented")
    return table
