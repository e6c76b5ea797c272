"""Shared helpers for the loss tests: deterministic texts and batches for tiny models."""

from __future__ import annotations

import random

import torch

from colzero.data.batch import ContrastiveBatch, DistillationBatch

VOCAB = [
    "late", "interaction", "retrieval", "colbert", "model", "query", "document", "search",
    "vector", "token", "score", "fox", "dog", "quick", "brown", "lazy", "cat", "paper",
    "protein", "cell", "gene", "study", "results", "data", "method", "neural", "text",
]  # fmt: skip


def texts(n: int, seed: int, low: int = 2, high: int = 12) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(low, high))) for _ in range(n)]


def contrastive_texts(b: int, n_neg: int, seed: int = 0) -> tuple[list[str], list[str], list[str]]:
    return texts(b, seed, 2, 6), texts(b, seed + 1, 4, 20), texts(b * n_neg, seed + 2, 3, 24)


def contrastive_batch(model, queries, positives, negatives, n_neg) -> ContrastiveBatch:
    return ContrastiveBatch(
        model.tokenize(queries, "query"),
        model.tokenize(positives, "document"),
        model.tokenize(negatives, "document") if n_neg else None,
        n_neg,
    )


def distillation_batch(model, queries, documents, teacher) -> DistillationBatch:
    return DistillationBatch(model.tokenize(queries, "query"), model.tokenize(documents, "document"), teacher)


def grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.detach().clone() for n, p in model.named_parameters()}


def assert_grads_close(a: dict, b: dict, atol: float = 1e-5, rtol: float = 1e-4) -> int:
    """Every parameter: both None or both close. Returns how many were compared (non-None)."""
    assert a.keys() == b.keys()
    compared = 0
    for name in a:
        if a[name] is None or b[name] is None:
            assert a[name] is None and b[name] is None, f"{name}: gradient present on one side only"
            continue
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
        compared += 1
    return compared


def set_dropout(model: torch.nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
    cfg = model.backbone.config
    if hasattr(cfg, "attention_dropout"):
        cfg.attention_dropout = p


def one_thread():
    """Generator for an autouse fixture: tiny models run faster on one thread (the 2 shared
    cores are oversubscribed by parallel sessions; OpenMP spin-waiting then dominates)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _gloo_rank(rank: int, world: int, port: int, job, out: str, test_dir: str) -> None:
    import os
    import sys

    import torch.distributed as dist

    sys.path.insert(0, test_dir)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = job(rank, world)
        if rank == 0:
            torch.save(result, out)
    finally:
        dist.destroy_process_group()


def on_gloo_ranks(job, world: int, out_dir) -> object:
    """Run ``job(rank, world)`` (a module-level function) in ``world`` gloo processes on the CPU;
    returns rank 0's result."""
    import socket
    from pathlib import Path

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = str(Path(out_dir) / "rank0.pt")
    mp.spawn(_gloo_rank, args=(world, port, job, out, str(Path(__file__).parent)), nprocs=world, join=True)
    return torch.load(out, weights_only=False)
