"""The method trains with every fast backend of the fused ops and gives the reference's losses.

Triton runs here under ``TRITON_INTERPRET=1`` (set by tests/conftest.py on a machine without
CUDA), the C++ backend through ``hermes._C``; a backend that is not available is skipped with
the dispatcher's reason.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest

from hermes.ops import dispatch
from hermes.train import load_config, train

LOSS_KEYS = (
    "loss/total",
    "loss/ce_l",
    "loss/seg_sup",
    "loss/ce_u",
    "loss/dice_u",
    "loss/contrast_img",
    "loss/contrast_pix",
    "loss/itc",
)


@pytest.mark.parametrize("backend", ["triton", "cpp", "cuda"])
def test_method_trains_with_backend(
    backend: str, tiny_overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two steps with the backend forced against the reference backend, on the device the
    backend runs on (``cpp``: the CPU, also on a GPU host; ``cuda``: a GPU; ``triton``: a GPU,
    else the CPU interpreter), in fp32 with deterministic convolutions so that the two runs
    differ only by the op."""
    import torch

    device = {"cpp": "cpu", "cuda": "cuda"}.get(
        backend, "cuda" if torch.cuda.is_available() else "cpu"
    )
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    unavailable = dispatch.available()["supcon_loss"][backend]
    if unavailable != "registered":
        pytest.skip(f"backend {backend!r} unavailable: {unavailable}")
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = load_config(
        "default",
        [*tiny_overrides, "optim.steps=2", "eval.every=0", f"device={device}", "amp=false"],
    )
    ref = train(replace(cfg, out_dir=str(tmp_path / "torch"), backend="torch"), report=False)
    fast = train(replace(cfg, out_dir=str(tmp_path / backend), backend=backend), report=False)
    active = set()
    for a, b in zip(ref.state.history, fast.state.history, strict=True):
        for key in LOSS_KEYS:
            assert math.isfinite(b[key]), (backend, a["step"], key, b[key])
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-5), (
                backend,
                a["step"],
                key,
                a[key],
                b[key],
            )
            if b[key] != 0:
                active.add(key)
    # the fused ops were really on the path: the contrastive terms were computed
    assert {"loss/contrast_img", "loss/ce_u"} <= active, active


def test_backend_is_an_argument_not_the_environment(
    tiny_overrides: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run's backend reaches the method and the attention as arguments; the caller's own
    HERMES_BACKEND is neither overwritten nor removed."""
    import os

    from hermes.ops import InterTaskAttention
    from hermes.train.build import build_everything

    monkeypatch.setenv("HERMES_BACKEND", "cpp")
    for backend, forced in (("torch", "torch"), ("auto", None)):
        comps = build_everything(load_config("default", [*tiny_overrides, f"backend={backend}"]))
        assert os.environ["HERMES_BACKEND"] == "cpp"
        assert comps.method.backend == forced
        attention = [m for m in comps.model.modules() if isinstance(m, InterTaskAttention)]
        assert attention and all(m.backend == forced for m in attention)
    with pytest.raises(ValueError, match="model.backend: a training config sets it as backend"):
        load_config("default", [*tiny_overrides, "model.backend=cpp"])
