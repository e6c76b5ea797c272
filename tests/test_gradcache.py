"""GradCache (CachedContrastive) equals the non-cached Contrastive: loss and every gradient."""

from __future__ import annotations

import pytest
import torch
from conftest import make_colbert, make_dense
from test_losses_helpers import (
    assert_grads_close,
    contrastive_batch,
    contrastive_texts,
    grads,
    one_thread,
    set_dropout,
)

from colzero.losses import CachedContrastive, Contrastive
from colzero.losses.scores import embed

B, N_NEG = 6, 2

_threads = pytest.fixture(autouse=True)(one_thread)


def _model(kind: str):
    if kind == "dense-bert":
        return make_dense("bert")
    return make_colbert(kind.split("-")[1])


def _run(loss_fn, model, batch, seed: int = 123):
    model.zero_grad(set_to_none=True)
    for p in loss_fn.parameters():
        p.grad = None
    torch.manual_seed(seed)
    loss = loss_fn(batch)
    loss.backward()
    out = grads(model)
    out.update({f"loss.{n}": p.grad.clone() for n, p in loss_fn.named_parameters()})
    return loss.item(), out


@pytest.mark.parametrize("kind", ["colbert-bert", "colbert-modernbert", "dense-bert"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_cached_equals_contrastive_eval(kind, chunk):
    model = _model(kind).eval()
    q, p, n = contrastive_texts(B, N_NEG)
    batch = contrastive_batch(model, q, p, n, N_NEG)
    ref_loss, ref = _run(Contrastive(model, temperature=0.05, learnable_temperature=True), model, batch)
    loss, got = _run(
        CachedContrastive(model, mini_batch_size=chunk, temperature=0.05, learnable_temperature=True),
        model,
        batch,
    )
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    assert ref["loss.log_temperature"] is not None
    assert assert_grads_close(got, ref) > 10


@pytest.mark.parametrize("kind", ["colbert-bert", "colbert-modernbert"])
def test_cached_on_fused_maxsim_equals_contrastive_on_chunked(kind):
    """GradCache on the fused MaxSim backend (Triton's interpreter here) gives the chunked
    backend's non-cached loss and gradients."""
    pytest.importorskip("triton")
    model = _model(kind).eval()
    q, p, n = contrastive_texts(B, N_NEG)
    batch = contrastive_batch(model, q, p, n, N_NEG)
    ref_loss, ref = _run(Contrastive(model, temperature=0.05, maxsim_backend="chunked"), model, batch)
    loss, got = _run(
        CachedContrastive(model, mini_batch_size=4, temperature=0.05, maxsim_backend="fused"), model, batch
    )
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-5)
    # the kernels sum in another order (embedding gradients agree to ~4e-6 relative); through
    # the backbone that becomes up to ~3e-4 on parameters whose gradients cancel to ~0.1
    assert assert_grads_close(got, ref, atol=1e-3, rtol=1e-3) > 10


def _chunked_reference(loss_fn, model, batch, chunk, seed):
    """Non-cached loss whose embeddings are computed chunk by chunk in GradCache's order, with
    gradients kept: same dropout masks as CachedContrastive when its RNG replay works."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = []
    for tb, role in ((batch.queries, "query"), (batch.positives, "document"), (batch.negatives, "document")):
        vs, ms = [], []
        for s in range(0, len(tb), chunk):
            v, m = embed(model, tb.select(slice(s, s + chunk)), role)
            vs.append(v)
            ms.append(m)
        out += [torch.cat(vs), None if ms[0] is None else torch.cat(ms)]
    loss = loss_fn.loss_from_embeddings(*out)
    loss.backward()
    return loss.item(), grads(model)


@pytest.mark.parametrize("kind", ["colbert-bert", "colbert-modernbert", "dense-bert"])
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_cached_equals_contrastive_with_dropout(kind, chunk):
    model = _model(kind)
    set_dropout(model, 0.2)
    model.train()
    q, p, n = contrastive_texts(B, N_NEG, seed=5)
    batch = contrastive_batch(model, q, p, n, N_NEG)
    plain = Contrastive(model, temperature=0.05)
    ref_loss, ref = _chunked_reference(plain, model, batch, chunk, seed=7)
    # dropout really is on: another seed changes the loss (else this test could not fail)
    other_loss, _ = _chunked_reference(plain, model, batch, chunk, seed=8)
    assert abs(other_loss - ref_loss) > 1e-4
    loss, got = _run(CachedContrastive(model, mini_batch_size=chunk, temperature=0.05), model, batch, seed=7)
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    assert_grads_close(got, ref)


def test_cached_without_negatives_and_scaled_backward():
    model = make_colbert("bert").eval()
    q, p, _ = contrastive_texts(5, 0)
    batch = contrastive_batch(model, q, p, [], 0)
    _, ref = _run(Contrastive(model), model, batch)
    model.zero_grad(set_to_none=True)
    loss = CachedContrastive(model, mini_batch_size=2)(batch)
    (loss * 0.25).backward()  # gradient accumulation / loss scaling reaches the recompute
    assert_grads_close(grads(model), {k: None if v is None else v * 0.25 for k, v in ref.items()})


def test_cached_no_grad_returns_loss_and_keeps_rng_sequence():
    model = make_colbert("bert")
    set_dropout(model, 0.2)
    model.train()
    q, p, n = contrastive_texts(4, 1)
    batch = contrastive_batch(model, q, p, n, 1)
    with torch.no_grad():
        value = CachedContrastive(model, mini_batch_size=2)(batch)
    assert value.dim() == 0 and not value.requires_grad
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    loss = CachedContrastive(model, mini_batch_size=2)(batch)
    loss.backward()  # the replay must not disturb the global RNG stream beyond the first pass
    after_forward_state = torch.rand(3)
    assert not torch.equal(before, after_forward_state)  # forward consumed randomness (dropout)


def test_dropout_test_detects_broken_rng_replay(monkeypatch):
    """Control: without the RNG replay the recomputed dropout masks differ and gradients do too."""
    from colzero.losses import cached

    model = make_colbert("bert")
    set_dropout(model, 0.2)
    model.train()
    q, p, n = contrastive_texts(B, N_NEG, seed=5)
    batch = contrastive_batch(model, q, p, n, N_NEG)
    _, ref = _chunked_reference(Contrastive(model, temperature=0.05), model, batch, 3, seed=7)
    monkeypatch.setattr(cached.RandContext, "__enter__", lambda self: None)
    monkeypatch.setattr(cached.RandContext, "__exit__", lambda self, *exc: None)
    _, got = _run(CachedContrastive(model, mini_batch_size=3, temperature=0.05), model, batch, seed=7)
    with pytest.raises(AssertionError):
        assert_grads_close(got, ref)


@pytest.mark.parametrize("keep", [1, 4, 100])
def test_kept_graphs_equal_recomputed_ones_with_dropout(keep, monkeypatch):
    """keep_graphs: the first chunks back-propagate through their first-pass graph instead of being
    re-embedded; same loss and gradients (dropout on, so the RNG order must be intact), fewer
    forwards, and the last chunk is always re-embedded (it carries the DDP synchronisation)."""
    from colzero.losses import cached

    model = make_colbert("modernbert")
    set_dropout(model, 0.2)
    model.train()
    batch = contrastive_batch(model, *contrastive_texts(B, N_NEG, seed=5), N_NEG)
    ref_loss, ref = _chunked_reference(Contrastive(model, temperature=0.05), model, batch, 2, seed=7)
    calls = []
    real_embed = cached.embed
    monkeypatch.setattr(cached, "embed", lambda *a: calls.append(torch.is_grad_enabled()) or real_embed(*a))
    loss_fn = CachedContrastive(model, mini_batch_size=2, temperature=0.05, keep_graphs=keep)
    loss, got = _run(loss_fn, model, batch, seed=7)
    assert loss == pytest.approx(ref_loss, rel=1e-6, abs=1e-6)
    assert_grads_close(got, ref)
    n_chunks = 3 + 3 + 6
    kept = min(keep, n_chunks - 1)
    assert len(calls) == 2 * n_chunks - kept and sum(calls[:n_chunks]) == kept
