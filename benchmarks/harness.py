"""Shared machinery of the benchmark suites: backends, devices, timing, peak memory, metadata.

Every suite parametrises ``backend x mode x shape`` (see ``conftest.py``) and calls
:func:`run_case`, which warms the callable up, measures its peak memory once, times it with
pytest-benchmark and records in ``extra_info`` what a reader needs to trust the number.

Backends are taken from :mod:`hermes.ops.dispatch` at collection time, so a backend that lands
later (Triton, the C++ extension, CUDA) is benchmarked without editing the suites; one that cannot
run the inputs is skipped with the dispatcher's own reason. Besides the dispatch backends there are
*baselines*: ``torch.compile`` of the reference and, per op, the libraries a user would otherwise
pick (pytorch-metric-learning's ``SupConLoss``, Inf-CL).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from hermes.ops import dispatch

logger = logging.getLogger("hermes.benchmarks")

COMPILE = "torch.compile"  # torch.compile of the op's PyTorch reference (default settings)
MODES = ("fwd", "fwd+bwd")
MIB = 2**20

# Enough recompilations for every shape, mode and dtype of one run: past the limit dynamo falls
# back to eager silently, and the "torch.compile" rows would measure eager code.
torch._dynamo.config.recompile_limit = 256
torch._dynamo.config.accumulated_recompile_limit = 4096


def device() -> torch.device:
    """The device the suites run on: the current CUDA device if there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def backends(op: str, baselines: tuple[str, ...] = ()) -> list[str]:
    """The candidates benchmarked for ``op``: every dispatch backend, ``torch.compile`` of the
    reference, then the outside ``baselines``. Unavailable ones are skipped per case, not here."""
    if op not in dispatch.OPS:
        raise ValueError(f"unknown op {op!r}; expected one of {dispatch.OPS}")
    return [*dispatch.BACKENDS, COMPILE, *baselines]


def skip_reason(op: str, backend: str, inputs: dict[str, Any], dev: torch.device) -> str | None:
    """Why the dispatch ``backend`` cannot be benchmarked on ``inputs`` (``None``: it can).

    The reason is the dispatcher's own (forced-backend error listing every reason), except for
    Triton on a CPU, which runs only under ``TRITON_INTERPRET=1``, an interpreter meant for tests.
    """
    if backend == "triton" and dev.type == "cpu":
        return (
            "triton on the CPU runs only under TRITON_INTERPRET=1, an interpreter far too slow to "
            "benchmark; the Triton kernels are measured on a GPU"
        )
    try:
        dispatch.select(op, backend, dev, inputs)
    except RuntimeError as exc:
        return str(exc)
    return None


@functools.cache
def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """One ``torch.compile`` wrapper per reference, shared by all cases of a run (so shapes after
    the first reuse a dynamic-shape graph, as a user's training loop would)."""
    return torch.compile(fn)


