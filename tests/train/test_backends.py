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

LOSS_KEYS = ("loss/total", "loss/ce_l", "loss/seg_sup", "loss/ce_u", "loss/dice_u",
             "loss/contrast_img", "loss/contrast_pix", "loss/itc")  # fmt: skip


@pytest.mark.parametrize("backend", ["triton", "cpp"])
def test_method_trains_with_backend(backend: str, tiny_overrides: list[str], tmp_path: Path) -> None:
    unavailable = dispatch.available()["supcon_loss"][backend]
    if unavailable != "registered":
        pytest.skip(f"backend {backend!r} unavailable: {unavailable}")
    cfg = load_config("default", [*tiny_overrides, "optim.steps=2", "eval.every=0"])
    ref = train(replace(cfg, out_dir=str(tmp_path / "torch"), backend="torch"), report=False)
    fast = train(replace(cfg, out_dir=str(tmp_path / backend), backend=backend), report=False)
    active = set()
    for a, b in zip(ref.state.history, fast.state.history, strict=True):
        for key in LOSS_KEYS:
            assert math.isfinite(b[key]), (backend, a["step"], key, b[key])
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-5), (
                backend, a["step"], key, a[key], b[key],
            )  # fmt: skip
            if b[key] != 0:
                active.add(key)
    # the fused ops were really on the path: the contrastive terms were computed
    assert {"loss/contrast_img", "loss/ce_u"} <= active, active
