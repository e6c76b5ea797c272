"""``colzero experiment``: prefix sharing, resume, the statistics against slow references, the report."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
from conftest import make_dense

from colzero.experiment import (
    Collected,
    RouteInfo,
    build_plan,
    build_results,
    describe_plan,
    load_grid,
    render_markdown,
    run_experiment,
    write_report,
)
from colzero.experiment.grid import FindingSpec, GridError, PaperNumbers, StatisticsSpec, parse_grid
from colzero.experiment.stats import (
    Interval,
    bootstrap_ci,
    compare_paired,
    paired_randomization_test,
    verdict,
)

PROMPTS = {"query": "search_query: ", "document": "search_document: "}
TOPICS = [
    ("fox", "the quick brown fox jumps over the lazy dog"),
    ("colbert", "late interaction retrieval model with token vectors"),
    ("protein", "protein cell gene study results"),
    ("network", "neural network training loss learning"),
    ("search", "search query document vector score"),
    ("cat", "a cat is not a dog but a cat"),
    ("paper", "who wrote the paper on retrieval"),
    ("data", "data method results show the study"),
    ("token", "token vector score for the query"),
    ("gene", "the gene of a cell in the study"),
    ("dog", "the lazy dog and the brown fox"),
    ("text", "text retrieval with a neural model"),
]


# ---------------------------------------------------------------------- a tiny world on disk
def tiny_world(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    beir = root / "beir"
    (beir / "qrels").mkdir(parents=True)
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": t, "text": x}) + "\n" for i, (t, x) in enumerate(TOPICS))
    )
    (beir / "queries.jsonl").write_text(
        "".join(
            json.dumps({"_id": f"q{i}", "text": f"what about {t}"}) + "\n" for i, (t, _) in enumerate(TOPICS)
        )
    )
    (beir / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t{1 + i % 2}\n" for i in range(len(TOPICS)))
    )
    texts = [x for _, x in TOPICS]
    sup = root / "sup.jsonl"
    sup.write_text(
        "".join(
            json.dumps({"query": t, "document": x, "negative": [texts[(i + 1) % 12], texts[(i + 2) % 12]]})
            + "\n"
            for i, (t, x) in enumerate(TOPICS)
        )
    )
    kd = root / "kd.jsonl"
    kd.write_text(
        "".join(
            json.dumps(
                {
                    "query_id": str(i),
                    "query": t,
                    "document_ids": [f"d{(i + j) % 12}" for j in range(4)],
                    "scores": [4.0, 3.0, 2.0, 1.0],
                }
            )
            + "\n"
            for i, (t, _) in enumerate(TOPICS)
        )
    )
    mlm = root / "mlm"
    m = make_dense("bert")
    m.backbone.save_pretrained(mlm)
    m.tokenizer.save_pretrained(mlm)
    recipe = root / "base.toml"
    recipe.write_text(
        f"""
name = "tiny-base"
[model]
base = "{mlm}"
type = "colbert"
[model.settings]
embedding_dim = 16
query_length = 16
document_length = 32
prompts = {{ query = "search_query: ", document = "search_document: " }}

[[prepare]]
tool = "pairs"
output = "${{run}}/data/pairs.jsonl"
args = {{ corpus = "{beir / "corpus.jsonl"}", mode = "title", min_words = 1 }}

[[phases]]
name = "unsupervised"
stage = "unsupervised"
batch_size = 4
max_steps = 2
precision = "fp32"
log_every = 1
save_every = 1
[phases.loss]
kind = "cached_contrastive"
temperature = 0.05
mini_batch_size = 2
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
batch_size = 4
max_steps = 2
precision = "fp32"
log_every = 1
save_every = 1
[phases.loss]
kind = "contrastive"
temperature = 0.2
n_negatives = 2
[phases.optim]
learning_rate = 1e-3
[[phases.sources]]
name = "sup"
path = "{sup}"
format = "jsonl"
query = "query"
positive = "document"
negatives = "negative"
max_negatives = 2

[[phases]]
name = "distillation"
stage = "distillation"
batch_size = 4
max_steps = 2
precision = "fp32"
log_every = 1
save_every = 1
[phases.loss]
kind = "distillation"
n_candidates = 4
[phases.optim]
learning_rate = 1e-3
[[phases.sources]]
name = "kd"
path = "{kd}"
format = "jsonl"
query = "query"
candidate_ids = "document_ids"
teacher_scores = "scores"
documents = "{beir / "corpus.jsonl"}"
"""
    )
    return {"beir": beir, "mlm": mlm, "recipe": recipe}


def tiny_grid_text(world: dict[str, Path], seeds: str = "[1]") -> str:
    return f"""
