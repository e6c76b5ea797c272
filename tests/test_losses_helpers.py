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
