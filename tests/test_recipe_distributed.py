"""A shortened quickstart recipe (prepare -> GradCache -> contrastive -> distillation, evaluated on a
tiny BEIR folder) under ``torchrun --nproc-per-node 2 -m colzero.cli.main train``, against the same
recipe in one process: both ranks exit 0, only rank 0 writes (the run folder holds the same files
as the single-process run's, every step is logged once, one summary), rank 0 alone runs the
preparation tool and evaluates, once per evaluated model, and the two runs train on the same
batches (the first logged loss of every phase agrees).

Who did what is read from each rank's own log (torchrun ``--log-dir --redirects 3``; ``-v`` makes
colzero log every preparation step and evaluation at INFO): robust to how rank 0 writes its files.
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, WORDS, make_colbert

STEPS = 2  # per phase
EVALUATED = ["start", "phase-1-unsupervised", "phase-3-distillation"]  # phase 2: evaluate = false
TIMEOUT_S = 600

RECIPE = """
name = "tiny-quickstart"
description = "quickstart's three phases, a few steps each, on a tiny model and tiny data"

[model]
base = "{start}"
type = "colbert"

[model.settings]
query_length = 8
document_length = 16

[evaluation]
datasets = ["{beir}"]
intermediate_datasets = ["{beir}"]
batch_size = 16

[[prepare]]
tool = "pairs"
output = "${{run}}/data/pairs.jsonl"
args = {{ corpus = "{beir}/corpus.jsonl", mode = "auto", min_words = 3 }}

[[phases]]
name = "unsupervised"
stage = "unsupervised"
evaluate = true
batch_size = 4
max_steps = {steps}
log_every = 1
save_every = 1

[phases.loss]
kind = "cached_contrastive"
temperature = 0.05
mini_batch_size = 1

[phases.optim]
learning_rate = 1e-3

[[phases.sources]]
name = "pairs"
path = "${{run}}/data/pairs.jsonl"
format = "jsonl"
query = "query"
positive = "document"

[[phases]]
name = "supervised"
stage = "supervised"
evaluate = false
batch_size = 4
max_steps = {steps}
log_every = 1
save_every = 1

[phases.loss]
kind = "contrastive"
temperature = 0.1
n_negatives = 1

[phases.optim]
learning_rate = 1e-3

[[phases.sources]]
name = "train"
path = "{train}"
format = "jsonl"
query = "query"
positive = "pos"
negatives = "neg"

[[phases]]
name = "distillation"
stage = "distillation"
batch_size = 2
gradient_accumulation = 2
max_steps = {steps}
log_every = 1
save_every = 1

[phases.loss]
kind = "distillation"
n_candidates = 4
normalize_scores = true

[phases.optim]
learning_rate = 1e-3

