"""Checkpoints that survive: a kill or a failure at any point of a checkpoint write resumes from the
last complete checkpoint and ends with the same weights (bit for bit) as an uninterrupted run.

"Any point" is taken literally with a Python audit hook (:func:`sys.addaudithook`): it sees every
file-system mutation made from Python (``open`` for writing, ``mkdir``, ``rename``/``replace``,
``remove``, ``rmdir``, ``rmtree``) on the thread that writes the checkpoint, and at each one copies
the output folder as it is at that instant: the disk a kill at that instant leaves behind. Files
written by native code (safetensors, ``torch.save``, tokenizers) fall between two such instants;
a native write stopped half-way is covered by the half-write tests and a real SIGKILL of a
subprocess inside ``torch.save``.

Every instant must show (i) a complete checkpoint once one has been written, never an older one
than before the write began; (ii) only complete checkpoints under a ``step-N`` name (same files
as a checkpoint written in full, readable state for step N); (iii) leftovers only under hidden
names, which resume ignores and the next save removes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from colzero.training import checkpoint as ckpt
from colzero.training.config import DataSource, LossConfig, OptimConfig, PhaseConfig
from colzero.training.trainer import run_phase
from tests.conftest import REPO, WORDS, make_colbert

MAX_STEPS = 4  # checkpoints at steps 1, 2, 3 (save_every 1) and 4 (the phase's end)
KEEP = 2
FAULT_STEP = 3  # the write that is interrupted: steps 1 and 2 exist, step 1 is pruned after it

# ---------------------------------------------------------------------- the audit hook
_MUTATIONS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"}
_ARMED: list[tuple] = []  # [(callback, thread id)] while armed
_INSTALLED: list[bool] = []


def _audit(event: str, args: tuple) -> None:
    if not _ARMED or (event not in _MUTATIONS and event != "open"):
        return
    callback, thread = _ARMED[0]
    if threading.get_ident() != thread:  # e.g. TensorBoard's writer thread
        return
    if event == "open":
        mode, flags = args[1], args[2]
        if isinstance(mode, str):
            if not any(c in mode for c in "wax+"):
                return
        elif not flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            return
    _ARMED.clear()  # the callback's own file operations are not instants of the write
    try:
        callback(event, args)
    finally:
        _ARMED.append((callback, thread))


@contextlib.contextmanager
def each_mutation(callback):
    """Call ``callback(event, args)`` before every file-system mutation of this thread.

    Audit hooks cannot be removed; the one installed here does nothing while disarmed."""
    if not _INSTALLED:
        sys.addaudithook(_audit)
        _INSTALLED.append(True)
    _ARMED[:] = [(callback, threading.get_ident())]
    try:
        yield
    finally:
        _ARMED.clear()


# ---------------------------------------------------------------------- checks on a folder
def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def _entries(root: Path) -> list[str]:
    folder = root / ckpt.CHECKPOINTS
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def check_instant(root: Path, expected_files: set[str], at_least: int | None, where: str) -> list[int]:
    """The invariants every instant must hold; returns the complete checkpoints' steps."""
    complete = ckpt.complete_checkpoints(root)
    steps = [s for s, _ in complete]
    if at_least is not None:
        assert steps, f"{where}: no complete checkpoint ({_entries(root)})"
        assert max(steps) >= at_least, f"{where}: newest is step {max(steps)}, was {at_least} before"
    for step, folder in complete:
        assert _files(folder) == expected_files, f"{where}: {folder.name} looks complete but is not"
        assert ckpt.load_state(folder)["global_step"] == step, where
    names = {p.name for _, p in complete}
    stray = [n for n in _entries(root) if n not in names and not n.startswith(".")]
    assert not stray, f"{where}: incomplete checkpoint folders under visible names: {stray}"
    return steps


def _hidden(root: Path) -> list[str]:
    return [n for n in _entries(root) if n.startswith(".")]


