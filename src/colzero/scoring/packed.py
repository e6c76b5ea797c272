"""Multi-vector embeddings of many texts, packed and padded.

:class:`PackedEmbeddings` holds every text's token vectors in one flat ``(tokens, dim)`` matrix and
the ``offsets`` (``n + 1``, int64) that cut it: text ``i`` owns rows ``offsets[i]:offsets[i + 1]``.
No padding is stored (the idea of Stanford ColBERT's ``StridedTensor``). Scoring needs rectangles,
so :meth:`PackedEmbeddings.padded` builds a :class:`PaddedEmbeddings` for a subset of texts,
padded to that subset's longest text only, and :meth:`PackedEmbeddings.groups` walks the texts in
length-sorted groups so the padding stays small.

A single-vector corpus (one vector per text, as a dense model writes) is the packed case where
every length is 1: ``PackedEmbeddings(vectors)`` with no offsets.

Two paddings (``fill``): ``"zeros"`` (pad positions hold 0) and ``"last"`` (pad positions repeat
the text's last real vector). Both return the mask of real positions. ``"last"`` serves MaxSim:
the max over a document's tokens is unchanged by repeating one of them, so the scorer may skip
its masking pass (pass a mask that is True on every position of a non-empty document).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

Fill = Literal["zeros", "last"]
ArrayLike = torch.Tensor | np.ndarray


@dataclass
class PaddedEmbeddings:
    """Token vectors padded to a common length; ``mask`` marks the positions that score."""

    embeddings: torch.Tensor  # (n, length, dim)
    mask: torch.Tensor  # (n, length) bool

    def __len__(self) -> int:
        return self.embeddings.shape[0]


def pad_embeddings(vectors: Sequence[torch.Tensor]) -> PaddedEmbeddings:
    """Stack per-text token matrices (length_i, dim) into a padded tensor (zeros) and its mask."""
    if not vectors:
        raise ValueError("pad_embeddings needs at least one matrix")
    return PackedEmbeddings.from_list(vectors).padded(fill="zeros")


def as_tensor(array: ArrayLike) -> torch.Tensor:
    """A tensor sharing ``array``'s memory (a read-only memory map included: it is never written)."""
    if isinstance(array, torch.Tensor):
        return array
    if not array.flags.writeable:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            return torch.from_numpy(array)
    return torch.from_numpy(np.ascontiguousarray(array))


