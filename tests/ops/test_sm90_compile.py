"""Offline GPU checks: every Triton kernel compiled for an H100 (sm_90a) on this machine, no GPU.

Triton compiles for a target given explicitly (``GPUTarget("cuda", 90, 32)``) with the ptxas
and cuobjdump of its wheel, so a CPU-only CI catches what the interpreter cannot see: the
kernels at the launch configurations and dtypes the method uses must not spill registers
(ptxas's own ``-v`` count), must fit in an H100's 227 KiB of shared memory per block, and the
``supcon_loss`` tensor-core paths (fp16, bf16, and fp32 with ``fp32_precision="tf32"``) must
compile to Hopper warpgroup MMAs (``wgmma`` in the PTX, ``HGMMA`` in the SASS) while the
``"ieee"`` path stays on the FMA units.

The default run compiles the method's configurations, bf16 and fp32 (``supcon_loss`` at
d = 128 with the ``all`` denominator, the image contrast, and d = 256 with ``pos_plus_neg``,
the pixel contrast, through both fp32 paths; ``dual_threshold`` at 2 and 150 classes; the IAS
kernels at the four depths, which share one configuration). ``HERMES_TEST_SM90_ALL=1`` adds
every d in 64, 128, 256 with both denominators and fp16 (about 80 more kernels). Compilation
runs in a subprocess (``tests/ops/sm90_compile.py``) without ``TRITON_INTERPRET``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

triton = pytest.importorskip("triton")

from hermes.kernels import dual_threshold as DT  # noqa: E402
from hermes.kernels import inter_task_attention as IAS  # noqa: E402
from hermes.kernels import supcon as SC  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("sm90_compile.py")
MAX_SHARED = 227 * 1024  # bytes of shared memory one block may use on sm_90
TOOLS = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"

# --------------------------------------------------------------------------------------------
# Specs: the launch configurations the ops use (from the kernels' own config functions)
# --------------------------------------------------------------------------------------------

SUPCON_TYPES = {
    "ya_ptr": "*i32",
    "yb_ptr": "*i32",
    "lse_ptr": "*fp32",
    "sp_ptr": "*fp32",
    "sig_ptr": "*fp32",
    "c_ptr": "*fp32",
    "g_ptr": "*fp32",
    "da_ptr": "*fp32",
    "db_ptr": "*fp32",
    "N": "i32",
    "M": "i32",
    "D": "i32",
    "inv_t": "fp32",
    "self_offset": "i32",
}
# (name in the test ids, pointer type of the features, DOT constexpr). bf16 runs with "half" here
# (compiled), not with the interpreter's upcast.
SUPCON_PATHS = [
    ("bf16", "bf16", "half"),
    ("fp32-tf32", "fp32", "tf32"),
    ("fp32-ieee", "fp32", "ieee"),
    ("fp16", "fp16", "half"),
]
PTX_TYPES = {"fp16": "f16", "bf16": "bf16", "fp32": "tf32"}  # MMA operand types in the PTX
METHOD_PATHS = SUPCON_PATHS[:3]  # the method: fp32 features, bf16 under autocast
METHOD_SUPCON = [(128, False), (256, True)]  # image contrast ("all"), pixel contrast
ALL_SUPCON = [(d, pnn) for d in (64, 128, 256) for pnn in (False, True)]
METHOD_DTYPES = ("bf16", "fp32")
ALL_DTYPES = ("bf16", "fp32", "fp16")


def _signature(kernel: Any, types: dict[str, str]) -> dict[str, str]:
    """The types of ``kernel``'s non-constexpr arguments (a missing one is an error there)."""
    return {a: types[a] for a in kernel.arg_names if a in types}


def supcon_specs(paths: list[tuple[str, str, str]], cases: list[tuple[int, bool]]) -> list[dict]:
    specs = []
    for path, ptr, dot in paths:
        for d, pnn in cases:
            for name in SC.KERNELS:
                kernel = getattr(SC, f"supcon_{name}_kernel")
                cfg = SC.launch_config(name, d, dot)
                types = {**SUPCON_TYPES, "a_ptr": f"*{ptr}", "b_ptr": f"*{ptr}"}
                specs.append(
                    dict(
                        id=f"supcon-{name}-{path}-d{d}-{'pos_plus_neg' if pnn else 'all'}",
                        module="hermes.kernels.supcon",
                        kernel=kernel.__name__,
                        signature=_signature(kernel, types),
                        constexprs=dict(
                            HAS_SELF=True,
                            POS_PLUS_NEG=pnn,
                            DOT=dot,
                            BLOCK_N=cfg["BLOCK_N"],
                            BLOCK_M=cfg["BLOCK_M"],
                            BLOCK_D=cfg["BLOCK_D"],
                        ),
                        options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]),
                        tensor_cores=None if dot == "ieee" else PTX_TYPES[ptr],
                    )
                )
    return specs


