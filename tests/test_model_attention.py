"""The attention backend as a model setting: applied to the backbone, saved, resolved, checked."""

from __future__ import annotations

import copy
import json
import logging

import pytest
import torch

from colzero import ColBERT, ColBERTConfig, DenseConfig, DenseModel
from colzero.model.base import flash_attention_missing
from tests.conftest import make_backbone, make_colbert, make_dense, make_tokenizer

QUERIES = ["who wrote the paper", "quick brown fox", "what is late interaction retrieval"]
DOCS = [
    "the quick brown fox jumps over the lazy dog.",
    "colbert is a late interaction model, for retrieval!",
    "a cat",
]


def colbert_with(backbone, tokenizer, **settings):
    # packing off: the backend under test is transformers' (the packed encoder has its own kernels)
    settings = {"query_length": 16, "document_length": 32, "embedding_dim": 16, "packing": "off", **settings}
    torch.manual_seed(1)  # same projection for every copy
    return ColBERT(copy.deepcopy(backbone), copy.deepcopy(tokenizer), ColBERTConfig(**settings)).eval()


def test_eager_and_sdpa_give_identical_vectors_with_flash_attention_compat():
    tok = make_tokenizer()
    backbone = make_backbone("modernbert", len(tok) + 2)  # room for the [Q] / [D] markers
    models = {
        impl: colbert_with(backbone, tok, attn_implementation=impl, flash_attention_compat=True)
        for impl in ("eager", "sdpa")
    }
    for impl, model in models.items():
        assert model.config.attn_implementation == impl
        assert model.backbone.config._attn_implementation == impl
    out = {
        impl: (
            m.encode(QUERIES, "query", output="padded", precision="fp32"),
            m.encode(DOCS, "document", output="padded", precision="fp32"),
        )
        for impl, m in models.items()
    }
    (eq, ed), (sq, sd) = out["eager"], out["sdpa"]
    att = models["eager"].tokenize(QUERIES, "query", prompt="").attention_mask.bool()
    assert (~att).any(), "the queries must have expansion positions"
    assert torch.all(eq.embeddings[~att] == 0) and torch.all(sq.embeddings[~att] == 0)
    assert torch.equal(eq.mask, sq.mask) and torch.equal(ed.mask, sd.mask)
    torch.testing.assert_close(eq.embeddings, sq.embeddings, rtol=0, atol=1e-6)
    torch.testing.assert_close(ed.embeddings, sd.embeddings, rtol=0, atol=1e-6)


def test_setting_round_trips_through_save_and_load(tmp_path):
    model = make_colbert("modernbert", attn_implementation="eager")
    assert model.backbone.config._attn_implementation == "eager"
    path = model.save(tmp_path / "m")
    block = json.loads((path / "config_sentence_transformers.json").read_text())["colzero"]
    assert block["attn_implementation"] == "eager"
    loaded = ColBERT.from_pretrained(path)
    assert loaded.config.attn_implementation == "eager"
    assert loaded.backbone.config._attn_implementation == "eager"
    # explicit (keyword or setting) wins over saved
    for kwargs in ({"attn_implementation": "sdpa"},):
        over = ColBERT.from_pretrained(path, **kwargs)
        assert over.config.attn_implementation == "sdpa"
        assert over.backbone.config._attn_implementation == "sdpa"
    # the backend is a runtime choice: same fingerprint, same vectors
    assert over.fingerprint() == loaded.fingerprint()
    torch.testing.assert_close(
        over.encode(DOCS, "document", output="padded", precision="fp32").embeddings,
        loaded.encode(DOCS, "document", output="padded", precision="fp32").embeddings,
        rtol=0,
        atol=1e-6,
    )


def test_default_is_recorded_as_none_and_leaves_transformers_default(tmp_path):
    model = make_colbert("bert")
    assert model.config.attn_implementation is None
    assert model.backbone.config._attn_implementation == "sdpa"  # as built by the fixture
    path = model.save(tmp_path / "m")
    block = json.loads((path / "config_sentence_transformers.json").read_text())["colzero"]
    assert "attn_implementation" in block and block["attn_implementation"] is None
    assert ColBERT.from_pretrained(path).config.attn_implementation is None


def test_dense_round_trip(tmp_path):
    model = make_dense("bert", attn_implementation="eager")
    assert model.backbone.config._attn_implementation == "eager"
    path = model.save(tmp_path / "d")
    loaded = DenseModel.from_pretrained(path)
    assert loaded.config.attn_implementation == "eager"
    assert loaded.backbone.config._attn_implementation == "eager"
    assert DenseModel.from_pretrained(path, attn_implementation="sdpa").config.attn_implementation == "sdpa"


@pytest.mark.parametrize("cls", [ColBERTConfig, DenseConfig])
def test_unknown_backend_is_rejected(cls):
    with pytest.raises(ValueError, match="attn_implementation must be one of"):
        cls(attn_implementation="flash")


needs_no_flash = pytest.mark.skipif(
    not flash_attention_missing(), reason="flash_attn and CUDA are both present here"
)


@needs_no_flash
def test_flash_attention_2_requested_without_flash_attn_is_a_clear_error(tmp_path):
    tok = make_tokenizer()
    backbone = make_backbone("bert", len(tok) + 2)
    with pytest.raises(ValueError, match="flash_attention_2.*(flash_attn package|no CUDA)"):
        ColBERT(backbone, tok, ColBERTConfig(attn_implementation="flash_attention_2"))
    path = make_colbert("bert").save(tmp_path / "m")
    with pytest.raises(ValueError, match="flash_attention_2"):
        ColBERT.from_pretrained(path, attn_implementation="flash_attention_2")


@needs_no_flash
def test_saved_flash_attention_2_falls_back_to_sdpa_with_a_warning(tmp_path, caplog):
    path = make_colbert("bert", flash_attention_compat=True).save(tmp_path / "m")
    st = path / "config_sentence_transformers.json"
    cfg = json.loads(st.read_text())
    cfg["colzero"]["attn_implementation"] = "flash_attention_2"
    st.write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING, logger="colzero.model.base"):
        model = ColBERT.from_pretrained(path)
    assert model.config.attn_implementation == "sdpa"
    assert model.backbone.config._attn_implementation == "sdpa"
    assert any("falls back" in r.message or "using 'sdpa'" in r.message for r in caplog.records)