[[phases.sources]]
name = "kd"
path = "{kd}"
format = "jsonl"
query = "query"
candidate_ids = "document_ids"
teacher_scores = "scores"
documents = "{beir}/corpus.jsonl"
"""


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def _make_inputs(root: Path) -> Path:
    """Start model (dropout 0), a tiny BEIR folder, training and KD files; returns the recipe."""
    rng = random.Random(3)
    start = make_colbert(query_length=8, document_length=16)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
        setattr(start.backbone.config, key, 0.0)
    start.save(root / "start")
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{i}", "title": _words(rng, 4), "text": _words(rng, 12)} for i in range(24)]
    _jsonl(beir / "corpus.jsonl", docs)
    _jsonl(beir / "queries.jsonl", [{"_id": f"q{i}", "text": _words(rng, 3)} for i in range(6)])
    qrels = "".join(f"q{i}\td{3 * i}\t1\n" for i in range(6))
    (beir / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + qrels)
    train = _jsonl(
        root / "train.jsonl",
        [{"query": _words(rng, 3), "pos": _words(rng, 8), "neg": [_words(rng, 8)]} for _ in range(12)],
    )
    kd = _jsonl(
        root / "kd.jsonl",
        [
            {
                "query": _words(rng, 3),
                "document_ids": rng.sample([d["_id"] for d in docs], 4),
                "scores": [rng.uniform(-3, 3) for _ in range(4)],
            }
            for _ in range(8)
        ],
    )
    text = RECIPE.format(start=root / "start", beir=beir, train=train, kd=kd, steps=STEPS)
    recipe = root / "recipe.toml"
    recipe.write_text(text, encoding="utf-8")
    return recipe


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        COLZERO_DIST_TIMEOUT_S="300",
    )
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The recipe under torchrun (2 ranks) and, meanwhile, in this process."""
    import logging

    from colzero.training.pipeline import run_recipe

    root = tmp_path_factory.mktemp("recipe2")
    recipe = _make_inputs(root)
    logs = root / "rank-logs"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    cmd += ["--log-dir", str(logs), "--redirects", "3"]
    cmd += ["-m", "colzero.cli.main", "-v", "train", str(recipe), "--output", str(root / "run2")]
    proc = subprocess.Popen(
        cmd, cwd=root, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    level = logging.getLogger("colzero").level
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
                mp.delenv(key, raising=False)
            run_recipe(recipe, root / "run1", show_progress=False, log_file=True)  # as the CLI asks
        out, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s")
    finally:
        logging.getLogger("colzero").setLevel(level)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait(10)
    return root, proc.returncode, out, logs


def _rank_logs(logs: Path) -> dict[int, str]:
    """Each rank's stdout + stderr (torchrun's layout: <log-dir>/<run id>/attempt_0/<rank>/...)."""
    out: dict[int, str] = {}
    for path in sorted(logs.rglob("*.log")):
        if path.name in ("stdout.log", "stderr.log") and path.parent.name.isdigit():
            rank = int(path.parent.name)
            out[rank] = out.get(rank, "") + path.read_text()
    return out


def _evaluations(text: str) -> list[str]:
    return re.findall(r"colzero\.training\.pipeline: (\S+) on beir: ", text)


def _preparations(text: str) -> list[str]:
    return re.findall(r"prepare\[\d+\] pairs: \d+ rows", text)


def _files(run: Path) -> set[str]:
    names = set()
    for p in run.rglob("*"):
        if p.is_file():
            rel = p.relative_to(run)
            # TensorBoard names its file after host, time and pid: keep one name per folder
            names.add(str(rel.parent / "<events>") if rel.name.startswith("events.out") else str(rel))
    return names


def test_both_ranks_exit_zero(runs):
    _, returncode, out, logs = runs
    assert returncode == 0, out[-4000:]
    assert sorted(_rank_logs(logs)) == [0, 1], out[-2000:]
    by_rank = _rank_logs(logs)
    assert "final model:" in by_rank[0] and "final model:" not in by_rank[1]  # rank 0 reports


def test_only_rank0_prepares_and_evaluates_once_per_model(runs):
    root, _, _, logs = runs
    by_rank = _rank_logs(logs)
    expected = [str(root / "start")] + [str(root / "run2" / p / "final") for p in EVALUATED[1:]]
    assert _evaluations(by_rank[0]) == expected
    assert _evaluations(by_rank[1]) == []
    assert len(_preparations(by_rank[0])) == 1 and _preparations(by_rank[1]) == []
    # the single-process run evaluates the same models, once each
    assert len(_evaluations((root / "run1" / "logs" / "pipeline.log").read_text())) == len(expected)
    pipeline_log = (root / "run2" / "logs" / "pipeline.log").read_text()
    assert len(_evaluations(pipeline_log)) == len(expected)
    assert len(_preparations(pipeline_log)) == 1
    evaluated = sorted(p.parent.name for p in (root / "run2").rglob("eval.json"))
    assert evaluated == sorted(EVALUATED[1:])


def test_only_rank0_writes_the_same_files_as_one_process(runs):
    root, *_ = runs
    one, two = root / "run1", root / "run2"
    assert _files(two) == _files(one)
    assert not [f for f in _files(two) if Path(f).name.startswith(".")]  # nothing half-written
    phases = sorted(p.name for p in two.glob("phase-*"))
    assert len(phases) == 3
    for phase in phases:
        metrics = [json.loads(x) for x in (two / phase / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics] == list(range(1, STEPS + 1)), phase  # once, not per rank
        first = json.loads((one / phase / "metrics.jsonl").read_text().splitlines()[0])
        assert metrics[0]["loss"] == pytest.approx(first["loss"], rel=1e-4), phase  # same batches
        assert json.loads((two / phase / "cost.json").read_text())["world_size"] == 2
    summary = json.loads((two / "summary.json").read_text())
    assert set(summary["evaluation"]) == set(EVALUATED)
    assert (two / "final" / "README.md").exists()