class PackedEmbeddings:
    """Token vectors of ``n`` texts in one ``(tokens, dim)`` matrix cut by ``offsets`` (``n + 1``).

    ``vectors`` may be a memory-mapped array (see :meth:`load`); only the rows a method touches
    are read. Nothing is copied at construction when the inputs are already tensors or arrays of
    a torch dtype.
    """

    __slots__ = ("offsets", "vectors")

    def __init__(self, vectors: ArrayLike, offsets: ArrayLike | None = None) -> None:
        vecs = as_tensor(vectors)
        if vecs.dim() != 2:
            raise ValueError(f"vectors must be (tokens, dim), got shape {tuple(vecs.shape)}")
        if offsets is None:
            offs = torch.arange(vecs.shape[0] + 1, dtype=torch.long, device=vecs.device)
        else:
            offs = as_tensor(np.asarray(offsets) if not isinstance(offsets, torch.Tensor) else offsets)
            offs = offs.to(device=vecs.device, dtype=torch.long)
            if offs.dim() != 1 or len(offs) < 1:
                raise ValueError(f"offsets must be 1-D with n + 1 >= 1 entries, got {tuple(offs.shape)}")
            if int(offs[0]) != 0 or int(offs[-1]) != vecs.shape[0]:
                raise ValueError(
                    f"offsets must start at 0 and end at the token count {vecs.shape[0]}, "
                    f"got {int(offs[0])} .. {int(offs[-1])}"
                )
            if bool((offs[1:] < offs[:-1]).any()):
                raise ValueError("offsets must be non-decreasing")
        self.vectors = vecs
        self.offsets = offs

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_list(cls, matrices: Sequence[ArrayLike], *, dim: int | None = None) -> PackedEmbeddings:
        """Pack per-text ``(length_i, dim)`` matrices (one copy); ``dim`` is needed for an empty list."""
        tensors = [as_tensor(m) for m in matrices]
        if not tensors:
            if dim is None:
                raise ValueError("an empty list of matrices needs dim=")
            return cls(torch.zeros((0, dim)), torch.zeros(1, dtype=torch.long))
        for i, t in enumerate(tensors):
            if t.dim() != 2 or t.shape[1] != tensors[0].shape[1]:
                raise ValueError(
                    f"matrix {i} has shape {tuple(t.shape)}; expected (length, {tensors[0].shape[1]})"
                )
        lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long)
        offsets = torch.zeros(len(tensors) + 1, dtype=torch.long)
        torch.cumsum(lengths, 0, out=offsets[1:])
        return cls(torch.cat(tensors), offsets.to(tensors[0].device))

    @classmethod
    def from_lengths(cls, vectors: ArrayLike, lengths: ArrayLike) -> PackedEmbeddings:
        """Packed vectors from flat ``(tokens, dim)`` vectors and per-document token counts."""
        lens = torch.as_tensor(np.asarray(lengths) if not isinstance(lengths, torch.Tensor) else lengths)
        offsets = torch.zeros(len(lens) + 1, dtype=torch.long)
        torch.cumsum(lens.long().cpu(), 0, out=offsets[1:])
        return cls(vectors, offsets)

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __repr__(self) -> str:
        return (
            f"PackedEmbeddings(n={len(self)}, tokens={self.vectors.shape[0]}, dim={self.dim}, "
            f"dtype={self.vectors.dtype}, device={self.vectors.device})"
        )

    @property
    def dim(self) -> int:
        """Vector width."""
        return int(self.vectors.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """Vector dtype."""
        return self.vectors.dtype

    @property
    def device(self) -> torch.device:
        """Where the vectors are."""
        return self.vectors.device

    @property
    def lengths(self) -> torch.Tensor:
        """Tokens per text, ``(n,)`` int64."""
        return self.offsets[1:] - self.offsets[:-1]

    def is_single_vector(self) -> bool:
        """True when every text has exactly one vector (a dense corpus)."""
        return self.vectors.shape[0] == len(self) and bool((self.lengths == 1).all())

    def doc(self, i: int) -> torch.Tensor:
        """Text ``i``'s ``(length_i, dim)`` token matrix (a view)."""
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"text {i} out of range for {n} texts")
        i %= n
        return self.vectors[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (self.doc(i) for i in range(len(self)))

    def padded(
        self,
        rows: ArrayLike | Sequence[int] | None = None,
        *,
        fill: Fill = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        min_width: int = 0,
        out: torch.Tensor | None = None,
    ) -> PaddedEmbeddings:
        """``rows``' texts (default: all) padded to the longest of them: ``(len(rows), width, dim)``.

        ``width`` = max(longest length, ``min_width``). The gather runs where the vectors live (one
        ``index_select``); the result is then moved to ``device`` / cast to ``dtype``. Empty texts
        get zero rows and an all-False mask row. ``out``: a flat buffer ``(>= len(rows) * width,
        dim)`` of the vectors' dtype and device to gather into (no fresh allocation: the result
        may alias it, so it is only valid until the buffer is reused).
        """
        if fill not in ("zeros", "last"):
            raise ValueError(f"fill must be 'zeros' or 'last', got {fill!r}")
        home = self.offsets.device
        if rows is None:
            idx = torch.arange(len(self), device=home)
        else:
            idx = torch.as_tensor(rows if not isinstance(rows, np.ndarray) else as_tensor(rows))
            idx = idx.to(device=home, dtype=torch.long).reshape(-1)
        starts = self.offsets[idx]
        lens = self.offsets[idx + 1] - starts
        width = max(int(lens.max()) if len(idx) else 0, min_width)
        steps = torch.arange(width, device=home)
        mask = steps[None, :] < lens[:, None]
        last = (lens - 1).clamp(min=0)
        pos = starts[:, None] + torch.minimum(steps[None, :], last[:, None])
        pos = pos.clamp_(max=max(0, self.vectors.shape[0] - 1)).reshape(-1)
        if self.vectors.shape[0] == 0:
            emb = self.vectors.new_zeros((len(idx), width, self.dim))
        elif out is not None and out.shape[0] >= len(pos):
            emb = torch.index_select(self.vectors, 0, pos, out=out[: len(pos)])
            emb = emb.view(len(idx), width, self.dim)
        else:
            emb = self.vectors.index_select(0, pos).view(len(idx), width, self.dim)
        if fill == "zeros":
            emb.masked_fill_(~mask[..., None], 0)
        elif bool((lens == 0).any()):
            emb.masked_fill_((lens == 0)[:, None, None], 0)
        target = torch.device(device) if device is not None else emb.device
        emb = emb.to(device=target, dtype=dtype or emb.dtype, non_blocking=True)
        return PaddedEmbeddings(emb, mask.to(target))

    def length_order(self) -> torch.Tensor:
        """Text indices by decreasing length (ties: smaller index first)."""
        return torch.sort(self.lengths, descending=True, stable=True).indices

    def groups(
        self,
        size: int,
        *,
        fill: Fill = "last",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        reuse_buffer: bool = False,
    ) -> Iterator[tuple[torch.Tensor, PaddedEmbeddings]]:
        """``(rows, padded)`` for groups of ``size`` texts of similar length (longest first).

        Every text appears in exactly one group; each group is padded to its own longest text,
        so the padding is small once the texts are sorted. ``reuse_buffer``: gather every group
        into one buffer (no allocation per group); a group is then valid only until the next.
        """
        if size < 1:
            raise ValueError(f"group size must be >= 1, got {size}")
        order = self.length_order()
        buffer = None
        if reuse_buffer and len(order):
            longest = max(1, int(self.lengths.max()))
            buffer = self.vectors.new_empty((min(size, len(order)) * longest, self.dim))
        for start in range(0, len(order), size):
            rows = order[start : start + size]
            yield rows, self.padded(rows, fill=fill, device=device, dtype=dtype, min_width=1, out=buffer)

    # ------------------------------------------------------------------ device, storage
    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> PackedEmbeddings:
        """The same documents with the vectors moved / cast (offsets follow the device)."""
        return PackedEmbeddings(
            self.vectors.to(device=device, dtype=dtype or self.vectors.dtype),
            self.offsets.to(device=device),
        )

    def save(self, folder: str | os.PathLike[str]) -> None:
        """Write ``vectors.npy`` and ``offsets.npy`` into ``folder`` (the caller makes it atomic)."""
        folder = Path(folder)
        np.save(folder / "vectors.npy", self.vectors.detach().cpu().numpy())
        np.save(folder / "offsets.npy", self.offsets.cpu().numpy())

    @classmethod
    def load(cls, folder: str | os.PathLike[str], *, mmap: bool = True) -> PackedEmbeddings:
        """Read :meth:`save`'s files; the vectors are memory-mapped (read-only) unless ``mmap=False``.

        A folder without ``offsets.npy`` holds one vector per text.
        """
        folder = Path(folder)
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if mmap else None)
        offsets_path = folder / "offsets.npy"
        offsets = np.load(offsets_path) if offsets_path.is_file() else None
        return cls(vectors, offsets)