def dual_threshold_specs(dtypes: tuple[str, ...], pass2: bool = True) -> list[dict[str, Any]]:
    specs = []
    for classes in (2, 150):
        block_e, block_c = DT.block_sizes(classes)
        const = dict(HAS_VALID=True, BLOCK_E=block_e, BLOCK_C=block_c)
        for dtype in dtypes:
            specs.append(
                dict(
                    id=f"dual_threshold-pass1-{dtype}-C{classes}",
                    module="hermes.kernels.dual_threshold",
                    kernel="dual_threshold_pass1_kernel",
                    signature={
                        "x_ptr": f"*{dtype}",
                        "valid_ptr": "*i1",
                        "label_ptr": "*i64",
                        "conf_ptr": "*fp32",
                        "ent_ptr": "*fp32",
                        "hist_ptr": "*i64",
                        "E": "i32",
                        "C": "i32",
                        "S": "i32",
                        "eps": "fp32",
                    },
                    constexprs=const,
                    options={},
                    tensor_cores=None,
                )
            )
        if not pass2:  # its signature has no logits: one compile covers every dtype
            continue
        specs.append(
            dict(
                id=f"dual_threshold-pass2-C{classes}",
                module="hermes.kernels.dual_threshold",
                kernel="dual_threshold_pass2_kernel",
                signature={
                    "label_ptr": "*i64",
                    "conf_ptr": "*fp32",
                    "ent_ptr": "*fp32",
                    "valid_ptr": "*i1",
                    "thr_ptr": "*fp32",
                    "eta_ptr": "*fp32",
                    "reliable_ptr": "*u8",
                    "kept_ptr": "*i64",
                    "sums_ptr": "*fp32",
                    "E": "i32",
                    "C": "i32",
                },
                constexprs=const,
                options={},
                tensor_cores=None,
            )
        )
    return specs


# The IAS depths of the paper's classification encoder (Res2Net-101 at 224 px, strides 2..16).
IAS_DEPTHS = [(64, 112 * 112), (256, 56 * 56), (512, 28 * 28), (1024, 14 * 14)]


def inter_task_attention_specs(dtypes: tuple[str, ...]) -> list[dict[str, Any]]:
    configs = {IAS.block_sizes(c, hw) for c, hw in IAS_DEPTHS}
    specs = []
    for block_c, block_p in sorted(configs):
        for dtype in dtypes:
            types = {
                "x_ptr": f"*{dtype}",
                "g_ptr": f"*{dtype}",
                "w_ptr": "*fp32",
                "bias_ptr": "*fp32",
                "pooled_ptr": "*fp32",
                "cnt_ptr": "*fp32",
                "a_ptr": "*fp32",
                "y_ptr": f"*{dtype}",
                "dy_ptr": f"*{dtype}",
                "dz_ptr": "*fp32",
                "dwb_ptr": "*fp32",
                "dx_ptr": f"*{dtype}",
                "dg_ptr": "*fp32",
                "C": "i32",
                "H": "i32",
                "W": "i32",
                "HW": "i32",
            }
            for kernel in (
                IAS.inter_task_attention_pool_kernel,
                IAS.inter_task_attention_apply_kernel,
                IAS.inter_task_attention_bwd_gate_kernel,
                IAS.inter_task_attention_bwd_feature_kernel,
            ):
                const = {
                    k: v
                    for k, v in dict(KSIZE=3, BLOCK_C=block_c, BLOCK_P=block_p).items()
                    if k in kernel.arg_names
                }
                specs.append(
                    dict(
                        id=f"ias-{kernel.__name__.removeprefix('inter_task_attention_').removesuffix('_kernel')}"
                        f"-{dtype}-C{block_c}-P{block_p}",
                        module="hermes.kernels.inter_task_attention",
                        kernel=kernel.__name__,
                        signature=_signature(kernel, types),
                        constexprs=const,
                        options=dict(num_warps=IAS.NUM_WARPS),
                        tensor_cores=None,
                    )
                )
    return specs


