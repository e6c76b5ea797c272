"""Residual compression of token vectors (ColBERTv2 / PLAID style).

A token vector ``v`` (L2-normalised, ``dim`` floats) is stored as

- ``code``: the id of its nearest centroid (spherical k-means on a sample of token vectors, faiss);
- ``residual``: ``v - centroids[code]``, quantised by one of two codecs.

``PQResidualCodec`` (``codec="pq"``, the default): the residual is product-quantised with faiss,
``M`` sub-vectors of ``dim / M`` dimensions, each replaced by the nearest of 256 sub-centroids
learned on held-out residuals: ``M`` bytes per vector. The index's default is ``M = dim / 2``
(2-dimension sub-vectors, 4 bits per dimension); ``M = dim`` (1 dimension, a learned 256-level
quantiser per dimension, 8 bits) is the near-exact option; ``M = dim / 4`` the smallest.

``ResidualCodec`` (``codec="scalar"``, ColBERTv2's own): each residual value is quantised to
``nbits`` (2 or 4) bits. Over a sample of residual values (all dimensions pooled), ``2**nbits - 1``
bucket *cutoffs* are the quantiles ``i / 2**nbits`` and the ``2**nbits`` bucket *weights* (the
decoded values) are the quantiles ``(i + 0.5) / 2**nbits``; bits are packed big-end first into
bytes (``dim * nbits / 8`` bytes per vector).

Both decode as ``centroid + residual`` (a table lookup per byte) and re-normalise. At equal bytes
PQ models what per-value buckets cannot (the residual's per-dimension ranges and the correlation
of neighbouring dimensions). Measured with every token decompressed (``benchmarks/codec_error.py``,
SciFact, MiniLM ColBERT with a seeded projection, 8,192 centroids, 300 queries), recall@10
against exact MaxSim and the standard deviation of the MaxSim score error:

=================  ==========  =========  ===========
codec              B / token   recall@10  score error
=================  ==========  =========  ===========
scalar 2-bit       34          0.838      0.291
pq dim / 4         34          0.891      0.177
scalar 4-bit       66          0.936      0.106
pq dim / 2         66          0.969      0.051
pq dim             130         0.992      0.011
=================  ==========  =========  ===========

(the median gap between the exact 10th and 11th scores there is 0.056). Storage per token:
centroid id (uint16 when there are <= 65,536 centroids, else int32) + the residual bytes.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
import torch

logger = logging.getLogger(__name__)

CODECS = ("pq", "scalar")


def default_num_centroids(n_tokens: int) -> int:
    """PLAID's rule: a power of two near ``16 * sqrt(n_tokens)`` (floor in log2), at least 16."""
    target = 16 * math.sqrt(max(1, n_tokens))
    return int(2 ** max(4, math.floor(math.log2(target))))


def code_dtype(n_centroids: int) -> np.dtype:
    return np.dtype(np.uint16) if n_centroids <= 65536 else np.dtype(np.int32)


def train_centroids(
    sample: np.ndarray, n_centroids: int, *, niter: int = 4, seed: int = 0, holdout: float = 0.05
) -> tuple[np.ndarray, np.ndarray]:
    """(L2-normalised k-means centroids, held-out vectors) from token vectors ``sample``.

    The held-out part (``holdout`` of the sample, at most 50,000, at least 1) is not used for
    k-means, so the residual statistics learned from it are those of unseen vectors."""
    import faiss

    sample = np.ascontiguousarray(sample, dtype=np.float32)
    n = sample.shape[0]
    if n == 0:
        raise ValueError("cannot train an index codec on zero token vectors")
    n_centroids = max(1, min(n_centroids, n))
    perm = np.random.default_rng(seed).permutation(n)
    n_hold = max(1, min(int(n * holdout), 50_000)) if n > 1 else 1
    heldout = sample[perm[:n_hold]]
    train = sample[perm[n_hold:]] if n - n_hold >= n_centroids else sample
    km = faiss.Kmeans(
        sample.shape[1],
        n_centroids,
        niter=niter,
        seed=seed,
        spherical=True,
        max_points_per_centroid=256,
        # faiss prints a warning to stderr (from C++, whatever ``verbose``) when k-means gets fewer
        # than 39 points per centroid; a small corpus has fewer by design (the caller caps the
        # centroids at 1 per 8 sampled vectors), so the threshold is 1: only the message changes
        min_points_per_centroid=1,
        verbose=False,
    )
    if len(train) < 39 * n_centroids:
        logger.debug("k-means: %d vectors for %d centroids (a small sample)", len(train), n_centroids)
    km.train(train)
    centroids = km.centroids.astype(np.float32)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    # rounded to float16 before any residual is taken against them, so that they are stored in
    # half the bytes (``save_centroids``) with no loss: residuals absorb the rounding
    return centroids.astype(np.float16).astype(np.float32), heldout


