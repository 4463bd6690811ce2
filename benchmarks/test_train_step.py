"""Training throughput: images per second of one whole optimisation step.

Variants, side by side per (preset, image size):

- one per dispatch backend (``torch``, ``triton``, ``cpp``, ``cuda``): the project's step
  (``hermes.train.train_step`` on ``hermes.method.HermesMethod``: the two unlabeled views as one
  batch per network, one backward pass) with every fused op forced to that backend where it
  implements the op and can run the inputs, and to the PyTorch reference elsewhere
  (``extra_info["op_backends"]``, with the dispatcher's reasons in ``extra_info["declined"]``);
- ``public-code``: the step built the way the authors' public code builds it, from the same
  networks and loss pieces (:func:`public_code_step`): per network three separate forward
  passes (labeled, weak, strong), the junctions not detached, two backward passes (``L_cls``
  then ``L_seg``), unfused ops. It is here for its cost; its update is not the project's.

Inputs are random images of the preset's size (data loading is not part of the step); the
pseudo-label thresholds are set so that every sample and pixel is kept (``tau = 0`` and the
entropy threshold at its end value ``ln C``), the heaviest step: full contrast sets from the first
step on. Images per second count the labeled and the unlabeled images (8 + 8), not the views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import harness
import pytest
import torch

from hermes.ops import dispatch, dual_threshold

PUBLIC = "public-code"
BATCH = 8
STEP = TOTAL_STEPS = 3000  # schedules at their end values: eta = ln C, lambda = 1


@dataclass(frozen=True)
class Shape:
    preset: str
    image: int

    @property
    def id(self) -> str:
        return f"{self.preset}-{self.image}px"


def shapes(device_type: str, large: bool) -> list[Shape]:
    """The small configuration at its 128 px; the paper configuration (Res2Net-101 + ResNet-18)
    at 224 px on a GPU, and on the CPU at 64 px with ``--hermes-large`` only (a step takes minutes
    on 2 cores; skipped with that reason by default)."""
    if device_type == "cuda":
        return [Shape("small", 128), Shape("paper", 224)]
    return [Shape("small", 128), Shape("paper", 64)]


def dtypes(device_type: str) -> list[torch.dtype]:
    return [torch.float32]


def make_batches(shape: Shape, dev: torch.device) -> tuple[dict[str, Any], dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    s = shape.image

    def images() -> torch.Tensor:
        return torch.randn(BATCH, 3, s, s, generator=g).to(dev)

    labeled = dict(
        image=images(),
        mask=torch.randint(0, 2, (BATCH, s, s), generator=g).to(dev),
        label=torch.randint(0, 2, (BATCH,), generator=g).to(dev),
    )
    unlabeled = dict(weak=images(), strong=images())
    return labeled, unlabeled


def public_code_step(
    model: Any,
    optimizers: list[torch.optim.Optimizer],
    labeled: dict[str, Any],
    unlabeled: dict[str, Any],
    cfg: Any,
    step: int,
    total_steps: int,
) -> torch.Tensor:
    """One step structured as the public Hermes code: three forward passes per network, the
    losses with unfused ops, ``zero_grad`` + backward per branch loss, then both optimisers.

    ``model`` is a :class:`hermes.models.HermesModel` built with ``detach_seg_features=False``
    (the public code does not detach: ``L_cls``'s backward runs into the segmentation branch and
    ``L_seg``'s into the classification branch through ``L_itc``). Loss terms and weights are
    those of :class:`hermes.method.HermesMethod` (the paper's losses).
    """
    from hermes.method import (
        consistency_loss,
        consistency_weight,
        cross_entropy_mean,
        dice_loss,
        entropy_threshold,
        image_contrast,
        masked_cross_entropy,
        pixel_contrast,
    )
    from hermes.method.contrast import IGNORE

    w = cfg.weights
    opt_cls, opt_seg = optimizers
    x, mask, y = labeled["image"], labeled["mask"], labeled["label"]
    seg_l = model.forward_seg(x, saliency=model.saliency(x))
    cls_l = model.forward_cls(x, seg_features=seg_l.features if model.cfg.attention else None)
    outs = {}
    for view in ("weak", "strong"):
        xv = unlabeled[view]
        outs[view] = (model.forward_cls(xv), model.forward_seg(xv, saliency=model.saliency(xv)))
    (cls_w, seg_w), (cls_s, seg_s) = outs["weak"], outs["strong"]

    def pseudo(logits: torch.Tensor, classes: int) -> Any:
        eta = entropy_threshold(step, total_steps, classes, cfg.eta_start)
        return dual_threshold(
            logits.detach(), eta=eta, tau_max=cfg.tau_max, tau_min=cfg.tau_min, backend="torch"
        )

    pl_cls, pl_seg = (
        pseudo(cls_w.logits, model.cfg.num_classes),
        pseudo(seg_w.logits, model.cfg.seg_classes),
    )
    ce_l = cross_entropy_mean(cls_l.logits, y)
    seg_sup = w.seg_ce * cross_entropy_mean(seg_l.logits, mask) + w.seg_dice * dice_loss(
        seg_l.logits, mask
    )
    ce_u = masked_cross_entropy(cls_s.logits, pl_cls.labels, pl_cls.reliable)
    dice_u = w.dice_u_scale * dice_loss(seg_s.logits, pl_seg.labels, weight=pl_seg.reliable)
    contrast_img = image_contrast(
        cls_s.projection,
        cls_w.projection,
        pl_cls.labels,
        pl_cls.reliable,
        temperature=cfg.temperature,
        base_temperature=cfg.base_temperature,
        backend="torch",
    )
    contrast_pix, _, _ = pixel_contrast(
        (seg_s.embedding + seg_w.embedding) / 2,
        torch.where(pl_seg.reliable, pl_seg.labels, torch.full_like(pl_seg.labels, IGNORE)),
        seg_s.logits.detach().argmax(dim=1),
        max_samples=cfg.max_samples,
        max_views=cfg.max_views,
        num_classes=model.cfg.seg_classes,
        temperature=cfg.temperature,
        base_temperature=cfg.base_temperature,
        backend="torch",
    )
    itc = consistency_loss(cls_s.consistency, seg_s.consistency)
    lam = consistency_weight(step, cfg.itc_every, cfg.itc_length)
    loss_cls = w.cls_total * (ce_l + w.ce_u * ce_u + w.contrast_img * contrast_img)
    loss_seg = w.seg_total * (seg_sup + w.dice_u * dice_u + w.contrast_pix * contrast_pix)
    loss_seg = loss_seg + w.itc * lam * itc

    opt_cls.zero_grad(set_to_none=True)
    loss_cls.backward(retain_graph=True)
    opt_seg.zero_grad(set_to_none=True)
    loss_seg.backward()
    opt_cls.step()
    opt_seg.step()
    return (loss_cls + loss_seg).detach()


def op_backends(backend: str) -> dict[str, str]:
    """Per op, ``backend`` where it implements the op, else ``torch``."""
    table = dispatch.available()
    return {op: backend if table[op][backend] == "registered" else "torch" for op in dispatch.OPS}


@pytest.mark.parametrize("variant", [*dispatch.BACKENDS, PUBLIC])
def test_train_step(
    benchmark: Any,
    variant: str,
    shape: Shape,
    dtype: torch.dtype,
    large: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    try:
        from hermes.method import HermesMethod, MethodConfig
        from hermes.models import ModelConfig, build_model
        from hermes.train import OptimConfig, build_optimizers, train_step
    except ImportError as exc:
        pytest.skip(f"the trainer is not importable yet ({exc})")

    dev = harness.device()
    if dev.type == "cpu" and shape.preset == "paper" and not large:
        pytest.skip(
            "paper configuration on the CPU: a step takes minutes on 2 cores; "
            "run with --hermes-large"
        )
    if variant in ("triton", "cuda") and dev.type == "cpu":
        pytest.skip(
            f"{variant} kernels need a CUDA device (triton runs on the CPU only in its "
            "test interpreter)"
        )
    if variant == "cpp" and dev.type == "cuda":
        pytest.skip("cpp is the CPU extension; the GPU step uses the cuda and triton variants")
    backends = {op: "torch" for op in dispatch.OPS} if variant == PUBLIC else op_backends(variant)
    if variant not in ("torch", PUBLIC) and all(b == "torch" for b in backends.values()):
        reason = dispatch.available()["supcon_loss"][variant]
        pytest.skip(f"backend {variant!r} implements none of the ops ({reason})")
    for op, b in backends.items():
        monkeypatch.setenv(f"HERMES_BACKEND_{op.upper()}", b)

    torch.manual_seed(0)
    model = build_model(ModelConfig(preset=shape.preset, detach_seg_features=variant != PUBLIC)).to(
        dev
    )
    cfg = MethodConfig(
        tau_max=0.0,
        tau_min=0.0,
        concat_views=variant != PUBLIC,
        itc_trains="both" if variant == PUBLIC else "seg",
    )
    optimizers, schedulers = build_optimizers(model, OptimConfig(steps=10**9))
    labeled, unlabeled = make_batches(shape, dev)
    if variant == PUBLIC:

        def call() -> Any:
            return public_code_step(model, optimizers, labeled, unlabeled, cfg, STEP, TOTAL_STEPS)
    else:
        method = HermesMethod(model, cfg).to(dev)

        def call() -> Any:
            return train_step(method, optimizers, schedulers, labeled, unlabeled, STEP, TOTAL_STEPS)

    # A backend may implement an op and still decline these inputs (the dispatcher says why):
    # that op falls back to the reference, the others keep the backend.
    declined: list[str] = []
    for _ in dispatch.OPS:
        try:
            call()
            break
        except RuntimeError as exc:
            ops = [op for op in dispatch.OPS if f"hermes.ops.{op}: backend" in str(exc)]
            if not ops or backends[ops[0]] == "torch":
                raise
            declined.append(str(exc))
            backends[ops[0]] = "torch"
            monkeypatch.setenv(f"HERMES_BACKEND_{ops[0].upper()}", "torch")
    if variant not in ("torch", PUBLIC) and all(b == "torch" for b in backends.values()):
        pytest.skip("; ".join(declined))

    try:
        seconds = harness.run_case(
            benchmark,
            call,
            group=f"train step {shape.id} batch {BATCH}+{BATCH}",
            dev=dev,
            budget_s=0.0,
            max_rounds=1,
            warmup=False,  # the loop above made the first step
            extra=dict(
                op="train_step",
                backend=variant,
                mode="fwd+bwd+step",
                shape=shape.id,
                preset=shape.preset,
                image=shape.image,
                batch=f"{BATCH}+{BATCH}",
                dtype=harness.dtype_name(dtype),
                op_backends=backends,
                declined=declined,
            ),
        )
    except RuntimeError as exc:
        if "cannot run these inputs" in str(exc):
            pytest.skip(str(exc))
        raise
    benchmark.extra_info["images_per_s"] = round(2 * BATCH / seconds, 3)
