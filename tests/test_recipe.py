"""Recipe schema, error messages, placeholders, overrides and prompt alignment."""

from __future__ import annotations

import json

import pytest

from colzero.training.prompts import PromptMismatchError, check_alignment
from colzero.training.recipe import RecipeError, load_recipe, parse_recipe

MINI = """
name = "mini"
[model]
base = "{base}"
[model.settings]
prompts = {{ query = "search_query: ", document = "search_document: " }}
query_length = 16
[[phases]]
name = "sup"
stage = "supervised"
batch_size = 4
[phases.loss]
kind = "contrastive"
temperature = {tau}
[phases.optim]
learning_rate = 1e-4
[[phases.sources]]
name = "s"
path = "x.jsonl"
format = "jsonl"
query = "query"
positive = "document"
"""


def test_error_names_file_and_key_path(tmp_path):
    f = tmp_path / "recipe.toml"
    f.write_text(MINI.format(base="m", tau=0))
    with pytest.raises(RecipeError, match=r"recipe.toml: phases\[0\]\.loss\.temperature: must be > 0"):
        load_recipe(f)


def test_unknown_key_and_setting(tmp_path):
    with pytest.raises(RecipeError, match=r"phases\[0\]\.optim\.lr: unknown key"):
        parse_recipe(
            MINI.format(base="m", tau=0.2).replace("learning_rate = 1e-4", "learning_rate = 1e-4\nlr = 1")
        )
    with pytest.raises(RecipeError, match="unknown colbert setting"):
        parse_recipe(MINI.format(base="m", tau=0.2).replace("query_length = 16", "query_len = 16"))


def test_cross_field_checks_from_phase_config():
    text = MINI.format(base="m", tau=0.2).replace("temperature = 0.2", "temperature = 0.2\nn_negatives = 2")
    with pytest.raises(RecipeError, match=r"phases\[0\].*negatives"):
        parse_recipe(text)


def test_phase_config_and_overrides(tmp_path):
    r = parse_recipe(MINI.format(base="m", tau=0.2), overrides={"phases": {"max_steps": 2}})
    cfg = r.phase_config(0, model="m", output_dir=tmp_path)
    assert cfg.max_steps == 2 and cfg.loss.temperature == 0.2 and cfg.model_settings["query_length"] == 16
    assert cfg.sources[0].positive == "document"


def test_placeholders(monkeypatch, tmp_path):
    monkeypatch.setenv("COLZERO_SHARED", str(tmp_path))
    for folder in (
        "models/splade-tiny-bert",
        "data/beir/scifact",
        "data/beir/arguana",
        "data/train/scifact-train-hn",
    ):
        (tmp_path / folder).mkdir(parents=True)  # the quickstart's assets are found in COLZERO_SHARED
    for file in ("data/beir/scifact/corpus.jsonl", "data/train/scifact-train-hn/train.jsonl"):
        (tmp_path / file).touch()
    (tmp_path / "data/beir/msmarco-dl19-mini").mkdir(parents=True)
    (tmp_path / "data/beir/msmarco-dl19-mini/corpus.jsonl").touch()
    r = load_recipe("quickstart", run_dir=tmp_path / "run")
    assert r.model.base == f"{tmp_path}/models/splade-tiny-bert"
    assert r.phases[0].sources[0].path == f"{tmp_path / 'run'}/data/pairs-scifact.jsonl"
    assert "${" not in json.dumps(r.model_dump())


def _fake_model(path, prompts):
    path.mkdir(parents=True)
    (path / "modules.json").write_text("[]")
    (path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {}, "colzero": {"training": {"prompts": prompts}}})
    )
    return path


def test_prompt_mismatch_refused_naming_both(tmp_path):
    model = _fake_model(tmp_path / "m", {})
    with pytest.raises(PromptMismatchError) as err:
        check_alignment(model, {"query": "search_query: "}, phase_name="sup")
    msg = str(err.value)
    assert "no prompts" in msg and "search_query: " in msg and "allow_prompt_mismatch" in msg
    assert check_alignment(model, {"query": "search_query: "}, allow_mismatch=True)
    assert check_alignment(model, {"query": ""}) is None


def test_pipeline_refuses_mismatched_recipe(tmp_path):
    from colzero.training.pipeline import run_recipe

    model = _fake_model(tmp_path / "m", {"query": "search_query: ", "document": "search_document: "})
    f = tmp_path / "r.toml"
    f.write_text(
        MINI.format(base=model, tau=0.2).replace(
            'prompts = { query = "search_query: ", document = "search_document: " }', "prompts = {}"
        )
    )
    with pytest.raises(PromptMismatchError, match="search_query: .*no prompts"):
        run_recipe(f, tmp_path / "run", dry_run=True)
    f.write_text(f.read_text().replace('name = "mini"', 'name = "mini"\nallow_prompt_mismatch = true'))
    run_recipe(f, tmp_path / "run", dry_run=True)


def test_declared_base_prompts_win_over_an_empty_saved_config(tmp_path):
    """A local copy of a model saved with empty prompts (as nomic-ai/modernbert-embed-base) starts
    a prompted phase when ``[model] base_prompts`` declares what it was trained with."""
    from colzero.training.pipeline import run_recipe

    model = tmp_path / "m"
    model.mkdir()
    (model / "modules.json").write_text("[]")
    (model / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {}}))
    f = tmp_path / "r.toml"
    f.write_text(MINI.format(base=model, tau=0.2))
    with pytest.raises(PromptMismatchError, match="no prompts"):
        run_recipe(f, tmp_path / "run", dry_run=True)
    declared = 'base_prompts = { query = "search_query: ", document = "search_document: " }'
    f.write_text(MINI.format(base=model, tau=0.2).replace("[model]\n", f"[model]\n{declared}\n"))
    run_recipe(f, tmp_path / "run", dry_run=True)
    assert check_alignment(model, {"query": "q: "}, declared={"query": "q: ", "document": ""}) is None
    with pytest.raises(PromptMismatchError, match=r"\(declared\)"):
        check_alignment(model, {}, declared={"query": "q: "})
    # a hub name is checked against its declaration too (nothing to read before training)
    hub = MINI.format(base="org/model", tau=0.2).replace("[model]\n", "[model]\nbase_prompts = {}\n")
    f.write_text(hub)
    with pytest.raises(PromptMismatchError):
        run_recipe(f, tmp_path / "run2", dry_run=True)