name = "tiny"
seeds = {seeds}
reference = "zero"

[starts.mlm]
path = "{world["mlm"]}"

[recipes.cb]
recipe = "{world["recipe"]}"

[recipes.cb-np]
recipe = "{world["recipe"]}"
settings = {{ embedding_dim = 16, query_length = 16, document_length = 32, prompts = {{}} }}

[recipes.dn]
recipe = "{world["recipe"]}"
type = "dense"
settings = {{ pooling = "mean", normalize = true, max_length = 32, prompts = {{ query = "search_query: ", document = "search_document: " }} }}

[[routes]]
name = "zero"
label = "Zero"
start = "mlm"
phases = ["cb:unsupervised", "cb:supervised"]
paper = {{ ndcg10 = 55.43, cost = "~408 GH200-h" }}

[[routes]]
name = "no-prompts"
start = "mlm"
phases = ["cb-np:unsupervised"]

[[routes]]
name = "misaligned"
start = "mlm"
phases = ["cb-np:unsupervised", {{ use = "cb:supervised", allow_prompt_mismatch = true }}]

[[routes]]
name = "dense"
start = "mlm"
phases = ["dn:unsupervised"]

[[routes]]
name = "dense-kd"
start = "route:dense"
phases = ["cb:distillation"]

[[evaluation.datasets]]
name = "tiny-beir"
path = "{world["beir"]}"

[statistics]
n_resamples = 200

[[findings]]
id = "zero-beats-dense-kd"
claim = "Zero > dense KD"
better = "zero"
worse = "dense-kd"
paper = "55.43 vs 54.09"
"""


def write_grid(root: Path, text: str) -> Path:
    path = root / "grid.toml"
    path.write_text(text)
    return path


def counting_runner(calls: list, fail_on: str | None = None):
    """The trainer's run_phase, recording (phase name, start model, seed, output dir, resume)."""
    from colzero.training.trainer import run_phase

    def runner(cfg, **kw):
        calls.append((cfg.name, cfg.model, cfg.seed, cfg.output_dir, kw.get("resume")))
        if cfg.name == fail_on and not getattr(runner, "failed", False):
            runner.failed = True
            cfg.max_steps = 1  # one step is checkpointed, then the process "dies"
            run_phase(cfg, **kw)
            raise KeyboardInterrupt("simulated kill during " + cfg.name)
        return run_phase(cfg, **kw)

    return runner


# ---------------------------------------------------------------------- planning
def test_plan_shares_prefixes_and_keys_do_not_depend_on_the_folder(tmp_path):
    world = tiny_world(tmp_path / "world")
    grid = parse_grid(tiny_grid_text(world, "[1, 2]"))
    plan = build_plan(grid, tmp_path / "exp-a")
    other = build_plan(grid, tmp_path / "somewhere" / "exp-b")
    assert list(plan.nodes) == list(other.nodes)
    # per seed: cb:U, cb:S, np:U, cb:S from np:U, dn:U, cb:KD from dn:U
    assert len(plan.nodes) == 6 * 2
    for seed in (1, 2):
        zero, nop, mis = plan.run("zero", seed), plan.run("no-prompts", seed), plan.run("misaligned", seed)
        assert nop.chain[0] == mis.chain[0] and zero.chain[1] != mis.chain[1]
        assert zero.chain[0] != nop.chain[0]  # prompts and settings differ
        assert plan.nodes[mis.chain[1]].allow_prompt_mismatch
        kd = plan.run("dense-kd", seed)
        assert kd.lineage == [*plan.run("dense", seed).chain, *kd.chain]
        assert set(plan.nodes[nop.chain[0]].users) == {f"no-prompts@{seed}", f"misaligned@{seed}"}
        assert f"dense-kd@{seed}" in plan.nodes[kd.lineage[0]].users
    assert plan.run("zero", 1).chain[0] != plan.run("zero", 2).chain[0]  # the seed is in the key
    # the prepared pairs are re-homed under EXP/data/<tool>-<hash>/ and shared by every recipe
    outputs = {s["output"] for n in plan.nodes.values() for s in n.data["prepare"]}
    assert len(outputs) == 1 and Path(outputs.pop()).parent.parent == plan.exp_dir / "data"
    text = describe_plan(plan)
    assert "to train: 12 of 12 phases" in text and "shared phases" in text


