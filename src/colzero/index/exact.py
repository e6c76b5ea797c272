"""Exact MaxSim search over in-memory vectors, and recall of an index against it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from colzero.scoring.topk import maxsim_topk


def pad(vectors: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = [torch.as_tensor(np.asarray(v, dtype=np.float32)) for v in vectors]
    width = max((len(t) for t in tensors), default=0)
    dim = tensors[0].shape[1] if tensors else 0
    emb = torch.zeros((len(tensors), width, dim))
    mask = torch.zeros((len(tensors), width), dtype=torch.bool)
    for i, t in enumerate(tensors):
        emb[i, : len(t)] = t
        mask[i, : len(t)] = True
    return emb, mask


def exact_search(
    query_vectors: Sequence[np.ndarray | torch.Tensor],
    doc_vectors: Sequence[np.ndarray | torch.Tensor] | tuple[torch.Tensor, torch.Tensor],
    doc_ids: Sequence[str],
    k: int,
    doc_chunk: int = 1024,
) -> list[list[tuple[str, float]]]:
    """Exact top-k by MaxSim (``colzero.scoring.maxsim_topk``); ``doc_vectors`` may be pre-padded."""
    docs, mask = doc_vectors if isinstance(doc_vectors, tuple) else pad(doc_vectors)
    q, qmask = pad(query_vectors)
    scores, idx = maxsim_topk(q, docs, mask, k, queries_mask=qmask, doc_chunk=doc_chunk)
    return [
        [(doc_ids[j], float(s)) for s, j in zip(srow.tolist(), irow.tolist(), strict=True)]
        for srow, irow in zip(scores, idx, strict=True)
    ]


def recall_at_k(approx: list[list[tuple[str, float]]], exact: list[list[tuple[str, float]]], k: int) -> float:
    """Mean |approx top-k ∩ exact top-k| / |exact top-k| over queries."""
    vals = []
    for a, e in zip(approx, exact, strict=True):
        truth = {d for d, _ in e[:k]}
        if truth:
            vals.append(len({d for d, _ in a[:k]} & truth) / len(truth))
    return float(np.mean(vals)) if vals else 1.0


def index_recall_against_exact(
    index, model, queries: Sequence[str], corpus: Any, k: int = 10, **search: Any
) -> dict:
    """Recall@k of ``index.search`` against exact MaxSim with ``model`` over ``corpus``.

    ``corpus``: (id, text) pairs, BEIR-style dicts, a {id: text} dict or a JSONL path (same
    text rule as the index build: ``title + " " + text``). Deleted documents are skipped.
    Returns {"recall@k": float, "k": k, "queries": n, "index": results, "exact": results}.
    """
    from colzero.index.documents import read_documents

    if isinstance(corpus, dict):
        corpus = list(corpus.items())
    docs = [(d.id, d.text) for d in read_documents(corpus) if d.id in index]
    with torch.inference_mode():
        dvecs = model.encode([t for _, t in docs], "document")
        qvecs = model.encode(list(queries), "query")
    exact = exact_search(qvecs, dvecs, [i for i, _ in docs], k)
    approx = index.search([q.numpy() for q in qvecs], k=k, **search)
    return {
        f"recall@{k}": recall_at_k(approx, exact, k),
        "k": k,
        "queries": len(queries),
        "index": approx,
        "exact": exact,
    }
