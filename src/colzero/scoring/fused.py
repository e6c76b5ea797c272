"""The fused MaxSim backend: Triton kernels that never materialise the similarity tensor.

Same scores and gradients as the chunked backend of :mod:`colzero.scoring.maxsim` (its module
docstring has the formula and the masking / tie / gradient rules), computed differently:

**Rows.** Only the query positions that can score something other than 0 are computed: a position
is a *row* when it is unmasked (``queries_mask``) and its vector is not exactly zero. Zero vectors
are what query-expansion positions become under ``flash_attention_compat`` (45% of the query
positions of the paper's phase 1); their max is exactly 0 against any document with a token, so
they add nothing to a score. Rows are numbered on the device (a cumulative sum of the row mask),
in query order, so no host synchronisation is needed; kernels read the row count from device
memory and tiles past it return at once.

**Forward** (``_all_pairs_fwd_kernel``, ``_nway_fwd_kernel``). A program holds a tile of rows in
registers and walks its documents token block by token block: ``tl.dot`` of the row tile with
the block (fp32 accumulation), masked tokens set to ``-inf``, a running max and argmax (strict
``>`` across blocks and ``tl.argmax``'s first-index rule inside one, so ties go to the lowest
token). It writes, per (row, document), the winning token as one byte (documents of <= 256 tokens;
two bytes up to 32,767, four beyond), and sums the rows' maxima per query: all pairs tiles may
straddle two queries, so those sums go out with ``tl.atomic_add`` onto a zeroed output (a query of
at most ``BLOCK_ROWS`` rows gets at most two contributions, ``0 + a + b``, whose order cannot change
the result).

**Backward** from those indices, with ``G = dL/dscores`` zeroed for fully masked documents:

    dQ[r] = sum_b G[q(r), b] * D[b, idx[r, b]]       (a gather per (row, document); exact fp32)
    dD[b, j] = sum_{r : idx[r, b] = j} G[q(r), b] * Q[r]

``dD`` runs with the document's token block stationary: for each tile of rows it builds the
one-hot (token x row) selection and multiplies it with the weighted rows on tensor cores; for
half-precision operands the weighted rows are split into a bf16 high and low part (two dots), so
the result keeps ~16 bits of mantissa instead of bf16's 8. ``dQ`` is split over document groups
into fp32 partial sums that are added in a fixed order (deterministic). Zero-vector positions are
not rows, but they are scored by the chunked backend (max 0 at the first unmasked token), so their
gradient is added back in closed form, ``dQ[a, i] = sum_b G[a, b] * D[b, first unmasked token]``:
one small GEMM. The scores and every gradient equal the chunked backend's.

**Precision.** Operands enter ``tl.dot`` in the operand dtype (bf16 / fp16 on tensor cores;
fp32 inputs use TF32 when ``torch.backends.cuda.matmul.allow_tf32`` is set, full fp32 otherwise);
products, maxima and sums accumulate in fp32. Under Triton's interpreter (``TRITON_INTERPRET=1``,
the CPU test path) operands are upcast to fp32 first, since the interpreter's half-precision dot
is not exact.

**Memory** kept for backward: the inputs and the argmax indices, ``index bytes x documents x
(queries x query length)`` for all pairs and ``x candidates x ...`` for n-way (allocated for
every query position, since the row count lives on the device; only rows are written). Working
memory: the fp32 gradients, ``G`` transposed, and the dQ partial sums (at most
``_DQ_PARTIAL_BYTES``).

Everything is wrapped in ``torch.library`` custom ops (``colzero::fused_maxsim`` and its
backward), so ``torch.compile`` traces through them without a graph break.

References: Khattab & Zaharia 2020 (ColBERT, arXiv:2004.12832); Tillet et al. 2019 (Triton);
flash-maxsim and late-interaction-kernels (fused MaxSim with saved argmax, compared in
``benchmarks/gpu_check.py``).
"""

import contextlib
import contextvars
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import torch
import triton
import triton.language as tl

#: operand dtypes of ``tl.dot`` by name (the custom ops take strings)
OPERAND_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

#: upper bound of the dQ partial sums buffer (bytes); more document groups, more parallelism
_DQ_PARTIAL_BYTES = 256 * 2**20

_FMIN = float(torch.finfo(torch.float32).min)


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def operand_name(dtype: torch.dtype) -> str:
    """The custom ops' name of an operand dtype (``"bf16"``, ``"fp16"``, ``"fp32"``)."""
    for name, value in OPERAND_DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"the fused MaxSim backend takes bf16, fp16 or fp32 operands, got {dtype}")


def index_dtype(doc_length: int) -> torch.dtype:
    """The narrowest integer that holds a token index of a document of ``doc_length`` tokens."""
    if doc_length <= 256:
        return torch.uint8
    if doc_length <= 2**15:
        return torch.int16
    return torch.int32


