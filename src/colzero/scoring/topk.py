"""Streaming top-k: keep each query's best ``k`` (score, index) pairs while score chunks arrive.

Order: score descending, ties broken by the smaller document index; an index of ``-1`` (a
slot with no document: an excluded one, or fewer documents than ``k``) ranks after every real
document and carries the score ``-inf``. Every buffer lives on the device of the scores it
is given.
"""

from __future__ import annotations

import torch

from colzero.scoring.maxsim import DEFAULT_BUDGET_BYTES, maxsim_all_pairs

_LOW = (1 << 32) - 1


def order_key(scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """One int64 per entry whose descending order is (score descending, index ascending, -1 last).

    High 32 bits: the float32 score's bits made order-preserving as a signed integer (negative
    floats have their magnitude bits flipped; ``-0.0`` is first made ``+0.0``). Low 32 bits:
    ``2**32 - 1 - index`` (0 for ``-1``). Indices must be below ``2**32 - 1``.
    """
    bits = (scores.float() + 0.0).view(torch.int32)
    bits = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    low = torch.where(indices < 0, torch.zeros_like(indices), _LOW - indices)
    return bits.long() * (1 << 32) + low


def order_topk(scores: torch.Tensor, indices: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The best ``k`` columns of each row of ``scores`` (nq, c) / ``indices`` (nq, c), in order.

    One ``topk`` over :func:`order_key`, so equal scores keep the smaller index first whatever
    order the chunks came in.
    """
    k = min(k, scores.shape[1])
    best = order_key(scores, indices).topk(k, dim=1).indices
    return scores.gather(1, best), indices.gather(1, best)


class TopK:
    """Running top-k of ``n_queries`` rows, merged once per incoming chunk."""

    def __init__(self, n_queries: int, k: int, *, device: torch.device | str | None = None) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.k = k
        self.scores = torch.full((n_queries, 0), float("-inf"), dtype=torch.float32, device=device)
        self.indices = torch.full((n_queries, 0), -1, dtype=torch.long, device=device)

    def push(self, scores: torch.Tensor, indices: torch.Tensor) -> None:
        """Merge a chunk: ``scores`` (nq, c), ``indices`` (c,) shared by every query or (nq, c)."""
        if scores.shape[1] == 0:
            return
        if indices.dim() == 1:
            indices = indices.unsqueeze(0).expand(scores.shape[0], -1)
        if 0 < self.k < scores.shape[1]:
            # a plain top-k of the chunk first (the common, fast path); exact unless a tie
            # crosses the cut, in which case the whole chunk goes through the ordered merge
            top = scores.topk(self.k, dim=1)
            if not bool(((scores >= top.values[:, -1:]).sum(dim=1) > self.k).any()):
                scores, indices = top.values, indices.gather(1, top.indices)
        cand_s = torch.cat([self.scores, scores.to(self.scores.dtype)], dim=1)
        cand_i = torch.cat([self.indices, indices.to(self.indices.device)], dim=1)
        self.scores, self.indices = order_topk(cand_s, cand_i, self.k)

    def result(self, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores, indices), each (n_queries, width) (default k), padded with (-inf, -1)."""
        width = self.k if width is None else width
        missing = width - self.scores.shape[1]
        if missing <= 0:
            return self.scores[:, :width], self.indices[:, :width]
        pad_s = self.scores.new_full((self.scores.shape[0], missing), float("-inf"))
        pad_i = self.indices.new_full((self.indices.shape[0], missing), -1)
        return torch.cat([self.scores, pad_s], 1), torch.cat([self.indices, pad_i], 1)


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
    """(scores, indices), each (Nq, min(k, Nd)), best first, over an already padded document matrix.

    Only one chunk of scores is held. For a packed corpus use :func:`colzero.scoring.search.search`.
    """
    nq, nd = queries.shape[0], documents.shape[0]
    best = TopK(nq, min(k, nd), device=queries.device)
    for start in range(0, nd, doc_chunk):
        scores = maxsim_all_pairs(
            queries,
            documents[start : start + doc_chunk],
            documents_mask[start : start + doc_chunk],
            queries_mask,
            budget_bytes=budget_bytes,
        )
        best.push(scores, torch.arange(start, start + scores.shape[1], device=queries.device))
    return best.result()
