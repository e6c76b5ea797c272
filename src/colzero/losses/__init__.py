"""Training losses. Every loss is called the same way: ``loss = fn(batch); loss.backward()``."""

from colzero.losses.cached import CachedContrastive
from colzero.losses.contrastive import Contrastive
from colzero.losses.distillation import Distillation, kl_distillation, minmax_normalize
from colzero.losses.gather import gather_documents, world
from colzero.losses.scores import embed, score_all_pairs, score_nway

__all__ = [
    "CachedContrastive",
    "Contrastive",
    "Distillation",
    "embed",
    "gather_documents",
    "kl_distillation",
    "minmax_normalize",
    "score_all_pairs",
    "score_nway",
    "world",
]
