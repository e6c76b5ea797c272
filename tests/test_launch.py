"""Launching multi-process training: SLURM without torchrun (ranks mapped, or a clear refusal) and
the real launcher on two "nodes" on localhost (``torchrun --nnodes 2 --nproc-per-node 2`` with a
c10d rendezvous), killed after a checkpoint and relaunched: it resumes and ends with the weights
of a single-process run of the same config.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from colzero.training import checkpoint as ckpt
from colzero.training.config import DataSource, LossConfig, OptimConfig, PhaseConfig
from colzero.training.distributed import LaunchError, from_environment, setup
from colzero.training.trainer import run_phase
from tests.conftest import REPO, make_colbert
from tests.test_trainer_distributed import _text, _write_jsonl

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SLURM = {"SLURM_NTASKS": "4", "SLURM_PROCID": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "77"}


@pytest.fixture
def clean_env(monkeypatch):
    """No launcher variables in os.environ; whatever a call adds is removed afterwards."""
    for key in TORCHRUN_VARS + tuple(SLURM):
        monkeypatch.setenv(key, "")  # recorded, so that undo also removes a value set later
        monkeypatch.delenv(key)
    return monkeypatch


# ---------------------------------------------------------------------- SLURM without torchrun
def test_slurm_tasks_are_mapped_to_ranks_when_the_master_is_given(clean_env):
    env = {**SLURM, "SLURM_LOCALID": "1", "MASTER_ADDR": "node-a", "MASTER_PORT": "29500"}
    assert from_environment(env) == (2, 4, 1)
    # exported for init_process_group("env://"), which reads RANK and WORLD_SIZE itself
    assert (os.environ["RANK"], os.environ["WORLD_SIZE"], os.environ["LOCAL_RANK"]) == ("2", "4", "1")


@pytest.mark.parametrize("missing", ["MASTER_ADDR", "MASTER_PORT", "both"])
def test_slurm_tasks_without_a_master_are_refused(clean_env, missing):
    env = {**SLURM, "MASTER_ADDR": "node-a", "MASTER_PORT": "29500"}
    for key in ("MASTER_ADDR", "MASTER_PORT") if missing == "both" else (missing,):
        del env[key]
    with pytest.raises(LaunchError, match="SLURM started 4 tasks but no torchrun") as err:
        from_environment(env)
    assert "torchrun" in str(err.value) and "MASTER_ADDR" in str(err.value)
    assert "RANK" not in os.environ


def test_one_slurm_task_and_torchrun_under_slurm(clean_env):
    assert from_environment({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}) == (0, 1, 0)
    # `srun torchrun ...`: torchrun's variables win over SLURM's (one SLURM task per node)
    torchrun = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "SLURM_NTASKS": "2", "SLURM_PROCID": "1"}
    assert from_environment(torchrun) == (5, 8, 1)
    assert from_environment({}) == (0, 1, 0)
    with pytest.raises(LaunchError, match="RANK=4 is not in"):
        from_environment({"RANK": "4", "WORLD_SIZE": "4"})


def test_setup_refuses_before_joining_any_group(clean_env):
    for key, value in SLURM.items():
        clean_env.setenv(key, value)
    with pytest.raises(LaunchError):
        setup()
    assert not dist.is_initialized()


# ---------------------------------------------------------------------- processes
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS and not k.startswith("SLURM_")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")]),
        CUDA_VISIBLE_DEVICES="",  # gloo on CPU
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        COLZERO_DIST_TIMEOUT_S="120",  # a collective that waits longer fails instead of hanging
    )
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(procs: list[subprocess.Popen]) -> None:
    """Kill what is still running of the processes (and their children) this test started."""
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


@pytest.fixture(scope="module")
def tiny_phase(tmp_path_factory):
    """``(make(out, **changes) -> PhaseConfig, reference final folder)``: contrastive with a hard
    negative, dropout 0, 4 examples per step; the reference is one process in this one."""
    root = tmp_path_factory.mktemp("launch")
    start = make_colbert(query_length=8, document_length=12)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        setattr(start.backbone.config, key, 0.0)
    model = str(start.save(root / "start"))
    import random

    rng = random.Random(0)
    rows = [{"q": _text(rng, 1, 4), "p": _text(rng, 2, 11), "n": [_text(rng, 1, 9)]} for _ in range(24)]
    source = DataSource("a", _write_jsonl(root / "a.jsonl", rows), query="q", positive="p", negatives="n")

    def make(out: str, **changes) -> PhaseConfig:
        base = dict(
            name="launch",
            model=model,
            output_dir=str(root / out),
            sources=[source],
            batch_size=4,
            max_steps=STEPS,
            seed=5,
            precision="fp32",
            log_every=1,
            save_every=2,
            num_workers=1,
            loss=LossConfig(kind="contrastive", temperature=0.05, n_negatives=1),
            # eps 1e-3: see tests/test_trainer_distributed.py (round-off-sized gradients)
            optim=OptimConfig(learning_rate=1e-3, eps=1e-3, warmup_ratio=0.1),
        )
        base.update(changes)
        return PhaseConfig(**base)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in TORCHRUN_VARS:
                mp.delenv(key, raising=False)
            reference = run_phase(make("single"), resume=False, show_progress=False)
    finally:
        torch.set_num_threads(threads)
    return make, reference


STEPS = 12  # 6 global batches per epoch: the run crosses an epoch boundary
ATOL = 1e-5


def _weights(final: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(final / "model.safetensors"))
    out["projection"] = load_file(str(final / "1_Dense" / "model.safetensors"))["linear.weight"]
    return out


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_slurm_tasks_without_torchrun_never_train(tiny_phase, tmp_path):
    """`srun -n 2 colzero train-phase` without MASTER_ADDR: every task stops before writing."""
    make, _ = tiny_phase
    cfg = make(str(tmp_path / "slurm"))
    cfg_file = tmp_path / "phase.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "colzero.cli.main", "train-phase", "--config", str(cfg_file)],
            env=_env(SLURM_NTASKS="2", SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        for r in range(2)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        _stop(procs)
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode != 0
        assert "SLURM started 2 tasks but no torchrun" in err, err[-2000:]
    assert not Path(cfg.output_dir).exists()


# ---------------------------------------------------------------------- torchrun, 2 nodes x 2
def _torchrun(node: int, port: int, run_id: str, cfg_file: Path, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "2",
        "--node-rank",
        str(node),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        run_id,
        "--max-restarts",
        "0",
        "--monitor-interval",
        "0.5",
        "-m",
        "colzero.cli.main",
        "-v",
        "train-phase",
        "--config",
        str(cfg_file),
    ]
    with open(log, "w") as fh:
        return subprocess.Popen(
            cmd, env=_env(), stdout=fh, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True
        )


def _launch_two_nodes(cfg_file: Path, tag: str) -> tuple[list[subprocess.Popen], list[Path]]:
    port = _free_port()
    logs = [cfg_file.parent / f"{tag}-node{n}.log" for n in (0, 1)]
    procs = [_torchrun(n, port, f"{tag}-{port}", cfg_file, logs[n]) for n in (0, 1)]
    return procs, logs


def _tails(logs: list[Path]) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in logs if p.exists())


def test_two_nodes_of_two_processes_train_and_resume(tiny_phase, tmp_path):
    make, reference = tiny_phase
    cfg = make(str(tmp_path / "run"))
    out = Path(cfg.output_dir)
    cfg_file = tmp_path / "phase.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))

    procs, logs = _launch_two_nodes(cfg_file, "first")
    try:  # stop both launchers once a checkpoint exists, as a preempted job
        deadline = time.monotonic() + 240
        while not ckpt.complete_checkpoints(out):
            assert all(p.poll() is None for p in procs), _tails(logs)
            assert time.monotonic() < deadline, "no checkpoint within 240 s\n" + _tails(logs)
            time.sleep(0.05)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
    finally:
        _stop(procs)
    assert all(p.returncode != 0 for p in procs)
    assert not (out / "final").exists(), f"the run ended before it was stopped: raise STEPS ({STEPS})"
    stopped_at = ckpt.latest_checkpoint(out)[0]
    logged = len(_metric_steps(out))  # steps done before the stop (some lost: redone after resume)

    procs, logs = _launch_two_nodes(cfg_file, "again")
    try:
        for p in procs:
            p.wait(300)
    finally:
        _stop(procs)
    assert [p.returncode for p in procs] == [0, 0], _tails(logs)
    text = "".join(p.read_text() for p in logs)
    assert f"resumed phase launch at step {stopped_at}" in text, _tails(logs)

    # the same training as one process: weights, and every step logged once, in order
    single, many = _weights(reference), _weights(out / "final")
    worst = max(float((single[k] - many[k]).abs().max()) for k in single)
    print(f"2 nodes x 2: {logged} steps logged, resumed at {stopped_at}; max |single - resumed| {worst:.1e}")
    for k in single:
        torch.testing.assert_close(many[k], single[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    assert _metric_steps(out) == list(range(1, STEPS + 1))
    cost = json.loads((out / "cost.json").read_text())
    assert cost["world_size"] == 4 and cost["steps"] == STEPS
    state = ckpt.load_state(ckpt.latest_checkpoint(out)[1])
    assert state["world_size"] == 4 and len(state["rng"]) == 4
