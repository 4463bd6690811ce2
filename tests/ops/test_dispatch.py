"""Backend choice for the fused ops: automatic, forced by argument or environment, and the
error that lists why a forced backend cannot serve."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from hermes.ops import dispatch, supcon_loss, supcon_loss_reference

ENV_VARS = ("HERMES_BACKEND", "HERMES_BACKEND_SUPCON_LOSS", "HERMES_BACKEND_DUAL_THRESHOLD")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


def _supcon_inputs(n=6, d=8, dtype=torch.float32, device="cpu"):
    a = F.normalize(torch.randn(n, d), dim=1).to(device, dtype)
    return dict(
        anchors=a,
        labels=torch.arange(n, device=device) % 2,
        contrasts=None,
        contrast_labels=None,
        temperature=0.1,
        base_temperature=0.07,
        weights=None,
        denominator="all",
        reduction="mean",
        self_offset=None,
    )


def _triton_ready(device: torch.device) -> None:
    dispatch.load_backends()
    if "triton" not in dispatch._REGISTRY["supcon_loss"]:
        pytest.skip(f"triton unavailable: {dispatch._LOAD_ERRORS.get('triton')}")
    reasons = dispatch._reasons("supcon_loss", "triton", _supcon_inputs(device=device))
    if reasons:
        pytest.skip("; ".join(reasons))


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def test_every_op_has_a_triton_implementation():
    dispatch.load_backends()
    if "triton" in dispatch._LOAD_ERRORS:
        pytest.skip(dispatch._LOAD_ERRORS["triton"])
    for op in dispatch.OPS:
        assert "triton" in dispatch._REGISTRY[op], op


def test_auto_on_cpu_never_picks_the_interpreter():
    """On the CPU the automatic choice is the C++ extension or the reference, not Triton's
    interpreter (which is only for tests)."""
    impl = dispatch.select("supcon_loss", None, torch.device("cpu"), _supcon_inputs())
    assert impl.backend in dispatch.AUTO_ORDER["cpu"] and impl.backend != "triton"


@pytest.mark.gpu
def test_auto_on_cuda_picks_triton_first():
    inputs = _supcon_inputs(dtype=torch.float16, device="cuda")
    _triton_ready(torch.device("cuda"))
    assert dispatch.select("supcon_loss", None, torch.device("cuda"), inputs).backend == "triton"


def test_auto_falls_back_when_triton_declines(monkeypatch):
    """An input Triton cannot take (fp64) goes to the next backend in the order, not to an error."""
    device = _device()
    _triton_ready(device)
    monkeypatch.setitem(dispatch.AUTO_ORDER, device.type, ("triton", "torch"))
    inputs = _supcon_inputs(dtype=torch.float64, device=device)
    assert dispatch.select("supcon_loss", None, device, inputs).backend == "torch"
    inputs = _supcon_inputs(device=device)
    assert dispatch.select("supcon_loss", None, device, inputs).backend == "triton"


def test_forced_by_argument_runs_that_backend():
    device = _device()
    _triton_ready(device)
    inputs = _supcon_inputs(device=device)
    assert dispatch.select("supcon_loss", "triton", device, inputs).backend == "triton"
    assert dispatch.select("supcon_loss", "torch", device, inputs).backend == "torch"
    a, y = inputs["anchors"], inputs["labels"]
    got = supcon_loss(a, y, temperature=0.1, backend="triton")
    want = supcon_loss_reference(a.cpu(), y.cpu(), temperature=0.1)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("var", ["HERMES_BACKEND", "HERMES_BACKEND_SUPCON_LOSS"])
def test_forced_by_environment(monkeypatch, var):
    device = _device()
    _triton_ready(device)
    inputs = _supcon_inputs(device=device)
    monkeypatch.setenv(var, "triton")
    assert dispatch.select("supcon_loss", None, device, inputs).backend == "triton"
    # The argument wins over the environment; the per-op variable over the global one.
    assert dispatch.select("supcon_loss", "torch", device, inputs).backend == "torch"
    if var == "HERMES_BACKEND":
        monkeypatch.setenv("HERMES_BACKEND_SUPCON_LOSS", "torch")
        assert dispatch.select("supcon_loss", None, device, inputs).backend == "torch"


def test_unknown_backend_name_is_a_value_error(monkeypatch):
    monkeypatch.setenv("HERMES_BACKEND", "tritonn")
    with pytest.raises(ValueError, match="tritonn"):
        dispatch.select("supcon_loss", None, torch.device("cpu"), _supcon_inputs())


def test_forced_backend_that_cannot_serve_lists_every_reason():
    device = _device()
    _triton_ready(device)
    inputs = _supcon_inputs(d=300, dtype=torch.float64, device=device)
    with pytest.raises(RuntimeError) as info:
        supcon_loss(inputs["anchors"], inputs["labels"], backend="triton")
    message = str(info.value)
    assert "'triton' cannot run" in message
    assert "torch.float64" in message and "d=300" in message


def test_cpu_without_interpreter_is_declined(monkeypatch):
    """CPU tensors need Triton's interpreter; without it the reason says how to get it."""
    _triton_ready(_device())
    from hermes.ops.triton_backend import _common

    monkeypatch.setattr(_common, "INTERPRET", False)
    for op, inputs in (
        ("supcon_loss", _supcon_inputs()),
        (
            "dual_threshold",
            dict(
                logits=torch.randn(4, 3),
                eta=0.5,
                tau_max=0.95,
                tau_min=0.5,
                valid=None,
                histogram_hook=None,
            ),
        ),
        (
            "inter_task_attention",
            dict(
                cls_feature=torch.randn(1, 2, 3, 3),
                gate=torch.rand(1, 2),
                spatial_weight=torch.randn(1, 2, 3, 3),
                spatial_bias=torch.randn(1),
            ),
        ),
    ):
        reasons = dispatch._reasons(op, "triton", inputs)
        assert any("TRITON_INTERPRET=1" in r for r in reasons), (op, reasons)


