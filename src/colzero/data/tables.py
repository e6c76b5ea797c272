"""Memory-mapped training tables: Hugging Face ``datasets`` over Arrow files, never Python lists.

:func:`open_table` gives a :class:`Table` (a ``datasets.Dataset`` whose Arrow data is memory-mapped,
plus where each row came from) for

- local JSONL / Parquet files, folders or globs of shards: converted once to Arrow files in the
  colzero cache (``COLZERO_CACHE``, default ``~/.cache/colzero``), one file per input file, each
  written atomically, so an interrupted conversion resumes where it stopped
  (``colzero data prepare`` runs it ahead of training and reports rows/s and disk use);
- ``.arrow`` files and ``save_to_disk`` folders: opened as they are;
- hub datasets by name (``org/name``, optional config and split): ``datasets.load_dataset``, which
  memory-maps its own cache.

:class:`IdTable` looks texts up by id (documents, queries of KD / hard-negative data) through a
sorted id array kept on disk next to the table (memory-mapped, built once), not a Python dict.

Errors name the file and the line (JSONL) or row (Parquet, datasets) and the field, also for rows
that are only looked at while training: :meth:`Table.where` maps a row number back to its line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from colzero.data.readers import (
    ID_FIELDS,
    DataError,
    atomic_output,
    data_files,
    detect_format,
    document_text,
    iter_jsonl,
    iter_lines,
    parse_hub,
)

logger = logging.getLogger(__name__)

CONVERT_BATCH_ROWS = 65536


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("COLZERO_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "colzero"


def _file_key(path: Path) -> str:
    st = path.stat()
    h = hashlib.sha256(f"{path.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    return f"{path.stem[:40]}-{h.hexdigest()[:16]}"


@dataclass(frozen=True)
class Span:
    """Rows ``[start, start + rows)`` of a table come from ``path`` (a JSONL/Parquet file or a label)."""

    path: str
    kind: str  # jsonl | parquet | arrow | hf
    start: int
    rows: int


class EmptyTable(DataError):
    """A table without a row (callers say what was expected: a corpus, a source...)."""


class Table:
    """A memory-mapped table: ``dataset`` (``datasets.Dataset``) and where its rows came from."""

    def __init__(self, dataset: Any, spans: list[Span], label: str) -> None:
        self.dataset = dataset
        self.spans = spans
        self.label = label
        self._starts = np.array([s.start for s in spans], dtype=np.int64)
        self._views: dict[tuple[str, ...], Any] = {}
        self._pages: dict[str, _TextPages | bool] = {}  # per column; False: not a text column

    def __len__(self) -> int:
        return len(self.dataset)

    def __getstate__(self) -> dict[str, Any]:
        # the row addresses are this process's mappings: a spawned worker finds its own
        return {**self.__dict__, "_pages": {}}

    @property
    def arrow(self) -> Any:
        """The memory-mapped ``pyarrow.Table`` behind the dataset (tables are never re-indexed views)."""
        return self.dataset.data.table

    @property
    def columns(self) -> list[str]:
        return list(self.dataset.column_names)

    def advise_random_access(self) -> int:
        """Tell the kernel the table's memory-mapped pages are read at random (``MADV_RANDOM``);
        returns how many Arrow buffers were advised (0 where ``madvise`` is unavailable).

        A training batch reads its rows from anywhere in a source. With the kernel's default
        read-around, every page fault of a cold row also reads the ~128 KB around it: measured on a
        17.9 GB prepared table (``benchmarks/data_scale.py``'s 20M rows), reading 50 cold 64-row
        batches took 2.1-4.7 s and 0.4-0.9 CPU-s with read-around, 0.35-0.76 s and 0.1-0.2 CPU-s
        without. Call it after any sequential pass (building id indexes, checks). Forked DataLoader
        workers inherit the advice with the mapping.
        """
        return _advise_random(self.arrow)

    def take(self, rows: Sequence[int] | np.ndarray, columns: Sequence[str]) -> dict[str, list[Any]]:
        """Columns of the given rows as Python values (one indexed read; ``datasets`` decodes its
        feature types, e.g. JSON-typed lists of mixed ids). The pages the rows' texts lie on are
        requested from the disk all at once first (:meth:`prefetch`)."""
        rows = np.asarray(rows, dtype=np.int64)
        self.prefetch(rows, columns)
        key = tuple(columns)
        view = self._views.get(key)
        if view is None:
            view = self._views[key] = self.dataset.select_columns(list(columns))
        got = view[rows.tolist()]
        return {c: got[c] for c in columns}

    def prefetch(self, rows: np.ndarray, columns: Sequence[str]) -> int:
        """Ask the kernel to read, in parallel, the pages that ``rows`` of the text columns among
        ``columns`` lie on (``MADV_WILLNEED``); returns the number of page ranges requested.

        A training batch reads rows from anywhere in a table far larger than the page cache (phase 1
        reads each of its 239M rows once, at random), so its rows are cold: read one page fault at a
        time, a 64-row batch of (query, document) pairs waits for ~200 disk reads in a row. Asking
        for all of them first makes the disk serve them together: two rounds (the rows' offsets,
        then their bytes) instead of one wait per page. Measured on ``benchmarks/data_scale.py``'s
        17.9 GB table after dropping the page cache: 6.0-12.7 ms of wall time per cold 64-row batch
        without, 1.9-2.8 ms with (and less CPU, 3.1-6.5 -> 1.3-2.4 ms: the faults find their pages
        ready); a warm batch pays ~0.3 ms for asking.
        """
        if self.dataset._indices is not None or rows.size == 0:  # a re-indexed view: rows are elsewhere
            return 0
        requested = 0
        for column in columns:
            pages = self._pages.get(column)
            if pages is None:
                pages = self._pages[column] = _TextPages.of(self.arrow.column(column))
            if pages is not False:
                requested += pages.prefetch(rows)
        return requested

    def where(self, row: int) -> str:
        """``file:line`` (JSONL), ``file row N`` (Parquet) or ``label row N`` of a table row."""
        k = int(np.searchsorted(self._starts, row, side="right") - 1)
        span = self.spans[max(k, 0)]
        local = row - span.start
        if span.kind == "jsonl":
            return f"{span.path}:{_line_of_row(Path(span.path), local)}"
        return f"{span.path} row {local}"


@functools.lru_cache(maxsize=8)
def _madvise(name: str) -> tuple[Any, int] | None:
    """libc's ``madvise`` and the advice ``mmap.<name>``, or None where either is missing."""
    import ctypes
    import mmap

    advice = getattr(mmap, name, None)
    if advice is None:  # not POSIX
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return madvise, advice


def _advise_random(arrow: Any) -> int:
    import mmap

    found = _madvise("MADV_RANDOM")
    if found is None:
        return 0
    madvise, advice = found
    page, advised = mmap.PAGESIZE, 0
    for batch in arrow.to_batches():
        for column in batch.columns:
            for buf in column.buffers():
                if buf is None or buf.size == 0:
                    continue
                start = buf.address & ~(page - 1)  # madvise takes page-aligned ranges
                advised += madvise(start, buf.address + buf.size - start, advice) == 0
    return advised


def page_ranges(starts: np.ndarray, ends: np.ndarray, page: int) -> tuple[np.ndarray, np.ndarray]:
    """The byte ranges ``[starts, ends)`` widened to whole pages, sorted, overlapping and adjacent
    ones merged (empty ranges dropped): ``(first byte, end byte)`` arrays of page multiples."""
    keep = ends > starts
    lo = starts[keep] // page * page
    hi = -(-ends[keep] // page) * page
    if lo.size == 0:
        return lo, hi
    order = np.argsort(lo, kind="stable")
    lo, hi = lo[order], np.maximum.accumulate(hi[order])
    new = np.ones(lo.size, dtype=bool)
    new[1:] = lo[1:] > hi[:-1]  # a gap before this range: it starts a merged one
    group_end = np.flatnonzero(np.append(new[1:], True))
    return lo[new], hi[group_end]


PROCESS_MADVISE = 440  # the syscall's number on every Linux architecture but alpha (unified since 5.1)
IOV_MAX = 1024


@functools.lru_cache(maxsize=4)
def _own_pidfd(pid: int) -> int | None:
    """A pidfd of this process (keyed by pid: a forked worker opens its own), or None."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _PageAdvice:
    """``madvise`` over many ranges: one ``process_madvise`` call per 1,024 ranges where the kernel
    has it (Linux >= 5.10 takes ``MADV_WILLNEED``), else one ``madvise`` call per range. A cached
    range costs ~1.4 us as a ``madvise`` call and ~0.4 us inside a ``process_madvise`` one, and a
    batch asks for hundreds (thousands on a GPU's batch), warm or not."""

    def __init__(self, madvise: Any, advice: int) -> None:
        import ctypes

        self.madvise, self.advice = madvise, advice
        self.syscall: Any = None
        if sys.platform.startswith("linux") and platform.machine() != "alpha":
            self.syscall = ctypes.CDLL(None, use_errno=True).syscall
            self.syscall.restype = ctypes.c_long

    def __call__(self, lo: np.ndarray, hi: np.ndarray) -> None:
        import ctypes

        if self.syscall is not None and (pidfd := _own_pidfd(os.getpid())) is not None:
            iov = np.ascontiguousarray(np.stack([lo, hi - lo], axis=1).astype(np.uint64))
            for start in range(0, len(iov), IOV_MAX):
                part = iov[start : start + IOV_MAX]
                args = (pidfd, ctypes.c_void_p(part.ctypes.data), ctypes.c_size_t(len(part)))
                if self.syscall(PROCESS_MADVISE, *args, self.advice, 0) < 0 and start == 0:
                    self.syscall = None  # ENOSYS, or a kernel that does not take this advice
                    break
            else:
                return
        for a, b in zip(lo.tolist(), hi.tolist(), strict=True):
            self.madvise(a, b - a, self.advice)


class _TextPages:
    """Where each row of one memory-mapped string column lies, to prefetch rows (see
    :meth:`Table.prefetch`): per Arrow chunk the addresses of its offsets and bytes."""

    def __init__(self, chunks: list[Any], width: int, madvise: Any, advice: int) -> None:
        import mmap

        self.width, self.advise, self.page = width, _PageAdvice(madvise, advice), mmap.PAGESIZE
        self.starts = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
        dtype = np.int64 if width == 8 else np.int32
        # zero-copy views of the offsets (no page is read until a row's offsets are)
        self.offsets = [np.frombuffer(c.buffers()[1], dtype=dtype) for c in chunks]
        self.base = np.array([c.offset for c in chunks], dtype=np.int64)
        self.offset_address = np.array([c.buffers()[1].address for c in chunks], dtype=np.int64)
        data = [c.buffers()[2] for c in chunks]
        self.data_address = np.array([0 if d is None else d.address for d in data], dtype=np.int64)

    @classmethod
    def of(cls, column: Any) -> _TextPages | bool:
        """The column's pages, or False when it is not plain text (or madvise is unavailable)."""
        import pyarrow as pa

        t = column.type
        width = 4 if pa.types.is_string(t) or pa.types.is_binary(t) else 0
        width = 8 if pa.types.is_large_string(t) or pa.types.is_large_binary(t) else width
        found = _madvise("MADV_WILLNEED")
        if not width or found is None or not column.num_chunks:
            return False
        return cls(column.chunks, width, *found)

    def prefetch(self, rows: np.ndarray) -> int:
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        if chunk.size == 0 or chunk.min() < 0 or rows.max() >= self.starts[-1]:
            return 0  # out of range: the read itself reports it
        local = rows - self.starts[chunk] + self.base[chunk]
        first = self.offset_address[chunk] + local * self.width
        requested = self._willneed(first, first + 2 * self.width)  # round 1: the rows' offsets
        pairs = [self.offsets[c][j : j + 2] for c, j in zip(chunk.tolist(), local.tolist(), strict=True)]
        begin, end = np.stack(pairs).astype(np.int64).T  # each row's (begin, end) byte offsets
        data = self.data_address[chunk]
        return requested + self._willneed(data + begin, data + end)  # round 2: the rows' bytes

    def _willneed(self, starts: np.ndarray, ends: np.ndarray) -> int:
        lo, hi = page_ranges(starts, ends, self.page)
        if lo.size:
            self.advise(lo, hi)
        return int(lo.size)


def _line_of_row(path: Path, row: int) -> int:
    """Line number of the ``row``-th JSON line (blank lines are not rows); read only on errors."""
    for n, (lineno, _) in enumerate(iter_lines(path)):
        if n == row:
            return lineno
    return row + 1


# ---------------------------------------------------------------------- conversion
def _convert_parquet(src: Path, dest: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 0
    with atomic_output(dest) as tmp:
        pf = pq.ParquetFile(src, pre_buffer=False)  # pre-buffering holds the whole file in memory
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, pf.schema_arrow) as writer:
            for batch in pf.iter_batches(batch_size=CONVERT_BATCH_ROWS):
                writer.write_batch(batch)
                rows += batch.num_rows
    return rows


def _check_utf8(path: Path, chunk: int = 1 << 26) -> None:
    """Raise a DataError at the first undecodable byte (Arrow's JSON parser does not check UTF-8)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines = 0, 0
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            try:
                decoder.decode(block)
            except UnicodeDecodeError as exc:
                line_start = block.rfind(b"\n", 0, exc.start) + 1
                line = lines + block.count(b"\n", 0, exc.start) + 1
                raise DataError(
                    f"{path}:{line}: undecodable bytes at column {exc.start - line_start + 1} (the file must be UTF-8)"
                ) from None
            offset, lines = offset + len(block), lines + block.count(b"\n")


def _convert_jsonl(src: Path, dest: Path) -> int:
    """JSONL → Arrow with ``datasets``' JSON builder (pyarrow's parser, schema unified across
    blocks). On failure the file is read line by line to name the bad line."""
    import datasets
    import pyarrow as pa

    _check_utf8(src)
    scratch = dest.parent / f".{dest.name}.hf-{os.getpid()}"
    bars_were_on = not datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()  # the conversion reports its own rows/s
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(logging.CRITICAL)  # its parse errors are re-raised with the line
    try:
        try:
            ds = datasets.Dataset.from_json(str(src), cache_dir=str(scratch), keep_in_memory=False)
        except Exception as exc:  # datasets wraps pyarrow's errors, which give no line number
            if sum(1 for _ in iter_jsonl(src)) == 0:  # raises DataError at the first bad line
                raise EmptyTable(f"{src}: the file holds no rows") from None
            raise DataError(f"{src}: cannot convert to Arrow ({type(exc).__name__}: {exc})") from exc
        with atomic_output(dest) as tmp:
            table = ds.data.table
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
                for batch in table.to_batches(max_chunksize=CONVERT_BATCH_ROWS):
                    writer.write_batch(batch)
        return len(ds)
    finally:
        import shutil

        shutil.rmtree(scratch, ignore_errors=True)
        if bars_were_on:
            datasets.utils.enable_progress_bars()
        datasets.logging.set_verbosity(verbosity)


@dataclass
class PrepareReport:
    label: str
    rows: int
    converted_rows: int
    seconds: float
    bytes_on_disk: int

    @property
    def rows_per_s(self) -> float:
        return self.converted_rows / self.seconds if self.seconds > 0 else float("inf")


def _open_local_files(files: list[Path], kind: str, cache: Path, label: str) -> tuple[Table, PrepareReport]:
    import datasets

    t0 = time.perf_counter()
    out_dir = cache / "arrow"
    out_dir.mkdir(parents=True, exist_ok=True)
    parts, spans, converted, disk, start = [], [], 0, 0, 0
    for f in files:
        if kind == "arrow":
            arrow = f
        else:
            arrow = out_dir / f"{_file_key(f)}.arrow"
            if not arrow.exists():
                converted += _convert_parquet(f, arrow) if kind == "parquet" else _convert_jsonl(f, arrow)
            disk += arrow.stat().st_size
        ds = datasets.Dataset.from_file(str(arrow))
        parts.append(ds)
        spans.append(Span(str(f), kind, start, len(ds)))
        start += len(ds)
    try:
        dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    except ValueError as exc:
        raise DataError(f"{label}: its files do not share one schema ({exc})") from exc
    seconds = time.perf_counter() - t0
    return Table(dataset, spans, label), PrepareReport(label, start, converted, seconds, disk)


def open_table(
    path: str,
    fmt: str = "auto",
    split: str | None = None,
    config: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[Table, PrepareReport]:
    """Open (converting once if needed) a table as memory-mapped Arrow; see the module docstring."""
    fmt = detect_format(path, fmt)
    cache = cache_root(cache_dir)
    if fmt in ("jsonl", "parquet", "arrow"):
        suffixes = {"jsonl": (".jsonl", ".json", ".ndjson"), "parquet": (".parquet",), "arrow": (".arrow",)}
        files = data_files(path, suffixes[fmt])
        if split is not None and Path(path).is_dir():
            files = [f for f in files if split_of(f, Path(path)) == split]
            if not files:
                raise DataError(
                    f"{path}: no data files of split {split!r} (splits: {split_names(path, fmt)})"
                )
        return _open_local_files(files, fmt, cache, str(path))
    return _open_hf(path, split, config, cache)


def _open_hf(path: str, split: str | None, config: str | None, cache: Path) -> tuple[Table, PrepareReport]:
    import datasets

    t0 = time.perf_counter()
    if path.startswith("hf://"):
        path, config = parse_hub(path)[0], parse_hub(path)[1] or config
    label = f"{path}[{split or 'train'}]"
    try:
        ds = (
            datasets.load_from_disk(path)
            if Path(path).is_dir()
            else datasets.load_dataset(path, config, split=split)
        )
        if isinstance(ds, datasets.DatasetDict):
            if split is not None and split not in ds:
                raise DataError(f"{path}: no split {split!r} (splits: {list(ds)})")
            ds = ds[split or ("train" if "train" in ds else next(iter(ds)))]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"{label}: cannot load the Hugging Face dataset ({type(exc).__name__}: {exc})"
        ) from exc
    report = PrepareReport(label, len(ds), 0, time.perf_counter() - t0, 0)
    return Table(ds, [Span(label, "hf", 0, len(ds))], label), report


def split_of(file: Path, root: Path) -> str:
    """The split a file of a local multi-split dataset belongs to: its first sub-folder under
    ``root`` (``root/<split>/*.parquet``), else its name before the shard suffix
    (``<split>-00000-of-00004.parquet``)."""
    rel = file.relative_to(root)
    if len(rel.parts) > 1 and rel.parts[0] != "data":
        return rel.parts[0]
    name = rel.parts[-1].split(".")[0]
    return name.split("-")[0]


def split_names(path: str, fmt: str = "auto", config: str | None = None) -> list[str]:
    """The splits of a multi-split dataset: sub-folders / file-name prefixes of a local folder,
    the splits of a ``save_to_disk`` DatasetDict, or the hub dataset's splits."""
    fmt = detect_format(path, fmt)
    root = Path(path)
    if fmt in ("jsonl", "parquet", "arrow") and root.is_dir():
        suffixes = (".jsonl", ".parquet", ".arrow", ".json", ".ndjson")
        return sorted({split_of(f, root) for f in data_files(root, suffixes)})
    if root.is_dir():
        dd = root / "dataset_dict.json"
        if dd.is_file():
            return list(json.loads(dd.read_text())["splits"])
        return ["train"]
    import datasets

    try:
        return list(datasets.get_dataset_split_names(path, config))
    except Exception as exc:
        raise DataError(f"{path}: cannot list the dataset's splits ({type(exc).__name__}: {exc})") from exc


# ---------------------------------------------------------------------- id lookup
def _fixed_width(values: Any) -> np.ndarray:
    """An Arrow array of ids (strings or integers) as a numpy ``S<width>`` array, vectorised."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = pc.cast(values, pa.large_string()) if not pa.types.is_large_string(values.type) else values
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64, count=n + 1, offset=arr.offset * 8)
    data = (
        np.frombuffer(arr.buffers()[2], dtype=np.uint8)
        if arr.buffers()[2] is not None
        else np.zeros(0, np.uint8)
    )
    lens = np.diff(offsets)
    width = max(1, int(lens.max()) if n else 1)
    out = np.zeros((n, width), dtype=np.uint8)
    step = 1 << 20
    for s in range(0, n, step):
        e = min(n, s + step)
        ln = lens[s:e]
        rows = np.repeat(np.arange(s, e), ln)
        base = np.repeat(offsets[s:e], ln)
        cols = np.arange(base.size) - np.repeat(np.cumsum(ln) - ln, ln)
        out[rows, cols] = data[base + cols]
    return out.view(f"S{width}").ravel()


class IdTable:
    """id → text of a document or query table, memory-mapped (no dict of all texts).

    ``texts(ids)`` returns the texts (title + text by :func:`document_text` when the table has a
    title column). The sorted ids and their rows are built once and stored as ``.npy`` files next
    to the table's Arrow cache; a duplicate id is an error naming both places.
    """

    def __init__(
        self, table: Table, cache: Path, id_column: str | None = None, what: str = "document"
    ) -> None:
        self.table = table
        self.what = what
        cols = table.columns
        # rows may name their id differently (BEIR "_id", others "id"): the first present wins
        self.id_columns = [id_column] if id_column else [c for c in ID_FIELDS if c in cols]
        if not self.id_columns or self.id_columns[0] not in cols:
            raise DataError(f"{table.label}: field {ID_FIELDS[0]!r} (the id) is missing (columns: {cols})")
        self.id_column = self.id_columns[0]
        if "text" not in cols:
            raise DataError(f"{table.label}: field 'text' is missing (columns: {cols})")
        self.has_title = "title" in cols
        self.keys, self.rows = self._index(cache)
        table.advise_random_access()  # after the one sequential pass of the index

    def _index(self, cache: Path) -> tuple[np.ndarray, np.ndarray]:
        ds = self.table.dataset
        key = hashlib.sha256(f"{ds._fingerprint}\0{self.id_columns}\0{len(ds)}".encode()).hexdigest()[:20]
        folder = cache / "ids"
        kfile, rfile = folder / f"{key}.keys.npy", folder / f"{key}.rows.npy"
        if kfile.exists() and rfile.exists():
            return np.load(kfile, mmap_mode="r"), np.load(rfile, mmap_mode="r")
        keys = self._keys()
        order = np.argsort(keys, kind="stable")
        skeys = keys[order]
        dup = np.flatnonzero(skeys[1:] == skeys[:-1])
        if dup.size:
            a, b = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise DataError(
                f"{self.table.where(b)}: field {self.id_column!r}: duplicate {self.what} id "
                f"{skeys[dup[0]].decode()!r} (first at {self.table.where(a)})"
            )
        folder.mkdir(parents=True, exist_ok=True)
        for file, arr in ((kfile, skeys), (rfile, order.astype(np.int64))):
            with atomic_output(file) as tmp, open(tmp, "wb") as fh:
                np.save(fh, arr)
        return np.load(kfile, mmap_mode="r"), np.load(rfile, mmap_mode="r")

    def _keys(self) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        arrow = self.table.arrow
        ids = pc.coalesce(*[pc.cast(arrow.column(c), pa.large_string()) for c in self.id_columns])
        nulls = np.flatnonzero(pc.is_null(ids).to_numpy(zero_copy_only=False))
        if nulls.size:
            raise DataError(
                f"{self.table.where(int(nulls[0]))}: field {self.id_column!r} (the id) is missing"
            )
        return _fixed_width(ids)

    def __len__(self) -> int:
        return len(self.keys)

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """Row of each id in the table, -1 where the id is unknown."""
        width = self.keys.dtype.itemsize
        enc = [i.encode() for i in ids]
        probe = np.array([e if len(e) <= width else b"" for e in enc], dtype=self.keys.dtype)
        pos = np.searchsorted(self.keys, probe)
        pos = np.minimum(pos, len(self.keys) - 1)
        found = (self.keys[pos] == probe) & np.array([0 < len(e) <= width for e in enc], dtype=bool)
        return np.where(found, np.asarray(self.rows)[pos], -1)

    def __contains__(self, doc_id: str) -> bool:
        return bool(self.lookup([doc_id])[0] >= 0)

    def texts(self, ids: Sequence[str]) -> list[str]:
        rows = self.lookup(ids)
        missing = np.flatnonzero(rows < 0)
        if missing.size:
            raise KeyError(ids[int(missing[0])])
        cols = ["title", "text"] if self.has_title else ["text"]
        got = self.table.take(rows, cols)
        if self.has_title:
            return [document_text(t, x) for t, x in zip(got["title"], got["text"], strict=True)]
        return [document_text(None, x) for x in got["text"]]


def open_id_table(
    spec: str, *, what: str = "document", cache_dir: str | os.PathLike[str] | None = None
) -> IdTable:
    """An :class:`IdTable` from a path (BEIR ``corpus.jsonl``, Parquet, a folder) or a hub table
    ``hf://org/name/config`` (split ``train``, as PyLate's KD tables)."""
    config = None
    path = spec
    if spec.startswith("hf://"):
        path, config = parse_hub(spec)
    elif Path(spec).is_dir() and (Path(spec) / "corpus.jsonl").is_file():
        path = str(Path(spec) / "corpus.jsonl")
    noun = "corpus" if what == "document" else f"{what} table"
    try:
        table, _ = open_table(path, config=config, cache_dir=cache_dir)
    except EmptyTable:
        raise DataError(f"{path}: the {noun} is empty") from None
    if len(table) == 0:
        raise DataError(f"{table.label}: the {noun} is empty")
    return IdTable(table, cache_root(cache_dir), what=what)
