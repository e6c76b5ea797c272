"""The index's on-disk format: files, checksums, the SQLite document table, loading.

An index folder holds generations (``generations.py``); each generation names a *base*, one
folder per build::

    metadata.json      format version, model fingerprint, dim, codec ("pq" | "scalar"), nbits
                       (bits per dimension), #centroids, search defaults, and
                       {file: [size, sha256]} for the codec files below
    centroids.npy      (C, dim) float32, plus pq_centroids.npy (M, 256, dim / M) float32 (pq)
                       or bucket_cutoffs.npy / bucket_weights.npy (scalar): see codec.py
    docs.sqlite        table docs(pid, doc_id, text, fields, origin, added_gen, deleted_gen): ids,
                       the encoded text (``store_texts``), the row's other JSON fields
                       (``store_fields``; filters and search results read them), the file:line
                       the document was read from (duplicate-id errors name it), and the
                       generations that added and deleted the row;
                       table segments(name, first_pid, n_docs, n_tokens, files JSON, added_gen)
    seg-<id>/          codes.npy (n_tokens,) uint16|int32, residuals.npy (n_tokens, residual
                       bytes) uint8, doclens.npy (n_docs,) int32, ivf.npy (pairs,) int32 pids
                       grouped by centroid, ivf_lens.npy (C,) int32, norms.npy (n_tokens,)
                       float32 ``|centroid + decoded residual|`` (search divides by it instead of
                       re-normalising decoded vectors; segments written before it existed get it
                       computed on load)

Generation ``g`` of a base is the segments and rows with ``added_gen <= g``, a row being deleted
when ``deleted_gen <= g``. Rows and segment files never change once written (a delete only sets
``deleted_gen``), so a reader holding generation ``g`` reads the same rows however far writers
have moved on; the table is in SQLite's write-ahead-log mode, so they never block it. Every
file's size (and sha256, ``verify=True``) is checked on load: a half-written or corrupt base
raises :class:`IndexCorruptError`. Format 1/2 tables (a ``deleted`` column, no generations) are
read as generation 0 and converted by the first writer (:func:`upgrade_schema`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from colzero.data.readers import DataError, remove_stale_temps
from colzero.index.codec import Codec, code_dtype, load_codec
from colzero.index.documents import Document
from colzero.index.stages import ranges

FORMAT_VERSION = 3
#: 1: no fields / origin columns (read as empty); 1 and 2: no generations (read as generation 0)
READABLE_VERSIONS = (1, 2, 3)
SEGMENT_FILES = ("codes.npy", "residuals.npy", "norms.npy", "doclens.npy", "ivf.npy", "ivf_lens.npy")
#: optional: the token vectors themselves in float16 (``store_vectors``), what search scores the
#: final candidates with instead of decoding their residuals
VECTORS_FILE = "vectors.npy"
#: the files every token has a row in (what "bytes per token vector" counts)
TOKEN_FILES = ("codes.npy", "residuals.npy", "norms.npy", VECTORS_FILE)


class IndexCorruptError(ValueError):
    """The index folder is missing a file, or a file has the wrong size or checksum."""


# ---------------------------------------------------------------------------- files
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def describe(folder: Path, names: Iterable[str]) -> dict[str, list]:
    """{name: [size, sha256]} of files in ``folder`` (what ``check_files`` verifies)."""
    return {n: [(folder / n).stat().st_size, sha256(folder / n)] for n in names}


def fsync_dir(folder: Path) -> None:
    for p in folder.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def check_files(folder: Path, files: dict[str, list], verify: bool) -> None:
    for name, (size, digest) in files.items():
        path = folder / name
        if not path.exists():
            raise IndexCorruptError(f"{path}: file is missing (index is incomplete or corrupt)")
        actual = path.stat().st_size
        if actual != size:
            raise IndexCorruptError(
                f"{path}: size {actual} bytes, metadata says {size} (half-written or corrupt index)"
            )
        if verify and sha256(path) != digest:
            raise IndexCorruptError(f"{path}: sha256 differs from metadata (corrupt index)")


def raw_to_npy(raw: Path, out: Path, dtype: np.dtype, shape: tuple[int, ...]) -> None:
    """Prefix a raw byte stream with an .npy header without loading it (``raw`` is removed)."""
    header = np.lib.format.header_data_from_array_1_0(np.zeros((0,), dtype=dtype))
    header["shape"] = shape
    with open(out, "wb") as f:
        np.lib.format.write_array_header_1_0(f, header)
        with open(raw, "rb") as r:
            shutil.copyfileobj(r, f, 1 << 20)
    raw.unlink()


def write_metadata(folder: Path, meta: dict[str, Any]) -> None:
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such index folder")
    meta_path = path / "metadata.json"
    if not meta_path.exists():
        raise IndexCorruptError(f"{meta_path}: file is missing (not an index, or a half-written one)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IndexCorruptError(f"{meta_path}: invalid JSON ({exc.msg})") from exc
    if meta.get("format_version") not in READABLE_VERSIONS:
        raise IndexCorruptError(f"{meta_path}: format_version {meta.get('format_version')} unsupported")
    return meta


# ---------------------------------------------------------------------------- the document table
def connect(path: Path, *, write: bool = False) -> sqlite3.Connection:
    """A connection to a document table. Readers never set pragmas that need a lock; writers
    (serialised by the index's writer lock) switch the table to the write-ahead log, so readers
    are never blocked by them."""
    con = sqlite3.connect(str(path), timeout=30, isolation_level=None, check_same_thread=False)
    if write:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
    return con


def create_schema(con: sqlite3.Connection) -> None:
    """The format-3 tables: rows and segments carry the generation that added (and deleted) them."""
    con.executescript(
        """
        CREATE TABLE docs (pid INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, text TEXT, fields TEXT,
                           origin TEXT, added_gen INTEGER NOT NULL, deleted_gen INTEGER);
        CREATE UNIQUE INDEX docs_live ON docs(doc_id) WHERE deleted_gen IS NULL;
        CREATE INDEX docs_added ON docs(added_gen);
        CREATE INDEX docs_deleted ON docs(deleted_gen) WHERE deleted_gen IS NOT NULL;
        CREATE TABLE segments (name TEXT PRIMARY KEY, first_pid INTEGER NOT NULL,
                               n_docs INTEGER NOT NULL, n_tokens INTEGER NOT NULL,
                               files TEXT NOT NULL, added_gen INTEGER NOT NULL);
        """
    )


def columns(con: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in con.execute(f"PRAGMA table_info({table})")}


def is_generational(con: sqlite3.Connection) -> bool:
    return "added_gen" in columns(con, "docs")


def upgrade_schema(con: sqlite3.Connection) -> None:
    """Bring a format 1/2 document table to format 3 (inside the caller's transaction): the
    version-2 columns, then generations (everything present is generation 0; tombstoned rows are
    deleted at generation 0)."""
    have = columns(con, "docs")
    for column in ("fields", "origin"):
        if column not in have:
            con.execute(f"ALTER TABLE docs ADD COLUMN {column} TEXT")
    if "added_gen" in have:
        return
    con.execute("ALTER TABLE docs ADD COLUMN added_gen INTEGER NOT NULL DEFAULT 0")
    con.execute("ALTER TABLE docs ADD COLUMN deleted_gen INTEGER")
    con.execute("UPDATE docs SET deleted_gen = 0 WHERE deleted != 0")
    con.execute("DROP INDEX IF EXISTS docs_live_id")
    con.execute("CREATE UNIQUE INDEX docs_live ON docs(doc_id) WHERE deleted_gen IS NULL")
    con.execute("CREATE INDEX docs_added ON docs(added_gen)")
    con.execute("CREATE INDEX docs_deleted ON docs(deleted_gen) WHERE deleted_gen IS NOT NULL")
    con.execute("ALTER TABLE segments ADD COLUMN added_gen INTEGER NOT NULL DEFAULT 0")


def rollback_unpublished(con: sqlite3.Connection, generation: int) -> list[str]:
    """Undo what a change killed before it published left in the table: rows and segments of
    generations after ``generation``, deletions marked after it. Returns the segments dropped."""
    con.execute("BEGIN IMMEDIATE")
    try:
        names = [r[0] for r in con.execute("SELECT name FROM segments WHERE added_gen > ?", (generation,))]
        con.execute("DELETE FROM segments WHERE added_gen > ?", (generation,))
        con.execute("DELETE FROM docs WHERE added_gen > ?", (generation,))
        con.execute("UPDATE docs SET deleted_gen = NULL WHERE deleted_gen > ?", (generation,))
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return names


def next_pid(con: sqlite3.Connection) -> int:
    return int(con.execute("SELECT COALESCE(MAX(pid) + 1, 0) FROM docs").fetchone()[0])


def insert_documents(
    con: sqlite3.Connection,
    docs: Sequence[Document],
    first_pid: int,
    *,
    store_texts: bool,
    store_fields: bool,
    session_first_pid: int,
    generation: int,
) -> None:
    """Insert ``docs`` as pids ``first_pid...`` of ``generation``. A live id raises
    :class:`DataError`: naming both lines when the first one was read by this build or add (pids
    from ``session_first_pid``)."""
    for i, doc in enumerate(docs):
        fields = json.dumps(doc.fields, ensure_ascii=False) if store_fields and doc.fields else None
        try:
            con.execute(
                "INSERT INTO docs (pid, doc_id, text, fields, origin, added_gen) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    first_pid + i,
                    doc.id,
                    doc.text if store_texts else None,
                    fields,
                    doc.where or None,
                    generation,
                ),
            )
        except sqlite3.IntegrityError as exc:
            pid, origin = con.execute(
                "SELECT pid, origin FROM docs WHERE doc_id = ? AND deleted_gen IS NULL", (doc.id,)
            ).fetchone()
            if pid >= session_first_pid:
                raise DataError(
                    f"{doc.where}: field '_id': duplicate document id {doc.id!r} (first at {origin})"
                ) from exc
            raise DataError(
                f"{doc.where}: field '_id': document id {doc.id!r} is already in the index"
            ) from exc


def register_segment(
    con: sqlite3.Connection, name: str, first_pid: int, writer: SegmentWriter, generation: int
) -> None:
    con.execute(
        "INSERT INTO segments (name, first_pid, n_docs, n_tokens, files, added_gen) VALUES (?, ?, ?, ?, ?, ?)",
        (name, first_pid, writer.n_docs, writer.n_tokens, json.dumps(writer.files), generation),
    )


def live_pids(con: sqlite3.Connection, doc_ids: Sequence[str]) -> dict[str, int]:
    """{id: pid} of the ids live in the latest state of the table."""
    found: dict[str, int] = {}
    unique = list(dict.fromkeys(doc_ids))
    for s in range(0, len(unique), 500):  # SQLite's default limit on bound parameters is 999
        part = unique[s : s + 500]
        marks = ",".join("?" * len(part))
        found.update(
            con.execute(
                f"SELECT doc_id, pid FROM docs WHERE deleted_gen IS NULL AND doc_id IN ({marks})", part
            )
        )
    return found


def mark_deleted(con: sqlite3.Connection, pids: Sequence[int], generation: int) -> None:
    """Mark rows deleted at ``generation`` (inside the caller's transaction)."""
    con.executemany(
        "UPDATE docs SET deleted_gen = ? WHERE pid = ? AND deleted_gen IS NULL",
        [(generation, int(p)) for p in pids],
    )


def select_pids(con: sqlite3.Connection, n_rows: int, where_sql: str, params: Sequence[Any]) -> np.ndarray:
    """Sorted pids below ``n_rows`` whose row matches a SQL condition over ``docs`` (the caller
    keeps those live in its generation)."""
    rows = con.execute(f"SELECT pid FROM docs WHERE pid < ? AND ({where_sql})", [n_rows, *params]).fetchall()
    return np.sort(np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows)))


def fetch_rows(con: sqlite3.Connection, pids: Sequence[int], column: str) -> list[Any]:
    """``column`` ("text" or "fields", JSON-decoded) of each pid, in the order given (rows never
    change once written, so any generation that has a pid reads the same row)."""
    if column not in ("text", "fields"):
        raise ValueError(f"unknown docs column {column!r}")
    if column not in columns(con, "docs"):
        return [None] * len(pids)
    found: dict[int, Any] = {}
    unique = sorted({int(p) for p in pids})
    for s in range(0, len(unique), 500):  # SQLite's default limit on bound parameters is 999
        part = unique[s : s + 500]
        marks = ",".join("?" * len(part))
        found.update(con.execute(f"SELECT pid, {column} FROM docs WHERE pid IN ({marks})", part))
    if column == "fields":
        return [json.loads(found[int(p)]) if found.get(int(p)) else {} for p in pids]
    return [found.get(int(p)) for p in pids]


# ---------------------------------------------------------------------------- segments
class SegmentWriter:
    """Streams compressed chunks into one segment folder (raw appends, .npy headers at close).

    Memory: the chunk being written and the (centroid, document) pairs of the inverted lists
    (one int64 per distinct centroid of a document), never the segment's vectors.
    """

    def __init__(self, folder: Path, codec: Codec, first_pid: int, store_vectors: bool = False) -> None:
        self.folder = folder
        self.store_vectors = store_vectors
        folder.mkdir(parents=True)
        self.codec = codec
        self.first_pid = first_pid
        self.n_docs = 0
        self.n_tokens = 0
        self.files: dict[str, list] = {}
        self._codes = open(folder / "codes.raw", "wb")  # noqa: SIM115 (closed in close())
        self._res = open(folder / "residuals.raw", "wb")  # noqa: SIM115 (closed in close())
        self._norms = open(folder / "norms.raw", "wb")  # noqa: SIM115 (closed in close())
        self._vecs = open(folder / "vectors.raw", "wb") if store_vectors else None  # noqa: SIM115
        self._lens: list[np.ndarray] = []
        self._ivf: list[np.ndarray] = []  # (centroid * 2**32 + local pid) unique per doc

    def write(self, vectors: Sequence[np.ndarray], block_tokens: int = 1 << 16) -> None:
        """Compress and append the documents ``vectors``, ``block_tokens`` tokens at a time (the
        codec's temporaries are a few copies of one block, not of the chunk)."""
        lens = np.array([len(v) for v in vectors], dtype=np.int32)
        if len(vectors):
            flat = np.concatenate([np.asarray(v, dtype=np.float32) for v in vectors])
        else:
            flat = np.zeros((0, self.codec.dim), np.float32)
        codes = np.empty(len(flat), dtype=code_dtype(self.codec.n_centroids))
        for s in range(0, len(flat), block_tokens):
            block_codes, packed = self.codec.compress(flat[s : s + block_tokens])
            codes[s : s + len(block_codes)] = block_codes
            self._codes.write(block_codes.tobytes())
            self._res.write(packed.tobytes())
            self._norms.write(self.codec.decoded_norms(block_codes, packed).tobytes())
            if self._vecs is not None:
                self._vecs.write(flat[s : s + block_tokens].astype(np.float16).tobytes())
        local = np.repeat(np.arange(self.n_docs, self.n_docs + len(vectors), dtype=np.int64), lens)
        self._ivf.append(np.unique(codes.astype(np.int64) * (1 << 32) + local))
        self._lens.append(lens)
        self.n_docs += len(vectors)
        self.n_tokens += len(flat)

    def close(self) -> dict[str, list]:
        """Write the .npy files, fsync them; returns {file: [size, sha256]} (also ``self.files``)."""
        self._codes.close()
        self._res.close()
        self._norms.close()
        if self._vecs is not None:
            self._vecs.close()
        f = self.folder
        raw_to_npy(f / "codes.raw", f / "codes.npy", code_dtype(self.codec.n_centroids), (self.n_tokens,))
        shape = (self.n_tokens, self.codec.bytes_per_residual)
        raw_to_npy(f / "residuals.raw", f / "residuals.npy", np.dtype(np.uint8), shape)
        raw_to_npy(f / "norms.raw", f / "norms.npy", np.dtype(np.float32), (self.n_tokens,))
        if self.store_vectors:
            shape = (self.n_tokens, self.codec.dim)
            raw_to_npy(f / "vectors.raw", f / VECTORS_FILE, np.dtype(np.float16), shape)
        np.save(f / "doclens.npy", np.concatenate(self._lens) if self._lens else np.zeros(0, np.int32))
        pairs = np.concatenate(self._ivf) if self._ivf else np.zeros(0, np.int64)
        self._ivf = []
        pairs.sort()
        counts = np.bincount(pairs >> 32, minlength=self.codec.n_centroids).astype(np.int32)
        pairs &= (1 << 32) - 1
        pids = pairs.astype(np.int32)
        del pairs
        pids += self.first_pid
        np.save(f / "ivf.npy", pids)
        np.save(f / "ivf_lens.npy", counts)
        fsync_dir(f)
        self.files = describe(f, SEGMENT_FILES + ((VECTORS_FILE,) if self.store_vectors else ()))
        return self.files

    def discard(self) -> None:
        for f in (self._codes, self._res, self._norms, self._vecs):
            if f is not None:
                f.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def remove_orphans(base: Path, known: set[str]) -> None:
    """Delete what killed adds left in a base: segment folders no row of the table references,
    and temporary segment folders of processes that no longer run (under the writer lock)."""
    remove_stale_temps(base)
    for p in base.iterdir():
        if p.is_dir() and p.name.startswith("seg-") and p.name not in known:
            shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------- loading
def _compute_norms(
    codec: Codec, codes: np.ndarray, residuals: np.ndarray, block: int = 1 << 16
) -> np.ndarray:
    """Decoded vector norms of a segment written before norms.npy existed (in blocks)."""
    out = np.empty(len(codes), dtype=np.float32)
    for s in range(0, len(codes), block):
        out[s : s + block] = codec.decoded_norms(codes[s : s + block], residuals[s : s + block])
    return out


@dataclass
class Segment:
    name: str
    first_pid: int
    n_docs: int
    codes: np.ndarray  # memory-mapped
    residuals: np.ndarray  # memory-mapped
    norms: np.ndarray  # memory-mapped (computed for segments written without norms.npy)
    files: dict[str, list]
    vectors: np.ndarray | None = None  # (tokens, dim) float16, memory-mapped; with store_vectors
    doclens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ivf_lens: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    ivf_pids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))


