"""The packed encoder: a transformers backbone run on a batch's computed tokens only.

A padded batch spends most of its encoder FLOPs on padding when lengths vary (MS MARCO-like
passages fill ~17% of 519 tokens), and transformers' ModernBERT under sdpa computes the full
L x L scores of its sliding-window layers and masks them. Here the computed tokens of the batch
(:class:`colzero.model.attention.PackedLayout`: attended tokens, plus scored query-expansion
positions) go through the backbone's *own* modules, with their weights and names unchanged (so
checkpoints stay interchangeable with PyLate and sentence-transformers):

- embeddings: the backbone's embedding module on ``(1, T)`` ids with per-row position ids;
- every linear layer, activation, LayerNorm and dropout: the backbone's modules on ``(T, hidden)``;
- attention: :func:`colzero.model.attention.packed_attention` (varlen / flex / bucketed sdpa) in
  place of the module's padded core, with the module's own projections, scale, RoPE and window.

Supported (checked by structure, not only by class name): BERT (``BertModel``: MiniLM, BGE, E5,
...) and RoBERTa / XLM-R (absolute positions, as transformers computes them from the ids) and
ModernBERT as written in transformers 5 (``layer_types`` with a model-level ``rotary_emb``). Any
other backbone (or relative position embeddings, decoders) falls back to the padded transformers
forward (:func:`packed_architecture` says which and why). transformers' gradient checkpointing,
when enabled on the backbone, checkpoints every packed layer (non-reentrant).

On accelerators the packed tokens go through every layer together, gathered into the kernel's
shape only around attention; on the CPU each length bucket of rows goes through all layers as one
padded rectangle instead (:func:`colzero.model.attention.bucketed_forward`).

Precision (``residual="half"``): under fp16/bf16 autocast transformers keeps the residual stream,
the LayerNorms and RoPE in fp32 (one cast per op). With ``"half"`` the residual stream and the
LayerNorm outputs stay in the autocast dtype (LayerNorm still reduces in fp32 inside the kernel;
RoPE is applied in fp32 and rounded once); ``"fp32"`` (default) is transformers' behaviour.
``benchmarks/gpu_check.py`` and ``benchmarks/encode.py`` measure the error of both against fp32.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from colzero.model.attention import PackedLayout, bucketed_forward, packed_attention

logger = logging.getLogger(__name__)

Residual = Literal["fp32", "half"]
Runner = Callable[..., torch.Tensor]

_BERT_LIKE = {
    "BertModel": "bert",
    "RobertaModel": "roberta",
    "XLMRobertaModel": "roberta",
    "CamembertModel": "roberta",
}


def packed_architecture(backbone: Any) -> tuple[str | None, str]:
    """``(name, reason)``: the packed runner for ``backbone`` (``"bert"``, ``"roberta"``,
    ``"modernbert"``) or ``None`` with the reason it falls back to the padded forward."""
    cls = type(backbone).__name__
    config = getattr(backbone, "config", None)
    if config is None:
        return None, f"{cls} has no config"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return None, f"{cls} is configured as a decoder"
    if cls in _BERT_LIKE:
        kind = getattr(config, "position_embedding_type", "absolute") or "absolute"
        if kind != "absolute":
            return None, f"{cls} uses {kind!r} position embeddings"
        try:
            emb = backbone.embeddings
            for name in ("word_embeddings", "position_embeddings", "LayerNorm", "dropout"):
                getattr(emb, name)
            for layer in backbone.encoder.layer:
                sa = layer.attention.self
                for lin in (sa.query, sa.key, sa.value):
                    if not isinstance(lin, nn.Linear):
                        return None, f"{cls}: attention projections are not nn.Linear"
                layer.attention.output.dense, layer.intermediate, layer.output.dense  # noqa: B018
        except AttributeError as exc:
            return None, f"{cls}: unexpected module layout ({exc})"
        return _BERT_LIKE[cls], "ok"
    if cls == "ModernBertModel":
        types = getattr(config, "layer_types", None)
        rotary = getattr(backbone, "rotary_emb", None)
        if types is None or rotary is None:
            return None, f"{cls}: transformers < 5 layout (per-layer rotary embeddings)"
        try:
            for layer in backbone.layers:
                layer.attn.Wqkv, layer.attn.Wo, layer.attn_norm, layer.mlp_norm, layer.mlp  # noqa: B018
                if layer.attention_type not in ("full_attention", "sliding_attention"):
                    return None, f"{cls}: unknown layer type {layer.attention_type!r}"
            backbone.embeddings, backbone.final_norm  # noqa: B018
        except AttributeError as exc:
            return None, f"{cls}: unexpected module layout ({exc})"
        return "modernbert", "ok"
    return None, f"no packed runner for {cls} (padded transformers forward)"


def packed_hidden_states(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    layout: PackedLayout,
    *,
    kernel: str = "auto",
    residual: Residual = "fp32",
    architecture: str | None = None,
) -> torch.Tensor:
    """The backbone's last hidden states of the packed tokens, ``(T, hidden)``.

    ``input_ids`` / ``token_type_ids`` are the padded ``(batch, width)`` inputs; ``layout`` says
    which positions are computed (:meth:`PackedLayout.from_masks`). ``architecture``: the runner
    :func:`packed_architecture` named for this backbone, when the caller has already asked it
    (else it is asked here). Raises ``ValueError`` for a backbone it does not support.
    """
    name = architecture
    if name is None:
        name, reason = packed_architecture(backbone)
        if name is None:
            raise ValueError(reason)
    half = _half_dtype(input_ids.device) if residual == "half" else None
    run = _RUNNERS[name]
    if layout.dense or not bucketed_forward(layout.device):
        return run(backbone, _Batch(input_ids, token_type_ids, layout, kernel, half))
    parts = []  # the CPU: every bucket of similar-length rows through all layers as one rectangle
    for b in layout.buckets():
        rows = torch.tensor(b.row_ids, device=input_ids.device)
        full = torch.ones(b.rows, b.width, dtype=torch.bool)
        keys = full if b.key_mask is None else b.key_mask.cpu()
        real = full if b.real is None else b.real.cpu()
        sub = PackedLayout.from_masks(real, keys, min_fill=0.0)
        assert sub is not None and sub.dense
        types = None if token_type_ids is None else token_type_ids[rows, : b.width]
        out = run(backbone, _Batch(input_ids[rows, : b.width], types, sub, kernel, half))
        parts.append(out.index_select(0, b.slots) if b.slots is not None else out)
    return parts[0] if len(parts) == 1 else torch.cat(parts).index_select(0, layout.bucket_inverse())


def _half_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype where autocast is on for ``device`` and it is a half type, else None."""
    if not torch.is_autocast_enabled(device.type):
        return None
    dtype = torch.get_autocast_dtype(device.type)
    return dtype if dtype in (torch.float16, torch.bfloat16) else None


