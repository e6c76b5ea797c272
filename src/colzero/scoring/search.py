"""Exact search over a packed corpus: every document scored, top-k merged once.

Two scores (``score=``):

- ``"maxsim"``: s(q, d) = sum_i max_j <q_i, d_j> over unmasked query positions i and document
  tokens j (:func:`colzero.scoring.maxsim.maxsim_all_pairs`). Queries ``(nq, Lq, dim)`` (+ mask),
  corpus a :class:`~colzero.scoring.packed.PackedEmbeddings`. Documents are visited in
  length-sorted groups, each padded to its own longest document by repeating its last vector
  (the max is unchanged, so no masking pass), then merged into the running top-k.
- ``"dot"``: s(q, d) = <q, d>, single-vector queries ``(nq, dim)`` against a single-vector corpus
  (``(n, dim)`` or packed with every length 1), one matrix product per chunk of documents.

Results: ``(scores, indices)``, each ``(nq, min(k, n))``, score descending, ties by the smaller
document index. A document without vectors scores ``-inf``. Excluded documents are never
returned; a slot left without a document (more excluded than ``n - k``) holds ``(-inf, -1)``. Scores are float32, computed on ``device``
(default: the queries' device); the corpus may live elsewhere (e.g. memory-mapped on the CPU)
and is moved there one group at a time.

:func:`score_candidates` scores given documents per query (re-ranking, teacher scores).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal, NamedTuple, cast

import numpy as np
import torch

from colzero.scoring.maxsim import budget_elements, maxsim_all_pairs, maxsim_nway
from colzero.scoring.packed import PackedEmbeddings, PaddedEmbeddings, as_tensor
from colzero.scoring.topk import TopK

Score = Literal["maxsim", "dot"]

#: per-chunk similarity tensor of an exact search: 32 MB stays cache-resident on a CPU
#: (84 vs 48 GFLOP/s at 256 MB, AMD EPYC, 2 threads)
SEARCH_BUDGET_BYTES = 32 * 1024**2
#: documents per length-sorted group (MaxSim) / per matrix product (dot)
MAXSIM_GROUP = 256
DOT_CHUNK = 16384

QueryInput = torch.Tensor | np.ndarray | PackedEmbeddings | PaddedEmbeddings | Sequence[torch.Tensor]
CorpusInput = PackedEmbeddings | torch.Tensor | np.ndarray


class SearchResult(NamedTuple):
    """Top-k ``scores`` (float32, descending) and document ``indices`` per query; empty slots hold (-inf, -1)."""

    scores: torch.Tensor  # (nq, width) float32
    indices: torch.Tensor  # (nq, width) int64, -1 where no document


def _check_score(score: str) -> None:
    if score not in ("maxsim", "dot"):
        raise ValueError(f"score must be 'maxsim' or 'dot', got {score!r}")


def as_corpus(corpus: CorpusInput) -> PackedEmbeddings:
    """A packed corpus; a ``(n, dim)`` matrix is ``n`` single-vector documents."""
    if isinstance(corpus, PackedEmbeddings):
        return corpus
    return PackedEmbeddings(corpus)


def _queries(
    queries: QueryInput, query_mask: torch.Tensor | None, score: Score, device: torch.device | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(queries, mask or None) on ``device`` in float32: (nq, Lq, dim) for MaxSim, (nq, dim) for dot."""
    if isinstance(queries, PaddedEmbeddings):
        if query_mask is not None:
            raise ValueError("query_mask is given twice (PaddedEmbeddings carries its mask)")
        q, query_mask = queries.embeddings, queries.mask
    elif isinstance(queries, PackedEmbeddings):
        if score == "dot":
            if not queries.is_single_vector():
                raise ValueError("dot search needs one vector per query")
            q = queries.vectors
        else:
            padded = queries.padded(fill="zeros")
            q, query_mask = padded.embeddings, padded.mask
    elif isinstance(queries, torch.Tensor | np.ndarray):
        q = as_tensor(queries)
    else:  # a sequence of per-query matrices (MaxSim) or vectors (dot)
        items = [as_tensor(x) for x in queries]
        if score == "dot":
            q = torch.stack(items) if items else torch.zeros((0, 0))
        elif items:
            padded = PackedEmbeddings.from_list(items).padded(fill="zeros")
            q, query_mask = padded.embeddings, padded.mask
        else:
            q = torch.zeros((0, 0, 0))
    want = 3 if score == "maxsim" else 2
    if score == "maxsim" and q.dim() == 2:  # one query matrix
        q = q.unsqueeze(0)
        query_mask = None if query_mask is None else query_mask.reshape(1, -1)
    if q.dim() != want:
        raise ValueError(f"{score} queries must have {want} dimensions, got shape {tuple(q.shape)}")
    target = device if device is not None else q.device
    q = q.to(device=target, dtype=torch.float32).contiguous()
    if query_mask is not None:
        if query_mask.shape != q.shape[:2]:
            raise ValueError(f"query_mask shape {tuple(query_mask.shape)} != queries {tuple(q.shape[:2])}")
        query_mask = query_mask.to(device=target, dtype=torch.bool)
        if bool(query_mask.all()):
            query_mask = None  # nothing masked: skip the masking pass
    return q, query_mask