class BaseHandle:
    """An open base: its folder, metadata, codec, a connection to its document table and the
    readers' hold that keeps writers from removing it. Shared by the snapshots of one base."""

    def __init__(self, folder: Path, hold: Any = None, verify: bool = True) -> None:
        self.folder = folder
        self.hold = hold
        self.meta = read_metadata(folder)
        check_files(folder, self.meta["files"], verify)
        if not (folder / "docs.sqlite").exists():
            raise IndexCorruptError(f"{folder / 'docs.sqlite'}: file is missing")
        try:
            self.codec = load_codec(folder, self.meta)
        except (ValueError, KeyError) as exc:
            raise IndexCorruptError(f"{folder / 'metadata.json'}: {exc}") from exc
        try:
            self.con = connect(folder / "docs.sqlite")
            self.generational = is_generational(self.con)
        except sqlite3.DatabaseError as exc:
            raise IndexCorruptError(f"{folder / 'docs.sqlite'}: {exc}") from exc

    def close(self) -> None:
        """Close the table and let writers remove the base (the last snapshot of it is done)."""
        self.con.close()
        if self.hold is not None:
            self.hold.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@dataclass
class IndexState:
    """One generation of an index, as arrays: everything a search needs, consistent with each
    other and with the document table rows it reads. Pids are positions in that table."""

    meta: dict[str, Any]
    codec: Codec
    segments: list[Segment]
    codes: np.ndarray  # (tokens,) centroid id of every token (all segments, in memory)
    doclens: np.ndarray  # (docs,) int64
    doc_starts: np.ndarray  # (docs,) int64 global token offset
    doc_segment: np.ndarray  # (docs,) segment number
    seg_token_base: np.ndarray  # (segments + 1,) first global token of each segment
    ivf_pids: np.ndarray  # (pairs,) int32 pids grouped by centroid
    ivf_offsets: np.ndarray  # (C + 1,) int64
    doc_ids: list[str]
    deleted: np.ndarray  # (docs,) bool
    has_texts: bool
    pid_of: dict[str, int] = field(default_factory=dict)  # live documents only
    base: BaseHandle | None = None
    generation: int = 0

    def rows(self, pids: Sequence[int], column: str) -> list[Any]:
        assert self.base is not None
        return fetch_rows(self.base.con, pids, column)

    def matching(self, where_sql: str, params: Sequence[Any]) -> np.ndarray:
        assert self.base is not None
        return select_pids(self.base.con, len(self.doc_ids), where_sql, params)


