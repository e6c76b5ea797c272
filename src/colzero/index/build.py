"""Writing an index: encode and compress in chunks, k-means on a sample (never the whole corpus).

A build reads documents (``documents.read_documents``) in chunks of ``chunk_size``, encodes each
chunk (or takes its precomputed vectors), compresses it and appends it to a segment
(``storage.SegmentWriter``). The codec (k-means centroids, residual quantiser) is trained before
the first chunk is written, on up to ``kmeans_sample`` token vectors drawn (seeded) from the
first ``kmeans_documents`` documents, whose vectors are held until then. Peak memory is
therefore those sample documents' vectors, one chunk, the centroids, and the inverted lists
being built (one int64 per distinct (document, centroid) pair, 1/64 of a float32 128-d vector
per token at most): not the corpus. Because the sample does not depend on ``chunk_size``, a build
in chunks of 10 writes the same files as a build in one chunk.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from colzero.index.codec import CODECS, Codec, PQResidualCodec, ResidualCodec, default_num_centroids
from colzero.index.documents import Document, batches, read_documents
from colzero.index.storage import SegmentWriter, insert_documents

logger = logging.getLogger(__name__)

#: documents whose vectors a build trains its codec on (they are held in memory until then)
KMEANS_DOCUMENTS = 4096

Encoder = Callable[[list[Document], int], list[np.ndarray]]


@dataclass
class CodecSettings:
    """How a build compresses token vectors (see ``codec.py``)."""

    codec: str = "pq"
    nbits: int | None = None  # scalar codec: 2 or 4 bits per value
    residual_bytes: int | None = None  # pq codec: bytes per residual (sub-vectors), default dim / 2
    n_centroids: int | None = None  # default: PLAID's 2**floor(log2(16 sqrt(#tokens)))
    kmeans_documents: int = KMEANS_DOCUMENTS
    kmeans_sample: int = 262_144
    kmeans_niter: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {self.codec!r}")
        if self.codec == "pq" and self.nbits is not None:
            raise ValueError("nbits sets the scalar codec's bits per value: pass codec='scalar' with it")
        if self.codec == "scalar":
            if self.residual_bytes is not None:
                raise ValueError("residual_bytes sets the pq codec's size: the scalar codec takes nbits")
            self.nbits = 2 if self.nbits is None else self.nbits
            if self.nbits not in (2, 4):
                raise ValueError(f"nbits must be 2 or 4, got {self.nbits}")
        if self.kmeans_documents < 1:
            raise ValueError(f"kmeans_documents must be at least 1, got {self.kmeans_documents}")


def encode_documents(model: Any, texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Document token matrices (float32 numpy) from ``model.encode``."""
    with torch.inference_mode():
        vecs = model.encode(texts, "document", batch_size=batch_size)
    return [v.float().numpy() for v in vecs]


def make_encoder(model: Any, embeddings: Sequence[Any] | None, batch_size: int) -> Encoder:
    """``encode(chunk, offset)``: the model's vectors of a chunk, or rows ``offset...`` of
    ``embeddings`` (precomputed per-document matrices, e.g. memory-mapped)."""
    if embeddings is None:
        return lambda chunk, offset: encode_documents(model, [d.text for d in chunk], batch_size)

    def take(chunk: list[Document], offset: int) -> list[np.ndarray]:
        vecs = embeddings[offset : offset + len(chunk)]
        if len(vecs) != len(chunk):
            raise ValueError(
                f"embeddings has {offset + len(vecs)} rows, fewer than the documents ({chunk[-1].where})"
            )
        return [np.asarray(v.float() if isinstance(v, torch.Tensor) else v, dtype=np.float32) for v in vecs]

    return take


