"""The fused MaxSim backend (Triton; here under Triton's CPU interpreter) against float64 autograd.

Covers both shapes (all pairs, n-way), ragged query masks, zero query vectors (query expansion under
``flash_attention_compat``), masked and fully masked documents, ties (identical document tokens,
inside one token block and across blocks), document lengths 1, 187, 300 and 519 (one- and
two-byte argmax indices), fp32 and fp16 inputs, the bytes kept for backward, torch.compile, and
equality with the chunked backend through the losses.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "the fused backend needs CUDA or TRITON_INTERPRET=1 (conftest sets it)", allow_module_level=True
    )

from test_maxsim_backward import saved_bytes

from colzero.scoring.fused import Tiles, use_tiles
from colzero.scoring.maxsim import maxsim_all_pairs, maxsim_nway, maxsim_pairwise

DIM = 16


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, DIM, generator=gen, dtype=torch.float64), dim=-1)


def _case(nq: int, lq: int, nd: int, ld: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Queries with ragged masks and zero vectors; documents with ragged / full masks and ties."""
    gen = torch.Generator().manual_seed(seed)
    q = _unit(nq, lq, gen=gen)
    qm = torch.arange(lq)[None] < torch.randint(1, lq + 1, (nq,), generator=gen)[:, None]
    q[0, lq // 2 :] = 0.0  # expansion positions under compat: zero vectors, still scored
    if nq > 1:
        q[1, -1] = 0.0
        qm[1, -1] = False  # a masked zero position
    d = _unit(nd, ld, gen=gen)
    dm = torch.arange(ld)[None] < torch.randint(1, ld + 1, (nd,), generator=gen)[:, None]
    dm &= torch.rand(nd, ld, generator=gen) > 0.2
    dm[:, 0] |= True
    if nd > 2:
        dm[1] = False  # fully masked document
    if ld > 1:
        # ties: a document token repeated later (same block, and one block of 32 further)
        for b in range(nd):
            d[b, ld - 1] = d[b, 0]
            dm[b, ld - 1] = dm[b, 0]
        if ld > 40:
            d[:, 37] = d[:, 3]
            dm[:, 37] = dm[:, 3]
    return q, qm, d, dm


def _rounded(q, qm, d, dm, dtype):
    """The case with its vectors rounded to ``dtype`` (the reference then sees the same values)."""
    return q.to(dtype).double(), qm, d.to(dtype).double(), dm


def _reference(q: torch.Tensor, qm: torch.Tensor, d: torch.Tensor, dm: torch.Tensor) -> torch.Tensor:
    """(..., Lq, D) x (..., Ld, D) float64 autograd MaxSim with torch.max's first-index rule."""
    sim = torch.einsum("...id,...jd->...ij", q, d)
    sim = sim.masked_fill(~dm.unsqueeze(-2), float("-inf"))
    best = sim.max(dim=-1).values
    return torch.where(qm, best, torch.zeros_like(best)).sum(dim=-1)


def _weights(shape: torch.Size) -> torch.Tensor:
    return torch.sin(torch.arange(shape.numel(), dtype=torch.float64).view(shape) * 1.3) + 0.1


def _run(fn, q, d, has_token):
    """Scores and the gradients of sum(w * score) over documents that have a token."""
    q = q.detach().requires_grad_()
    d = d.detach().requires_grad_()
    scores = fn(q, d)
    w = _weights(scores.shape).to(scores.dtype)
    kept = torch.where(has_token, scores, torch.zeros_like(scores))
    (kept * w).sum().backward()
    return scores.detach(), q.grad, d.grad


def _check(got, want, has_token, dtype):
    scores, gq, gd = got
    rscores, rq, rd = want
    assert scores.dtype == torch.float32
    torch.testing.assert_close(scores[has_token].double(), rscores[has_token], rtol=0, atol=1e-5)
    assert torch.all(scores[~has_token] <= torch.finfo(torch.float32).min)  # never wins
    if dtype == torch.float32:
        torch.testing.assert_close(gq.double(), rq, rtol=0, atol=1e-5)
        torch.testing.assert_close(gd.double(), rd, rtol=0, atol=1e-5)
    else:  # gradients come back in the input dtype: the float64 ones rounded, within one unit
        assert gq.dtype == gd.dtype == dtype
        torch.testing.assert_close(gq.double(), rq.to(dtype).double(), rtol=2**-10, atol=1e-5)
        torch.testing.assert_close(gd.double(), rd.to(dtype).double(), rtol=2**-10, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ld", [1, 187, 300, 519])
def test_all_pairs_equals_float64_reference(ld, dtype):
    q, qm, d, dm = _rounded(*_case(3, 7, 4, ld, seed=ld), dtype)
    has_token = dm.any(dim=-1)[None].expand(3, 4)
    want = _run(lambda a, b: _reference(a[:, None], qm[:, None], b[None], dm[None]), q, d, has_token)
    got = _run(
        lambda a, b: maxsim_all_pairs(a, b, dm, qm, backend="fused"), q.to(dtype), d.to(dtype), has_token
    )
    _check(got, want, has_token, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("ld", [1, 187, 300, 519])
def test_nway_equals_float64_reference(ld, dtype):
    q, qm, d, dm = _rounded(*_case(3, 7, 6, ld, seed=100 + ld), dtype)
    d, dm = d.view(3, 2, ld, DIM), dm.view(3, 2, ld)
    has_token = dm.any(dim=-1)
    want = _run(lambda a, b: _reference(a[:, None], qm[:, None], b, dm), q, d, has_token)
    got = _run(lambda a, b: maxsim_nway(a, b, dm, qm, backend="fused"), q.to(dtype), d.to(dtype), has_token)
    _check(got, want, has_token, dtype)


@pytest.mark.parametrize(
    "tiles",
    [None, Tiles(rows=32, tokens=16, docs=2, dq_rows=16, dd_rows=32, dd_tokens=16, warps=4, stages=1)],
    ids=["interpreter-tiles", "other-tiles"],
)
def test_pairwise_and_many_row_tiles_equal_the_chunked_backend(tiles):
    """More rows than one tile (queries straddle tiles), several document groups, no query mask,
    and other tile sizes (queries then straddle other boundaries)."""
    q, _, d, dm = _case(9, 11, 7, 23, seed=5)
    q, d = q.float(), d.float()
    has_token = dm.any(dim=-1)[None].expand(9, 7)
    chunked = _run(lambda a, b: maxsim_all_pairs(a, b, dm, backend="chunked"), q, d, has_token)
    with contextlib.nullcontext() if tiles is None else use_tiles(tiles):
        fused = _run(lambda a, b: maxsim_all_pairs(a, b, dm, backend="fused"), q, d, has_token)
    for got, want in zip(fused, chunked, strict=True):
        torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)], rtol=0, atol=1e-5)
    pair = maxsim_pairwise(q[:7], d, dm, backend="fused")
    torch.testing.assert_close(pair, maxsim_pairwise(q[:7], d, dm, backend="chunked"), rtol=0, atol=1e-5)