# ---------------------------------------------------------------------------- kernels


@triton.jit
def _dot(a, b, MODE: tl.constexpr):
    """``a @ b`` with fp32 accumulation; MODE 0: operands as loaded (half / tf32), 1: fp32 ieee,
    2: TF32."""
    if MODE == 1:
        return tl.dot(a, b, input_precision="ieee")
    elif MODE == 2:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b)


@triton.jit
def _i64(x):
    """``x`` as an int64 scalar (loop counters may be Python ints under the interpreter)."""
    return tl.full([], 0, tl.int64) + x


@triton.jit
def _operand(x, OP: tl.constexpr, MODE: tl.constexpr):
    """Round a loaded tile to the operand dtype, then to what ``tl.dot`` takes in this MODE."""
    x = x.to(OP)
    if MODE != 0:
        x = x.to(tl.float32)
    return x


@triton.jit
def _best_over_document(
    q,
    d_ptr,
    m_ptr,
    doc_length,
    stride_dl,
    dims,
    dim,
    OP: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
):
    """Per row of ``q``: the max of <q_r, d_j> over unmasked tokens j of one document, and the
    first j reaching it (``-inf`` and 0 when every token is masked)."""
    best = tl.full((BLOCK_ROWS,), float("-inf"), tl.float32)
    arg = tl.zeros((BLOCK_ROWS,), tl.int32)
    for t0 in range(0, doc_length, BLOCK_TOKENS):
        toks = t0 + tl.arange(0, BLOCK_TOKENS)
        tvalid = toks < doc_length
        keep = tl.load(m_ptr + toks, mask=tvalid, other=0) != 0
        d = tl.load(
            d_ptr + toks[:, None] * stride_dl + dims[None, :],
            mask=tvalid[:, None] & (dims[None, :] < dim),
            other=0.0,
        )
        s = _dot(q, tl.trans(_operand(d, OP, MODE)), MODE)
        s = tl.where(keep[None, :], s, float("-inf"))
        block_best = tl.max(s, axis=1)
        block_arg = tl.argmax(s, axis=1).to(tl.int32) + t0
        better = block_best > best
        best = tl.where(better, block_best, best)
        arg = tl.where(better, block_arg, arg)
    return best, arg


@triton.jit
def _all_pairs_fwd_kernel(
    q_ptr,
    d_ptr,
    m_ptr,
    row_src_ptr,
    row_query_ptr,
    n_rows_ptr,
    out_ptr,
    idx_ptr,
    n_docs,
    doc_length,
    dim,
    rows_alloc,
    n_row_tiles,
    stride_q,
    stride_dn,
    stride_dl,
    stride_mn,
    OP: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
    DOCS: tl.constexpr,
):
    pid = tl.program_id(0)
    tile = pid % n_row_tiles
    group = pid // n_row_tiles
    n_rows = tl.load(n_rows_ptr)
    row0 = tile * BLOCK_ROWS
    if row0 < n_rows:
        rows = row0 + tl.arange(0, BLOCK_ROWS)
        rvalid = rows < n_rows
        src = tl.load(row_src_ptr + rows, mask=rvalid, other=0)
        query = tl.load(row_query_ptr + rows, mask=rvalid, other=-1)
        dims = tl.arange(0, BLOCK_DIM)
        q = tl.load(
            q_ptr + src.to(tl.int64)[:, None] * stride_q + dims[None, :],
            mask=rvalid[:, None] & (dims[None, :] < dim),
            other=0.0,
        )
        q = _operand(q, OP, MODE)
        cols = tl.arange(0, DOCS)
        best_all = tl.zeros((BLOCK_ROWS, DOCS), tl.float32)
        best = tl.full((BLOCK_ROWS,), float("-inf"), tl.float32)
        arg = tl.zeros((BLOCK_ROWS,), tl.int32)
        n_blocks = tl.cdiv(doc_length, BLOCK_TOKENS)
        # one flat loop over (document, token block): long enough for the software pipeline to
        # prefetch the next block while this one is multiplied (a per-document inner loop of
        # ~3 blocks would drain it at every document)
        for step in range(0, DOCS * n_blocks):
            j = step // n_blocks
            t0 = ((_i64(step) - j * n_blocks) * BLOCK_TOKENS).to(tl.int32)
            doc = _i64(group * DOCS + j)
            toks = t0 + tl.arange(0, BLOCK_TOKENS)
            tvalid = toks < tl.where(doc < n_docs, doc_length, 0)  # past the last document: nothing
            keep = tl.load(m_ptr + doc * stride_mn + toks, mask=tvalid, other=0) != 0
            d = tl.load(
                d_ptr + doc * stride_dn + toks[:, None] * stride_dl + dims[None, :],
                mask=tvalid[:, None] & (dims[None, :] < dim),
                other=0.0,
            )
            s = _dot(q, tl.trans(_operand(d, OP, MODE)), MODE)
            s = tl.where(keep[None, :], s, float("-inf"))
            block_best = tl.max(s, axis=1)
            block_arg = tl.argmax(s, axis=1).to(tl.int32) + t0
            better = block_best > best  # strict: an equal later token never takes the place
            best = tl.where(better, block_best, best)
            arg = tl.where(better, block_arg, arg)
            done = t0 + BLOCK_TOKENS >= doc_length  # the document's last block
            final = tl.where(best == float("-inf"), -3.4028234663852886e38, best)
            best_all = tl.where(cols[None, :] == tl.where(done, j, -1), final[:, None], best_all)
            tl.store(
                idx_ptr + doc * rows_alloc + rows,
                arg.to(idx_ptr.dtype.element_ty),
                mask=rows < tl.where(done & (doc < n_docs), n_rows, 0),  # rvalid, at the last block
            )
            best = tl.where(done, float("-inf"), best)
            arg = tl.where(done, 0, arg)
        docs = group * DOCS + cols
        first = tl.min(tl.where(rvalid, query, 2147483647))
        last = tl.max(query)
        for a in range(first, last + 1):
            part = tl.sum(tl.where((query == a)[:, None], best_all, 0.0), axis=0)
            tl.atomic_add(out_ptr + _i64(a) * n_docs + docs, part, mask=docs < n_docs)


