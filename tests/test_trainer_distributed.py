"""``run_phase`` under 2 gloo (CPU) processes equals 1 process with the same global batch and seed.

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
- only rank 0 writes: rank 1 is given an output folder of its own (as on a second node without
  a shared file system) which must never be created; one case shares the folder, as torchrun on
  one node does, and must produce the same files as the single-process run.
"""

from __future__ import annotations

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

WORLD = 2
STEPS = 3
ATOL = 2e-6  # final weights (lr 1e-3, 3 steps)
RTOL = 1e-5  # logged loss / grad norm / temperature
TIMEOUT_S = 240  # a hang (mismatched collectives) fails the test instead of blocking the run
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
    # rows) into +-lr updates, so the runs differed by up to 3e-5 in those. With 1e-4 small
    # gradients move weights in proportion, and Adam is no longer blind to a wrong gradient scale.
    adam = dict(learning_rate=1e-3, eps=1e-4)
    common = dict(
        model=model,
        output_dir=str(root),
        batch_size=4,
        max_steps=STEPS,
        seed=11,
        precision="fp32",
        log_every=1,
        save_every=2,
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


SHARED_DIR_CASE = "distillation"


def _out(cfg: PhaseConfig, case: str, run: str) -> PhaseConfig:
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir) / case / run))


def _rank_cfg(cfg: PhaseConfig, case: str, rank: int) -> PhaseConfig:
    if case == SHARED_DIR_CASE or rank == 0:
        return _out(cfg, case, "dist")
    return _out(cfg, case, "rank1-private")


def _worker(rank: int, port: int, cfgs: dict[str, PhaseConfig]) -> None:
    os.environ.update(
        CUDA_VISIBLE_DEVICES="",  # gloo on CPU, as the reference (set before anything touches CUDA)
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(WORLD),
    )
    torch.set_num_threads(1)
    try:
        for case, cfg in cfgs.items():
            run_phase(_rank_cfg(cfg, case, rank), resume=False, show_progress=False)
            assert dist.is_initialized() and dist.get_world_size() == WORLD
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("trainer_dist")
    cfgs = _build(root)
    t0 = time.perf_counter()
    ctx = mp.spawn(_worker, args=(_free_port(), cfgs), nprocs=WORLD, join=False)
    try:
        # the single-process reference runs here while the workers start up
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
        deadline = time.monotonic() + TIMEOUT_S
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"the 2-process run did not finish within {TIMEOUT_S} s (hang?)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
                p.join(5)
    print(f"2-process + reference runs: {time.perf_counter() - t0:.1f} s")
    return root


CASES = ["contrastive", "cached_contrastive", "distillation"]


def _weights(final: Path) -> dict[str, torch.Tensor]:
    out = load_file(str(final / "model.safetensors"))
    out["projection"] = load_file(str(final / "1_Dense" / "model.safetensors"))["linear.weight"]
    return out


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES)
def test_final_weights_match(runs, case):
    single, two = _weights(runs / case / "single" / "final"), _weights(runs / case / "dist" / "final")
    start = _weights(runs / "start")
    assert single.keys() == two.keys() == start.keys()
    worst = max(float((single[k] - two[k]).abs().max()) for k in single)
    print(f"{case}: max |single - 2 ranks| = {worst:.2e}")
    for k in single:
        torch.testing.assert_close(two[k], single[k], atol=ATOL, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
    moved = max(float((single[k] - start[k]).abs().max()) for k in single)
    assert moved > 100 * ATOL  # it trained: the comparison is not between two copies of the start
    # parameters without a gradient (the unused BERT pooler) are not touched, weight decay or not
    pooler = [k for k in start if k.startswith("pooler.")]
    assert pooler
    for k in pooler:
        assert torch.equal(two[k], start[k]) and torch.equal(single[k], start[k]), k


@pytest.mark.parametrize("case", CASES)
def test_logged_metrics_match(runs, case):
    single, two = _metrics(runs / case / "single"), _metrics(runs / case / "dist")
    assert [r["step"] for r in single] == [r["step"] for r in two] == list(range(1, STEPS + 1))
    for a, b in zip(single, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            if key in ("wall_s",):
                continue
            if key in ("loss", "grad_norm", "temperature"):
                assert b[key] == pytest.approx(a[key], rel=RTOL, abs=1e-7), (a["step"], key)
            else:  # step, epoch, lr, examples, tokens, steps
                assert b[key] == a[key], (a["step"], key)
    cost_1 = json.loads((runs / case / "single" / "cost.json").read_text())
    cost_2 = json.loads((runs / case / "dist" / "cost.json").read_text())
    assert (cost_1["world_size"], cost_2["world_size"]) == (1, WORLD)
    for key in ("examples", "tokens", "steps"):
        assert cost_2[key] == cost_1[key], key


@pytest.mark.parametrize("case", CASES)
def test_checkpoint_state(runs, case):
    def state(run: str) -> dict:
        path = runs / case / run / "checkpoint" / "training_state.pt"
        return torch.load(path, weights_only=False)

    single, two = state("single"), state("dist")
    assert single["global_step"] == two["global_step"] == STEPS
    assert single["sampler"] == two["sampler"]
    assert single["cost"]["examples"] == two["cost"]["examples"]
    assert isinstance(two["rng"], list) and len(two["rng"]) == WORLD  # every rank's RNG, for resume
    assert single["loss"].keys() == two["loss"].keys()
    for k in single["loss"]:
        torch.testing.assert_close(two["loss"][k], single["loss"][k], atol=ATOL, rtol=0)


def _files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.parent.name != "tb"}


@pytest.mark.parametrize("case", CASES)
def test_only_rank0_writes(runs, case):
    if case == SHARED_DIR_CASE:
        # both ranks used this folder: the same files as one process, nothing left half-written
        single, two = _files(runs / case / "single"), _files(runs / case / "dist")
        assert two == single
        assert not [f for f in two if Path(f).name.startswith(".")]
        assert len(_metrics(runs / case / "dist")) == STEPS  # each step logged once, not per rank
        assert len(list((runs / case / "dist" / "tb").iterdir())) == 1
    else:
        assert not (runs / case / "rank1-private").exists()
        assert (runs / case / "dist" / "final" / "modules.json").exists()