def test_changing_a_phase_changes_its_key_and_its_descendants_only(tmp_path):
    world = tiny_world(tmp_path / "world")
    base = build_plan(parse_grid(tiny_grid_text(world)), tmp_path / "exp")
    changed = build_plan(
        parse_grid(
            tiny_grid_text(world), overrides={"recipes": {"cb": {"phases": {"supervised": {"max_steps": 3}}}}}
        ),
        tmp_path / "exp",
    )
    a, b = base.run("zero", 1), changed.run("zero", 1)
    assert a.chain[0] == b.chain[0] and a.chain[1] != b.chain[1]
    assert base.run("dense-kd", 1).chain == changed.run("dense-kd", 1).chain


def test_misaligned_prompts_need_the_flag(tmp_path):
    world = tiny_world(tmp_path / "world")
    text = tiny_grid_text(world).replace(
        '{ use = "cb:supervised", allow_prompt_mismatch = true }', '"cb:supervised"'
    )
    with pytest.raises(GridError, match="allow_prompt_mismatch"):
        build_plan(parse_grid(text), tmp_path / "exp")


def test_grid_errors_name_the_key(tmp_path):
    world = tiny_world(tmp_path / "world")
    with pytest.raises(GridError, match=r"routes\[4\]\.start: no route named 'nope'"):
        parse_grid(tiny_grid_text(world).replace('start = "route:dense"', 'start = "route:nope"'))
    with pytest.raises(GridError, match=r"grid.toml: seeds: .*required"):
        parse_grid(tiny_grid_text(world).replace("seeds = [1]", ""), "grid.toml")
    with pytest.raises(GridError, match="has no phase 'nope'"):
        build_plan(
            parse_grid(tiny_grid_text(world).replace('"dn:unsupervised"', '"dn:nope"')), tmp_path / "e"
        )


@pytest.mark.parametrize(("name", "unique"), [("paper-routes-cpu", 54), ("paper-routes", 16)])
def test_presets_plan_offline(tmp_path, name, unique):
    grid = load_grid(name)
    plan = build_plan(grid, tmp_path / name)
    assert len(plan.nodes) == unique
    assert {r.name for r in grid.routes} == {
        "colbert-zero",
        "colbert-zero-noprompts",
        "colbert-zero-noprompts-long",
        "prompts-misaligned",
        "prompts-misaligned-reverse",
        "dense",
        "dense-supervised-kd",
        "dense-kd-only",
    }
    # prompts and extra length apart, misalignment both ways: each a finding
    pairs = {f.id: (f.better, f.worse) for f in grid.findings}
    assert pairs["prompts-help"] == ("colbert-zero", "colbert-zero-noprompts-long")
    assert pairs["extra-length-helps"] == ("colbert-zero-noprompts-long", "colbert-zero-noprompts")
    assert pairs["prompts-must-be-aligned"] == ("colbert-zero", "prompts-misaligned")
    assert pairs["prompts-must-be-aligned-reverse"] == (
        "colbert-zero-noprompts",
        "prompts-misaligned-reverse",
    )
    first = grid.seeds[0]
    long, short = plan.run("colbert-zero-noprompts-long", first), plan.run("colbert-zero-noprompts", first)
    for key_long, key_short in zip(long.chain, short.chain, strict=True):
        a, b = plan.nodes[key_long], plan.nodes[key_short]
        assert a.prompts == b.prompts == {}
        settings = a.recipe.settings_for(0)
        assert settings["query_length"] == b.recipe.settings_for(0)["query_length"] + 7
        assert settings["document_length"] == b.recipe.settings_for(0)["document_length"] + 7
    reverse = plan.run("prompts-misaligned-reverse", first)
    assert plan.nodes[reverse.chain[0]].prompts == PROMPTS and plan.nodes[reverse.chain[1]].prompts == {}
    assert reverse.chain[0] == plan.run("colbert-zero", first).chain[0]  # shared pre-training
    for node in plan.nodes.values():  # the released code's gradient scale in every contrastive phase
        loss = node.recipe.phases[0].loss
        assert loss.kind == "distillation" or loss.loss_scale == "pylate", node.label
    text = describe_plan(plan)
    assert f"to train: {unique} of {unique} phases" in text
    names = [d.name for d in grid.evaluation.datasets]
    assert "scifact-mini" not in names
    if name == "paper-routes-cpu":
        assert len(grid.seeds) >= 2
        assert names == ["scifact", "arguana", "vaswani", "msmarco-dl19-mini"]
        vaswani = grid.evaluation.datasets[2]
        assert vaswani.keep_self_hits and grid.evaluation.datasets[3].graded
        # one teacher scoring / pair building for every route and seed
        kd = {s["output"] for n in plan.nodes.values() for s in n.data["prepare"] if s["tool"] == "score"}
        assert len(kd) == 1
        assert len(grid.seeds) == 3
    else:
        # the dense start carries its prompts: declared, shown, applied when evaluated as it is
        assert grid.starts["dense"].prompts == PROMPTS
        assert plan.run("dense", first).eval_settings == {"prompts": PROMPTS}
        assert (
            "ModernBERT-embed (dense) [prompts query='search_query: ', document='search_document: ']" in text
        )
        for route in ("dense-supervised-kd", "dense-kd-only"):  # the guard's truth for their first phase
            assert plan.nodes[plan.run(route, first).chain[0]].data["model"]["base_prompts"] == PROMPTS


