"""Turn examples into tokenized training batches (dynamic padding, per-role prompts by the model)."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch

from colzero.data.batch import ContrastiveBatch, DistillationBatch
from colzero.data.sources import ContrastiveExample, DistillationExample
from colzero.model.base import TokenizedBatch
from colzero.model.encoder import Encoder

Tokenize = Callable[[list[str], str], TokenizedBatch]


def tokenizer_only(model: Encoder) -> Tokenize:
    """``model.tokenize`` on a shallow copy of the model without its weights.

    What a DataLoader worker needs (tokenizer, markers, prompts, lengths) pickles in kilobytes
    instead of the whole network, whatever the start method (fork, spawn, forkserver).
    """
    if not isinstance(model, torch.nn.Module):
        return model.tokenize
    light = copy.copy(model)
    light.__dict__ = dict(model.__dict__)
    light._modules, light._parameters, light._buffers = {}, {}, {}
    return light.tokenize


class Collator:
    """``collator(examples) -> ContrastiveBatch | DistillationBatch``.

    Texts go through ``tokenize(texts, role)`` (``model.tokenize``: the role's prompt and prefix come
    from the model config — do not add prompts to the data as well). Batches are padded to their
    own longest row. ``Collator(model)`` keeps only what tokenisation needs, so it can be sent to
    DataLoader workers.
    """

    def __init__(self, model: Encoder) -> None:
        self.tokenize: Tokenize = tokenizer_only(model)

    def __call__(
        self, examples: Sequence[ContrastiveExample | DistillationExample]
    ) -> ContrastiveBatch | DistillationBatch:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        tok = self.tokenize
        if isinstance(examples[0], DistillationExample):
            k = len(examples[0].candidates)
            if any(len(e.candidates) != k for e in examples):
                raise ValueError("distillation examples in one batch must have the same number of candidates")
            return DistillationBatch(
                queries=tok([e.query for e in examples], "query"),
                documents=tok([c for e in examples for c in e.candidates], "document"),
                teacher_scores=torch.tensor([e.scores for e in examples], dtype=torch.float32),
            )
        n_neg = len(examples[0].negatives)
        if any(len(e.negatives) != n_neg for e in examples):
            raise ValueError("contrastive examples in one batch must have the same number of negatives")
        negatives = tok([n for e in examples for n in e.negatives], "document") if n_neg else None
        return ContrastiveBatch(
            queries=tok([e.query for e in examples], "query"),
            positives=tok([e.positive for e in examples], "document"),
            negatives=negatives,
            n_negatives=n_neg,
        )


def batch_to(batch: ContrastiveBatch | DistillationBatch, device: torch.device, non_blocking: bool = False):
    def move(tb: TokenizedBatch | None) -> TokenizedBatch | None:
        if tb is None:
            return None
        return tb.to(device, non_blocking=non_blocking)

    if isinstance(batch, DistillationBatch):
        return DistillationBatch(
            move(batch.queries),
            move(batch.documents),
            batch.teacher_scores.to(device, non_blocking=non_blocking),
        )
    return ContrastiveBatch(
        move(batch.queries), move(batch.positives), move(batch.negatives), batch.n_negatives
    )


def count_tokens(batch: ContrastiveBatch | DistillationBatch) -> int:
    parts = (
        [batch.queries, batch.documents]
        if isinstance(batch, DistillationBatch)
        else [batch.queries, batch.positives, batch.negatives]
    )
    return int(sum(int(p.attention_mask.sum()) for p in parts if p is not None))
