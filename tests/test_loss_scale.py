"""``loss_scale``: each mode's parameter gradients against a float64 reference of its formula.

The reference simulates the released ColBERT-Zero code (PyLate's losses at the release commit,
SPEC section 3) rank by rank, in float64, on the same tiny model: rank r scores its own queries
against every rank's documents (positives of all ranks, then negatives of all ranks) and computes

- plain ``Contrastive``:        loss_r = W * mean_{i in r} CE_i
- ``CachedContrastive``:        loss_r = W * sum_{i in r} CE_i   (GradCache backs this up)
- colzero ``"mean"`` (either):  loss_r = mean_{i in r} CE_i

and the parameter gradient is DDP's average over ranks of the gradient of loss_r through every
rank's embeddings (the all-gather's backward sums over ranks): ``grad (1/W) sum_r loss_r``.
colzero runs as one process (W = 1) and as two gloo processes with DistributedDataParallel
(W = 2), each rank tokenising only its own rows.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

B, N_NEG, TAU = 6, 1, 0.05
CASES = [(loss, scale) for loss in ("contrastive", "cached") for scale in ("mean", "pylate")]


@pytest.fixture(autouse=True)
def _one_thread():
    from test_losses_helpers import one_thread

    yield from one_thread()


def _model():
    from conftest import make_colbert

    torch.manual_seed(0)
    model = make_colbert("bert")
    model.backbone.pooler = None  # unused by the losses; DDP needs every parameter used
    return model.eval()


def _texts():
    from test_losses_helpers import contrastive_texts

    return contrastive_texts(B, N_NEG, seed=40)


def _batch(model, rows: list[int]):
    from test_losses_helpers import contrastive_batch

    q, p, n = _texts()
    negs = [x for i in rows for x in n[i * N_NEG : (i + 1) * N_NEG]]
    return contrastive_batch(model, [q[i] for i in rows], [p[i] for i in rows], negs, N_NEG)


def _loss(name: str, model, scale: str):
    from colzero.losses import CachedContrastive, Contrastive

    if name == "cached":
        return CachedContrastive(model, mini_batch_size=2, temperature=TAU, loss_scale=scale)
    return Contrastive(model, temperature=TAU, loss_scale=scale)


def colzero_grads(name: str, scale: str, rows: list[int], world: int) -> dict[str, torch.Tensor]:
    """One backward of colzero's loss on this rank's ``rows`` (DDP-wrapped when world > 1)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = _model()
    wrapped = DDP(model) if world > 1 else model
    loss = _loss(name, wrapped, scale)(_batch(model, rows))
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


# ---------------------------------------------------------------------- float64 reference
def _maxsim(q: torch.Tensor, q_mask: torch.Tensor, d: torch.Tensor, d_mask: torch.Tensor) -> torch.Tensor:
    """(Bq, Bd) sum_i max_j <q_i, d_j> over scoring positions, written out in full."""
    sim = torch.einsum("aid,bjd->abij", q, d)
    sim = sim.masked_fill(~d_mask[None, :, None, :], float("-inf"))
    return (sim.amax(dim=-1) * q_mask[:, None, :]).sum(-1)


def _pad_cat(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(v.shape[1] for v, _ in parts)
    vecs = torch.cat([F.pad(v, (0, 0, 0, width - v.shape[1])) for v, _ in parts])
    masks = torch.cat([F.pad(m, (0, width - m.shape[1])) for _, m in parts])
    return vecs, masks


def reference_grads(name: str, scale: str, world: int) -> dict[str, torch.Tensor]:
    """float64 gradient of (1/W) sum_r loss_r (module docstring), ranks holding equal slices."""
    model = copy.deepcopy(_model()).double()
    local = B // world
    slices = [list(range(r * local, (r + 1) * local)) for r in range(world)]
    emb = []
    for rows in slices:
        batch = _batch(model, rows)
        emb.append(
            [model.embed(batch.queries, "query")]
            + [model.embed(batch.positives, "document"), model.embed(batch.negatives, "document")]
        )
    pos = _pad_cat([e[1] for e in emb])
    neg = _pad_cat([e[2] for e in emb])
    total = torch.zeros((), dtype=torch.float64)
    for r in range(world):
        (q, qm), offset = emb[r][0], r * local
        qm = qm.double()
        logits = torch.cat([_maxsim(q, qm, *pos), _maxsim(q, qm, *neg)], dim=1) / TAU
        ce = F.cross_entropy(logits, torch.arange(local) + offset, reduction="none")
        if scale == "mean":
            loss_r = ce.mean()
        elif name == "cached":  # PyLate CachedContrastive: reduction="sum", times world size
            loss_r = ce.sum() * world
        else:  # PyLate Contrastive: the mean, times world size
            loss_r = ce.mean() * world
        total = total + loss_r / world  # DDP averages the ranks' gradients
    total.backward()
    return {k: p.grad for k, p in model.named_parameters() if p.grad is not None}


def assert_matches(got: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> None:
    """Every gradient within float32 error of the reference (an absolute floor relative to the
    largest gradient: some, e.g. attention key biases, are 0 up to rounding)."""
    assert got.keys() == ref.keys() and len(got) > 10
    atol = 1e-6 * max(float(r.abs().max()) for r in ref.values())
    for k in ref:
        torch.testing.assert_close(
            got[k], ref[k].float(), rtol=2e-4, atol=atol, msg=lambda m, k=k: f"{k}: {m}"
        )


# ---------------------------------------------------------------------- tests
@pytest.mark.parametrize(("name", "scale"), CASES)
def test_one_process_matches_reference(name, scale):
    assert_matches(colzero_grads(name, scale, list(range(B)), 1), reference_grads(name, scale, 1))


def test_scales_differ_by_the_documented_factor():
    """At W = 1: cached "pylate" = B x "mean"; plain "pylate" = "mean" (W x mean with W = 1)."""
    rows = list(range(B))
    for name, factor in (("cached", B), ("contrastive", 1)):
        mean = colzero_grads(name, "mean", rows, 1)
        pylate = colzero_grads(name, "pylate", rows, 1)
        assert_matches(pylate, {k: v * factor for k, v in mean.items()})


def test_logged_value_is_the_mean():
    model = _model()
    values = {
        s: float(_loss("cached", model, s)(_batch(model, list(range(B)))).detach())
        for s in ("mean", "pylate")
    }
    assert values["mean"] == pytest.approx(values["pylate"], rel=1e-6)


def test_unknown_scale_is_refused():
    with pytest.raises(ValueError, match="loss_scale"):
        _loss("contrastive", None, "sum")


def _two_rank_job(rank: int, world: int) -> dict:
    rows = list(range(rank * B // world, (rank + 1) * B // world))
    return {f"{n}/{s}": colzero_grads(n, s, rows, world) for n, s in CASES}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    from test_losses_helpers import on_gloo_ranks

    return on_gloo_ranks(_two_rank_job, 2, tmp_path_factory.mktemp("scale"))


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_two_ranks_match_reference(two_ranks, name, scale):
    assert_matches(two_ranks[f"{name}/{scale}"], reference_grads(name, scale, 2))
