"""ColBERT on tiny in-memory BERT and ModernBERT backbones: token layout, encoding, IO."""

from __future__ import annotations

import json
import string

import pytest
import torch

from colzero import ColBERT, ColBERTConfig, maxsim_all_pairs
from colzero.model.config import resolve_config
from tests.conftest import make_colbert

QUERIES = ["who wrote the paper", "quick brown fox", "what is late interaction retrieval"]
DOCS = [
    "the quick brown fox jumps over the lazy dog.",
    "colbert is a late interaction model, for retrieval!",
    "a cat",
    "results show the neural network training loss ; learning data method text gene study protein cell",
    "the dog",
]
TOL = 1e-5


def n_tokens(model, text):
    return len(model.tokenizer(text)["input_ids"])


def test_shapes_and_unit_norm(tiny_colbert):
    m = tiny_colbert
    q = m.encode(QUERIES, "query", precision="fp32")
    d = m.encode(DOCS, "document", precision="fp32")
    assert all(v.shape == (16, 16) and v.dtype == torch.float32 for v in q)
    for text, v in zip(DOCS, d, strict=True):
        n_punct = sum(ch in string.punctuation for ch in text)
        assert v.shape == (n_tokens(m, text) + 1 - n_punct, 16)  # +1 marker, - skiplist
    for v in [*q, *d]:
        assert torch.allclose(v.norm(dim=-1), torch.ones(v.shape[0]), atol=1e-5)
    single = m.encode("a cat", "document", precision="fp32")
    assert isinstance(single, torch.Tensor) and torch.allclose(single, d[2], atol=TOL)


def test_marker_after_cls_and_query_expansion(tiny_colbert):
    m = tiny_colbert
    tok = m.tokenizer
    q_id, d_id = tok.convert_tokens_to_ids("[Q] "), tok.convert_tokens_to_ids("[D] ")
    assert q_id != tok.unk_token_id and d_id != tok.unk_token_id
    qb = m.tokenize(["quick brown fox"], "query", prompt="")
    ids, att = qb.input_ids[0].tolist(), qb.attention_mask[0].tolist()
    body = tok("quick brown fox")["input_ids"]
    assert ids[:2] == [tok.cls_token_id, q_id]
    assert ids[2 : len(body) + 1] == body[1:]  # text then [SEP]
    assert len(ids) == 16
    n = len(body) + 1
    assert ids[n:] == [tok.mask_token_id] * (16 - n)
    assert att == [1] * n + [0] * (16 - n)
    db = m.tokenize(["quick brown fox"], "document", prompt="")
    assert db.input_ids[0].tolist() == [tok.cls_token_id, d_id, *body[1:]]


def test_attend_to_expansion_tokens():
    m = make_colbert("bert", attend_to_expansion_tokens=True)
    qb = m.tokenize(["quick brown fox"], "query", prompt="")
    assert qb.attention_mask[0].tolist() == [1] * 16
    base = make_colbert("bert")  # same seed, same weights: attention changes the vectors
    assert not torch.allclose(m.encode("quick brown fox", "query"), base.encode("quick brown fox", "query"))


def test_no_query_expansion(tiny_colbert):
    m = tiny_colbert
    m.config.do_query_expansion = False
    qb = m.tokenize(QUERIES, "query", prompt="")
    q = m.encode(QUERIES, "query")
    for text, row, v in zip(QUERIES, qb.attention_mask, q, strict=True):
        assert v.shape[0] == n_tokens(m, text) + 1 == int(row.sum())
    assert qb.input_ids.shape[1] < 16


def test_skiplist_documents_only(tiny_colbert):
    m = tiny_colbert
    text = "fox , dog . cat !"
    d = m.encode(text, "document")
    q = m.encode(text, "query")
    m.config.skiplist_words = []
    m._setup_tokens()
    d_all = m.encode(text, "document")
    q_all = m.encode(text, "query")
    assert d_all.shape[0] == d.shape[0] + 3
    keep = [
        i
        for i, t in enumerate(m.tokenize([text], "document", prompt="").input_ids[0].tolist())
        if m.tokenizer.convert_ids_to_tokens(t) not in {",", ".", "!"}
    ]
    assert torch.allclose(d_all[keep], d, atol=TOL)  # skipped tokens are still encoded (context)
    assert torch.allclose(q, q_all, atol=TOL) and q.shape[0] == 16


def test_prompts_per_role():
    m = make_colbert("bert", prompts={"query": "search query : ", "document": "text : "})
    for role, prompt in (("query", "search query : "), ("document", "text : ")):
        default = m.encode(DOCS[:2], role)
        manual = m.encode([prompt + t for t in DOCS[:2]], role, prompt="")
        disabled = m.encode(DOCS[:2], role, prompt="")
        other = m.encode(DOCS[:2], role, prompt="data : ")
        manual_other = m.encode(["data : " + t for t in DOCS[:2]], role, prompt="")
        for a, b in zip(default, manual, strict=True):
            assert a.shape == b.shape and torch.allclose(a, b, atol=TOL)
        for a, b in zip(other, manual_other, strict=True):
            assert torch.allclose(a, b, atol=TOL)
        assert default[0].shape != disabled[0].shape or not torch.allclose(default[0], disabled[0])


