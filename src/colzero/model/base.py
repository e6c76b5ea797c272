"""What ColBERT and DenseModel share: backbone + tokenizer loading, input checks, batching."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib.util
import itertools
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from colzero.model.attention import PackedLayout, bucketed_forward
from colzero.model.config import ROLES, ColBERTConfig, DenseConfig, Role
from colzero.model.folder import FolderDescription, ModelLoadError
from colzero.model.packed import packed_architecture, packed_hidden_states
from colzero.model.precision import Precision, autocast, resolve_precision

logger = logging.getLogger(__name__)


FLASH_ATTENTION_2 = "flash_attention_2"

#: settings that choose how the vectors are computed, not what they are (left out of the fingerprint)
RUNTIME_KEYS = frozenset({"attn_implementation", "packing", "residual_precision"})


def flash_attention_missing() -> list[str]:
    """Why ``attn_implementation="flash_attention_2"`` cannot run here (empty: it can)."""
    missing = []
    if importlib.util.find_spec("flash_attn") is None:
        missing.append("the flash_attn package is not installed")
    if not torch.cuda.is_available():
        missing.append("no CUDA device is available")
    return missing


def check_attn_implementation(value: str | None) -> None:
    """Raise a clear error when ``value`` is FlashAttention-2 and it cannot run here."""
    if value == FLASH_ATTENTION_2 and (missing := flash_attention_missing()):
        raise ValueError(
            f"attn_implementation={value!r} was requested but {' and '.join(missing)}; "
            "use 'sdpa' or 'eager' (with flash_attention_compat=True for a model trained with FlashAttention)"
        )


def usable_attn_implementation(resolved: str | None, explicit: str | None, where: object) -> str | None:
    """``resolved`` (explicit > saved > default), except that a *saved* FlashAttention-2 setting
    falls back to ``"sdpa"`` with a warning where FlashAttention cannot run."""
    if resolved == FLASH_ATTENTION_2 and explicit is None and (missing := flash_attention_missing()):
        logger.warning(
            "%s: saved attn_implementation='flash_attention_2' but %s; using 'sdpa' "
            "(vectors match FlashAttention's only with flash_attention_compat=True)",
            where,
            " and ".join(missing),
        )
        return "sdpa"
    return resolved


def apply_attn_implementation(backbone: PreTrainedModel, value: str | None) -> None:
    """Switch an in-memory backbone to the attention backend ``value`` (``None``: leave it)."""
    if value is None or getattr(backbone.config, "_attn_implementation", None) == value:
        return
    check_attn_implementation(value)
    if hasattr(backbone, "set_attn_implementation"):
        backbone.set_attn_implementation(value)
    else:  # transformers < 4.56: the attention modules read the config at call time
        backbone.config._attn_implementation = value


def load_backbone(
    desc: FolderDescription, attn_implementation: str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load the transformers encoder and tokenizer found in a model folder."""
    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        check_attn_implementation(attn_implementation)
        kwargs["attn_implementation"] = attn_implementation
    try:
        config = AutoConfig.from_pretrained(desc.backbone_dir)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"{desc.backbone_dir / 'config.json'}: cannot read backbone config ({exc})"
        ) from exc
    weights = [p for p in ("model.safetensors", "pytorch_model.bin") if (desc.backbone_dir / p).exists()]
    sharded = list(desc.backbone_dir.glob("model.safetensors.index.json"))
    if not weights and not sharded:
        raise ModelLoadError(
            f"{desc.backbone_dir / 'model.safetensors'}: file is missing (the backbone weights)"
        )
    try:
        backbone = AutoModel.from_pretrained(desc.backbone_dir, config=config, **kwargs)
    except Exception as exc:
        raise ModelLoadError(
            f"{desc.backbone_dir / weights[0] if weights else desc.backbone_dir}: cannot load backbone ({exc})"
        ) from exc
    try:
        tokenizer = AutoTokenizer.from_pretrained(desc.backbone_dir)
    except Exception as exc:
        raise ModelLoadError(f"{desc.backbone_dir}: cannot load tokenizer files ({exc})") from exc
    if getattr(tokenizer, "is_fast", False) is False:
        raise ModelLoadError(f"{desc.backbone_dir}: a fast (tokenizers) tokenizer is required")
    return backbone, tokenizer


