"""Every full-scale preset validates and carries SPEC §3's hyper-parameters (parsed from SPEC.md)."""

from __future__ import annotations

import re

import pytest
from conftest import SHARED

from colzero.training.recipe import load_recipe, preset_names

FULL = [
    "colbert-zero",
    "colbert-zero-noprompts",
    "supervised-kd",
    "kd-only",
    "dense-zero",
    "dense-supervised-kd",
    "dense-kd-only",
]
STAGE_COL = {"unsupervised": 1, "supervised": 2, "distillation": 3}


def spec_table() -> dict[str, list[str]]:
    path = SHARED / "SPEC.md"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    text = path.read_text(encoding="utf-8")
    section = text.split("## 3.")[1].split("## 4.")[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
    return rows


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def test_all_presets_listed():
    assert set(FULL) | {"quickstart"} <= set(preset_names())


@pytest.mark.parametrize("name", FULL)
def test_preset_matches_spec(name):
    rows = spec_table()
    recipe = load_recipe(name)
    prompts = bool(recipe.model.settings.get("prompts"))
    for i, phase in enumerate(recipe.phases):
        col = STAGE_COL[phase.stage]
        assert phase.optim.learning_rate == pytest.approx(_num(rows["learning rate"][col]))
        loss_cell = rows["loss"][col]
        tau = re.search(r"τ = ([0-9.]+)", loss_cell)
        if tau:
            assert phase.loss.temperature == pytest.approx(float(tau.group(1)))
        batch_cell = rows["global batch"][col]
        assert recipe.global_batch(i) == int(_num(re.match(r"[0-9,]+", batch_cell).group(0)))
        chunk = re.search(r"chunks of ([0-9]+)", batch_cell)
        if chunk:
            assert phase.loss.kind == "cached_contrastive"
            assert phase.loss.mini_batch_size == int(chunk.group(1))
        accum = re.search(r"\(([0-9]+) × ([0-9]+) accumulation\)", batch_cell)
        if accum:
            assert (phase.batch_size, phase.gradient_accumulation) == (
                int(accum.group(1)),
                int(accum.group(2)),
            )
        q, d = (int(x) for x in rows["lengths q / d"][col].split("/"))
        settings = recipe.settings_for(i)
        extra = 0 if prompts else 7  # SPEC lengths include the 7 prompt tokens
        if recipe.model.type == "colbert":
            assert settings["query_length"] == q - extra
            assert settings["document_length"] == d - extra
        else:
            assert settings["max_length"] == d - extra
        cands = re.search(r"over the ([0-9]+) candidates", loss_cell)
        if cands:
            assert phase.loss.n_candidates == int(cands.group(1))
        assert phase.epochs == 1 and phase.seed == 42 and phase.precision == "bf16" and phase.drop_last
        o = phase.optim
        assert (o.weight_decay, o.warmup_ratio, o.max_grad_norm, tuple(o.betas), o.eps) == (
            0.0,
            0.0,
            1.0,
            (0.9, 0.999),
            1e-8,
        )
        if phase.loss.kind in ("contrastive", "cached_contrastive"):
            # SPEC section 3: the released code's gradient scale (global sum / world size x mean)
            assert phase.loss.loss_scale == "pylate"
        if phase.stage == "supervised":
            # SPEC section 3: split_negatives keeps one more than its bound of 10
            used = re.search(r"train with ([0-9]+)", rows["data"][col])
            assert used, rows["data"][col]
            n = int(used.group(1))
            assert (
                n == 11 and phase.loss.n_negatives == n and all(s.max_negatives == n for s in phase.sources)
            )
            assert sum(len(s.splits) for s in phase.sources) == 10  # one source per split
        if phase.stage == "unsupervised":
            assert phase.sources[0].path == "nomic-ai/nomic-embed-unsupervised-data"
            assert len(phase.sources[0].splits) == 29
        if phase.stage == "supervised":
            assert {s.path for s in phase.sources} == {"nomic-ai/nomic-embed-supervised"}
        if phase.stage == "distillation":
            assert phase.sources[0].path == "lightonai/ms-marco-en-bge-gemma"
    if prompts:
        assert recipe.model.settings["prompts"] == {
            "query": "search_query: ",
            "document": "search_document: ",
        }
    stages = [p.stage for p in recipe.phases]
    expect = {
        "zero": ["unsupervised", "supervised", "distillation"],
        "supervised-kd": ["supervised", "distillation"],
        "kd-only": ["distillation"],
    }
    key = (
        "zero"
        if name.endswith("zero") or "zero-" in name
        else ("supervised-kd" if "supervised-kd" in name else "kd-only")
    )
    assert stages == expect[key]
    base = recipe.model.base
    assert base == ("answerdotai/ModernBERT-base" if key == "zero" else "nomic-ai/modernbert-embed-base")
    assert recipe.model.type == ("dense" if name.startswith("dense") else "colbert")