def synchronize(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ---------------------------------------------------------------------------------------------
# Peak memory
# ---------------------------------------------------------------------------------------------


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux":
        return None
    libc = ctypes.CDLL("libc.so.6")
    # A fixed mmap threshold (128 KiB) stops glibc from raising it dynamically, so that large
    # tensors are always mmapped and their pages counted afresh by the resident-set peak.
    libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
    return libc


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no field {field!r}")


def _reset_cpu_peak() -> bool:
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM (peak resident set) to the current resident set
    except OSError:
        return False
    return True


def peak_memory(fn: Callable[[], Any], dev: torch.device) -> int | None:
    """Peak memory (bytes) allocated by one call of ``fn`` above what was live before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
    CPU (Linux): the process's peak resident set (``VmHWM``, reset through
    ``/proc/self/clear_refs``) minus the resident set before the call: every page the call
    touches counts, including temporaries inside compiled extensions. Returns ``None`` where
    neither is available.
    """
    if dev.type == "cuda":
        synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        before = torch.cuda.memory_allocated(dev)
        out = fn()
        synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - before
        del out
        return peak
    if not _reset_cpu_peak():
        return None
    before = _status_bytes("VmRSS")
    out = fn()
    peak = _status_bytes("VmHWM") - before
    del out
    return max(peak, 0)


# ---------------------------------------------------------------------------------------------
# Metadata
# ---------------------------------------------------------------------------------------------


@functools.cache
def device_name(dev_type: str) -> str:
    """``"NVIDIA H100 80GB HBM3"`` or ``"AMD EPYC (2 cores)"``: the CPU's model name from
    /proc/cpuinfo (``platform.processor()`` elsewhere) and its core count."""
    if dev_type == "cuda":
        return torch.cuda.get_device_name()
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


@functools.cache
def versions() -> dict[str, str]:
    """Versions of torch, triton, hermes and the compiled extension's availability."""
    import hermes

    out = {"torch": torch.__version__, "hermes": hermes.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "not installed"
    try:
        import pytorch_metric_learning

        out["pytorch_metric_learning"] = pytorch_metric_learning.__version__
    except ImportError:
        out["pytorch_metric_learning"] = "not installed"
    return out


# ---------------------------------------------------------------------------------------------
# Running one case
# ---------------------------------------------------------------------------------------------


def run_case(
    benchmark: Any,
    fn: Callable[[], Any],
    *,
    group: str,
    dev: torch.device,
    extra: dict[str, Any],
    work: dict[str, float] | None = None,
    budget_s: float = 1.0,
    max_rounds: int = 50,
    warmup: bool = True,
) -> float:
    """Warm ``fn`` up, measure its peak memory, time it, and fill ``benchmark.extra_info``.

    Args:
        benchmark: the pytest-benchmark fixture.
        fn: one call of the op (forward, or forward and backward); it must leave no state that
            changes the next call's cost.
        group: pytest-benchmark group; the cases of one group are compared side by side.
        dev: the device (``fn`` is synchronised on CUDA so the time covers the kernels).
        extra: metadata (backend, mode, shape, dtype, ...), stored as is.
        work: ``{"flop": ...}`` and/or ``{"bytes": ...}`` of one call; the rates at the median
            time are stored as ``gflop_per_s`` / ``gb_per_s``.
        budget_s: time to spend on measured rounds (at least 3 rounds, at most ``max_rounds``).
        max_rounds: at most this many measured rounds (1 for calls of many seconds).
        warmup: make a first, untimed call (``False`` when the caller has already called ``fn``).

    Returns:
        The median time of one call in seconds (the calibration call's time when pytest-benchmark
        is disabled).
    """

    def call() -> Any:
        out = fn()
        synchronize(dev)
        return out

    first_s = None
    if warmup:
        start = time.perf_counter()
        call()  # warm-up: compilation, autotuning, allocator caches
        first_s = round(time.perf_counter() - start, 4)
    start = time.perf_counter()
    peak = peak_memory(call, dev)  # a second call, measured for memory and timed for calibration
    once_s = max(time.perf_counter() - start, 1e-7)

    iterations = max(1, min(1000, int(2e-3 / once_s)))  # amortise the timer for microsecond calls
    rounds = max(min(3, max_rounds), min(max_rounds, int(budget_s / (once_s * iterations))))
    benchmark.group = group
    benchmark.extra_info.update(extra)
    benchmark.extra_info.update(
        device=device_name(dev.type),
        device_type=dev.type,
        versions=versions(),
        peak_memory_bytes=peak,
        peak_memory_mib=None if peak is None else round(peak / MIB, 2),
        first_call_s=first_s,
    )
    benchmark.pedantic(call, rounds=rounds, iterations=iterations, warmup_rounds=0)

    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return once_s
    median = benchmark.stats.stats.median
    for key, value in (work or {}).items():
        benchmark.extra_info[key] = value
        if key == "flop":
            benchmark.extra_info["gflop_per_s"] = round(value / median / 1e9, 3)
        elif key == "bytes":
            benchmark.extra_info["gb_per_s"] = round(value / median / 1e9, 3)
    return float(median)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def available_memory(dev: torch.device) -> int:
    """Bytes that one more allocation may take on ``dev``: free GPU memory, or the CPU's
    ``MemAvailable`` (the machine may be shared: callers keep a margin)."""
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3


def skip_unless_fits(needed_bytes: float, dev: torch.device, what: str) -> None:
    """Skip the case when ``what`` would need more than half the memory available now."""
    import pytest

    have = available_memory(dev)
    if needed_bytes > 0.5 * have:
        pytest.skip(
            f"{what} needs about {needed_bytes / 2**30:.1f} GiB, more than half of the "
            f"{have / 2**30:.1f} GiB available on {dev.type} now"
        )
