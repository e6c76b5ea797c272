"""Exact top-k search by MaxSim over a padded document matrix, streaming over document chunks."""

from __future__ import annotations

import torch

from colzero.scoring.maxsim import DEFAULT_BUDGET_BYTES, maxsim_all_pairs


def maxsim_topk(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    k: int,
    *,
    queries_mask: torch.Tensor | None = None,
    doc_chunk: int = 4096,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, indices), each (Nq, min(k, Nd)), best first; only one chunk of scores is held."""
    nq, nd = queries.shape[0], documents.shape[0]
    k = min(k, nd)
    best_scores = torch.full((nq, 0), float("-inf"))
    best_idx = torch.zeros((nq, 0), dtype=torch.long)
    for start in range(0, nd, doc_chunk):
        scores = maxsim_all_pairs(
            queries,
            documents[start : start + doc_chunk],
            documents_mask[start : start + doc_chunk],
            queries_mask,
            budget_bytes=budget_bytes,
        )
        cand_scores = torch.cat([best_scores, scores], dim=1)
        cand_idx = torch.cat([best_idx, torch.arange(start, start + scores.shape[1]).expand(nq, -1)], dim=1)
        top = cand_scores.topk(min(k, cand_scores.shape[1]), dim=1)
        best_scores, best_idx = top.values, cand_idx.gather(1, top.indices)
    return best_scores, best_idx
