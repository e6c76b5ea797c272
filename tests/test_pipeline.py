"""The recipe pipeline: resume after a failure, every preset end to end on tiny data (2 steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_dense

from colzero.training.pipeline import run_recipe
from colzero.training.recipe import RecipeError, load_recipe

PROMPTS = {"query": "search_query: ", "document": "search_document: "}
TEXTS = [
    "the quick brown fox",
    "late interaction retrieval model",
    "protein cell gene study",
    "neural network training loss",
    "search query document vector",
    "the lazy dog jumps over",
]


def tiny_data(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"d{i}", "title": "", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    pairs = root / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"query": t.split()[0] + " " + t.split()[-1], "document": t}) + "\n" for t in TEXTS * 3
        )
    )
    sup = root / "sup.jsonl"
    sup.write_text(
        "".join(
            json.dumps({"query": t, "document": t, "negative": [TEXTS[(i + 1) % 6], TEXTS[(i + 2) % 6]]})
            + "\n"
            for i, t in enumerate(TEXTS * 3)
        )
    )
    kd = root / "kd.jsonl"
    kd.write_text(
        "".join(
            json.dumps(
                {
                    "query_id": str(i),
                    "query": t,
                    "document_ids": [f"d{(i + j) % 6}" for j in range(4)],
                    "scores": [4.0, 3.0, 2.0, 1.0],
                }
            )
            + "\n"
            for i, t in enumerate(TEXTS * 3)
        )
    )
    return {"corpus": corpus, "pairs": pairs, "sup": sup, "kd": kd}


def tiny_sources(stage: str, data: dict[str, Path]) -> list[dict]:
    if stage == "unsupervised":
        return [
            {
                "name": "pairs",
                "path": str(data["pairs"]),
                "format": "jsonl",
                "query": "query",
                "positive": "document",
            }
        ]
    if stage == "supervised":
        return [
            {
                "name": "sup",
                "path": str(data["sup"]),
                "format": "jsonl",
                "query": "query",
                "positive": "document",
                "negatives": "negative",
                "max_negatives": 2,
            }
        ]
    return [
        {
            "name": "kd",
            "path": str(data["kd"]),
            "format": "jsonl",
            "query": "query",
            "candidate_ids": "document_ids",
            "teacher_scores": "scores",
            "documents": str(data["corpus"]),
        }
    ]


def tiny_overrides(name: str, root: Path) -> dict:
    recipe = load_recipe(name)
    data = tiny_data(root / "data")
    dense_start = recipe.model.base.startswith("nomic-ai")
    base = root / "base"
    if not base.exists():
        if dense_start:  # a dense retriever trained with the paper's prompts
            make_dense("bert", prompts=dict(PROMPTS)).save(base)
        else:  # an MLM checkpoint: a plain transformers folder, no record
            m = make_dense("bert")
            m.backbone.save_pretrained(base)
            m.tokenizer.save_pretrained(base)
    phases = []
    for p in recipe.phases:
        ov = {
            "sources": tiny_sources(p.stage, data),
            "max_steps": 2,
            "batch_size": 4,
            "gradient_accumulation": 1,
            "precision": "fp32",
            "log_every": 1,
            "save_every": 1,
        }
        loss = {"n_negatives": 2} if p.stage == "supervised" else {}
        if p.loss.kind == "cached_contrastive":
            loss["mini_batch_size"] = 2
        if p.stage == "distillation":
            loss["n_candidates"] = 4
        ov["loss"] = loss
        phases.append(ov)
    model = {"base": str(base)}
    if recipe.model.type == "colbert":
        model["settings"] = {"embedding_dim": 16}
    return {"model": model, "phases": phases, "evaluation": {"datasets": []}}


def _runner_with_failure(fail_on: str, calls: list):
    from colzero.training.trainer import run_phase

    def runner(cfg, **kw):
        calls.append((cfg.name, kw.get("resume")))
        if cfg.name == fail_on and not getattr(runner, "failed", False):
            runner.failed = True
            # train one step (a checkpoint exists), then die as if killed
            cfg.max_steps = 1
            run_phase(cfg, **kw)
            raise KeyboardInterrupt("simulated kill during " + cfg.name)
        return run_phase(cfg, **kw)

    return runner


def test_resume_skips_done_phase_and_resumes_interrupted(tmp_path):
    overrides = tiny_overrides("colbert-zero", tmp_path)
    run = tmp_path / "run"
    calls: list = []
    runner = _runner_with_failure("supervised", calls)
    with pytest.raises(KeyboardInterrupt):
        run_recipe("colbert-zero", run, overrides=overrides, phase_runner=runner, show_progress=False)
    assert (run / "phase-1-unsupervised" / "done.json").exists()
    assert not (run / "phase-2-supervised" / "done.json").exists()
    assert any((run / "phase-2-supervised" / "checkpoints").glob("step-*"))
    calls.clear()
    result = run_recipe(
        "colbert-zero", run, overrides=overrides, phase_runner=runner, show_progress=False, log_file=True
    )
    assert [c[0] for c in calls] == ["supervised", "distillation"]  # phase 1 skipped
    assert all(resume for _, resume in calls)
    metrics = [
        json.loads(line) for line in (run / "phase-2-supervised" / "metrics.jsonl").read_text().splitlines()
    ]
    assert min(m["step"] for m in metrics if "step" in m) == 1
    final = result.final_model
    cfg = json.loads((final / "config_sentence_transformers.json").read_text())
    assert [p["phase"] for p in cfg["colzero"]["training"]["phases"]] == [
        "unsupervised",
        "supervised",
        "distillation",
    ]
    assert cfg["prompts"] == PROMPTS
    assert (final / "README.md").read_text().count("pylate") >= 1
    assert (run / "recipe.toml").exists() and (run / "logs" / "pipeline.log").exists()
    assert set(result.cost["phases"]) == {
        "phase-1-unsupervised",
        "phase-2-supervised",
        "phase-3-distillation",
    }
    assert result.cost["total"]["examples"] > 0
    # a third run does nothing new
    calls.clear()
    run_recipe("colbert-zero", run, overrides=overrides, phase_runner=runner, show_progress=False)
    assert calls == []
    # the run as an older colzero saved it (settings it did not know yet: null) resumes after an upgrade
    saved = json.loads((run / "recipe.resolved.json").read_text())
    saved["phases"][0]["sources"][0]["fewer_negatives"] = None
    saved["phases"][1]["model_settings"]["prompts"] = None
    (run / "recipe.resolved.json").write_text(json.dumps(saved))
    run_recipe("colbert-zero", run, overrides=overrides, phase_runner=runner, show_progress=False)
    assert calls == []
    changed = json.loads(json.dumps(overrides))
    changed["phases"][0]["max_steps"] = 3
    with pytest.raises(RecipeError, match="holds a run of a different recipe"):
        run_recipe("colbert-zero", run, overrides=changed, phase_runner=runner, show_progress=False)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "colbert-zero-noprompts",
        "supervised-kd",
        "kd-only",
        "dense-zero",
        "dense-supervised-kd",
        "dense-kd-only",
    ],
)
def test_preset_runs_on_tiny_data(tmp_path, name):
    overrides = tiny_overrides(name, tmp_path)
    plan = run_recipe(name, tmp_path / "run", overrides=overrides, dry_run=True).plan
    assert all(row["config"]["max_steps"] == 2 for row in plan)
    result = run_recipe(name, tmp_path / "run", overrides=overrides, show_progress=False)
    assert (result.final_model / "modules.json").exists()
    for i, p in enumerate(load_recipe(name).phases):
        assert (tmp_path / "run" / f"phase-{i + 1}-{p.name}" / "done.json").exists()
