"""Scoring embeddings for the losses: one code path for ColBERT and DenseModel outputs.

``model.embed(batch, role)`` returns ``(vectors, mask)``:

- ColBERT: vectors ``(B, L, dim)`` (L2-normalised token vectors) and a bool scoring mask ``(B, L)``;
  the score is MaxSim, ``s(q, d) = sum_i max_j <q_i, d_j>`` over scoring positions
  (:mod:`colzero.scoring.maxsim`, chunked, memory bounded by ``budget_bytes``).
- DenseModel: vectors ``(B, hidden)`` and mask ``None``; the score is the dot product
  ``s(q, d) = <q, d>`` (the cosine when the model normalises).

The rank of the vector tensor decides the score, never the model class, so wrapped models
(DDP, compiled) work the same.

``backend`` picks the MaxSim backend (``"auto"``: fused Triton kernels on CUDA, chunked torch
operations elsewhere) and ``precision`` how the scores are computed under ``torch.autocast``:
``"fp32"`` (the losses' default, as ColBERT-Zero's authors trained: the model's forward under
autocast, the scores in float32 on the vectors rounded as a bf16 forward produces them) or
``"autocast"`` (similarities in the autocast dtype; cheaper on the chunked backend, ~0.25 logit
of noise at tau = 0.02 in bf16). See :mod:`colzero.scoring.maxsim`.
"""

from __future__ import annotations

import contextlib
from typing import cast

import torch

from colzero.model.base import TokenizedBatch
from colzero.model.colbert import ColBERT
from colzero.model.config import Role
from colzero.model.encoder import Encoder
from colzero.scoring.maxsim import (
    DEFAULT_BUDGET_BYTES,
    Backend,
    MaxSimPrecision,
    maxsim_all_pairs,
    maxsim_nway,
    operand_and_compute_dtypes,
)


def computed_query_rows(model: torch.nn.Module, batch: TokenizedBatch) -> int | None:
    """A bound, known on the host, on the query positions of ``batch`` that MaxSim computes (scored,
    nonzero vector): the attended tokens for a ColBERT under ``flash_attention_compat`` (every other
    position is a zero vector), else None (every position may score). The fused MaxSim keeps its
    backward index for that many rows (``query_rows`` of :func:`colzero.scoring.maxsim.maxsim_all_pairs`).
    """
    inner = unwrap(model)
    if batch.attended is None or not isinstance(inner, ColBERT) or not inner.config.flash_attention_compat:
        return None
    return sum(batch.attended)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel / DataParallel wrapper (or the model)."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
        return model.module
    return model


def embed(
    model: torch.nn.Module, batch: TokenizedBatch, role: Role
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``model.embed(batch, role)``, going through ``model.__call__`` when ``model`` is wrapped.

    A DistributedDataParallel wrapper only synchronises gradients of forwards that run through
    its own ``forward``; calling ``ddp.module.embed`` would silently skip the all-reduce. So for
    a wrapped model the vectors come from ``model(**inputs, role=role)`` (ColBERT/DenseModel ``forward``)
    and the scoring mask from the inner model's ``scoring_mask`` (ColBERT only).
    """
    inner = unwrap(model)
    if inner is model:
        return cast("Encoder", model).embed(batch, role)
    vectors = model(**batch.model_inputs(), role=role)
    if vectors.dim() == 2:
        return vectors, None
    return vectors, cast("ColBERT", inner).scoring_mask(batch.input_ids, batch.attention_mask, role)


def loss_precision(device_type: str, precision: MaxSimPrecision) -> contextlib.AbstractContextManager[None]:
    """Where a loss turns scores into its value: autocast off under ``"fp32"``, as it is."""
    if precision == "fp32":
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _check_pair(q_vecs: torch.Tensor, d_vecs: torch.Tensor) -> None:
    if q_vecs.dim() != d_vecs.dim():
        raise ValueError(
            f"query vectors {tuple(q_vecs.shape)} and document vectors {tuple(d_vecs.shape)} "
            "must both be multi-vector (3-d) or both single-vector (2-d)"
        )


def _dot_scores(
    q_vecs: torch.Tensor, d_vecs: torch.Tensor, equation: str, precision: MaxSimPrecision
) -> torch.Tensor:
    """Single-vector scores ``einsum(equation)`` in float32 (``precision`` as MaxSim's)."""
    if precision == "autocast":
        return torch.einsum(equation, q_vecs, d_vecs).float()
    operand, dtype = operand_and_compute_dtypes(q_vecs, d_vecs, precision)
    with torch.autocast(q_vecs.device.type, enabled=False):
        return torch.einsum(equation, q_vecs.to(operand).to(dtype), d_vecs.to(operand).to(dtype)).float()


def score_all_pairs(
    q_vecs: torch.Tensor,
    q_mask: torch.Tensor | None,
    d_vecs: torch.Tensor,
    d_mask: torch.Tensor | None,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    backend: Backend = "auto",
    precision: MaxSimPrecision = "autocast",
    query_rows: int | None = None,
) -> torch.Tensor:
    """Every query against every document -> ``(Nq, Nd)`` float32.

    Multi-vector ``(N, L, dim)`` inputs use MaxSim (``d_mask`` required, ``q_mask`` optional:
    masked query positions add 0); single-vector ``(N, dim)`` inputs use the dot product.
    ``backend`` and ``precision``: module docstring; ``query_rows``: :func:`computed_query_rows`.
    """
    _check_pair(q_vecs, d_vecs)
    if q_vecs.dim() == 2:
        return _dot_scores(q_vecs, d_vecs, "qh,dh->qd", precision)
    if d_mask is None:
        d_mask = torch.ones(d_vecs.shape[:2], dtype=torch.bool, device=d_vecs.device)
    return maxsim_all_pairs(
        q_vecs,
        d_vecs,
        d_mask,
        q_mask,
        budget_bytes=budget_bytes,
        backend=backend,
        precision=precision,
        query_rows=query_rows,
    )


def score_nway(
    q_vecs: torch.Tensor,
    q_mask: torch.Tensor | None,
    d_vecs: torch.Tensor,
    d_mask: torch.Tensor | None,
    n_way: int,
    *,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
    backend: Backend = "auto",
    precision: MaxSimPrecision = "autocast",
    query_rows: int | None = None,
) -> torch.Tensor:
    """Each query against its own ``n_way`` candidates -> ``(B, n_way)`` float32.

    ``d_vecs`` rows are query-major: row ``i * n_way + k`` is candidate k of query i
    (``(B * n_way, L, dim)`` multi-vector or ``(B * n_way, dim)`` single-vector).
    ``backend`` and ``precision``: module docstring; ``query_rows``: :func:`computed_query_rows`.
    """
    _check_pair(q_vecs, d_vecs)
    b = q_vecs.shape[0]
    if d_vecs.shape[0] != b * n_way:
        raise ValueError(f"{d_vecs.shape[0]} candidate rows for {b} queries x {n_way} candidates")
    if q_vecs.dim() == 2:
        return _dot_scores(q_vecs, d_vecs.view(b, n_way, -1), "bh,bkh->bk", precision)
    if d_mask is None:
        d_mask = torch.ones(d_vecs.shape[:2], dtype=torch.bool, device=d_vecs.device)
    docs = d_vecs.view(b, n_way, *d_vecs.shape[1:])
    return maxsim_nway(
        q_vecs,
        docs,
        d_mask.view(b, n_way, -1),
        q_mask,
        budget_bytes=budget_bytes,
        backend=backend,
        precision=precision,
        query_rows=query_rows,
    )