# ---------------------------------------------------------------------- save_checkpoint alone
def test_every_instant_of_checkpoint_writes(tmp_path):
    """Every file-system mutation of a series of saves: first save, pruning with keep 2 and 1, the
    same step saved again (a resumed run's final checkpoint), and a save after a killed write."""
    model = make_colbert(query_length=8, document_length=12)
    root = tmp_path / "out"
    snaps: list[tuple[Path, int | None, str]] = []

    def save(step: int, keep: int) -> None:
        before = ckpt.latest_checkpoint(root)

        def snapshot(event, args):
            dest = tmp_path / "snaps" / f"{len(snaps):03d}"
            if root.exists():
                shutil.copytree(root, dest)
            else:
                dest.mkdir(parents=True)
            snaps.append((dest, before and before[0], f"save {step} keep {keep}: {event} {args[0]}"))

        state = {"global_step": step, "weights": torch.full((3,), float(step))}
        with each_mutation(snapshot):
            ckpt.save_checkpoint(root, step, model, state, keep=keep)

    save(1, 2)
    expected = _files(ckpt.step_dir(root, 1))
    assert "training_state.pt" in expected and "model/model.safetensors" in expected
    for step, keep, kept in ((2, 2, [1, 2]), (3, 2, [2, 3]), (3, 1, [3]), (4, 1, [4]), (5, 2, [4, 5])):
        save(step, keep)
        assert check_instant(root, expected, None, f"after save {step}") == kept
        assert not _hidden(root)
    # a killed write leaves a hidden temporary folder: ignored, then removed by the next save
    killed = root / ckpt.CHECKPOINTS / ".step-00000006.tmp-deadbeef"
    shutil.copytree(ckpt.step_dir(root, 5), killed)
    assert ckpt.latest_checkpoint(root)[0] == 5
    save(6, 2)
    assert check_instant(root, expected, None, "after save 6") == [5, 6] and not _hidden(root)

    assert len(snaps) > 100  # every save is many instants (files, renames, deletions)
    for dest, before, where in snaps:
        check_instant(dest, expected, before, where)


# ---------------------------------------------------------------------- a phase, killed anywhere
def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def phase(tmp_path_factory):
    """``make(out) -> PhaseConfig``: a tiny ColBERT (dropout on) trained for 4 steps."""
    root = tmp_path_factory.mktemp("checkpoints")
    model = str(make_colbert(query_length=8, document_length=12).save(root / "start"))
    rows = [{"q": f"{WORDS[i]} {WORDS[i + 1]}", "p": f"{WORDS[i + 1]} {WORDS[i]} model"} for i in range(20)]
    source = DataSource("a", _write_jsonl(root / "a.jsonl", rows), query="q", positive="p")

    def make(out: str | Path) -> PhaseConfig:
        return PhaseConfig(
            name="t",
            model=model,
            output_dir=str(root / out),
            sources=[source],
            batch_size=4,
            max_steps=MAX_STEPS,
            loss=LossConfig(temperature=0.1),
            optim=OptimConfig(learning_rate=1e-3, warmup_ratio=0.25),
            precision="fp32",
            log_every=1,
            save_every=1,
            keep_checkpoints=KEEP,
            num_workers=0,
            seed=7,
        )

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses below use one thread too: identical float sums
    try:
        yield make
    finally:
        torch.set_num_threads(threads)


def _weights(final: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(final / "model.safetensors"))
    out["projection"] = load_file(str(final / "1_Dense" / "model.safetensors"))["linear.weight"]
    return out


def assert_same_weights(final: Path, reference: Path) -> None:
    a, b = _weights(final), _weights(reference)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@contextlib.contextmanager
def during_save(monkeypatch, step: int, inside=contextlib.nullcontext):
    """Yields a list that holds True while checkpoint ``step`` is first written (once: the
    resumed run that follows writes it again undisturbed), inside the context ``inside()``."""
    active: list[bool] = []
    calls: list[int] = []
    original = ckpt.save_checkpoint

    def save(root, at, *args, **kwargs):
        if at != step or calls:
            return original(root, at, *args, **kwargs)
        calls.append(at)
        active.append(True)
        try:
            with inside():
                return original(root, at, *args, **kwargs)
        finally:
            active.clear()

    monkeypatch.setattr(ckpt, "save_checkpoint", save)
    yield active


@pytest.fixture(scope="module")
def uninterrupted(phase, tmp_path_factory):
    """The reference run; the output folder is copied at every instant of checkpoint 3's write."""
    cfg = phase("uninterrupted")
    root = Path(cfg.output_dir)
    snaps: list[tuple[Path, str]] = []

    def snapshot(event, args):
        dest = root.parent / "instants" / f"{len(snaps):03d}"
        shutil.copytree(root, dest, ignore=shutil.ignore_patterns("tb"))
        snaps.append((dest, f"{event} {args[0]}"))

    with pytest.MonkeyPatch.context() as mp, during_save(mp, FAULT_STEP, lambda: each_mutation(snapshot)):
        final = run_phase(cfg, resume=False, show_progress=False)
    expected = _files(ckpt.step_dir(root, MAX_STEPS))
    return final, expected, snaps