def _norm(module: nn.Module, x: torch.Tensor, half: torch.dtype | None) -> torch.Tensor:
    """``module(x)``; with ``half``, a LayerNorm whose output stays in ``half``."""
    if half is None or not isinstance(module, nn.LayerNorm):
        return module(x)
    weight = None if module.weight is None else module.weight.to(half)
    bias = None if module.bias is None else module.bias.to(half)
    with torch.autocast(x.device.type, enabled=False):
        return F.layer_norm(x.to(half), module.normalized_shape, weight, bias, module.eps)


def _layers(backbone: Any, layers: Any, step: Callable[..., torch.Tensor], h: torch.Tensor) -> torch.Tensor:
    """Apply ``step(layer, h)`` for every layer, checkpointed when the backbone asks for it."""
    checkpointing = backbone.training and torch.is_grad_enabled() and _checkpointing(backbone)
    for layer in layers:
        if checkpointing:
            from torch.utils.checkpoint import checkpoint

            h = checkpoint(step, layer, h, use_reentrant=False)
        else:
            h = step(layer, h)
    return h


def _checkpointing(backbone: nn.Module) -> bool:
    """Whether transformers' gradient checkpointing is enabled on ``backbone``."""
    return any(bool(getattr(m, "gradient_checkpointing", False)) for m in backbone.modules())


def _dropout_p(module: nn.Module) -> float:
    return float(module.p) if isinstance(module, nn.Dropout) and module.training else 0.0


# ---------------------------------------------------------------------------- BERT family


def _bert_positions(backbone: Any, name: str, input_ids: torch.Tensor, layout: PackedLayout) -> torch.Tensor:
    if name == "roberta":  # fairseq positions: padding_idx + 1 + rank among non-padding ids
        pad = int(backbone.embeddings.padding_idx)
        mask = input_ids.ne(pad).int()
        return layout.gather((torch.cumsum(mask, dim=1) * mask).long() + pad)
    return layout.cols


