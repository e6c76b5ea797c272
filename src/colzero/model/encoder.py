"""``Encoder``: what the rest of colzero needs of a model. ColBERT and DenseModel satisfy it.

Every ``model`` parameter outside ``colzero.model`` is an :class:`Encoder` (the losses take the
model possibly wrapped in ``DistributedDataParallel``, an ``nn.Module``). The shape of the answer
tells multi-vector from single-vector: ``embed`` returns ``(vectors (B, L, dim), mask (B, L))``
for ColBERT and ``(vectors (B, dim), None)`` for DenseModel.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, Self

import torch
from torch import nn

from colzero.model.base import TokenizedBatch
from colzero.model.config import ColBERTConfig, DenseConfig, Role


class Encoder(Protocol):
    """Tokenise, embed (with gradients), encode (batched, no gradients), fingerprint and save."""

    training: bool

    @property
    def config(self) -> ColBERTConfig | DenseConfig:
        """The settings that define the vectors (lengths, prompts, pooling, ...)."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        ...

    def tokenize(self, texts: list[str], role: Role, prompt: str | None = None) -> TokenizedBatch:
        """One padded batch of ``texts`` as ``role`` (the saved prompt unless ``prompt`` is given)."""
        ...

    def embed(self, batch: TokenizedBatch, role: Role) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Vectors (and the scoring mask of multi-vector models) of a tokenized batch."""
        ...

    def encode(self, *args: Any, **kwargs: Any) -> Any:
        """Vectors of texts on the CPU, batched by length, without gradients: ``encode(texts,
        role="document", *, batch_size=32, prompt=None, show_progress=False, precision="auto",
        dtype=torch.float32)`` (ColBERT adds ``output="list" | "padded"``)."""
        ...

    def fingerprint(self) -> str:
        """A short hash of the settings and weights that determine the vectors."""
        ...

    def save(self, path: str | os.PathLike[str], *, training_record: dict[str, Any] | None = None) -> Path:
        """Write the model folder atomically, with ``training_record`` in its config when given."""
        ...

    def train(self, mode: bool = True) -> Self:
        """Training mode (dropout on) or not."""
        ...

    def eval(self) -> Self:
        """Evaluation mode (dropout off)."""
        ...

    def to(self, device: torch.device | str | None = ..., dtype: torch.dtype | None = ...) -> Self:
        """Move the weights."""
        ...

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The weights."""
        ...

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Parameter]]:
        """The weights with their names."""
        ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``forward``: the vectors of tokenized inputs."""
        ...