def test_cli_dry_run(tmp_path, capsys):
    from colzero.cli.main import main

    assert main(["experiment", "paper-routes-cpu", "--dry-run", "-o", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "ColBERT-Zero" in out and "to train: 54 of 54" in out
    assert "prompts misaligned (dropped)" in out and "no prompts, extra length" in out
    assert not (tmp_path / "e").exists()  # a dry run writes nothing
    assert main(["experiment", "paper-routes", "--dry-run", "-o", str(tmp_path / "f")]) == 0
    out = capsys.readouterr().out
    assert "ColBERT-Zero, no prompts, extra length (colbert-zero-noprompts-long)" in out
    assert "prompts misaligned (dropped) (prompts-misaligned-reverse)" in out
    assert (
        "ModernBERT-embed (dense) [prompts query='search_query: ', document='search_document: '] -> (no training)"
        in out
    )


# ---------------------------------------------------------------------- declared start settings
def saved_without_prompts(root: Path) -> Path:
    """A dense model saved as sentence-transformers with empty prompts (as ModernBERT-embed)."""
    folder = make_dense("bert", max_length=32).save(root / "dense-start")
    config = json.loads((folder / "config_sentence_transformers.json").read_text())
    assert not any((config.get("prompts") or {}).values())
    return folder


def start_grid(world: dict[str, Path], start: Path, declared: str, phases: str = "[]") -> str:
    return f"""
name = "starts"
seeds = [1]
reference = "dense"
[starts.dense]
path = "{start}"
{declared}
[recipes.cb]
recipe = "{world["recipe"]}"
[[routes]]
name = "dense"
start = "dense"
phases = []
[[routes]]
name = "kd"
start = "dense"
phases = {phases}
[[evaluation.datasets]]
name = "tiny-beir"
path = "{world["beir"]}"
[statistics]
n_resamples = 200
"""


def test_dense_start_is_evaluated_with_its_declared_prompts(tmp_path):
    """A start evaluated as it is gets the prompts its grid entry declares, not its saved (empty) ones."""
    from colzero.evaluation import RetrievalSettings, compute_metrics, load_dataset, retrieve
    from colzero.model.loading import load_model

    world = tiny_world(tmp_path / "world")
    start = saved_without_prompts(tmp_path)
    declared = 'prompts = { query = "search_query: ", document = "search_document: " }\nquery_length = 12'
    grid = write_grid(tmp_path, start_grid(world, start, declared))
    run_experiment(grid, tmp_path / "exp", show_progress=False)
    plan = build_plan(load_grid(grid), tmp_path / "exp")
    assert "[prompts query='search_query: ', document='search_document: '; query_length 12]" in describe_plan(
        plan
    )
    (task,) = plan.evals_of(plan.run("dense", 1))
    record = json.loads(task.file.read_text())
    used = record["settings"]
    assert used["query_prompt"] == "search_query: " and used["document_prompt"] == "search_document: "
    assert used["query_tokens"] == 12 and used["query_prompt_used"] == "search_query: "
    model, ds = load_model(start), load_dataset(world["beir"])
    direct = RetrievalSettings(
        query_prompt="search_query: ", document_prompt="search_document: ", query_length=12
    )
    want = compute_metrics(ds.qrels, retrieve(model, ds, direct).run, ["ndcg@10"], per_query=True)["ndcg@10"]
    assert record["per_query"]["ndcg@10"] == pytest.approx(want)
    # the declaration is part of the start's key: the same folder without it is another model
    bare = build_plan(parse_grid(start_grid(world, start, "")), tmp_path / "exp")
    assert bare.run("dense", 1).model_key != plan.run("dense", 1).model_key
    assert bare.run("dense", 1).eval_settings == {}


def test_local_start_with_empty_saved_prompts_passes_the_guard_when_declared(tmp_path):
    """The dense start's local copy: its saved config says no prompts; the declaration wins."""
    from colzero.training.pipeline import run_recipe
    from colzero.training.prompts import PromptMismatchError

    world = tiny_world(tmp_path / "world")
    start = saved_without_prompts(tmp_path)
    phases = '["cb:supervised"]'
    # undeclared: the plan builds (it reads no model), the phase's guard refuses the empty saved prompts
    plan = build_plan(parse_grid(start_grid(world, start, "", phases)), tmp_path / "a")
    node = plan.nodes[plan.run("kd", 1).chain[0]]
    node.recipe_file.parent.mkdir(parents=True)
    node.recipe_file.write_text(node.recipe_text())
    with pytest.raises(PromptMismatchError, match="no prompts"):
        run_recipe(node.recipe_file, node.dir, dry_run=True)
    # declared: the node's recipe carries them and the guard passes
    declared = 'prompts = { query = "search_query: ", document = "search_document: " }'
    plan = build_plan(parse_grid(start_grid(world, start, declared, phases)), tmp_path / "b")
    node = plan.nodes[plan.run("kd", 1).chain[0]]
    assert node.data["model"]["base_prompts"] == PROMPTS
    node.recipe_file.parent.mkdir(parents=True)
    node.recipe_file.write_text(node.recipe_text())
    run_recipe(node.recipe_file, node.dir, dry_run=True)
    # declared prompts that differ from the phase's are refused when the plan is built
    other = 'prompts = { query = "query: " }'
    with pytest.raises(GridError, match="differ from those starts.dense declares"):
        build_plan(parse_grid(start_grid(world, start, other, phases)), tmp_path / "c")


# ---------------------------------------------------------------------- running
def test_each_phase_trains_once_and_rerun_does_nothing(tmp_path):
    world = tiny_world(tmp_path / "world")
    grid = write_grid(tmp_path, tiny_grid_text(world))
    calls: list = []
    result = run_experiment(grid, tmp_path / "exp", phase_runner=counting_runner(calls), show_progress=False)
    outputs = [c[3] for c in calls]
    assert len(calls) == len(result.plan.nodes) == 6 and len(set(outputs)) == 6
    assert result.plan.phase_uses() == 8  # 8 phase uses by the routes, 6 trainings
    shared = result.plan.run("misaligned", 1).chain[0]
    assert sum(Path(o).parent.name == shared for o in outputs) == 1
    evals = sorted((tmp_path / "exp" / "eval").rglob("*.json"))
    assert len(evals) == 5  # five route models x one dataset
    record = json.loads(evals[0].read_text())
    assert len(record["per_query"]["ndcg@10"]) == len(TOPICS)
    results = json.loads((tmp_path / "exp" / "report" / "results.json").read_text())
    assert set(results["routes"]) == {"zero", "no-prompts", "misaligned", "dense", "dense-kd"}
    assert results["routes"]["dense-kd"]["cost"]["phases"] == 2
    assert results["routes"]["dense-kd"]["cost"]["own_phases"] == 1
    assert results["findings"][0]["verdict"] in {"reproduced", "not reproduced", "inconclusive at this scale"}
    assert (tmp_path / "exp" / "report" / "quality_vs_cost.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "exp" / ".lock").exists()
    # one clipping row per (phase, start): every step's pre-clip norm counted, the clip at 1.0
    clipping = {(r["phase"], r["from"]): r for r in results["clipping"]}
    assert len(clipping) == 6 and all(
        r["steps"] == 2 and r["max_grad_norm"] == 1.0 for r in clipping.values()
    )
    assert clipping[("cb:supervised", "cb-np:unsupervised")]["loss"] == "contrastive"
    assert clipping[("cb:unsupervised", world["mlm"].name)]["loss_scale"] == "mean"
    for r in clipping.values():
        assert 0 <= r["clipped_steps"] <= 2 and r["clipped_fraction"] == r["clipped_steps"] / 2
        assert r["grad_norm_mean"] > 0
    assert (
        "## Gradient norm and clipping per phase" in (tmp_path / "exp" / "report" / "report.md").read_text()
    )
    stamps = {p: p.stat().st_mtime_ns for p in evals}
    calls.clear()
    again = run_experiment(grid, tmp_path / "exp", phase_runner=counting_runner(calls), show_progress=False)
    assert calls == [] and again.trained == [] and again.evaluated == 0
    assert {p: p.stat().st_mtime_ns for p in evals} == stamps


def test_rerun_after_a_kill_continues(tmp_path):
    world = tiny_world(tmp_path / "world")
    text = tiny_grid_text(world)
    # two routes sharing the first phase: "zero" (U -> S) and "zero-u" (U only)
    text = (
        text[: text.index("[[routes]]")]
        + (
            '[[routes]]\nname = "zero"\nstart = "mlm"\nphases = ["cb:unsupervised", "cb:supervised"]\n\n'
            '[[routes]]\nname = "zero-u"\nstart = "mlm"\nphases = ["cb:unsupervised"]\n\n'
        )
        + text[text.index("[[evaluation.datasets]]") : text.index("[[findings]]")]
    )
    grid = write_grid(tmp_path, text)
    calls: list = []
    runner = counting_runner(calls, fail_on="supervised")
    with pytest.raises(KeyboardInterrupt):
        run_experiment(grid, tmp_path / "exp", phase_runner=runner, show_progress=False)
    assert [c[0] for c in calls] == ["unsupervised", "supervised"]
    killed = Path(calls[-1][3])
    assert (killed / "checkpoints").exists() and not (killed.parent / "node.json").exists()
    assert not (tmp_path / "exp" / ".lock").exists()
    calls.clear()
    result = run_experiment(grid, tmp_path / "exp", phase_runner=runner, show_progress=False)
    assert [c[3] for c in calls] == [str(killed)] and calls[0][4]  # only the killed phase, resumed
    metrics = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    steps = [m["step"] for m in metrics if "step" in m and "loss" in m]
    assert steps.count(1) == 1 and max(steps) == 2  # step 1 was not redone
    assert result.trained == [killed.parent.name] and len(result.skipped) == 1
    assert len(list((tmp_path / "exp" / "eval").rglob("*.json"))) == 2


# ---------------------------------------------------------------------- statistics vs references
def test_bootstrap_matches_scipy_and_a_slow_loop():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 0.2, size=40)
    se = x.std(ddof=1) / np.sqrt(x.size)
    ours = bootstrap_ci([x], n_resamples=20_000, seed=1)
    ref = stats.bootstrap((x,), np.mean, method="percentile", n_resamples=20_000, random_state=7)
    assert ours.estimate == pytest.approx(x.mean(), abs=1e-12)
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.15 * se)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.15 * se)
    # stratified macro mean against a hand-written loop
    groups = [rng.uniform(size=7), rng.uniform(size=12)]
    r = random.Random(5)
    reps = []
    for _ in range(20_000):
        means = [sum(g[r.randrange(len(g))] for _ in range(len(g))) / len(g) for g in groups]
        reps.append(sum(means) / len(means))
    lo, hi = np.quantile(reps, [0.025, 0.975])
    ours = bootstrap_ci(groups, n_resamples=20_000, seed=2)
    spread = hi - lo
    assert ours.estimate == pytest.approx((groups[0].mean() + groups[1].mean()) / 2)
    assert ours.low == pytest.approx(lo, abs=0.04 * spread) and ours.high == pytest.approx(
        hi, abs=0.04 * spread
    )
    constant = bootstrap_ci([[0.5] * 9], n_resamples=500)
    assert constant.low == constant.high == pytest.approx(0.5)


