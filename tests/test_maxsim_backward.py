"""MaxSim's custom backward: scores and gradients against a float64 per-pair loop, the bytes kept
for backward (bounded by one similarity chunk, whatever the batch), no graph breaks / host syncs."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_compiled_gradients_match

from colzero.scoring.maxsim import maxsim_all_pairs, maxsim_nway, maxsim_pairwise


def pair_reference(q, qm, d, dm, fill: float):
    """One (query, document) pair in float64 by loops -> (score, d score/d q, d score/d d).

    s = sum over unmasked i of max over unmasked j of <q_i, d_j>; the gradient of the max goes to
    the FIRST maximal j (lowest index) on ties. A query position with no unmasked document token
    adds ``fill`` (the dtype minimum) and no gradient.
    """
    lq, ld = q.shape[0], d.shape[0]
    q64, d64 = q.double(), d.double()
    score = 0.0
    gq = torch.zeros(q.shape, dtype=torch.float64)
    gd = torch.zeros(d.shape, dtype=torch.float64)
    for i in range(lq):
        if qm is not None and not bool(qm[i]):
            continue
        best, best_j = None, None
        for j in range(ld):
            if not bool(dm[j]):
                continue
            s = float(sum(q64[i, c] * d64[j, c] for c in range(q.shape[1])))
            if best is None or s > best:  # strict: the first maximal j keeps the gradient
                best, best_j = s, j
        if best_j is None:
            score += fill
            continue
        score += best
        gq[i] += d64[best_j]
        gd[best_j] += q64[i]
    return score, gq, gd


def reference(q, qm, d, dm, grad_out, pairs, fill):
    """Scores and gradients of ``sum(grad_out * scores)`` for the (a, b, out index) pairs."""
    scores = torch.zeros(grad_out.shape, dtype=torch.float64)
    gq = torch.zeros(q.shape, dtype=torch.float64)
    gd = torch.zeros(d.shape, dtype=torch.float64)
    for a, b, out in pairs:
        s, pq, pd = pair_reference(q[a], None if qm is None else qm[a], d[b], dm[b], fill)
        scores[out] = s
        gq[a] += float(grad_out[out]) * pq
        gd[b] += float(grad_out[out]) * pd
    return scores, gq, gd


def integer_inputs(nq, nd, lq, ld, dim, seed, dtype, *, fully_masked_doc=True):
    """Small-integer vectors: every product and sum is exact in bf16/fp32, so ties are real ties
    (many of them) and every dtype must agree with the float64 reference exactly."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-2, 3, (nq, lq, dim), generator=g).to(dtype)
    d = torch.randint(-2, 3, (nd, ld, dim), generator=g).to(dtype)
    d[:, 1] = d[:, 3]  # duplicated tokens: exact ties between j=1 and j=3
    dm = torch.rand(nd, ld, generator=g) > 0.3
    dm[:, 0] = True
    if fully_masked_doc:
        dm[nd // 2] = False
    qm = torch.rand(nq, lq, generator=g) > 0.25
    qm[:, 0] = True
    grad_out = torch.randint(-3, 4, (nq, nd), generator=g).float() / 2
    return q, qm, d, dm, grad_out


def random_inputs(nq, nd, lq, ld, dim, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.nn.functional.normalize(torch.randn(nq, lq, dim, generator=g), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(nd, ld, dim, generator=g), dim=-1)
    dm = torch.rand(nd, ld, generator=g) > 0.4
    dm[:, 0] = True
    qm = torch.rand(nq, lq, generator=g) > 0.3
    qm[:, 0] = True
    grad_out = torch.randn(nq, nd, generator=g)
    return q, qm, d, dm, grad_out


def run(shape, q, qm, d, dm, grad_out, budget):
    """Scores, grad q, grad d (as rows of ``d``) of the library function for ``shape``, the
    upstream gradient used, and the reference pairs (query row, document row, output index)."""
    q = q.clone().requires_grad_()
    nq, nd = q.shape[0], d.shape[0]
    if shape == "all_pairs":
        docs = d.clone().requires_grad_()
        scores = maxsim_all_pairs(q, docs, dm, qm, budget_bytes=budget)
        g = grad_out
        pairs = [(a, b, (a, b)) for a in range(nq) for b in range(nd)]
    elif shape == "nway":
        k = nd // nq
        docs = d[: nq * k].reshape(nq, k, *d.shape[1:]).clone().requires_grad_()
        scores = maxsim_nway(q, docs, dm[: nq * k].reshape(nq, k, -1), qm, budget_bytes=budget)
        g = grad_out[:, :k]
        pairs = [(a, a * k + c, (a, c)) for a in range(nq) for c in range(k)]
    else:
        docs = d[:nq].clone().requires_grad_()
        scores = maxsim_pairwise(q, docs, dm[:nq], qm, budget_bytes=budget)
        g = grad_out[:, 0]
        pairs = [(a, a, (a,)) for a in range(nq)]
    scores.backward(g)
    grad_rows = docs.grad.reshape(-1, *d.shape[1:])
    grad_d = torch.cat([grad_rows, torch.zeros_like(d[grad_rows.shape[0] :])])
    return scores, q.grad, grad_d, g, pairs


SHAPES = ["all_pairs", "nway", "pairwise"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("budget", [4 * 6 * 9 * 2, 2**30])  # tiny chunks, one chunk
def test_exact_on_integer_inputs_with_ties(shape, dtype, budget):
    q, qm, d, dm, grad_out = integer_inputs(4, 12, 6, 9, 8, seed=11, dtype=dtype)
    scores, gq, gd, g, pairs = run(shape, q, qm, d, dm, grad_out, budget)
    fill = torch.finfo(dtype).min
    want, want_gq, want_gd = reference(q, qm, d, dm, g, pairs, fill)
    assert scores.dtype == torch.float32
    assert gq.dtype == dtype and gd.dtype == dtype
    torch.testing.assert_close(scores, want.float(), rtol=0, atol=0)
    torch.testing.assert_close(gq.double(), want_gq, rtol=0, atol=0)
    torch.testing.assert_close(gd.double(), want_gd, rtol=0, atol=0)
    # masked positions get nothing
    assert torch.all(gq[~qm] == 0)
    assert torch.all(gd[~dm] == 0)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("budget", [4 * 6 * 9 * 3, 2**30])
def test_float32_random_matches_float64_reference(shape, budget):
    q, qm, d, dm, grad_out = random_inputs(5, 15, 6, 9, 16, seed=12)
    scores, gq, gd, g, pairs = run(shape, q, qm, d, dm, grad_out, budget)
    want, want_gq, want_gd = reference(q, qm, d, dm, g, pairs, torch.finfo(torch.float32).min)
    torch.testing.assert_close(scores.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gq.double(), want_gq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gd.double(), want_gd, rtol=1e-5, atol=1e-5)


def test_bf16_random_gradients_follow_the_bf16_argmax():
    """bf16 similarities are rounded, so the reference takes the bf16 inputs and picks its argmax
    among bf16-rounded similarities; the gradients are then sums of bf16 input rows."""
    q, qm, d, dm, grad_out = random_inputs(4, 8, 6, 9, 32, seed=13)
    q, d = q.bfloat16(), d.bfloat16()
    scores, gq, gd, g, pairs = run("all_pairs", q, qm, d, dm, grad_out, 2 * 6 * 9 * 5)
    sim = torch.einsum("aid,bjd->aibj", q.double(), d.double()).bfloat16().double()
    sim = sim.masked_fill(~dm.view(1, 1, *dm.shape), float("-inf"))
    index = sim.argmax(-1)  # first maximum, as torch.argmax
    w = g.double().unsqueeze(1) * qm.unsqueeze(-1)  # (a, i, b)
    select = torch.zeros_like(sim).scatter_(-1, index.unsqueeze(-1), w.unsqueeze(-1))
    want_gq = torch.einsum("aibj,bjd->aid", select, d.double())
    want_gd = torch.einsum("aibj,aid->bjd", select, q.double())
    # each gradient row is rounded to bf16 once per chunk (relative 2**-8) before fp32 accumulation
    torch.testing.assert_close(gq.double(), want_gq, rtol=2**-7, atol=2**-7 * float(g.abs().max()))
    torch.testing.assert_close(gd.double(), want_gd, rtol=2**-7, atol=2**-7 * float(g.abs().max()))
    want_scores = (sim.max(-1).values.masked_fill(~qm.unsqueeze(-1), 0)).sum(1)
    torch.testing.assert_close(scores.double(), want_scores, rtol=1e-6, atol=1e-5)


def test_autocast_runs_products_in_bf16_forward_and_backward():
    q, qm, d, dm, grad_out = random_inputs(3, 5, 4, 7, 16, seed=14)
    qa, da = q.clone().requires_grad_(), d.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = maxsim_all_pairs(qa, da, dm, qm)
    auto.backward(grad_out)  # outside autocast, as a trainer does
    qb, db = q.bfloat16().requires_grad_(), d.bfloat16().requires_grad_()
    explicit = maxsim_all_pairs(qb, db, dm, qm)
    explicit.backward(grad_out)
    assert qa.grad.dtype == torch.float32  # gradients come back in the input dtype
    torch.testing.assert_close(auto, explicit, rtol=0, atol=0)
    torch.testing.assert_close(qa.grad, qb.grad.float(), rtol=2**-7, atol=1e-3)
    torch.testing.assert_close(da.grad, db.grad.float(), rtol=2**-7, atol=1e-3)


def test_only_documents_require_grad():
    q, qm, d, dm, grad_out = random_inputs(3, 5, 4, 7, 16, seed=15)
    d = d.clone().requires_grad_()
    maxsim_all_pairs(q, d, dm, qm).backward(grad_out)
    _, _, want_gd = reference(
        q, qm, d.detach(), dm, grad_out, [(a, b, (a, b)) for a in range(3) for b in range(5)], 0.0
    )
    torch.testing.assert_close(d.grad.double(), want_gd, rtol=1e-5, atol=1e-5)


# --- bytes kept for backward ---------------------------------------------------------------


def legacy_all_pairs(q, d, dm, qm, budget_bytes):
    """Plain autograd through ``torch.max(dim)`` per chunk (the previous implementation): its
    backward keeps int64 argmax indices for every (query, position, document)."""
    from colzero.scoring.maxsim import all_pairs_chunks, budget_elements

    nq, lq, dim = q.shape
    nd, ld, _ = d.shape
    qc, dc = all_pairs_chunks(nq, nd, lq, ld, budget_elements(budget_bytes, q.dtype))
    rows = []
    for qs in range(0, nq, qc):
        flat_q = q[qs : qs + qc].reshape(-1, dim)
        cols = []
        for ds in range(0, nd, dc):
            chunk = d[ds : ds + dc]
            sim = (flat_q @ chunk.reshape(-1, dim).T).view(-1, lq, chunk.shape[0], ld)
            sim = sim.masked_fill(~dm[ds : ds + dc].view(1, 1, -1, ld), torch.finfo(sim.dtype).min)
            best = sim.max(dim=-1).values.masked_fill(~qm[qs : qs + qc].unsqueeze(-1), 0)
            cols.append(best.sum(dim=-2, dtype=torch.float32))
        rows.append(torch.cat(cols, dim=1))
    return torch.cat(rows)


def saved_bytes(fn, *inputs) -> int:
    """Bytes of the storages autograd keeps for backward that are not the inputs' own storages."""
    inputs_storage = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
    kept: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in inputs_storage:
            kept[storage.data_ptr()] = storage.nbytes()
        return t  # held by the graph: kept storages are alive together, so pointers are distinct

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    assert out.requires_grad
    return sum(kept.values())


BUDGET = 4 * 8 * 4 * 10 * 6  # fp32 room for 4 x 6 (query, document) pairs of 8 x 10 tokens


def _batch(nq, nd, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(nq, 8, 16, generator=g, requires_grad=True)
    d = torch.randn(nd, 10, 16, generator=g, requires_grad=True)
    dm = torch.rand(nd, 10, generator=g) > 0.3
    qm = torch.rand(nq, 8, generator=g) > 0.2
    return q, d, dm, qm


@pytest.mark.parametrize("shape", SHAPES)
def test_bytes_kept_for_backward_do_not_grow_with_the_batch(shape):
    kept = {}
    for n in (8, 64):
        q, d, dm, qm = _batch(n, 3 * n)
        if shape == "all_pairs":
            fn, args = maxsim_all_pairs, (q, d, dm, qm)
        elif shape == "nway":
            fn, args = maxsim_nway, (q, d.view(n, 3, 10, 16), dm.view(n, 3, 10), qm)
        else:
            fn, args = maxsim_pairwise, (q, d[:n], dm[:n], qm)
        kept[n] = saved_bytes(lambda *a, f=fn: f(*a, budget_bytes=BUDGET), *args)
    assert kept[64] <= BUDGET and kept[64] == kept[8], kept


def test_legacy_autograd_grows_linearly_so_the_accounting_can_fail():
    kept = {}
    for n in (8, 64):
        q, d, dm, qm = _batch(n, n)
        kept[n] = saved_bytes(lambda *a: legacy_all_pairs(*a, budget_bytes=BUDGET), q, d, dm, qm)
        new = saved_bytes(lambda *a: maxsim_all_pairs(*a, budget_bytes=BUDGET), q, d, dm, qm)
        assert new <= BUDGET
    # int64 argmax indices for every (query, position, document): 8 * 64 * 8 * 64 bytes at n=64
    assert kept[64] >= 8 * 64 * 8 * 64 > BUDGET
    assert kept[64] >= 32 * kept[8]  # n^2 pairs


# --- compile / host syncs ------------------------------------------------------------------


def test_all_pairs_compiles_fullgraph_forward_and_backward():
    torch._dynamo.reset()
    q, d, dm, qm = _batch(4, 6, seed=3)

    def loss(q_, d_):
        return maxsim_all_pairs(q_, d_, dm, qm, budget_bytes=BUDGET).logsumexp(dim=1).sum()

    assert_compiled_gradients_match(loss, q, d)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (sync debug mode)")
def test_no_host_syncs_on_cuda():
    q, d, dm, qm = (t.cuda() for t in _batch(16, 32, seed=4))
    q, d = q.detach().requires_grad_(), d.detach().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        scores = maxsim_all_pairs(q, d, dm, qm, budget_bytes=BUDGET)
        nway = maxsim_nway(q, d.view(16, 2, 10, 16), dm.view(16, 2, 10), qm, budget_bytes=BUDGET)
        (scores.sum() + nway.sum()).backward()
    finally:
        torch.cuda.set_sync_debug_mode(0)
