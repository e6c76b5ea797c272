"""Knowledge distillation: KL(teacher || student) over each query's K candidates.

For query i with candidates d_i1..d_iK, student scores s_ik (MaxSim for ColBERT, dot product for
DenseModel) and teacher scores t_ik (raw, e.g. reranker logits):

    s'_ik = (s_ik - min_k s_ik) / (max_k s_ik - min_k s_ik + 1e-8)     (if normalize_scores)
    P_i = softmax(t_i / teacher_temperature),  Q_i = softmax(s'_i / student_temperature)
    loss = (1 / B) * sum_i KL(P_i || Q_i) = (1 / B) * sum_i sum_k P_ik (log P_ik - log Q_ik)

This is PyLate 1.6.0 ``losses.Distillation`` (``KLDivLoss(reduction="batchmean",
log_target=True)`` on ``log_softmax`` of both sides, student min-max normalised per query, teacher
raw) as used by ColBERT-Zero's phase 3 (arXiv:2602.16609); the temperatures (default 1, i.e. PyLate's
behaviour) are an extension. Nothing is gathered across ranks: each rank's loss is the mean over
its queries, and DDP's gradient averaging gives the global-batch mean.

Inputs: a :class:`colzero.data.batch.DistillationBatch` (B queries, B * K query-major documents,
teacher scores (B, K)). Call style: ``loss = fn(batch); loss.backward()``.

Reference: Hinton et al. 2015 (distillation, arXiv:1503.02531); Santhanam et al. 2022 (ColBERTv2
KL distillation, arXiv:2112.01488).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Self

import torch
import torch.nn.functional as F
from torch import nn

from colzero.data.batch import DistillationBatch
from colzero.losses.base import COLBERT_ZERO, Loss
from colzero.losses.scores import computed_query_rows, embed, loss_precision, score_nway
from colzero.scoring.maxsim import DEFAULT_BUDGET_BYTES, Backend, MaxSimPrecision

if TYPE_CHECKING:
    from colzero.losses.config import LossConfig

EPSILON = 1e-8


def minmax_normalize(scores: torch.Tensor) -> torch.Tensor:
    """Per-row min-max normalisation to [0, 1] (epsilon 1e-8 in the denominator, as PyLate)."""
    high = scores.max(dim=1, keepdim=True).values
    low = scores.min(dim=1, keepdim=True).values
    return (scores - low) / (high - low + EPSILON)


def kl_distillation(
    student_scores: torch.Tensor,
    teacher_scores: torch.Tensor,
    normalize_scores: bool = True,
    student_temperature: float = 1.0,
    teacher_temperature: float = 1.0,
) -> torch.Tensor:
    """Batch-mean KL(teacher || student) from (B, K) score matrices (see module docstring).

    >>> import torch
    >>> s = torch.tensor([[3.0, 1.0, 0.0]])
    >>> round(float(kl_distillation(s, s, normalize_scores=False)), 6)  # same distribution
    0.0
    >>> float(kl_distillation(s, torch.tensor([[0.0, 1.0, 3.0]]))) > 0
    True
    """
    if student_scores.shape != teacher_scores.shape:
        raise ValueError(
            f"student scores {tuple(student_scores.shape)} != teacher scores {tuple(teacher_scores.shape)}"
        )
    student = student_scores.float()
    if normalize_scores:
        student = minmax_normalize(student)
    log_q = F.log_softmax(student / student_temperature, dim=-1)
    log_p = F.log_softmax(teacher_scores.to(log_q) / teacher_temperature, dim=-1)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


class Distillation(Loss):
    """KL distillation loss (module docstring). ``model`` is not registered as a submodule.

    ``maxsim_backend`` / ``score_precision``: as :class:`colzero.losses.Contrastive` (the student's
    scores and the KL in float32 by default, as the authors trained).
    """

    #: an Encoder, or one wrapped in DistributedDataParallel (not a submodule)
    model: nn.Module

    citation = (
        "KL distillation from teacher scores (Hinton et al. 2015, arXiv:1503.02531; ColBERTv2, "
        f"Santhanam et al. 2022, arXiv:2112.01488), as in the distillation phase of {COLBERT_ZERO}"
    )

    def __init__(
        self,
        model: nn.Module,
        normalize_scores: bool = True,
        student_temperature: float = 1.0,
        teacher_temperature: float = 1.0,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        maxsim_backend: Backend = "auto",
        score_precision: MaxSimPrecision = "fp32",
    ) -> None:
        super().__init__()
        if student_temperature <= 0 or teacher_temperature <= 0:
            raise ValueError("temperatures must be > 0")
        object.__setattr__(self, "model", model)
        self.normalize_scores = normalize_scores
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.budget_bytes = budget_bytes
        self.maxsim_backend: Backend = maxsim_backend
        self.score_precision: MaxSimPrecision = score_precision

    @classmethod
    def from_config(cls, model: nn.Module, config: LossConfig) -> Self:
        """``normalize_scores``, ``maxsim_backend`` and ``score_precision`` of ``config``."""
        return cls(
            model,
            config.normalize_scores,
            maxsim_backend=config.maxsim_backend,
            score_precision=config.score_precision,
        )

    def get_config_dict(self) -> dict[str, Any]:
        """The settings that define this loss."""
        return {
            "normalize_scores": self.normalize_scores,
            "student_temperature": self.student_temperature,
            "teacher_temperature": self.teacher_temperature,
            "score_precision": self.score_precision,
        }

    def student_scores(self, batch: DistillationBatch) -> torch.Tensor:
        """(B, K) student scores of each query against its own candidates."""
        b, k = batch.teacher_scores.shape
        if len(batch.queries) != b or len(batch.documents) != b * k:
            raise ValueError(
                f"{len(batch.queries)} queries / {len(batch.documents)} documents do not match "
                f"teacher scores of shape {(b, k)}"
            )
        q, qm = embed(self.model, batch.queries, "query")
        d, dm = embed(self.model, batch.documents, "document")
        return score_nway(
            q,
            qm,
            d,
            dm,
            k,
            budget_bytes=self.budget_bytes,
            backend=self.maxsim_backend,
            precision=self.score_precision,
            query_rows=computed_query_rows(self.model, batch.queries),
        )

    def forward(self, batch: DistillationBatch) -> torch.Tensor:
        """The loss of one batch; ``loss.backward()`` gives every gradient."""
        scores = self.student_scores(batch)
        with loss_precision(scores.device.type, self.score_precision):
            return kl_distillation(
                scores,
                batch.teacher_scores.to(scores.device),
                self.normalize_scores,
                self.student_temperature,
                self.teacher_temperature,
            )
