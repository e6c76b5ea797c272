"""Training sources: memory-mapped tables read a batch at a time, rows checked as they are read.

:func:`load_sources` opens every :class:`~colzero.data.spec.DataSource` of a phase (expanding
``splits`` into one source per split) as a :class:`TrainingSource`: the table is memory-mapped
Arrow (:mod:`colzero.data.tables`), checked cheaply up front (the role columns exist, the
source holds at least one global batch), and each row is checked when a batch reads it (types,
list lengths, ids present in the document / query tables), so the first training step never waits
for a pass over hundreds of millions of rows. ``colzero data check`` runs the same checks over
every row ahead of training. Every error names the file, the line or row, and the field.

``TrainingSource.examples(rows)`` reads the rows with one Arrow ``take`` per column and joins ids
through :class:`~colzero.data.tables.IdTable` (sorted ids on disk, no dict of texts).
"""

from __future__ import annotations

import ast
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from colzero.data.readers import DataError, id_value
from colzero.data.tables import EmptyTable, IdTable, Table, open_id_table, open_table, split_names

if TYPE_CHECKING:  # built (and validated, with pydantic) by the caller
    from colzero.data.spec import DataSource

logger = logging.getLogger(__name__)


@dataclass
class ContrastiveExample:
    query: str
    positive: str
    negatives: list[str]


@dataclass
class DistillationExample:
    query: str
    candidates: list[str]
    scores: list[float]


@dataclass(frozen=True)
class RowNeeds:
    """What the loss needs of a row: its kind and how many negatives / candidates."""

    kind: str  # "contrastive" | "distillation"
    n_negatives: int = 0
    n_candidates: int = 32

    @classmethod
    def of(cls, loss: Any) -> RowNeeds:
        """From a ``LossConfig``-like object (``kind``, ``n_negatives``, ``n_candidates``)."""
        kind = "distillation" if loss.kind == "distillation" else "contrastive"
        return cls(kind, int(loss.n_negatives), int(loss.n_candidates))