def check_texts(texts: Any) -> tuple[list[str], bool]:
    """Validate encode input; returns (texts, was_single_string)."""
    if isinstance(texts, str):
        return [texts], True
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a string or a sequence of strings, got {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, expected str")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        logger.warning(
            "%d of %d texts are empty or whitespace (positions %s); they encode to the special tokens only",
            len(empty),
            len(texts),
            ", ".join(map(str, empty[:5])) + (", ..." if len(empty) > 5 else ""),
        )
    return list(texts), False


def check_role(role: str) -> Role:
    """``role`` if it is ``"query"`` or ``"document"``, else a ValueError."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    return role


@dataclass
class TokenizedBatch:
    """Token ids of one batch, dynamically padded, plus where each row sits in the input.

    ``attended``: each row's attended tokens, counted on the host when the batch was built (None
    when unknown); losses read it without a device synchronisation."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor | None
    positions: list[int]
    attended: list[int] | None = None

    def to(self, device: torch.device, non_blocking: bool = False) -> TokenizedBatch:
        """The same batch on ``device``."""
        return self.replace_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def replace_tensors(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> TokenizedBatch:
        """The same batch with ``fn`` applied to each tensor (moved, pinned)."""
        types = None if self.token_type_ids is None else fn(self.token_type_ids)
        return TokenizedBatch(
            fn(self.input_ids), fn(self.attention_mask), types, self.positions, self.attended
        )

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def select(self, rows: slice | list[int] | torch.Tensor) -> TokenizedBatch:
        """A subset of rows (same width: query expansion positions are unattended yet scored)."""
        types = None if self.token_type_ids is None else self.token_type_ids[rows]
        ids = self.input_ids[rows]
        attended = None
        if self.attended is not None and isinstance(rows, slice):
            attended = self.attended[rows]
        elif self.attended is not None and isinstance(rows, list):
            attended = [self.attended[i] for i in rows]
        return TokenizedBatch(ids, self.attention_mask[rows], types, list(range(ids.shape[0])), attended)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The keyword arguments of the model's ``forward``."""
        inputs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.token_type_ids is not None:
            inputs["token_type_ids"] = self.token_type_ids
        return inputs


@dataclass(frozen=True)
class RowLayout:
    """How one role's token ids (``[CLS] ... [SEP]``, at most ``id_budget`` of them) become batch rows.

    ``marker`` (the ColBERT ``[Q] ``/``[D] `` token), when set, goes right after the first id. Rows are
    padded with ``pad_id`` to the longest row, or to ``width`` when that is larger (ColBERT query
    expansion); padding is attended with ``fill_attention`` up to ``width`` and not at all beyond.
    """

    id_budget: int
    pad_id: int
    marker: int | None = None
    width: int = 0
    fill_attention: int = 0

    def batch(self, rows: list[list[int]], positions: list[int], token_types: bool = False) -> TokenizedBatch:
        """``rows`` as one padded batch: int64 ids and attention of shape (rows, width)."""
        if not rows:
            raise ValueError("cannot pad an empty batch")
        lengths = np.fromiter(map(len, rows), np.int64, len(rows))
        extra = int(self.marker is not None)
        if extra and int(lengths.min()) == 0:
            raise ValueError("a row without tokens has no first token to put the marker after")
        own = lengths + extra
        width = max(int(own.max()), self.width)
        columns = np.arange(width)
        used = columns < own[:, None]
        # one flat copy and a masked fill: per-row tensors cost ~7x more on the workers' critical path
        ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        flat = np.fromiter(itertools.chain.from_iterable(rows), np.int64, int(lengths.sum()))
        if self.marker is not None:
            fill = used.copy()
            fill[:, 1] = False
            ids[fill] = flat
            ids[:, 1] = self.marker
        else:
            ids[used] = flat
        attention = used.astype(np.int64)
        if self.fill_attention:
            attention[:, : self.width] = 1
        input_ids = torch.from_numpy(ids)
        types = torch.zeros_like(input_ids) if token_types else None
        return TokenizedBatch(
            input_ids, torch.from_numpy(attention), types, positions, attention.sum(1).tolist()
        )


class EncoderBase(nn.Module):
    """A transformers backbone and its tokenizer, with length-sorted batched encoding."""

    #: texts tokenized and sorted together; bounds memory for very large inputs
    sort_window: int = 16384
    #: the settings that define the vectors (set by the subclass)
    config: ColBERTConfig | DenseConfig

    def __init__(self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self._uses_token_type_ids = "token_type_ids" in tokenizer.model_input_names

    @property
    def device(self) -> torch.device:
        """Where the weights are."""
        return next(self.parameters()).device

    def fingerprint(self) -> str:
        """A short hash of the settings and weights that determine the vectors.

        sha256 over the config (without :data:`RUNTIME_KEYS`) and, per weight tensor in name
        order, its name, shape and every ``numel // 4096``-th value; 16 hex digits.
        """
        settings = {k: v for k, v in dataclasses.asdict(self.config).items() if k not in RUNTIME_KEYS}
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
        for name, tensor in sorted(self.state_dict().items()):
            t = tensor.detach().float().cpu().flatten()
            h.update(name.encode())
            h.update(str(tuple(tensor.shape)).encode())
            h.update(t[:: max(1, t.numel() // 4096)].numpy().tobytes())
        return h.hexdigest()[:16]

    @property
    def hidden_size(self) -> int:
        """Width of the backbone's hidden states."""
        return int(self.backbone.config.hidden_size)

    def _with_prompt(self, texts: list[str], role: Role, prompt: str | None) -> list[str]:
        """``texts`` behind the role's prompt: the config's for ``prompt=None``, none for ``""``."""
        prompt = self.config.prompt_for(role) if prompt is None else prompt
        return [prompt + t for t in texts] if prompt else texts

    def _last_hidden_state(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """The backbone's last hidden states (batch, length, hidden)."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.backbone(**inputs).last_hidden_state

    def packed_architecture(self) -> tuple[str | None, str]:
        """``(runner, reason)``: which packed runner serves this backbone (``None``: the padded
        transformers forward, and why); see :mod:`colzero.model.packed`."""
        if self.config.packing == "off":
            return None, "packing is off"
        return packed_architecture(self.backbone)

    def _token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        computed: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, PackedLayout | None]:
        """Last hidden states of the positions ``computed`` (default: the attended ones; attended
        positions are always computed, as keys).

        Packed encoder (``config.packing != "off"`` and a supported backbone): ``(T, hidden)`` for
        the ``T`` computed tokens, with their :class:`PackedLayout`. Otherwise the padded
        transformers output ``(batch, length, hidden)`` (every position computed) and ``None``.
        """
        runner, reason = self.packed_architecture()
        if runner is None:
            self._log_fallback(reason)
            return self._last_hidden_state(input_ids, attention_mask, token_type_ids), None
        attended = attention_mask.bool()
        layout = PackedLayout.from_masks(attended if computed is None else computed, attended)
        if layout is None:  # a row with scored positions but nothing attended: as transformers does
            return self._last_hidden_state(input_ids, attention_mask, token_type_ids), None
        if layout.dense and bucketed_forward(layout.device) and self.config.residual_precision == "fp32":
            # one rectangle on the CPU: transformers' own forward computes exactly it, without the
            # packed runner's overhead (measured 2-4% on SciFact encoding, whose sorted batches are full)
            return self._last_hidden_state(input_ids, attention_mask, token_type_ids), None
        kernel = "auto" if self.config.packing == "auto" else self.config.packing
        states = packed_hidden_states(
            self.backbone,
            input_ids,
            token_type_ids,
            layout,
            kernel=kernel,
            residual="half" if self.config.residual_precision == "autocast" else "fp32",
            architecture=runner,
        )
        return states, layout

    def _log_fallback(self, reason: str) -> None:
        """Say once per model why the padded forward runs."""
        seen: set[str] = self.__dict__.setdefault("_fallback_logged", set())
        if reason not in seen:
            seen.add(reason)
            level = logging.WARNING if self.config.packing not in ("auto", "off") else logging.INFO
            logger.log(level, "padded encoder: %s", reason)

    # ------------------------------------------------------------------ tokenisation
    def row_layout(self, role: Role) -> RowLayout:
        """How ``role``'s token ids become a batch row (set by the subclass)."""
        raise NotImplementedError

    def _truncating_backend(self, max_length: int) -> Any | None:
        """The fast tokenizer's Rust ``tokenizers.Tokenizer`` set up exactly as
        ``tokenizer(texts, truncation=True, max_length=max_length)`` sets it (no padding), or ``None``
        for a slow tokenizer.

        One copy per setting, made once: calling the backend directly gives the same ids without the
        per-row dicts and ``BatchEncoding`` of the Python wrapper, and never reconfigures the shared
        tokenizer. Keyed by the vocabulary size too, so tokens added later get a fresh copy.
        """
        tok = self.tokenizer
        backend = getattr(tok, "backend_tokenizer", None) if getattr(tok, "is_fast", False) else None
        if backend is None:
            return None
        split = bool(getattr(tok, "split_special_tokens", False))
        side = tok.truncation_side
        key = (max_length, backend.get_vocab_size(with_added_tokens=True), side, split)
        cache: dict[tuple[Any, ...], Any] = self.__dict__.setdefault("_backends", {})
        found = cache.get(key)
        if found is None:
            found = copy.deepcopy(backend)
            found.enable_truncation(max_length, stride=0, strategy="longest_first", direction=side)
            found.no_padding()
            if hasattr(found, "encode_special_tokens"):
                found.encode_special_tokens = split
            cache[key] = found
        return found

    def _token_ids(self, texts: list[str], max_length: int) -> list[list[int]]:
        """Token ids with [CLS]/[SEP] per text (stripped), truncated to ``max_length``; no padding."""
        stripped = [t.strip() for t in texts]
        backend = self._truncating_backend(max_length)
        if backend is None:
            enc = self.tokenizer(stripped, truncation=True, max_length=max_length, add_special_tokens=True)
            encodings, ids = enc.encodings or [], enc["input_ids"]
        else:
            # the same ids without tracking character offsets (~15% less CPU; newer tokenizers have it)
            encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
            encodings = encode(stripped, add_special_tokens=True)
            ids = [e.ids for e in encodings]
        if logger.isEnabledFor(logging.DEBUG):
            truncated = sum(1 for e in encodings if e.overflowing)
            logger.debug("%d of %d texts truncated to %d tokens", truncated, len(texts), max_length)
        return ids

    def tokenize(self, texts: list[str], role: Role, prompt: str | None = None) -> TokenizedBatch:
        """One padded batch in input order (no sorting), e.g. for training collation: the role's
        prompt (the config's for ``prompt=None``, none for ``""``), then :meth:`row_layout`."""
        layout = self.row_layout(role)
        texts = self._with_prompt(list(texts), role, prompt)
        return layout.batch(
            self._token_ids(texts, layout.id_budget), list(range(len(texts))), self._uses_token_type_ids
        )

    def _sorted_batches(self, texts: list[str], batch_size: int, role: Role) -> Iterator[TokenizedBatch]:
        """Batches of similar length (longest first), each padded only to its own longest row."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        layout = self.row_layout(role)
        for start in range(0, len(texts), self.sort_window):
            window = texts[start : start + self.sort_window]
            ids = self._token_ids(window, layout.id_budget)
            order = sorted(range(len(window)), key=lambda i: -len(ids[i]))
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                yield layout.batch([ids[i] for i in idx], [start + i for i in idx], self._uses_token_type_ids)

    def _run_batches(
        self,
        texts: list[str],
        batch_size: int,
        role: Role,
        embed: Callable[[TokenizedBatch], Sequence[Any]],
        precision: Precision,
        show_progress: bool,
        desc: str,
    ) -> list[Any]:
        """Run ``embed(batch)`` over length-sorted batches; results back in input order."""
        device = self.device
        mode = resolve_precision(precision, device)
        results: list[Any] = [None] * len(texts)
        was_training = self.training
        self.eval()
        try:
            with (
                torch.inference_mode(),
                autocast(device, mode),
                tqdm(total=len(texts), desc=desc, disable=not show_progress, unit="text") as bar,
            ):
                for batch in self._sorted_batches(texts, batch_size, role):
                    out = embed(batch.to(device))
                    for row, pos in enumerate(batch.positions):
                        results[pos] = out[row]
                    bar.update(len(batch.positions))
        finally:
            self.train(was_training)
        return results
