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

Generations (``generations.py``): an :class:`Index` holds one published generation (arrays and
document-table rows that belong together) and answers every call from it; :meth:`Index.refresh`
switches to the newest one (a ``stat`` when nothing changed). :meth:`Index.build`,
:meth:`Index.add` and :meth:`Index.delete` each publish a new generation under the folder's
writer lock (``wait``: seconds to queue behind another writer).
"""

from __future__ import annotations

import contextlib
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

from colzero.data.readers import temp_name
from colzero.index import generations, stages, storage
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
from colzero.index.filters import compile_filter, unicode_problem
from colzero.index.generations import IndexBusyError, Pointer
from colzero.index.storage import IndexCorruptError, IndexState

logger = logging.getLogger(__name__)

__all__ = ["Index", "IndexBusyError", "IndexCorruptError", "ModelMismatchError", "SearchSettings"]


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
        self._stamp: generations.Stamp = None
        self.state = self._open(None)
        self.settings = SearchSettings(**self.state.meta.get("search", {}))
        if model is not None:
            self.attach_model(model)

    @classmethod
    def load(cls, path: str | os.PathLike[str], model: Any = None, *, verify: bool = True) -> Index:
        """Open an index folder; sizes are always checked, sha256 too with ``verify``."""
        return cls(Path(path), model, verify=verify)

    def _open(self, previous: IndexState | None, attempts: int = 20) -> IndexState:
        """The published generation (reusing ``previous``'s arrays when it is of the same base).
        Retried when a writer publishes or removes a base while it is being opened."""
        path = self.path
        for _ in range(attempts):
            generations.recover_legacy_replace(path)
            stamp = generations.stamp(path)
            pointer = generations.read_pointer(path)
            if pointer is None:
                raise _not_an_index(path)
            folder = generations.base_dir(path, pointer)
            reuse = previous if previous is not None and previous.base is not None else None
            if reuse is not None and reuse.base.folder == folder and reuse.base.generational:
                state = storage.load_state(reuse.base, pointer.generation, self._verify, reuse)
            else:
                try:
                    hold = generations.ReaderHold(folder)
                except FileNotFoundError:
                    continue  # removed after the pointer moved on: read the pointer again
                if generations.read_pointer(path) != pointer:
                    hold.release()
                    continue
                try:
                    handle = storage.BaseHandle(folder, hold, self._verify)
                except BaseException:
                    hold.release()
                    raise
                state = storage.load_state(handle, pointer.generation, self._verify)
            self._stamp = stamp
            return state
        raise IndexBusyError(f"{path}: the index kept changing while it was being opened; try again")

    def refresh(self) -> bool:
        """Switch to the newest published generation; returns whether it changed. Costs one
        ``stat`` when nothing was published since. Call it between searches, not during one."""
        if generations.stamp(self.path) == self._stamp:
            return False
        state = self._open(self.state)
        if state.base is self.state.base and state.generation == self.state.generation:
            return False
        if self.model is not None and state.meta["model_fingerprint"] != self.model.fingerprint():
            raise ModelMismatchError(
                f"{self.path}: generation {state.generation} was built with model fingerprint "
                f"{state.meta['model_fingerprint']}, this index serves {self.model.fingerprint()}; "
                "load it with that model"
            )
        self.state = state
        self.settings = SearchSettings(**state.meta.get("search", {}))
        return True

    @property
    def generation(self) -> int:
        """The published generation this index answers from."""
        return self.state.generation

    @property
    def base(self) -> Path:
        """The folder of the build this generation belongs to."""
        assert self.state.base is not None
        return self.state.base.folder

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
        wait: float = 0.0,
    ) -> Index:
        """Encode ``documents`` in chunks and publish them as a new generation of ``output``.

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

        Over an existing index, the build is a new base published as the next generation: until
        then every reader (a running server included) keeps the previous one, and a build that
        fails or is killed leaves it published. ``wait``: seconds to queue behind another writer
        (then :class:`IndexBusyError`). A folder that is neither empty nor an index is refused.
        """
        codec_settings = CodecSettings(
            codec, nbits, residual_bytes, n_centroids, kmeans_documents, kmeans_sample, kmeans_niter, seed
        )
        output = Path(output)
        _check_output(output)
        if expected_documents is None:
            if isinstance(documents, str | os.PathLike):
                expected_documents = count_documents(documents)
            elif hasattr(documents, "__len__"):
                expected_documents = len(documents)
        started = time.time()
        encode = make_encoder(model, embeddings, batch_size)
        created = not output.exists()
        try:
            with generations.writer_lock(output, wait):
                pointer = generations.read_pointer(output)
                generations.collect_garbage(output, pointer)
                generation = pointer.generation + 1 if pointer is not None else 1
                name, tmp = generations.new_base(output)
                try:
                    held, rest = encoded_chunks(
                        read_documents(documents), encode, chunk_size, kmeans_documents
                    )
                    if not held:
                        raise ValueError("cannot build an index from zero documents")
                    sample = [v for _, vecs in held for v in vecs][:kmeans_documents]
                    tokens = estimate_tokens(sample, len(sample), expected_documents)
                    trained = train_codec(sample, tokens, codec_settings)
                    del sample
                    codec_meta = trained.save(tmp)
                    con = storage.connect(tmp / "docs.sqlite", write=True)
                    storage.create_schema(con)
                    seg = f"seg-{uuid.uuid4().hex[:12]}"
                    writer = storage.SegmentWriter(tmp / seg, trained, 0, store_vectors)
                    con.execute("BEGIN")
                    flags = {
                        "store_texts": store_texts,
                        "store_fields": store_fields,
                        "generation": generation,
                    }
                    write_documents(con, writer, iter(held), **flags)
                    held.clear()
                    write_documents(con, writer, rest, **flags)
                    writer.close()
                    storage.register_segment(con, seg, 0, writer, generation)
                    con.execute("COMMIT")
                    con.close()  # checkpoints the write-ahead log into docs.sqlite
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
                    os.replace(tmp, output / name)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
                generations.publish(output, Pointer(name, generation))  # the commit point
                generations.collect_garbage(output, Pointer(name, generation))
        except BaseException:
            if created:  # leave nothing where there was nothing
                with contextlib.suppress(OSError):
                    (output / generations.LOCK).unlink()
                    output.rmdir()
            raise
        logger.info(
            "built %s (generation %d): %d documents, %d tokens",
            output,
            generation,
            writer.n_docs,
            writer.n_tokens,
        )
        return cls(output, model, verify=False)

    # ---------------------------------------------------------------- add / delete
    def _begin_write(self) -> tuple[Pointer, Path, Any]:
        """Under the writer lock: undo what an unpublished change left, remove leftovers, convert a
        format 1/2 folder, and catch up with the newest generation. Returns (the published
        pointer, its base folder, a writing connection to its document table)."""
        generations.recover_legacy_replace(self.path)
        pointer = generations.read_pointer(self.path)
        if pointer is None:
            raise _not_an_index(self.path)
        base = generations.base_dir(self.path, pointer)
        con = storage.connect(base / "docs.sqlite", write=True)
        try:
            if not storage.is_generational(con):
                con.execute("BEGIN IMMEDIATE")
                storage.upgrade_schema(con)
                con.execute("COMMIT")
                generations.publish(self.path, pointer)
            self.refresh()  # first: this index then no longer holds an earlier base
            generations.collect_garbage(self.path, pointer)
            for name in storage.rollback_unpublished(con, pointer.generation):
                logger.info("%s: rolled back an unpublished segment %s", base, name)
            storage.remove_orphans(base, {r[0] for r in con.execute("SELECT name FROM segments")})
        except BaseException:
            con.close()
            raise
        return pointer, base, con

    def add(
        self,
        documents: Any,
        *,
        chunk_size: int = 4096,
        batch_size: int = 32,
        store_texts: bool | None = None,
        store_fields: bool | None = None,
        wait: float = 0.0,
    ) -> int:
        """Encode new documents with the existing centroids into a new segment, published as the
        next generation.

        An id already live in the index raises :class:`colzero.data.readers.DataError` (a
        ``ValueError``) and changes nothing. ``wait``: seconds to queue behind another writer.
        Returns the count added.
        """
        self._require_model("add documents")
        with generations.writer_lock(self.path, wait):
            pointer, base, con = self._begin_write()
            try:
                generation = pointer.generation + 1
                meta = self.state.meta
                flags = {
                    "store_texts": meta.get("store_texts", False) if store_texts is None else store_texts,
                    "store_fields": meta.get("store_fields", True) if store_fields is None else store_fields,
                    "generation": generation,
                }
                first_pid = storage.next_pid(con)
                name = f"seg-{uuid.uuid4().hex[:12]}"
                tmp_folder = base / temp_name(name)
                try:
                    con.execute("BEGIN IMMEDIATE")
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
                    os.replace(tmp_folder, base / name)
                    storage.register_segment(con, name, first_pid, writer, generation)
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    shutil.rmtree(tmp_folder, ignore_errors=True)
                    shutil.rmtree(base / name, ignore_errors=True)
                    raise
            finally:
                con.close()
            generations.publish(self.path, Pointer(pointer.base, generation))  # the commit point
            self.refresh()
        return writer.n_docs

    def delete(self, doc_ids: Sequence[str], *, missing: str = "error", wait: float = 0.0) -> int:
        """Delete documents, published as the next generation. Unknown ids raise ``KeyError``
        unless ``missing="ignore"``. ``wait``: seconds to queue behind another writer. Returns the
        count deleted."""
        doc_ids = [str(d) for d in doc_ids]
        with generations.writer_lock(self.path, wait):
            pointer, _, con = self._begin_write()
            try:
                pid_of = storage.live_pids(con, doc_ids)
                unknown = [d for d in doc_ids if d not in pid_of]
                if unknown and missing != "ignore":
                    shown = ", ".join(repr(u) for u in unknown[:5])
                    raise KeyError(f"{len(unknown)} id(s) not in the index (or already deleted): {shown}")
                pids = sorted(set(pid_of.values()))
                if not pids:
                    return 0
                generation = pointer.generation + 1
                con.execute("BEGIN IMMEDIATE")
                try:
                    storage.mark_deleted(con, pids, generation)
                    con.execute("COMMIT")
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
            finally:
                con.close()
            generations.publish(self.path, Pointer(pointer.base, generation))  # the commit point
            self.refresh()
        return len(pids)

    # ---------------------------------------------------------------- search
    def encode_queries(self, queries: list[str], batch_size: int = 64) -> list[np.ndarray]:
        self._require_model("encode text queries")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"query {i} is empty")
            problem = unicode_problem(q)
            if problem:
                raise ValueError(f"query {i} {problem}")
        with torch.inference_mode():
            vecs = self.model.encode(list(queries), "query", batch_size=batch_size)
        return [v.float().numpy() for v in vecs]

    def allowed(self, filter: dict[str, Any] | None, state: IndexState | None = None) -> np.ndarray:
        """Bool mask over pids: live documents matching ``filter`` (``filters.py``)."""
        st = state or self.state
        live = ~st.deleted
        if filter is None:
            return live
        where, params = compile_filter(filter)
        mask = np.zeros(len(live), dtype=bool)
        mask[st.matching(where, params)] = True
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
        stored texts (index built with ``store_texts=True``). The whole call reads one
        generation (the one :meth:`refresh` last switched to)."""
        st = self.state
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if rerank not in (None, "exact"):
            raise ValueError(f"rerank must be None or 'exact', got {rerank!r}")
        if rerank == "exact":
            if not st.has_texts:
                raise ValueError(f"{self.path}: rerank='exact' needs texts; build with store_texts=True")
            self._require_model("rerank exactly")
        allowed = self.allowed(filter, st)  # a malformed filter fails before any encoding
        qvecs = self._query_vectors(queries, st)
        settings = SearchSettings(**st.meta.get("search", {}))
        nprobe = nprobe or settings.nprobe
        ncandidates = max(k, ncandidates or settings.ncandidates)
        if not qvecs:
            return []
        results = []
        cscores, start = np.zeros((0, 0), np.float32), 0
        for n, q in enumerate(qvecs):
            if n % QUERY_BLOCK == 0:  # one GEMM per block of queries: (tokens, centroids) scores
                cscores = np.concatenate(qvecs[n : n + QUERY_BLOCK]) @ st.codec.centroids.T
                start = 0
            cs = cscores[start : start + len(q)]
            start += len(q)
            depth = k if rerank is None else 4 * k
            pids, scores = self._search_one(st, q, cs, depth, nprobe, ncandidates, settings, allowed)
            if rerank == "exact":
                pids, scores = self._rerank_exact(st, q, pids, k)
            results.append([(st.doc_ids[p], float(s)) for p, s in zip(pids, scores, strict=True)])
        return results

    def _query_vectors(self, queries: Any, st: IndexState) -> list[np.ndarray]:
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings or of embeddings, not one string")
        queries = list(queries)
        if queries and isinstance(queries[0], str):
            return self.encode_queries(queries)
        qvecs = [
            np.asarray(q.float() if isinstance(q, torch.Tensor) else q, dtype=np.float32) for q in queries
        ]
        for i, q in enumerate(qvecs):
            if q.ndim != 2 or q.shape[1] != st.codec.dim or len(q) == 0:
                raise ValueError(f"query {i}: expected a (n_tokens, {st.codec.dim}) matrix, got {q.shape}")
        return qvecs

    def _search_one(
        self,
        st: IndexState,
        q: np.ndarray,
        cs: np.ndarray,
        k: int,
        nprobe: int,
        ncandidates: int,
        settings: SearchSettings,
        allowed: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        n_pool = ncandidates * settings.prefilter_factor
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
            scores = stages.maxsim_vectors(q, pool, st.doclens, lambda p: _read_vectors(st, p))
        else:
            scores = stages.maxsim_decoded(q, cs, pool, st.doclens, lambda p: _read_tokens(st, p))
        best = stages.top(scores, k)
        return pool[best], scores[best]

    def _rerank_exact(
        self, st: IndexState, q: np.ndarray, pids: np.ndarray, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        texts = st.rows(pids, "text")
        docs = encode_documents(self.model, texts, 32)
        scores = np.array([(q @ d.T).max(axis=1).sum() for d in docs], dtype=np.float32)
        best = stages.top(scores, k)
        return pids[best], scores[best]

    # ---------------------------------------------------------------- stored fields
    def fields(self, doc_ids: Sequence[str], names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """The stored JSON fields of each document (all, or only ``names``); ``{}`` when none were
        stored. Unknown or deleted ids raise ``KeyError``."""
        st = self.state
        pid_of = st.pid_of
        unknown = [d for d in doc_ids if d not in pid_of]
        if unknown:
            raise KeyError(f"{len(unknown)} id(s) not in the index: {', '.join(map(repr, unknown[:5]))}")
        rows = st.rows([pid_of[d] for d in doc_ids], "fields")
        if names is None:
            return rows
        return [{n: row[n] for n in names if n in row} for row in rows]

    def stats(self) -> dict[str, Any]:
        st = self.state
        folder = self.base
        files = [folder / n for n in st.codec.files] + [folder / "docs.sqlite"]
        for s in st.segments:
            files += [folder / s.name / n for n in s.files]
        total = sum(p.stat().st_size for p in files)
        vec_bytes = sum(
            (folder / s.name / n).stat().st_size
            for s in st.segments
            for n in storage.TOKEN_FILES
            if n in s.files
        )
        n_tok = int(st.doclens.sum())
        return {
            "documents": int((~st.deleted).sum()),
            "generation": st.generation,
            "tokens": n_tok,
            "centroids": st.codec.n_centroids,
            "codec": st.codec.kind,
            "nbits": st.codec.bits_per_dim,
            "segments": len(st.segments),
            "bytes_total": total,
            "bytes_per_token_vectors": vec_bytes / max(1, n_tok),
            "bytes_per_token_total": total / max(1, n_tok),
        }


def _read_tokens(st: IndexState, pids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(codes, decoded residuals, 1 / decoded norms) of the tokens of the (sorted) ``pids``."""
    codes, residuals, norms = [], [], []
    segs = st.doc_segment[pids]
    for seg_no in np.unique(segs):
        sel = pids[segs == seg_no] if len(st.segments) > 1 else pids
        toks = stages.ranges(st.doc_starts[sel], st.doclens[sel])
        local = toks - st.seg_token_base[seg_no]
        seg = st.segments[seg_no]
        codes.append(st.codes[toks])
        residuals.append(st.codec.decode_residuals(np.take(seg.residuals, local, axis=0)))
        norms.append(np.take(seg.norms, local))
    if len(codes) == 1:
        return codes[0], residuals[0], 1.0 / np.maximum(norms[0], 1e-12)
    return (
        np.concatenate(codes),
        np.concatenate(residuals),
        1.0 / np.maximum(np.concatenate(norms), 1e-12),
    )


def _read_vectors(st: IndexState, pids: np.ndarray) -> np.ndarray:
    """The stored float16 token vectors of the (sorted) ``pids``, as float32 (tokens, dim)."""
    parts = []
    segs = st.doc_segment[pids]
    for seg_no in np.unique(segs):
        sel = pids[segs == seg_no] if len(st.segments) > 1 else pids
        local = stages.ranges(st.doc_starts[sel], st.doclens[sel]) - st.seg_token_base[seg_no]
        parts.append(np.take(st.segments[seg_no].vectors, local, axis=0).astype(np.float32))
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _not_an_index(path: Path) -> Exception:
    if not path.exists():
        return FileNotFoundError(f"{path}: no such index folder")
    if not path.is_dir():
        return IndexCorruptError(f"{path}: not an index folder (a file)")
    leftovers = [p.name for p in path.iterdir() if p.name.startswith(".base-")]
    hint = f"; an interrupted build left {leftovers[0]}: build again" if leftovers else ""
    return IndexCorruptError(f"{path}: not an index (no CURRENT or metadata.json){hint}")


def _check_output(output: Path) -> None:
    """Refuse a build output that is a file, or a non-empty folder that holds no index."""
    if output.exists() and not output.is_dir():
        raise ValueError(f"{output}: --output is a file; an index is a folder")
    if output.is_dir() and generations.read_pointer(output) is None:
        others = [
            p.name
            for p in output.iterdir()
            if p.name != generations.LOCK and not p.name.startswith((".base-", "base-", "CURRENT"))
        ]
        if others:
            raise ValueError(
                f"{output}: exists and is not an index folder (it holds {others[0]!r}); choose another "
                "output or remove it"
            )
