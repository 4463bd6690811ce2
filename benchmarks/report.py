"""Turn a pytest-benchmark JSON file into a Markdown report and a PNG plot.

    pytest benchmarks/ --benchmark-only --benchmark-json results.json
    python benchmarks/report.py results.json                 # Markdown on stdout, results.png
    python benchmarks/report.py results.json --out RESULTS.md --plot results.png

Per op, one row per (case, backend): the median time, the derived rate recorded by the suite
(GFLOP/s, GB/s or images/s), the peak memory, and the speed ratios against the PyTorch reference
(backend ``torch``) and against pytorch-metric-learning, both ``t_baseline / t`` (above 1: faster
than the baseline). The memory-scaling cases get a table of peak memory against N per backend
with the log-log slope fitted (2: quadratic, 1: linear). Cases that were skipped are listed with
their reasons.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REFERENCE = "torch"
PML = "pytorch-metric-learning"
PUBLIC = "public-code"  # the training step built as the authors' public code builds it
BASELINES = (REFERENCE, PML, PUBLIC)
SECTIONS = {
    "supcon_loss": "supcon_loss",
    "dual_threshold": "dual_threshold",
    "inter_task_attention": "inter_task_attention (IAS)",
    "train_step": "Training step",
}
RATES = (("gflop_per_s", "GFLOP/s"), ("gb_per_s", "GB/s"), ("images_per_s", "images/s"))
SLOPE_MIN_N = 2048  # below this, constant costs (threads, buffers, pages) blur the growth law


@dataclass
class Row:
    """One benchmark: its group, backend, median seconds and the suite's ``extra_info``."""

    group: str
    backend: str
    median_s: float
    info: dict[str, Any]

    @property
    def op(self) -> str:
        return str(self.info.get("op", "?"))

    @property
    def rate(self) -> tuple[float, str] | None:
        for key, unit in RATES:
            if self.info.get(key) is not None:
                return float(self.info[key]), unit
        return None

    @property
    def peak_mib(self) -> float | None:
        value = self.info.get("peak_memory_mib")
        return None if value is None else float(value)


def load(path: Path) -> dict[str, Any]:
    """Read a pytest-benchmark JSON file (``--benchmark-json``)."""
    if not path.is_file():
        raise FileNotFoundError(f"benchmark results not found: {path}")
    with path.open() as f:
        data = json.load(f)
    if "benchmarks" not in data:
        raise ValueError(f"{path}: not a pytest-benchmark JSON file (no 'benchmarks' key)")
    return data


def rows(data: dict[str, Any]) -> list[Row]:
    out = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info", {})
        out.append(
            Row(
                bench["group"] or bench["name"],
                str(info.get("backend", bench["name"])),
                float(bench["stats"]["median"]),
                info,
            )
        )
    return out


def fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def op_table(section: list[Row]) -> str:
    """Markdown table of one op's rows, grouped by case, with ratios against the baselines."""
    by_group: dict[str, list[Row]] = defaultdict(list)
    for row in section:
        by_group[row.group].append(row)
    present = [b for b in BASELINES if any(r.backend == b for r in section)]
    header = ["case", "backend", "median", "rate", "peak memory"] + [f"vs {b}" for b in present]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for group in sorted(by_group):
        members = by_group[group]
        base = {r.backend: r.median_s for r in members}
        for row in sorted(members, key=lambda r: r.median_s):
            rate = row.rate
            cells = [
                group,
                row.backend,
                fmt_time(row.median_s),
                "" if rate is None else f"{rate[0]:.3g} {rate[1]}",
                "" if row.peak_mib is None else f"{row.peak_mib:.1f} MiB",
            ]
            for b in present:
                cells.append(fmt_ratio(base[b] / row.median_s) if b in base else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fit_slope(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(peak) against log(N), over N >= SLOPE_MIN_N when that leaves at
    least two points (else over all points); ``None`` with fewer than two usable points."""
    usable = [(n, p) for n, p in points if p and p > 0]
    big = [(n, p) for n, p in usable if n >= SLOPE_MIN_N]
    pts = big if len(big) >= 2 else usable
    if len(pts) < 2:
        return None
    xs = [math.log(n) for n, _ in pts]
    ys = [math.log(p) for _, p in pts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx


def memory_curves(section: list[Row]) -> dict[str, list[tuple[int, float, float]]]:
    """``{backend: [(N, peak MiB, median s), ...]}`` sorted by N."""
    curves: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for row in section:
        if row.peak_mib is not None:
            curves[row.backend].append((int(row.info["n"]), row.peak_mib, row.median_s))
    return {b: sorted(c) for b, c in curves.items()}


def memory_table(section: list[Row]) -> str:
    curves = memory_curves(section)
    backends = sorted(curves, key=lambda b: (b != REFERENCE, b))
    ns = sorted({n for c in curves.values() for n, _, _ in c})
    header = ["N"] + [f"{b}: peak (time)" for b in backends]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in ns:
        cells = [str(n)]
        for b in backends:
            hit = [(p, t) for m, p, t in curves[b] if m == n]
            cells.append(f"{hit[0][0]:.1f} MiB ({fmt_time(hit[0][1])})" if hit else "not run")
        lines.append("| " + " | ".join(cells) + " |")
    slopes = [fit_slope([(n, p) for n, p, _ in curves[b]]) for b in backends]
    lines.append(
        "| log-log slope | "
        + " | ".join("" if s is None else f"**{s:.2f}**" for s in slopes)
        + " |"
    )
    if REFERENCE in curves:
        ref = {n: p for n, p, _ in curves[REFERENCE]}
        ratios = []
        for b in backends:
            common = [(n, p) for n, p, _ in curves[b] if n in ref]
            if b == REFERENCE or not common:
                ratios.append("")
            else:
                n, p = common[-1]
                ratios.append(f"{ref[n] / p:.1f}x (N={n})")
        lines.append("| torch peak / peak | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


def skipped_table(data: dict[str, Any]) -> str:
    """Deduplicated ``(suite, reason)`` pairs of the skipped cases with their counts."""
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for item in data.get("hermes_skipped", []):
        suite = item["name"].split("::")[0].rsplit("/", 1)[-1]
        counts[(suite, item["reason"])] += 1
    if not counts:
        return ""
    lines = ["| suite | cases | reason |", "|---|---|---|"]
    for (suite, reason), count in sorted(counts.items()):
        lines.append(f"| {suite} | {count} | {reason.replace('|', '/')} |")
    return "\n".join(lines)


def header(data: dict[str, Any], all_rows: list[Row]) -> str:
    info = all_rows[0].info if all_rows else {}
    versions = info.get("versions", {})
    commit = data.get("commit_info", {})
    return "\n".join(
        [
            f"- device: {info.get('device', '?')}",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()),
            f"- run: {data.get('datetime', '?')}, commit {str(commit.get('id', '?'))[:10]}"
            + (" (uncommitted changes)" if commit.get("dirty") else ""),
            "- times are medians; ratios are `t_baseline / t` (above 1: faster than the baseline)",
        ]
    )


def markdown(data: dict[str, Any]) -> str:
    all_rows = rows(data)
    scaling = [r for r in all_rows if r.info.get("memory_scaling")]
    timed = [r for r in all_rows if not r.info.get("memory_scaling")]
    parts = ["# Benchmark results", "", header(data, all_rows)]
    ops = list(SECTIONS) + sorted({r.op for r in timed} - set(SECTIONS))
    for op in ops:
        section = [r for r in timed if r.op == op]
        if section:
            parts += ["", f"## {SECTIONS.get(op, op)}", "", op_table(section)]
    if scaling:
        parts += [
            "",
            "## supcon_loss peak memory against N (forward + backward, d = 128)",
            "",
            memory_table(scaling),
        ]
    skipped = skipped_table(data)
    if skipped:
        parts += ["", "## Not measured", "", skipped]
    return "\n".join(parts) + "\n"


def plot(data: dict[str, Any], path: Path) -> None:
    """PNG: speed-up over the reference per case and backend; peak memory against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_rows = rows(data)
    timed = [r for r in all_rows if not r.info.get("memory_scaling")]
    scaling = [r for r in all_rows if r.info.get("memory_scaling")]
    by_group: dict[str, dict[str, float]] = defaultdict(dict)
    for r in timed:
        by_group[r.group][r.backend] = r.median_s
    bars = [
        (f"{g} | {b}", base[REFERENCE] / t)
        for g, base in sorted(by_group.items())
        if REFERENCE in base
        for b, t in sorted(base.items())
        if b != REFERENCE
    ]

    fig, axes = plt.subplots(
        1, 2, figsize=(16, max(5.0, 0.22 * len(bars) + 1.5)), gridspec_kw={"width_ratios": [1.4, 1]}
    )
    ax = axes[0]
    if bars:
        labels, values = zip(*bars, strict=True)
        colors = ["tab:green" if v >= 1 else "tab:red" for v in values]
        ax.barh(range(len(values)), values, color=colors)
        ax.set_yticks(range(len(values)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.axvline(1.0, color="black", lw=0.8)
    ax.set_xlabel("speed-up over the PyTorch reference (t_torch / t)")
    ax.set_title("speed against the reference, per case")

    ax = axes[1]
    for backend, curve in memory_curves(scaling).items():
        ns = [n for n, _, _ in curve]
        peaks = [p for _, p, _ in curve]
        slope = fit_slope(list(zip(ns, peaks, strict=True)))
        label = backend + ("" if slope is None else f" (slope {slope:.2f})")
        ax.loglog(ns, peaks, "o-", base=2, label=label)
    ax.set_xlabel("N (anchors = contrasts), d = 128")
    ax.set_ylabel("peak memory of forward + backward (MiB)")
    ax.set_title("supcon_loss memory scaling")
    if scaling:
        ax.legend(fontsize=8)
    device = all_rows[0].info.get("device", "") if all_rows else ""
    fig.suptitle(f"Hermes benchmarks on {device}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="pytest-benchmark JSON (--benchmark-json)")
    parser.add_argument("--out", type=Path, help="write the Markdown here (default: stdout)")
    parser.add_argument("--plot", type=Path, help="PNG path (default: the JSON's path, .png)")
    args = parser.parse_args(argv)
    data = load(args.results)
    text = markdown(data)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text)
    plot(data, args.plot or args.results.with_suffix(".png"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
