"""Checks made before any data or network is built: the output folder and the ops' backend.

- :func:`check_out_dir`: a folder that already holds a run is never written into silently. A
  run continues there only when it resumes one of that folder's own checkpoints; otherwise the
  caller must choose another folder or ask to replace the run (``overwrite``).
- :func:`check_backend`: a forced backend (``triton``, ``cpp``, ``cuda``) that cannot run on
  the training device is an error naming the ``backend`` field and every reason.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

RUN_FILES = ("last.pt", "best.pt", "model.pt")  # a folder holding one of these holds a run
REPLACED = (*RUN_FILES, "config.yaml", "report", "tensorboard", "ray")  # removed by overwrite


def held_run(out_dir: str | Path) -> list[str]:
    """The checkpoints of a run in ``out_dir`` (empty when it holds none), e.g.
    ``["last.pt", "best.pt"]``; a distributed run's ``ray/`` folder counts too."""
    out = Path(out_dir)
    found = [name for name in RUN_FILES if (out / name).is_file()]
    if (out / "ray").is_dir():
        found.append("ray/")
    return found


def _resumable(out: Path, found: list[str]) -> Path:
    """What ``--resume`` names to continue the run in ``out``: ``last.pt``, else a distributed
    run's newest Ray checkpoint folder (its ``best.pt`` and ``model.pt`` hold no optimiser
    state), else the first checkpoint found."""
    if "last.pt" in found:
        return out / "last.pt"
    folders = sorted(p for p in out.glob("ray/*/checkpoint_*") if p.is_dir())
    return folders[-1] if folders else out / found[0]


def check_out_dir(
    out_dir: str | Path, *, resume: str | Path | None = None, overwrite: bool = False
) -> None:
    """Refuse to write a run into a folder that holds another one.

    Args:
        out_dir: the run's folder.
        resume: the checkpoint the run continues; one inside ``out_dir`` continues that
            folder's own run, which is allowed.
        overwrite: replace the run in ``out_dir``: its checkpoints, ``config.yaml``,
            ``report/``, ``tensorboard/`` and ``ray/`` are removed first.

    Raises:
        ValueError: ``out_dir`` holds a run, ``resume`` is not one of its checkpoints and
            ``overwrite`` is false. The message says how to continue, where else to write, and
            how to replace it.
    """
    out = Path(out_dir)
    found = held_run(out)
    if not found:
        return
    if resume is not None and out.resolve() in Path(resume).resolve().parents:
        return
    if not overwrite:
        latest = _resumable(out, found)
        raise ValueError(
            f"out_dir: {out} already holds a run ({', '.join(found)}); continue it with "
            f"--resume {latest}, write to another folder with --out (or --set out_dir=...), "
            "or replace it with --overwrite"
        )
    logger.warning("out_dir: replacing the run in %s (%s)", out, ", ".join(found))
    for name in REPLACED:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def backend_reasons(backend: str, device: torch.device) -> list[str]:
    """Why the fused ops cannot run with ``backend`` forced on ``device`` (empty when they can).

    Each op runs once with the backend forced on a tiny float32 input on ``device``; an op that
    declines gives its reasons. ``auto`` and ``torch`` always run.
    """
    if backend in ("auto", "torch"):
        return []
    from hermes.ops import dual_threshold, inter_task_attention, supcon_loss

    gen = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(device)

    probes = {  # op name -> one call of it
        "supcon_loss": lambda: supcon_loss(
            F.normalize(rand(4, 8), dim=1),
            torch.tensor([0, 0, 1, 1], device=device),
            backend=backend,
        ),
        "dual_threshold": lambda: dual_threshold(rand(4, 2), eta=0.5, backend=backend),
        "inter_task_attention": lambda: inter_task_attention(
            rand(1, 4, 4, 4), rand(1, 4), rand(1, 2, 3, 3), rand(1), backend=backend
        ),
    }
    reasons = []
    for probe in probes.values():
        try:
            probe()
        except RuntimeError as exc:  # the dispatcher's message names the op and the reasons
            reasons.append(str(exc))
    return reasons


def check_backend(backend: str, device: torch.device) -> None:
    """Raise a ``ValueError`` naming the ``backend`` field when it cannot run on ``device``."""
    reasons = backend_reasons(backend, device)
    if reasons:
        raise ValueError(
            f"backend: {backend!r} cannot run on {device} here ({'; '.join(reasons)}); "
            "use --backend auto or torch"
        )
