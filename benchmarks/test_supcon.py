"""``supcon_loss``: every backend against the PyTorch reference and the outside baselines.

Cases are ``backend x mode x shape x dtype``; one pytest-benchmark group per (shape, dtype, mode)
so that the backends of a comparison sit side by side. The derived figure is GFLOP/s with the
model count of the similarity passes: ``2 N M d`` for the forward pass and three times that for
forward + backward (``S = A B^T``, ``dA = dS B``, ``dB = dS^T A``); the recomputation that fused
backends do in their backward pass is not counted, as for FlashAttention.

Baselines: ``torch.compile`` of the reference; pytorch-metric-learning's ``SupConLoss`` (the
``denominator="all"`` form; with ``ref_emb`` it is InfoNCE); Inf-CL (``inf_cl.cal_inf_loss``,
InfoNCE only, CUDA only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import harness
import pytest
import torch
import torch.nn.functional as F

from hermes.ops import supcon_loss, supcon_loss_reference

OP = "supcon_loss"
PML = "pytorch-metric-learning"
INF_CL = "inf-cl"
TEMPERATURE = 0.07


@dataclass(frozen=True)
class Shape:
    """One workload. ``form``: ``"supcon"`` (anchors against themselves, ``classes`` labels),
    ``"pixel"`` (the same with ``denominator="pos_plus_neg"``, the pixel contrast), or
    ``"infonce"`` (anchors against ``n`` other contrasts, positive = same index)."""

    form: str
    n: int
    d: int
    classes: int = 10

    @property
    def denominator(self) -> str:
        return "pos_plus_neg" if self.form == "pixel" else "all"

    @property
    def id(self) -> str:
        return f"{self.form}-N{self.n}-d{self.d}"


def shapes(device_type: str, large: bool) -> list[Shape]:
    """The method's own sizes (pixel contrast: 1024 sampled anchors, 256-d), the CPU target of
    the project (N = 4096, d = 128) on the CPU, and its GPU targets (N up to 65,536) on a GPU."""
    if device_type == "cuda":
        out = [
            Shape("pixel", 1024, 256, 2),
            Shape("supcon", 4096, 128),
            Shape("supcon", 16384, 128),
            Shape("infonce", 16384, 128),
            Shape("supcon", 65536, 128),
        ]
        return out + ([Shape("supcon", 131072, 128)] if large else [])
    out = [
        Shape("pixel", 1024, 256, 2),
        Shape("supcon", 2048, 128),
        Shape("supcon", 4096, 128),
        Shape("infonce", 2048, 128),
    ]
    return out + ([Shape("supcon", 8192, 128), Shape("supcon", 16384, 128)] if large else [])


def dtypes(device_type: str) -> list[torch.dtype]:
    return [torch.float32, torch.bfloat16] if device_type == "cuda" else [torch.float32]


@dataclass
class Inputs:
    anchors: torch.Tensor
    labels: torch.Tensor
    contrasts: torch.Tensor | None
    contrast_labels: torch.Tensor | None

    def leaves(self) -> list[torch.Tensor]:
        return [t for t in (self.anchors, self.contrasts) if t is not None and t.requires_grad]


def make_inputs(shape: Shape, dtype: torch.dtype, dev: torch.device, grad: bool) -> Inputs:
    """L2-normalised random features (seeded) and labels; InfoNCE pairs anchor i with contrast i."""
    g = torch.Generator().manual_seed(0)

    def features() -> torch.Tensor:
        x = F.normalize(torch.randn(shape.n, shape.d, generator=g), dim=1)
        return x.to(dev, dtype).requires_grad_(grad)

    anchors = features()
    if shape.form == "infonce":
        ids = torch.arange(shape.n, device=dev)
        return Inputs(anchors, ids, features(), ids.clone())
    labels = torch.randint(0, shape.classes, (shape.n,), generator=g).to(dev)
    return Inputs(anchors, labels, None, None)


def loss_fn(backend: str, shape: Shape, x: Inputs, dev: torch.device) -> Callable[[], torch.Tensor]:
    """The loss of ``backend`` on ``x`` (mean over anchors), or a skip with the reason."""
    kwargs: dict[str, Any] = dict(
        temperature=TEMPERATURE, base_temperature=TEMPERATURE, denominator=shape.denominator
    )
    if backend == harness.COMPILE:
        fn = harness.compiled(supcon_loss_reference)
        return lambda: fn(x.anchors, x.labels, x.contrasts, x.contrast_labels, **kwargs)
    if backend == PML:
        if shape.form == "pixel":
            pytest.skip(
                "pytorch-metric-learning's SupConLoss has no pos_plus_neg (ContrastiveSeg) form"
            )
        from pytorch_metric_learning.losses import SupConLoss

        pml = SupConLoss(temperature=TEMPERATURE)
        if x.contrasts is None:
            return lambda: pml(x.anchors, x.labels)
        return lambda: pml(x.anchors, x.labels, ref_emb=x.contrasts, ref_labels=x.contrast_labels)
    if backend == INF_CL:
        if shape.form != "infonce":
            pytest.skip("Inf-CL computes InfoNCE (one positive per anchor), not SupCon with labels")
        if dev.type != "cuda":
            pytest.skip("Inf-CL runs only on CUDA GPUs (Triton/CUDA kernels); not installable here")
        try:
            from inf_cl import cal_inf_loss
        except ImportError as exc:
            pytest.skip(f"Inf-CL is not installed ({exc}); pip install inf_cl")
        # Without a process group Inf-CL runs its single-device flash kernels; it returns the mean.
        return lambda: cal_inf_loss(
            x.anchors, x.contrasts, scale=1.0 / TEMPERATURE, head_dim=shape.d
        )

    inputs = dict(
        anchors=x.anchors,
        labels=x.labels,
        contrasts=x.contrasts,
        contrast_labels=x.contrast_labels,
        weights=None,
        reduction="mean",
        self_offset=None,
        **kwargs,
    )
    reason = harness.skip_reason(OP, backend, inputs, dev)
    if reason is not None:
        pytest.skip(reason)
    return lambda: supcon_loss(
        x.anchors, x.labels, x.contrasts, x.contrast_labels, backend=backend, **kwargs
    )


QUADRATIC = ("torch", harness.COMPILE, PML)  # backends that hold the N x M matrix


@pytest.mark.parametrize("backend", harness.backends(OP, (PML, INF_CL)))
@pytest.mark.parametrize("mode", harness.MODES)
def test_supcon(benchmark: Any, backend: str, mode: str, shape: Shape, dtype: torch.dtype) -> None:
    dev = harness.device()
    if backend in QUADRATIC:  # several N x N fp32 matrices live at once (about six measured)
        harness.skip_unless_fits(6 * 4 * shape.n**2, dev, f"{backend} at N={shape.n}")
    x = make_inputs(shape, dtype, dev, grad=mode == "fwd+bwd")
    loss = loss_fn(backend, shape, x, dev)

    if mode == "fwd":

        def call() -> torch.Tensor:
            with torch.no_grad():
                return loss()
    else:

        def call() -> torch.Tensor:
            for t in x.leaves():
                t.grad = None
            out = loss()
            out.backward()
            return out

    passes = 1 if mode == "fwd" else 3
    try:
        harness.run_case(
            benchmark,
            call,
            group=f"supcon {shape.id} {harness.dtype_name(dtype)} {mode}",
            dev=dev,
            extra=dict(
                op=OP,
                backend=backend,
                mode=mode,
                shape=shape.id,
                n=shape.n,
                m=shape.n,
                d=shape.d,
                classes=shape.classes,
                denominator=shape.denominator,
                dtype=harness.dtype_name(dtype),
            ),
            work=dict(flop=float(2 * shape.n * shape.n * shape.d * passes)),
        )
    except torch.OutOfMemoryError as exc:
        pytest.skip(f"out of memory: {exc}".splitlines()[0])
