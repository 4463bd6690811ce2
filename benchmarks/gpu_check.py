"""The GPU check: ``make gpu-check OUT=DIR`` (``python benchmarks/gpu_check.py --out DIR``).

One command for a machine with a CUDA GPU, under 8 minutes on an H100 or H200. In order:

1. **device**: name, compute capability, memory, versions, and the peaks the rates are set
   against: the data-sheet figure where the device is known (H100, H200, A100) and a measured
   one (a large cuBLAS GEMM for TFLOP/s, a device-to-device copy for GB/s).
2. **extension**: whether ``hermes._C`` carries its CUDA kernels (``make setup`` builds them
   where a GPU is visible; ``make gpu-check`` runs it first).
3. **tests**: ``pytest -m gpu tests`` (every ``gpu``-marked test), counts and failures from its
   JUnit XML; stopped after ``--test-timeout`` seconds.
4. **benchmarks**: the GPU side of the suites in ``benchmarks/`` at three sizes per op, forward
   and forward + backward, for the ``triton``, ``cuda`` and ``torch`` backends (a backend that
   cannot run a case is listed with the dispatcher's reason): CUDA-event timing (median of up
   to 50 calls after 3 warm-up calls), TFLOP/s (``supcon_loss``) or GB/s (the other two, the
   bytes any implementation must move) and their fraction of the peaks. The ops take turns,
   and no new case starts after ``--bench-budget`` seconds.

``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` are rewritten after every step and every
benchmark case, so a run that is cut short leaves what it did. Without a CUDA device every
step is skipped, saying so, the summary is still written, and the exit status is 0; on a GPU
it is 1 when a test fails or the CUDA kernels are missing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent

# Data-sheet peaks (dense, no sparsity) by device name: TFLOP/s per dtype and memory GB/s.
# Matched by substring, first match wins; unknown devices get the measured peaks only.
DATASHEET: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bfloat16": 989.0, "float16": 989.0, "tf32": 494.0, "float32": 67.0, "gb_s": 4800}),
    (
        "H100 PCIe",
        {"bfloat16": 756.0, "float16": 756.0, "tf32": 378.0, "float32": 51.0, "gb_s": 2000},
    ),
    ("H100", {"bfloat16": 989.0, "float16": 989.0, "tf32": 494.0, "float32": 67.0, "gb_s": 3350}),
    ("A100", {"bfloat16": 312.0, "float16": 312.0, "tf32": 156.0, "float32": 19.5, "gb_s": 2039}),
]


class Report:
    """The summary, written to ``out/gpu_check.json`` and ``out/gpu_check.md`` on every update."""

    def __init__(self, out: Path) -> None:
        self.out = out
        out.mkdir(parents=True, exist_ok=True)
        self.data: dict[str, Any] = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "status": "running",
            "steps": {},
            "benchmarks": [],
        }
        self.t0 = time.perf_counter()

    def step(self, key: str, /, **fields: Any) -> None:
        self.data["steps"][key] = fields
        self.write()

    def bench(self, row: dict[str, Any]) -> None:
        self.data["benchmarks"].append(row)
        self.write()

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.write()

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")
        (self.out / "gpu_check.md").write_text(markdown(self.data))


def markdown(data: dict[str, Any]) -> str:
    lines = [
        "# GPU check",
        "",
        f"- status: **{data['status']}**",
        f"- started: {data['started']}, elapsed {data.get('elapsed_s', 0)} s",
        "",
        "## Steps",
        "",
        "| step | status | details |",
        "|---|---|---|",
    ]
    for name, fields in data["steps"].items():
        details = "; ".join(
            f"{k}: {v}" for k, v in fields.items() if k != "status" and not isinstance(v, dict)
        )
        lines.append(f"| {name} | {fields.get('status', '')} | {details} |")
    rows = data["benchmarks"]
    if rows:
        lines += [
            "",
            "## Benchmarks",
            "",
            "Median of CUDA-event timed calls; fractions of the data-sheet peak (measured peak).",
            "",
            "| op | case | dtype | mode | backend | median | rate | of peak |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            if "skipped" in r:
                rate, frac, median = "", "", f"skipped: {r['skipped']}"
            else:
                median = f"{r['median_ms']:.3f} ms"
                unit = "TFLOP/s" if "tflop_s" in r else "GB/s"
                rate = f"{r.get('tflop_s', r.get('gb_s'))} {unit}"
                frac = (
                    _fraction(r.get("of_datasheet_peak"))
                    + f" ({_fraction(r.get('of_measured_peak'))})"
                )
            lines.append(
                f"| {r['op']} | {r['case']} | {r['dtype']} | {r['mode']} | {r['backend']} | "
                f"{median} | {rate} | {frac} |"
            )
    return "\n".join(lines) + "\n"


def _fraction(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------


def device_step(report: Report) -> dict[str, float]:
    """Device facts and peaks; returns the peaks ({dtype: TFLOP/s, "gb_s": GB/s})."""
    import torch

    props = torch.cuda.get_device_properties(0)
    sheet = next((p for key, p in DATASHEET if key in props.name), {})
    measured = measure_peaks()
    report.step(
        "device",
        status="ok",
        name=props.name,
        capability=f"{props.major}.{props.minor}",
        memory_gib=round(props.total_memory / 2**30, 1),
        sms=props.multi_processor_count,
        versions=versions(),
        datasheet_peaks=sheet or "unknown device",
        measured_peaks=measured,
    )
    return {"sheet": sheet, "measured": measured}


def versions() -> dict[str, str]:
    import torch

    out = {"torch": torch.__version__, "cuda": str(torch.version.cuda)}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = "not installed"
    return out


def measure_peaks() -> dict[str, float]:
    """Achieved TFLOP/s of an 8192^3 cuBLAS GEMM per dtype (fp32 with TF32 off and on) and
    GB/s of a 1 GiB device-to-device copy (read + write)."""
    import torch

    out: dict[str, float] = {}
    n = 8192
    for name, dtype, tf32 in (
        ("bfloat16", torch.bfloat16, False),
        ("float16", torch.float16, False),
        ("float32", torch.float32, False),
        ("tf32", torch.float32, True),
    ):
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        try:
            ms = cuda_time(lambda a=a, b=b: a @ b, max_calls=10)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
        out[name] = round(2 * n**3 / (ms * 1e-3) / 1e12, 1)
        del a, b
    src = torch.empty(2**28, device="cuda", dtype=torch.float32)  # 1 GiB
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), max_calls=20)
    out["gb_s"] = round(2 * src.numel() * 4 / (ms * 1e-3) / 1e9, 1)
    torch.cuda.empty_cache()
    return out


def extension_step(report: Report) -> bool:
    try:
        from hermes.ops import cpp_backend
    except Exception as exc:  # noqa: BLE001 - reported, not raised
        report.step("extension", status="failed", reason=f"hermes._C not importable: {exc}")
        return False
    ops = ("supcon_fwd", "dual_threshold_pass1", "inter_task_attention_fwd")
    missing = [op for op in ops if not cpp_backend.has_kernel(op, "cuda")]
    if missing:
        report.step(
            "extension",
            status="failed",
            reason=f"hermes._C was built without CUDA kernels ({', '.join(missing)}); "
            "run `make setup` (or pip install -e .) on this machine",
        )
        return False
    report.step("extension", status="ok", cuda_kernels=", ".join(ops))
    return True


def tests_step(report: Report, timeout_s: float) -> bool:
    xml = report.out / "gpu_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "tests", "-q", f"--junitxml={xml}"]
    report.step("tests", status="running", command=" ".join(cmd[1:]))
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
        status = "passed" if proc.returncode == 0 else f"failed (pytest exit {proc.returncode})"
        tail = (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as exc:
        status = f"timed out after {timeout_s:.0f} s"
        partial = exc.stdout or ""
        tail = (partial.decode(errors="replace") if isinstance(partial, bytes) else partial)[-4000:]
    (report.out / "gpu_tests.log").write_text(tail)
    counts = junit_counts(xml)
    report.step(
        "tests",
        status=status,
        seconds=round(time.perf_counter() - start, 1),
        command=" ".join(cmd[1:]),
        **counts,
    )
    return status == "passed"


def junit_counts(xml: Path) -> dict[str, Any]:
    """Passed / failed / errors / skipped counts and the failing tests' names from JUnit XML."""
    if not xml.exists():
        return {"junit": "no JUnit XML written"}
    root = ET.parse(xml).getroot()
    cases = list(root.iter("testcase"))
    failed = [
        f"{c.get('classname')}::{c.get('name')}"
        for c in cases
        if c.find("failure") is not None or c.find("error") is not None
    ]
    skipped = sum(1 for c in cases if c.find("skipped") is not None)
    return {
        "collected": len(cases),
        "passed": len(cases) - len(failed) - skipped,
        "failed": len(failed),
        "skipped": skipped,
        "failures": ", ".join(failed[:20]) or "none",
    }


