"""Evaluation through the index (``--search index``): same settings and rules as exact search."""

from __future__ import annotations

import random

import pytest
import torch

from colzero.evaluation import RetrievalDataset, RetrievalSettings, evaluate, retrieve
from colzero.index.retrieval import IndexEvaluation, IndexRetriever, retrieve_with_index
from tests.conftest import make_colbert, make_dense
from tests.test_losses_helpers import VOCAB


@pytest.fixture(autouse=True)
def _one_thread():
    from tests.test_losses_helpers import one_thread

    yield from one_thread()


def toy(n_docs: int = 60, n_queries: int = 12) -> RetrievalDataset:
    rng = random.Random(5)
    docs = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(4, 14))) for _ in range(n_docs)]
    ids = [f"d{i}" for i in range(n_docs)]
    # query q3's id is also a document id: a self-hit to remove
    qids = [f"q{i}" for i in range(n_queries)]
    qids[3] = "d3"
    queries = [" ".join(docs[i].split()[:3]) for i in range(n_queries)]
    qrels = {q: {f"d{i}": 1} for i, q in enumerate(qids)}
    qrels["d3"] = {"d4": 1}
    return RetrievalDataset("toy", ids, docs, qids, queries, qrels)


def test_index_search_matches_exact_search_on_a_small_corpus(tmp_path):
    """A corpus smaller than the candidate pool is scored whole: the same top documents as exact
    search, scores within the residual codec's error, self-hits removed the same way."""
    model, ds = make_colbert("bert"), toy()
    settings = RetrievalSettings(k=10, query_length=12, cache_dir=tmp_path)
    exact = retrieve(model, ds, settings).run
    out = retrieve_with_index(model, ds, settings, IndexEvaluation(codec="pq"))
    assert set(out.run) == set(exact) and "index_build_s" in out.timings
    assert "d3" not in out.run["d3"] and "d3" not in exact["d3"]
    # a random tiny model scores many documents alike, so compressed residuals swap near ties
    overlap = [len(set(out.run[q]) & set(exact[q])) / 10 for q in exact]
    assert sum(overlap) / len(overlap) >= 0.75
    for q in exact:
        for doc in set(out.run[q]) & set(exact[q]):  # the same document scores alike
            assert out.run[q][doc] == pytest.approx(exact[q][doc], rel=0.05, abs=0.05)
    # the settings' query length is what the index searched with
    shorter = retrieve_with_index(model, ds, RetrievalSettings(k=10, query_length=4, cache_dir=tmp_path))
    assert shorter.run != out.run
    assert not list(tmp_path.glob(".eval-index-*"))  # the temporary index is removed


def test_evaluate_records_the_search_and_the_lengths(tmp_path):
    model, ds = make_colbert("bert"), toy()
    res = evaluate(
        model,
        ds,
        model_names=["m"],
        plots=False,
        use_cache=False,
        retriever=IndexRetriever(),
        per_dataset={"toy": {"query_length": 12}},
    )
    used = res.settings["toy"]
    assert (
        used["search"] == "index" and used["query_tokens"] == 12 and used["search_options"]["codec"] == "pq"
    )
    assert 0.0 <= res.scores["m"]["toy"]["ndcg@10"] <= 1.0
    exact = evaluate(model, ds, model_names=["m"], plots=False, use_cache=False, preset="colbert-zero")
    assert exact.settings["toy"]["search"] == "exact"


def test_dense_models_stay_exact():
    model, ds = make_dense("bert"), toy(20, 4)
    out = IndexRetriever()(model, ds, RetrievalSettings(k=5, use_cache=False))
    assert out.timings["exact_search_fallback"] == 1.0
    with pytest.raises(ValueError, match="ColBERT"):
        retrieve_with_index(model, ds, RetrievalSettings(use_cache=False))
    torch.testing.assert_close(
        torch.tensor(sorted(out.run["q0"].values())),
        torch.tensor(sorted(retrieve(model, ds, RetrievalSettings(k=5, use_cache=False)).run["q0"].values())),
    )