def test_zero_positions_are_skipped_without_changing_scores_or_gradients():
    """Zeroing a query's expansion positions (as compat does) gives the chunked backend's scores
    and gradients, and dropping those positions entirely gives the same scores."""
    q, qm, d, dm = _case(4, 9, 5, 30, seed=9)
    q, d = q.float(), d.float()
    q[:, 5:] = 0.0
    has_token = dm.any(dim=-1)[None].expand(4, 5)
    chunked = _run(lambda a, b: maxsim_all_pairs(a, b, dm, qm, backend="chunked"), q, d, has_token)
    fused = _run(lambda a, b: maxsim_all_pairs(a, b, dm, qm, backend="fused"), q, d, has_token)
    for got, want in zip(fused, chunked, strict=True):
        torch.testing.assert_close(got[torch.isfinite(got)], want[torch.isfinite(want)], rtol=0, atol=1e-6)
    # the zero positions' gradient is each document's first unmasked token, weighted
    assert fused[1][:, 5:].abs().sum() > 0
    short = maxsim_all_pairs(q[:, :5], d, dm, qm[:, :5], backend="fused")
    torch.testing.assert_close(short[has_token], fused[0][has_token], rtol=0, atol=1e-6)


@pytest.mark.parametrize(("ld", "index_bytes"), [(187, 1), (300, 2)])
def test_bytes_kept_for_backward(ld, index_bytes):
    """The inputs plus one index per (scored query position, document): one byte up to 256 tokens."""
    q, qm, d, dm = _case(3, 5, 4, ld, seed=2)
    q, d = q.float().requires_grad_(), d.float().requires_grad_()
    extra = saved_bytes(lambda *a: maxsim_all_pairs(*a, backend="fused"), q, d, dm, qm)
    assert extra == 3 * 5 * 4 * index_bytes
    dn, dmn = d.detach()[:4].view(2, 2, ld, DIM).requires_grad_(), dm.view(2, 2, ld)
    extra = saved_bytes(lambda *a: maxsim_nway(*a, backend="fused"), q[:2], dn, dmn, qm[:2])
    assert extra == 2 * 5 * 2 * index_bytes


def test_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    q, qm, d, dm = _case(3, 5, 4, 20, seed=4)
    q, d = q.float().requires_grad_(), d.float().requires_grad_()

    def loss(q_, d_):
        scores = maxsim_all_pairs(q_, d_, dm, qm, backend="fused")
        return torch.where(dm.any(-1)[None], scores, 0).logsumexp(dim=1).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(q, d)
    gq, gd = torch.autograd.grad(got, (q, d))
    want = loss(q, d)
    wq, wd = torch.autograd.grad(want, (q, d))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(gq, wq)
    torch.testing.assert_close(gd, wd)


def test_auto_is_chunked_on_cpu_and_fused_refuses_float64():
    q, qm, d, dm = _case(2, 3, 2, 4, seed=1)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        maxsim_all_pairs(q, d, dm, qm, backend="fused")
    with pytest.raises(ValueError, match="backend must be one of"):
        maxsim_all_pairs(q, d, dm, qm, backend="triton")  # type: ignore[arg-type]
    from colzero.scoring.maxsim import resolve_backend

    assert resolve_backend("auto", q.float(), torch.float32) == "chunked"  # CUDA only
