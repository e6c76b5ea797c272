"""MaxSim against a float64 loop reference; chunk planner and masking properties."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from colzero.scoring.maxsim import (
    all_pairs_chunks,
    budget_elements,
    maxsim_all_pairs,
    maxsim_nway,
    maxsim_pairwise,
)
from colzero.scoring.topk import maxsim_topk

# bf16 products are rounded to 8 significant bits (relative error <= 2**-8 per similarity), so
# the score may differ by up to 2**-8 * sum_i |max_j s_ij| (plus one more rounding): use 2**-7.
BF16_REL = 2.0**-7


def reference(q, qm, d, dm) -> float:
    """s(q, d) = sum_i max_j <q_i, d_j> over unmasked doc tokens j (masked query rows give 0)."""
    total = 0.0
    for i in range(q.shape[0]):
        if qm is not None and not bool(qm[i]):
            continue
        best = None
        for j in range(d.shape[0]):
            if not bool(dm[j]):
                continue
            s = sum(float(q[i, k]) * float(d[j, k]) for k in range(q.shape[1]))
            best = s if best is None else max(best, s)
        total += best if best is not None else float("-inf")
    return total


def ref_abs(q, qm, d, dm) -> float:
    """sum_i |max_j <q_i, d_j>|: the scale of the bf16 rounding error."""
    sim = q.double() @ d.double().T
    sim = sim.masked_fill(~dm, float("-inf")).max(dim=1).values.abs()
    if qm is not None:
        sim = sim[qm]
    return float(sim.sum())


def make(nq, nd, lq, ld, dim, seed, *, doc_pad=0.5, query_mask=True, negative=False):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(nq, lq, dim, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(nd, ld, dim, generator=g), dim=-1)
    if negative:  # every similarity negative: a masked token that counted as 0 would win
        q = q.abs()
        d = -d.abs()
    dm = torch.rand(nd, ld, generator=g) > doc_pad
    dm[:, 0] = True  # at least one token per document
    qm = None
    if query_mask:
        qm = torch.rand(nq, lq, generator=g) > 0.3
        qm[:, 0] = True
    return q, qm, d, dm


def ref_matrix(q, qm, d, dm):
    return torch.tensor(
        [
            [
                reference(q[a].double(), None if qm is None else qm[a], d[b].double(), dm[b])
                for b in range(len(d))
            ]
            for a in range(len(q))
        ],
        dtype=torch.float64,
    )


def assert_close(got, want, rel=1e-5):
    got = got.double()
    assert got.shape == want.shape
    assert torch.all((got - want).abs() <= rel * want.abs().clamp_min(1.0)), (got, want)


CASES = [
    dict(doc_pad=0.5, query_mask=True, negative=False),
    dict(doc_pad=0.9, query_mask=True, negative=False),  # documents with many masked tokens
    dict(doc_pad=0.6, query_mask=False, negative=True),  # negative similarities
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("budget", [None, 64])  # 64 bytes = 16 fp32 elements: tiny chunks
def test_all_pairs_matches_reference(case, budget):
    q, qm, d, dm = make(5, 7, 6, 9, 8, seed=1, **case)
    want = ref_matrix(q, qm, d, dm)
    kw = {} if budget is None else {"budget_bytes": budget}
    assert_close(maxsim_all_pairs(q, d, dm, qm, **kw), want)


def test_all_pairs_chunks_over_queries_and_documents():
    q, qm, d, dm = make(9, 11, 4, 5, 8, seed=2)
    max_el = budget_elements(4 * 4 * 5 * 6, torch.float32)  # room for 6 pairs out of 99
    qc, dc = all_pairs_chunks(9, 11, 4, 5, max_el)
    assert 1 < qc < 9 or 1 < dc < 11
    assert qc < 9 and dc < 11, (qc, dc)  # both dimensions are really chunked
    got = maxsim_all_pairs(q, d, dm, qm, budget_bytes=4 * 4 * 5 * 6)
    assert_close(got, ref_matrix(q, qm, d, dm))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("budget", [None, 4 * 6 * 9 * 2])  # tiny: one query per chunk
def test_pairwise_and_nway_match_reference(case, budget):
    q, qm, d, dm = make(6, 6 * 3, 6, 9, 8, seed=3, **case)
    kw = {} if budget is None else {"budget_bytes": budget}
    full = ref_matrix(q, qm, d, dm)
    pair = maxsim_pairwise(q, d[:6], dm[:6], qm, **kw)
    assert_close(pair, torch.diagonal(full[:, :6]))
    docs = d.view(6, 3, 9, 8)
    mask = dm.view(6, 3, 9)
    nway = maxsim_nway(q, docs, mask, qm, **kw)
    want = torch.stack([full[i, 3 * i : 3 * i + 3] for i in range(6)])
    assert_close(nway, want)


def test_masked_tokens_do_not_win_with_zero():
    # one document token is a large positive match but masked; all others negative
    q = torch.tensor([[[1.0, 0.0]]])
    d = torch.tensor([[[1.0, 0.0], [-0.5, 0.0], [0.0, 0.0]]])
    dm = torch.tensor([[False, True, False]])
    for fn in (maxsim_all_pairs, maxsim_pairwise):
        assert fn(q, d, dm).item() == pytest.approx(-0.5)


def test_fully_masked_document_never_wins():
    q, qm, d, dm = make(2, 3, 4, 5, 8, seed=4)
    dm[1] = False
    scores = maxsim_all_pairs(q, d, dm, qm)
    assert torch.all(scores[:, 1] < scores[:, 0]) and torch.all(scores[:, 1] < scores[:, 2])


def test_empty_inputs():
    q, qm, d, dm = make(0, 3, 4, 5, 8, seed=5)
    assert maxsim_all_pairs(q, d, dm, qm).shape == (0, 3)


@pytest.mark.parametrize("case", CASES)
def test_bf16_inputs_within_tolerance(case):
    q, qm, d, dm = make(4, 6, 8, 12, 32, seed=6, **case)
    qb, db = q.bfloat16(), d.bfloat16()
    want = ref_matrix(qb.float(), qm, db.float(), dm)  # reference on the same rounded inputs
    got = maxsim_all_pairs(qb, db, dm, qm, budget_bytes=2 * 8 * 12 * 5)
    assert got.dtype == torch.float32
    for a in range(4):
        for b in range(6):
            scale = ref_abs(qb[a].float(), None if qm is None else qm[a], db[b].float(), dm[b])
            assert abs(got[a, b].item() - want[a, b].item()) <= BF16_REL * scale + 1e-6
    nway = maxsim_nway(qb[:2], db.view(2, 3, 12, 32), dm.view(2, 3, 12), None if qm is None else qm[:2])
    want_nway = ref_matrix(qb[:2].float(), None if qm is None else qm[:2], db.float(), dm)
    for i in range(2):
        for k in range(3):
            assert abs(nway[i, k].item() - want_nway[i, 3 * i + k].item()) <= BF16_REL * 8 + 1e-6


@pytest.mark.parametrize("doc_chunk", [4, 100])
def test_topk_matches_reference(doc_chunk):
    q, qm, d, dm = make(3, 13, 4, 6, 8, seed=7, doc_pad=0.7)
    full = ref_matrix(q, qm, d, dm)
    scores, idx = maxsim_topk(q, d, dm, 5, queries_mask=qm, doc_chunk=doc_chunk, budget_bytes=4 * 4 * 6 * 3)
    want = full.topk(5, dim=1)
    assert_close(scores, want.values)
    assert torch.equal(idx, want.indices)  # random data: no ties
    all_scores, all_idx = maxsim_topk(q, d, dm, 50, queries_mask=qm, doc_chunk=doc_chunk)
    assert all_scores.shape == (3, 13)
    assert torch.equal(all_idx.sort(dim=1).values, torch.arange(13).expand(3, -1))


@pytest.mark.parametrize("fn", ["all_pairs", "pairwise", "nway"])
def test_gradcheck_float64(fn):
    g = torch.Generator().manual_seed(8)
    q = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    if fn == "nway":
        d = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
        dm = torch.rand(2, 2, 5, generator=g) > 0.4
        dm[..., 0] = True
        run = lambda q_, d_: maxsim_nway(q_, d_, dm, budget_bytes=8 * 3 * 2 * 5)  # noqa: E731
    else:
        d = torch.randn(2, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
        dm = torch.rand(2, 5, generator=g) > 0.4
        dm[:, 0] = True
        qm = torch.tensor([[True, False, True], [True, True, True]])
        f = maxsim_all_pairs if fn == "all_pairs" else maxsim_pairwise
        run = lambda q_, d_: f(q_, d_, dm, qm, budget_bytes=8 * 3 * 5)  # noqa: E731
    # Outputs are float32 by contract (the sum over query positions is rounded to fp32), so the
    # finite differences use eps=1e-3: MaxSim is piecewise linear, the step is exact unless an
    # argmax flips, and fp32 rounding then costs ~1e-7/1e-3 relative.
    assert torch.autograd.gradcheck(lambda a, b: run(a, b).double(), (q, d), eps=1e-3, atol=1e-3)
    # and the analytic gradient equals the gradient of the explicit float64 formula
    gq, gd = torch.autograd.grad(run(q, d).sum(), (q, d))
    if fn == "nway":
        sim = torch.einsum("bid,bkjd->bikj", q, d).masked_fill(~dm.unsqueeze(1), float("-inf"))
        ref = sim.max(-1).values.sum(1)
    else:
        sim = torch.einsum("aid,bjd->aibj", q, d).masked_fill(~dm.view(1, 1, *dm.shape), float("-inf"))
        ref = (sim.max(-1).values * qm.unsqueeze(-1)).sum(1)
        if fn == "pairwise":
            ref = torch.diagonal(ref)
    rq, rd = torch.autograd.grad(ref.sum(), (q, d))
    assert torch.allclose(gq, rq, atol=1e-6) and torch.allclose(gd, rd, atol=1e-6)


def test_reduction_in_float64_keeps_float32_output():
    q, qm, d, dm = make(2, 2, 3, 4, 8, seed=9)
    assert maxsim_all_pairs(q.double(), d.double(), dm, qm).dtype == torch.float32


@settings(max_examples=200, deadline=None)
@given(
    nq=st.integers(0, 300),
    nd=st.integers(0, 300),
    lq=st.integers(1, 64),
    ld=st.integers(1, 600),
    max_elements=st.integers(1, 10**7),
)
def test_chunk_planner_respects_budget(nq, nd, lq, ld, max_elements):
    qc, dc = all_pairs_chunks(nq, nd, lq, ld, max_elements)
    assert qc >= 1 and dc >= 1
    assert qc <= max(1, nq) and dc <= max(1, nd)
    if lq * ld <= max_elements:  # whenever one pair fits, a chunk fits
        assert qc * dc * lq * ld <= max_elements


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10**6),
    nq=st.integers(1, 4),
    nd=st.integers(1, 5),
    lq=st.integers(1, 5),
    ld=st.integers(1, 7),
    budget=st.sampled_from([4, 64, 1024, 10**9]),
)
def test_masked_positions_do_not_matter(seed, nq, nd, lq, ld, budget):
    """Changing the values at masked doc / query positions never changes any score."""
    q, qm, d, dm = make(nq, nd, lq, ld, 4, seed, doc_pad=0.5)
    base = maxsim_all_pairs(q, d, dm, qm, budget_bytes=budget)
    g = torch.Generator().manual_seed(seed + 1)
    q2 = torch.where(qm.unsqueeze(-1), q, 100 * torch.randn(q.shape, generator=g))
    d2 = torch.where(dm.unsqueeze(-1), d, 100 * torch.randn(d.shape, generator=g))
    assert torch.equal(maxsim_all_pairs(q2, d2, dm, qm, budget_bytes=budget), base)
    assert_close(base, ref_matrix(q, qm, d, dm))
