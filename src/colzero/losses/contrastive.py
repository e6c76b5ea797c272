"""InfoNCE (contrastive) loss on MaxSim or dot-product scores, documents gathered across ranks.

For query i of the global batch with positive p_i, the candidates C are every positive of the
global batch followed by every hard negative of the global batch, and

    loss = mean_i  -log( exp(s(q_i, p_i) / tau) / sum_{c in C} exp(s(q_i, c) / tau) )

with s the MaxSim score for ColBERT and the dot product for DenseModel
(:func:`colzero.losses.scores.score_all_pairs`). Queries stay on their rank; documents
(positives and negatives) are all-gathered with gradients (:mod:`colzero.losses.gather`), and the
label of local query i is ``offset + i`` where ``offset = rank * local_batch``.

Gradient scale (``loss_scale``; the returned value, which the trainer logs, is always the mean
above). With W ranks, B_r queries on rank r and B = sum_r B_r:

- ``"mean"`` (default): ``loss.backward()`` gives the gradient of the global mean, however many
  ranks share the batch (each rank's mean over its queries, the gather summing document gradients
  over ranks, DDP averaging parameter gradients).
- ``"pylate"``: the gradients of the released ColBERT-Zero code (PyLate ``losses.Contrastive``
  with ``gather_across_devices=True``, which returns ``W * mean_r``): W times the global mean's
  gradient, the same as ``"mean"`` on one rank. AdamW is invariant to a constant gradient scale,
  gradient-norm clipping is not: the scale decides how often ``max_grad_norm`` binds.

Inputs: a :class:`colzero.data.batch.ContrastiveBatch` (B queries, B positives, optionally
``B * n_negatives`` query-major hard negatives). Output: a scalar float32 loss tensor; the trainer
calls ``loss = fn(batch); loss.backward()`` (same as :class:`CachedContrastive`).

References: van den Oord et al. 2018 (InfoNCE, arXiv:1807.03748); Khattab & Zaharia 2020
(ColBERT, arXiv:2004.12832); ColBERT-Zero (arXiv:2602.16609) phases 1-2: tau 0.02 / 0.2, in-batch +
hard negatives, gathered documents; sentence-transformers ``MultipleNegativesRankingLoss`` and
PyLate ``losses.Contrastive`` (same candidate layout up to column order, which does not change the
loss).

Example (embeddings straight in; ``fn(batch)`` embeds a batch with the model first):

>>> import torch
>>> from colzero.losses import Contrastive
>>> q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # 2 queries of 1 token
>>> d = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])  # their positives
>>> mask = torch.ones(2, 1, dtype=torch.bool)
>>> fn = Contrastive(model=None, temperature=0.5)
>>> round(float(fn.loss_from_embeddings(q, None, d, mask)), 4)  # -log(e^2 / (e^2 + e^0))
0.1269
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal, Self, get_args

import torch
import torch.nn.functional as F
from torch import nn

from colzero.data.batch import ContrastiveBatch
from colzero.losses.base import COLBERT_ZERO, Loss
from colzero.losses.gather import all_reduce_mean_, gather_documents, world
from colzero.losses.scores import computed_query_rows, embed, loss_precision, score_all_pairs
from colzero.scoring.maxsim import DEFAULT_BUDGET_BYTES, Backend, MaxSimPrecision

if TYPE_CHECKING:
    from colzero.losses.config import LossConfig

#: how the contrastive losses scale their gradients (module docstring): ``"mean"`` the global
#: mean, ``"pylate"`` the released ColBERT-Zero code's scale at the run's world size
LossScale = Literal["mean", "pylate"]


class Contrastive(Loss):
    """InfoNCE over in-batch positives and hard negatives (see module docstring).

    Args:
        model: a ColBERT or DenseModel, possibly wrapped in DistributedDataParallel. It is *not*
            registered as a submodule: ``fn.parameters()`` yields only the loss's own parameters
            (the temperature when learnable), so an optimizer is built from
            ``[*model.parameters(), *fn.parameters()]``.
        temperature: tau (scores are divided by it).
        learnable_temperature: make ``log(tau)`` a parameter (its gradient is averaged over ranks
            by a hook, since DDP does not see it).
        gather_across_devices: all-gather documents across ranks when torch.distributed is
            initialised (no-op otherwise).
        budget_bytes: memory budget of one MaxSim similarity chunk (chunked backend).
        maxsim_backend: ``"auto"`` (fused Triton kernels on CUDA, chunked elsewhere), ``"fused"``
            or ``"chunked"`` (:mod:`colzero.scoring.maxsim`).
        score_precision: ``"fp32"`` (default, as the authors trained: scores and InfoNCE in
            float32 on the vectors of the autocast forward) or ``"autocast"`` (similarities in the
            autocast dtype; :mod:`colzero.losses.scores`).
        loss_scale: ``"mean"`` or ``"pylate"``: the gradient scale (module docstring); the
            returned value is the mean in both.
    """

    #: an Encoder, or one wrapped in DistributedDataParallel (not a submodule)
    model: nn.Module

    citation = (
        "InfoNCE (van den Oord et al. 2018, arXiv:1807.03748) on ColBERT late-interaction scores "
        f"(Khattab & Zaharia 2020, arXiv:2004.12832), as in the contrastive phases of {COLBERT_ZERO}"
    )

    def __init__(
        self,
        model: nn.Module,
        temperature: float = 0.02,
        learnable_temperature: bool = False,
        gather_across_devices: bool = True,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        maxsim_backend: Backend = "auto",
        score_precision: MaxSimPrecision = "fp32",
        loss_scale: LossScale = "mean",
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if loss_scale not in get_args(LossScale):
            raise ValueError(f"loss_scale must be one of {get_args(LossScale)}, got {loss_scale!r}")
        self.loss_scale: LossScale = loss_scale
        self.initial_temperature = float(temperature)
        object.__setattr__(self, "model", model)  # not a submodule (see class docstring)
        self.gather_across_devices = gather_across_devices
        self.budget_bytes = budget_bytes
        self.maxsim_backend: Backend = maxsim_backend
        self.score_precision: MaxSimPrecision = score_precision
        self.learnable_temperature = learnable_temperature
        log_t = torch.tensor(math.log(temperature), dtype=torch.float32)
        if learnable_temperature:
            self.log_temperature = nn.Parameter(log_t)
            self.log_temperature.register_post_accumulate_grad_hook(_average_grad_over_ranks)
        else:
            self.register_buffer("log_temperature", log_t, persistent=False)

    @classmethod
    def from_config(cls, model: nn.Module, config: LossConfig) -> Self:
        """``temperature``, ``learnable_temperature``, ``maxsim_backend``, ``score_precision`` and
        ``loss_scale`` of ``config``."""
        return cls(
            model,
            config.temperature,
            config.learnable_temperature,
            maxsim_backend=config.maxsim_backend,
            score_precision=config.score_precision,
            loss_scale=config.loss_scale,
        )

    def get_config_dict(self) -> dict[str, Any]:
        """The settings that define this loss (the temperature as configured)."""
        return {
            "temperature": self.initial_temperature,
            "learnable_temperature": self.learnable_temperature,
            "gather_across_devices": self.gather_across_devices,
            "score_precision": self.score_precision,
            "loss_scale": self.loss_scale,
        }

    @property
    def temperature(self) -> torch.Tensor:
        """tau = exp(log_temperature) (a tensor: it is learned when ``learnable_temperature``)."""
        return self.log_temperature.exp()

    def forward(self, batch: ContrastiveBatch) -> torch.Tensor:
        """The loss of one batch; ``loss.backward()`` gives every gradient."""
        q, qm = embed(self.model, batch.queries, "query")
        p, pm = embed(self.model, batch.positives, "document")
        n = nm = None
        if batch.negatives is not None and batch.n_negatives > 0:
            n, nm = embed(self.model, batch.negatives, "document")
        return self.loss_from_embeddings(
            q, qm, p, pm, n, nm, query_rows=computed_query_rows(self.model, batch.queries)
        )

    def _scores(
        self,
        q: torch.Tensor,
        q_mask: torch.Tensor | None,
        d: torch.Tensor,
        d_mask: torch.Tensor | None,
        rows: int | None,
    ) -> torch.Tensor:
        return score_all_pairs(
            q,
            q_mask,
            d,
            d_mask,
            budget_bytes=self.budget_bytes,
            backend=self.maxsim_backend,
            precision=self.score_precision,
            query_rows=rows,
        )

    def loss_from_embeddings(
        self,
        q: torch.Tensor,
        q_mask: torch.Tensor | None,
        pos: torch.Tensor,
        pos_mask: torch.Tensor | None,
        neg: torch.Tensor | None = None,
        neg_mask: torch.Tensor | None = None,
        *,
        query_rows: int | None = None,
    ) -> torch.Tensor:
        """InfoNCE from local embeddings (gathering documents across ranks when enabled);
        ``query_rows``: :func:`colzero.losses.scores.computed_query_rows` of the queries (None: unknown)."""
        if pos.shape[0] != q.shape[0]:
            raise ValueError(f"{q.shape[0]} queries but {pos.shape[0]} positives")
        offset = 0
        if self.gather_across_devices and world()[1] > 1:
            pos, pos_mask, offset = gather_documents(pos, pos_mask)
            if neg is not None:
                neg, neg_mask, _ = gather_documents(neg, neg_mask)
        scores = [self._scores(q, q_mask, pos, pos_mask, query_rows)]
        if neg is not None:
            scores.append(self._scores(q, q_mask, neg, neg_mask, query_rows))
        with loss_precision(q.device.type, self.score_precision):
            logits = torch.cat(scores, dim=1) / self.temperature
            labels = torch.arange(q.shape[0], device=q.device) + offset
            loss = F.cross_entropy(logits, labels)
        factor = self.gradient_factor(q.shape[0])
        return loss if factor == 1 else _ScaleGradient.apply(loss, factor)

    def gradient_factor(self, local_batch: int) -> float:
        """What the gradient of this rank's mean loss is multiplied by (module docstring):
        1 for ``"mean"``; W, the number of ranks gathering documents, for ``"pylate"``."""
        if self.loss_scale == "mean":
            return 1.0
        return float(world()[1] if self.gather_across_devices else 1)


class _ScaleGradient(torch.autograd.Function):
    """Identity forward (the logged value stays the mean); backward multiplies by ``factor``."""

    @staticmethod
    def forward(ctx: Any, loss: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def _average_grad_over_ranks(param: torch.Tensor) -> None:
    if param.grad is not None:
        all_reduce_mean_(param.grad)