def train_codec(sample_docs: list[np.ndarray], estimated_tokens: int, settings: CodecSettings) -> Codec:
    """k-means + residual quantiser on up to ``kmeans_sample`` tokens of ``sample_docs`` (seeded)."""
    n_centroids = settings.n_centroids or default_num_centroids(int(estimated_tokens))
    lens = np.array([len(d) for d in sample_docs], dtype=np.int64)
    total = int(lens.sum())
    if total == 0:
        raise ValueError("cannot train an index codec on zero token vectors")
    rng = np.random.default_rng(settings.seed)
    size = min(settings.kmeans_sample, 64 * n_centroids)  # faiss uses at most 256 per centroid anyway
    # the sampled rows of the documents' concatenation, gathered document by document (the
    # concatenation itself is never made: it would be a second copy of the held documents)
    rows = np.sort(rng.choice(total, size, replace=False)) if total > size else np.arange(total)
    starts = np.cumsum(lens) - lens
    owner = np.searchsorted(starts, rows, side="right") - 1
    flat = np.empty((len(rows), sample_docs[0].shape[1]), dtype=np.float32)
    cuts = np.flatnonzero(np.diff(owner)) + 1
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)], strict=True):
        d = owner[a]
        flat[a:b] = sample_docs[d][rows[a:b] - starts[d]]
    # faiss warns below 39 points per centroid; cap so k-means stays meaningful
    n_centroids = max(1, min(n_centroids, len(flat) // 8 or 1))
    kw = {"niter": settings.kmeans_niter, "seed": settings.seed}
    if settings.codec == "pq":
        nbytes = settings.residual_bytes or max(1, flat.shape[1] // 2)
        return PQResidualCodec.train(flat, n_centroids, bytes_per_residual=nbytes, **kw)
    return ResidualCodec.train(flat, n_centroids, settings.nbits or 2, **kw)


def encoded_chunks(
    documents: Iterator[Document], encode: Encoder, chunk_size: int, hold_documents: int = 0
) -> tuple[list[tuple[list[Document], list[np.ndarray]]], Iterator[tuple[list[Document], list[np.ndarray]]]]:
    """(the first chunks, held in memory until they cover ``hold_documents`` documents; the rest,
    encoded lazily). Together they are every (chunk, vectors) of ``documents`` in order."""
    stream = batches(documents, chunk_size)
    held: list[tuple[list[Document], list[np.ndarray]]] = []
    offset = 0
    while offset < hold_documents:
        chunk = next(stream, None)
        if chunk is None:
            break
        held.append((chunk, encode(chunk, offset)))
        offset += len(chunk)

    def rest() -> Iterator[tuple[list[Document], list[np.ndarray]]]:
        nonlocal offset
        for chunk in stream:
            vecs = encode(chunk, offset)
            offset += len(chunk)
            yield chunk, vecs

    return held, rest()


def write_documents(
    con: sqlite3.Connection,
    writer: SegmentWriter,
    chunks: Iterator[tuple[list[Document], list[np.ndarray]]],
    *,
    store_texts: bool,
    store_fields: bool,
    generation: int,
) -> None:
    """Insert each chunk's documents (rows of ``generation``) and append its vectors to the segment."""
    for chunk, vecs in chunks:
        if len(vecs) != len(chunk):
            raise ValueError(f"the encoder returned {len(vecs)} matrices for {len(chunk)} documents")
        insert_documents(
            con,
            chunk,
            writer.first_pid + writer.n_docs,
            store_texts=store_texts,
            store_fields=store_fields,
            session_first_pid=writer.first_pid,
            generation=generation,
        )
        writer.write(vecs)
        logger.debug("indexed %d documents", writer.n_docs)


def estimate_tokens(sample_docs: list[np.ndarray], n_sample: int, expected_documents: int | None) -> int:
    n_tok = sum(len(v) for v in sample_docs)
    return int(n_tok * max(1.0, (expected_documents or n_sample) / max(1, n_sample)))


def model_config(model: Any) -> dict[str, Any]:
    try:
        return asdict(model.config)
    except TypeError:
        return {}


def build_record(writer: SegmentWriter, started: float) -> dict[str, Any]:
    return {"documents": writer.n_docs, "tokens": writer.n_tokens, "seconds": time.time() - started}


__all__ = [
    "KMEANS_DOCUMENTS",
    "CodecSettings",
    "encode_documents",
    "encoded_chunks",
    "estimate_tokens",
    "make_encoder",
    "read_documents",
    "train_codec",
    "write_documents",
]