def test_each_op_gives_its_own_reasons():
    _triton_ready(_device())
    device = _device()
    many_classes = dict(
        logits=torch.randn(2, 2000, device=device),
        eta=0.5,
        tau_max=0.95,
        tau_min=0.5,
        valid=None,
        histogram_hook=None,
    )
    assert any(
        "2000 classes" in r for r in dispatch._reasons("dual_threshold", "triton", many_classes)
    )
    big_kernel = dict(
        cls_feature=torch.randn(1, 2, 9, 9, device=device),
        gate=torch.rand(1, 2, device=device),
        spatial_weight=torch.randn(1, 2, 9, 9, device=device),
        spatial_bias=torch.randn(1, device=device),
    )
    assert any(
        "kernel size 9" in r
        for r in dispatch._reasons("inter_task_attention", "triton", big_kernel)
    )


def _run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    return result.stdout


def test_missing_triton_is_reported_not_raised():
    """Without Triton, importing and dispatching work; the reason is reported per backend."""
    out = _run_python(
        "import sys; sys.modules['triton'] = None\n"
        "import torch\n"
        "from hermes.ops import dispatch, supcon_loss\n"
        "print(float(supcon_loss(torch.eye(3), torch.tensor([0, 0, 1]))))\n"
        "print(dispatch.available()['supcon_loss']['triton'])\n"
    )
    value, reason = out.strip().splitlines()[-2:]
    assert float(value) > 0
    assert "hermes.ops.triton_backend could not be imported" in reason


def test_info_shows_triton_available():
    _triton_ready(_device())
    from hermes.info import report

    lines = report().splitlines()
    header = next(line for line in lines if line.startswith("op "))
    column = header.split()[1:].index("triton") + 1
    for op in dispatch.OPS:
        row = next(line for line in lines if line.startswith(op))
        assert row.split()[column] == "ok", row