DEFAULT_SPECS = (
    supcon_specs(METHOD_PATHS, METHOD_SUPCON)
    + dual_threshold_specs(METHOD_DTYPES)
    + inter_task_attention_specs(METHOD_DTYPES)
)
_DEFAULT_IDS = {s["id"] for s in DEFAULT_SPECS}
ALL_SPECS = [
    s
    for s in supcon_specs(SUPCON_PATHS, ALL_SUPCON)
    + dual_threshold_specs(ALL_DTYPES, pass2=False)
    + inter_task_attention_specs(ALL_DTYPES)
    if s["id"] not in _DEFAULT_IDS
]

# --------------------------------------------------------------------------------------------
# Compilation (one subprocess per spec list) and the checks
# --------------------------------------------------------------------------------------------


def compile_specs(specs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``{id: result}`` from ``sm90_compile.py`` (see its docstring), or a skip saying why the
    kernels cannot be compiled here."""
    missing = [t for t in ("ptxas", "cuobjdump") if not (TOOLS / t).exists()]
    if missing:
        pytest.skip(f"the Triton wheel has no {', '.join(missing)} under {TOOLS}")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    payload = [{k: v for k, v in s.items() if k != "tensor_cores"} for s in specs]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)],
        input=json.dumps(payload),
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, f"sm90_compile.py failed:\n{proc.stderr[-3000:]}"
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {r["id"]: r for r in results}


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, Any]]:
    return compile_specs(DEFAULT_SPECS)


@pytest.fixture(scope="module")
def compiled_all() -> dict[str, dict[str, Any]]:
    if os.environ.get("HERMES_TEST_SM90_ALL") != "1":
        pytest.skip("set HERMES_TEST_SM90_ALL=1 to compile every configuration (minutes)")
    return compile_specs(ALL_SPECS)


def check(spec: dict[str, Any], result: dict[str, Any]) -> None:
    assert "error" not in result, f"{spec['id']} does not compile for sm_90a: {result['error']}"
    spills = (result["spill_stores"], result["spill_loads"])
    assert spills == (0, 0), (
        f"{spec['id']}: ptxas spills {spills[0]} bytes stored, {spills[1]} loaded "
        f"({result['registers']} registers)"
    )
    assert 0 <= result["shared"] <= MAX_SHARED, f"{spec['id']}: {result['shared']} B shared"
    kind = spec["tensor_cores"]
    if kind is None:
        if spec["id"].startswith("supcon"):  # the ieee path: FMA products, no tensor cores
            assert not result["ptx_mma"] and result["sass_mma"] == 0, result["ptx_mma"]
        return
    wgmma = [m for m in result["ptx_mma"] if m.startswith("wgmma") and f".{kind}.{kind}" in m]
    assert wgmma, f"{spec['id']}: no {kind} wgmma in the PTX (found {result['ptx_mma']})"
    assert result["sass_mma"] > 0, f"{spec['id']}: no HGMMA/HMMA instruction in the SASS"
    if kind == "tf32":  # operands reach the tensor cores unrounded (docs/ops.md's error model)
        assert result["ptx_tf32_rounding"] == 0, f"{spec['id']}: fp32 operands rounded to TF32"


@pytest.mark.parametrize("spec", DEFAULT_SPECS, ids=lambda s: s["id"])
def test_compiles_for_sm90_without_spills(compiled, spec):
    check(spec, compiled[spec["id"]])


@pytest.mark.slow
@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s["id"])
def test_every_configuration_compiles_without_spills(compiled_all, spec):
    check(spec, compiled_all[spec["id"]])


def test_the_specs_follow_the_launch_code():
    """The compiled configurations are the ones the glue launches (same function, same dtypes):
    every supcon kernel, path and method size is covered."""
    ids = {s["id"] for s in DEFAULT_SPECS}
    for name in SC.KERNELS:
        for path, _, _ in METHOD_PATHS:
            assert f"supcon-{name}-{path}-d128-all" in ids
            assert f"supcon-{name}-{path}-d256-pos_plus_neg" in ids
    assert SC.dot_mode(torch.float32, "tf32") == "tf32"
    assert SC.dot_mode(torch.float32, "ieee") == "ieee"
