"""Training losses. Every loss is called the same way: ``loss = fn(batch); loss.backward()``.

:data:`LOSSES` names them; :func:`build_loss` builds one from a
:class:`colzero.losses.config.LossConfig` (a validated record: importing it needs pydantic,
importing the losses does not).
"""

from colzero.losses.base import Loss, LossKind
from colzero.losses.cached import CachedContrastive
from colzero.losses.contrastive import Contrastive
from colzero.losses.distillation import Distillation, kl_distillation, minmax_normalize
from colzero.losses.gather import gather_documents, world
from colzero.losses.registry import LOSSES, build_loss
from colzero.losses.scores import embed, score_all_pairs, score_nway

__all__ = [
    "LOSSES",
    "CachedContrastive",
    "Contrastive",
    "Distillation",
    "Loss",
    "LossKind",
    "build_loss",
    "embed",
    "gather_documents",
    "kl_distillation",
    "minmax_normalize",
    "score_all_pairs",
    "score_nway",
    "world",
]