def _merge_inverted_lists(
    pids: list[np.ndarray], lens: list[np.ndarray], n_centroids: int
) -> tuple[np.ndarray, np.ndarray]:
    """One (pids grouped by centroid, offsets (C + 1,)) from every segment's inverted lists."""
    if not pids:
        return np.zeros(0, np.int32), np.zeros(n_centroids + 1, np.int64)
    total = np.sum(lens, axis=0)
    offsets = np.concatenate([[0], np.cumsum(total)]).astype(np.int64)
    if len(pids) == 1:
        return pids[0].astype(np.int32, copy=False), offsets
    merged = np.empty(int(offsets[-1]), dtype=np.int32)
    fill = offsets[:-1].copy()  # where each centroid's next pids go
    for seg_pids, seg_lens in zip(pids, lens, strict=True):  # segments in pid order: lists stay sorted
        dest = ranges(fill, seg_lens)
        merged[dest] = seg_pids
        fill += seg_lens
    return merged, offsets


def _open_segment(base: BaseHandle, row: tuple, verify: bool) -> Segment:
    name, first_pid, n_docs, n_tokens, files_json = row
    folder = base.folder / name
    files = json.loads(files_json)
    check_files(folder, files, verify)
    seg = Segment(
        name,
        first_pid,
        n_docs,
        np.load(folder / "codes.npy", mmap_mode="r"),
        np.load(folder / "residuals.npy", mmap_mode="r"),
        np.zeros(0, np.float32),
        files,
    )
    seg.norms = (
        np.load(folder / "norms.npy", mmap_mode="r")
        if "norms.npy" in files
        else _compute_norms(base.codec, seg.codes, seg.residuals)
    )
    if VECTORS_FILE in files:
        seg.vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
    seg.doclens = np.load(folder / "doclens.npy").astype(np.int64)
    if len(seg.doclens) != n_docs or len(seg.codes) != n_tokens:
        raise IndexCorruptError(f"{folder}: document/token counts disagree with docs.sqlite")
    seg.ivf_lens = np.load(folder / "ivf_lens.npy").astype(np.int64)
    seg.ivf_pids = np.load(folder / "ivf.npy")
    return seg


