"""MaxSim, the late-interaction score, as a small functional core.

    s(q, d) = sum_i max_j <q_i, d_j>     over query positions i and unmasked document tokens j

Three shapes: pairwise (query i vs document i), all pairs (every query vs every document) and
n-way (each query vs its own k candidates). Every function:

- bounds memory by construction: the (queries x documents x Lq x Ld) similarity tensor is built
  in chunks whose element count stays under ``max_elements`` (derived from a byte budget);
- masks document tokens by filling them with the dtype's minimum before the max, never by
  multiplying by zero (a zero would beat every negative similarity);
- reduces over query positions in float32, whatever the input dtype (bf16 inputs stay bf16 for
  the matrix products, which is where the speed is). Under ``torch.autocast`` the products run
  in the autocast dtype (as a plain ``matmul`` would), in the forward and in the backward.

Masked query positions (``queries_mask`` False) contribute 0. A document with no unmasked
token scores ``-inf``-like (the dtype minimum per query position), so padded candidates never win.

Backward (a custom :class:`torch.autograd.Function` per shape): the forward runs without autograd
and saves only its inputs (queries, documents, masks: tensors that exist anyway), never a
similarity chunk or argmax indices. The backward walks the same chunks again, recomputes each
chunk's similarities and argmax, and turns the chunk into the selection matrix
``P[(a, i), (b, j)] = g_ab * [j = argmax_j' <q_ai, d_bj'>]`` (in the similarity chunk's own
buffer), so that

    dL/dq_a = P_a @ D_b        dL/dd_b = P_b^T @ Q_a        (per chunk, summed over chunks)

with ``g_ab = dL/ds(a, b)`` times the query mask. So what is kept for backward does not grow with
the batch, and the backward's working memory is one similarity chunk (plus the gradients, which
are accumulated in float32 for half/bf16 inputs and returned in the input dtype). Gradient rules:

- ties: the gradient of ``max_j`` goes to the *first* maximal document token (lowest j), as
  ``torch.argmax`` returns it;
- masked query positions and masked document tokens get zero gradient; a fully masked document
  (which scores the dtype minimum) passes no gradient to the queries or to itself.

No host synchronisation: no ``.item()``, no ``bool(tensor)``, no branch on tensor values, so the
functions trace under ``torch.compile(fullgraph=True)``.

**Backends** (``backend=``): ``"chunked"`` is the path above, in torch operations on any device; it
is the CPU path and the reference. ``"fused"`` (:mod:`colzero.scoring.fused`, Triton) computes the
same scores and gradients without ever materialising a similarity chunk: one pass over the
documents per tile of query tokens with the running max in registers, one byte per (computed
query position, document) kept for the backward (two past 256 document tokens), and query
positions whose vector is exactly zero (expansion positions under ``flash_attention_compat``,
masked positions) skipped. Which positions are zero is known on the device only, so the index is
allocated for every query position unless the caller passes ``query_rows``: an upper bound,
known on the host, on the scored query positions with a nonzero vector (the losses pass the
number of attended query tokens under ``flash_attention_compat``, counted when the batch was
tokenised). A bound that is too small gives NaN scores, never wrong ones; the chunked backend
ignores it. ``"auto"`` takes ``"fused"`` on
CUDA when Triton is installed and the inputs are float32 / float16 / bfloat16, else ``"chunked"``.

**Precision** (``precision=``): ``"autocast"`` computes the similarity products in the autocast
dtype under ``torch.autocast`` (bf16 similarities on a GPU), else in the promoted input dtype.
``"fp32"`` is how ColBERT-Zero's authors trained (accelerate autocasts the model's forward only):
under autocast the token vectors are rounded to the autocast dtype, as a bf16 forward produces
them, and products, maxima and sums are computed in float32 from those values. The fused backend
always accumulates in float32, so for it the two differ only in what autocast does to the operands.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import torch

#: default budget for one chunk's similarity tensor (bytes)
DEFAULT_BUDGET_BYTES = 2 * 1024**3

#: input dtypes that ``torch.autocast`` lowers for a matrix product
_AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)

#: how MaxSim is computed: ``"fused"`` (Triton kernels), ``"chunked"`` (torch, any device) or
#: ``"auto"`` (fused on CUDA when available)
Backend = Literal["auto", "fused", "chunked"]
BACKENDS: tuple[Backend, ...] = ("auto", "fused", "chunked")

#: ``"autocast"``: similarities in the autocast dtype under autocast; ``"fp32"``: float32 products,
#: maxima and sums on operands rounded as a bf16 forward would (module docstring)
MaxSimPrecision = Literal["autocast", "fp32"]
MAXSIM_PRECISIONS: tuple[MaxSimPrecision, ...] = ("autocast", "fp32")


def budget_elements(budget_bytes: int, dtype: torch.dtype) -> int:
    """How many similarity elements fit in ``budget_bytes`` (one chunk is filled in place)."""
    return max(1, int(budget_bytes) // dtype.itemsize)


def compute_dtype(queries: torch.Tensor, documents: torch.Tensor) -> torch.dtype:
    """The dtype of the similarity products: the autocast dtype when autocast is on for the
    device (and the inputs are eligible), else the promoted input dtype."""
    device_type = queries.device.type
    promoted = torch.promote_types(queries.dtype, documents.dtype)
    if promoted in _AUTOCAST_ELIGIBLE and torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return promoted


def operand_and_compute_dtypes(
    queries: torch.Tensor, documents: torch.Tensor, precision: MaxSimPrecision = "autocast"
) -> tuple[torch.dtype, torch.dtype]:
    """(operand dtype, product dtype) of a MaxSim call (module docstring, *Precision*).

    The operands are the token vectors rounded to the operand dtype; the products are computed in
    the product dtype: both :func:`compute_dtype` under ``"autocast"``; under ``"fp32"`` the
    operands are those of ``"autocast"`` and the products float32 (float64 inputs stay float64).
    """
    if precision not in MAXSIM_PRECISIONS:
        raise ValueError(f"precision must be one of {MAXSIM_PRECISIONS}, got {precision!r}")
    operand = compute_dtype(queries, documents)
    if precision == "autocast":
        return operand, operand
    promoted = torch.promote_types(queries.dtype, documents.dtype)
    return operand, torch.promote_types(promoted, torch.float32)


def fused_unavailable(queries: torch.Tensor, operand: torch.dtype) -> str | None:
    """Why the fused backend cannot score ``queries`` with ``operand`` here (None: it can)."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed"
    if operand not in _AUTOCAST_ELIGIBLE:
        return f"it takes float32, float16 or bfloat16 operands, not {operand}"
    if queries.device.type != "cuda":
        from colzero.scoring.fused import interpreting

        if not interpreting():
            return f"it runs on CUDA (or on the CPU under TRITON_INTERPRET=1), not on {queries.device.type}"
    return None