@triton.jit
def _all_pairs_dq_kernel(
    d_ptr,
    row_query_ptr,
    n_rows_ptr,
    idx_ptr,
    gt_ptr,
    part_ptr,
    n_docs,
    n_queries,
    dim,
    rows_alloc,
    n_row_tiles,
    docs_per_group,
    stride_dn,
    stride_dl,
    OP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    pid = tl.program_id(0)
    tile = pid % n_row_tiles
    group = pid // n_row_tiles
    n_rows = tl.load(n_rows_ptr)
    row0 = tile * BLOCK_ROWS
    if row0 < n_rows:
        rows = row0 + tl.arange(0, BLOCK_ROWS)
        rvalid = rows < n_rows
        query = tl.load(row_query_ptr + rows, mask=rvalid, other=0)
        dims = tl.arange(0, BLOCK_DIM)
        dmask = rvalid[:, None] & (dims[None, :] < dim)
        acc = tl.zeros((BLOCK_ROWS, BLOCK_DIM), tl.float32)
        start = group * docs_per_group
        stop = tl.minimum(start + docs_per_group, n_docs)
        for doc in range(start, stop):
            doc64 = _i64(doc)
            tok = tl.load(idx_ptr + doc64 * rows_alloc + rows, mask=rvalid, other=0).to(tl.int64)
            g = tl.load(gt_ptr + doc64 * n_queries + query, mask=rvalid, other=0.0)
            d = tl.load(
                d_ptr + doc64 * stride_dn + tok[:, None] * stride_dl + dims[None, :], mask=dmask, other=0.0
            )
            acc += g[:, None] * d.to(OP).to(tl.float32)
        tl.store(
            part_ptr + _i64(group) * rows_alloc * BLOCK_DIM + rows[:, None] * BLOCK_DIM + dims[None, :],
            acc,
            mask=rvalid[:, None],
        )


@triton.jit
def _accumulate_selected(acc, toks, tok_idx, w, MODE: tl.constexpr):
    """acc (T, DIM) += onehot(toks == tok_idx) (T, R) @ w (R, DIM), w fp32: split into bf16 high
    and low parts on tensor cores (MODE 0), else one fp32 dot (ieee or TF32)."""
    if MODE == 0:
        select = (toks[:, None] == tok_idx[None, :]).to(tl.bfloat16)
        high = w.to(tl.bfloat16)
        low = (w - high.to(tl.float32)).to(tl.bfloat16)
        acc += tl.dot(select, high)
        acc += tl.dot(select, low)
    else:
        select = (toks[:, None] == tok_idx[None, :]).to(tl.float32)
        acc += _dot(select, w, MODE)
    return acc


@triton.jit
def _selected_queries(q_ptr, row_src_ptr, doc_idx_ptr, rows, rvalid, dims, dim, stride_q, OP: tl.constexpr):
    """For one document: the rows' selected token (``doc_idx_ptr``: its index row; -1 where the row
    is past the end) and the rows' query vectors, rounded to the operand type, in fp32."""
    src = tl.load(row_src_ptr + rows, mask=rvalid, other=0)
    tok_idx = tl.load(doc_idx_ptr + rows, mask=rvalid, other=0).to(tl.int32)
    q = tl.load(
        q_ptr + src.to(tl.int64)[:, None] * stride_q + dims[None, :],
        mask=rvalid[:, None] & (dims[None, :] < dim),
        other=0.0,
    )
    return tl.where(rvalid, tok_idx, -1), q.to(OP).to(tl.float32)


@triton.jit
def _store_token_block(gd_ptr, doc, toks, dims, acc, doc_length, dim, stride_gn, stride_gl):
    """One document's gradient rows ``toks`` (those inside the document)."""
    tl.store(
        gd_ptr + doc * stride_gn + toks[:, None] * stride_gl + dims[None, :],
        acc,
        mask=(toks[:, None] < doc_length) & (dims[None, :] < dim),
    )


@triton.jit
def _all_pairs_dd_kernel(
    q_ptr,
    row_src_ptr,
    row_query_ptr,
    n_rows_ptr,
    idx_ptr,
    gt_ptr,
    gd_ptr,
    n_queries,
    doc_length,
    dim,
    rows_alloc,
    n_token_blocks,
    stride_q,
    stride_gn,
    stride_gl,
    OP: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    pid = tl.program_id(0)
    doc = _i64(pid // n_token_blocks)
    toks = (pid % n_token_blocks) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    n_rows = tl.load(n_rows_ptr)
    dims = tl.arange(0, BLOCK_DIM)
    acc = tl.zeros((BLOCK_TOKENS, BLOCK_DIM), tl.float32)
    for r0 in range(0, n_rows, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        rvalid = rows < n_rows
        query = tl.load(row_query_ptr + rows, mask=rvalid, other=0)
        tok_idx, q = _selected_queries(
            q_ptr, row_src_ptr, idx_ptr + doc * rows_alloc, rows, rvalid, dims, dim, stride_q, OP
        )
        g = tl.load(gt_ptr + doc * n_queries + query, mask=rvalid, other=0.0)
        acc = _accumulate_selected(acc, toks, tok_idx, g[:, None] * q, MODE)
    _store_token_block(gd_ptr, doc, toks, dims, acc, doc_length, dim, stride_gn, stride_gl)


@triton.jit
def _nway_fwd_kernel(
    q_ptr,
    d_ptr,
    m_ptr,
    row_src_ptr,
    starts_ptr,
    counts_ptr,
    out_ptr,
    idx_ptr,
    k,
    doc_length,
    dim,
    rows_alloc,
    n_groups,
    stride_q,
    stride_dn,
    stride_dl,
    stride_mn,
    OP: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
    DOCS: tl.constexpr,
):
    pid = tl.program_id(0)
    query = pid // n_groups
    group = pid % n_groups
    start = tl.load(starts_ptr + query)
    stop = start + tl.load(counts_ptr + query)
    dims = tl.arange(0, BLOCK_DIM)
    cols = tl.arange(0, DOCS)
    total = tl.zeros((DOCS,), tl.float32)
    for r0 in range(start, stop, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        rvalid = rows < stop
        src = tl.load(row_src_ptr + rows, mask=rvalid, other=0)
        q = tl.load(
            q_ptr + src.to(tl.int64)[:, None] * stride_q + dims[None, :],
            mask=rvalid[:, None] & (dims[None, :] < dim),
            other=0.0,
        )
        q = _operand(q, OP, MODE)
        for j in range(DOCS):
            cand = group * DOCS + j
            if cand < k:
                doc = _i64(query) * k + cand
                best, arg = _best_over_document(
                    q,
                    d_ptr + doc * stride_dn,
                    m_ptr + doc * stride_mn,
                    doc_length,
                    stride_dl,
                    dims,
                    dim,
                    OP,
                    MODE,
                    BLOCK_ROWS,
                    BLOCK_TOKENS,
                )
                best = tl.where(best == float("-inf"), -3.4028234663852886e38, best)
                part = tl.sum(tl.where(rvalid, best, 0.0), axis=0)
                total = tl.where(cols == j, total + part, total)
                tl.store(
                    idx_ptr + _i64(cand) * rows_alloc + rows, arg.to(idx_ptr.dtype.element_ty), mask=rvalid
                )
    cands = group * DOCS + cols
    tl.store(out_ptr + _i64(query) * k + cands, total, mask=cands < k)


@triton.jit
def _nway_dq_kernel(
    d_ptr,
    starts_ptr,
    counts_ptr,
    idx_ptr,
    g_ptr,
    gq_ptr,
    k,
    dim,
    rows_alloc,
    stride_dn,
    stride_dl,
    OP: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    query = tl.program_id(0)
    start = tl.load(starts_ptr + query)
    stop = start + tl.load(counts_ptr + query)
    dims = tl.arange(0, BLOCK_DIM)
    for r0 in range(start, stop, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        rvalid = rows < stop
        dmask = rvalid[:, None] & (dims[None, :] < dim)
        acc = tl.zeros((BLOCK_ROWS, BLOCK_DIM), tl.float32)
        for cand in range(0, k):
            doc = _i64(query) * k + cand
            tok = tl.load(idx_ptr + _i64(cand) * rows_alloc + rows, mask=rvalid, other=0).to(tl.int64)
            g = tl.load(g_ptr + doc)
            d = tl.load(
                d_ptr + doc * stride_dn + tok[:, None] * stride_dl + dims[None, :], mask=dmask, other=0.0
            )
            acc += g * d.to(OP).to(tl.float32)
        tl.store(gq_ptr + rows[:, None] * BLOCK_DIM + dims[None, :], acc, mask=rvalid[:, None])


@triton.jit
def _nway_dd_kernel(
    q_ptr,
    row_src_ptr,
    starts_ptr,
    counts_ptr,
    idx_ptr,
    g_ptr,
    gd_ptr,
    k,
    doc_length,
    dim,
    rows_alloc,
    n_token_blocks,
    stride_q,
    stride_gn,
    stride_gl,
    OP: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK_ROWS: tl.constexpr,
    BLOCK_TOKENS: tl.constexpr,
    BLOCK_DIM: tl.constexpr,
):
    pid = tl.program_id(0)
    doc = _i64(pid // n_token_blocks)
    toks = (pid % n_token_blocks) * BLOCK_TOKENS + tl.arange(0, BLOCK_TOKENS)
    query = doc // k
    cand = doc % k
    start = tl.load(starts_ptr + query)
    stop = start + tl.load(counts_ptr + query)
    g = tl.load(g_ptr + doc)
    dims = tl.arange(0, BLOCK_DIM)
    acc = tl.zeros((BLOCK_TOKENS, BLOCK_DIM), tl.float32)
    for r0 in range(start, stop, BLOCK_ROWS):
        rows = r0 + tl.arange(0, BLOCK_ROWS)
        rvalid = rows < stop
        tok_idx, q = _selected_queries(
            q_ptr, row_src_ptr, idx_ptr + cand * rows_alloc, rows, rvalid, dims, dim, stride_q, OP
        )
        acc = _accumulate_selected(acc, toks, tok_idx, g * q, MODE)
    _store_token_block(gd_ptr, doc, toks, dims, acc, doc_length, dim, stride_gn, stride_gl)


# ---------------------------------------------------------------------------- host side


class _Rows:
    """The scored query positions ("rows") of a (Nq, Lq, D) query tensor, numbered on the device.

    ``src[r]``: flat position (query * Lq + position) of row r; ``query[r]``: its query;
    ``n_rows``: the row count (a 1-element device tensor); ``starts`` / ``counts``: each query's
    first row and row count; ``scored``: which positions the chunked backend scores
    (``queries_mask``); ``nonzero``: which of them are rows. Entries of ``src`` / ``query`` past
    ``n_rows`` are unspecified (kernels mask them).

    ``alloc``: the rows the buffers hold (``alloc`` from the caller, a host-known bound, else every
    position). Rows past it are dropped (``n_rows``, ``starts`` and ``counts`` clamped, so no kernel
    writes past a buffer) and ``overflow`` (a device flag) is set: the forward then returns NaN
    scores, never silently wrong ones."""

    def __init__(
        self, queries: torch.Tensor, queries_mask: torch.Tensor | None, alloc: int | None = None
    ) -> None:
        nq, lq, _ = queries.shape
        device = queries.device
        self.scored = (
            torch.ones((nq, lq), dtype=torch.bool, device=device)
            if queries_mask is None
            else queries_mask.bool()
        )
        self.nonzero = (queries != 0).any(dim=-1) & self.scored
        flat = self.nonzero.reshape(-1)
        total = nq * lq
        self.total = total
        self.alloc = total if alloc is None else max(0, min(int(alloc), total))
        counts = self.nonzero.sum(dim=1, dtype=torch.int32)
        ends = torch.cumsum(counts, 0, dtype=torch.int32)
        clamped = ends.clamp(max=self.alloc)
        self.starts = (ends - counts).clamp(max=self.alloc)
        self.counts = clamped - self.starts
        zero = torch.zeros(1, dtype=torch.int32, device=device)
        self.n_rows = clamped[-1:] if nq else zero
        self.overflow = (ends[-1:] if nq else zero) > self.alloc
        position = torch.cumsum(flat, 0) - 1
        dest = torch.where(flat & (position < self.alloc), position, torch.full_like(position, self.alloc))
        src = torch.zeros(self.alloc + 1, dtype=torch.int32, device=device)
        src.scatter_(0, dest, torch.arange(total, dtype=torch.int32, device=device))
        self.src = src[: self.alloc]
        self.query = torch.div(self.src, max(lq, 1), rounding_mode="floor")


def _mode(op: str, device_type: str) -> int:
    """``tl.dot`` input mode: 0 operands as loaded (half on tensor cores), 1 fp32 (ieee), 2 TF32."""
    if interpreting() or device_type != "cuda":
        return 1
    if op != "fp32":
        return 0
    return 2 if torch.backends.cuda.matmul.allow_tf32 else 1


@dataclasses.dataclass(frozen=True)
class Tiles:
    """Tile sizes and launch settings of the kernels (powers of two, >= 16 where they meet
    ``tl.dot``).

    ``rows``: query rows per forward program; ``tokens``: document tokens per forward block;
    ``docs``: documents per forward program (``nway_docs``: candidates, fewer, as a query has only
    its own K and the grid must still fill the GPU); ``dq_rows``: rows per dQ program; ``dd_rows`` /
    ``dd_tokens``: the dD program's row tile and its stationary token block; ``warps`` /
    ``stages``: Triton's ``num_warps`` / ``num_stages``.
    """

    rows: int = 128
    tokens: int = 64
    docs: int = 16
    nway_docs: int = 2
    dq_rows: int = 64
    dd_rows: int = 64
    dd_tokens: int = 64
    warps: int = 8
    stages: int = 3


#: small tiles for Triton's interpreter, which runs every block operation in numpy
INTERPRETER_TILES = Tiles(rows=16, tokens=32, docs=4, dq_rows=16, dd_rows=16, dd_tokens=32, warps=4, stages=1)

_TILES: contextvars.ContextVar[Tiles | None] = contextvars.ContextVar("colzero_fused_tiles", default=None)


@contextlib.contextmanager
def use_tiles(tiles: Tiles) -> Iterator[None]:
    """Run the fused kernels with ``tiles`` inside the block (benchmarks sweep them with it)."""
    token = _TILES.set(tiles)
    try:
        yield
    finally:
        _TILES.reset(token)


def _config(device_type: str) -> Tiles:
    """The tiles of this call: :func:`use_tiles`' when set, else the defaults for the device."""
    chosen = _TILES.get()
    if chosen is not None:
        return chosen
    return INTERPRETER_TILES if interpreting() or device_type != "cuda" else Tiles()


def _block_dim(dim: int) -> int:
    return max(16, triton.next_power_of_2(dim))


def _tl_dtype(op: str) -> Any:
    return {"bf16": tl.bfloat16, "fp16": tl.float16, "fp32": tl.float32}[op]


def _operands(queries: torch.Tensor, documents: torch.Tensor, op: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous inputs, rounded to the operand dtype once here when the kernels take half
    operands (so they read 2 bytes per value, not 4). The rounding is the one the kernels would
    apply anyway, so the result is the same; the zero test (rows) then sees the rounded values,
    as the chunked backend does."""
    if _mode(op, queries.device.type) == 0:
        operand = OPERAND_DTYPES[op]
        queries, documents = queries.to(operand), documents.to(operand)
    return queries.contiguous(), documents.contiguous()


def _forward(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    nway: bool,
    op: str,
    rows_alloc: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    queries, documents = _operands(queries, documents, op)
    mask = documents_mask.contiguous().view(torch.uint8)
    nq, lq, dim = queries.shape
    ld = documents.shape[-2]
    rows = _Rows(queries, queries_mask, rows_alloc)
    cfg = _config(queries.device.type)
    mode, opt = _mode(op, queries.device.type), _tl_dtype(op)
    block_dim = _block_dim(dim)
    q2 = queries.view(nq * lq, dim)
    if nway:
        k = documents.shape[1]
        d3 = documents.view(nq * k, ld, dim)
        m2 = mask.view(nq * k, ld)
        out = torch.empty((nq, k), dtype=torch.float32, device=queries.device)
        idx = torch.empty((k, rows.alloc), dtype=index_dtype(ld), device=queries.device)
        docs = min(cfg.nway_docs, triton.next_power_of_2(k))
        n_groups = triton.cdiv(k, docs)
        if nq and k and ld:
            _nway_fwd_kernel[(nq * n_groups,)](
                q2, d3, m2, rows.src, rows.starts, rows.counts, out, idx,
                k, ld, dim, rows.alloc, n_groups,
                q2.stride(0), d3.stride(0), d3.stride(1), m2.stride(0),
                OP=opt, MODE=mode, BLOCK_ROWS=min(cfg.rows, 64), BLOCK_TOKENS=cfg.tokens,
                BLOCK_DIM=block_dim, DOCS=docs,
                num_warps=cfg.warps, num_stages=cfg.stages,
            )  # fmt: skip
        elif nq and k:
            out.fill_(0.0)
        return _nan_on_overflow(out, rows), idx
    nd = documents.shape[0]
    out = torch.zeros((nq, nd), dtype=torch.float32, device=queries.device)
    idx = torch.empty((nd, rows.alloc), dtype=index_dtype(ld), device=queries.device)
    n_row_tiles = triton.cdiv(rows.alloc, cfg.rows)
    n_groups = triton.cdiv(nd, cfg.docs)
    if nq and nd and ld:
        _all_pairs_fwd_kernel[(n_row_tiles * n_groups,)](
            q2, documents, mask, rows.src, rows.query, rows.n_rows, out, idx,
            nd, ld, dim, rows.alloc, n_row_tiles,
            q2.stride(0), documents.stride(0), documents.stride(1), mask.stride(0),
            OP=opt, MODE=mode, BLOCK_ROWS=cfg.rows, BLOCK_TOKENS=cfg.tokens, BLOCK_DIM=block_dim,
            DOCS=cfg.docs, num_warps=cfg.warps, num_stages=cfg.stages,
        )  # fmt: skip
    return _nan_on_overflow(out, rows), idx


def _nan_on_overflow(scores: torch.Tensor, rows: _Rows) -> torch.Tensor:
    """NaN scores where the caller's row bound was too small (a device-side test: no sync)."""
    if rows.alloc == rows.total:
        return scores
    return torch.where(rows.overflow, torch.full_like(scores, float("nan")), scores)


def _first_token_vectors(documents: torch.Tensor, documents_mask: torch.Tensor, op: str) -> torch.Tensor:
    """(..., Ld, D) -> (..., D) fp32: each document's first unmasked token (rounded to the
    operand dtype), where a zero query vector takes its max (the chunked backend's tie rule)."""
    first = documents_mask.to(torch.uint8).argmax(dim=-1, keepdim=True)
    picked = documents.gather(-2, first.unsqueeze(-1).expand(*first.shape, documents.shape[-1]))
    return picked.squeeze(-2).to(OPERAND_DTYPES[op]).float()


def _backward(
    grad: torch.Tensor,
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    idx: torch.Tensor,
    nway: bool,
    op: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.autocast(queries.device.type, enabled=False):  # explicit dtypes throughout
        return _backward_kernels(grad, queries, documents, documents_mask, queries_mask, idx, nway, op)


def _backward_kernels(
    grad: torch.Tensor,
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    idx: torch.Tensor,
    nway: bool,
    op: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    q_dtype, d_dtype = queries.dtype, documents.dtype
    queries, documents = _operands(queries, documents, op)
    nq, lq, dim = queries.shape
    ld = documents.shape[-2]
    rows = _Rows(queries, queries_mask, idx.shape[-1])
    cfg = _config(queries.device.type)
    mode, opt = _mode(op, queries.device.type), _tl_dtype(op)
    block_dim = _block_dim(dim)
    q2 = queries.view(nq * lq, dim)
    device = queries.device
    g = grad.float() * documents_mask.any(dim=-1)  # fully masked documents pass no gradient
    grad_d = torch.zeros(documents.shape, dtype=torch.float32, device=device)
    grad_rows = torch.zeros((rows.alloc, block_dim), dtype=torch.float32, device=device)
    n_tok_blocks = triton.cdiv(ld, cfg.dd_tokens)
    if nway:
        k = documents.shape[1]
        d3 = documents.view(nq * k, ld, dim)
        gd3 = grad_d.view(nq * k, ld, dim)
        g = g.contiguous()
        if nq and k and ld:
            _nway_dq_kernel[(nq,)](
                d3, rows.starts, rows.counts, idx, g, grad_rows,
                k, dim, rows.alloc, d3.stride(0), d3.stride(1),
                OP=opt, BLOCK_ROWS=cfg.dq_rows, BLOCK_DIM=block_dim,
                num_warps=cfg.warps, num_stages=cfg.stages,
            )  # fmt: skip
            _nway_dd_kernel[(nq * k * n_tok_blocks,)](
                q2, rows.src, rows.starts, rows.counts, idx, g, gd3,
                k, ld, dim, rows.alloc, n_tok_blocks, q2.stride(0), gd3.stride(0), gd3.stride(1),
                OP=opt, MODE=mode, BLOCK_ROWS=cfg.dd_rows, BLOCK_TOKENS=cfg.dd_tokens,
                BLOCK_DIM=block_dim, num_warps=cfg.warps, num_stages=cfg.stages,
            )  # fmt: skip
        zero_grad = torch.einsum("bk,bkd->bd", g, _first_token_vectors(documents, documents_mask, op))
    else:
        nd = documents.shape[0]
        gt = g.t().contiguous()  # (Nd, Nq): a document's weights are contiguous
        n_row_tiles = triton.cdiv(rows.alloc, cfg.dq_rows)
        n_groups = max(1, min(triton.cdiv(nd, 64), _DQ_PARTIAL_BYTES // max(1, grad_rows.numel() * 4)))
        docs_per_group = triton.cdiv(nd, n_groups) if nd else 1
        parts = torch.zeros((n_groups, rows.alloc, block_dim), dtype=torch.float32, device=device)
        if nq and nd and ld:
            _all_pairs_dq_kernel[(n_row_tiles * n_groups,)](
                documents, rows.query, rows.n_rows, idx, gt, parts,
                nd, nq, dim, rows.alloc, n_row_tiles, docs_per_group,
                documents.stride(0), documents.stride(1),
                OP=opt, BLOCK_ROWS=cfg.dq_rows, BLOCK_DIM=block_dim,
                num_warps=cfg.warps, num_stages=cfg.stages,
            )  # fmt: skip
            _all_pairs_dd_kernel[(nd * n_tok_blocks,)](
                q2, rows.src, rows.query, rows.n_rows, idx, gt, grad_d,
                nq, ld, dim, rows.alloc, n_tok_blocks, q2.stride(0), grad_d.stride(0), grad_d.stride(1),
                OP=opt, MODE=mode, BLOCK_ROWS=cfg.dd_rows, BLOCK_TOKENS=cfg.dd_tokens, BLOCK_DIM=block_dim,
                num_warps=cfg.warps, num_stages=cfg.stages,
            )  # fmt: skip
        grad_rows = parts.sum(dim=0)
        zero_grad = g @ _first_token_vectors(documents, documents_mask, op)
    # rows -> positions; zero vectors that are scored take the closed-form gradient
    grad_q = torch.zeros((rows.total + 1, dim), dtype=torch.float32, device=device)
    row_valid = torch.arange(rows.alloc, device=device) < rows.n_rows
    dest = torch.where(row_valid, rows.src.long(), rows.total)
    grad_q.index_copy_(0, dest, grad_rows[:, :dim])  # rows past n_rows all land on the spare last row
    grad_q = grad_q[: rows.total].view(nq, lq, dim)
    zero_scored = (rows.scored & ~rows.nonzero).unsqueeze(-1)
    grad_q = torch.where(zero_scored, zero_grad.unsqueeze(1), grad_q)
    return grad_q.to(q_dtype), grad_d.to(d_dtype)


# ---------------------------------------------------------------------------- custom ops


@torch.library.custom_op("colzero::fused_maxsim", mutates_args=())
def fused_maxsim(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    nway: bool,
    operand: str,
    rows_alloc: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (fp32) and argmax indices of MaxSim, all pairs ``(Nq, Nd)`` or n-way ``(B, K)``;
    indices kept for ``rows_alloc`` query rows (``Nq * Lq``: every position)."""
    return _forward(queries, documents, documents_mask, queries_mask, nway, operand, rows_alloc)


@fused_maxsim.register_fake
def _fused_maxsim_fake(
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    nway: bool,
    operand: str,
    rows_alloc: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    nq, lq, _ = queries.shape
    ld = documents.shape[-2]
    n = documents.shape[1] if nway else documents.shape[0]
    scores = queries.new_empty((nq, n), dtype=torch.float32)
    return scores, queries.new_empty((n, max(0, min(rows_alloc, nq * lq))), dtype=index_dtype(ld))


@torch.library.custom_op("colzero::fused_maxsim_backward", mutates_args=())
def fused_maxsim_backward(
    grad: torch.Tensor,
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    idx: torch.Tensor,
    nway: bool,
    operand: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of :func:`fused_maxsim`'s scores w.r.t. queries and documents."""
    return _backward(grad, queries, documents, documents_mask, queries_mask, idx, nway, operand)


@fused_maxsim_backward.register_fake
def _fused_maxsim_backward_fake(
    grad: torch.Tensor,
    queries: torch.Tensor,
    documents: torch.Tensor,
    documents_mask: torch.Tensor,
    queries_mask: torch.Tensor | None,
    idx: torch.Tensor,
    nway: bool,
    operand: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(queries), torch.empty_like(documents)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, torch.Tensor]) -> None:
    queries, documents, documents_mask, queries_mask, nway, operand, _rows_alloc = inputs
    ctx.save_for_backward(queries, documents, documents_mask, queries_mask, output[1])
    ctx.nway, ctx.operand = nway, operand
    ctx.mark_non_differentiable(output[1])


def _fused_backward(ctx: Any, grad_scores: torch.Tensor, _grad_idx: Any) -> tuple[Any, ...]:
    queries, documents, documents_mask, queries_mask, idx = ctx.saved_tensors
    grad_q, grad_d = fused_maxsim_backward(
        grad_scores, queries, documents, documents_mask, queries_mask, idx, ctx.nway, ctx.operand
    )
    need_q, need_d = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    return (grad_q if need_q else None, grad_d if need_d else None, None, None, None, None, None)


fused_maxsim.register_autograd(_fused_backward, setup_context=_setup_context)