def test_public_op_compiles_fullgraph_after_load_backends():
    """Dynamo cannot trace the lazy backend import: load first, then compile the public op."""
    import torch

    from hermes.ops import dispatch, supcon_loss

    dispatch.load_backends()
    a = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    compiled = torch.compile(
        lambda f, lab: supcon_loss(f, lab, backend="torch"), fullgraph=True, backend="aot_eager"
    )
    torch.testing.assert_close(compiled(a, y), supcon_loss(a, y, backend="torch"))


def test_automatic_choice_logged_once_per_op_device_backend(caplog, monkeypatch) -> None:
    """The same automatic choice for many input sizes: one INFO line, the rest at DEBUG."""
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    declined = [["cpp: below 4096 pairs (N*M = 784)"], ["cpp: below 4096 pairs (N*M = 900)"]]
    with caplog.at_level(logging.DEBUG, logger="hermes.ops"):
        for reasons in declined * 3:
            dispatch._log_choice("supcon_loss", "cpu", "torch", reasons)
        dispatch._log_choice("dual_threshold", "cpu", "torch", declined[0])
    info = [r for r in caplog.records if r.levelno == logging.INFO]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(info) == 2 and "784" in info[0].getMessage()  # supcon once, dual_threshold once
    assert len(debug) == 1 and "900" in debug[0].getMessage()


def test_deterministic_mode_declines_the_gpu_kernels(monkeypatch) -> None:
    """Under torch.use_deterministic_algorithms the GPU kernels that sum floats with atomics
    (dual_threshold's) are declined on CUDA (with the reason), left alone on the CPU, and
    allowed with a warning in warn-only mode; the kernels that reduce in a fixed order
    (supcon_loss, inter_task_attention) stay available."""
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    assert dispatch.determinism_reasons("dual_threshold", "triton", "cuda") == []  # not asked
    before = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        reasons = dispatch.determinism_reasons("dual_threshold", "triton", "cuda")
        assert "deterministic" in reasons[0]
        assert dispatch.determinism_reasons("dual_threshold", "cuda", "cuda")
        assert dispatch.determinism_reasons("dual_threshold", "torch", "cuda") == []
        assert dispatch.determinism_reasons("dual_threshold", "cpp", "cpu") == []
        for op in ("supcon_loss", "inter_task_attention"):
            for backend in ("triton", "cuda"):
                assert dispatch.determinism_reasons(op, backend, "cuda") == [], (op, backend)
        torch.use_deterministic_algorithms(True, warn_only=True)
        assert dispatch.determinism_reasons("dual_threshold", "triton", "cuda") == []
    finally:
        torch.use_deterministic_algorithms(before)


def test_cuda_supcon_is_not_chosen_automatically_where_triton_runs(monkeypatch, caplog) -> None:
    """The CUDA supcon_loss kernel (no data reuse) is declined in the automatic choice, with
    its reason in the log, whenever the Triton backend is there; forcing it still works."""
    dispatch.load_backends()
    for name in ("triton", "cuda"):
        if not dispatch.is_registered("supcon_loss", name):
            pytest.skip(f"{name} unavailable: {dispatch._LOAD_ERRORS.get(name)}")
    # Stand-ins that accept the CPU inputs, so the choice itself is what is tested here.
    registry = dict(dispatch._REGISTRY["supcon_loss"])
    for name in ("triton", "cuda"):
        registry[name] = dataclasses.replace(registry[name], not_supported_reasons=lambda **_: [])
    monkeypatch.setitem(dispatch._REGISTRY, "supcon_loss", registry)
    monkeypatch.setitem(dispatch.AUTO_ORDER, "cpu", ("cuda", "torch"))
    monkeypatch.setattr(dispatch, "_LOGGED", set())
    inputs = _supcon_inputs()
    device = torch.device("cpu")
    with caplog.at_level(logging.INFO, logger="hermes.ops"):
        assert dispatch.select("supcon_loss", None, device, inputs).backend == "torch"
    assert any("no data reuse" in r.getMessage() for r in caplog.records)
    assert dispatch.select("supcon_loss", "cuda", device, inputs).backend == "cuda"
    del registry["triton"]  # without Triton the CUDA kernel is a candidate again
    assert dispatch.select("supcon_loss", None, device, inputs).backend == "cuda"
