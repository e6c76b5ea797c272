"""GradCache: the contrastive loss of a large batch with memory bounded by a mini-batch.

Same loss and gradients as :class:`colzero.losses.contrastive.Contrastive` on the whole batch
(Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup";
sentence-transformers ``CachedMultipleNegativesRankingLoss``; ColBERT-Zero, arXiv:2602.16609,
phase 1 at a global batch of 16,384):

1. ``fn(batch)`` embeds queries, positives, negatives in chunks of ``mini_batch_size`` rows
   without gradients, saving the RNG state (CPU and every CUDA device) before each chunk;
2. computes the full-batch InfoNCE on the cached embeddings (detached leaves that require grad,
   documents gathered across ranks) and ``d loss / d embeddings`` right away;
3. returns the loss as a tensor with a backward hook: ``loss.backward()`` re-embeds every chunk
   with gradients under the saved RNG state (identical dropout masks) and the autocast state that
   surrounded step 1, and calls ``torch.autograd.backward(chunk_embeddings, cached_grad * g)``
   (g = the incoming gradient, e.g. 1 / accumulation steps). Under DDP every chunk but the last
   runs inside ``model.no_sync()``, so gradients are all-reduced once.

Gradient scale (``loss_scale``; the returned value is the mean in both): ``"mean"`` (default)
gives the gradient of the global mean over all ranks' queries, as :class:`Contrastive`;
``"pylate"`` gives that of the released ColBERT-Zero code (PyLate ``losses.CachedContrastive``
with ``gather_across_devices=True``), which back-propagates ``W * sum_i CE_i`` (the sum over this
rank's B_r queries, times the world size W) into the cached embeddings and divides only the
returned value by B_r: after DDP's averaging the gradient is that of the *global sum*
``sum_{i <= B} CE_i``, B = sum_r B_r times the global mean's (SPEC section 3: 16,384 times at the
paper's phase 1, where the 1.0 gradient-norm clip then binds at every step).

``keep_graphs=k`` (default 0) keeps the autograd graphs of the first ``k`` chunks (queries first;
never the last chunk) from step 1 and back-propagates through them in step 3 instead of
re-embedding them: ``k`` fewer encoder forwards, for ``k`` chunks' activations held from step 1
to step 3 (their forwards run under ``no_sync``; the last, re-embedded chunk synchronises).

Call style (same as ``Contrastive``): ``loss = fn(batch); loss.backward()``. Peak memory is one
chunk's activations (plus the kept ones) plus the cached embeddings and the score matrix. Under ``torch.no_grad()``
``fn(batch)`` just returns the loss. Chunks are embedded in the order queries, positives,
negatives, each in row order (this is the RNG consumption order with dropout on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Self

import torch
from torch import nn

from colzero.data.batch import ContrastiveBatch
from colzero.losses.base import COLBERT_ZERO
from colzero.losses.contrastive import Contrastive, LossScale
from colzero.losses.gather import all_reduce_mean_
from colzero.losses.scores import computed_query_rows, embed
from colzero.model.base import TokenizedBatch
from colzero.model.config import Role
from colzero.scoring.maxsim import DEFAULT_BUDGET_BYTES, Backend, MaxSimPrecision

if TYPE_CHECKING:
    from colzero.losses.config import LossConfig


class RandContext:
    """Snapshot of the CPU and CUDA RNG states; ``with ctx:`` replays from it (state restored after)."""

    def __init__(self) -> None:
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        self._fork: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> None:
        devices = list(range(len(self.cuda_states))) if self.cuda_states is not None else []
        self._fork = torch.random.fork_rng(devices=devices, enabled=True)
        self._fork.__enter__()
        torch.set_rng_state(self.cpu_state)
        if self.cuda_states is not None:
            torch.cuda.set_rng_state_all(self.cuda_states)

    def __exit__(self, *exc: Any) -> None:
        assert self._fork is not None
        self._fork.__exit__(*exc)
        self._fork = None


@dataclass
class _Chunk:
    batch: TokenizedBatch
    role: Role
    part: int  # 0 queries, 1 positives, 2 negatives
    rows: slice
    rng: RandContext
    kept: torch.Tensor | None = None  # the embeddings with their graph (keep_graphs)


class CachedContrastive(Contrastive):
    """GradCache InfoNCE (module docstring); arguments as :class:`Contrastive` plus
    ``mini_batch_size`` (rows embedded at once, per role; None: a whole role at once) and
    ``keep_graphs`` (chunks whose first-pass graph is kept instead of re-embedded).
    ``loss_scale="pylate"`` scales the gradient by ``B_r * W`` (module docstring)."""

    citation = (
        "InfoNCE (van den Oord et al. 2018, arXiv:1807.03748) on ColBERT late-interaction scores "
        "(Khattab & Zaharia 2020, arXiv:2004.12832) with GradCache (Gao et al. 2021, arXiv:2101.06983), "
        f"as in the unsupervised phase of {COLBERT_ZERO}"
    )

    def __init__(
        self,
        model: nn.Module,
        mini_batch_size: int | None = 32,
        temperature: float = 0.02,
        learnable_temperature: bool = False,
        gather_across_devices: bool = True,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        maxsim_backend: Backend = "auto",
        score_precision: MaxSimPrecision = "fp32",
        loss_scale: LossScale = "mean",
        *,
        keep_graphs: int = 0,
    ) -> None:
        super().__init__(
            model,
            temperature,
            learnable_temperature,
            gather_across_devices,
            budget_bytes,
            maxsim_backend,
            score_precision,
            loss_scale,
        )
        if mini_batch_size is not None and mini_batch_size < 1:
            raise ValueError(f"mini_batch_size must be >= 1, got {mini_batch_size}")
        if keep_graphs < 0:
            raise ValueError(f"keep_graphs must be >= 0, got {keep_graphs}")
        self.mini_batch_size = mini_batch_size
        self.keep_graphs = keep_graphs

    @classmethod
    def from_config(cls, model: nn.Module, config: LossConfig) -> Self:
        """``mini_batch_size``, ``temperature``, ``learnable_temperature``, ``maxsim_backend``,
        ``score_precision`` and ``loss_scale`` of ``config``."""
        return cls(
            model,
            config.mini_batch_size,
            config.temperature,
            config.learnable_temperature,
            maxsim_backend=config.maxsim_backend,
            score_precision=config.score_precision,
            loss_scale=config.loss_scale,
        )

    def get_config_dict(self) -> dict[str, Any]:
        """The settings that define this loss (the temperature as configured)."""
        return {**super().get_config_dict(), "mini_batch_size": self.mini_batch_size}

    def gradient_factor(self, local_batch: int) -> float:
        """1 for ``"mean"``; ``B_r * W`` for ``"pylate"`` (the released code's sum times world size)."""
        return super().gradient_factor(local_batch) * (local_batch if self.loss_scale == "pylate" else 1)

    def _chunks(self, batch: ContrastiveBatch) -> Iterator[tuple[TokenizedBatch, Role, int, slice]]:
        parts: list[tuple[TokenizedBatch, Role]] = [(batch.queries, "query"), (batch.positives, "document")]
        if batch.negatives is not None and batch.n_negatives > 0:
            parts.append((batch.negatives, "document"))
        for index, (tb, role) in enumerate(parts):
            size = self.mini_batch_size or len(tb)
            for start in range(0, len(tb), size):
                rows = slice(start, min(start + size, len(tb)))
                yield tb.select(rows), role, index, rows

    def _no_sync(self, skip: bool) -> contextlib.AbstractContextManager[None]:
        """DDP's ``no_sync()`` when ``skip`` (this forward's backward must not all-reduce), else a no-op."""
        no_sync = getattr(self.model, "no_sync", None)
        return no_sync() if skip and no_sync is not None else contextlib.nullcontext()

    def forward(self, batch: ContrastiveBatch) -> torch.Tensor:
        """The loss of one batch; ``loss.backward()`` re-embeds chunk by chunk (module docstring)."""
        chunks: list[_Chunk] = []
        vectors: list[list[torch.Tensor]] = [[], [], []]
        masks: list[list[torch.Tensor | None]] = [[], [], []]
        planned = list(self._chunks(batch))
        keep = min(self.keep_graphs, len(planned) - 1) if torch.is_grad_enabled() else 0
        with torch.no_grad():
            for index, (tb, role, part, rows) in enumerate(planned):
                rng = RandContext()
                kept = None
                if index < keep:
                    with torch.enable_grad(), self._no_sync(True):
                        kept, m = embed(self.model, tb, role)
                    v = kept
                else:
                    v, m = embed(self.model, tb, role)
                chunks.append(_Chunk(tb, role, part, rows, rng, kept))
                vectors[part].append(v.detach())
                masks[part].append(m)
        queries, positives = torch.cat(vectors[0]), torch.cat(vectors[1])
        negatives = torch.cat(vectors[2]) if vectors[2] else None
        full_masks = [_cat_masks(m) for m in masks]
        bounds = [computed_query_rows(self.model, tb) for tb, _, part, _ in planned if part == 0]
        query_bound = None if any(b is None for b in bounds) else sum(b for b in bounds if b is not None)
        if not torch.is_grad_enabled():
            return self.loss_from_embeddings(
                queries,
                full_masks[0],
                positives,
                full_masks[1],
                negatives,
                full_masks[2],
                query_rows=query_bound,
            )
        device_type = queries.device.type
        autocast_state = (
            device_type,
            torch.is_autocast_enabled(device_type),
            torch.get_autocast_dtype(device_type),
        )
        leaves = [queries.requires_grad_(), positives.requires_grad_()]
        if negatives is not None:
            leaves.append(negatives.requires_grad_())
        loss = self.loss_from_embeddings(
            leaves[0],
            full_masks[0],
            leaves[1],
            full_masks[1],
            negatives,
            full_masks[2],
            query_rows=query_bound,
        )
        targets = list(leaves)
        if self.learnable_temperature:
            targets.append(self.log_temperature)
        grads = torch.autograd.grad(loss, targets)
        part_grads: list[torch.Tensor | None] = [None, None, None]
        for i in range(len(leaves)):
            part_grads[i] = grads[i]
        temperature_grad = grads[-1] if self.learnable_temperature else None
        out = loss.detach().requires_grad_()
        out.register_hook(partial(self._backward, chunks, part_grads, temperature_grad, autocast_state))
        return out

    def _backward(
        self,
        chunks: list[_Chunk],
        part_grads: list[torch.Tensor | None],
        temperature_grad: torch.Tensor | None,
        autocast_state: tuple[str, bool, torch.dtype],
        grad_output: torch.Tensor,
    ) -> None:
        device_type, enabled, dtype = autocast_state
        last = len(chunks) - 1
        with torch.enable_grad(), torch.autocast(device_type, dtype=dtype, enabled=enabled):
            for i, chunk in enumerate(chunks):
                grad = part_grads[chunk.part]
                assert grad is not None
                if chunk.kept is not None:  # its graph from the first pass (forward under no_sync)
                    kept, chunk.kept = chunk.kept, None
                    torch.autograd.backward(kept, grad[chunk.rows] * grad_output.to(grad.dtype))
                    continue
                with self._no_sync(i != last), chunk.rng:
                    v, _ = embed(self.model, chunk.batch, chunk.role)
                    torch.autograd.backward(v, grad[chunk.rows] * grad_output.to(grad.dtype))
        if temperature_grad is not None:
            g = all_reduce_mean_((temperature_grad * grad_output).detach().clone())
            param = self.log_temperature
            param.grad = g if param.grad is None else param.grad + g


def _cat_masks(masks: list[torch.Tensor | None]) -> torch.Tensor | None:
    """The chunks' masks as one (None when the vectors are single-vector)."""
    present = [m for m in masks if m is not None]
    return torch.cat(present) if present and len(present) == len(masks) else None
