"""Contrastive and Distillation against float64 hand-written references."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import make_colbert, make_dense
from test_losses_helpers import contrastive_batch, contrastive_texts, distillation_batch, one_thread, texts

from colzero.losses import Contrastive, Distillation, kl_distillation, score_all_pairs, score_nway

_threads = pytest.fixture(autouse=True)(one_thread)

#: both MaxSim backends (the fused one runs under Triton's interpreter without a GPU)
BACKENDS = [
    "chunked",
    pytest.param(
        "fused", marks=pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")
    ),
]


def _maxsim64(q, qm, d, dm) -> float:
    total = 0.0
    for i in range(q.shape[0]):
        if qm is not None and not qm[i]:
            continue
        best = max(float(q[i].double() @ d[j].double()) for j in range(d.shape[0]) if dm[j])
        total += best
    return total


def _vectors(n, length, dim, gen):
    v = F.normalize(torch.randn(n, length, dim, generator=gen), dim=-1)
    lens = torch.randint(1, length + 1, (n,), generator=gen)
    mask = torch.arange(length)[None] < lens[:, None]
    return v, mask


@pytest.mark.parametrize("backend", BACKENDS)
def test_contrastive_matches_float64_reference_colbert(backend):
    gen = torch.Generator().manual_seed(0)
    b, n_neg, tau = 3, 2, 0.07
    q, _ = _vectors(b, 4, 8, gen)
    qm = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    pos, pm = _vectors(b, 5, 8, gen)
    neg, nm = _vectors(b * n_neg, 6, 8, gen)
    loss = Contrastive(torch.nn.Identity(), temperature=tau, maxsim_backend=backend).loss_from_embeddings(
        q, qm, pos, pm, neg, nm
    )
    cands = [(pos[j], pm[j]) for j in range(b)] + [(neg[j], nm[j]) for j in range(b * n_neg)]
    ref = 0.0
    for i in range(b):
        s = [_maxsim64(q[i], qm[i], d, m) / tau for d, m in cands]
        ref += -(s[i] - math.log(sum(math.exp(x) for x in s)))
    assert loss.item() == pytest.approx(ref / b, rel=1e-5)


def test_contrastive_matches_float64_reference_dense():
    gen = torch.Generator().manual_seed(1)
    b, tau = 4, 0.5
    q, pos, neg = (torch.randn(n, 6, generator=gen) for n in (b, b, b))
    loss = Contrastive(torch.nn.Identity(), temperature=tau).loss_from_embeddings(
        q, None, pos, None, neg, None
    )
    docs = torch.cat([pos, neg]).double()
    ref = 0.0
    for i in range(b):
        s = [float(q[i].double() @ d) / tau for d in docs]
        ref += -(s[i] - math.log(sum(math.exp(x) for x in s)))
    assert loss.item() == pytest.approx(ref / b, rel=1e-5)


def _kl64(student, teacher, normalize, ts, tt) -> float:
    total = 0.0
    for s_row, t_row in zip(student.double().tolist(), teacher.double().tolist(), strict=True):
        if normalize:
            lo, hi = min(s_row), max(s_row)
            s_row = [(x - lo) / (hi - lo + 1e-8) for x in s_row]
        zs = [x / ts for x in s_row]
        zt = [x / tt for x in t_row]
        ls = [x - math.log(sum(math.exp(y) for y in zs)) for x in zs]
        lt = [x - math.log(sum(math.exp(y) for y in zt)) for x in zt]
        total += sum(math.exp(a) * (a - b) for a, b in zip(lt, ls, strict=True))
    return total / student.shape[0]


@pytest.mark.parametrize(("normalize", "ts", "tt"), [(True, 1.0, 1.0), (False, 1.0, 1.0), (True, 0.5, 2.0)])
def test_kl_distillation_matches_float64_reference(normalize, ts, tt):
    gen = torch.Generator().manual_seed(2)
    student = torch.randn(5, 7, generator=gen) * 4
    teacher = torch.randn(5, 7, generator=gen) * 3
    got = kl_distillation(student, teacher, normalize, ts, tt)
    assert got.item() == pytest.approx(_kl64(student, teacher, normalize, ts, tt), rel=1e-5, abs=1e-7)


_NEEDS_TRITON = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs triton")


@pytest.mark.parametrize(
    ("kind", "backend"),
    [("colbert", "chunked"), ("dense", "chunked"), pytest.param("colbert", "fused", marks=_NEEDS_TRITON)],
)
def test_distillation_on_model_matches_reference(kind, backend):
    model = make_colbert("bert") if kind == "colbert" else make_dense("bert")
    b, k = 3, 4
    queries, docs = texts(b, 10, 2, 6), texts(b * k, 11, 3, 20)
    teacher = torch.randn(b, k, generator=torch.Generator().manual_seed(3)) * 5
    batch = distillation_batch(model, queries, docs, teacher)
    loss = Distillation(model, maxsim_backend=backend)(batch)
    with torch.no_grad():
        qv, qm = model.embed(batch.queries, "query")
        dv, dm = model.embed(batch.documents, "document")
    student = torch.empty(b, k, dtype=torch.float64)
    for i in range(b):
        for j in range(k):
            d = i * k + j
            if kind == "colbert":
                student[i, j] = _maxsim64(qv[i], qm[i], dv[d], dm[d])
            else:
                student[i, j] = float(qv[i].double() @ dv[d].double())
    assert loss.item() == pytest.approx(_kl64(student, teacher, True, 1.0, 1.0), rel=1e-5, abs=1e-7)
    loss.backward()
    assert model.projection.weight.grad.abs().sum() > 0 if kind == "colbert" else True


@pytest.mark.parametrize("backend", BACKENDS)
def test_contrastive_model_path_and_learnable_temperature(backend):
    model = make_colbert("modernbert")
    q, p, n = contrastive_texts(4, 1)
    batch = contrastive_batch(model, q, p, n, 1)
    fn = Contrastive(model, temperature=0.1, learnable_temperature=True, maxsim_backend=backend)
    assert [name for name, _ in fn.named_parameters()] == ["log_temperature"]
    assert fn.temperature.item() == pytest.approx(0.1)
    loss = fn(batch)
    with torch.no_grad():
        qv, qm = model.embed(batch.queries, "query")
        pv, pm = model.embed(batch.positives, "document")
        nv, nm = model.embed(batch.negatives, "document")
        scores = torch.cat([score_all_pairs(qv, qm, pv, pm), score_all_pairs(qv, qm, nv, nm)], 1)
    assert loss.item() == pytest.approx(F.cross_entropy(scores / 0.1, torch.arange(4)).item(), rel=1e-5)
    loss.backward()
    assert fn.log_temperature.grad is not None and fn.log_temperature.grad.abs() > 0


def test_score_nway_dense_and_colbert_agree_with_all_pairs():
    gen = torch.Generator().manual_seed(4)
    q, qm = _vectors(3, 4, 8, gen)
    d, dm = _vectors(6, 5, 8, gen)
    full = score_all_pairs(q, qm, d, dm)
    nway = score_nway(q, qm, d, dm, 2)
    torch.testing.assert_close(nway, torch.stack([full[i, 2 * i : 2 * i + 2] for i in range(3)]))
    qd, dd = torch.randn(3, 8, generator=gen), torch.randn(6, 8, generator=gen)
    torch.testing.assert_close(
        score_nway(qd, None, dd, None, 2), torch.stack([(dd[2 * i : 2 * i + 2] @ qd[i]) for i in range(3)])
    )
    with pytest.raises(ValueError, match="multi-vector"):
        score_all_pairs(q, qm, dd, None)


@pytest.mark.parametrize("loss_kind", ["contrastive", "distillation"])
def test_fused_equals_chunked_on_a_compat_model(loss_kind):
    """Under flash_attention_compat the query expansion positions are zero vectors, which the fused
    backend skips: the loss and every parameter gradient stay those of the chunked backend."""
    pytest.importorskip("triton")
    from test_losses_helpers import assert_grads_close, grads

    model = make_colbert("bert", flash_attention_compat=True, attend_to_expansion_tokens=False)
    if loss_kind == "contrastive":
        q, p, n = contrastive_texts(4, 1)
        batch = contrastive_batch(model, q, p, n, 1)
        with torch.no_grad():
            qv, _ = model.embed(batch.queries, "query")
        assert (qv.abs().sum(-1) == 0).any()  # expansion positions are zero vectors
        make = lambda backend: Contrastive(model, temperature=0.05, maxsim_backend=backend)  # noqa: E731
    else:
        teacher = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
        batch = distillation_batch(model, texts(3, 10, 2, 6), texts(12, 11, 3, 20), teacher)
        make = lambda backend: Distillation(model, maxsim_backend=backend)  # noqa: E731
    results = {}
    for backend in ("chunked", "fused"):
        model.zero_grad(set_to_none=True)
        loss = make(backend)(batch)
        loss.backward()
        results[backend] = (loss.item(), grads(model))
    assert results["fused"][0] == pytest.approx(results["chunked"][0], rel=1e-6, abs=1e-6)
    assert assert_grads_close(results["fused"][1], results["chunked"][1]) > 5