def test_randomization_test_matches_scipy_exactly_and_a_slow_loop():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(11)
    a = rng.uniform(size=10)
    b = a - rng.normal(0.05, 0.1, size=10)
    ref = stats.permutation_test(
        (a, b),
        lambda x, y, axis=-1: np.mean(x - y, axis=axis),
        permutation_type="samples",
        n_resamples=np.inf,
        alternative="two-sided",
        vectorized=True,
    )
    assert paired_randomization_test([a - b]) == pytest.approx(ref.pvalue, abs=1e-12)
    # two strata, exact, against every sign vector enumerated by hand
    d1, d2 = rng.normal(0.1, 0.2, size=5), rng.normal(-0.02, 0.2, size=4)
    observed = abs((d1.mean() + d2.mean()) / 2)
    count = 0
    for signs in itertools.product((1, -1), repeat=9):
        s = np.array(signs)
        count += abs(((s[:5] * d1).mean() + (s[5:] * d2).mean()) / 2) >= observed - 1e-12
    assert paired_randomization_test([d1, d2]) == pytest.approx(count / 2**9)
    # Monte Carlo (2^12 > n_resamples) agrees with the exact value
    d = rng.normal(0.05, 0.2, size=12)
    exact = paired_randomization_test([d], n_resamples=2**12)
    assert paired_randomization_test([d], n_resamples=3000, seed=4) == pytest.approx(exact, abs=0.03)


