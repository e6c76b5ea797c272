"""Attention over packed sequences: a batch's computed tokens, concatenated, with their offsets.

A padded batch ``(B, L)`` becomes ``T`` packed tokens (row-major: every row's tokens in column order)
described by a :class:`PackedLayout`: for each token its row, its column (= its position id) and
whether it is *attended* (a key other tokens of its row see). Rows are attended on a prefix in
colzero (``[CLS] ... [SEP]``); query-expansion positions that are scored but not attended
(``attend_to_expansion_tokens=False`` without ``flash_attention_compat``) are *query-only* tokens:
they attend to their row's attended tokens and nobody attends to them, exactly as under the
padded key mask.

Self-attention of one layer, ``out_i = softmax(scale * q_i . k_j) v_j`` over the keys ``j`` of
token ``i``'s row that are attended (and, for a sliding-window layer of half-width ``w``, with
``|col_i - col_j| <= w``; ModernBERT: ``w = local_attention // 2``), runs with one of three kernels:

- ``"varlen"``: :func:`torch.nn.attention.varlen.varlen_attn` (torch's FlashAttention-2 on
  ``cu_seqlens``; CUDA, fp16/bf16, no attention dropout). The window is passed natively as
  ``window_size=(w, w)`` where this torch's ``varlen_attn`` accepts it (torch >= 2.11; checked by
  signature), so a 128-wide window over 519 tokens computes ~1/3 of the L x L scores.
  Memory O(T * heads * head_dim). Query-only tokens: keys are gathered to the attended tokens
  (``cu_seqlens_k`` differs from ``cu_seqlens_q``), which is exact when no window binds.
- ``"flex"``: :func:`torch.nn.attention.flex_attention.flex_attention` (torch >= 2.5) with a
  block mask built directly from the offsets (document mask, key mask, window): only the
  128 x 128 tiles that intersect a row's band are visited. Compiled on CUDA; eager elsewhere
  (eager materialises the scores: tests only).
- ``"sdpa"``: rows grouped into length buckets (widths within a factor ``BUCKET_RATIO`` of each
  other); each bucket is padded to its own longest row and runs one
  :func:`torch.nn.functional.scaled_dot_product_attention` with a key mask where some key is
  hidden (and the band of a binding window). Runs everywhere and supports attention dropout.
  (One call per row on views, tried on the CPU, was 3x slower: strided inputs and outputs.)

``"auto"`` picks varlen where it can run, else flex on CUDA, else sdpa (:func:`choose_kernel`).
The layout is computed once per forward on the host (one device-to-host copy of the two masks)
and shared by every layer. On the CPU the packed encoder does not gather tokens around every
attention: each length bucket goes through all layers as one padded rectangle
(:func:`bucketed_forward`), and a batch whose computed tokens fill >= 75% of it is one rectangle
(:func:`dense_fill`): there the gathers' memory traffic costs more than the padding they save.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)

Kernel = Literal["auto", "varlen", "flex", "sdpa"]
KERNELS: tuple[str, ...] = ("auto", "varlen", "flex", "sdpa")

#: rows whose widths are within this factor of a bucket's widest row share the bucket (sdpa kernel)
BUCKET_RATIO = 0.75
#: a bucket is never split below this many rows (fewer, larger sdpa calls)
BUCKET_MIN_ROWS = 8
#: flex attention tile size
FLEX_BLOCK = 128


def dense_fill(device: torch.device) -> float:
    """Fill above which a batch runs as one rectangle (:meth:`PackedLayout.from_masks`): 0.75 on
    the CPU, 1.0 (never) on accelerators. Length-sorted ``encode`` batches are 85-100% full;
    splitting such a batch into buckets saves at most 15% of its FLOPs, and on a CPU shared with
    other work the extra, smaller parallel regions lost more than that (MiniLM, 2 threads, an 84%
    full batch: 1.12 s at best but 2.46 s median split, against 1.31 / 1.85 s whole)."""
    return 0.75 if device.type == "cpu" else 1.0


def bucketed_forward(device: torch.device) -> bool:
    """Whether the packed encoder runs the whole layer stack per length bucket (each bucket one
    padded rectangle) rather than on packed tokens with gathers around every attention: on the
    CPU, where those gathers and their memory traffic cost more than the padding left inside a
    bucket, while small GEMMs cost nothing extra (measured on MiniLM: per-layer gathers made a
    16%-padded batch 1.4x slower)."""
    return device.type == "cpu"


@functools.cache
def varlen_function() -> Callable[..., torch.Tensor] | None:
    """torch's ``varlen_attn`` where this torch has it (``None`` otherwise)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    return varlen_attn  # type: ignore[return-value]