def _columns(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _as_list(value: Any, col: str, where: object, parse_strings: bool = False) -> list[Any]:
    """A column value as a list: a list as is, a scalar (one text or id) as a list of one; with
    ``parse_strings`` (KD candidate ids and scores) also a list stored as its string (PyLate's KD
    tables), which must then parse; never for text columns, where "[1] Introduction ..." is a
    document. ``where`` is rendered only in an error: the line of a JSONL row is found by reading
    the file up to it."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if parse_strings and isinstance(value, str) and value[:1] == "[":
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise DataError(
                f"{where}: field {col!r} holds a string that is not a list: {value[:80]!r}"
            ) from None
        if isinstance(parsed, (list, tuple)):
            return list(parsed)
    if value is None:
        raise DataError(f"{where}: field {col!r} is missing")
    return [value]


def expand_splits(source: DataSource) -> list[DataSource]:
    """One source per split for ``splits = "*"`` or a list; others unchanged."""
    if source.splits is None:
        return [source]
    names = split_names(source.path, source.format, source.config) if source.splits == "*" else source.splits
    if not names:
        raise DataError(f"{source.path}: source {source.name!r} has no splits")
    sizes = source.rows if isinstance(source.rows, dict) else {}
    return [
        dataclasses.replace(source, name=f"{source.name}/{s}", split=s, splits=None, rows=sizes.get(s))
        for s in names
    ]


class TrainingSource:
    """One source's rows; ``examples(rows)`` gives checked Contrastive- or DistillationExamples."""

    def __init__(
        self, source: DataSource, needs: RowNeeds | Any, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        needs = needs if isinstance(needs, RowNeeds) else RowNeeds.of(needs)
        self.source = source
        self.name = source.name
        self.needs = needs
        self._warned_empty = False
        if source.max_negatives is not None and needs.n_negatives > source.max_negatives:
            raise DataError(
                f"source {source.name!r}: loss.n_negatives={needs.n_negatives} exceeds "
                f"max_negatives={source.max_negatives}"
            )
        self.documents: IdTable | None = (
            open_id_table(source.documents, cache_dir=cache_dir) if source.documents else None
        )
        self.queries: IdTable | None = (
            open_id_table(source.queries, what="query", cache_dir=cache_dir) if source.queries else None
        )
        self.table: Table
        try:
            self.table, self.prepare_report = open_table(
                source.path, source.format, source.split, source.config, cache_dir=cache_dir
            )
        except EmptyTable as exc:
            raise DataError(f"{exc}: source {source.name!r} holds no rows") from None
        if len(self.table) == 0:
            raise DataError(f"{self.table.label}: source {source.name!r} holds no rows")
        self._check_schema()
        if source.fewer_negatives == "shortest" and needs.kind == "contrastive" and needs.n_negatives:
            self.needs = dataclasses.replace(
                needs, n_negatives=min(needs.n_negatives, self._shortest_negatives())
            )
            logger.info(
                "source %s: %d negatives per row (its shortest list)", self.name, self.needs.n_negatives
            )
        self.table.advise_random_access()  # batches read rows from anywhere (after the passes above)

    # ------------------------------------------------------------------ checks
    def _role_columns(self) -> list[str]:
        s = self.source
        if self.needs.kind == "distillation":
            cols = [*_columns(s.candidate_ids), *_columns(s.teacher_scores)]
        else:
            cols = [*_columns(s.positive), *_columns(s.negatives if self.needs.n_negatives else None)]
        return [s.query_id if self.queries is not None else s.query, *cols]

    def _check_schema(self) -> None:
        present = set(self.table.columns)
        for col in self._role_columns():
            if col not in present:
                raise DataError(
                    f"{self.table.where(0)}: field {col!r} is missing (source {self.name!r} has columns "
                    f"{sorted(present)})"
                )

    def _shortest_negatives(self) -> int:
        """The fewest negatives of any row (Arrow list lengths, one vectorised pass, no Python rows)."""
        import pyarrow.compute as pc

        total = None
        for col in _columns(self.source.negatives):
            lengths = pc.list_value_length(self.table.arrow.column(col))
            total = lengths if total is None else pc.add(total, lengths)
        shortest = pc.min(total).as_py() if total is not None else 0
        return int(shortest or 0)

    def __len__(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------------ reading
    def examples(self, rows: Sequence[int] | np.ndarray) -> list[ContrastiveExample | DistillationExample]:
        """The checked examples of ``rows`` (row indices of this source), in order."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = list(dict.fromkeys(self._role_columns()))
        data = self.table.take(rows, cols)
        wheres = [_Where(self.table, int(r)) for r in rows.tolist()]
        return self._build([self._parse({c: data[c][i] for c in cols}, w) for i, w in enumerate(wheres)])

    def _build(self, parsed: list[_Parsed]) -> list[ContrastiveExample | DistillationExample]:
        """Join ids to texts (one batched lookup per table) and make the examples."""
        if self.queries is not None:
            found = self._lookup(
                self.queries, [p.query for p in parsed], [p.where for p in parsed], self.source.query_id
            )
            for p, text in zip(parsed, found, strict=True):
                p.query_id, p.query = p.query, text
        if self.documents is not None:
            for p in parsed:
                p.doc_ids = list(p.docs)
            ids = [d for p in parsed for d in p.docs]
            texts = self._lookup(
                self.documents,
                ids,
                [p.where for p in parsed for _ in p.docs],
                [c for p in parsed for c in p.doc_cols],
            )
            pos = 0
            for p in parsed:
                p.docs, pos = texts[pos : pos + len(p.docs)], pos + len(p.docs)
        self._check_empty(parsed)
        if self.needs.kind == "distillation":
            return [DistillationExample(p.query, p.docs, p.scores) for p in parsed]
        return [ContrastiveExample(p.query, p.docs[0], p.docs[1:]) for p in parsed]

    def _check_empty(self, parsed: list[_Parsed]) -> None:
        """An empty (or whitespace) positive is a :class:`DataError`; the source's first other
        empty texts (queries, negatives, candidates) are named in one warning, with their lines
        and ids (they encode to the special tokens only)."""
        empties = []
        for p in parsed:
            refs = p.doc_ids or [None] * len(p.docs)
            if self.needs.kind == "contrastive" and not p.docs[0].strip():
                what = f"document {refs[0]!r} has empty text" if refs[0] else "text is empty"
                raise DataError(
                    f"{p.where}: field {p.doc_cols[0]!r}: the positive {what} (a positive must have text)"
                )
            if not p.query.strip():
                empties.append(
                    (p.where, self.source.query_id if p.query_id else self.source.query, p.query_id)
                )
            empties += [
                (p.where, c, r) for t, c, r in zip(p.docs, p.doc_cols, refs, strict=True) if not t.strip()
            ]
        if empties and not self._warned_empty:
            self._warned_empty = True
            shown = "; ".join(f"{w}: field {c!r}" + (f" (id {r!r})" if r else "") for w, c, r in empties[:3])
            logger.warning(
                "source %s: %d empty text(s) in the rows just read, e.g. %s; they encode to the special "
                "tokens only (later ones in this source are not reported)",
                self.name,
                len(empties),
                shown,
            )

    def _parse(self, row: dict[str, Any], where: Any) -> _Parsed:
        s = self.source
        if self.queries is not None:
            query = id_value(_value(row, s.query_id, where), s.query_id, where)
        else:
            query = _text(row, s.query, where)
        out = _Parsed(where, query)
        ids = self.documents is not None  # document columns hold ids (else texts: never parsed as lists)
        if self.needs.kind == "distillation":
            for col in _columns(s.candidate_ids):
                out.add_docs([self._doc(v, col, where) for v in _list(row, col, where, True)], col)
            for col in _columns(s.teacher_scores):
                for v in _list(row, col, where, True):
                    if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
                        raise DataError(f"{where}: field {col!r} must hold numbers, got {v!r}")
                    out.scores.append(float(v))
            if len(out.docs) != len(out.scores):
                raise DataError(
                    f"{where}: fields {s.candidate_ids!r} give {len(out.docs)} candidates but "
                    f"{s.teacher_scores!r} give {len(out.scores)} scores"
                )
            n = self.needs.n_candidates
            if len(out.docs) < n:
                raise DataError(
                    f"{where}: field {s.candidate_ids!r} has {len(out.docs)} candidates, "
                    f"loss.n_candidates needs {n}"
                )
            out.keep(n)
            out.scores = out.scores[:n]
            return out
        pos_col = _columns(s.positive)[0]
        pos = _list(row, pos_col, where, ids)
        if not pos:
            raise DataError(f"{where}: field {pos_col!r} is an empty list")
        out.add_docs([self._doc(pos[0], pos_col, where)], pos_col)  # a list of positives: the first is used
        if self.needs.n_negatives:
            for col in _columns(s.negatives):
                out.add_docs([self._doc(v, col, where) for v in _list(row, col, where, ids)], col)
            have = len(out.docs) - 1 if s.max_negatives is None else min(len(out.docs) - 1, s.max_negatives)
            if have < self.needs.n_negatives:
                raise DataError(
                    f"{where}: field {s.negatives!r} has {have} negatives, "
                    f"loss.n_negatives needs {self.needs.n_negatives}"
                )
            out.keep(1 + self.needs.n_negatives)
        return out

    def _doc(self, value: Any, col: str, where: _Where) -> str:
        if self.documents is None:
            if not isinstance(value, str):
                raise DataError(f"{where}: field {col!r} must hold text, got {type(value).__name__}")
            return value
        return id_value(value, col, where)

    def _lookup(self, table: IdTable, ids: list[str], wheres: list[Any], cols: list[str] | str) -> list[str]:
        found = table.lookup(ids)
        missing = np.flatnonzero(found < 0)
        if missing.size:
            m = int(missing[0])
            col = cols if isinstance(cols, str) else cols[m]
            name = self.source.documents if table is self.documents else self.source.queries
            raise DataError(f"{wheres[m]}: field {col!r}: {table.what} id {ids[m]!r} is not in {name}")
        return table.texts(ids)

    def __getitem__(self, i: int) -> ContrastiveExample | DistillationExample:
        return self.examples([i])[0]

    def check_all(self, chunk: int = 4096) -> Iterator[int]:
        """Check every row (``colzero data check``); yields the number of rows checked so far. The
        error raised is the earliest bad row's (a chunk that fails is checked again row by row)."""
        for start in range(0, len(self), chunk):
            rows = np.arange(start, min(len(self), start + chunk))
            try:
                self.examples(rows)
            except DataError:
                for row in rows.tolist():
                    self.examples([row])
                raise
            yield min(len(self), start + chunk)


@dataclass
class _Parsed:
    """One parsed row: query (text or id), documents (texts or ids) and the columns they came from."""

    where: Any  # the row's place (rendered only for an error message)
    query: str
    query_id: str | None = None  # the query's id, once ``query`` holds its text
    doc_ids: list[str] = dataclasses.field(
        default_factory=list
    )  # the documents' ids, once ``docs`` hold texts
    docs: list[str] = dataclasses.field(default_factory=list)
    doc_cols: list[str] = dataclasses.field(default_factory=list)
    scores: list[float] = dataclasses.field(default_factory=list)

    def add_docs(self, docs: list[str], col: str) -> None:
        self.docs += docs
        self.doc_cols += [col] * len(docs)

    def keep(self, n: int) -> None:
        self.docs, self.doc_cols = self.docs[:n], self.doc_cols[:n]


class StreamSource(TrainingSource):
    """A source read front to back as a stream (``streaming = true``): hub datasets (or remote
    shards) through ``datasets``' streaming mode, local JSONL / Parquet files through the one reader.

    The sampler gives a stream its batches in order (``ordered``): the n-th batch drawn from it in
    an epoch is its rows ``[n*B, (n+1)*B)``, so each DataLoader worker reads forward, never back
    (a new epoch restarts the stream). Rows are checked as they are read; an error names the file
    and line (local) or the dataset, split and row (hub). The size comes from the recipe's ``rows``,
    the hub's dataset info, or a count of the local file.
    """

    def __init__(
        self, source: DataSource, needs: RowNeeds | Any, cache_dir: str | os.PathLike[str] | None = None
    ) -> None:
        self.source = source
        self.name = source.name
        self.needs = needs if isinstance(needs, RowNeeds) else RowNeeds.of(needs)
        if source.fewer_negatives == "shortest":
            raise DataError(
                f"source {source.name!r}: fewer_negatives='shortest' needs the whole table (not a stream)"
            )
        self.documents = open_id_table(source.documents, cache_dir=cache_dir) if source.documents else None
        self.queries = (
            open_id_table(source.queries, what="query", cache_dir=cache_dir) if source.queries else None
        )
        self.prepare_report = None
        self._size = self._count()
        if self._size == 0:
            raise DataError(f"{source.path}: source {source.name!r} holds no rows")
        self._reader: Iterator[tuple[str, dict[str, Any]]] | None = None
        self._next = 0

    def _count(self) -> int:
        if isinstance(self.source.rows, int):
            return self.source.rows
        rows, _ = (
            _counted_rows(self.source)
            if os.path.exists(self.source.path)
            else (_hub_rows(self.source), "hub")
        )
        if rows is None:
            raise DataError(
                f"{self.source.path}: source {self.source.name!r} is streamed and its size is unknown; "
                "give rows = N in the recipe"
            )
        return int(rows)

    def __len__(self) -> int:
        return self._size

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_reader"], state["_next"] = None, 0  # each DataLoader worker opens its own stream
        return state

    def _open(self) -> Iterator[tuple[str, dict[str, Any]]]:
        from colzero.data.readers import iter_rows

        s = self.source
        if os.path.exists(s.path):
            return iter_rows(s.path, s.format, s.split, streaming=True)
        from colzero.data.readers import iter_hf

        return iter_hf(s.path, s.split or "train", True, s.config)

    def examples(self, rows: Sequence[int] | np.ndarray) -> list[ContrastiveExample | DistillationExample]:
        rows = np.asarray(rows, dtype=np.int64)
        first = int(rows[0]) if len(rows) else 0
        if len(rows) and not np.array_equal(rows, np.arange(first, first + len(rows))):
            raise ValueError(
                f"source {self.name!r} is a stream: rows must be one ascending block, got {rows[:5]}..."
            )
        if self._reader is None or first < self._next:
            self._reader, self._next = self._open(), 0
        parsed = []
        for where, row in self._reader:
            self._next += 1
            if self._next - 1 >= first:
                parsed.append(self._parse(row, where))
                if len(parsed) == len(rows):
                    break
        if len(parsed) < len(rows):
            raise DataError(
                f"{self.source.path}: source {self.name!r} ended after {self._next} rows, fewer than its size {self._size}"
            )
        return self._build(parsed)

    def check_all(self, chunk: int = 4096) -> Iterator[int]:
        self._reader, self._next = None, 0
        for start in range(0, len(self), chunk):
            self.examples(np.arange(start, min(len(self), start + chunk)))
            yield min(len(self), start + chunk)


class _Where:
    """The place of a row, rendered only when an error message needs it (``file:line`` costs a read)."""

    __slots__ = ("row", "table")

    def __init__(self, table: Table, row: int) -> None:
        self.table, self.row = table, row

    def __str__(self) -> str:
        return self.table.where(self.row)


def _value(row: dict[str, Any], col: str, where: _Where) -> Any:
    value = row.get(col)
    if value is None:
        raise DataError(f"{where}: field {col!r} is missing")
    return value


def _list(row: dict[str, Any], col: str, where: _Where, parse_strings: bool = False) -> list[Any]:
    return _as_list(_value(row, col, where), col, where, parse_strings)


def _text(row: dict[str, Any], col: str, where: _Where) -> str:
    value = _value(row, col, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {col!r} must hold text, got {type(value).__name__}")
    return value


def load_sources(
    sources: list[DataSource],
    loss: Any,
    batch_size: int,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[TrainingSource]:
    """Open every source (splits expanded); a source smaller than the global batch is an error."""
    needs = RowNeeds.of(loss)
    loaded = []
    for spec in sources:
        for s in expand_splits(spec):
            data = (StreamSource if s.streaming else TrainingSource)(s, needs, cache_dir)
            if len(data) < batch_size:
                raise DataError(
                    f"{s.path}: source {s.name!r} has {len(data)} rows, fewer than the global batch size {batch_size}"
                )
            loaded.append(data)
    return loaded


# kept for callers of the previous API
SourceData = TrainingSource


@dataclass
class SourceSize:
    """A source's size for a plan: ``rows`` (None when unknown) and where the figure comes from."""

    name: str
    rows: int | None
    origin: str  # "file" | "card" (the recipe's rows) | "hub" | "written by the run..." | "unknown offline"


def _counted_rows(source: DataSource) -> tuple[int | None, str]:
    """Rows of a local source without converting it (Parquet metadata, JSONL line count, Arrow)."""
    from pathlib import Path

    from colzero.data.readers import data_files, detect_format, iter_lines

    fmt = detect_format(source.path, source.format)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        files = data_files(source.path, (".parquet",))
        if source.split is not None and Path(source.path).is_dir():
            from colzero.data.tables import split_of

            files = [f for f in files if split_of(f, Path(source.path)) == source.split]
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files), "file"
    if fmt == "jsonl":
        return sum(
            sum(1 for _ in iter_lines(f)) for f in data_files(source.path, (".jsonl", ".json"))
        ), "file"
    table, _ = open_table(source.path, fmt, source.split, source.config)
    return len(table), "file"


def source_sizes(
    sources: list[DataSource], prepared: set[str] | frozenset[str] = frozenset()
) -> list[SourceSize]:
    """Every source of a phase (splits expanded) with its size, for ``--dry-run`` plans: local data
    is counted without conversion, hub data comes from the recipe's ``rows`` (the data card) or,
    when online, from the hub's dataset info; ``prepared`` paths are written by the run itself."""
    from pathlib import Path

    out = []
    for spec in sources:
        local = Path(spec.path).exists() or any(ch in spec.path for ch in "*?[")
        if spec.path in prepared and not local:
            out.append(SourceSize(spec.name, None, "written by the run's prepare step"))
            continue
        if spec.splits == "*" and not local and not _online():
            out.append(SourceSize(f"{spec.name}/*", None, "unknown offline"))
            continue
        for s in expand_splits(spec):
            if local:
                out.append(SourceSize(s.name, *_counted_rows(s)))
            elif isinstance(s.rows, int):
                out.append(SourceSize(s.name, s.rows, "card"))
            elif not _online():
                out.append(SourceSize(s.name, None, "unknown offline"))
            else:
                out.append(SourceSize(s.name, _hub_rows(s), "hub"))
    return out


def _online() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "True") and os.environ.get(
        "HF_DATASETS_OFFLINE", "0"
    ) not in ("1", "true", "True")


def _hub_rows(source: DataSource) -> int | None:
    try:
        import datasets

        info = datasets.load_dataset_builder(source.path, source.config).info
        return int(info.splits[source.split or "train"].num_examples)
    except Exception:  # a plan is informative: an unreachable hub leaves the size unknown
        return None