def test_compare_paired_and_verdicts():
    a = [np.array([0.5, 0.6, 0.7, 0.4]), np.array([0.2, 0.3, 0.3])]
    b = [np.array([0.5, 0.5, 0.6, 0.5]), np.array([0.1, 0.3, 0.2])]
    cmp = compare_paired(a, b, n_resamples=2000)
    assert cmp.difference.estimate == pytest.approx((0.1 / 4 + 0.2 / 3) / 2)
    assert (cmp.wins, cmp.losses, cmp.ties, cmp.n_queries) == (4, 1, 2, 7)
    assert verdict(Interval(0.1, 0.01, 0.2, 0.95)) == "reproduced"
    assert verdict(Interval(-0.1, -0.2, -0.01, 0.95)) == "not reproduced"
    assert verdict(Interval(0.1, -0.01, 0.2, 0.95)) == "inconclusive at this scale"


# ---------------------------------------------------------------------- the report
def _collected() -> Collected:
    qs1, qs2 = [f"a{i}" for i in range(30)], [f"b{i}" for i in range(20)]
    rng = np.random.default_rng(0)
    base1, base2 = rng.uniform(0.2, 0.8, 30), rng.uniform(0.2, 0.8, 20)

    def route(shift: float, noise: float) -> dict[str, dict[int, dict[str, float]]]:
        out: dict[str, dict[int, dict[str, float]]] = {"d1": {}, "d2": {}}
        for seed in (1, 2):
            e = np.random.default_rng(seed + int(100 * shift) + 70).normal(0, noise, 50)
            out["d1"][seed] = {
                q: float(np.clip(v + shift + e[i], 0, 1))
                for i, (q, v) in enumerate(zip(qs1, base1, strict=True))
            }
            out["d2"][seed] = {
                q: float(np.clip(v + shift + e[30 + i], 0, 1))
                for i, (q, v) in enumerate(zip(qs2, base2, strict=True))
            }
        return out

    return Collected(
        grid="unit",
        reference="ref",
        seeds=[1, 2],
        routes=[
            RouteInfo("ref", "Reference", PaperNumbers(ndcg10=55.43, cost="~408 GH200-h")),
            RouteInfo("better", "Better"),
            RouteInfo("worse", "Worse", PaperNumbers(ndcg10=54.09)),
        ],
        datasets={"d1": {"n_queries": 30, "rule": "graded"}, "d2": {"n_queries": 20, "rule": "graded"}},
        scores={"ref": route(0.0, 0.0), "better": route(0.1, 0.01), "worse": route(-0.1, 0.01)},
        costs={
            "ref": {1: {"total_s": 600.0, "own_s": 600.0, "phases": 3, "own_phases": 3}},
            "better": {1: {"total_s": 120.0, "own_s": 60.0, "phases": 2, "own_phases": 1}},
        },
        findings=[
            FindingSpec(id="f1", claim="Better > Reference", better="better", worse="ref", paper="x"),
            FindingSpec(id="f2", claim="Worse > Reference", better="worse", worse="ref", paper="y"),
            FindingSpec(id="f3", claim="Reference > Reference", better="ref", worse="ref", paper="z"),
        ],
        statistics=StatisticsSpec(n_resamples=2000),
    )