def test_uninterrupted_run_keeps_the_last_n(uninterrupted, phase):
    final, _, snaps = uninterrupted
    root = final.parent
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [MAX_STEPS - 1, MAX_STEPS]
    assert not _hidden(root)
    assert _metric_steps(root) == list(range(1, MAX_STEPS + 1))
    start = _weights(Path(phase("x").model))
    assert not torch.equal(start["projection"], _weights(final)["projection"])  # it trained


def test_every_instant_of_a_phase_checkpoint(uninterrupted):
    _, expected, snaps = uninterrupted
    assert len(snaps) > 20
    for dest, where in snaps:
        steps = check_instant(dest, expected, FAULT_STEP - 1, where)
        assert set(steps) <= {FAULT_STEP - 2, FAULT_STEP - 1, FAULT_STEP}, where


def _resume_from_instant(phase, final: Path, dest: Path, where: str) -> None:
    cfg = dataclasses.replace(phase("x"), output_dir=str(dest))
    resumed = run_phase(cfg, show_progress=False)
    assert_same_weights(resumed, final)
    assert [s for s, _ in ckpt.complete_checkpoints(dest)] == [MAX_STEPS - 1, MAX_STEPS], where
    assert not _hidden(dest), f"{where}: leftovers not removed by the later saves"
    assert _metric_steps(dest) == list(range(1, MAX_STEPS + 1)), where


def test_killed_at_every_instant_resumes_bit_identical(uninterrupted, phase):
    """A resume from the disk as a kill at each instant of checkpoint 3's write left it."""
    final, _, snaps = uninterrupted
    for dest, where in snaps:
        _resume_from_instant(phase, final, dest, where)


# ---------------------------------------------------------------------- failures (exceptions)
class DiskFull(OSError):
    pass


def _fail_and_resume(phase, uninterrupted, out: str, kept: list[int], leftover: bool) -> None:
    """Run until the injected failure (it must surface), check the folder, resume, compare."""
    final, expected, _ = uninterrupted
    cfg = phase(out)
    root = Path(cfg.output_dir)
    with pytest.raises(DiskFull):
        run_phase(cfg, resume=False, show_progress=False)
    assert check_instant(root, expected, FAULT_STEP - 1, "after the failure") == kept
    assert bool(_hidden(root)) == leftover, _entries(root)
    assert not (root / "final").exists()
    resumed = run_phase(cfg, show_progress=False)
    assert_same_weights(resumed, final)
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [MAX_STEPS - 1, MAX_STEPS]
    assert not _hidden(root)
    assert _metric_steps(root) == list(range(1, MAX_STEPS + 1))


def _failing_renames(monkeypatch, active: list, pattern: str, check) -> list[str]:
    """``os.replace`` / ``os.rename`` raise DiskFull for a destination named like ``pattern``
    while ``active``; ``check()`` runs at that moment. Returns the names refused."""
    refused: list[str] = []
    for name in ("replace", "rename"):
        original = getattr(os, name)

        def failing(src, dst, *args, _original=original, **kwargs):
            if active and re.search(pattern, Path(dst).name):
                refused.append(Path(dst).name)
                check()
                raise DiskFull(f"rename to {dst} failed")
            return _original(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, name, failing)
    return refused


# the renames that make a checkpoint: the model folder into the temporary checkpoint folder, then
# the temporary folder into place (a failure of the second leaves it behind, hidden)
@pytest.mark.parametrize(("which", "pattern"), [("model", r"^model$"), ("swap", rf"^step-{FAULT_STEP:08d}$")])
def test_failed_rename_resumes_from_last_complete(phase, uninterrupted, monkeypatch, which, pattern):
    _, expected, _ = uninterrupted
    root = Path(phase(f"rename-{which}").output_dir)
    with during_save(monkeypatch, FAULT_STEP) as active:
        # at the moment of the failure the previous checkpoints are untouched
        refused = _failing_renames(
            monkeypatch, active, pattern, lambda: check_instant(root, expected, FAULT_STEP - 1, which)
        )
        kept = [FAULT_STEP - 2, FAULT_STEP - 1]
        _fail_and_resume(phase, uninterrupted, root.name, kept, leftover=which == "swap")
    assert refused, f"no {which} rename happened"


