"""Tokenisation of every batch: ``RowLayout.batch`` against a per-row reference, and the direct Rust
backend call against the transformers tokenizer call it replaces."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from colzero.model.base import RowLayout
from tests.conftest import WORDS, make_colbert, make_dense

MODEL = make_colbert()

rows_strategy = st.lists(st.lists(st.integers(0, 2**40), min_size=1, max_size=12), min_size=1, max_size=6)


def reference(rows, layout: RowLayout):
    """The layout spelled out row by row, as ColBERT tokenisation was first written."""
    built = []
    for ids in rows:
        if layout.marker is not None:
            ids = [ids[0], layout.marker, *ids[1:]]
        attention = [1] * len(ids)
        if len(ids) < layout.width:
            pad = layout.width - len(ids)
            ids = ids + [layout.pad_id] * pad
            attention = attention + [layout.fill_attention] * pad
        built.append((ids, attention))
    width = max(len(ids) for ids, _ in built)
    ids = torch.full((len(rows), width), layout.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, att) in enumerate(built):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(att)] = torch.tensor(att, dtype=torch.long)
    return ids, mask


@settings(max_examples=80, deadline=None)
@given(
    rows=rows_strategy,
    pad_id=st.integers(0, 50),
    marker=st.none() | st.integers(0, 2**40),
    width=st.integers(0, 16),
    fill=st.integers(0, 1),
    types=st.booleans(),
)
def test_row_layout_equals_the_per_row_reference(rows, pad_id, marker, width, fill, types):
    layout = RowLayout(id_budget=99, pad_id=pad_id, marker=marker, width=width, fill_attention=fill)
    got = layout.batch(rows, list(range(len(rows))), types)
    ids, mask = reference(rows, layout)
    assert got.input_ids.dtype == torch.long and got.attention_mask.dtype == torch.long
    assert torch.equal(got.input_ids, ids) and torch.equal(got.attention_mask, mask)
    assert got.positions == list(range(len(rows)))
    assert (got.token_type_ids is not None) == types
    if types:
        assert torch.equal(got.token_type_ids, torch.zeros_like(ids))


def test_row_layout_refuses_what_it_cannot_lay_out():
    with pytest.raises(ValueError, match="empty batch"):
        RowLayout(id_budget=8, pad_id=0).batch([], [])
    with pytest.raises(ValueError, match="marker"):
        RowLayout(id_budget=8, pad_id=0, marker=7).batch([[1, 2], []], [0, 1])


text_strategy = st.lists(
    st.sampled_from(WORDS) | st.text(min_size=0, max_size=8), min_size=0, max_size=40
).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(text_strategy, min_size=1, max_size=6), max_length=st.integers(3, 24))
def test_backend_ids_equal_the_tokenizer_call(texts, max_length):
    stripped = [t.strip() for t in texts]
    expected = MODEL.tokenizer(stripped, truncation=True, max_length=max_length, add_special_tokens=True)
    assert MODEL._token_ids(texts, max_length) == expected["input_ids"]


@pytest.mark.parametrize("which", ["bert-tiny", "minilm"])
def test_backend_ids_equal_the_tokenizer_call_on_real_tokenizers_and_text(which):
    """The entry point training calls (the backend's ``encode_batch_fast`` where it exists) gives the
    transformers call's ids on real WordPiece vocabularies, real text, prompts and truncation."""
    import itertools
    import json

    from colzero.model.colbert import ColBERT
    from tests.conftest import minilm_path, shared_path

    path = shared_path("models", "splade-tiny-bert") if which == "bert-tiny" else minilm_path()
    corpus = shared_path("data", "beir", "scifact", "corpus.jsonl")
    model = ColBERT.from_pretrained(str(path))
    with open(corpus, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in itertools.islice(fh, 300)]
    texts = [f"search_document: {r['title']} {r['text']}" for r in rows] + [" ", "a", "ünïcödé — ½"]
    for max_length in (8, 38, 186, 511):
        expected = model.tokenizer(
            [t.strip() for t in texts], truncation=True, max_length=max_length, add_special_tokens=True
        )["input_ids"]
        assert model._token_ids(texts, max_length) == expected, max_length
    assert any(len(ids) == 186 for ids in model._token_ids(texts, 186))  # truncation was exercised


def test_backend_copy_leaves_the_shared_tokenizer_alone_and_follows_added_tokens():
    model = make_colbert()
    before = model.tokenizer.backend_tokenizer.truncation
    model._token_ids(["alpha beta gamma"], 4)
    assert model.tokenizer.backend_tokenizer.truncation == before
    model.tokenizer.add_tokens(["zzqx"])
    assert (
        model._token_ids(["zzqx"], 8) == model.tokenizer(["zzqx"], truncation=True, max_length=8)["input_ids"]
    )


@pytest.mark.parametrize(("expand", "attend"), [(True, False), (True, True), (False, False)])
def test_colbert_tokenize_matches_the_row_by_row_rule(expand, attend):
    model = make_colbert(do_query_expansion=expand, attend_to_expansion_tokens=attend)
    texts = ["alpha beta", " ".join(WORDS), ""]
    for role in ("query", "document"):
        batch = model.tokenize(texts, role)
        length = model.config.length_for(role)
        hf = model.tokenizer(
            [(model.config.prompt_for(role) + t).strip() for t in texts],
            truncation=True,
            max_length=length - 1,
        )["input_ids"]
        layout = RowLayout(
            id_budget=length - 1,
            pad_id=model.expansion_token_id,
            marker=model.marker_ids[role],
            width=length if (role == "query" and expand) else 0,
            fill_attention=int(role == "query" and expand and attend),
        )
        ids, mask = reference(hf, layout)
        assert torch.equal(batch.input_ids, ids) and torch.equal(batch.attention_mask, mask)
        assert batch.input_ids.shape[1] <= length


def test_dense_tokenize_is_the_tokenizer_padded():
    model = make_dense(max_length=12)
    texts = ["alpha beta", " ".join(WORDS)]
    batch = model.tokenize(texts, "document")
    hf = model.tokenizer(
        [(model.config.prompt_for("document") + t).strip() for t in texts],
        truncation=True,
        max_length=12,
        padding=True,
        return_tensors="pt",
    )
    assert torch.equal(batch.input_ids, hf["input_ids"]) and torch.equal(
        batch.attention_mask, hf["attention_mask"]
    )