def test_report_numbers_match_a_direct_computation():
    c = _collected()
    results = build_results(c)
    for name in ("ref", "better"):
        for ds in ("d1", "d2"):
            per_seed = c.scores[name][ds]
            direct = np.mean([np.mean([per_seed[s][q] for s in (1, 2)]) for q in per_seed[1]])
            entry = results["routes"][name]["datasets"][ds]
            assert entry["estimate"] == pytest.approx(100 * direct)
            assert entry["low"] <= entry["estimate"] <= entry["high"]
            assert entry["per_seed"]["1"] == pytest.approx(100 * np.mean(list(per_seed[1].values())))
        means = [results["routes"][name]["datasets"][ds]["estimate"] for ds in ("d1", "d2")]
        assert results["routes"][name]["mean"]["estimate"] == pytest.approx(np.mean(means))
    diff = results["comparisons"]["better"]["mean"]
    assert diff["difference_estimate"] == pytest.approx(
        results["routes"]["better"]["mean"]["estimate"] - results["routes"]["ref"]["mean"]["estimate"]
    )
    verdicts = [f["verdict"] for f in results["findings"]]
    assert verdicts == ["reproduced", "not reproduced", "inconclusive at this scale"]
    assert results["routes"]["better"]["cost"]["total_s"] == 120.0
    assert results["cost_unit"] == "wall_minutes"


