"""Compile Triton kernels for an H100 (sm_90a) without a GPU and report what ptxas and the SASS say.

Run as a script (``python tests/ops/sm90_compile.py < specs.json``) in a process without
``TRITON_INTERPRET`` (the test process has interpreted kernels). Reads a JSON list of specs::

    {"id": str, "module": "hermes.kernels.supcon", "kernel": "supcon_fwd_kernel",
     "signature": {"a_ptr": "*bf16", "N": "i32", ...},       # every non-constexpr argument
     "constexprs": {"BLOCK_N": 64, ...}, "options": {"num_warps": 8, "num_stages": 2}}

and prints one JSON line per spec, in the order given::

    {"id": ..., "spill_stores": bytes, "spill_loads": bytes, "registers": n, "shared": bytes,
     "ptx_mma": ["wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", ...],  # distinct
     "sass_mma": number of HGMMA/HMMA instructions,
     "ptx_tf32_rounding": number of cvt.rna.tf32 conversions, "seconds": compile time}

or ``{"id": ..., "error": "..."}``. The spill counts are ptxas's own (``ptxas -v``, which Triton
runs; its log is captured with ``triton.knobs.nvidia.dump_ptxas_log``), so every spec is
compiled afresh in a new cache folder. ptxas and cuobjdump come with the Triton wheel
(``triton/backends/nvidia/bin``). Specs are compiled in parallel, one process per CPU.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

TARGET = ("cuda", 90, 32)  # GPUTarget(backend, compute capability, warp size): H100 / H200
MMA_PTX = re.compile(r"\b((?:wgmma\.mma_async|mma\.sync)[\w.]*)")
MMA_SASS = re.compile(r"\b(?:HGMMA|HMMA)\b")
SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
REGISTERS = re.compile(r"Used (\d+) registers")


def _cuobjdump() -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def compile_one(spec: dict) -> dict:
    """Compile one spec (see the module docstring); never raises."""
    import importlib

    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    out: dict = {"id": spec["id"]}
    try:
        kernel = getattr(importlib.import_module(spec["module"]), spec["kernel"])
        names = kernel.arg_names
        types = {**spec["signature"], **{k: "constexpr" for k in spec["constexprs"]}}
        missing = sorted(set(names) - set(types))
        if missing:
            raise ValueError(f"no type given for {missing}")
        src = ASTSource(
            fn=kernel,
            signature={n: types[n] for n in names},
            constexprs={(names.index(k),): v for k, v in spec["constexprs"].items()},
        )
        knobs.nvidia.dump_ptxas_log = True  # Triton prints ptxas -v's report to stdout
        log = io.StringIO()
        start = time.perf_counter()
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(src, target=GPUTarget(*TARGET), options=spec["options"])
        out["seconds"] = round(time.perf_counter() - start, 2)
        spills = SPILLS.findall(log.getvalue())
        registers = REGISTERS.findall(log.getvalue())
        if not spills or not registers:
            raise RuntimeError(f"no ptxas -v report in the compile log: {log.getvalue()[-500:]!r}")
        out["spill_stores"] = sum(int(s) for s, _ in spills)
        out["spill_loads"] = sum(int(ld) for _, ld in spills)
        out["registers"] = max(int(r) for r in registers)
        out["shared"] = int(compiled.metadata.shared)
        out["ptx_mma"] = sorted(set(MMA_PTX.findall(compiled.asm["ptx"])))
        out["ptx_tf32_rounding"] = compiled.asm["ptx"].count("cvt.rna.tf32")
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = subprocess.run(
                [_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True
            ).stdout
        out["sass_mma"] = len(MMA_SASS.findall(sass))
    except Exception as exc:  # noqa: BLE001 - reported to the caller, one spec at a time
        out["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
    return out


def main() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise SystemExit("sm90_compile: unset TRITON_INTERPRET (kernels must be compiled)")
    specs = json.load(sys.stdin)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # fresh: ptxas runs (and reports) every time
        workers = max(1, min(len(specs), os.cpu_count() or 1))
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for result in pool.map(compile_one, specs):
                print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
