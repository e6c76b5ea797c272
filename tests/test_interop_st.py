"""A colzero-saved ColBERT loads in sentence-transformers 6's MultiVectorEncoder, same vectors."""

from __future__ import annotations

import pytest
import torch

from colzero import ColBERT
from tests.conftest import make_colbert, shared_path

st = pytest.importorskip("sentence_transformers")
MultiVectorEncoder = getattr(st, "MultiVectorEncoder", None)
if MultiVectorEncoder is None:  # sentence-transformers < 6
    pytest.skip("sentence-transformers has no MultiVectorEncoder (needs >= 6)", allow_module_level=True)

QUERIES = ["who wrote the paper", "quick brown fox , dog", "what is late interaction retrieval?"]
DOCS = [
    "the quick brown fox jumps over the lazy dog.",
    "a cat",
    "colbert: a late interaction model, for retrieval!",
]
TOL = 1e-5
# sentence-transformers computes in fp32; colzero's precision="auto" is bf16 on CPUs with AMX /
# AVX512-BF16 (and on CUDA), which moves every component by ~1e-3, so compare fp32 with fp32.


def compare(ours, theirs):
    assert len(ours) == len(theirs)
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        b = torch.as_tensor(b).float()
        assert a.shape == b.shape
        worst = max(worst, (a - b).abs().max().item())
    assert worst < TOL
    return worst


@pytest.mark.parametrize("prompts", [{}, {"query": "search query : ", "document": "text : "}])
def test_tiny_bert_colzero_folder_in_st6(tmp_path, prompts):
    model = make_colbert("bert", prompts=prompts)
    path = model.save(tmp_path / "model")
    enc = MultiVectorEncoder(str(path), device="cpu")
    # ST6 shows the marker token merged into the prompt, e.g. "[Q] search query : "
    for role in ("query", "document"):
        assert enc.prompts.get(role, "").endswith(prompts.get(role, ""))
    compare(model.encode(QUERIES, "query", precision="fp32"), enc.encode_query(QUERIES))
    compare(model.encode(DOCS, "document", precision="fp32"), enc.encode_document(DOCS))


def test_bert_tiny_start_in_st6(tmp_path):
    torch.manual_seed(0)
    model = ColBERT.from_pretrained(
        shared_path("models", "splade-tiny-bert"), query_length=32, document_length=64
    )
    path = model.save(tmp_path / "model")
    enc = MultiVectorEncoder(str(path), device="cpu")
    compare(model.encode(QUERIES, "query", precision="fp32"), enc.encode_query(QUERIES))
    compare(model.encode(DOCS, "document", precision="fp32"), enc.encode_document(DOCS))


def test_pylate_fixture_st6_equals_colzero():
    folder = shared_path("fixtures", "pylate-tiny-colbert", "model")
    model = ColBERT.from_pretrained(folder)
    enc = MultiVectorEncoder(str(folder), device="cpu")
    compare(model.encode(QUERIES, "query", precision="fp32"), enc.encode_query(QUERIES))
    compare(model.encode(DOCS, "document", precision="fp32"), enc.encode_document(DOCS))
