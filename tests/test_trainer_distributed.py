"""``run_phase`` under 2 and 4 gloo (CPU) processes (DDP) equals 1 process with the same global
batch and seed, and a run killed on 2 (4) ranks resumes on 4 (2) ranks with the same batches.

Each worker is started with ``mp.spawn`` and given the environment torchrun would give it
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) before it calls
``run_phase``, which initialises the process group itself. Every case runs a few optimizer steps
of a tiny random BERT ColBERT (dropout 0, so the ranks' RNG streams do not matter) on tiny JSONL
data (contrastive with a hard negative, learned temperature, weight decay and gradient
accumulation; GradCache; KD), writing an intermediate checkpoint, the contrastive and KD cases
crossing an epoch boundary; the single-process reference runs in the test process meanwhile. Then:

- the final weights agree within ``ATOL`` = 2e-6 (float32 round-off only: each rank pads its
  own documents and reduces in another order; measured max difference 1.4e-7 to 2.9e-7, a couple
  of float32 ulps at weight magnitude ~1, while training moves weights by ~2e-3);
- metrics.jsonl agrees (loss, grad norm, learned temperature to ``RTOL``; steps, epochs, lr,
  examples and tokens exactly) and so do cost.json and the checkpoint's counters;
- only rank 0 writes: the ranks share the output folder, as torchrun on one node does, and the
  folder holds the same files as the single-process run's (a rank that cannot see the folder
  fails loudly: tests/test_checkpoints.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import socket
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file

from colzero.training.config import DataSource, LossConfig, OptimConfig, PhaseConfig
from colzero.training.trainer import run_phase
from tests.conftest import WORDS, make_colbert

STEPS = 3
ATOL = 1e-5  # final weights (lr 1e-3, 3 steps): the bar; measured up to 6e-6 (GradCache, 2 ranks)
RTOL = 5e-5  # logged loss / grad norm / temperature (round-off through the weights: measured up to 1.2e-5)
TIMEOUT_S = 900  # a hang (mismatched collectives) fails the test instead of blocking the run
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _text(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high)))


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _build(root: Path) -> dict[str, PhaseConfig]:
    """Start model, data and the phase configs (output_dir = ``root/<case>/<run>``)."""
    start = make_colbert(query_length=8, document_length=12)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        setattr(start.backbone.config, key, 0.0)  # the saved config builds Dropout(p=0) modules
    model = str(start.save(root / "start"))

    rng = random.Random(0)  # documents of very different lengths: each rank pads to its own max
    a = [{"q": _text(rng, 1, 4), "p": _text(rng, 2, 11), "n": [_text(rng, 1, 9)]} for _ in range(12)]
    b = [{"q": _text(rng, 1, 4), "p": [_text(rng, 2, 9)], "n": [_text(rng, 1, 6), "x"]} for _ in range(8)]
    kd = [
        {
            "q": _text(rng, 1, 4),
            "docs": [_text(rng, 1, 11) for _ in range(4)],
            "s": [rng.uniform(-5, 5) for _ in range(4)],
        }
        for _ in range(8)
    ]
    contrastive_sources = [
        DataSource("a", _write_jsonl(root / "a.jsonl", a), query="q", positive="p", negatives="n"),
        DataSource("b", _write_jsonl(root / "b.jsonl", b), query="q", positive="p", negatives="n"),
    ]
    kd_sources = [
        DataSource(
            "kd", _write_jsonl(root / "kd.jsonl", kd), query="q", candidate_ids="docs", teacher_scores="s"
        )
    ]
    # AdamW's eps: with the default 1e-8, Adam turns round-off-sized gradients (the attention key
    # biases, whose true gradient is 0 as softmax ignores a per-row shift; rare tokens' embedding
    # rows) into +-lr updates, so the runs differed by up to 3e-5 in those. With 1e-3 small
    # gradients move weights in proportion, and Adam is no longer blind to a wrong gradient scale
    # (with 1e-4, GradCache's token_type_embeddings[0, 0], a sum over every token, still differed
    # by 1.4e-5 between 1 and 2 ranks on the sampler's batch order, with the old trainer as well).
    adam = dict(learning_rate=1e-3, eps=1e-3)
    common = dict(
        model=model,
        output_dir=str(root),
        batch_size=4,
        max_steps=STEPS,
        seed=11,
        precision="fp32",
        log_every=1,
        save_every=2,
        num_workers=1,  # the DataLoader's worker process reads and tokenises
    )
    # contrastive: 5 batches of 4 per epoch, accumulation 2 -> step 3 crosses into epoch 1;
    # KD: 2 batches per epoch -> step 3 is in epoch 1
    return {
        "contrastive": PhaseConfig(
            name="contrastive",
            sources=contrastive_sources,
            gradient_accumulation=2,
            loss=LossConfig(kind="contrastive", temperature=0.05, learnable_temperature=True, n_negatives=1),
            # weight decay: a parameter without a gradient (BERT's unused pooler) must stay untouched
            optim=OptimConfig(**adam, warmup_ratio=0.3, weight_decay=0.01, max_grad_norm=1.0),
            **common,
        ),
        "cached_contrastive": PhaseConfig(
            name="cached",
            sources=contrastive_sources,
            loss=LossConfig(kind="cached_contrastive", temperature=0.05, n_negatives=1, mini_batch_size=1),
            optim=OptimConfig(**adam, max_grad_norm=None),
            **common,
        ),
        # shares its output folder between the ranks (torchrun on one node)
        "distillation": PhaseConfig(
            name="kd",
            sources=kd_sources,
            loss=LossConfig(kind="distillation", n_candidates=3),
            optim=OptimConfig(**adam, max_grad_norm=1.0),
            **common,
        ),
    }


def _out(cfg: PhaseConfig, case: str, run: str, **changes) -> PhaseConfig:
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / case / run), **changes)


class Killed(Exception):
    pass


def _kill_after(step: int):
    def callback(done: int, metrics: dict) -> None:
        if done == step:
            raise Killed(f"killed after step {done}")

    return callback


def become_rank(rank: int, world: int, port: int, **extra: str) -> None:
    """This process's environment as torchrun gives it to ``rank`` of ``world`` (gloo on the CPU,
    one thread: set before anything touches CUDA)."""
    os.environ.update(
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        **extra,
    )
    torch.set_num_threads(1)


def _worker(rank: int, world: int, port: int, jobs: list[tuple[PhaseConfig, int | None]]) -> None:
    """Run ``jobs`` (config, kill-after step) as rank ``rank`` of ``world``, as torchrun would."""
    become_rank(rank, world, port)
    try:
        for cfg, kill in jobs:
            with contextlib.suppress(Killed):
                run_phase(
                    cfg, resume=kill is None, show_progress=False, step_callback=kill and _kill_after(kill)
                )
            assert dist.is_initialized() and dist.get_world_size() == world
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn(world: int, jobs: list) -> None:
    ctx = mp.spawn(_worker, args=(world, _free_port(), jobs), nprocs=world, join=False)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the {world}-process run did not finish within {TIMEOUT_S} s (hang?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)


RESUME_CASE = "contrastive"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every case on 1, 2 and 4 ranks; the contrastive case also killed after step 2 on 2 (4)
    ranks and resumed on 4 (2) ranks."""
    root = tmp_path_factory.mktemp("trainer_dist")
    cfgs = _build(root)
    t0 = time.perf_counter()
    with pytest.MonkeyPatch.context() as mpatch:
        for key in DIST_ENV:
            mpatch.delenv(key, raising=False)
        mpatch.setattr(torch.cuda, "is_available", lambda: False)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for case, cfg in cfgs.items():
                run_phase(_out(cfg, case, "single"), resume=False, show_progress=False)
        finally:
            torch.set_num_threads(threads)
    resume = cfgs[RESUME_CASE]
    _spawn(
        2, [(_out(c, k, "world2"), None) for k, c in cfgs.items()] + [(_out(resume, RESUME_CASE, "2to4"), 2)]
    )
    _spawn(
        4, [(_out(c, k, "world4"), None) for k, c in cfgs.items()] + [(_out(resume, RESUME_CASE, "4to2"), 2)]
    )
    _spawn(4, [(_out(resume, RESUME_CASE, "2to4"), None)])  # resume=True
    _spawn(2, [(_out(resume, RESUME_CASE, "4to2"), None)])
    print(f"1/2/4-process runs and resumes: {time.perf_counter() - t0:.1f} s")
    return root