def _exclusions(
    exclude: torch.Tensor | Sequence[Sequence[int]] | Sequence[int] | None, n_queries: int
) -> torch.Tensor | None:
    """(nq, m) int64 document indices per query, -1 = none; None when nothing is excluded."""
    if exclude is None:
        return None
    if isinstance(exclude, torch.Tensor | np.ndarray):
        ex = torch.as_tensor(exclude, dtype=torch.long)
    else:
        items = list(exclude)
        if items and all(isinstance(x, int | np.integer) for x in items):
            ex = torch.tensor(items, dtype=torch.long)
        else:
            rows = [list(cast(Sequence[int], x)) for x in items]
            width = max((len(r) for r in rows), default=0)
            ex = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
            ex = ex.reshape(len(rows), width)
    if ex.dim() == 1:
        ex = ex.unsqueeze(1)
    if ex.dim() != 2 or ex.shape[0] != n_queries:
        raise ValueError(
            f"exclude must hold one entry (or row) per query ({n_queries}), got {tuple(ex.shape)}"
        )
    if not bool((ex >= 0).any()):
        return None
    return ex


class _Excluder:
    """Masks each query's excluded documents in the chunk of iteration slots [start, start + c)."""

    def __init__(self, exclude: torch.Tensor, slot_of_doc: torch.Tensor, n_docs: int, device: torch.device):
        ex = exclude.to(device)
        valid = (ex >= 0) & (ex < n_docs)
        self.valid = valid
        self.slots = torch.where(valid, slot_of_doc.to(device)[ex.clamp(0, max(0, n_docs - 1))], -1)

    def apply(self, scores: torch.Tensor, indices: torch.Tensor, start: int) -> torch.Tensor:
        """Set excluded scores to -inf in place; returns (nq, c) indices with -1 there."""
        local = self.slots - start
        hit = self.valid & (local >= 0) & (local < scores.shape[1])
        if not bool(hit.any()):
            return indices
        q_rows, which = hit.nonzero(as_tuple=True)
        cols = local[q_rows, which]
        scores[q_rows, cols] = float("-inf")
        indices = indices.unsqueeze(0).expand(scores.shape[0], -1).clone()
        indices[q_rows, cols] = -1
        return indices