def resolve_backend(backend: Backend, queries: torch.Tensor, operand: torch.dtype) -> Backend:
    """``"fused"`` or ``"chunked"`` for this call: ``"auto"`` is fused on CUDA where it can run;
    an explicit ``"fused"`` that cannot run is an error naming why."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "chunked":
        return "chunked"
    reason = fused_unavailable(queries, operand)
    if backend == "fused":
        if reason is not None:
            raise ValueError(f"the fused MaxSim backend cannot run here: {reason}")
        return "fused"
    return "fused" if reason is None and queries.device.type == "cuda" else "chunked"


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _mask_documents_(sim: torch.Tensor, doc_mask: torch.Tensor) -> torch.Tensor:
    """Fill ``sim`` (..., Ld) in place with the dtype minimum where ``doc_mask`` is False."""
    return sim.masked_fill_(~doc_mask, torch.finfo(sim.dtype).min)


def _sum_positions(best: torch.Tensor, query_mask: torch.Tensor | None) -> torch.Tensor:
    """best (..., Lq, K) -> float32 sum over unmasked query positions (..., K)."""
    if query_mask is not None:
        best = best.masked_fill(~query_mask.unsqueeze(-1), 0)
    return best.sum(dim=-2, dtype=torch.float32)


def _weights(
    grad: torch.Tensor, query_mask: torch.Tensor | None, doc_has_token: torch.Tensor, lq: int
) -> torch.Tensor:
    """g (..., K) -> per-position weights (..., Lq, K): g, zeroed at masked query positions and
    fully masked documents (``doc_has_token`` broadcastable to (..., K))."""
    w = (grad * doc_has_token).unsqueeze(-2)
    if query_mask is None:
        return w.expand(*grad.shape[:-1], lq, grad.shape[-1])
    return w * query_mask.unsqueeze(-1)


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


class _Inputs(NamedTuple):
    """What a MaxSim shape's forward takes and its backward recomputes from."""

    queries: torch.Tensor
    documents: torch.Tensor
    documents_mask: torch.Tensor
    queries_mask: torch.Tensor | None
    max_elements: int
    dtype: torch.dtype  # of the products
    operand: torch.dtype  # the vectors are rounded to it first