class PackedBuilder:
    """Appends texts to one growing packed matrix (capacity doubles), so packing texts a batch at
    a time copies each vector O(1) times amortised; :meth:`packed` is a view, not a copy."""

    def __init__(
        self, dim: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
    ) -> None:
        self._vectors = torch.empty((0, dim), dtype=dtype, device=device)
        self._offsets = torch.zeros(1, dtype=torch.long, device=device)
        self._tokens = 0
        self._texts = 0

    def __len__(self) -> int:
        return self._texts

    @staticmethod
    def _grow(buffer: torch.Tensor, need: int) -> torch.Tensor:
        if need <= buffer.shape[0]:
            return buffer
        bigger = buffer.new_empty((max(need, 2 * buffer.shape[0]), *buffer.shape[1:]))
        bigger[: buffer.shape[0]] = buffer
        return bigger

    def extend(self, matrices: Sequence[ArrayLike]) -> range:
        """Append ``(length_i, dim)`` matrices; returns their text indices."""
        tensors = [as_tensor(m) for m in matrices]
        dim = self._vectors.shape[1]
        for i, t in enumerate(tensors):
            if t.dim() != 2 or t.shape[1] != dim:
                raise ValueError(f"matrix {i} has shape {tuple(t.shape)}; expected (length, {dim})")
        if not tensors:
            return range(self._texts, self._texts)
        lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.long, device=self._offsets.device)
        added = int(lengths.sum())
        self._vectors = self._grow(self._vectors, self._tokens + added)
        self._offsets = self._grow(self._offsets, self._texts + len(tensors) + 1)
        if added:
            target = self._vectors[self._tokens : self._tokens + added]
            torch.cat([t.to(target.device, target.dtype) for t in tensors], out=target)
        ends = self._tokens + torch.cumsum(lengths, 0)
        self._offsets[self._texts + 1 : self._texts + len(tensors) + 1] = ends
        first = self._texts
        self._tokens += added
        self._texts += len(tensors)
        return range(first, self._texts)

    def packed(self) -> PackedEmbeddings:
        """The texts so far (views of the buffers: valid until the next :meth:`extend`)."""
        return PackedEmbeddings(self._vectors[: self._tokens], self._offsets[: self._texts + 1])
