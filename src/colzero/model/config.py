"""Model configuration dataclasses and the one precedence rule used everywhere.

Precedence (written once, in :func:`resolve_config`): an explicit argument that is not ``None``
wins over the value saved with the model, which wins over the dataclass default.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

#: PyLate's default skiplist: every single ASCII punctuation character.
DEFAULT_SKIPLIST: tuple[str, ...] = tuple(string.punctuation)

Role = Literal["query", "document"]
ROLES: tuple[Role, ...] = ("query", "document")

T = TypeVar("T")

#: attention backends a model may ask transformers for (``None``: transformers' default)
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa", "flash_attention_2")
#: how the backbone runs: on the batch's real tokens with the best attention kernel here ("auto") or
#: a named one, or padded through transformers' own forward ("off")
PACKING: tuple[str, ...] = ("auto", "varlen", "flex", "sdpa", "off")
#: the packed encoder's residual stream under fp16/bf16 autocast: fp32 as transformers, or the autocast dtype
RESIDUAL_PRECISIONS: tuple[str, ...] = ("fp32", "autocast")


def resolve_config(cls: type[T], explicit: Mapping[str, Any], saved: Mapping[str, Any]) -> T:
    """Build ``cls`` with: explicit (not None) > saved (not None) > dataclass default.

    Keys of ``saved`` that ``cls`` does not know are ignored (a saved folder may carry keys of
    other libraries); unknown *explicit* keys are an error, because they are a caller's typo.
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(k for k in explicit if k not in names)
    if unknown:
        raise TypeError(f"{cls.__name__} has no setting(s) {unknown}; known: {sorted(names)}")
    values: dict[str, Any] = {}
    for name in names:
        if explicit.get(name) is not None:
            values[name] = explicit[name]
        elif saved.get(name) is not None:
            values[name] = saved[name]
    return cls(**values)


@dataclass
class ColBERTConfig:
    """Settings of a multi-vector (late-interaction) model; the keys are PyLate's.

    ``flash_attention_compat`` reproduces FlashAttention's unpadding: positions the attention
    mask hides (query expansion tokens when ``attend_to_expansion_tokens`` is False) come out as
    zero vectors, so a checkpoint trained with FlashAttention scores the same on any backend.

    ``attn_implementation`` is the backbone's attention backend (``"eager"``, ``"sdpa"``,
    ``"flash_attention_2"``; ``None`` leaves transformers' default), passed to the backbone at
    load and applied to an in-memory backbone. It is a runtime choice: not part of
    :meth:`ColBERT.fingerprint`, and a saved ``"flash_attention_2"`` falls back to ``"sdpa"``
    with a warning where FlashAttention is unavailable (an explicit request is an error there).

    ``packing`` (runtime, like ``attn_implementation``): ``"auto"`` runs supported backbones (BERT,
    RoBERTa, ModernBERT) on the batch's real tokens only (:mod:`colzero.model.packed`), with
    ``varlen_attn`` on CUDA where torch has it, else flex attention on CUDA, else length-bucketed
    sdpa; ``"varlen"`` / ``"flex"`` / ``"sdpa"`` force that kernel; ``"off"`` uses the padded
    transformers forward (then ``attn_implementation`` applies). Same vectors either way (to float
    rounding); padding positions come out as zero vectors. ``residual_precision="autocast"`` keeps
    the packed encoder's residual stream in the autocast dtype (bf16) instead of fp32.
    """

    query_prefix: str = "[Q] "
    document_prefix: str = "[D] "
    query_length: int = 32
    document_length: int = 180
    attend_to_expansion_tokens: bool = False
    skiplist_words: list[str] = field(default_factory=lambda: list(DEFAULT_SKIPLIST))
    do_query_expansion: bool = True
    prompts: dict[str, str] = field(default_factory=dict)
    embedding_dim: int = 128
    flash_attention_compat: bool = False
    attn_implementation: str | None = None
    packing: str = "auto"
    residual_precision: str = "fp32"

    def __post_init__(self) -> None:
        _check_attn_implementation(type(self).__name__, self.attn_implementation)
        _check_packing(type(self).__name__, self.packing, self.residual_precision)
        for name in ("query_length", "document_length", "embedding_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ColBERTConfig.{name} must be a positive integer, got {value!r}")
        min_len = 3 + bool(self.query_prefix)
        if self.query_length < min_len:
            raise ValueError(f"ColBERTConfig.query_length={self.query_length} leaves no room for text")
        _check_prompts(self.prompts)

    def prompt_for(self, role: Role) -> str:
        """The prompt prepended to ``role`` texts (``""``: none)."""
        return self.prompts.get(role, "")

    def prefix_for(self, role: Role) -> str:
        """The marker token of ``role`` (``[Q] `` / ``[D] ``)."""
        return self.query_prefix if role == "query" else self.document_prefix

    def length_for(self, role: Role) -> int:
        """``query_length`` or ``document_length``."""
        return self.query_length if role == "query" else self.document_length


@dataclass
class DenseConfig:
    """Settings of a single-vector model (the dense baseline); ``attn_implementation``,
    ``packing`` and ``residual_precision`` as in :class:`ColBERTConfig`."""

    pooling: Literal["mean", "cls"] = "mean"
    normalize: bool = True
    max_length: int = 256
    prompts: dict[str, str] = field(default_factory=dict)
    attn_implementation: str | None = None
    packing: str = "auto"
    residual_precision: str = "fp32"

    def __post_init__(self) -> None:
        _check_attn_implementation(type(self).__name__, self.attn_implementation)
        _check_packing(type(self).__name__, self.packing, self.residual_precision)
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"DenseConfig.pooling must be 'mean' or 'cls', got {self.pooling!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise ValueError(f"DenseConfig.max_length must be an integer >= 2, got {self.max_length!r}")
        _check_prompts(self.prompts)

    def prompt_for(self, role: Role) -> str:
        """The prompt prepended to ``role`` texts (``""``: none)."""
        return self.prompts.get(role, "")


def _check_prompts(prompts: Any) -> None:
    if not isinstance(prompts, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()
    ):
        raise ValueError(f"prompts must map role names to strings, got {prompts!r}")


def _check_attn_implementation(owner: str, value: Any) -> None:
    if value is not None and value not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"{owner}.attn_implementation must be one of {ATTN_IMPLEMENTATIONS} or None, got {value!r}"
        )


def _check_packing(owner: str, packing: Any, residual: Any) -> None:
    if packing not in PACKING:
        raise ValueError(f"{owner}.packing must be one of {PACKING}, got {packing!r}")
    if residual not in RESIDUAL_PRECISIONS:
        raise ValueError(f"{owner}.residual_precision must be one of {RESIDUAL_PRECISIONS}, got {residual!r}")
