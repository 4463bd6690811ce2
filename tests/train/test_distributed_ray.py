"""Ray Train + DeepSpeed end to end: a local head, `ray job submit`, a failure, a resume.

The module starts its own Ray head (unique temp dir and ports, from the venv's ``ray``), submits
two jobs exactly as ``cluster/README.md`` tells a user to, and stops the head it started:

1. a 2-worker run of ``python -m hermes.train`` stopped after 2 of 6 steps (``--stop-after``):
   it must leave a Ray checkpoint (DeepSpeed shards, one file per rank, ``model.pt``), its
   evaluation at step 2 and ``best.pt``;
2. a run resumed from that checkpoint (``--resume``) in which rank 1 raises at step 5 on its
   first attempt (``HERMES_FAULT_AT``): Ray restarts the workers from the step-4 checkpoint and
   the run reaches step 6 with a report and loadable weights;
3. the same run straight through: the interrupted, resumed and restarted run must end with
   the same weights, history and evaluations.

The head is one process group (``ray start --block`` in a new session) and is stopped by
signalling that group, never with ``ray stop`` (which would stop every Ray on the machine);
the test then checks that no process of the cluster is left.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch

pytestmark = pytest.mark.dist

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
STEPS = 6
TINY = [
    "--set",
    "distributed.workers=2",
    "--set",
    "distributed.max_failures=2",
    "--set",
    f"optim.steps={STEPS}",
    "--set",
    "checkpoint_every=2",
    "--set",
    "eval.every=2",
    "--set",
    "data.phantom_size=48",
    "--set",
    "data.labeled=16",
    "--set",
    "data.image_size=64",
    "--set",
    "method.warmup_steps=0",
    "--set",
    "progress=false",
    "--set",
    "threads=1",
    "--baseline",
    "none",
]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _cluster_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            if marker in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


class Head:
    """A Ray head started by this test, stopped by process group."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="hray", dir="/tmp"))  # short: Ray's socket paths
        gcs, dash, client, node, obj, agent, agent_grpc, metrics, rt_env = _free_ports(9)
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env.update(
            PATH=f"{BIN}:{os.environ.get('PATH', '')}",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="disabled",  # a throwaway local cluster: no token
        )
        cmd = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--num-cpus",
            "2",
            "--temp-dir",
            str(self.tmp / "ray"),
            "--port",
            str(gcs),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dash),
            "--ray-client-server-port",
            str(client),
            "--node-manager-port",
            str(node),
            "--object-manager-port",
            str(obj),
            "--dashboard-agent-listen-port",
            str(agent),
            "--dashboard-agent-grpc-port",
            str(agent_grpc),
            "--metrics-export-port",
            str(metrics),
            "--runtime-env-agent-port",
            str(rt_env),
            "--disable-usage-stats",
        ]
        self.log = open(self.tmp / "head.log", "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ray start exited: {(self.tmp / 'head.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.dashboard}/api/version", timeout=5):
                    return
            except urllib.error.HTTPError:  # e.g. 401 under token auth: the server is up
                return
            except OSError:
                pass
            time.sleep(2)
        raise RuntimeError(f"the Ray head did not come up in {timeout} s")

    def submit(self, job_id: str, args: list[str], env_vars: dict[str, str]) -> str:
        """``ray job submit`` (waits for the end); returns the job's log."""
        ray = str(BIN / "ray")
        runtime_env = json.dumps({"env_vars": env_vars})
        subprocess.run(
            [
                ray,
                "job",
                "submit",
                "--address",
                self.dashboard,
                "--submission-id",
                job_id,
                "--working-dir",
                str(ROOT),
                "--runtime-env-json",
                runtime_env,
                "--",
                "python",
                "-m",
                "hermes.train",
                *args,
            ],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        status = subprocess.run(
            [ray, "job", "status", "--address", self.dashboard, job_id],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        logs = subprocess.run(
            [ray, "job", "logs", "--address", self.dashboard, job_id],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
        assert f"Job '{job_id}' succeeded" in status.stdout, (
            f"{status.stdout}\n{status.stderr}\n{logs[-6000:]}"
        )
        return logs

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        marker = str(self.tmp)
        deadline = time.monotonic() + 30
        while _cluster_processes(marker) and time.monotonic() < deadline:
            time.sleep(1)
        for proc in _cluster_processes(marker):  # only processes of this cluster
            proc.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="module")
def head():
    h = Head()
    try:
        yield h
    finally:
        h.stop()
        left = _cluster_processes(str(h.tmp))
        shutil.rmtree(h.tmp, ignore_errors=True)
        assert not left, f"processes left behind: {[p.pid for p in left]}"


@pytest.fixture(scope="module")
def first_run(head, tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    logs = head.submit("hermes-first", [*TINY, "--out", str(out), "--stop-after", "2"], {})
    return out / "hermes", logs


def _checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in (out / "ray").glob("*/checkpoint_*") if p.is_dir())


@pytest.fixture(scope="module")
def straight_run(head, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    head.submit("hermes-straight", [*TINY, "--out", str(out)], {})
    return out / "hermes"


def test_job_leaves_a_checkpoint(first_run):
    out, logs = first_run
    assert "step 2/6" in logs, logs[-3000:]
    (ckpt,) = _checkpoints(out)
    assert (ckpt / "deepspeed" / "latest").read_text().strip() == "step2"
    assert list((ckpt / "deepspeed" / "step2").glob("*model_states.pt"))
    assert len(list((ckpt / "deepspeed" / "step2").glob("*optim_states.pt"))) == 2  # one per rank
    assert sorted(p.name for p in ckpt.glob("rank*.pt")) == ["rank0.pt", "rank1.pt"]
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["step"] == 2 and saved["distributed"]["workers"] == 2
    # the periodic evaluation at step 2, and best.pt from rank 0, as in one process
    assert [e["step"] for e in saved["evals"]] == [2.0] and saved["best"] == saved["evals"][0]
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["step"] == 2 and best["best"] == saved["best"]
    assert (out / "config.yaml").is_file() and any((out / "tensorboard").iterdir())


@pytest.fixture(scope="module")
def resumed_run(head, first_run, tmp_path_factory):
    first_out, _ = first_run
    (ckpt,) = _checkpoints(first_out)
    root = tmp_path_factory.mktemp("second")
    marker = root / "fault.marker"
    logs = head.submit(
        "hermes-resumed",
        ["--resume", str(ckpt), "--out", str(root), "--set", "progress=false"],
        {"HERMES_FAULT_AT": f"1:5:{marker}"},
    )
    return root / "hermes", logs, marker  # with --out, where a new run would go


def test_resumed_run_survives_a_failure(resumed_run):
    out, logs, marker = resumed_run
    assert marker.exists(), "the injected fault never fired"
    assert "injected fault on rank 1 at step 5" in logs
    assert "resumed at step 2" in logs and "resumed at step 4" in logs, logs[-4000:]
    saved = torch.load(out / "model.pt", weights_only=True)
    assert saved["step"] == STEPS
    # the history is that of one uninterrupted run: every step once, in order
    assert [int(h["step"]) for h in saved["history"]] == list(range(STEPS))
    # each optimiser group's learning rate, by name, as in the single-process loop
    assert {"lr/cls", "lr/cls.encoder", "lr/seg", "lr/seg.encoder"} <= set(saved["history"][0])
    assert [e["step"] for e in saved["evals"]] == [2.0, 4.0, 6.0]
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["final"]["images"] > 0
    assert metrics["evals"] == json.loads(json.dumps(saved["evals"]))

    from hermes.eval.evaluate import predict_batch
    from hermes.train.checkpoint import load_model

    model, cfg = load_model(out / "model.pt")  # what hermes.evaluate / hermes.predict do
    assert cfg.distributed.workers == 2
    seg_logits, cls_logits = predict_batch(model, torch.randn(2, 3, 64, 64))
    assert seg_logits.shape == (2, 2, 64, 64) and cls_logits.shape == (2, 2)


def test_resumed_and_restarted_run_equals_the_straight_run(straight_run, resumed_run):
    a = torch.load(straight_run / "model.pt", weights_only=True)
    b = torch.load(resumed_run[0] / "model.pt", weights_only=True)
    assert a["step"] == b["step"] == STEPS
    assert json.dumps(a["history"]) == json.dumps(b["history"])  # every value, NaN included
    assert json.dumps(a["evals"]) == json.dumps(b["evals"])
    assert a["method"].keys() == b["method"].keys()
    assert all(torch.equal(a["method"][k], b["method"][k]) for k in a["method"])
    assert (straight_run / "best.pt").is_file()
    assert (straight_run / "report" / "summary.md").is_file()
