"""A PLAID-style multi-vector index: build (streaming), load (memory maps), search, add, delete.

Folder layout (one folder per index)::

    metadata.json      format version, model fingerprint, dim, codec ("pq" | "scalar"), nbits
                       (bits per dimension), #centroids, search defaults, and
                       {file: [size, sha256]} for the codec files below
    centroids.npy      (C, dim) float32, plus pq_centroids.npy (M, 256, dim / M) float32 (pq)
                       or bucket_cutoffs.npy / bucket_weights.npy (scalar): see codec.py
    docs.sqlite        table docs(pid, doc_id, deleted, text)   -- ids, tombstones, optional texts
                       table segments(name, first_pid, n_docs, n_tokens, files JSON)
    seg-<id>/          codes.npy (n_tokens,) uint16|int32, residuals.npy (n_tokens, residual
                       bytes) uint8, doclens.npy (n_docs,) int32, ivf.npy (pairs,) int32 pids grouped by
                       centroid, ivf_lens.npy (C,) int32

Atomicity: ``build`` writes everything into a temporary sibling folder and renames it into
place (``atomic_directory``), so a killed build leaves the previous index as it was. ``add``
writes a new segment folder (invisible until referenced) and then registers it and its
documents in ONE SQLite transaction; ``delete`` marks tombstones in one transaction. A process
killed at any point leaves either the old or the new state; unreferenced segment folders are
removed by the next writer. Every file's size (and sha256, ``verify=True``) is checked on
load: a half-written or corrupt folder raises :class:`IndexCorruptError`.

Search (PLAID, simplified to numpy/torch on CPU):

1. query tokens x centroids (one GEMM) -> top ``nprobe`` centroids per query token;
2. candidate documents = union of the inverted lists of the probed centroids, scored by a
   probe-only centroid MaxSim (a token's best probed centroid present in the document; the
   lowest probed score when none is); the best ``4 * ncandidates`` survive;
3. centroid-only MaxSim with all of each survivor's token codes; the best ``ncandidates`` survive;
4. residuals decompressed, exact MaxSim against the decompressed vectors -> top ``k``;
5. optional ``rerank="exact"``: re-encode the final candidates from stored texts (only when the
   index was built with ``store_texts=True``) and rescore with the original vectors.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colzero.index.codec import (
    CODECS,
    Codec,
    PQResidualCodec,
    ResidualCodec,
    code_dtype,
    default_num_centroids,
    load_codec,
)
from colzero.model.folder import atomic_directory

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
SEGMENT_FILES = ("codes.npy", "residuals.npy", "doclens.npy", "ivf.npy", "ivf_lens.npy")


class IndexCorruptError(ValueError):
    """The index folder is missing a file, or a file has the wrong size or checksum."""


class ModelMismatchError(ValueError):
    """The query model is not the model the index was built with."""


@dataclass
class SearchSettings:
    nprobe: int = 4
    ncandidates: int = 256
    prefilter_factor: int = 4


# ---------------------------------------------------------------------------- file helpers
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _describe(folder: Path, names: Iterable[str]) -> dict[str, list]:
    return {n: [(folder / n).stat().st_size, _sha256(folder / n)] for n in names}


def _fsync_dir(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def _check_files(folder: Path, files: dict[str, list], verify: bool) -> None:
    for name, (size, digest) in files.items():
        path = folder / name
        if not path.exists():
            raise IndexCorruptError(f"{path}: file is missing (index is incomplete or corrupt)")
        actual = path.stat().st_size
        if actual != size:
            raise IndexCorruptError(
                f"{path}: size {actual} bytes, metadata says {size} (half-written or corrupt index)"
            )
        if verify and _sha256(path) != digest:
            raise IndexCorruptError(f"{path}: sha256 differs from metadata (corrupt index)")


def _connect(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("PRAGMA synchronous=FULL")
    return con


def _create_schema(con: sqlite3.Connection) -> None:
    con.executescript(
        """
        CREATE TABLE docs (pid INTEGER PRIMARY KEY, doc_id TEXT NOT NULL,
                           deleted INTEGER NOT NULL DEFAULT 0, text TEXT);
        CREATE UNIQUE INDEX docs_live_id ON docs(doc_id) WHERE deleted = 0;
        CREATE TABLE segments (name TEXT PRIMARY KEY, first_pid INTEGER NOT NULL,
                               n_docs INTEGER NOT NULL, n_tokens INTEGER NOT NULL,
                               files TEXT NOT NULL);
        """
    )


def _ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Flat indices of the ranges [starts[i], starts[i] + lens[i])."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offs = np.cumsum(lens) - lens
    return np.repeat(starts - offs, lens) + np.arange(total)


# ---------------------------------------------------------------------------- documents
def iter_documents(docs: Any) -> Iterator[tuple[str, str]]:
    """Accept (id, text) pairs, {"_id"/"id", "title", "text"} dicts, or a JSONL path."""
    if isinstance(docs, str | os.PathLike):
        with open(docs, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{docs}: line {n}: invalid JSON ({exc.msg})") from exc
                yield _doc_from_row(row, f"{docs}: line {n}")
        return
    for n, row in enumerate(docs):
        if isinstance(row, dict):
            yield _doc_from_row(row, f"document {n}")
        else:
            doc_id, text = row
            yield str(doc_id), str(text)


def _doc_from_row(row: dict, where: str) -> tuple[str, str]:
    doc_id = row.get("_id", row.get("id"))
    if doc_id is None:
        raise ValueError(f"{where}: no '_id' or 'id' field")
    text = (str(row.get("title") or "") + " " + str(row.get("text") or "")).strip()
    return str(doc_id), text


def _chunks(items: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    chunk: list[tuple[str, str]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _encode_docs(model, texts: list[str], batch_size: int) -> list[np.ndarray]:
    with torch.inference_mode():
        vecs = model.encode(texts, "document", batch_size=batch_size)
    return [v.float().numpy() for v in vecs]


# ---------------------------------------------------------------------------- segment writer
class _SegmentWriter:
    """Streams compressed chunks into one segment folder (raw appends, .npy headers at close)."""

    def __init__(self, folder: Path, codec: Codec, first_pid: int) -> None:
        self.folder = folder
        folder.mkdir(parents=True)
        self.codec = codec
        self.first_pid = first_pid
        self.n_docs = 0
        self.n_tokens = 0
        self._codes = open(folder / "codes.raw", "wb")  # noqa: SIM115 (closed in close())
        self._res = open(folder / "residuals.raw", "wb")  # noqa: SIM115 (closed in close())
        self._lens: list[np.ndarray] = []
        self._ivf: list[np.ndarray] = []  # (centroid * 2**32 + local pid) unique per doc

    def write(self, vectors: list[np.ndarray]) -> None:
        lens = np.array([len(v) for v in vectors], dtype=np.int32)
        flat = np.concatenate(vectors) if len(vectors) else np.zeros((0, self.codec.dim), np.float32)
        codes, packed = self.codec.compress(flat)
        self._codes.write(codes.tobytes())
        self._res.write(packed.tobytes())
        local = np.repeat(np.arange(self.n_docs, self.n_docs + len(vectors), dtype=np.int64), lens)
        self._ivf.append(np.unique(codes.astype(np.int64) * (1 << 32) + local))
        self._lens.append(lens)
        self.n_docs += len(vectors)
        self.n_tokens += len(flat)

    def close(self) -> dict[str, list]:
        self._codes.close()
        self._res.close()
        f = self.folder
        dt = code_dtype(self.codec.n_centroids)
        _raw_to_npy(f / "codes.raw", f / "codes.npy", dt, (self.n_tokens,))
        _raw_to_npy(
            f / "residuals.raw",
            f / "residuals.npy",
            np.dtype(np.uint8),
            (self.n_tokens, self.codec.bytes_per_residual),
        )
        np.save(f / "doclens.npy", np.concatenate(self._lens) if self._lens else np.zeros(0, np.int32))
        pairs = np.concatenate(self._ivf) if self._ivf else np.zeros(0, np.int64)
        pairs.sort()
        cents = pairs >> 32
        pids = (pairs & ((1 << 32) - 1)) + self.first_pid
        np.save(f / "ivf.npy", pids.astype(np.int32))
        np.save(f / "ivf_lens.npy", np.bincount(cents, minlength=self.codec.n_centroids).astype(np.int32))
        _fsync_dir(f)
        return _describe(f, SEGMENT_FILES)


def _raw_to_npy(raw: Path, out: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Prefix a raw byte stream with an .npy header without loading it."""
    header_src = np.lib.format.header_data_from_array_1_0(np.zeros((0,), dtype=dtype))
    header_src["shape"] = shape
    with open(out, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header_src)
        with open(raw, "rb") as r:
            shutil.copyfileobj(r, f, 1 << 22)
    raw.unlink()