# ---------------------------------------------------------------------------------------------
# Benchmarks
# ---------------------------------------------------------------------------------------------


def cuda_time(
    fn: Callable[[], Any], warmup: int = 3, max_calls: int = 50, budget_s: float = 0.3
) -> float:
    """Median milliseconds of ``fn`` by CUDA events, after ``warmup`` untimed calls."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_calls and (len(times) < 3 or spent < budget_s * 1e3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
        spent += times[-1]
    return statistics.median(times)


BACKENDS = ("triton", "cuda", "torch")


def bench_cases() -> list[dict[str, Any]]:
    """Three sizes per op from the suites' GPU shapes; each case builds its inputs lazily."""
    sys.path.insert(0, str(BENCH_DIR))
    import test_dual_threshold as dt
    import test_inter_task_attention as ias
    import test_supcon as sc
    import torch

    supcon: list[dict[str, Any]] = []
    for shape in (sc.Shape("pixel", 1024, 256, 2), sc.Shape("supcon", 4096, 128)) + (
        sc.Shape("supcon", 16384, 128),
    ):
        for dtype, precision in (
            (torch.bfloat16, "ieee"),
            (torch.float32, "tf32"),
            (torch.float32, "ieee"),
        ):
            for mode in ("fwd", "fwd+bwd"):
                supcon.append(
                    dict(
                        op="supcon_loss",
                        suite=sc,
                        shape=shape,
                        dtype=dtype,
                        mode=mode,
                        fp32=precision,
                    )
                )
    dual = [
        dict(op="dual_threshold", suite=dt, shape=shape, dtype=dtype, mode="fwd")
        for shape in (dt.Shape(16, 2), dt.Shape(16, 2, 224), dt.Shape(64, 2, 224))
        for dtype in (torch.float16, torch.float32)
    ]
    attention = [
        dict(op="inter_task_attention", suite=ias, shape=shape, dtype=dtype, mode=mode)
        for shape in ias.shapes("cuda", False)[:3]
        for dtype in (torch.bfloat16, torch.float32)
        for mode in ("fwd", "fwd+bwd")
    ]
    # Interleaved, so that a run cut by the budget has measured every op at its first sizes.
    cases: list[dict[str, Any]] = []
    for i in range(max(len(supcon), len(dual), len(attention))):
        cases += [ops[i] for ops in (supcon, dual, attention) if i < len(ops)]
    return cases