def load_state(
    base: BaseHandle, generation: int, verify: bool, previous: IndexState | None = None
) -> IndexState:
    """Generation ``generation`` of an open base (sizes always checked, sha256 with ``verify``).

    With ``previous``, an earlier generation of the same base, only what changed since is read:
    the new segments and rows, and the rows deleted since."""
    try:
        if (
            previous is not None
            and previous.base is base
            and base.generational
            and previous.generation <= generation
        ):
            return _load_changes(base, generation, verify, previous)
        return _load_full(base, generation, verify)
    except sqlite3.DatabaseError as exc:
        raise IndexCorruptError(f"{base.folder / 'docs.sqlite'}: {exc}") from exc


def _load_full(base: BaseHandle, generation: int, verify: bool) -> IndexState:
    con = base.con
    if base.generational:
        segs = con.execute(
            "SELECT name, first_pid, n_docs, n_tokens, files FROM segments WHERE added_gen <= ? ORDER BY first_pid",
            (generation,),
        ).fetchall()
        rows = con.execute(
            "SELECT pid, doc_id, deleted_gen IS NOT NULL AND deleted_gen <= ?, text IS NOT NULL FROM docs "
            "WHERE added_gen <= ? ORDER BY pid",
            (generation, generation),
        ).fetchall()
    else:  # format 1/2: never changed by this version without converting it first
        segs = con.execute(
            "SELECT name, first_pid, n_docs, n_tokens, files FROM segments ORDER BY first_pid"
        ).fetchall()
        rows = con.execute("SELECT pid, doc_id, deleted, text IS NOT NULL FROM docs ORDER BY pid").fetchall()
    segments = [_open_segment(base, row, verify) for row in segs]
    return _assemble(base, generation, segments, rows, [], np.zeros(0, bool), False)