@functools.cache
def varlen_has_window() -> bool:
    """Whether this torch's ``varlen_attn`` takes ``window_size`` (sliding-window layers)."""
    fn = varlen_function()
    return fn is not None and "window_size" in inspect.signature(fn).parameters


@functools.cache
def varlen_failure(device: torch.device, dtype: torch.dtype, windowed: bool) -> str | None:
    """Why ``varlen_attn`` fails on ``device`` (a forward and backward of 2 short rows, with a
    window when ``windowed``), or None when it works. Run once per setting: a torch whose
    signature offers a feature its kernel lacks here (e.g. a cuDNN route without windows) is
    then never chosen, instead of failing mid-training."""
    fn = varlen_function()
    if fn is None:
        return "this torch has no torch.nn.attention.varlen"
    try:  # callers may be under no_grad / inference_mode / autocast: the probe needs none of them
        with torch.inference_mode(False), torch.enable_grad(), torch.autocast(device.type, enabled=False):
            q = torch.randn(12, 2, 64, device=device, dtype=dtype, requires_grad=True)
            cu = torch.tensor([0, 5, 12], device=device, dtype=torch.int32)
            kwargs = {"window_size": (2, 2)} if windowed else {}
            fn(q, q, q, cu, cu, 7, 7, **kwargs).float().sum().backward()
    except Exception as exc:
        return f"varlen_attn failed here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return None


@functools.cache
def flex_available() -> bool:
    """Whether ``flex_attention`` and ``BlockMask.from_kv_blocks`` exist in this torch."""
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return hasattr(BlockMask, "from_kv_blocks")


@functools.cache
def _compiled_flex() -> Callable[..., torch.Tensor]:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=True)


def choose_kernel(
    preference: str,
    device: torch.device,
    dtype: torch.dtype,
    *,
    window: int | None,
    query_only: bool,
    contiguous: bool,
    dropout: float,
    head_dim: int = 64,
) -> str:
    """The kernel that runs one attention call (module docstring).

    ``window``: the half-width if it binds (some pair of tokens of a row is farther apart), else
    None; ``query_only``: some tokens are not attended; ``contiguous``: every row's tokens are
    columns ``0..n-1``. An explicit ``preference`` that cannot run here is an error. On a CUDA
    machine varlen is also probed once (:func:`varlen_failure`).
    """
    if preference not in KERNELS:
        raise ValueError(f"attention kernel must be one of {KERNELS}, got {preference!r}")
    reasons: dict[str, str] = {}
    if varlen_function() is None:
        reasons["varlen"] = "this torch has no torch.nn.attention.varlen"
    elif device.type != "cuda":
        reasons["varlen"] = "varlen_attn runs on CUDA only"
    elif dtype not in (torch.float16, torch.bfloat16):
        reasons["varlen"] = f"varlen_attn needs fp16/bf16 inputs, got {dtype}"
    elif dropout > 0:
        reasons["varlen"] = "varlen_attn has no attention dropout"
    elif window is not None and not varlen_has_window():
        reasons["varlen"] = "this torch's varlen_attn has no window_size"
    elif window is not None and (query_only or not contiguous):
        reasons["varlen"] = "a binding window with query-only tokens or holes"
    elif head_dim % 8 or head_dim > 256:
        reasons["varlen"] = (
            f"FlashAttention needs a head size that is a multiple of 8 up to 256, got {head_dim}"
        )
    elif torch.cuda.is_available() and (failure := varlen_failure(device, dtype, window is not None)):
        reasons["varlen"] = failure
    if not flex_available():
        reasons["flex"] = "this torch has no flex_attention with BlockMask.from_kv_blocks"
    elif dropout > 0:
        reasons["flex"] = "flex_attention has no attention dropout"
    elif preference == "auto" and device.type != "cuda":
        reasons["flex"] = "eager flex_attention materialises the scores (CUDA only under auto)"
    if preference == "auto":
        return next(k for k in ("varlen", "flex", "sdpa") if k not in reasons)
    if preference in reasons:
        raise ValueError(f"attention kernel {preference!r} cannot run here: {reasons[preference]}")
    return preference