CASES = ["contrastive", "cached_contrastive", "distillation"]
RUNS = ["world2", "world4"]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(final / "model.safetensors"))
    out["projection"] = load_file(str(final / "1_Dense" / "model.safetensors"))["linear.weight"]
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("run", RUNS)
def test_final_weights_match(runs, case, run):
    single, many = _weights(runs / case / "single" / "final"), _weights(runs / case / run / "final")
    start = _weights(runs / "start")
    assert single.keys() == many.keys() == start.keys()
    worst = max(float((single[k] - many[k]).abs().max()) for k in single)
    print(f"{case} {run}: max |single - many ranks| = {worst:.2e}")
    for k in single:
        torch.testing.assert_close(many[k], single[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    assert moved > 100 * ATOL  # it trained: the comparison is not between two copies of the start
    # parameters without a gradient (the unused BERT pooler) are not touched, weight decay or not
    pooler = [k for k in start if k.startswith("pooler.")]
    assert pooler
    for k in pooler:
        assert torch.equal(many[k], start[k]) and torch.equal(single[k], start[k]), k


@pytest.mark.parametrize("run", ["2to4", "4to2"])
def test_resume_on_another_number_of_ranks(runs, run):
    """Killed after step 2 on 2 (4) ranks, resumed on 4 (2): the same global batches in the same
    order, so the same weights as the uninterrupted single-process run (dropout is 0)."""
    out = runs / RESUME_CASE / run
    single = _weights(runs / RESUME_CASE / "single" / "final")
    resumed = _weights(out / "final")
    for k in single:
        torch.testing.assert_close(resumed[k], single[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    steps = [r["step"] for r in _metrics(out)]
    assert steps == list(range(1, STEPS + 1))  # steps 1-2 before the kill, 3 after the resume
    assert _metrics(out)[1]["loss"] == pytest.approx(
        _metrics(runs / RESUME_CASE / "single")[1]["loss"], rel=RTOL
    )


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("run", RUNS)
def test_logged_metrics_match(runs, case, run):
    single, many = _metrics(runs / case / "single"), _metrics(runs / case / run)
    assert [r["step"] for r in single] == [r["step"] for r in many] == list(range(1, STEPS + 1))
    for a, b in zip(single, many, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key in ("wall_s",):
                continue
            if key in ("loss", "grad_norm", "temperature"):
                assert b[key] == pytest.approx(a[key], rel=RTOL, abs=1e-7), (a["step"], key)
            else:  # step, epoch, lr, examples, tokens, steps
                assert b[key] == a[key], (a["step"], key)
    cost_1 = json.loads((runs / case / "single" / "cost.json").read_text())
    cost_n = json.loads((runs / case / run / "cost.json").read_text())
    assert (cost_1["world_size"], cost_n["world_size"]) == (1, int(run[-1]))
    for key in ("examples", "tokens", "steps"):
        assert cost_n[key] == cost_1[key], key


def _state(out: Path) -> dict:
    found = sorted((out / "checkpoints").glob("step-*"))
    return torch.load(found[-1] / "training_state.pt", weights_only=False)


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_state(runs, case):
    single, many = _state(runs / case / "single"), _state(runs / case / "world2")
    assert single["global_step"] == many["global_step"] == STEPS
    assert single["position"] == many["position"]
    assert single["cost"]["examples"] == many["cost"]["examples"]
    assert isinstance(many["rng"], list) and len(many["rng"]) == 2  # every rank's RNG, for resume
    assert single["loss"].keys() == many["loss"].keys()
    for k in single["loss"]:
        torch.testing.assert_close(many["loss"][k], single["loss"][k], atol=ATOL, rtol=0)


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.parent.name != "tb"}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("run", RUNS)
def test_only_rank0_writes(runs, case, run):
    # all ranks used this folder: the same files as one process, nothing left half-written
    single, many = _files(runs / case / "single"), _files(runs / case / run)
    assert many == single
    assert not [f for f in many if Path(f).name.startswith(".")]
    assert len(_metrics(runs / case / run)) == STEPS  # each step logged once, not per rank
    assert len(list((runs / case / run / "tb").iterdir())) == 1
