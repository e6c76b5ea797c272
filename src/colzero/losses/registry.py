"""The losses by name (placeholder, filled in with the phase schema)."""

from colzero.losses.cached import CachedContrastive
from colzero.losses.contrastive import Contrastive
from colzero.losses.distillation import Distillation

__all__ = ["CachedContrastive", "Contrastive", "Distillation"]