@dataclass
class _Bucket:
    """Rows padded together for the sdpa kernel."""

    width: int
    rows: int
    row_ids: list[int]  # its rows of the batch, in order
    tokens: torch.Tensor | None  # packed tokens of the bucket (None: a contiguous range)
    start: int  # with tokens None: the range start
    count: int  # tokens in the bucket
    slots: torch.Tensor | None  # their flat positions in (rows * width) (None: all, in order)
    key_mask: torch.Tensor | None  # (rows, width) attended keys (None: all)
    real: torch.Tensor | None  # (rows, width) slots that hold a token (None: all)


@dataclass
class PackedLayout:
    """Where the packed tokens of a padded ``(batch, width)`` batch come from, and their offsets.

    Build with :meth:`from_masks`. Tensors named ``*_cpu`` stay on the host; the others live on
    ``device``. ``index`` = ``row * width + col`` of every packed token (row-major order).
    """

    batch: int
    width: int
    device: torch.device
    index: torch.Tensor  # (T,) long
    cols: torch.Tensor  # (T,) long: positions
    cu_seqlens: torch.Tensor  # (S + 1,) int32 over the S rows with tokens
    offsets: list[int]  # cu_seqlens on the host
    max_len: int
    max_span: int  # longest row counted to its last token's column + 1
    query_only: bool  # some packed token is not attended
    contiguous: bool  # every row's tokens are its columns 0..n-1
    rows_cpu: torch.Tensor
    cols_cpu: torch.Tensor
    lengths_cpu: torch.Tensor  # (batch,) tokens per row
    attended_cpu: torch.Tensor  # (T,) bool
    wanted: torch.Tensor | None = None  # (batch, width): positions scatter keeps (None: all computed)
    dense: bool = False  # every position of the batch is a packed token (in order)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False)

    @property
    def tokens(self) -> int:
        """Number of packed tokens."""
        return int(self.index.shape[0])

    @classmethod
    def from_masks(
        cls, computed: torch.Tensor, attended: torch.Tensor, min_fill: float | None = None
    ) -> PackedLayout | None:
        """The layout of the positions ``computed | attended`` of a ``(batch, width)`` batch, keys
        = ``attended``. ``None`` when some row has computed tokens but no attended one (nothing to
        attend to: the padded path decides what that means).

        ``min_fill`` (default :func:`dense_fill` of the device): when the computed positions fill
        at least this fraction of the batch, every position is computed (the others as query-only
        tokens, as in a padded forward) and :meth:`scatter` zeroes the extra ones: one rectangle,
        no gathers inside the layers.
        """
        device = computed.device
        # host arithmetic in numpy: microseconds, where ~20 small torch ops cost ~30 ms on a busy
        # 2-core CPU (each one a parallel region waiting for a core)
        att = attended.detach().to("cpu", torch.bool).numpy()
        comp = computed.detach().to("cpu", torch.bool).numpy() | att
        batch, width = comp.shape
        wanted = None
        fill = float(comp.mean()) if comp.size else 1.0
        if 1.0 > fill >= (dense_fill(device) if min_fill is None else min_fill):
            wanted = torch.from_numpy(comp).to(device)
            comp = np.ones_like(comp)
        lengths = comp.sum(1)
        if bool(((lengths > 0) & (att.sum(1) == 0)).any()):
            return None
        flat = np.flatnonzero(comp)
        rows, cols = flat // width, flat % width
        attended_tok = att.reshape(-1)[flat]
        spans = np.where(comp, np.arange(1, width + 1), 0).max(1) if comp.size else np.zeros(batch, np.int64)
        seq = lengths[lengths > 0]
        cu = np.zeros(seq.size + 1, dtype=np.int32)
        cu[1:] = np.cumsum(seq)
        return cls(
            batch=batch,
            width=width,
            device=device,
            index=torch.from_numpy(flat).to(device),
            cols=torch.from_numpy(cols).to(device),
            cu_seqlens=torch.from_numpy(cu).to(device),
            offsets=cu.tolist(),
            max_len=int(seq.max()) if seq.size else 0,
            max_span=int(spans.max()) if spans.size else 0,
            query_only=not bool(attended_tok.all()),
            contiguous=bool((spans == lengths).all()),
            rows_cpu=torch.from_numpy(rows),
            cols_cpu=torch.from_numpy(cols),
            lengths_cpu=torch.from_numpy(lengths.astype(np.int64)),
            attended_cpu=torch.from_numpy(attended_tok),
            wanted=wanted,
            dense=flat.size == batch * width,
        )

    # ------------------------------------------------------------------ moving tensors
    def gather(self, padded: torch.Tensor) -> torch.Tensor:
        """``(batch, width, ...)`` -> ``(T, ...)``: the packed tokens' entries."""
        flat = padded.reshape(self.batch * self.width, *padded.shape[2:])
        return flat if self.dense else flat.index_select(0, self.index)

    def scatter(self, packed: torch.Tensor) -> torch.Tensor:
        """``(T, ...)`` -> ``(batch, width, ...)`` with zeros where no token is, or none was
        asked for (differentiable)."""
        shape = (self.batch, self.width, *packed.shape[1:])
        if self.dense:
            out = packed.view(shape)
            if self.wanted is not None:
                keep = self.wanted.view(self.batch, self.width, *([1] * (packed.dim() - 1)))
                out = out.masked_fill(~keep, 0.0)
            return out
        out = packed.new_zeros(self.batch * self.width, *packed.shape[1:])
        return out.index_copy(0, self.index, packed).view(shape)

    def binding_window(self, window: int | None) -> int | None:
        """``window`` if some pair of tokens of a row is farther apart than it, else None."""
        return window if window is not None and self.max_span - 1 > window else None

    def kernel(
        self, preference: str, dtype: torch.dtype, window: int | None, dropout: float, head_dim: int = 64
    ) -> str:
        """The kernel :func:`packed_attention` runs for these settings (:func:`choose_kernel`)."""
        return choose_kernel(
            preference,
            self.device,
            dtype,
            window=self.binding_window(window),
            query_only=self.query_only,
            contiguous=self.contiguous,
            dropout=dropout,
            head_dim=head_dim,
        )

    # ------------------------------------------------------------------ kernel inputs (cached)
    def _keys(self) -> tuple[torch.Tensor, torch.Tensor, int]:
        """varlen with query-only tokens: attended tokens' packed index, their cu_seqlens, max."""
        if "keys" not in self._cache:
            index = self.attended_cpu.nonzero().squeeze(1)
            counts = torch.zeros(self.batch, dtype=torch.long).index_add_(
                0, self.rows_cpu[index], torch.ones_like(index)
            )
            counts = counts[self.lengths_cpu > 0]
            cu = torch.zeros(counts.numel() + 1, dtype=torch.int32)
            cu[1:] = counts.cumsum(0)
            self._cache["keys"] = (index.to(self.device), cu.to(self.device), int(counts.max()))
        return self._cache["keys"]

    def buckets(self) -> list[_Bucket]:
        """The sdpa kernel's row buckets (module docstring)."""
        if "buckets" in self._cache:
            return self._cache["buckets"]
        rows, cols, lengths = self.rows_cpu, self.cols_cpu, self.lengths_cpu
        spans = torch.zeros(self.batch, dtype=torch.long).scatter_reduce_(0, rows, cols + 1, "amax")
        order = sorted((r for r in range(self.batch) if int(lengths[r]) > 0), key=lambda r: -int(spans[r]))
        groups: list[list[int]] = []
        for r in order:
            if groups and (
                spans[r] >= BUCKET_RATIO * spans[groups[-1][0]] or len(groups[-1]) < BUCKET_MIN_ROWS
            ):
                groups[-1].append(r)
            else:
                groups.append([r])
        if len(groups) > 1 and len(groups[-1]) < BUCKET_MIN_ROWS:  # a few short rows join the previous bucket
            last = groups.pop()
            groups[-1].extend(last)
        starts = torch.zeros(self.batch + 1, dtype=torch.long)
        starts[1:] = lengths.cumsum(0)
        out = []
        for group in groups:
            width = int(spans[group[0]])
            group = sorted(group)  # packed order inside a bucket: one bucket needs no reordering
            local = torch.full((self.batch,), -1, dtype=torch.long)
            local[group] = torch.arange(len(group))
            tokens = torch.cat([torch.arange(int(starts[r]), int(starts[r + 1])) for r in group])
            slots = local[rows[tokens]] * width + cols[tokens]
            real = torch.zeros(len(group) * width, dtype=torch.bool)
            real[slots] = True
            keys = torch.zeros(len(group) * width, dtype=torch.bool)
            keys[slots] = self.attended_cpu[tokens]
            n = int(tokens.numel())
            in_order = bool(torch.equal(tokens, torch.arange(int(tokens[0]), int(tokens[0]) + n)))
            dense = in_order and bool(real.all())
            out.append(
                _Bucket(
                    width=width,
                    rows=len(group),
                    row_ids=group,
                    tokens=None if in_order else tokens.to(self.device),
                    start=int(tokens[0]),
                    count=n,
                    slots=None if dense else slots.to(self.device),
                    key_mask=None if bool(keys.all()) else keys.view(len(group), width).to(self.device),
                    real=None if dense else real.view(len(group), width).to(self.device),
                )
            )
        if len(out) > 1:  # the buckets' tokens, concatenated, back in packed order
            self._cache["inverse"] = (
                torch.cat(
                    [
                        b.tokens if b.tokens is not None else torch.arange(b.start, b.start + b.count)
                        for b in out
                    ]
                )
                .argsort()
                .to(self.device)
            )
        self._cache["buckets"] = out
        return out

    def bucket_inverse(self) -> torch.Tensor:
        """Indices putting the buckets' tokens, concatenated, back in packed order."""
        self.buckets()
        return self._cache["inverse"]

    def flex_mask(self, window: int | None) -> Any:
        """The flex-attention ``BlockMask`` of this layout (keys, rows, ``window``), and the padded
        token count it covers."""
        key = ("flex", window)
        if key not in self._cache:
            self._cache[key] = _flex_block_mask(self, window)
        return self._cache[key]


