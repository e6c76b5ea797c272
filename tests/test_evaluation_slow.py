"""Published anchor: all-MiniLM-L6-v2 (dense, cosine, 256 tokens, title + text) on BEIR SciFact
scores nDCG@10 = 64.51 (MTEB). Minutes on CPU; corpus embeddings are cached
(``~/.cache/colzero/embeddings`` or ``$COLZERO_CACHE``), so re-runs take seconds."""

from __future__ import annotations

import pytest
from conftest import minilm_path, shared_path

from colzero import DenseModel
from colzero.evaluation import RetrievalSettings, compute_metrics, load_dataset, retrieve


@pytest.mark.slow
def test_minilm_dense_scifact_reproduces_mteb():
    ds = load_dataset(shared_path("data", "beir", "scifact"))
    model = DenseModel.from_pretrained(minilm_path())
    assert model.config.max_length == 256 and model.config.normalize
    out = retrieve(model, ds, RetrievalSettings(k=100))
    res = compute_metrics(ds.qrels, out.run)
    print(f"all-MiniLM-L6-v2 SciFact: {res} (cache hit: {out.cache_hit})")
    assert abs(100 * res["ndcg@10"] - 64.51) <= 0.3