def save_centroids(path: Path, centroids: np.ndarray) -> None:
    """``centroids.npy``: float16 when that is exact (centroids trained here are), else float32."""
    half = centroids.astype(np.float16)
    np.save(path, half if np.array_equal(half.astype(np.float32), centroids) else centroids)


def assign(vectors: np.ndarray, centroids: np.ndarray, batch: int | None = None) -> np.ndarray:
    """Nearest centroid (max inner product) for each vector, int64.

    Vectors go ``batch`` at a time (default: as many as keep the (batch, C) score block near
    32 MB), so the temporary does not grow with the number of centroids."""
    if batch is None:
        batch = max(256, (1 << 23) // max(1, len(centroids)))
    out = np.empty(len(vectors), dtype=np.int64)
    for s in range(0, len(vectors), batch):
        out[s : s + batch] = (vectors[s : s + batch] @ centroids.T).argmax(axis=1)
    return out


class Codec(Protocol):
    """What the index needs from a codec (both codecs below implement it)."""

    kind: ClassVar[str]
    files: ClassVar[tuple[str, ...]]
    centroids: np.ndarray

    @property
    def dim(self) -> int: ...
    @property
    def n_centroids(self) -> int: ...
    @property
    def bytes_per_residual(self) -> int: ...
    @property
    def bits_per_dim(self) -> float: ...
    def assign(self, vectors: np.ndarray, batch: int | None = None) -> np.ndarray: ...
    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...
    def decode_residuals(self, packed: np.ndarray) -> np.ndarray: ...
    def decompress(self, codes: np.ndarray, packed: np.ndarray, normalize: bool = True) -> np.ndarray: ...
    def decoded_norms(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray: ...
    def save(self, folder: Path) -> dict[str, Any]: ...


def load_codec(folder: Path, meta: dict[str, Any]) -> Codec:
    """The codec an index folder's ``metadata.json`` names (indexes without ``codec``: scalar)."""
    kind = meta.get("codec", "scalar")
    if kind == "pq":
        return PQResidualCodec(np.load(folder / "centroids.npy"), np.load(folder / "pq_centroids.npy"))
    if kind == "scalar":
        return ResidualCodec(
            np.load(folder / "centroids.npy"),
            np.load(folder / "bucket_cutoffs.npy"),
            np.load(folder / "bucket_weights.npy"),
            int(meta["nbits"]),
        )
    raise ValueError(
        f"{folder / 'metadata.json'}: unknown codec {json.dumps(kind)} (expected one of {CODECS})"
    )


@dataclass
class _CentroidCodec:
    """The part both codecs share: the k-means centroids a token's code points to."""

    centroids: np.ndarray  # (C, dim) float32, rows L2-normalised

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    def assign(self, vectors: np.ndarray, batch: int | None = None) -> np.ndarray:
        """Nearest centroid (max inner product) for each vector."""
        return assign(vectors, self.centroids, batch)

    def decode_residuals(self, packed: np.ndarray) -> np.ndarray:
        """Decoded residuals (n, dim) float32 of residual bytes (n, bytes_per_residual)."""
        raise NotImplementedError

    def decompress(self, codes: np.ndarray, packed: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Approximate vectors ``centroids[codes] + residual`` (n, dim) float32, re-normalised
        unless ``normalize=False``."""
        # np.take with the narrow (uint16) indices as they are is several times faster than
        # torch's index_select with int64 copies of them
        vectors = np.take(self.centroids, np.asarray(codes), axis=0)
        vectors += self.decode_residuals(packed)
        if normalize:
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        return vectors

    def decompress_torch(self, codes: np.ndarray, packed: np.ndarray, normalize: bool = True) -> torch.Tensor:
        """As :meth:`decompress`, as a torch tensor."""
        return torch.from_numpy(self.decompress(codes, packed, normalize))

    def decoded_norms(self, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
        """``|centroids[codes] + residual|`` (n,) float32: what search divides by (stored per token)."""
        return np.linalg.norm(self.decompress(codes, packed, normalize=False), axis=1).astype(np.float32)


@dataclass
class ResidualCodec(_CentroidCodec):
    """ColBERTv2's scalar residual codec: ``nbits`` per residual value, pooled quantile buckets."""

    cutoffs: np.ndarray  # (2**nbits - 1,) float32
    weights: np.ndarray  # (2**nbits,) float32
    nbits: int
    kind: ClassVar[str] = "scalar"
    files: ClassVar[tuple[str, ...]] = ("centroids.npy", "bucket_cutoffs.npy", "bucket_weights.npy")

    def __post_init__(self) -> None:
        if self.nbits not in (1, 2, 4, 8):
            raise ValueError(f"nbits must be 1, 2, 4 or 8, got {self.nbits}")
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        dim = self.centroids.shape[1]
        if (dim * self.nbits) % 8:
            raise ValueError(f"dim * nbits must be a multiple of 8 (dim={dim}, nbits={self.nbits})")
        per_byte = 8 // self.nbits
        # lookup table: byte value -> the per_byte decoded residual values it packs
        vals = np.arange(256)
        shifts = [8 - self.nbits * (j + 1) for j in range(per_byte)]
        idx = np.stack([(vals >> s) & ((1 << self.nbits) - 1) for s in shifts], axis=1)
        self._lut = self.weights.astype(np.float32)[idx]  # (256, per_byte)

    @property
    def bytes_per_residual(self) -> int:
        return self.dim * self.nbits // 8

    @property
    def bits_per_dim(self) -> float:
        return float(self.nbits)

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the codec files into ``folder``; returns the metadata entries."""
        save_centroids(folder / "centroids.npy", self.centroids)
        np.save(folder / "bucket_cutoffs.npy", self.cutoffs)
        np.save(folder / "bucket_weights.npy", self.weights)
        return {"codec": self.kind, "nbits": self.nbits}

    # ------------------------------------------------------------------ training
    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        n_centroids: int,
        nbits: int,
        *,
        niter: int = 4,
        seed: int = 0,
        holdout: float = 0.05,
    ) -> ResidualCodec:
        """k-means on ``sample`` (token vectors), bucket quantiles from a held-out part."""
        centroids, heldout = train_centroids(sample, n_centroids, niter=niter, seed=seed, holdout=holdout)
        residuals = (heldout - centroids[assign(heldout, centroids)]).ravel()
        q = np.arange(1, 2**nbits) / 2**nbits
        cutoffs = np.quantile(residuals, q).astype(np.float32)
        weights = np.quantile(residuals, (np.arange(2**nbits) + 0.5) / 2**nbits).astype(np.float32)
        return cls(centroids, cutoffs, weights, nbits)

    # ------------------------------------------------------------------ encode / decode
    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n,), packed residuals (n, dim * nbits / 8) uint8)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        codes = self.assign(vectors)
        residual = vectors - self.centroids[codes]
        buckets = np.searchsorted(self.cutoffs, residual).astype(np.uint8)  # (n, dim)
        per_byte = 8 // self.nbits
        buckets = buckets.reshape(len(vectors), -1, per_byte)
        packed = np.zeros(buckets.shape[:2], dtype=np.uint8)
        for j in range(per_byte):
            packed |= buckets[:, :, j] << np.uint8(8 - self.nbits * (j + 1))
        return codes.astype(code_dtype(self.n_centroids)), packed

    def decode_residuals(self, packed: np.ndarray) -> np.ndarray:
        """Bucket weights of every packed value: (n, dim) float32."""
        packed = np.asarray(packed, dtype=np.uint8)
        return np.take(self._lut, packed, axis=0).reshape(len(packed), self.dim)


@dataclass
class PQResidualCodec(_CentroidCodec):
    """Centroid id + the residual product-quantised with faiss (the default codec).

    The residual ``v - centroids[code]`` is cut into ``M`` sub-vectors of ``dim / M`` dimensions;
    each is stored as the index (one byte) of its nearest sub-centroid among 256 learned on
    held-out residuals (``faiss.ProductQuantizer``). Decoding concatenates the sub-centroids.
    """

    pq_centroids: np.ndarray  # (M, 256, dim / M) float32
    kind: ClassVar[str] = "pq"
    files: ClassVar[tuple[str, ...]] = ("centroids.npy", "pq_centroids.npy")

    def __post_init__(self) -> None:
        self.centroids = np.ascontiguousarray(self.centroids, dtype=np.float32)
        self.pq_centroids = np.ascontiguousarray(self.pq_centroids, dtype=np.float32)
        m, ksub, dsub = self.pq_centroids.shape if self.pq_centroids.ndim == 3 else (0, 0, 0)
        if ksub != 256 or m * dsub != self.centroids.shape[1]:
            raise ValueError(
                f"pq_centroids must be (M, 256, dim / M) for dim {self.centroids.shape[1]}, "
                f"got {self.pq_centroids.shape}"
            )
        self._pq = None

    @property
    def bytes_per_residual(self) -> int:
        return int(self.pq_centroids.shape[0])

    @property
    def bits_per_dim(self) -> float:
        return 8.0 * self.bytes_per_residual / self.dim

    @classmethod
    def train(
        cls,
        sample: np.ndarray,
        n_centroids: int,
        *,
        bytes_per_residual: int | None = None,
        niter: int = 4,
        seed: int = 0,
        holdout: float = 0.1,
    ) -> PQResidualCodec:
        """k-means on ``sample``, then the product quantiser on the held-out part's residuals.

        ``bytes_per_residual`` (sub-vectors ``M``) defaults to ``dim / 4``: 2 bits per dimension."""
        import faiss

        centroids, heldout = train_centroids(sample, n_centroids, niter=niter, seed=seed, holdout=holdout)
        dim = centroids.shape[1]
        m = bytes_per_residual or max(1, dim // 4)
        if dim % m:
            raise ValueError(f"dim {dim} is not divisible into {m} product-quantiser sub-vectors")
        residuals = heldout - centroids[assign(heldout, centroids)]
        if len(residuals) < 256:  # faiss k-means needs at least one point per sub-centroid
            residuals = np.resize(residuals, (256, dim))
        pq = faiss.ProductQuantizer(dim, m, 8)
        pq.cp.min_points_per_centroid = 1  # small samples are expected: no C++ warning (train_centroids)
        pq.train(np.ascontiguousarray(residuals, dtype=np.float32))
        return cls(centroids, faiss.vector_to_array(pq.centroids).reshape(m, 256, dim // m))

    def save(self, folder: Path) -> dict[str, Any]:
        """Write the codec files into ``folder``; returns the metadata entries."""
        save_centroids(folder / "centroids.npy", self.centroids)
        np.save(folder / "pq_centroids.npy", self.pq_centroids)
        return {"codec": self.kind, "nbits": self.bits_per_dim}

    def _encode_scalar(self, residual: np.ndarray) -> np.ndarray:
        """One-dimension sub-vectors (``M = dim``): each value's nearest of its dimension's 256
        levels, by binary search between the sorted levels' midpoints (what faiss computes by
        comparing against all 256, ~20x slower)."""
        order = np.argsort(self.pq_centroids[:, :, 0], axis=1, kind="stable")  # (M, 256)
        levels = np.take_along_axis(self.pq_centroids[:, :, 0], order, axis=1)
        mids = (levels[:, 1:] + levels[:, :-1]) / 2
        packed = np.empty(residual.shape, dtype=np.uint8)
        for j in range(residual.shape[1]):
            packed[:, j] = order[j, np.searchsorted(mids[j], residual[:, j])]
        return packed

    def _quantizer(self):
        if self._pq is None:
            import faiss

            m, _, dsub = self.pq_centroids.shape
            self._pq = faiss.ProductQuantizer(m * dsub, m, 8)
            faiss.copy_array_to_vector(self.pq_centroids.ravel(), self._pq.centroids)
        return self._pq

    def compress(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(codes (n,), residual codes (n, M) uint8)."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        codes = self.assign(vectors)
        residual = np.ascontiguousarray(vectors - self.centroids[codes])
        if not len(residual):
            packed = np.zeros((0, self.bytes_per_residual), np.uint8)
        elif self.pq_centroids.shape[2] == 1:
            packed = self._encode_scalar(residual)
        else:
            packed = self._quantizer().compute_codes(residual)
        return codes.astype(code_dtype(self.n_centroids)), packed.reshape(
            len(vectors), self.bytes_per_residual
        )

    def decode_residuals(self, packed: np.ndarray) -> np.ndarray:
        """The sub-centroids of every byte, concatenated: (n, dim) float32 (faiss's decoder)."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if len(packed) == 0:
            return np.zeros((0, self.dim), np.float32)
        return self._quantizer().decode(packed)