def _flex_block_mask(layout: PackedLayout, window: int | None) -> tuple[Any, int]:
    """A ``BlockMask`` over ``T`` padded to a multiple of :data:`FLEX_BLOCK`, built from the offsets:
    query tile ``i`` visits the key tiles spanning the rows its tokens belong to (intersected with
    ``window`` tokens either side); the mask function then checks row, key and window per pair."""
    from torch.nn.attention.flex_attention import BlockMask

    t = layout.tokens
    blocks = max(1, -(-t // FLEX_BLOCK))
    padded = blocks * FLEX_BLOCK
    nonempty = layout.lengths_cpu > 0
    seq_of_row = nonempty.long().cumsum(0) - 1
    n_seq = int(nonempty.sum())
    seq = torch.full((padded,), n_seq, dtype=torch.long)  # padding: a row of its own
    seq[:t] = seq_of_row[layout.rows_cpu]
    pos = torch.zeros(padded, dtype=torch.long)
    pos[:t] = layout.cols_cpu
    key_ok = torch.zeros(padded, dtype=torch.bool)
    key_ok[:t] = layout.attended_cpu
    cu = torch.cat([layout.cu_seqlens.cpu().long(), torch.tensor([padded])])
    first = seq[torch.arange(blocks) * FLEX_BLOCK]
    last = seq[torch.clamp(torch.arange(blocks) * FLEX_BLOCK + FLEX_BLOCK - 1, max=padded - 1)]
    lo_tok, hi_tok = cu[first], cu[last + 1] - 1
    if window is not None:
        starts = torch.arange(blocks) * FLEX_BLOCK
        lo_tok = torch.maximum(lo_tok, starts - window)
        hi_tok = torch.minimum(hi_tok, starts + FLEX_BLOCK - 1 + window)
    lo, hi = lo_tok.clamp(min=0) // FLEX_BLOCK, hi_tok.clamp(max=padded - 1) // FLEX_BLOCK
    count = (hi - lo + 1).clamp(min=1)
    # one column per key tile, as create_block_mask makes them (entries past ``count`` unused)
    indices = (lo[:, None] + torch.arange(blocks)[None, :]).clamp(max=blocks - 1)
    device = layout.device
    seq_d, pos_d, key_d = seq.to(device), pos.to(device), key_ok.to(device)

    def mask_mod(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        same = (seq_d[q_idx] == seq_d[kv_idx]) & key_d[kv_idx]
        if window is not None:
            same = same & ((pos_d[q_idx] - pos_d[kv_idx]).abs() <= window)
        return same

    mask = BlockMask.from_kv_blocks(
        count.to(torch.int32)[None, None].to(device),
        indices.to(torch.int32)[None, None].to(device),
        BLOCK_SIZE=FLEX_BLOCK,
        mask_mod=mask_mod,
        seq_lengths=(padded, padded),
    )
    return mask, padded


# ---------------------------------------------------------------------------- kernels


def packed_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PackedLayout,
    *,
    window: int | None = None,
    dropout: float = 0.0,
    scale: float | None = None,
    kernel: str = "auto",
) -> torch.Tensor:
    """Self-attention of packed tokens: ``q``, ``k``, ``v`` of shape ``(T, heads, head_dim)`` ->
    ``(T, heads, head_dim)``; each token attends to the attended tokens of its own row (within
    ``window`` positions either side when given), softmax scale ``scale`` (default
    ``head_dim ** -0.5``), attention dropout ``dropout`` (the sdpa kernel only)."""
    window = layout.binding_window(window)
    name = layout.kernel(kernel, q.dtype, window, dropout, q.shape[-1])
    if name == "varlen":
        return _varlen((q, k, v), layout, window, scale)
    if name == "flex":
        return _flex((q, k, v), layout, window, scale)
    return _sdpa_buckets((q, k, v), layout, window, dropout, scale)


QKV = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _varlen(qkv: QKV, layout: PackedLayout, window: int | None, scale: float | None) -> torch.Tensor:
    q, k, v = qkv
    fn = varlen_function()
    assert fn is not None
    cu_k, max_k = layout.cu_seqlens, layout.max_len
    if layout.query_only:
        index, cu_k, max_k = layout._keys()
        k, v = k.index_select(0, index), v.index_select(0, index)
    kwargs: dict[str, Any] = {"scale": scale}
    if window is not None:
        kwargs["window_size"] = (window, window)
    return fn(
        q.contiguous(),
        k.contiguous(),
        v.contiguous(),
        layout.cu_seqlens,
        cu_k,
        layout.max_len,
        max_k,
        **kwargs,
    )


def _flex(qkv: QKV, layout: PackedLayout, window: int | None, scale: float | None) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    q, k, v = qkv
    mask, padded = layout.flex_mask(window)
    t = q.shape[0]

    def prep(x: torch.Tensor) -> torch.Tensor:  # (T, H, D) -> (1, H, padded, D)
        return F.pad(x, (0, 0, 0, 0, 0, padded - t)).transpose(0, 1).unsqueeze(0)

    fn: Any = _compiled_flex() if q.device.type == "cuda" else flex_attention
    out = fn(prep(q), prep(k), prep(v), block_mask=mask, scale=scale)
    return out[0].transpose(0, 1)[:t]


def _sdpa_buckets(
    qkv: QKV, layout: PackedLayout, window: int | None, dropout: float, scale: float | None
) -> torch.Tensor:
    q, k, v = qkv
    heads, dim = q.shape[1], q.shape[2]
    parts = []
    for b in layout.buckets():

        def padded(x: torch.Tensor, b: _Bucket = b) -> torch.Tensor:  # (T, H, D) -> (rows, H, width, D)
            x = x.index_select(0, b.tokens) if b.tokens is not None else x[b.start : b.start + b.count]
            if b.slots is not None:
                x = x.new_zeros(b.rows * b.width, heads, dim).index_copy(0, b.slots, x)
            return x.view(b.rows, b.width, heads, dim).transpose(1, 2)

        mask = _bucket_mask(b, window, q.device)
        out = F.scaled_dot_product_attention(
            padded(q), padded(k), padded(v), attn_mask=mask, dropout_p=dropout, scale=scale
        )
        out = out.transpose(1, 2).reshape(b.rows * b.width, heads, dim)
        parts.append(out.index_select(0, b.slots) if b.slots is not None else out)
    if len(parts) == 1:
        return parts[0]
    return torch.cat(parts).index_select(0, layout.bucket_inverse())


def _bucket_mask(b: _Bucket, window: int | None, device: torch.device) -> torch.Tensor | None:
    """(rows, 1, width, width) or broadcastable: attended keys, within ``window`` for real queries;
    slots without a token see every attended key of their row (no fully masked row)."""
    keys = None if b.key_mask is None else b.key_mask[:, None, None, :]
    if window is None:
        return keys
    pos = torch.arange(b.width, device=device)
    band = ((pos[:, None] - pos[None, :]).abs() <= window)[None, None]
    mask = band if keys is None else band & keys
    if b.real is not None:
        loose = torch.ones_like(band) if keys is None else keys.expand(-1, -1, b.width, -1)
        mask = torch.where(b.real[:, None, :, None], mask, loose)
    return mask
