"""What every registered loss is: a module called as ``loss = fn(batch); loss.backward()`` that
is built from a :class:`~colzero.losses.config.LossConfig` and describes itself."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from torch import nn

if TYPE_CHECKING:
    from colzero.losses.config import LossConfig

#: the names of :data:`colzero.losses.registry.LOSSES` (``LossConfig.kind``)
LossKind = Literal["contrastive", "cached_contrastive", "distillation"]

#: the paper every loss of colzero reproduces a phase of
COLBERT_ZERO = "ColBERT-Zero (Chaffin et al. 2026, arXiv:2602.16609)"


class Loss(nn.Module):
    """Base of the losses in :data:`colzero.losses.registry.LOSSES`.

    ``citation`` names the papers the loss comes from; :meth:`get_config_dict` the settings that
    define it (written into the trained model's training record); :meth:`from_config` builds it.
    The model is *not* a submodule: ``fn.parameters()`` yields only the loss's own parameters
    (a learnable temperature).
    """

    citation: ClassVar[str]

    @classmethod
    def from_config(cls, model: nn.Module, config: LossConfig) -> Self:
        """The loss for ``model`` (possibly wrapped in DistributedDataParallel) with ``config``."""
        raise NotImplementedError

    def get_config_dict(self) -> dict[str, Any]:
        """The settings that define this loss, as plain values."""
        raise NotImplementedError
