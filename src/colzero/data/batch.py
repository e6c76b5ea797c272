"""The tokenized batches that losses consume. Roles are explicit fields, never guessed."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from colzero.model.base import TokenizedBatch


def _pinned(tb: TokenizedBatch | None) -> TokenizedBatch | None:
    if tb is None:
        return None
    return tb.replace_tensors(torch.Tensor.pin_memory)


@dataclass
class ContrastiveBatch:
    """B queries, their B positives, and ``n_negatives`` hard negatives per query.

    ``negatives`` rows are query-major: row ``i * n_negatives + j`` is negative j of query i.
    ``negatives`` is None when ``n_negatives == 0`` (in-batch negatives only).
    """

    queries: TokenizedBatch
    positives: TokenizedBatch
    negatives: TokenizedBatch | None = None
    n_negatives: int = 0

    def __len__(self) -> int:
        return len(self.queries)

    def pin_memory(self) -> ContrastiveBatch:
        """Page-locked copy (the DataLoader's pin-memory thread calls this on CUDA)."""
        return ContrastiveBatch(
            _pinned(self.queries), _pinned(self.positives), _pinned(self.negatives), self.n_negatives
        )


@dataclass
class DistillationBatch:
    """B queries, each with K candidate documents (query-major rows) and teacher scores (B, K)."""

    queries: TokenizedBatch
    documents: TokenizedBatch
    teacher_scores: torch.Tensor

    def __len__(self) -> int:
        return len(self.queries)

    def pin_memory(self) -> DistillationBatch:
        return DistillationBatch(
            _pinned(self.queries), _pinned(self.documents), self.teacher_scores.pin_memory()
        )