def _load_changes(base: BaseHandle, generation: int, verify: bool, prev: IndexState) -> IndexState:
    con = base.con
    since = prev.generation
    segs = con.execute(
        "SELECT name, first_pid, n_docs, n_tokens, files FROM segments WHERE added_gen > ? AND added_gen <= ? "
        "ORDER BY first_pid",
        (since, generation),
    ).fetchall()
    rows = con.execute(
        "SELECT pid, doc_id, deleted_gen IS NOT NULL AND deleted_gen <= ?, text IS NOT NULL FROM docs "
        "WHERE added_gen > ? AND added_gen <= ? ORDER BY pid",
        (generation, since, generation),
    ).fetchall()
    gone = [
        r[0]
        for r in con.execute(
            "SELECT pid FROM docs WHERE deleted_gen > ? AND deleted_gen <= ? AND added_gen <= ?",
            (since, generation, since),
        )
    ]
    segments = prev.segments + [_open_segment(base, row, verify) for row in segs]
    deleted = prev.deleted.copy()
    deleted[np.asarray(gone, dtype=np.int64)] = True
    if not segs and not rows:  # deletions only: every array is the previous generation's
        pid_of = dict(prev.pid_of)
        for p in gone:
            pid_of.pop(prev.doc_ids[p], None)
        return dataclasses.replace(prev, deleted=deleted, pid_of=pid_of, generation=generation)
    return _assemble(base, generation, segments, rows, prev.doc_ids, deleted, prev.has_texts, prev)


