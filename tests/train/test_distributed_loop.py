"""The training loop over the DeepSpeed engine on 2 gloo processes, without Ray: periodic
evaluations, ``best.pt`` and an exact resume.

Each process runs the tiny Hermes run three times: straight through 4 steps, stopped after 2,
and resumed from that checkpoint; then once more from that checkpoint without its rank files,
as checkpoints written before they existed are. Checkpoints are those of
:class:`~hermes.train.distributed.worker.RayCheckpoints` with a plain folder in place of Ray's
storage (``ray.train.report`` needs a Ray session). The resumed run must end where the straight
one did, on every rank: weights and buffers (BatchNorm statistics differ between ranks); and
so must rank 0's history (the one checkpoints keep).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytestmark = pytest.mark.dist

WORLD = 2


def _checkpoints(
    engine: Any, cfg: Any, classes: list[str], rank: int, folder: Path, resume: Path | None
) -> Any:
    """RayCheckpoints whose checkpoints go to ``folder`` instead of Ray's storage."""
    from hermes.train.distributed.worker import RayCheckpoints

    class FolderCheckpoints(RayCheckpoints):
        def restore(self) -> dict[str, Any] | None:
            return self.engine.load(Path(self.resume_from)) if self.resume_from else None

        def save(self, run: dict, own: dict, metrics: dict[str, float]) -> None:
            self.write(folder / f"step{run['step']}", run, own)

        def logged(self, step: int, metrics: dict[str, float]) -> None:
            pass

    return FolderCheckpoints(engine, cfg, classes, rank, WORLD, resume and str(resume))


def _run(
    settings: list[str], root: Path, name: str, rank: int, stop: int | None, resume: Path | None
) -> dict:
    from hermes.train.build import build_everything, seed_everything
    from hermes.train.config import load_config
    from hermes.train.distributed.comm import TorchDistComm
    from hermes.train.distributed.engine import (
        DeepSpeedEngine,
        build_engine,
        load_deepspeed_config,
    )
    from hermes.train.distributed.worker import rank_seed
    from hermes.train.loop import run_loop

    out = root / ("half" if name == "resumed" else name)  # a resumed run stays in its folder
    cfg = load_config("default", [*settings, f"out_dir={out}"])
    comps = build_everything(cfg, TorchDistComm())
    ds = load_deepspeed_config(
        "zero1", micro_batch=cfg.data.batch_size, grad_clip=None, use_gpu=False
    )
    engine = DeepSpeedEngine(
        build_engine(comps.method, comps.model.cls, comps.model.seg, cfg.optim, ds),
        torch.device("cpu"),
        rank,
    )
    seed_everything(rank_seed(cfg.seed, rank))
    checkpoints = _checkpoints(engine, cfg, comps.data.classes, rank, root / name, resume)
    result = run_loop(comps, engine, checkpoints, rank=rank, stop_after=stop, report=False)
    state = {k: v.detach().clone() for k, v in comps.method.state_dict().items()}
    return {"state": state, "history": result.state.history, "evals": result.state.evals}


def _worker(rank: int, init_file: str, root: str, settings: list[str]) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    root_path, half = Path(root), Path(root) / "half" / "step2"
    try:
        runs = {
            name: _run(settings, root_path, name, rank, stop, resume)
            for name, stop, resume in (
                ("full", None, None),
                ("half", 2, None),
                ("resumed", None, half),
            )
        }
        legacy = root_path / "legacy-step2"  # as written before checkpoints had rank files
        if rank == 0:  # no rank files; the data positions in DeepSpeed's client state
            shutil.copytree(half, legacy, ignore=shutil.ignore_patterns("rank*.pt"))
            (states,) = (legacy / "deepspeed" / "step2").glob("*model_states.pt")
            client = torch.load(states, weights_only=False)
            client["streams"] = torch.load(half / "rank0.pt", weights_only=True)["streams"]
            del client["best"]
            torch.save(client, states)
        dist.barrier()
        runs["legacy"] = _run(settings, root_path, "legacy", rank, None, legacy)
        torch.save(runs, root_path / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory, tiny_settings: list[str]) -> dict:
    from hermes.data import build_data
    from hermes.train.config import load_config

    root = tmp_path_factory.mktemp("loop")
    settings = [
        *tiny_settings,
        "eval.every=1",
        "checkpoint_every=1",
        "threads=1",
        "distributed.workers=2",
    ]
    build_data(load_config("default", settings).data)  # the phantom, once, before the ranks
    mp.start_processes(
        _worker, args=(str(root / "init"), str(root), settings), nprocs=WORLD, start_method="spawn"
    )
    runs = [torch.load(root / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return {"root": root, "runs": runs}


def test_resume_is_exact_on_every_rank(ranks: dict) -> None:
    full, resumed = ranks["runs"][0]["full"], ranks["runs"][0]["resumed"]
    assert json.dumps(full["history"]) == json.dumps(resumed["history"])
    assert [int(h["step"]) for h in resumed["history"]] == [0, 1, 2, 3]
    for rank, runs in enumerate(ranks["runs"]):
        full, resumed = runs["full"], runs["resumed"]
        assert full["state"].keys() == resumed["state"].keys()
        for key, value in full["state"].items():
            assert torch.equal(value, resumed["state"][key]), (rank, key)
    a, b = (runs["full"]["state"] for runs in ranks["runs"])
    assert any(not torch.equal(a[k], b[k]) for k in a if k.endswith("running_mean"))


def test_periodic_evaluations_and_best_checkpoint(ranks: dict) -> None:
    root, evals = ranks["root"], json.dumps(ranks["runs"][0]["full"]["evals"])  # NaN == NaN
    for runs in ranks["runs"]:  # every rank holds rank 0's metrics
        assert [e["step"] for e in runs["full"]["evals"]] == [1.0, 2.0, 3.0, 4.0]
        assert json.dumps(runs["full"]["evals"]) == json.dumps(runs["resumed"]["evals"]) == evals
    best = torch.load(root / "full" / "best.pt", weights_only=True)
    assert json.dumps(best["best"]) in [json.dumps(e) for e in best["evals"]]
    assert best["step"] == int(best["best"]["step"]) and best["distributed"] == {"workers": WORLD}
    final = torch.load(root / "full" / "step4" / "model.pt", weights_only=True)
    assert final["step"] == 4 and json.dumps(final["evals"]) == evals
    assert sorted(p.name for p in (root / "full" / "step4").glob("rank*.pt")) == [
        "rank0.pt",
        "rank1.pt",
    ]


def test_checkpoint_without_rank_files_still_resumes(ranks: dict) -> None:
    for runs in ranks["runs"]:
        legacy = runs["legacy"]
        assert [int(h["step"]) for h in legacy["history"]] == [0, 1, 2, 3]
        assert json.dumps(legacy["history"][:2]) == json.dumps(
            ranks["runs"][0]["full"]["history"][:2]
        )
        assert all(
            torch.isfinite(v).all() for v in legacy["state"].values() if v.is_floating_point()
        )