def test_report_tables(tmp_path):
    c = _collected()
    files = write_report(c, tmp_path / "report")
    md = Path(files["markdown"]).read_text()
    results = json.loads(Path(files["json"]).read_text())
    ref = results["routes"]["ref"]
    row = next(line for line in md.splitlines() if line.startswith("| Reference (reference) |"))
    cells = [x.strip() for x in row.strip("|").split("|")]
    d1 = ref["datasets"]["d1"]
    assert cells[1] == f"{d1['estimate']:.2f} [{d1['low']:.2f}, {d1['high']:.2f}]"
    assert cells[3] == f"{ref['mean']['estimate']:.2f} [{ref['mean']['low']:.2f}, {ref['mean']['high']:.2f}]"
    paper_row = next(line for line in md.splitlines() if line.startswith("| Reference | 55.43 |"))
    assert "~408 GH200-h" in paper_row and "10.0 min" in paper_row
    verdict_rows = [line for line in md.splitlines() if "**" in line and line.startswith("| ")]
    assert [r.split("**")[1] for r in verdict_rows] == [
        "reproduced",
        "not reproduced",
        "inconclusive at this scale",
    ]
    test_row = next(line for line in md.splitlines() if line.startswith("| Better | mean over datasets |"))
    diff = results["comparisons"]["better"]["mean"]
    assert (
        f"{diff['difference_estimate']:+.2f}" in test_row and f"{diff['wins']} / {diff['losses']}" in test_row
    )
    for png in ("quality_vs_cost.png", "ndcg_by_dataset.png", "effects_vs_reference.png"):
        assert (tmp_path / "report" / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in md
    assert render_markdown(results) == render_markdown(results)  # deterministic


def test_dataset_view_is_a_fixed_documented_subset(tmp_path):
    from colzero.evaluation import load_dataset
    from colzero.experiment.evaluation import prepare_dataset
    from colzero.experiment.grid import DatasetSpec

    world = tiny_world(tmp_path / "world")
    ds = load_dataset(world["beir"])
    spec = DatasetSpec(name="t", path=str(world["beir"]), max_queries=5, query_sample_seed=13)
    view = prepare_dataset(ds, spec)
    expected = set(random.Random(13).sample(sorted(ds.query_ids), 5))
    assert set(view.query_ids) == expected and view.query_ids == [q for q in ds.query_ids if q in expected]
    assert view.corpus_ids == ds.corpus_ids and set(view.qrels) == expected
    binary = prepare_dataset(ds, DatasetSpec(name="t", path=".", graded=False, min_grade=2))
    assert {g for docs in binary.qrels.values() for g in docs.values()} == {0, 1}
    assert sum(g for docs in binary.qrels.values() for g in docs.values()) == 6  # grades 2 -> 1, 1 -> 0
    small = prepare_dataset(ds, DatasetSpec(name="t", path=".", max_queries=3, max_documents=4))
    judged = {d for docs in small.qrels.values() for d in docs}
    assert len(small.corpus_ids) == 4 and judged <= set(small.corpus_ids) and small.name == ds.name


def test_cli_lists_grid_presets(capsys):
    from colzero.cli.main import main

    assert main(["experiment", "--list"]) == 0
    out = capsys.readouterr().out
    assert "paper-routes-cpu:" in out and "paper-routes:" in out