def _nway_step(lq: int, k: int, ld: int, max_elements: int) -> int:
    return max(1, max_elements // max(1, lq * k * ld))


def _nway_forward(inputs: _Inputs) -> torch.Tensor:
    """(B, Lq, D) x (B, K, Ld, D) -> (B, K); chunks over B (module docstring)."""
    queries, documents, documents_mask, queries_mask, max_elements, dtype, operand = inputs
    b, lq, dim = queries.shape
    _, k, ld, _ = documents.shape
    step = _nway_step(lq, k, ld, max_elements)
    out = torch.empty((b, k), dtype=torch.float32, device=queries.device)
    for s in range(0, b, step):
        q = queries[s : s + step].to(operand).to(dtype)
        d = documents[s : s + step].to(operand).to(dtype).reshape(q.shape[0], k * ld, dim)
        sim = torch.bmm(q, d.transpose(1, 2)).view(q.shape[0], lq, k, ld)
        best = _mask_documents_(sim, documents_mask[s : s + step].unsqueeze(1)).amax(dim=-1)
        qm = None if queries_mask is None else queries_mask[s : s + step]
        out[s : s + step] = _sum_positions(best, qm)
    return out


def _nway_backward(
    grad_out: torch.Tensor, inputs: _Inputs, need_q: bool, need_d: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    queries, documents, documents_mask, queries_mask, max_elements, dtype, operand = inputs
    b, lq, dim = queries.shape
    _, k, ld, _ = documents.shape
    step = _nway_step(lq, k, ld, max_elements)
    grad_q = torch.zeros_like(queries) if need_q else None
    grad_d = torch.zeros_like(documents) if need_d else None
    has_token = documents_mask.any(dim=-1)  # (B, K)
    for s in range(0, b, step):
        q = queries[s : s + step].to(operand).to(dtype)
        n = q.shape[0]
        d = documents[s : s + step].to(operand).to(dtype).reshape(n, k * ld, dim)
        sim = torch.bmm(q, d.transpose(1, 2)).view(n, lq, k, ld)
        index = _mask_documents_(sim, documents_mask[s : s + step].unsqueeze(1)).argmax(dim=-1, keepdim=True)
        qm = None if queries_mask is None else queries_mask[s : s + step]
        w = _weights(grad_out[s : s + step], qm, has_token[s : s + step], lq)
        select = sim.zero_().scatter_(-1, index, w.unsqueeze(-1).to(dtype)).view(n, lq, k * ld)
        if grad_q is not None:
            grad_q[s : s + step] = torch.bmm(select, d).to(grad_q.dtype)
        if grad_d is not None:
            grad_d[s : s + step] = torch.bmm(select.transpose(1, 2), q).view(n, k, ld, dim).to(grad_d.dtype)
    return grad_q, grad_d


def _all_pairs_forward(inputs: _Inputs) -> torch.Tensor:
    """(Nq, Lq, D) x (Nd, Ld, D) -> (Nq, Nd); chunks over queries and documents (module docstring)."""
    queries, documents, documents_mask, queries_mask, max_elements, dtype, operand = inputs
    nq, lq, dim = queries.shape
    nd, ld, _ = documents.shape
    qc, dc = all_pairs_chunks(nq, nd, lq, ld, max_elements)
    out = torch.empty((nq, nd), dtype=torch.float32, device=queries.device)
    for qs in range(0, nq, qc):
        q = queries[qs : qs + qc].to(operand).to(dtype)
        flat_q = q.reshape(-1, dim)
        qm = None if queries_mask is None else queries_mask[qs : qs + qc]
        for ds in range(0, nd, dc):
            d = documents[ds : ds + dc].to(operand).to(dtype)
            sim = (flat_q @ d.reshape(-1, dim).T).view(q.shape[0], lq, d.shape[0], ld)
            best = _mask_documents_(sim, documents_mask[ds : ds + dc].view(1, 1, -1, ld)).amax(dim=-1)
            out[qs : qs + qc, ds : ds + dc] = _sum_positions(best, qm)
    return out


def _all_pairs_backward(
    grad_out: torch.Tensor, inputs: _Inputs, need_q: bool, need_d: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    queries, documents, documents_mask, queries_mask, max_elements, dtype, operand = inputs
    nq, lq, dim = queries.shape
    nd, ld, _ = documents.shape
    qc, dc = all_pairs_chunks(nq, nd, lq, ld, max_elements)
    acc_q = _accumulator_dtype(queries.dtype)
    acc_d = _accumulator_dtype(documents.dtype)
    grad_q = torch.zeros(queries.shape, dtype=acc_q, device=queries.device) if need_q else None
    grad_d = torch.zeros(documents.shape, dtype=acc_d, device=documents.device) if need_d else None
    has_token = documents_mask.any(dim=-1)  # (Nd,)
    for qs in range(0, nq, qc):
        q = queries[qs : qs + qc].to(operand).to(dtype)
        n = q.shape[0]
        flat_q = q.reshape(-1, dim)
        qm = None if queries_mask is None else queries_mask[qs : qs + qc]
        for ds in range(0, nd, dc):
            d = documents[ds : ds + dc].to(operand).to(dtype)
            m = d.shape[0]
            flat_d = d.reshape(-1, dim)
            sim = (flat_q @ flat_d.T).view(n, lq, m, ld)
            index = _mask_documents_(sim, documents_mask[ds : ds + dc].view(1, 1, -1, ld)).argmax(
                dim=-1, keepdim=True
            )
            w = _weights(grad_out[qs : qs + qc, ds : ds + dc], qm, has_token[ds : ds + dc], lq)
            select = sim.zero_().scatter_(-1, index, w.unsqueeze(-1).to(dtype)).view(n * lq, m * ld)
            if grad_q is not None:
                grad_q[qs : qs + qc] += (select @ flat_d).view(n, lq, dim)
            if grad_d is not None:
                grad_d[ds : ds + dc] += (select.T @ flat_q).view(m, ld, dim)
    return (
        None if grad_q is None else grad_q.to(queries.dtype),
        None if grad_d is None else grad_d.to(documents.dtype),
    )


def _chunked_function(
    name: str, forward: Callable[..., torch.Tensor], backward: Callable[..., tuple[Any, Any]]
) -> Any:
    """A :class:`torch.autograd.Function` of one MaxSim shape: ``forward(inputs)`` runs without
    autograd and only the inputs are saved; ``backward`` recomputes the chunks (module docstring)."""

    def function_forward(
        ctx: Any,
        queries: torch.Tensor,
        documents: torch.Tensor,
        documents_mask: torch.Tensor,
        queries_mask: torch.Tensor | None,
        max_elements: int,
        dtype: torch.dtype,
        operand: torch.dtype,
    ) -> torch.Tensor:
        ctx.save_for_backward(queries, documents, documents_mask, queries_mask)
        ctx.max_elements, ctx.dtype, ctx.operand = max_elements, dtype, operand
        return forward(
            _Inputs(queries, documents, documents_mask, queries_mask, max_elements, dtype, operand)
        )

    def function_backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        queries, documents, documents_mask, queries_mask = ctx.saved_tensors
        with torch.autocast(queries.device.type, enabled=False):  # recompute exactly as the forward did
            inputs = _Inputs(
                queries, documents, documents_mask, queries_mask, ctx.max_elements, ctx.dtype, ctx.operand
            )
            grads = backward(grad_out, inputs, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        return (*grads, None, None, None, None, None)

    return type(
        name,
        (torch.autograd.Function,),
        {"forward": staticmethod(function_forward), "backward": staticmethod(function_backward)},
    )


_NwayMaxSim = _chunked_function("_NwayMaxSim", _nway_forward, _nway_backward)
_AllPairsMaxSim = _chunked_function("_AllPairsMaxSim", _all_pairs_forward, _all_pairs_backward)


def maxsim_pairwise(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None = None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    backend: Backend = "auto",
    precision: MaxSimPrecision = "autocast",
    query_rows: int | None = None,
) -> torch.Tensor:
    """Score query i against document i: (B, Lq, D) x (B, Ld, D) -> (B,) float32.

    ``backend``, ``precision`` and ``query_rows``: module docstring; ``budget_bytes`` bounds the
    chunked backend's similarity chunk.

    >>> import torch
    >>> q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # 1 query, 2 token vectors
    >>> d = torch.tensor([[[0.6, 0.8], [1.0, 0.0]]])  # 1 document, 2 token vectors
    >>> maxsim_pairwise(q, d, torch.tensor([[True, True]]))  # max(0.6, 1) + max(0.8, 0)
    tensor([1.8000])
    >>> maxsim_pairwise(q, d, torch.tensor([[True, False]]))  # the second token is masked
    tensor([1.4000])
    """
    _check(queries, documents, documents_mask, 3)
    scores = maxsim_nway(
        queries,
        documents.unsqueeze(1),
        documents_mask.unsqueeze(1),
        queries_mask,
        budget_bytes=budget_bytes,
        backend=backend,
        precision=precision,
        query_rows=query_rows,
    )
    return scores.squeeze(1)


def maxsim_nway(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None = None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    backend: Backend = "auto",
    precision: MaxSimPrecision = "autocast",
    query_rows: int | None = None,
) -> torch.Tensor:
    """Score each query against its own k candidates: (B, Lq, D) x (B, K, Ld, D) -> (B, K).

    ``backend``, ``precision`` and ``query_rows``: module docstring.

    >>> import torch
    >>> q = torch.tensor([[[1.0, 0.0]]])  # 1 query of 1 token
    >>> d = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]], [[0.6, 0.8]]]])  # its 3 candidates
    >>> maxsim_nway(q, d, torch.ones(1, 3, 1, dtype=torch.bool))
    tensor([[1.0000, 0.0000, 0.6000]])
    """
    _check(queries, documents, documents_mask, 3)
    if documents.dim() != 4:
        raise ValueError(
            f"documents must have 4 dimensions (B, K, Ld, D), got shape {tuple(documents.shape)}"
        )
    return _score(
        queries, documents, documents_mask, queries_mask, True, budget_bytes, backend, precision, query_rows
    )


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
    backend: Backend = "auto",
    precision: MaxSimPrecision = "autocast",
    query_rows: int | None = None,
) -> torch.Tensor:
    """Every query against every document: (Nq, Lq, D) x (Nd, Ld, D) -> (Nq, Nd) float32.

    Each chunk of the chunked backend is a single matrix product (chunk_q * Lq, D) @
    (D, chunk_d * Ld); ``backend``, ``precision`` and ``query_rows``: module docstring.

    >>> import torch
    >>> q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 queries of 1 token
    >>> d = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.6, 0.8], [0.0, 1.0]]])  # 2 documents
    >>> maxsim_all_pairs(q, d, torch.tensor([[True, False], [True, True]]))
    tensor([[1.0000, 0.6000],
            [0.0000, 1.0000]])
    """
    _check(queries, documents, documents_mask, 3)
    if documents.dim() != 3:
        raise ValueError(f"documents must have 3 dimensions (Nd, Ld, D), got shape {tuple(documents.shape)}")
    return _score(
        queries, documents, documents_mask, queries_mask, False, budget_bytes, backend, precision, query_rows
    )


def _score(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    nway: bool,
    budget_bytes: int,
    backend: Backend,
    precision: MaxSimPrecision,
    query_rows: int | None = None,
) -> torch.Tensor:
    operand, dtype = operand_and_compute_dtypes(queries, documents, precision)
    if resolve_backend(backend, queries, operand) == "fused":
        from colzero.scoring.fused import fused_maxsim, operand_name

        positions = queries.shape[0] * queries.shape[1]
        rows = positions if query_rows is None else max(0, min(int(query_rows), positions))
        scores, _ = fused_maxsim(
            queries, documents, documents_mask, queries_mask, nway, operand_name(operand), rows
        )
        return scores
    function = _NwayMaxSim if nway else _AllPairsMaxSim
    # the dtypes are explicit from here on (the products must not be recast by autocast)
    with torch.autocast(queries.device.type, enabled=False):
        return function.apply(
            queries,
            documents,
            documents_mask,
            queries_mask,
            budget_elements(budget_bytes, dtype),
            dtype,
            operand,
        )
