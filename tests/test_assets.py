"""Where the quickstart's inputs come from: ../shared when present, else their hub names, else an
error naming both places (offline: the hub is never contacted here; its answer is injected)."""

from __future__ import annotations

import pytest

from colzero.training import assets
from colzero.training.recipe import RecipeError, load_recipe
from tests.conftest import SHARED


def test_quickstart_uses_this_machines_files(monkeypatch):
    if not (SHARED / "models" / "splade-tiny-bert").is_dir():
        pytest.skip(f"{SHARED} is absent")
    monkeypatch.setenv("COLZERO_SHARED", str(SHARED))
    recipe = load_recipe("quickstart")
    places = {name: a["place"] for name, a in recipe.assets.items()}
    assert places["bert_tiny"] == places["scifact"] == places["scifact_train_hn"] == "shared"
    assert recipe.model.base == str(SHARED / "models" / "splade-tiny-bert")
    assert recipe.evaluation.datasets == [
        str(SHARED / "data" / "beir" / "scifact"),
        str(SHARED / "data" / "beir" / "arguana"),
    ]
    assert [p.tool for p in recipe.prepare] == ["pairs", "pairs", "score"]  # negatives are on disk: no mining


def test_quickstart_falls_back_to_hub_names(tmp_path, monkeypatch):
    monkeypatch.setenv("COLZERO_SHARED", str(tmp_path / "nothing-here"))
    asked = []

    def hub_answers(spec, kind):
        asked.append((spec, kind))
        return None

    monkeypatch.setattr(assets, "check_hub", hub_answers)
    recipe = load_recipe("quickstart", run_dir=tmp_path / "run")
    assert recipe.model.base == "prajjwal1/bert-tiny"
    assert recipe.evaluation.datasets == ["BeIR/scifact", "BeIR/arguana"]
    assert recipe.assets["minilm"]["place"] in ("package", "hub")
    # SciFact negatives are mined by the run itself, from the hub's SciFact train split
    mine = [p for p in recipe.prepare if p.tool == "mine"]
    assert len(mine) == 1 and mine[0].args["beir"] == "BeIR/scifact" and mine[0].args["split"] == "train"
    hn = str(tmp_path / "run" / "data" / "scifact-train-hn.jsonl")
    assert mine[0].output == hn and recipe.phases[1].sources[0].path == hn
    assert recipe.phases[1].sources[0].documents == "hf://BeIR/scifact/corpus"
    assert ("prajjwal1/bert-tiny", "model") in asked and ("BeIR/scifact", "dataset") in asked


def test_neither_place_names_both(tmp_path, monkeypatch):
    monkeypatch.setenv("COLZERO_SHARED", str(tmp_path / "nothing-here"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RecipeError) as err:
        load_recipe("quickstart")
    msg = str(err.value)
    assert "quickstart.toml" in msg and "'bert_tiny'" in msg
    assert str(tmp_path / "nothing-here" / "models" / "splade-tiny-bert") in msg
    assert "prajjwal1/bert-tiny" in msg and "offline (HF_HUB_OFFLINE=1)" in msg


def test_resolution_order_and_bad_tables(tmp_path):
    (tmp_path / "data").mkdir()
    asset = assets.Asset("x", shared="data", hub="org/x")
    assert (
        assets.resolve_asset(asset, tmp_path, hub_check=lambda s, k: pytest.fail("hub asked")).place
        == "shared"
    )
    missing = assets.Asset("y", shared="nope", prepared="/run/y.jsonl", hub="org/y")
    assert assets.resolve_asset(missing, tmp_path, hub_check=lambda s, k: None).place == "prepared"
    only_hub = assets.Asset("z", shared="nope", hub="hf://org/z/corpus")
    assert assets.resolve_asset(only_hub, tmp_path, hub_check=lambda s, k: None).value == "hf://org/z/corpus"
    with pytest.raises(assets.AssetError, match=r"asset 'z'.*nope.*org/z/corpus: down"):
        assets.resolve_asset(only_hub, tmp_path, hub_check=lambda s, k: "down")
    assert assets.hub_repo("hf://BeIR/scifact/corpus") == "BeIR/scifact"
    with pytest.raises(assets.AssetError, match="unknown key"):
        assets.Asset.from_dict("w", {"local": "x"})
