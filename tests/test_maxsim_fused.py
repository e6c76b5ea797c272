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
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")
if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip(
        "the fused backend needs CUDA or TRITON_INTERPRET=1 (conftest sets it)", allow_module_level=True
    )

from conftest import assert_compiled_gradients_match
from test_maxsim_backward import saved_bytes

from colzero.scoring.fused import Tiles, use_tiles
from colzero.scoring.maxsim import maxsim_all_pairs, maxsim_nway, maxsim_pairwise

DIM = 16


def _unit(*shape: int, gen: torch.Generator) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, DIM, generator=gen, dtype=torch.float64), dim=-1)


def _case(nq: int, lq: int, nd: int, ld: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Queries with ragged masks and zero vectors; documents with ragged / full masks and ties; the
    vectors on a grid of 1/64 (about unit length)."""
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
    # on a grid of 1/64 every product and sum is exact in fp32, tf32, fp16 and float64, whatever
    # order a GEMM adds them in: ties stay ties (a CPU BLAS may otherwise round two equal columns
    # differently) and the reference ranks exactly as the kernels do
    return _on_grid(q), qm, _on_grid(d), dm


def _on_grid(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 64) / 64


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


@pytest.mark.parametrize(("ld", "index_bytes"), [(187, 1), (300, 2)])
def test_bytes_kept_for_backward_with_a_row_bound(ld, index_bytes):
    """With ``query_rows`` (a host-known bound, e.g. the attended query tokens under compat), the
    inputs plus one index per (real query token, document): masked and zero positions take none."""
    q, qm, d, dm = _case(3, 5, 4, ld, seed=2)
    q, d = q.float().requires_grad_(), d.float().requires_grad_()
    real = int(((q != 0).any(-1) & qm).sum())
    assert real < 3 * 5
    expected = maxsim_all_pairs(q, d, dm, qm, backend="fused")
    extra = saved_bytes(lambda *a: maxsim_all_pairs(*a, backend="fused", query_rows=real), q, d, dm, qm)
    assert extra == real * 4 * index_bytes
    dn, dmn = d.detach()[:4].view(2, 2, ld, DIM).requires_grad_(), dm.view(2, 2, ld)
    real2 = int(((q[:2] != 0).any(-1) & qm[:2]).sum())
    extra = saved_bytes(lambda *a: maxsim_nway(*a, backend="fused", query_rows=real2), q[:2], dn, dmn, qm[:2])
    assert extra == real2 * 2 * index_bytes
    # the same scores as without the bound
    bounded = maxsim_all_pairs(q, d, dm, qm, backend="fused", query_rows=real)
    torch.testing.assert_close(bounded, expected, rtol=0, atol=0)


def test_row_bound_gives_the_same_gradients_and_nan_when_too_small():
    q, qm, d, dm = _case(4, 6, 5, 20, seed=6)
    q, d = q.float(), d.float()
    real = int(((q != 0).any(-1) & qm).sum())
    has_token = dm.any(dim=-1)[None].expand(4, 5)
    for shape in ("all", "nway"):
        if shape == "all":

            def fn(a, b, rows):
                return maxsim_all_pairs(a, b, dm, qm, backend="fused", query_rows=rows)

            mask = has_token
        else:
            dmn = dm[:4].unsqueeze(1)  # one candidate per query

            def fn(a, b, rows, dmn=dmn):
                return maxsim_nway(a, b.view(4, 1, 20, DIM), dmn, qm, backend="fused", query_rows=rows)

            mask = dmn.any(-1)
        docs = d if shape == "all" else d[:4]
        free = _run(lambda a, b: fn(a, b, None), q, docs, mask)
        for rows in (real, real + 3, 10**6):
            bounded = _run(lambda a, b, rows=rows: fn(a, b, rows), q, docs, mask)
            for got, want in zip(bounded, free, strict=True):
                torch.testing.assert_close(got, want, rtol=0, atol=0)
        too_small = fn(q, docs, real - 1)
        assert torch.isnan(too_small).all()  # never silently wrong


def test_losses_bound_the_rows_by_the_attended_query_tokens(monkeypatch):
    """Under ``flash_attention_compat`` a loss passes the attended query tokens, counted on the host
    when the batch was tokenised, as the fused MaxSim's row bound; without compat every position."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_colbert
    from test_losses_helpers import contrastive_batch, contrastive_texts

    from colzero.losses import CachedContrastive, Contrastive
    from colzero.scoring import maxsim

    seen: list[int | None] = []
    real_score = maxsim._score

    def spy(*args, **kwargs):
        seen.append(args[8] if len(args) > 8 else kwargs.get("query_rows"))
        return real_score(*args, **kwargs)

    monkeypatch.setattr(maxsim, "_score", spy)
    for compat in (True, False):
        model = make_colbert("bert", flash_attention_compat=compat)
        batch = contrastive_batch(model, *contrastive_texts(4, 1), 1)
        attended = int(batch.queries.attention_mask.sum())
        for loss_fn in (
            Contrastive(model, maxsim_backend="fused"),
            CachedContrastive(model, 2, maxsim_backend="fused"),
        ):
            seen.clear()
            loss = loss_fn(batch)
            loss.backward()
            assert torch.isfinite(loss)
            assert seen and all(rows == (attended if compat else None) for rows in seen), (compat, seen)
        assert attended < batch.queries.input_ids.numel()


def test_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    q, qm, d, dm = _case(3, 5, 4, 20, seed=4)
    q, d = q.float().requires_grad_(), d.float().requires_grad_()

    def loss(q_, d_):
        scores = maxsim_all_pairs(q_, d_, dm, qm, backend="fused")
        return torch.where(dm.any(-1)[None], scores, 0).logsumexp(dim=1).sum()

    assert_compiled_gradients_match(loss, q, d)


def test_auto_is_chunked_on_cpu_and_fused_refuses_float64():
    q, qm, d, dm = _case(2, 3, 2, 4, seed=1)
    with pytest.raises(ValueError, match="float32, float16 or bfloat16"):
        maxsim_all_pairs(q, d, dm, qm, backend="fused")
    with pytest.raises(ValueError, match="backend must be one of"):
        maxsim_all_pairs(q, d, dm, qm, backend="triton")  # type: ignore[arg-type]
    from colzero.scoring.maxsim import resolve_backend

    assert resolve_backend("auto", q.float(), torch.float32) == "chunked"  # CUDA only