def test_failed_pruning_keeps_training_and_prunes_later(phase, uninterrupted, monkeypatch):
    """Removing an old checkpoint is best effort: the new one is complete, so a failure there is
    logged, the run goes on, and the next save removes what is left."""
    final, expected, _ = uninterrupted
    cfg = phase("prune-fails")
    root = Path(cfg.output_dir)
    seen: list[list[int]] = []
    with during_save(monkeypatch, FAULT_STEP) as active:
        refused = _failing_renames(
            monkeypatch,
            active,
            r"^\.step-\d+\.",
            lambda: seen.append(check_instant(root, expected, FAULT_STEP, "pruning")),
        )
        monkeypatch.setattr(shutil, "rmtree", _refuse_during(active, shutil.rmtree))
        resumed = run_phase(cfg, resume=False, show_progress=False)
    assert refused and seen[0] == [FAULT_STEP - 2, FAULT_STEP - 1, FAULT_STEP]
    assert_same_weights(resumed, final)
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [MAX_STEPS - 1, MAX_STEPS]
    assert not _hidden(root)


def _refuse_during(active: list, original):
    def rmtree(path, *args, **kwargs):
        if active and kwargs.get("ignore_errors"):
            return  # nothing removed, as when every unlink fails
        if active:
            raise DiskFull(f"cannot remove {path}")
        return original(path, *args, **kwargs)

    return rmtree


def _half_written(data: bytes, path) -> None:
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


@pytest.mark.parametrize("where", ["torch.save", "model.save"])
def test_exception_half_way_through_a_write_resumes(phase, uninterrupted, monkeypatch, where):
    """``torch.save`` of the training state, or the projection's safetensors inside ``model.save``,
    writes half of its bytes and raises."""
    import safetensors.torch

    from colzero.model import folder

    hits: list[str] = []
    with during_save(monkeypatch, FAULT_STEP) as active:
        if where == "torch.save":
            original = torch.save

            def fake(obj, f, *args, **kwargs):
                if not (active and isinstance(f, (str, Path))):
                    return original(obj, f, *args, **kwargs)
                buffer = io.BytesIO()
                original(obj, buffer, *args, **kwargs)
                _half_written(buffer.getvalue(), f)
                hits.append(str(f))
                raise DiskFull(f"{f}: no space left")

            monkeypatch.setattr(torch, "save", fake)
        else:
            original = folder.save_file

            def fake(tensors, filename, *args, **kwargs):
                if not active:
                    return original(tensors, filename, *args, **kwargs)
                _half_written(safetensors.torch.save(tensors), filename)
                hits.append(str(filename))
                raise DiskFull(f"{filename}: no space left")

            monkeypatch.setattr(folder, "save_file", fake)
        _fail_and_resume(
            phase, uninterrupted, f"half-{where}", [FAULT_STEP - 2, FAULT_STEP - 1], leftover=False
        )
    assert hits


# ---------------------------------------------------------------------- a real SIGKILL
_CHILD = r"""
import os, signal, sys
import torch
from colzero.training import checkpoint as ckpt
from colzero.training.config import load_phase_config
from colzero.training.trainer import run_phase

torch.set_num_threads(1)
cfg = load_phase_config(sys.argv[1])
kill_at = int(sys.argv[2])
save, original = ckpt.save_checkpoint, torch.save
def half_then_kill(obj, f, *args, **kwargs):
    original(obj, f, *args, **kwargs)
    with open(f, "r+b") as fh:
        fh.truncate(os.path.getsize(f) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
def checkpoint(root, step, *args, **kwargs):
    if step == kill_at:
        torch.save = half_then_kill
    return save(root, step, *args, **kwargs)
ckpt.save_checkpoint = checkpoint
run_phase(cfg, resume=False, show_progress=False)
"""


