"""Turn examples into tokenized training batches (dynamic padding, per-role prompts by the model)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from colzero.data.batch import ContrastiveBatch, DistillationBatch
from colzero.data.sources import ContrastiveExample, DistillationExample


class Collator:
    """``collator(examples) -> ContrastiveBatch | DistillationBatch``.

    Texts go through ``model.tokenize(texts, role)``, which applies the role's prompt and prefix
    from the model config (do not add prompts to the data as well). Batches are padded to their
    own longest row.
    """

    def __init__(self, model) -> None:
        self.model = model

    def __call__(
        self, examples: Sequence[ContrastiveExample | DistillationExample]
    ) -> ContrastiveBatch | DistillationBatch:
        if not examples:
            raise ValueError("cannot collate an empty batch")
        tok = self.model.tokenize
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


def batch_to(batch: ContrastiveBatch | DistillationBatch, device: torch.device):
    if isinstance(batch, DistillationBatch):
        return DistillationBatch(
            batch.queries.to(device), batch.documents.to(device), batch.teacher_scores.to(device)
        )
    return ContrastiveBatch(
        batch.queries.to(device),
        batch.positives.to(device),
        None if batch.negatives is None else batch.negatives.to(device),
        batch.n_negatives,
    )


def count_tokens(batch: ContrastiveBatch | DistillationBatch) -> int:
    parts = (
        [batch.queries, batch.documents]
        if isinstance(batch, DistillationBatch)
        else [batch.queries, batch.positives, batch.negatives]
    )
    return int(sum(int(p.attention_mask.sum()) for p in parts if p is not None))