@dataclass(frozen=True)
class _Batch:
    """One runner call: the padded inputs, their layout, the attention kernel, the residual dtype."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor | None
    layout: PackedLayout
    kernel: str
    half: torch.dtype | None


def _run_bert(backbone: Any, batch: _Batch, name: str = "bert") -> torch.Tensor:
    input_ids, token_type_ids, layout, kernel, half = (
        batch.input_ids, batch.token_type_ids, batch.layout, batch.kernel, batch.half)  # fmt: skip
    ids = layout.gather(input_ids)[None]
    types = None if token_type_ids is None else layout.gather(token_type_ids)[None]
    positions = _bert_positions(backbone, name, input_ids, layout)[None]
    h = backbone.embeddings(input_ids=ids, token_type_ids=types, position_ids=positions)[0]
    if half is not None:
        h = h.to(half)

    def add_norm(out: Any, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        # BertSelfOutput / BertOutput: LayerNorm(dropout(dense(x)) + residual)
        y = out.dropout(out.dense(x))
        if half is not None:
            y = y.to(half)
        return _norm(out.LayerNorm, y + residual, half)

    def step(layer: Any, h: torch.Tensor) -> torch.Tensor:
        sa = layer.attention.self
        t = h.shape[0]
        heads = int(sa.num_attention_heads)
        # three GEMMs, as transformers: one on concatenated weights was faster alone, but its
        # strided outputs made the CPU attention slower by more (MiniLM, measured)
        q, k, v = (lin(h).view(t, heads, -1) for lin in (sa.query, sa.key, sa.value))
        scale = float(getattr(sa, "scaling", q.shape[-1] ** -0.5))
        o = packed_attention(q, k, v, layout, dropout=_dropout_p(sa.dropout), scale=scale, kernel=kernel)
        a = add_norm(layer.attention.output, o.reshape(t, -1), h)
        return add_norm(layer.output, layer.intermediate(a), a)

    return _layers(backbone, backbone.encoder.layer, step, h)


# ---------------------------------------------------------------------------- ModernBERT


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _rope(qk: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' ``apply_rotary_pos_emb`` on queries and keys together, ``qk`` of shape
    ``(T, 2, heads, dim)``: in fp32, rounded back to ``qk``'s dtype (half the kernels of two calls)."""
    cos, sin = cos[:, None, None, :], sin[:, None, None, :]
    x = qk.float()
    return (x * cos + _rotate_half(x) * sin).to(qk.dtype).unbind(1)


def _run_modernbert(backbone: Any, batch: _Batch) -> torch.Tensor:
    input_ids, layout, kernel, half = batch.input_ids, batch.layout, batch.kernel, batch.half
    config = backbone.config
    h = backbone.embeddings(input_ids=layout.gather(input_ids)[None])[0]
    if half is not None:
        h = h.to(half)
    positions = layout.cols[None]
    probe = torch.empty((1, 1, h.shape[-1]), dtype=torch.float32, device=h.device)
    rope = {}
    for layer_type in sorted(set(config.layer_types)):
        cos, sin = backbone.rotary_emb(probe, positions, layer_type)
        rope[layer_type] = (cos[0].float(), sin[0].float())
    window = int(config.local_attention) // 2
    heads = int(config.num_attention_heads)

    def step(layer: Any, h: torch.Tensor) -> torch.Tensor:
        attn = layer.attn
        t = h.shape[0]
        qkv = attn.Wqkv(_norm(layer.attn_norm, h, half)).view(t, 3, heads, -1)
        q, k = _rope(qkv[:, :2], *rope[layer.attention_type])
        v = qkv[:, 2]
        o = packed_attention(
            q,
            k,
            v,
            layout,
            window=window if layer.attention_type == "sliding_attention" else None,
            dropout=float(attn.attention_dropout) if attn.training else 0.0,
            scale=q.shape[-1] ** -0.5,
            kernel=kernel,
        )
        y = attn.out_drop(attn.Wo(o.reshape(t, -1)))
        h = h + (y.to(half) if half is not None else y)
        m = layer.mlp(_norm(layer.mlp_norm, h, half))
        return h + (m.to(half) if half is not None else m)

    h = _layers(backbone, backbone.layers, step, h)
    return _norm(backbone.final_norm, h, half)


_RUNNERS: dict[str, Runner] = {
    "bert": _run_bert,
    "roberta": functools.partial(_run_bert, name="roberta"),
    "modernbert": _run_modernbert,
}
