"""The losses by name: ``LOSSES[config.kind].from_config(model, config)``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from colzero.losses.base import Loss, LossKind
from colzero.losses.cached import CachedContrastive
from colzero.losses.contrastive import Contrastive
from colzero.losses.distillation import Distillation

if TYPE_CHECKING:
    from colzero.losses.config import LossConfig

#: ``LossConfig.kind`` -> loss class
LOSSES: dict[LossKind, type[Loss]] = {
    "contrastive": Contrastive,
    "cached_contrastive": CachedContrastive,
    "distillation": Distillation,
}


def build_loss(model: nn.Module, config: LossConfig) -> Loss:
    """The registered loss named by ``config.kind``, built from ``config``.

    >>> from colzero.losses import build_loss
    >>> from colzero.losses.config import LossConfig
    >>> build_loss(None, LossConfig("contrastive", temperature=0.05)).get_config_dict()
    {'temperature': 0.05, 'learnable_temperature': False, 'gather_across_devices': True, 'score_precision': 'fp32', 'loss_scale': 'mean'}
    """
    return LOSSES[config.kind].from_config(model, config)
