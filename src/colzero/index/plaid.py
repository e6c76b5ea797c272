"""A PLAID-style multi-vector index: build (streamed), load (memory maps), search, add, delete.

The pieces live beside this facade: the on-disk format in ``storage.py``, the corpus reader in
``documents.py``, the build steps in ``build.py``, the codecs in ``codec.py``, the search
stages in ``stages.py`` and metadata filters in ``filters.py``.

Search (PLAID, simplified to numpy/torch on CPU; see ``stages.py``):

1. query tokens x centroids (one GEMM for the batch) -> the ``nprobe`` best centroids per token;
2. candidates = the documents of the probed inverted lists, ranked by a probe-only centroid
   MaxSim; the best ``prefilter_factor * ncandidates`` survive;
3. centroid-only MaxSim with all of each survivor's token codes; the best ``ncandidates`` survive;
4. their residuals are decoded (in blocks) and scored by MaxSim -> top ``k``;
5. optional ``rerank="exact"``: re-encode the final candidates from stored texts (index built
   with ``store_texts=True``) and rescore with the model's vectors.

A ``filter`` (``filters.py``) restricts the documents BEFORE any stage: a filter that keeps
fewer documents than stage 2 takes skips the inverted lists and scores all of them, so a filter
keeping 1% of the corpus still returns ``k`` results when ``k`` documents match.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colzero.index import stages, storage
from colzero.index.build import (
    KMEANS_DOCUMENTS,
    CodecSettings,
    build_record,
    encode_documents,
    encoded_chunks,
    estimate_tokens,
    make_encoder,
    model_config,
    train_codec,
    write_documents,
)
from colzero.index.documents import count_documents, read_documents
from colzero.index.filters import compile_filter
from colzero.index.storage import IndexCorruptError
from colzero.model.folder import atomic_directory

logger = logging.getLogger(__name__)

__all__ = ["Index", "IndexCorruptError", "ModelMismatchError", "SearchSettings"]


#: queries whose centroid scores are computed in one GEMM (their (tokens, centroids) block is
#: the search's largest temporary: 16 queries x 32 tokens x 65,536 centroids x 4 B = 128 MB)
QUERY_BLOCK = 16


class ModelMismatchError(ValueError):
    """The query model is not the model the index was built with."""


@dataclass
class SearchSettings:
    """Search defaults stored with an index (each overridable per call)."""

    nprobe: int = 16
    ncandidates: int = 256
    prefilter_factor: int = 4


class Index:
    """A loaded index; build with :meth:`Index.build`, open with :meth:`Index.load`."""

    def __init__(self, path: str | os.PathLike[str], model: Any = None, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.model = None
        self._verify = verify
        self._reload()
        if model is not None:
            self.attach_model(model)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any = None, *, verify: bool = True) -> Index:
        """Open an index folder; sizes are always checked, sha256 too with ``verify``."""
        return cls(Path(path), model, verify=verify)

    def _reload(self) -> None:
        self.state = storage.load_state(self.path, self._verify)
        self.settings = SearchSettings(**self.state.meta.get("search", {}))

    # the loaded arrays, for callers and tests that inspect an index
    meta = property(lambda self: self.state.meta)
    codec = property(lambda self: self.state.codec)
    segments = property(lambda self: self.state.segments)
    codes = property(lambda self: self.state.codes)
    doclens = property(lambda self: self.state.doclens)
    doc_ids = property(lambda self: self.state.doc_ids)
    deleted = property(lambda self: self.state.deleted)
    has_texts = property(lambda self: self.state.has_texts)

    def __len__(self) -> int:
        return int((~self.state.deleted).sum())

    def __contains__(self, doc_id: object) -> bool:
        """Whether ``doc_id`` is a live (not deleted) document."""
        return doc_id in self.state.pid_of

    @property
    def fingerprint(self) -> str:
        return self.state.meta["model_fingerprint"]

    def attach_model(self, model: Any) -> None:
        got = model.fingerprint()
        if got != self.fingerprint:
            raise ModelMismatchError(
                f"{self.path}: index was built with model fingerprint {self.fingerprint}, "
                f"the query model has {got}; use the same model (or rebuild the index)"
            )
        self.model = model

    def _require_model(self, what: str) -> None:
        if self.model is None:
            raise ValueError(f"a model is needed to {what}: Index.load(path, model) or attach_model(model)")

    # ---------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        model: Any,
        documents: Any,
        output: str | os.PathLike[str],
        *,
        codec: str = "pq",
        nbits: int | None = None,
        residual_bytes: int | None = None,
        n_centroids: int | None = None,
        chunk_size: int = 4096,
        batch_size: int = 32,
        kmeans_documents: int = KMEANS_DOCUMENTS,
        kmeans_sample: int = 262_144,
        kmeans_niter: int = 4,
        store_texts: bool = False,
        store_fields: bool = True,
        store_vectors: bool = False,
        embeddings: Sequence[Any] | None = None,
        expected_documents: int | None = None,
        settings: SearchSettings | None = None,
        model_name: str | None = None,
        seed: int = 0,
    ) -> Index:
        """Encode ``documents`` in chunks and write an index folder atomically.

        ``documents``: a JSONL path or rows (see ``documents.read_documents``). The codec is
        trained on up to ``kmeans_sample`` token vectors of the first ``kmeans_documents``
        documents; the number of centroids is PLAID's ``16 * sqrt(#tokens)`` rounded down to a
        power of two, the token count estimated from that sample and the number of documents
        (``expected_documents``, else counted). Memory: the sample's vectors and one chunk, not
        the corpus (``build.py``). ``embeddings``: precomputed document matrices aligned with
        ``documents`` (may be memory-mapped or generated lazily); the model is then used only
        for its fingerprint. ``codec``: ``"pq"`` (default; residuals product-quantised into
        ``residual_bytes`` bytes: default dim / 2, 4 bits per dimension; dim gives near-exact
        scores for recall-critical use, dim / 4 the smallest index) or ``"scalar"`` (ColBERTv2's
        ``nbits`` = 2 or 4 bits per value). ``store_fields``: keep each row's JSON fields (title, text,
        metadata) for filters and results; ``store_texts``: keep the encoded text (for
        ``rerank="exact"``). ``store_vectors``: also keep every token vector in float16
        (``2 * dim`` more bytes per token): search then scores its final candidates with them
        instead of decoding residuals, near-exact and faster (the higher-recall setting).
        """
        codec_settings = CodecSettings(
            codec, nbits, residual_bytes, n_centroids, kmeans_documents, kmeans_sample, kmeans_niter, seed
        )
        if expected_documents is None:
            if isinstance(documents, str | os.PathLike):
                expected_documents = count_documents(documents)
            elif hasattr(documents, "__len__"):
                expected_documents = len(documents)
        started = time.time()
        output = Path(output)
        encode = make_encoder(model, embeddings, batch_size)
        with atomic_directory(output) as tmp:
            held, rest = encoded_chunks(read_documents(documents), encode, chunk_size, kmeans_documents)
            if not held:
                raise ValueError("cannot build an index from zero documents")
            sample = [v for _, vecs in held for v in vecs][:kmeans_documents]
            tokens = estimate_tokens(sample, len(sample), expected_documents)
            trained = train_codec(sample, tokens, codec_settings)
            del sample
            codec_meta = trained.save(tmp)
            con = storage.connect(tmp / "docs.sqlite")
            storage.create_schema(con)
            name = f"seg-{uuid.uuid4().hex[:12]}"
            writer = storage.SegmentWriter(tmp / name, trained, 0, store_vectors)
            con.execute("BEGIN")
            flags = {"store_texts": store_texts, "store_fields": store_fields}
            write_documents(con, writer, iter(held), **flags)
            held.clear()
            write_documents(con, writer, rest, **flags)
            writer.close()
            storage.register_segment(con, name, 0, writer)
            con.execute("COMMIT")
            con.close()
            meta = {
                "format_version": storage.FORMAT_VERSION,
                "model_fingerprint": model.fingerprint(),
                "model_config": model_config(model),
                "model_name": model_name,
                "dim": trained.dim,
                **codec_meta,
                "n_centroids": trained.n_centroids,
                "store_texts": store_texts,
                "store_fields": store_fields,
                "store_vectors": store_vectors,
                "search": (settings or SearchSettings()).__dict__,
                "build": build_record(writer, started),
                "files": storage.describe(tmp, trained.files),
            }
            storage.write_metadata(tmp, meta)
            storage.fsync_dir(tmp)
        logger.info("built %s: %d documents, %d tokens", output, writer.n_docs, writer.n_tokens)
        return cls(output, model, verify=False)

    # ---------------------------------------------------------------- add / delete
    def add(
        self,
        documents: Any,
        *,
        chunk_size: int = 4096,
        batch_size: int = 32,
        store_texts: bool | None = None,
        store_fields: bool | None = None,
    ) -> int:
        """Encode new documents with the existing centroids into a new segment; atomic.

        An id already live in the index raises :class:`colzero.data.readers.DataError` (a
        ``ValueError``) and changes nothing. Returns the count added.
        """
        self._require_model("add documents")
        meta = self.state.meta
        flags = {
            "store_texts": meta.get("store_texts", False) if store_texts is None else store_texts,
            "store_fields": meta.get("store_fields", True) if store_fields is None else store_fields,
        }
        storage.remove_orphans(self.path, {s.name for s in self.segments})
        first_pid = len(self.doc_ids)
        name = f"seg-{uuid.uuid4().hex[:12]}"
        tmp_folder = self.path / f".{name}.tmp"
        con = storage.connect(self.path / "docs.sqlite")
        writer = None
        try:
            con.execute("BEGIN IMMEDIATE")
            storage.upgrade_schema(con)
            writer = storage.SegmentWriter(
                tmp_folder, self.codec, first_pid, bool(meta.get("store_vectors", False))
            )
            encode = make_encoder(self.model, None, batch_size)
            _, rest = encoded_chunks(read_documents(documents), encode, chunk_size)
            write_documents(con, writer, rest, **flags)
            if writer.n_docs == 0:
                con.execute("ROLLBACK")
                writer.discard()
                return 0
            writer.close()
            os.replace(tmp_folder, self.path / name)
            storage.register_segment(con, name, first_pid, writer)
            con.execute("COMMIT")  # the single commit point
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            shutil.rmtree(tmp_folder, ignore_errors=True)
            shutil.rmtree(self.path / name, ignore_errors=True)
            raise
        finally:
            con.close()
        self._reload()
        return writer.n_docs

    def delete(self, doc_ids: Sequence[str], *, missing: str = "error") -> int:
        """Tombstone documents (one transaction). Unknown ids raise ``KeyError`` unless
        ``missing="ignore"``. Returns the count deleted."""
        doc_ids = [str(d) for d in doc_ids]
        pid_of = self.state.pid_of
        unknown = [d for d in doc_ids if d not in pid_of]
        if unknown and missing != "ignore":
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise KeyError(f"{len(unknown)} id(s) not in the index (or already deleted): {shown}")
        pids = sorted({pid_of[d] for d in doc_ids if d in pid_of})
        storage.tombstone(self.path, pids)
        self._reload()
        return len(pids)

    # ---------------------------------------------------------------- search
    def encode_queries(self, queries: list[str], batch_size: int = 64) -> list[np.ndarray]:
        self._require_model("encode text queries")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"query {i} is empty")
        with torch.inference_mode():
            vecs = self.model.encode(list(queries), "query", batch_size=batch_size)
        return [v.float().numpy() for v in vecs]

    def allowed(self, filter: dict[str, Any] | None) -> np.ndarray:
        """Bool mask over pids: live documents matching ``filter`` (``filters.py``)."""
        live = ~self.state.deleted
        if filter is None:
            return live
        where, params = compile_filter(filter)
        mask = np.zeros(len(live), dtype=bool)
        mask[storage.select_pids(self.path, where, params)] = True
        return mask & live

    def search(
        self,
        queries: Sequence[str] | Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ncandidates: int | None = None,
        rerank: str | None = None,
        filter: dict[str, Any] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (doc_id, score) per query, best first.

        ``queries``: texts (needs the model) or query token matrices (Lq, dim). ``filter``: only
        documents whose stored fields match are ranked (``filters.py``), e.g.
        ``{"year": [2019, 2020]}``. ``rerank="exact"`` re-encodes the final candidates from
        stored texts (index built with ``store_texts=True``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if rerank not in (None, "exact"):
            raise ValueError(f"rerank must be None or 'exact', got {rerank!r}")
        if rerank == "exact":
            if not self.has_texts:
                raise ValueError(f"{self.path}: rerank='exact' needs texts; build with store_texts=True")
            self._require_model("rerank exactly")
        qvecs = self._query_vectors(queries)
        allowed = self.allowed(filter)
        nprobe = nprobe or self.settings.nprobe
        ncandidates = max(k, ncandidates or self.settings.ncandidates)
        if not qvecs:
            return []
        results = []
        cscores, start = np.zeros((0, 0), np.float32), 0
        for n, q in enumerate(qvecs):
            if n % QUERY_BLOCK == 0:  # one GEMM per block of queries: (tokens, centroids) scores
                cscores = np.concatenate(qvecs[n : n + QUERY_BLOCK]) @ self.codec.centroids.T
                start = 0
            cs = cscores[start : start + len(q)]
            start += len(q)
            depth = k if rerank is None else 4 * k
            pids, scores = self._search_one(q, cs, depth, nprobe, ncandidates, allowed)
            if rerank == "exact":
                pids, scores = self._rerank_exact(q, pids, k)
            results.append([(self.doc_ids[p], float(s)) for p, s in zip(pids, scores, strict=True)])
        return results

    def _query_vectors(self, queries: Any) -> list[np.ndarray]:
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings or of embeddings, not one string")
        queries = list(queries)
        if queries and isinstance(queries[0], str):
            return self.encode_queries(queries)
        qvecs = [
            np.asarray(q.float() if isinstance(q, torch.Tensor) else q, dtype=np.float32) for q in queries
        ]
        for i, q in enumerate(qvecs):
            if q.ndim != 2 or q.shape[1] != self.codec.dim or len(q) == 0:
                raise ValueError(f"query {i}: expected a (n_tokens, {self.codec.dim}) matrix, got {q.shape}")
        return qvecs

    def _search_one(
        self, q: np.ndarray, cs: np.ndarray, k: int, nprobe: int, ncandidates: int, allowed: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        st = self.state
        n_pool = ncandidates * self.settings.prefilter_factor
        n_allowed = int(allowed.sum())
        if n_allowed <= n_pool:  # a selective filter or a small corpus: every allowed document
            pool = np.flatnonzero(allowed)
        else:
            ids, scores = stages.probe(cs, nprobe)
            pool = stages.candidate_pool(ids, scores, st.ivf_pids, st.ivf_offsets, allowed, n_pool)
        if len(pool) == 0:
            return pool, np.zeros(0, np.float32)
        if len(pool) > ncandidates:
            pool.sort()
            cscore = stages.centroid_maxsim(cs, st.codes, st.doc_starts, st.doclens, pool)
            pool = pool[stages.top(cscore, ncandidates)]
        pool.sort()
        if all(s.vectors is not None for s in st.segments):
            scores = stages.maxsim_vectors(q, pool, st.doclens, self._read_vectors)
        else:
            scores = stages.maxsim_decoded(q, cs, pool, st.doclens, self._read_tokens)
        best = stages.top(scores, k)
        return pool[best], scores[best]

    def _read_tokens(self, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(codes, decoded residuals, 1 / decoded norms) of the tokens of the (sorted) ``pids``."""
        st = self.state
        codes, residuals, norms = [], [], []
        segs = st.doc_segment[pids]
        for seg_no in np.unique(segs):
            sel = pids[segs == seg_no] if len(st.segments) > 1 else pids
            toks = stages.ranges(st.doc_starts[sel], st.doclens[sel])
            local = toks - st.seg_token_base[seg_no]
            seg = st.segments[seg_no]
            codes.append(st.codes[toks])
            residuals.append(self.codec.decode_residuals(np.take(seg.residuals, local, axis=0)))
            norms.append(np.take(seg.norms, local))
        if len(codes) == 1:
            return codes[0], residuals[0], 1.0 / np.maximum(norms[0], 1e-12)
        return (
            np.concatenate(codes),
            np.concatenate(residuals),
            1.0 / np.maximum(np.concatenate(norms), 1e-12),
        )

    def _read_vectors(self, pids: np.ndarray) -> np.ndarray:
        """The stored float16 token vectors of the (sorted) ``pids``, as float32 (tokens, dim)."""
        st = self.state
        parts = []
        segs = st.doc_segment[pids]
        for seg_no in np.unique(segs):
            sel = pids[segs == seg_no] if len(st.segments) > 1 else pids
            local = stages.ranges(st.doc_starts[sel], st.doclens[sel]) - st.seg_token_base[seg_no]
            parts.append(np.take(st.segments[seg_no].vectors, local, axis=0).astype(np.float32))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _rerank_exact(self, q: np.ndarray, pids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        texts = storage.fetch_rows(self.path, pids, "text")
        docs = encode_documents(self.model, texts, 32)
        scores = np.array([(q @ d.T).max(axis=1).sum() for d in docs], dtype=np.float32)
        best = stages.top(scores, k)
        return pids[best], scores[best]

    # ---------------------------------------------------------------- stored fields
    def fields(self, doc_ids: Sequence[str], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The stored JSON fields of each document (all, or only ``names``); ``{}`` when none were
        stored. Unknown or deleted ids raise ``KeyError``."""
        pid_of = self.state.pid_of
        unknown = [d for d in doc_ids if d not in pid_of]
        if unknown:
            raise KeyError(f"{len(unknown)} id(s) not in the index: {', '.join(map(repr, unknown[:5]))}")
        rows = storage.fetch_rows(self.path, [pid_of[d] for d in doc_ids], "fields")
        if names is None:
            return rows
        return [{n: row[n] for n in names if n in row} for row in rows]

    def stats(self) -> dict[str, Any]:
        files = [self.path / n for n in self.codec.files] + [self.path / "docs.sqlite"]
        for s in self.segments:
            files += [self.path / s.name / n for n in s.files]
        total = sum(p.stat().st_size for p in files)
        vec_bytes = sum(
            (self.path / s.name / n).stat().st_size
            for s in self.segments
            for n in storage.TOKEN_FILES
            if n in s.files
        )
        n_tok = int(self.doclens.sum())
        return {
            "documents": len(self),
            "tokens": n_tok,
            "centroids": self.codec.n_centroids,
            "codec": self.codec.kind,
            "nbits": self.codec.bits_per_dim,
            "segments": len(self.segments),
            "bytes_total": total,
            "bytes_per_token_vectors": vec_bytes / max(1, n_tok),
            "bytes_per_token_total": total / max(1, n_tok),
        }