def test_sorted_batching_equals_one_by_one(tiny_colbert):
    m = tiny_colbert
    texts = DOCS + QUERIES + ["gene", "the model of the data and the method of the study"]
    for role in ("query", "document"):
        batched = m.encode(texts, role, batch_size=3)
        for text, v in zip(texts, batched, strict=True):
            alone = m.encode([text], role, batch_size=1)[0]
            assert v.shape == alone.shape
            assert (v - alone).abs().max().item() < TOL


def test_padded_output_equals_list(tiny_colbert):
    m = tiny_colbert
    for role, texts in (("query", QUERIES), ("document", DOCS)):
        lst = m.encode(texts, role, batch_size=2)
        pad = m.encode(texts, role, batch_size=2, output="padded")
        assert pad.embeddings.shape[0] == len(texts) and pad.mask.shape == pad.embeddings.shape[:2]
        for i, v in enumerate(lst):
            got = pad.embeddings[i][pad.mask[i]]
            assert got.shape == v.shape and torch.allclose(got, v, atol=TOL)


def test_flash_attention_compat():
    m = make_colbert("bert", flash_attention_compat=True)
    q = m.encode(QUERIES, "query", output="padded")
    att = m.tokenize(QUERIES, "query", prompt="").attention_mask.bool()
    # tokenize is input order, no sorting; both are padded to query_length
    assert torch.all(q.embeddings[~att] == 0)
    assert torch.all(q.embeddings[att].norm(dim=-1) > 0.99)
    d = m.encode(DOCS, "document", output="padded")
    with_zeros = maxsim_all_pairs(q.embeddings, d.embeddings, d.mask, q.mask)
    without = maxsim_all_pairs(q.embeddings, d.embeddings, d.mask, att)
    assert torch.allclose(with_zeros, without, atol=TOL)
    # the attended positions are the same vectors as without the compat flag
    plain = make_colbert("bert").encode(QUERIES, "query", output="padded")
    assert torch.allclose(plain.embeddings[att], q.embeddings[att], atol=TOL)


def test_save_load_round_trip(tiny_colbert, tmp_path):
    m = tiny_colbert
    m.config.prompts = {"query": "search query : "}
    path = m.save(tmp_path / "model")
    assert (path / "modules.json").exists() and (path / "1_Dense" / "model.safetensors").exists()
    st = json.loads((path / "config_sentence_transformers.json").read_text())
    for key in (
        "query_prefix",
        "document_prefix",
        "query_length",
        "document_length",
        "attend_to_expansion_tokens",
        "skiplist_words",
        "do_query_expansion",
        "prompts",
    ):
        assert key in st, key
    assert st["similarity_fn_name"] == "MaxSim" and st["query_length"] == 16
    modules = json.loads((path / "modules.json").read_text())
    assert [mod["path"] for mod in modules] == ["", "1_Dense"]
    loaded = ColBERT.from_pretrained(path)
    assert loaded.config == m.config
    for role, texts in (("query", QUERIES), ("document", DOCS)):
        for a, b in zip(m.encode(texts, role), loaded.encode(texts, role), strict=True):
            assert a.shape == b.shape and torch.equal(a, b)
    assert loaded.fingerprint() == m.fingerprint()


def test_config_precedence(tmp_path):
    saved = {"query_length": 10, "document_length": 50, "prompts": {"query": "q : "}}
    cfg = resolve_config(ColBERTConfig, {"query_length": 20, "document_length": None}, saved)
    assert (cfg.query_length, cfg.document_length, cfg.prompts) == (20, 50, {"query": "q : "})
    assert resolve_config(ColBERTConfig, {}, {}).query_length == ColBERTConfig().query_length
    assert resolve_config(ColBERTConfig, {}, {"unknown_key_of_other_lib": 1}) == ColBERTConfig()
    with pytest.raises(TypeError, match="query_lenght"):
        resolve_config(ColBERTConfig, {"query_lenght": 3}, {})
    path = make_colbert("bert", document_length=24).save(tmp_path / "m")
    assert ColBERT.from_pretrained(path).config.document_length == 24  # saved > default
    over = ColBERT.from_pretrained(path, document_length=12, query_length=None)
    assert (over.config.document_length, over.config.query_length) == (12, 16)  # explicit > saved
    with pytest.raises(ValueError, match="embedding_dim|dimension"):
        ColBERT.from_pretrained(path, embedding_dim=8)