def _assemble(
    base: BaseHandle,
    generation: int,
    segments: list[Segment],
    rows: list[tuple],
    doc_ids_before: list[str],
    deleted_before: np.ndarray,
    texts_before: bool,
    prev: IndexState | None = None,
) -> IndexState:
    """The state of ``segments``, whose documents are ``doc_ids_before`` and then ``rows``
    (pid, id, deleted, has text)."""
    n_before = len(doc_ids_before)
    if any(r[0] != n_before + i for i, r in enumerate(rows)):
        raise IndexCorruptError(f"{base.folder / 'docs.sqlite'}: document pids are not consecutive")
    n = sum(s.n_docs for s in segments)
    if n_before + len(rows) != n:
        raise IndexCorruptError(
            f"{base.folder}: docs.sqlite lists {n_before + len(rows)} documents, segments hold {n}"
        )
    doclens = [s.doclens for s in segments]
    doclens_all = np.concatenate(doclens) if doclens else np.zeros(0, np.int64)
    ivf_pids, ivf_offsets = _merge_inverted_lists(
        [s.ivf_pids for s in segments], [s.ivf_lens for s in segments], base.codec.n_centroids
    )
    new_deleted = np.array([bool(r[2]) for r in rows], dtype=bool)
    if prev is not None:
        pid_of = {d: p for d, p in prev.pid_of.items() if not deleted_before[p]}
        n_old = len(prev.segments)
        codes = np.concatenate([prev.codes, *(np.asarray(s.codes) for s in segments[n_old:])])
    else:
        pid_of = {}
        codes = np.concatenate([np.asarray(s.codes) for s in segments]) if segments else np.zeros(0, np.int64)
    pid_of.update((r[1], r[0]) for r in rows if not r[2])
    has_texts = (texts_before or n_before == 0) and bool(rows or n_before) and all(r[3] for r in rows)
    return IndexState(
        meta=base.meta,
        codec=base.codec,
        segments=segments,
        codes=codes,
        doclens=doclens_all,
        doc_starts=np.cumsum(doclens_all) - doclens_all,
        doc_segment=np.repeat(np.arange(len(segments)), [s.n_docs for s in segments]),
        seg_token_base=np.cumsum([0] + [len(s.codes) for s in segments]),
        ivf_pids=ivf_pids,
        ivf_offsets=ivf_offsets,
        doc_ids=doc_ids_before + [r[1] for r in rows],
        deleted=np.concatenate([deleted_before, new_deleted]),
        has_texts=has_texts,
        pid_of=pid_of,
        base=base,
        generation=generation,
    )
