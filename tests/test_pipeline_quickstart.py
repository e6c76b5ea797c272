"""A shortened `colzero train quickstart` end to end on ../shared data (slow: minutes on 2 cores)."""

from __future__ import annotations

import json

import pytest
from conftest import minilm_path, quickstart_prepare, shared_path


@pytest.mark.slow
def test_quickstart_shortened_end_to_end(tmp_path):
    shared_path("models", "splade-tiny-bert")
    shared_path("data", "beir", "scifact-mini")
    minilm_path()
    from colzero.training.pipeline import ndcg10, run_recipe

    overrides = {
        "prepare": quickstart_prepare((400, 200), kd_queries=16, kd_max_length=64),
        "phases": [
            {
                "max_steps": 2,
                "batch_size": 16,
                "loss": {"mini_batch_size": 8},
                "save_every": 1,
                "evaluate": True,
            },
            {"max_steps": 2, "batch_size": 8, "save_every": 1},
            {"max_steps": 2, "batch_size": 4, "loss": {"n_candidates": 4}, "save_every": 1},
        ],
        "evaluation": {
            "datasets": ["${shared}/data/beir/scifact-mini"],
            "intermediate_datasets": ["${shared}/data/beir/scifact-mini"],
        },
    }
    run = tmp_path / "run"
    result = run_recipe("quickstart", run, overrides=overrides, show_progress=False)
    assert set(result.evaluation) == {
        "start",
        "phase-1-unsupervised",
        "phase-2-supervised",
        "phase-3-distillation",
    }
    for stage in result.evaluation.values():
        assert 0.0 <= ndcg10(stage["scifact-mini"]) <= 1.0
    kd = [json.loads(line) for line in (run / "data" / "kd-scifact-minilm.jsonl").read_text().splitlines()]
    assert len(kd) == 16 and all(len(r["document_ids"]) == len(r["scores"]) == 4 for r in kd)
    assert (run / "final" / "README.md").exists() and (run / "summary.json").exists()
    assert (run / "phase-2-supervised" / "eval.json").exists() and (run / "eval" / "start.json").exists()