def _score_chunks(
    q: torch.Tensor,
    query_mask: torch.Tensor | None,
    corpus: PackedEmbeddings,
    score: Score,
    group: int,
    budget_bytes: int,
    device: torch.device,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(scores (nq, c), document indices (c,)) for consecutive chunks of the iteration order."""
    if score == "dot":
        vectors = corpus.vectors
        for start in range(0, vectors.shape[0], group):
            chunk = vectors[start : start + group].to(device=device, dtype=torch.float32)
            yield q @ chunk.T, torch.arange(start, start + chunk.shape[0], device=device)
        return
    groups = corpus.groups(group, fill="last", device=device, dtype=torch.float32, reuse_buffer=True)
    for rows, docs in groups:
        nonempty = docs.mask[:, :1].expand_as(docs.mask)  # "last" padding: every position of a real doc
        scores = maxsim_all_pairs(q, docs.embeddings, nonempty, query_mask, budget_bytes=budget_bytes)
        yield scores.masked_fill_(~docs.mask[:, 0], float("-inf")), rows.to(device)


@torch.inference_mode()
def search(
    queries: QueryInput,
    corpus: CorpusInput,
    k: int,
    *,
    score: Score = "maxsim",
    query_mask: torch.Tensor | None = None,
    exclude: torch.Tensor | Sequence[Sequence[int]] | Sequence[int] | None = None,
    doc_group: int | None = None,
    budget_bytes: int = SEARCH_BUDGET_BYTES,
    device: torch.device | str | None = None,
) -> SearchResult:
    """Exact top-``k`` documents of ``corpus`` for every query (see the module docstring).

    ``queries``: MaxSim: ``(nq, Lq, dim)`` with ``query_mask`` (nq, Lq) (False positions add 0),
    one ``(Lq, dim)`` matrix, a list of per-query matrices, or packed/padded embeddings; dot:
    ``(nq, dim)``. ``exclude``: per query one document index, or a row of them, ``-1`` = none
    (``(nq,)`` or ``(nq, m)``, or a list of lists). ``doc_group``: documents per group
    (default 256 for MaxSim, 16384 for dot). ``budget_bytes`` bounds each similarity chunk.
    """
    _check_score(score)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    target = torch.device(device) if device is not None else None
    q, qmask = _queries(queries, query_mask, score, target)
    packed = as_corpus(corpus)
    if score == "dot" and not packed.is_single_vector():
        raise ValueError("dot search needs a single-vector corpus (one vector per document)")
    if q.shape[-1] != packed.dim and len(packed) and q.shape[0]:
        raise ValueError(f"dimension mismatch: queries {q.shape[-1]} vs corpus {packed.dim}")
    n, nq = len(packed), q.shape[0]
    width = min(k, n)
    group = doc_group or (DOT_CHUNK if score == "dot" else MAXSIM_GROUP)
    best = TopK(nq, width, device=q.device)
    if nq == 0 or n == 0:
        return SearchResult(*best.result())
    excluder = None
    ex = _exclusions(exclude, nq)
    if ex is not None:
        order = packed.length_order() if score == "maxsim" else torch.arange(n)
        slot_of_doc = torch.empty(n, dtype=torch.long)
        slot_of_doc[order.cpu()] = torch.arange(n)
        excluder = _Excluder(ex, slot_of_doc, n, q.device)
    start = 0
    for scores, rows in _score_chunks(q, qmask, packed, score, group, budget_bytes, q.device):
        indices = rows if excluder is None else excluder.apply(scores, rows, start)
        best.push(scores, indices)
        start += scores.shape[1]
    return SearchResult(*best.result())


def _candidate_matrix(candidates: torch.Tensor | Sequence[Sequence[int]], n_queries: int) -> torch.Tensor:
    if isinstance(candidates, torch.Tensor | np.ndarray):
        cand = torch.as_tensor(candidates, dtype=torch.long).cpu()
    else:
        rows = [list(r) for r in candidates]
        width = max((len(r) for r in rows), default=0)
        cand = torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)
        cand = cand.reshape(len(rows), width)
    if cand.dim() != 2 or cand.shape[0] != n_queries:
        raise ValueError(f"candidates must be (queries={n_queries}, c), got {tuple(cand.shape)}")
    return cand


@torch.inference_mode()
def score_candidates(
    queries: QueryInput,
    corpus: CorpusInput,
    candidates: torch.Tensor | Sequence[Sequence[int]],
    *,
    score: Score = "maxsim",
    query_mask: torch.Tensor | None = None,
    budget_bytes: int = SEARCH_BUDGET_BYTES,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Score each query against its own candidate documents: ``(nq, c)`` float32.

    ``candidates``: ``(nq, c)`` corpus indices (``-1`` = no candidate, scored ``-inf``), or a list
    of per-query lists (ragged lists are padded with ``-1``). Queries are taken in chunks; each
    chunk's candidates are gathered once, padded to the chunk's longest candidate (MaxSim:
    :func:`colzero.scoring.maxsim.maxsim_nway`; dot: one batched product).
    """
    _check_score(score)
    target = torch.device(device) if device is not None else None
    q, qmask = _queries(queries, query_mask, score, target)
    packed = as_corpus(corpus)
    nq = q.shape[0]
    cand = _candidate_matrix(candidates, nq)
    n, c = len(packed), cand.shape[1]
    if bool(((cand < -1) | (cand >= n)).any()):
        raise ValueError(f"candidate indices must be -1 or in [0, {n}); got {cand.min()}..{cand.max()}")
    out = torch.full((nq, c), float("-inf"), dtype=torch.float32, device=q.device)
    if nq == 0 or c == 0 or n == 0:
        return out
    if score == "dot" and not packed.is_single_vector():
        raise ValueError("dot scoring needs a single-vector corpus (one vector per document)")
    if q.shape[-1] != packed.dim:
        raise ValueError(f"dimension mismatch: queries {q.shape[-1]} vs corpus {packed.dim}")
    lengths = packed.lengths.cpu()[cand.clamp(min=0)]
    width = max(1, int(lengths.max()))
    dim = q.shape[-1]
    lq = q.shape[1] if score == "maxsim" else 1
    per_query = c * max(width * dim, lq * width)  # gathered documents or similarity tensor, elements
    step = max(1, budget_elements(budget_bytes, torch.float32) // per_query)
    home = packed.offsets.device
    buffer = packed.vectors.new_empty((min(step, nq) * c * width, dim))  # one gather buffer for all chunks
    for s in range(0, nq, step):
        rows = cand[s : s + step]
        b = rows.shape[0]
        docs = packed.padded(
            rows.clamp(min=0).to(home),
            fill="last",
            device=q.device,
            dtype=torch.float32,
            min_width=1,
            out=buffer,
        )
        if score == "dot":
            got = torch.einsum("bd,bcd->bc", q[s : s + step], docs.embeddings.view(b, c, dim))
        else:
            w = docs.embeddings.shape[1]
            nonempty = docs.mask[:, :1].expand_as(docs.mask).reshape(b, c, w)
            qm = None if qmask is None else qmask[s : s + step]
            got = maxsim_nway(
                q[s : s + step], docs.embeddings.view(b, c, w, dim), nonempty, qm, budget_bytes=budget_bytes
            )
        out[s : s + step] = got.float()
    missing = (cand < 0) | (lengths == 0)
    return out.masked_fill_(missing.to(q.device), float("-inf"))
