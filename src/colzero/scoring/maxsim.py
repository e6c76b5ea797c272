"""MaxSim, the late-interaction score, as a small functional core.

    s(q, d) = sum_i max_j <q_i, d_j>     over query positions i and unmasked document tokens j

Three shapes: pairwise (query i vs document i), all pairs (every query vs every document) and
n-way (each query vs its own k candidates). Every function:

- bounds memory by construction: the (queries x documents x Lq x Ld) similarity tensor is built
  in chunks whose element count stays under ``max_elements`` (derived from a byte budget);
- masks document tokens by filling them with the dtype's minimum before the max, never by
  multiplying by zero (a zero would beat every negative similarity);
- reduces over query positions in float32, whatever the input dtype (bf16 inputs stay bf16 for
  the matrix products, which is where the speed is).

Masked query positions (``queries_mask`` False) contribute 0. A document with no unmasked
token scores ``-inf``-like (the dtype minimum per query position), so padded candidates never win.
``torch.max(dim)`` is used rather than ``amax``: its backward keeps only the argmax indices, so
training through these functions does not store the similarity tensor.
"""

from __future__ import annotations

import torch

#: default budget for one chunk's similarity tensor (bytes)
DEFAULT_BUDGET_BYTES = 2 * 1024**3


def budget_elements(budget_bytes: int, dtype: torch.dtype) -> int:
    """How many similarity elements fit in ``budget_bytes`` (one chunk is filled in place)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, int(budget_bytes) // itemsize)


def _reduce(sim: torch.Tensor, doc_mask: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
    """sim (..., Lq, K, Ld) masked on Ld, max over Ld, fp32 sum over Lq -> (..., K)."""
    if not bool(doc_mask.all()):  # skip a full pass over sim when nothing is masked
        sim = sim.masked_fill_(
            ~doc_mask, torch.finfo(sim.dtype).min
        )  # in place: matmul backward does not need it
    best = sim.max(dim=-1).values  # (..., Lq, K)
    if query_mask is not None:
        best = best.masked_fill(~query_mask.unsqueeze(-1), 0)
    return best.sum(dim=-2, dtype=torch.float32)


def _check(queries: torch.Tensor, documents: torch.Tensor, documents_mask: torch.Tensor, q_dims: int) -> None:
    if queries.dim() != q_dims:
        raise ValueError(f"queries must have {q_dims} dimensions, got shape {tuple(queries.shape)}")
    if documents.shape[-1] != queries.shape[-1]:
        raise ValueError(
            f"dimension mismatch: queries {queries.shape[-1]} vs documents {documents.shape[-1]}"
        )
    if documents_mask.shape != documents.shape[:-1]:
        raise ValueError(
            f"documents_mask shape {tuple(documents_mask.shape)} != documents {tuple(documents.shape[:-1])}"
        )


def maxsim_pairwise(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None = None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """Score query i against document i: (B, Lq, D) x (B, Ld, D) -> (B,) float32."""
    _check(queries, documents, documents_mask, 3)
    scores = maxsim_nway(
        queries,
        documents.unsqueeze(1),
        documents_mask.unsqueeze(1),
        queries_mask,
        budget_bytes=budget_bytes,
    )
    return scores.squeeze(1)


def maxsim_nway(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None = None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """Score each query against its own k candidates: (B, Lq, D) x (B, K, Ld, D) -> (B, K)."""
    _check(queries, documents, documents_mask, 3)
    b, lq, dim = queries.shape
    _, k, ld, _ = documents.shape
    per_query = max(1, lq * k * ld)
    step = max(1, budget_elements(budget_bytes, queries.dtype) // per_query)
    out = []
    for s in range(0, b, step):
        q = queries[s : s + step]
        d = documents[s : s + step].reshape(q.shape[0], k * ld, dim)
        sim = torch.bmm(q, d.transpose(1, 2)).view(q.shape[0], lq, k, ld)
        qm = None if queries_mask is None else queries_mask[s : s + step]
        out.append(_reduce(sim, documents_mask[s : s + step].unsqueeze(1), qm))
    if not out:
        return queries.new_zeros((0, k), dtype=torch.float32)
    return torch.cat(out)


def all_pairs_chunks(
    n_queries: int, n_documents: int, lq: int, ld: int, max_elements: int
) -> tuple[int, int]:
    """(query chunk, document chunk) with chunk_q * chunk_d * lq * ld <= max_elements."""
    pairs = max(1, max_elements // max(1, lq * ld))
    n_queries, n_documents = max(1, n_queries), max(1, n_documents)  # empty side: one (empty) chunk
    if n_queries * n_documents <= pairs:
        return n_queries, n_documents
    doc_chunk = min(n_documents, max(1, pairs // min(n_queries, 64)))
    query_chunk = min(n_queries, max(1, pairs // doc_chunk))
    return query_chunk, doc_chunk


def maxsim_all_pairs(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None = None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> torch.Tensor:
    """Every query against every document: (Nq, Lq, D) x (Nd, Ld, D) -> (Nq, Nd) float32.

    Each chunk is a single matrix product (chunk_q * Lq, D) @ (D, chunk_d * Ld).
    """
    _check(queries, documents, documents_mask, 3)
    nq, lq, dim = queries.shape
    nd, ld, _ = documents.shape
    qc, dc = all_pairs_chunks(nq, nd, lq, ld, budget_elements(budget_bytes, queries.dtype))
    rows = []
    for qs in range(0, nq, qc):
        q = queries[qs : qs + qc]
        flat_q = q.reshape(-1, dim)
        qm = None if queries_mask is None else queries_mask[qs : qs + qc]
        cols = []
        for ds in range(0, nd, dc):
            d = documents[ds : ds + dc]
            sim = (flat_q @ d.reshape(-1, dim).T).view(q.shape[0], lq, d.shape[0], ld)
            cols.append(_reduce(sim, documents_mask[ds : ds + dc].view(1, 1, -1, ld), qm))
        rows.append(torch.cat(cols, dim=1) if cols else q.new_zeros((q.shape[0], 0), dtype=torch.float32))
    if not rows:
        return queries.new_zeros((0, nd), dtype=torch.float32)
    return torch.cat(rows, dim=0)
