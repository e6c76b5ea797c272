"""2-process gloo (CPU) runs equal one process on the full batch: loss and DDP-averaged gradients.

Each rank tokenizes only its own half of the batch (so padded lengths differ between ranks and the
gather has to pad to the cross-rank maximum), wraps the model in DistributedDataParallel, runs one
forward/backward, and rank 0 writes the mean loss over ranks and the parameter gradients.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
B, N_NEG, K = 6, 1, 3
WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cases():
    from test_losses_helpers import contrastive_texts, texts

    q, p, n = contrastive_texts(B, N_NEG, seed=20)
    dq, dd = texts(B, 30, 2, 6), texts(B * K, 31, 3, 20)
    teacher = torch.randn(B, K, generator=torch.Generator().manual_seed(9)) * 4
    return (q, p, n), (dq, dd, teacher)


def _make(kind: str):
    from conftest import make_colbert, make_dense

    model = make_dense("bert") if kind == "dense" else make_colbert(kind)
    if getattr(model.backbone, "pooler", None) is not None:
        model.backbone.pooler = None  # unused by the losses; DDP needs every parameter used
    return model.eval()


def _losses(model):
    from colzero.losses import CachedContrastive, Contrastive, Distillation

    return {
        "contrastive": Contrastive(model, temperature=0.05, learnable_temperature=True),
        "cached": CachedContrastive(model, mini_batch_size=2, temperature=0.05, learnable_temperature=True),
        "distillation": Distillation(model),
    }


def _step(kind, name, rows, world_size):
    """Build a fresh model, run one step of loss `name` on query rows `rows`; return loss, grads."""
    from test_losses_helpers import contrastive_batch, distillation_batch
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)
    model = _make(kind)
    wrapped = DDP(model) if world_size > 1 else model
    fn = _losses(wrapped)[name]
    (q, p, n), (dq, dd, teacher) = _cases()
    if name == "distillation":
        docs = [d for i in rows for d in dd[i * K : (i + 1) * K]]
        batch = distillation_batch(model, [dq[i] for i in rows], docs, teacher[rows])
    else:
        negs = [x for i in rows for x in n[i * N_NEG : (i + 1) * N_NEG]]
        batch = contrastive_batch(model, [q[i] for i in rows], [p[i] for i in rows], negs, N_NEG)
    loss = fn(batch)
    loss.backward()
    value = loss.detach().clone()
    if world_size > 1:
        dist.all_reduce(value)
        value /= world_size
    grads = {k: (None if v.grad is None else v.grad.clone()) for k, v in model.named_parameters()}
    grads.update({f"loss.{k}": v.grad.clone() for k, v in fn.named_parameters()})
    return value.item(), grads


CONFIGS = [("bert", "contrastive"), ("bert", "cached"), ("bert", "distillation"), ("dense", "contrastive")]


def _worker(rank: int, port: int, out: str) -> None:
    sys.path.insert(0, str(HERE))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        local = B // WORLD
        rows = list(range(rank * local, (rank + 1) * local))
        results = {f"{k}/{n}": _step(k, n, rows, WORLD) for k, n in CONFIGS}
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("dist") / "rank0.pt")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return torch.load(out)


@pytest.mark.parametrize(("kind", "name"), CONFIGS)
def test_two_ranks_equal_full_batch(distributed_results, kind, name):
    from test_losses_helpers import assert_grads_close

    torch.set_num_threads(1)
    ref_loss, ref = _step(kind, name, list(range(B)), 1)
    loss, got = distributed_results[f"{kind}/{name}"]
    assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
    assert assert_grads_close(got, ref) > 10


def test_gather_is_noop_without_process_group():
    from colzero.losses import gather_documents, world

    assert world() == (0, 1)
    v, m = torch.randn(2, 3, 4), torch.ones(2, 3, dtype=torch.bool)
    out_v, out_m, offset = gather_documents(v, m)
    assert out_v is v and out_m is m and offset == 0
