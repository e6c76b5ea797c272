"""colzero reproduces what PyLate 1.6.0 computes from its own saved folder (the shared fixture)."""

from __future__ import annotations

import json

import pytest
import torch

from colzero import ColBERT, maxsim_all_pairs, pad_embeddings
from tests.conftest import shared_path

TOL = 1e-5


@pytest.fixture(scope="module")
def fixture():
    root = shared_path("fixtures", "pylate-tiny-colbert")
    expected = json.loads((root / "expected.json").read_text())
    return ColBERT.from_pretrained(root / "model"), expected


@pytest.mark.parametrize(("case", "prompt"), [("no_prompt", ""), ("with_prompt", None)])
def test_vectors_and_scores_match_pylate(fixture, case, prompt):
    model, expected = fixture
    exp = expected[case]
    queries = model.encode(exp["queries"], "query", prompt=prompt, precision="fp32")
    documents = model.encode(exp["documents"], "document", prompt=prompt, precision="fp32")
    assert len(queries) == len(exp["query_embeddings"]) == 3
    for got, want in zip(queries, exp["query_embeddings"], strict=True):
        want = torch.tensor(want)
        assert got.shape == want.shape == (32, 128)
        assert (got - want).abs().max().item() < TOL
    for got, want in zip(documents, exp["document_embeddings"], strict=True):
        want = torch.tensor(want)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < TOL
    q, d = pad_embeddings(queries), pad_embeddings(documents)
    scores = maxsim_all_pairs(q.embeddings, d.embeddings, d.mask, q.mask)
    want = torch.tensor(exp["maxsim_scores"])
    assert scores.shape == want.shape == (3, 3)
    assert (scores - want).abs().max().item() < TOL


def test_token_ids_match_pylate(fixture):
    model, expected = fixture
    exp = expected["no_prompt"]
    for role, key, texts in (
        ("query", "query_input_ids", exp["queries"]),
        ("document", "document_input_ids", exp["documents"]),
    ):
        batch = model.tokenize(texts, role, prompt="")
        want = exp[key]
        assert batch.input_ids.tolist() == want, role


def test_saved_prompts_and_settings_are_read(fixture):
    model, _ = fixture
    cfg = model.config
    assert cfg.prompts == {"query": "search_query: ", "document": "search_document: "}
    assert (cfg.query_length, cfg.document_length) == (32, 64)
    assert cfg.do_query_expansion and not cfg.attend_to_expansion_tokens