# ---------------------------------------------------------------------------- the index
class Index:
    """A loaded index; build with :meth:`Index.build`, open with :meth:`Index.load`."""

    def __init__(self, path: Path, model=None, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.model = None
        self._verify = verify
        self._reload()
        if model is not None:
            self.attach_model(model)

    # ---------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | os.PathLike[str], model=None, *, verify: bool = True) -> Index:
        return cls(Path(path), model, verify=verify)

    def _reload(self) -> None:
        path = self.path
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such index folder")
        meta_path = path / "metadata.json"
        if not meta_path.exists():
            raise IndexCorruptError(f"{meta_path}: file is missing (not an index, or a half-written one)")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise IndexCorruptError(f"{meta_path}: invalid JSON ({exc.msg})") from exc
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexCorruptError(f"{meta_path}: format_version {meta.get('format_version')} unsupported")
        self.meta = meta
        _check_files(path, meta["files"], self._verify)
        if not (path / "docs.sqlite").exists():
            raise IndexCorruptError(f"{path / 'docs.sqlite'}: file is missing")
        try:
            self.codec = load_codec(path, meta)
        except (ValueError, KeyError) as exc:
            raise IndexCorruptError(f"{meta_path}: {exc}") from exc
        self.settings = SearchSettings(**meta.get("search", {}))
        try:
            con = _connect(path / "docs.sqlite")
            segs = con.execute(
                "SELECT name, first_pid, n_docs, n_tokens, files FROM segments ORDER BY first_pid"
            ).fetchall()
            rows = con.execute(
                "SELECT pid, doc_id, deleted, text IS NOT NULL FROM docs ORDER BY pid"
            ).fetchall()
            con.close()
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptError(f"{path / 'docs.sqlite'}: {exc}") from exc
        self.segments = []
        codes, doclens, ivf_c, ivf_p = [], [], [], []
        C = self.codec.n_centroids
        for name, first_pid, n_docs, n_tokens, files in segs:
            folder = path / name
            _check_files(folder, json.loads(files), self._verify)
            seg = {
                "name": name,
                "first_pid": first_pid,
                "n_docs": n_docs,
                "codes": np.load(folder / "codes.npy", mmap_mode="r"),
                "residuals": np.load(folder / "residuals.npy", mmap_mode="r"),
            }
            lens = np.load(folder / "doclens.npy")
            if len(lens) != n_docs or len(seg["codes"]) != n_tokens:
                raise IndexCorruptError(f"{folder}: document/token counts disagree with docs.sqlite")
            self.segments.append(seg)
            codes.append(np.asarray(seg["codes"]))
            doclens.append(lens.astype(np.int64))
            ivf_lens = np.load(folder / "ivf_lens.npy")
            ivf_c.append(np.repeat(np.arange(C, dtype=np.int32), ivf_lens))
            ivf_p.append(np.load(folder / "ivf.npy"))
        n = sum(s["n_docs"] for s in self.segments)
        if len(rows) != n:
            raise IndexCorruptError(f"{path}: docs.sqlite lists {len(rows)} documents, segments hold {n}")
        self.codes = np.concatenate(codes) if codes else np.zeros(0, np.int64)
        self.doclens = np.concatenate(doclens) if doclens else np.zeros(0, np.int64)
        self.doc_starts = np.cumsum(self.doclens) - self.doclens  # global token offsets
        self.doc_segment = np.repeat(np.arange(len(self.segments)), [s["n_docs"] for s in self.segments])
        self.seg_token_base = np.cumsum([0] + [len(s["codes"]) for s in self.segments])
        cents = np.concatenate(ivf_c) if ivf_c else np.zeros(0, np.int32)
        pids = np.concatenate(ivf_p) if ivf_p else np.zeros(0, np.int32)
        order = np.argsort(cents, kind="stable")
        self.ivf_pids = pids[order].astype(np.int64)
        self.ivf_offsets = np.concatenate([[0], np.cumsum(np.bincount(cents, minlength=C))]).astype(np.int64)
        self.doc_ids = [r[1] for r in rows]
        self.deleted = np.array([bool(r[2]) for r in rows], dtype=bool)
        self.has_texts = bool(rows) and all(r[3] for r in rows)
        self._pid_of = {r[1]: r[0] for r in rows if not r[2]}

    def __len__(self) -> int:
        return int((~self.deleted).sum())

    @property
    def fingerprint(self) -> str:
        return self.meta["model_fingerprint"]

    def attach_model(self, model) -> None:
        got = model.fingerprint()
        if got != self.fingerprint:
            raise ModelMismatchError(
                f"{self.path}: index was built with model fingerprint {self.fingerprint}, "
                f"the query model has {got}; use the same model (or rebuild the index)"
            )
        self.model = model

    # ---------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        model,
        documents: Any,
        output: str | os.PathLike[str],
        *,
        codec: str = "pq",
        nbits: int | None = None,
        n_centroids: int | None = None,
        chunk_size: int = 4096,
        batch_size: int = 32,
        kmeans_sample: int = 262_144,
        kmeans_niter: int = 4,
        store_texts: bool = False,
        embeddings: Sequence[np.ndarray | torch.Tensor] | None = None,
        expected_documents: int | None = None,
        settings: SearchSettings | None = None,
        model_name: str | None = None,
        seed: int = 0,
        _fail_after_chunks: int | None = None,
    ) -> Index:
        """Encode ``documents`` in chunks and write an index folder atomically.

        Centroids are trained on a sample of the first chunk's token vectors; their number is
        PLAID's ``16 * sqrt(#tokens)`` rounded down to a power of two, the token count
        estimated from the first chunk times ``expected_documents`` (``len(documents)`` when
        it has one). Memory is bounded by one chunk of vectors. ``embeddings``: precomputed
        document matrices aligned with ``documents`` (may be memory-mapped); the model is then
        only used for its fingerprint. ``codec``: ``"pq"`` (default; residuals product-quantised,
        dim / 4 bytes per vector) or ``"scalar"`` (ColBERTv2's ``nbits`` = 2 or 4 bits per value).
        """
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
        if codec == "pq" and nbits is not None:
            raise ValueError("nbits sets the scalar codec's bits per value: pass codec='scalar' with it")
        if codec == "scalar":
            nbits = 2 if nbits is None else nbits
            if nbits not in (2, 4):
                raise ValueError(f"nbits must be 2 or 4, got {nbits}")
        if expected_documents is None and hasattr(documents, "__len__") and not isinstance(documents, str):
            expected_documents = len(documents)
        t0 = time.time()
        stream = _chunks(iter_documents(documents), chunk_size)
        output = Path(output)
        with atomic_directory(output) as tmp:
            first = next(stream, None)
            if first is None:
                raise ValueError("cannot build an index from zero documents")
            encode = _encoder(model, embeddings, batch_size)
            first_vecs = encode(first, 0)
            trained = _train_codec(
                first_vecs,
                len(first),
                expected_documents,
                n_centroids,
                codec,
                nbits,
                kmeans_sample,
                kmeans_niter,
                seed,
            )
            codec_meta = trained.save(tmp)
            con = _connect(tmp / "docs.sqlite")
            _create_schema(con)
            name = f"seg-{uuid.uuid4().hex[:12]}"
            writer = _SegmentWriter(tmp / name, trained, 0)
            seen: set[str] = set()
            con.execute("BEGIN")
            for n, (chunk, vecs) in enumerate(_encoded_chunks(encode, first, first_vecs, stream)):
                if _fail_after_chunks is not None and n >= _fail_after_chunks:
                    raise RuntimeError("injected failure (test)")
                _insert_docs(con, chunk, writer.first_pid + writer.n_docs, store_texts, seen)
                writer.write(vecs)
            files = writer.close()
            con.execute(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                (name, 0, writer.n_docs, writer.n_tokens, json.dumps(files)),
            )
            con.execute("COMMIT")
            con.close()
            meta = {
                "format_version": FORMAT_VERSION,
                "model_fingerprint": model.fingerprint(),
                "model_config": _model_config(model),
                "model_name": model_name,
                "dim": trained.dim,
                **codec_meta,
                "n_centroids": trained.n_centroids,
                "store_texts": store_texts,
                "search": (settings or SearchSettings()).__dict__,
                "build": {"documents": writer.n_docs, "tokens": writer.n_tokens, "seconds": time.time() - t0},
                "files": _describe(tmp, trained.files),
            }
            (tmp / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
            _fsync_dir(tmp)
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
        _fail_after_chunks: int | None = None,
    ) -> int:
        """Encode new documents with the existing centroids into a new segment; atomic.

        Raises ``ValueError`` if an id is already live in the index. Returns the count added.
        """
        self._require_model("add documents")
        store_texts = self.meta.get("store_texts", False) if store_texts is None else store_texts
        self._remove_orphans()
        first_pid = len(self.doc_ids)
        name = f"seg-{uuid.uuid4().hex[:12]}"
        tmp_folder = self.path / f".{name}.tmp"
        con = _connect(self.path / "docs.sqlite")
        try:
            writer = _SegmentWriter(tmp_folder, self.codec, first_pid)
            con.execute("BEGIN IMMEDIATE")
            seen: set[str] = set()
            for n, chunk in enumerate(_chunks(iter_documents(documents), chunk_size)):
                if _fail_after_chunks is not None and n >= _fail_after_chunks:
                    raise RuntimeError("injected failure (test)")
                _insert_docs(con, chunk, first_pid + writer.n_docs, store_texts, seen)
                writer.write(_encode_docs(self.model, [t for _, t in chunk], batch_size))
            if writer.n_docs == 0:
                con.execute("ROLLBACK")
                shutil.rmtree(tmp_folder, ignore_errors=True)
                return 0
            files = writer.close()
            os.replace(tmp_folder, self.path / name)
            con.execute(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?)",
                (name, first_pid, writer.n_docs, writer.n_tokens, json.dumps(files)),
            )
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
        unknown = [d for d in doc_ids if d not in self._pid_of]
        if unknown and missing != "ignore":
            shown = ", ".join(repr(u) for u in unknown[:5])
            raise KeyError(f"{len(unknown)} id(s) not in the index (or already deleted): {shown}")
        pids = sorted({self._pid_of[d] for d in doc_ids if d in self._pid_of})
        con = _connect(self.path / "docs.sqlite")
        try:
            con.execute("BEGIN IMMEDIATE")
            con.executemany("UPDATE docs SET deleted = 1 WHERE pid = ?", [(p,) for p in pids])
            con.execute("COMMIT")
        finally:
            con.close()
        self._reload()
        return len(pids)

    def _remove_orphans(self) -> None:
        known = {s["name"] for s in self.segments}
        for p in self.path.iterdir():
            if p.is_dir() and (
                p.name.startswith(".seg-") or (p.name.startswith("seg-") and p.name not in known)
            ):
                shutil.rmtree(p, ignore_errors=True)

    def _require_model(self, what: str) -> None:
        if self.model is None:
            raise ValueError(f"a model is needed to {what}: Index.load(path, model) or attach_model(model)")

    # ---------------------------------------------------------------- search
    def encode_queries(self, queries: list[str], batch_size: int = 64) -> list[np.ndarray]:
        self._require_model("encode text queries")
        for i, q in enumerate(queries):
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"query {i} is empty")
        with torch.inference_mode():
            vecs = self.model.encode(list(queries), "query", batch_size=batch_size)
        return [v.float().numpy() for v in vecs]

    def search(
        self,
        queries: Sequence[str] | Sequence[np.ndarray | torch.Tensor] | np.ndarray | torch.Tensor,
        k: int = 10,
        *,
        nprobe: int | None = None,
        ncandidates: int | None = None,
        rerank: str | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-``k`` (doc_id, score) per query, best first. ``queries``: texts (needs the model)
        or query token matrices (Lq, dim). ``rerank="exact"`` re-encodes the final candidates
        from stored texts (index built with ``store_texts=True``)."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if rerank not in (None, "exact"):
            raise ValueError(f"rerank must be None or 'exact', got {rerank!r}")
        if rerank == "exact":
            if not self.has_texts:
                raise ValueError(f"{self.path}: rerank='exact' needs texts; build with store_texts=True")
            self._require_model("rerank exactly")
        if isinstance(queries, str):
            raise TypeError("queries must be a list of strings or of embeddings, not one string")
        queries = list(queries)
        if queries and isinstance(queries[0], str):
            qvecs = self.encode_queries(queries)
        else:
            qvecs = [
                np.asarray(q.float() if isinstance(q, torch.Tensor) else q, dtype=np.float32) for q in queries
            ]
            for i, q in enumerate(qvecs):
                if q.ndim != 2 or q.shape[1] != self.codec.dim or len(q) == 0:
                    raise ValueError(
                        f"query {i}: expected a (n_tokens, {self.codec.dim}) matrix, got {q.shape}"
                    )
        nprobe = nprobe or self.settings.nprobe
        ncandidates = max(k, ncandidates or self.settings.ncandidates)
        if not qvecs:
            return []
        # one GEMM for every query token of the batch
        flat = np.concatenate(qvecs)
        cscores = flat @ self.codec.centroids.T
        results = []
        start = 0
        for q in qvecs:
            s = cscores[start : start + len(q)]
            start += len(q)
            pids, scores = self._search_one(q, s, k, nprobe, ncandidates, rerank)
            results.append([(self.doc_ids[p], float(sc)) for p, sc in zip(pids, scores, strict=True)])
        return results

    def _search_one(self, q, cs, k, nprobe, ncandidates, rerank):
        nq, C = cs.shape
        nprobe = min(nprobe, C)
        if nprobe < C:
            probe = torch.topk(torch.from_numpy(cs), nprobe, dim=1, sorted=False).indices.numpy()
        else:
            probe = np.tile(np.arange(C), (nq, 1))
        pscore = np.take_along_axis(cs, probe, axis=1)  # (nq, nprobe)
        # stage 1: probe-only centroid MaxSim over the inverted lists
        probe = probe.ravel()
        starts = self.ivf_offsets[probe]
        lens = self.ivf_offsets[probe + 1] - starts
        cand = self.ivf_pids[_ranges(starts, lens)]
        if len(cand) == 0:
            return [], []
        uniq, inv = np.unique(cand, return_inverse=True)
        nu = len(uniq)
        rows = np.repeat(np.arange(0, nq * nu, nu).repeat(nprobe), lens)
        floor = torch.from_numpy(pscore.min(axis=1))
        approx = floor[:, None].expand(nq, nu).contiguous().view(-1)
        vals = torch.from_numpy(np.repeat(pscore.ravel(), lens))
        approx.scatter_reduce_(0, torch.from_numpy(rows + inv), vals, "amax")
        # numpy adds the rows one after another for every column alike, so documents with the same
        # per-token values tie exactly (torch's sum over dim 0 rounds the last columns differently)
        approx = approx.view(nq, nu).numpy().sum(0)
        approx[self.deleted[uniq]] = -np.inf
        pool = uniq[_top(approx, ncandidates * self.settings.prefilter_factor)]
        pool = pool[~self.deleted[pool]]
        if len(pool) == 0:
            return [], []
        # stage 2: centroid-only MaxSim with every token code of the pooled documents; np.take
        # along axis 1 gives a C-ordered (nq, tokens) matrix, so reduceat runs over contiguous rows
        # (cs[:, codes] is laid out the other way round and makes reduceat ~10x slower)
        if len(pool) > ncandidates:
            pool.sort()
            plens = self.doclens[pool]
            toks = _ranges(self.doc_starts[pool], plens)
            sim = np.take(cs, self.codes[toks].astype(np.intp), axis=1)
            cscore = np.maximum.reduceat(sim, np.cumsum(plens) - plens, axis=1).sum(0)
            pool = pool[_top(cscore, ncandidates)]
        # stage 3: MaxSim against the decompressed vectors; normalising the vectors is folded into
        # the (nq, tokens) similarities: (q . v) / |v| instead of q . (v / |v|)
        pool.sort()
        vecs = self._decompress(pool)
        norms = torch.linalg.vector_norm(vecs, dim=1).clamp_min_(1e-12)
        sim = (torch.from_numpy(q) @ vecs.T).div_(norms).numpy()
        plens = self.doclens[pool]
        scores = np.maximum.reduceat(sim, np.cumsum(plens) - plens, axis=1).sum(0)
        best = _top(scores, k if rerank is None else max(k, min(len(pool), 4 * k)))
        pids, scores = pool[best], scores[best]
        if rerank == "exact":
            pids, scores = self._rerank_exact(q, pids, k)
        return pids, scores

    def _decompress(self, pids: np.ndarray) -> torch.Tensor:
        """Unnormalised decompressed token vectors of the (sorted) ``pids``, (tokens, dim)."""
        parts = []
        segs = self.doc_segment[pids]
        for seg_no in np.unique(segs):
            sel = pids[segs == seg_no] if len(self.segments) > 1 else pids
            seg = self.segments[seg_no]
            toks = _ranges(self.doc_starts[sel], self.doclens[sel])
            local = toks - self.seg_token_base[seg_no]
            packed = np.asarray(np.take(seg["residuals"], local, axis=0))
            parts.append(self.codec.decompress_torch(self.codes[toks], packed, normalize=False))
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _rerank_exact(self, q, pids, k):
        con = _connect(self.path / "docs.sqlite")
        texts = [con.execute("SELECT text FROM docs WHERE pid = ?", (int(p),)).fetchone()[0] for p in pids]
        con.close()
        docs = _encode_docs(self.model, texts, 32)
        scores = np.array([(q @ d.T).max(axis=1).sum() for d in docs], dtype=np.float32)
        best = _top(scores, k)
        return pids[best], scores[best]

    def stats(self) -> dict[str, Any]:
        files = [self.path / n for n in self.codec.files] + [self.path / "docs.sqlite"]
        for s in self.segments:
            files += [self.path / s["name"] / n for n in SEGMENT_FILES]
        total = sum(p.stat().st_size for p in files)
        vec_bytes = sum(
            (self.path / s["name"] / n).stat().st_size
            for s in self.segments
            for n in ("codes.npy", "residuals.npy")
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


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest scores, best first (ties broken by index)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(scores):
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        # argpartition keeps an arbitrary subset of the scores tied with the k-th: keep the
        # smallest indices instead
        above = np.flatnonzero(scores > kth)
        part = np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def _train_codec(
    first_vecs, n_first, expected_docs, n_centroids, kind, nbits, sample_size, niter, seed
) -> Codec:
    n_tok_first = sum(len(v) for v in first_vecs)
    est_tokens = n_tok_first * max(1.0, (expected_docs or n_first) / max(1, n_first))
    if n_centroids is None:
        n_centroids = default_num_centroids(int(est_tokens))
    flat = np.concatenate(first_vecs)
    rng = np.random.default_rng(seed)
    sample_size = min(sample_size, 64 * n_centroids)  # faiss uses at most 256 per centroid anyway
    if len(flat) > sample_size:
        flat = flat[rng.choice(len(flat), sample_size, replace=False)]
    # faiss warns below 39 points per centroid; cap so k-means stays meaningful
    n_centroids = max(1, min(n_centroids, len(flat) // 8 or 1))
    if kind == "pq":
        return PQResidualCodec.train(flat, n_centroids, niter=niter, seed=seed)
    return ResidualCodec.train(flat, n_centroids, nbits, niter=niter, seed=seed)


def _encoder(model, embeddings, batch_size):
    if embeddings is None:
        return lambda chunk, offset: _encode_docs(model, [t for _, t in chunk], batch_size)

    def take(chunk, offset):
        vecs = embeddings[offset : offset + len(chunk)]
        if len(vecs) != len(chunk):
            raise ValueError("embeddings has fewer rows than documents")
        return [np.asarray(v.float() if isinstance(v, torch.Tensor) else v, dtype=np.float32) for v in vecs]

    return take


def _encoded_chunks(encode, first, first_vecs, stream):
    yield first, first_vecs
    offset = len(first)
    for chunk in stream:
        yield chunk, encode(chunk, offset)
        offset += len(chunk)


def _insert_docs(con, chunk, first_pid, store_texts, seen: set[str]) -> None:
    for i, (doc_id, text) in enumerate(chunk):
        if doc_id in seen:
            raise ValueError(f"duplicate document id {doc_id!r}")
        seen.add(doc_id)
        try:
            con.execute(
                "INSERT INTO docs (pid, doc_id, deleted, text) VALUES (?, ?, 0, ?)",
                (first_pid + i, doc_id, text if store_texts else None),
            )
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"document id {doc_id!r} is already in the index") from exc


def _model_config(model) -> dict[str, Any]:
    from dataclasses import asdict

    try:
        return asdict(model.config)
    except TypeError:
        return {}
