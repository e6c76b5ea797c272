"""``LossConfig``: which loss a phase trains with, and its settings.

The loss classes are found by ``kind`` in :data:`colzero.losses.registry.LOSSES`; each reads the
fields it uses in its ``from_config``. Like every validated settings record it needs pydantic, which
importing the losses themselves does not (a training machine imports them with torch alone).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from colzero.losses.base import LossKind
from colzero.schema import NonNegativeInt, PositiveInt, from_dict, settings, to_dict
from colzero.scoring.maxsim import Backend, MaxSimPrecision


@settings
class LossConfig:
    """Which loss and its settings.

    ``temperature``: tau of the contrastive losses (scores are divided by it);
    ``learnable_temperature`` makes ``log(tau)`` a parameter. ``mini_batch_size``: GradCache chunk
    size (``cached_contrastive`` only; None = one chunk per rank's batch). ``n_negatives``: hard
    negatives per query for the contrastive losses (0 = in-batch only; rows with fewer are an error
    before training). ``n_candidates``: candidates per query for distillation (rows with fewer are
    an error; extra ones are cut). ``normalize_scores``: min-max normalise the student's scores per
    query before the distillation softmax (as PyLate). ``maxsim_backend``: ``"auto"`` (fused Triton
    kernels on CUDA, chunked torch operations elsewhere), ``"fused"`` or ``"chunked"``.
    ``score_precision``: ``"fp32"`` (scores, InfoNCE and KL in float32 on the autocast forward's
    vectors, as ColBERT-Zero's authors trained) or ``"autocast"`` (similarities in bf16 under bf16
    autocast: cheaper on the chunked backend, noisier). ``loss_scale`` (contrastive losses):
    ``"mean"`` back-propagates the gradient of the global mean over every rank's queries;
    ``"pylate"`` the released ColBERT-Zero code's gradients at the run's world size W: W x the
    global mean's for ``contrastive``, the global *sum*'s (global batch x the mean's) for
    ``cached_contrastive`` (SPEC section 3). The logged loss is the mean in both. It matters
    through ``max_grad_norm``: AdamW alone is invariant to a constant scale.
    """

    kind: LossKind = "contrastive"
    temperature: float = Field(default=0.02, gt=0)
    learnable_temperature: bool = False
    mini_batch_size: PositiveInt | None = None
    n_negatives: NonNegativeInt = 0
    n_candidates: int = Field(default=32, ge=2, strict=True)
    normalize_scores: bool = True
    maxsim_backend: Backend = "auto"
    score_precision: MaxSimPrecision = "fp32"
    loss_scale: Literal["mean", "pylate"] = "mean"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LossConfig:
        """Validate a plain table (TOML / JSON)."""
        return from_dict(cls, data, "LossConfig")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (round trip with :meth:`from_dict`)."""
        return to_dict(self)