def make_call(case: dict[str, Any], backend: str) -> tuple[Callable[[], Any], dict[str, float]]:
    """The timed callable of ``case`` on ``backend`` and its work ({"flop"} or {"bytes"}).
    Raises RuntimeError with the dispatcher's reason when the backend cannot run it."""
    import torch

    from hermes.ops import dispatch, dual_threshold, inter_task_attention, supcon_loss

    dev = torch.device("cuda")
    shape, dtype, grad = case["shape"], case["dtype"], case["mode"] == "fwd+bwd"
    g = torch.Generator().manual_seed(0)
    if case["op"] == "supcon_loss":
        x = case["suite"].make_inputs(shape, dtype, dev, grad=grad)
        kw: dict[str, Any] = dict(
            temperature=0.07, base_temperature=0.07, denominator=shape.denominator
        )
        if dtype == torch.float32:
            kw["fp32_precision"] = case["fp32"]
        dispatch.select(
            "supcon_loss",
            backend,
            dev,
            dict(
                anchors=x.anchors,
                labels=x.labels,
                contrasts=x.contrasts,
                contrast_labels=x.contrast_labels,
                weights=None,
                reduction="mean",
                self_offset=None,
                **kw,
            ),
        )

        def fn() -> Any:
            out = supcon_loss(
                x.anchors, x.labels, x.contrasts, x.contrast_labels, backend=backend, **kw
            )
            if grad:
                for t in x.leaves():
                    t.grad = None
                out.backward()
            return out

        return fn, {"flop": 2.0 * shape.n * shape.n * shape.d * (3 if grad else 1)}
    if case["op"] == "dual_threshold":
        logits = (3.0 * torch.randn(shape.size, generator=g)).to(dev, dtype)
        kw = dict(eta=case["suite"].ETA, tau_max=0.95, tau_min=0.5, valid=None)
        dispatch.select(
            "dual_threshold", backend, dev, dict(logits=logits, histogram_hook=None, **kw)
        )
        moved = logits.numel() * logits.element_size()
        moved += shape.entries * case["suite"].OUTPUT_BYTES_PER_ENTRY
        return lambda: dual_threshold(logits, backend=backend, **kw), {"bytes": float(moved)}
    feature = torch.randn(shape.b, shape.c, shape.hw, shape.hw, generator=g).to(dev, dtype)
    gate = torch.sigmoid(torch.randn(shape.b, shape.c, generator=g)).to(dev, dtype)
    weight = (0.3 * torch.randn(1, 2, 3, 3, generator=g)).to(dev, dtype)
    bias = torch.zeros(1).to(dev, dtype)
    leaves = [t.requires_grad_(grad) for t in (feature, gate, weight, bias)]
    grad_out = torch.randn(feature.shape, generator=g).to(dev, dtype)
    dispatch.select(
        "inter_task_attention",
        backend,
        dev,
        dict(cls_feature=feature, gate=gate, spatial_weight=weight, spatial_bias=bias),
    )

    def inter_task_attention_fn() -> Any:
        out = inter_task_attention(*leaves, backend=backend)
        if grad:
            for t in leaves:
                t.grad = None
            out.backward(grad_out)
        return out

    moved = case["suite"].MAPS_MOVED[case["mode"]] * feature.numel() * feature.element_size()
    return inter_task_attention_fn, {"bytes": float(moved)}


