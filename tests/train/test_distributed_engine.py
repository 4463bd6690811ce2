"""The DeepSpeed engine with the composite SGD + Adam optimiser, on 2 gloo processes.

- :class:`BranchOptimizer` is exactly ``torch.optim.SGD`` + ``torch.optim.Adam`` (one process),
  and its state dict round-trips;
- under DeepSpeed ZeRO-1, 2 and 3 (the shipped JSON configs), 2 workers on halves of a batch
  reach the weights of a single process with SGD + Adam on the whole batch; bf16 autocast
  comes close;
- the Hermes method inside the engine keeps its memory banks identical on both ranks;
- Mean Teacher's EMA teacher stays identical on both ranks (and FixMatch runs in the engine).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hermes.train.config import OptimConfig
from hermes.train.distributed.optim import BranchOptimizer
from hermes.train.optim import param_groups

WORLD = 2
STEPS = 3
CLS_LR, SEG_LR = 0.1, 0.01


def _toy() -> nn.ModuleDict:
    torch.manual_seed(0)
    return nn.ModuleDict({"cls": nn.Linear(4, 3), "seg": nn.Linear(4, 3)})


def _batch() -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(1))


def _toy_loss(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (m["cls"](x) ** 2).mean() + (m["seg"](x) ** 3).mean()


def _reference(steps: int = STEPS) -> nn.ModuleDict:
    m = _toy()
    opts = [
        torch.optim.SGD(m["cls"].parameters(), lr=CLS_LR, momentum=0.9, weight_decay=1e-4),
        torch.optim.Adam(m["seg"].parameters(), lr=SEG_LR),
    ]
    x = _batch()
    for _ in range(steps):
        for o in opts:
            o.zero_grad()
        _toy_loss(m, x).backward()
        for o in opts:
            o.step()
    return m


def _branch(m: nn.ModuleDict) -> BranchOptimizer:
    return BranchOptimizer(
        param_groups(m["cls"], m["seg"], OptimConfig(cls_lr=CLS_LR, seg_lr=SEG_LR))
    )


def test_branch_optimizer_is_sgd_plus_adam():
    m = _toy()
    opt = _branch(m)
    x = _batch()
    for _ in range(STEPS):
        opt.zero_grad()
        _toy_loss(m, x).backward()
        opt.step()
    for (name, got), want in zip(m.named_parameters(), _reference().parameters(), strict=True):
        assert torch.equal(got, want), name


def test_branch_optimizer_state_dict_round_trip():
    x = _batch()
    m = _toy()
    opt = _branch(m)
    for _ in range(2):
        opt.zero_grad()
        _toy_loss(m, x).backward()
        opt.step()
    m2 = _toy()
    m2.load_state_dict(m.state_dict())
    opt2 = _branch(m2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))  # as if saved and loaded
    for model, o in ((m, opt), (m2, opt2)):
        o.zero_grad()
        _toy_loss(model, x).backward()
        o.step()
    for a, b in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(a, b)
    assert len(opt2.state) == 4  # momentum buffers (2) + Adam moments (2 params)


def test_branch_optimizer_adamw_group_is_torch_adamw():
    m, ref = _toy(), _toy()
    groups = param_groups(m["cls"], m["seg"], OptimConfig(cls_lr=CLS_LR, seg_lr=SEG_LR))
    groups[0] = {
        "params": groups[0]["params"],
        "algorithm": "adamw",
        "lr": CLS_LR,
        "weight_decay": 0.01,
    }
    opt = BranchOptimizer(groups)
    opts = [
        torch.optim.AdamW(ref["cls"].parameters(), lr=CLS_LR, weight_decay=0.01),
        torch.optim.Adam(ref["seg"].parameters(), lr=SEG_LR),
    ]
    x = _batch()
    for _ in range(STEPS):
        opt.zero_grad()
        _toy_loss(m, x).backward()
        opt.step()
        for o in opts:
            o.zero_grad()
        _toy_loss(ref, x).backward()
        for o in opts:
            o.step()
    for (name, got), want in zip(m.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(got, want), name


def test_branch_optimizer_rejects_unknown_algorithm():
    with pytest.raises(ValueError, match="algorithm"):
        BranchOptimizer([{"params": [nn.Parameter(torch.zeros(1))], "algorithm": "lamb", "lr": 1}])


# ----------------------------------------------------------------------------- 2 processes
def _engine_run(name: str, rank: int) -> dict[str, torch.Tensor]:
    from hermes.train.config import OptimConfig
    from hermes.train.distributed.engine import (
        build_engine,
        engine_dtype,
        full_state_dict,
        load_deepspeed_config,
    )

    m = _toy()
    optim = OptimConfig(steps=10**6, cls_lr=CLS_LR, seg_lr=SEG_LR, poly_power=1e-9)
    ds = load_deepspeed_config(name, micro_batch=4, grad_clip=None, use_gpu=False)
    engine = build_engine(m, m["cls"], m["seg"], optim, ds)
    x = _batch()[rank * 4 : (rank + 1) * 4].to(engine_dtype(engine))
    for _ in range(STEPS):
        engine.backward(_toy_loss(engine.module, x))
        engine.step()
    return full_state_dict(engine)


def _method_banks(rank: int) -> dict[str, torch.Tensor]:
    from dataclasses import replace

    from hermes.method import HermesMethod
    from hermes.method.config import MemoryBankConfig
    from hermes.models import build_model
    from hermes.train.config import load_config
    from hermes.train.distributed.comm import TorchDistComm
    from hermes.train.distributed.engine import build_engine, load_deepspeed_config

    cfg = load_config("default", [])
    method_cfg = replace(
        cfg.method,
        warmup_steps=0,
        tau_max=0.0,
        tau_min=0.0,
        eta_start=1.0,
        memory=MemoryBankConfig(image=True, pixel=True, size=8),
        distribution_alignment=True,
    )
    torch.manual_seed(0)
    model = build_model(cfg.model)
    method = HermesMethod(model, method_cfg, comm=TorchDistComm())
    ds = load_deepspeed_config("zero2", micro_batch=2, grad_clip=None, use_gpu=False)
    engine = build_engine(method, model.cls, model.seg, cfg.optim, ds)
    g = torch.Generator().manual_seed(10 + rank)  # different images on each rank
    for step in range(2):
        labeled = {
            "image": torch.randn(2, 3, 64, 64, generator=g),
            "mask": torch.randint(0, 2, (2, 64, 64), generator=g),
            "label": torch.tensor([0, 1]),
            "id": ["a", "b"],
        }
        unlabeled = {
            "weak": torch.randn(2, 3, 64, 64, generator=g),
            "strong": torch.randn(2, 3, 64, 64, generator=g),
            "mask": torch.randint(0, 2, (2, 64, 64), generator=g),
            "label": torch.tensor([1, 0]),
            "id": ["c", "d"],
        }
        loss, _ = engine(labeled, unlabeled, step=step, total_steps=10)
        engine.backward(loss)
        engine.step()
    return {
        k: v.clone()
        for k, v in method.state_dict().items()
        if "_bank." in k or k.startswith("alignment.")
    }


def _baselines(rank: int) -> dict[str, torch.Tensor]:
    """Three steps of Mean Teacher then one of FixMatch in a ZeRO-2 engine, different images on
    each rank: the teachers' (and the students') weights must end identical on both ranks."""
    from hermes.method import MethodConfig, build_method
    from hermes.models import ModelConfig, build_model
    from hermes.train.config import OptimConfig
    from hermes.train.distributed.comm import TorchDistComm
    from hermes.train.distributed.engine import build_engine, load_deepspeed_config

    out: dict[str, torch.Tensor] = {}
    for mode in ("mean_teacher", "fixmatch"):
        torch.manual_seed(0)
        model = build_model(
            ModelConfig(
                preset="small",
                cls_widths=(8, 8, 16, 16),
                cls_stem_width=8,
                seg_widths=(8, 8, 16, 16),
                seg_stem_width=8,
                decoder_channels=(16, 8, 8, 8, 8),
                embed_dim=16,
                proj_hidden=16,
                proj_dim=8,
                consistency_dim=8,
                decoder_dropout=0.0,
            )
        )
        initial = {k: v.clone() for k, v in model.state_dict().items()}
        method = build_method(model, MethodConfig(mode=mode), comm=TorchDistComm())
        ds = load_deepspeed_config("zero2", micro_batch=2, grad_clip=None, use_gpu=False)
        engine = build_engine(method, model.cls, model.seg, OptimConfig(steps=100), ds)
        g = torch.Generator().manual_seed(20 + rank)
        for step in range(3 if mode == "mean_teacher" else 1):
            labeled = {
                "image": torch.randn(2, 3, 32, 32, generator=g),
                "mask": torch.randint(0, 2, (2, 32, 32), generator=g),
                "label": torch.tensor([0, 1]),
            }
            unlabeled = {
                "weak": torch.randn(2, 3, 32, 32, generator=g),
                "strong": torch.randn(2, 3, 32, 32, generator=g),
            }
            loss, _ = engine(labeled, unlabeled, step=step, total_steps=10)
            engine.backward(loss)
            engine.step()
            out[f"{mode}/loss{step}"] = loss.detach().clone()
        # weights only: BatchNorm running statistics are per rank by construction
        for k, v in method.named_parameters():
            out[f"{mode}/{k}"] = v.detach().clone()
        if mode == "mean_teacher":
            out.update({f"initial/{k}": v for k, v in initial.items()})
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import os

    torch.set_num_threads(1)
    # what a launcher (torchrun, Ray's TorchTrainer) sets and DeepSpeed checks
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {
            name: _engine_run(name, rank) for name in ("zero1", "zero2", "zero3", "zero2_bf16")
        }
        results["banks"] = _method_banks(rank)
        results["baselines"] = _baselines(rank)
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    tmp = tmp_path_factory.mktemp("engine")
    mp.start_processes(
        _worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return [torch.load(tmp / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.dist
@pytest.mark.parametrize("name", ["zero1", "zero2", "zero3"])
def test_deepspeed_update_equals_single_process(ranks, name):
    want = dict(_reference().named_parameters())
    for r in ranks:
        for key, value in r[name].items():
            torch.testing.assert_close(value, want[key].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.dist
def test_deepspeed_bf16_is_close(ranks):
    want = dict(_reference().named_parameters())
    for key, value in ranks[0]["zero2_bf16"].items():
        torch.testing.assert_close(value, want[key].detach(), rtol=0, atol=2e-2)


@pytest.mark.dist
def test_memory_banks_and_alignment_identical_on_every_rank(ranks):
    a, b = ranks[0]["banks"], ranks[1]["banks"]
    assert a, "the method has no memory bank buffers"
    counts = [v for k, v in a.items() if k.endswith("count")]
    assert counts and all(int(c.sum()) > 0 for c in counts), counts  # something was enqueued
    # the class-distribution alignment averaged both ranks' (different) images, twice
    assert a["alignment.updates"].item() == 2
    assert not torch.equal(a["alignment.source"], torch.full((2,), 0.5))
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.dist
def test_mean_teacher_identical_on_every_rank(ranks):
    a, b = ranks[0]["baselines"], ranks[1]["baselines"]
    teacher = [k for k in a if k.startswith("mean_teacher/teacher.")]
    assert teacher
    for key in a:
        if not key.startswith("initial/"):
            assert torch.equal(a[key], b[key]), key
    assert all(torch.isfinite(a[k]).all() for k in a if "/loss" in k)
    # the teacher moved (two EMA updates) and is not the student
    moved = [
        k
        for k in teacher
        if "weight" in k and not torch.equal(a[k], a[f"initial/{k.split('teacher.', 1)[1]}"])
    ]
    assert moved
    assert any(not torch.equal(a[k], a[k.replace("/teacher.", "/model.")]) for k in moved)


def test_ema_teachers_refuse_zero3_before_any_worker_starts():
    from hermes.method import MethodConfig
    from hermes.train.distributed.engine import check_method, load_deepspeed_config

    zero3 = load_deepspeed_config("zero3", micro_batch=2, grad_clip=None, use_gpu=False)
    zero2 = load_deepspeed_config("zero2", micro_batch=2, grad_clip=None, use_gpu=False)
    with pytest.raises(ValueError, match="method.mode.*stage 3"):
        check_method(MethodConfig(mode="mean_teacher"), zero3)
    with pytest.raises(ValueError, match="method.teacher.*stage 3"):
        check_method(MethodConfig(teacher="ema"), zero3)
    check_method(MethodConfig(mode="fixmatch"), zero3)
    check_method(MethodConfig(), zero3)
    check_method(MethodConfig(mode="mean_teacher"), zero2)
    check_method(MethodConfig(teacher="ema"), zero2)
