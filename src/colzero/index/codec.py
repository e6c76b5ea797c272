"""Residual compression of token vectors (ColBERTv2 / PLAID style).

A token vector ``v`` (L2-normalised, ``dim`` floats) is stored as

- ``code``: the id of its nearest centroid (k-means on a sample of token vectors, faiss);
- ``residual``: ``v - centroids[code]`` quantised to ``nbits`` (2 or 4) bits per dimension.

Quantisation follows ColBERTv2: over a sample of residual values (all dimensions pooled),
``2**nbits - 1`` bucket *cutoffs* are the quantiles ``i / 2**nbits`` and the ``2**nbits``
bucket *weights* (the decoded values) are the quantiles ``(i + 0.5) / 2**nbits``. A residual
value is encoded as the index of its bucket; bits are packed big-end first into bytes
(``dim * nbits / 8`` bytes per vector). Decoding is a table lookup per byte, then
``centroid + residual`` and re-normalisation.

Storage per token: centroid id (uint16 when there are <= 65,536 centroids, else int32) +
``dim * nbits / 8`` bytes: 34 B at 2 bits and 66 B at 4 bits for 128 dimensions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


def default_num_centroids(n_tokens: int) -> int:
    """PLAID's rule: a power of two near ``16 * sqrt(n_tokens)`` (floor in log2), at least 16."""
    target = 16 * math.sqrt(max(1, n_tokens))
    return int(2 ** max(4, math.floor(math.log2(target))))


def code_dtype(n_centroids: int) -> np.dtype:
    return np.dtype(np.uint16) if n_centroids <= 65536 else np.dtype(np.int32)


@dataclass
class ResidualCodec:
    centroids: np.ndarray  # (C, dim) float32, rows L2-normalised
    cutoffs: np.ndarray  # (2**nbits - 1,) float32
    weights: np.ndarray  # (2**nbits,) float32
    nbits: int

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
        self._lut_t = torch.from_numpy(self._lut.copy())
        self._centroids_t = torch.from_numpy(self.centroids)

    @property
    def dim(self) -> int:
        return int(self.centroids.shape[1])

    @property
    def n_centroids(self) -> int:
        return int(self.centroids.shape[0])

    @property
    def bytes_per_residual(self) -> int:
        return self.dim * self.nbits // 8

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
        import faiss

        sample = np.ascontiguousarray(sample, dtype=np.float32)
        n = sample.shape[0]
        if n == 0:
            raise ValueError("cannot train an index codec on zero token vectors")
        n_centroids = max(1, min(n_centroids, n))
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
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
            verbose=False,
        )
        km.train(train)
        centroids = km.centroids.astype(np.float32)
        centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        codec = cls(centroids, np.zeros(2**nbits - 1, np.float32), np.zeros(2**nbits, np.float32), nbits)
        codes = codec.assign(heldout)
        residuals = (heldout - centroids[codes]).ravel()
        q = np.arange(1, 2**nbits) / 2**nbits
        cutoffs = np.quantile(residuals, q).astype(np.float32)
        weights = np.quantile(residuals, (np.arange(2**nbits) + 0.5) / 2**nbits).astype(np.float32)
        return cls(centroids, cutoffs, weights, nbits)

    # ------------------------------------------------------------------ encode / decode
    def assign(self, vectors: np.ndarray, batch: int = 4096) -> np.ndarray:
        """Nearest centroid (max inner product) for each vector."""
        out = np.empty(len(vectors), dtype=np.int64)
        for s in range(0, len(vectors), batch):
            scores = vectors[s : s + batch] @ self.centroids.T
            out[s : s + batch] = scores.argmax(axis=1)
        return out

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

    def decompress(self, codes: np.ndarray, packed: np.ndarray, normalize: bool = True) -> np.ndarray:
        """Approximate vectors (n, dim) float32 from codes and packed residuals."""
        return self.decompress_torch(codes, packed, normalize).numpy()

    def decompress_torch(self, codes: np.ndarray, packed: np.ndarray, normalize: bool = True) -> torch.Tensor:
        """As :meth:`decompress`, as a torch tensor."""
        # np.take with the narrow (uint16 / uint8) indices as they are is several times faster
        # than torch's index_select / advanced indexing with int64 copies of them; the in-place
        # add gives the same floats as ``centroid + residual``
        codes = np.asarray(codes)
        packed = np.asarray(packed, dtype=np.uint8)
        vectors = torch.from_numpy(np.take(self.centroids, codes, axis=0))
        residual = torch.from_numpy(np.take(self._lut, packed, axis=0))  # (n, bytes, 8 / nbits)
        vectors.view(residual.shape).add_(residual)
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, dim=1)
        return vectors