def _child(cfg_file: Path, kill_at: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", _CHILD, str(cfg_file), str(kill_at)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_sigkill_inside_a_checkpoint_write_resumes_in_a_fresh_process(phase, uninterrupted):
    final, expected, _ = uninterrupted
    cfg = phase("sigkill")
    root = Path(cfg.output_dir)
    cfg_file = root.parent / "sigkill.json"
    cfg_file.write_text(json.dumps(cfg.to_dict()))
    killed = _child(cfg_file, FAULT_STEP)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert check_instant(root, expected, None, "after SIGKILL") == [FAULT_STEP - 2, FAULT_STEP - 1]
    (leftover,) = _hidden(root)  # the killed write: model complete, training state cut in half
    state = root / ckpt.CHECKPOINTS / leftover / ckpt.STATE_FILE
    assert 0 < state.stat().st_size < (ckpt.step_dir(root, FAULT_STEP - 1) / ckpt.STATE_FILE).stat().st_size
    with open(root / "metrics.jsonl", "a") as fh:  # as a kill in the middle of a metrics line leaves it
        fh.write('{"step": 4, "loss": 0.')
    run_phase(cfg, show_progress=False)  # resumed in another process than the killed one
    assert_same_weights(root / "final", final)
    assert [s for s, _ in ckpt.complete_checkpoints(root)] == [MAX_STEPS - 1, MAX_STEPS]
    assert not _hidden(root)
    assert _metric_steps(root) == list(range(1, MAX_STEPS + 1))


# ---------------------------------------------------------------------- a rank that cannot see it
TIMEOUT_S = 300  # a hang fails the test; collectives time out much earlier (COLZERO_DIST_TIMEOUT_S)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_worker(rank: int, world: int, port: int, jobs: list, report: str) -> None:
    """Run each job's config for this rank; record how it ended in ``report/<rank>.json``."""
    import torch.distributed as dist

    from colzero.training.trainer import CheckpointNotVisible
    from tests.test_trainer_distributed import become_rank

    become_rank(rank, world, port, COLZERO_DIST_TIMEOUT_S="60")
    ended = {}
    try:
        for name, cfgs in jobs:
            steps: list[int] = []
            try:
                run_phase(
                    cfgs[rank], show_progress=False, step_callback=lambda s, m, steps=steps: steps.append(s)
                )
                ended[name] = {"error": None, "steps": steps}
            except CheckpointNotVisible as exc:
                ended[name] = {"error": type(exc).__name__, "message": str(exc), "steps": steps}
    finally:
        Path(report, f"{rank}.json").write_text(json.dumps(ended))
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_rank_that_cannot_see_the_checkpoint_fails_loudly_on_every_rank(phase, tmp_path):
    """Two gloo ranks with their own output_dir, as two nodes without a shared file system: a new
    run stops at its first checkpoint, a resumed run before its first step, on both ranks."""
    import time

    import torch.multiprocessing as mp

    def two(name: str) -> list[PhaseConfig]:
        return [dataclasses.replace(phase("x"), output_dir=str(tmp_path / f"{name}-node{r}")) for r in (0, 1)]

    new, resumed = two("new"), two("resumed")
    run_phase(dataclasses.replace(resumed[0], max_steps=2), show_progress=False)  # on node 0 only
    (tmp_path / "resumed-node0" / "final").rename(tmp_path / "resumed-final-of-the-short-run")
    report = tmp_path / "report"
    report.mkdir()
    ctx = mp.spawn(
        _rank_worker,
        args=(2, _free_port(), [("new", new), ("resumed", resumed)], str(report)),
        nprocs=2,
        join=False,
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1):
            assert time.monotonic() < deadline, "the ranks hang instead of failing"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    for rank in (0, 1):
        ended = json.loads((report / f"{rank}.json").read_text())
        for name in ("new", "resumed"):
            assert ended[name]["error"] == "CheckpointNotVisible", (rank, name, ended[name])
            assert ended[name]["steps"] == [], (rank, name)
        assert (
            "step 2" in ended["resumed"]["message"]
            and "file system all nodes share" in ended["resumed"]["message"]
        )
    # node 0 wrote its first checkpoint, then stopped with the others
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path / "new-node0")] == [1]
    assert not (tmp_path / "new-node1" / ckpt.CHECKPOINTS).exists()
    # the resumed run stopped before any step: rank 0 trained and logged nothing
    assert _metric_steps(tmp_path / "resumed-node0") == [1, 2]


def test_cost_of_an_older_checkpoint_resumes_with_its_counters():
    from colzero.training.cost import PhaseCost

    old = {"examples": 640, "tokens": 1947922, "wall_s": 562.5, "steps": 20, "data_wait_s": 2.3}
    cost = PhaseCost.from_dict(old, "phase-3-distillation")
    assert (cost.phase, cost.steps, cost.examples, cost.tokens, cost.wall_s) == (
        "phase-3-distillation", 20, 640, 1947922, 562.5,
    )  # fmt: skip
    assert cost.world_size == 1 and cost.peak_rss_mb_per_rank == []
    assert PhaseCost.from_dict(cost.to_dict(), "other") == cost  # a recorded phase name wins