def bench_step(report: Report, peaks: dict[str, Any], budget_s: float) -> None:
    import torch

    start = time.perf_counter()
    cases = bench_cases()
    report.step("benchmarks", status="running", cases=len(cases) * len(BACKENDS))
    done = skipped = 0
    for case in cases:
        for backend in BACKENDS:
            dtype_name = str(case["dtype"]).removeprefix("torch.")
            if case.get("fp32") == "tf32" and case["dtype"] == torch.float32:
                dtype_name = "float32 (tf32)"
            row: dict[str, Any] = dict(
                op=case["op"],
                case=case["shape"].id,
                dtype=dtype_name,
                mode=case["mode"],
                backend=backend,
            )
            if case.get("fp32") == "tf32" and backend != "triton":
                row["skipped"] = "fp32_precision='tf32' is a path of the triton backend only"
                skipped += 1
                report.bench(row)
                continue
            if time.perf_counter() - start > budget_s:
                row["skipped"] = f"past the {budget_s:.0f} s budget"
                skipped += 1
                report.bench(row)
                continue
            try:
                fn, work = make_call(case, backend)
                ms = cuda_time(fn)
            except RuntimeError as exc:  # the dispatcher's reason, or out of memory
                row["skipped"] = str(exc).splitlines()[0][:300]
                skipped += 1
                report.bench(row)
                torch.cuda.empty_cache()
                continue
            row["median_ms"] = round(ms, 4)
            peak_key = "tf32" if "tf32" in dtype_name else dtype_name
            if "flop" in work:
                rate = work["flop"] / (ms * 1e-3) / 1e12
                row["tflop_s"] = round(rate, 2)
                sheet, measured = peaks["sheet"].get(peak_key), peaks["measured"].get(peak_key)
            else:
                rate = work["bytes"] / (ms * 1e-3) / 1e9
                row["gb_s"] = round(rate, 1)
                sheet, measured = peaks["sheet"].get("gb_s"), peaks["measured"].get("gb_s")
            row["of_datasheet_peak"] = None if not sheet else round(rate / sheet, 4)
            row["of_measured_peak"] = None if not measured else round(rate / measured, 4)
            done += 1
            report.bench(row)
            torch.cuda.empty_cache()
    report.step(
        "benchmarks",
        status="done",
        measured=done,
        skipped=skipped,
        seconds=round(time.perf_counter() - start, 1),
    )


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the summary")
    parser.add_argument("--test-timeout", type=float, default=240.0)
    parser.add_argument("--bench-budget", type=float, default=120.0)
    parser.add_argument("--skip-tests", action="store_true", help="benchmarks only")
    args = parser.parse_args(argv)
    report = Report(args.out)

    import torch

    if not torch.cuda.is_available():
        reason = (
            f"no CUDA device visible (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda or 'none'}): nothing to check on this machine"
        )
        for name in ("device", "extension", "tests", "benchmarks"):
            report.step(name, status="skipped", reason=reason)
        report.finish("skipped: no CUDA device")
        print(f"gpu-check: skipped, {reason}; summary in {args.out}")
        return 0

    sys.path.insert(0, str(ROOT))
    peaks = device_step(report)
    ok = extension_step(report)
    if args.skip_tests:
        report.step("tests", status="skipped", reason="--skip-tests")
    else:
        ok = tests_step(report, args.test_timeout) and ok
    bench_step(report, peaks, args.bench_budget)
    report.finish("passed" if ok else "failed")
    print(f"gpu-check: {report.data['status']}; summary in {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
