"""Load a :class:`~colzero.training.config.DataSource` into validated training examples.

Roles come from the source's explicit column names. Everything is checked while loading (before
any training step): missing columns, wrong types, ids absent from the document / query tables,
too few negatives or candidates, empty sources. Messages name the file, line and field.

Rows hold ids (when a ``documents`` table is given) or texts; texts are looked up when an
example is fetched, so id-based data keeps one copy of each document.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from colzero.data.readers import DataError, iter_rows, load_text_table
from colzero.training.config import DataSource, LossConfig

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


def _columns(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _get(row: dict[str, Any], col: str, where: str) -> Any:
    if col not in row:
        raise DataError(f"{where}: field {col!r} is missing (present: {sorted(row)})")
    return row[col]


def _as_list(value: Any, col: str, where: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if hasattr(value, "tolist"):  # numpy arrays from parquet
        return list(value.tolist())
    return [value]


def _key(value: Any, col: str, where: str) -> str:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: field {col!r} must hold ids (strings or integers), got {value!r:.80}")


def _text(value: Any, col: str, where: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {col!r} must hold text, got {type(value).__name__}")
    return value


class SourceData:
    """Validated rows of one source; ``self[i]`` is a Contrastive- or DistillationExample."""

    def __init__(self, source: DataSource, loss: LossConfig) -> None:
        self.source = source
        self.name = source.name
        self.kind = "distillation" if loss.kind == "distillation" else "contrastive"
        self.documents = load_text_table(source.documents) if source.documents else None
        self.queries = load_text_table(source.queries) if source.queries else None
        self.rows: list[tuple] = []
        if source.streaming:
            logger.warning(
                "source %r: streaming=True is read fully into memory by this version of the loader",
                source.name,
            )
        n_neg = loss.n_negatives
        if source.max_negatives is not None and n_neg > source.max_negatives:
            raise DataError(
                f"source {source.name!r}: loss.n_negatives={n_neg} exceeds max_negatives={source.max_negatives}"
            )
        for where, row in iter_rows(source.path, source.format, source.split, source.streaming):
            if self.kind == "distillation":
                self.rows.append(self._distill_row(row, where, loss.n_candidates))
            else:
                self.rows.append(self._contrastive_row(row, where, n_neg))
        if not self.rows:
            raise DataError(f"{source.path}: source {source.name!r} holds no rows")

    # ------------------------------------------------------------------ parsing
    def _query(self, row: dict[str, Any], where: str) -> str:
        s = self.source
        if self.queries is not None:
            qid = _key(_get(row, s.query_id, where), s.query_id, where)
            if qid not in self.queries:
                raise DataError(f"{where}: field {s.query_id!r}: query id {qid!r} is not in {s.queries}")
            return qid
        return _text(_get(row, s.query, where), s.query, where)

    def _doc(self, value: Any, col: str, where: str) -> str:
        if self.documents is None:
            return _text(value, col, where)
        key = _key(value, col, where)
        if key not in self.documents:
            raise DataError(f"{where}: field {col!r}: document id {key!r} is not in {self.source.documents}")
        return key

    def _contrastive_row(self, row: dict[str, Any], where: str, n_neg: int) -> tuple:
        s = self.source
        pos_col = _columns(s.positive)[0]
        pos = _as_list(_get(row, pos_col, where), pos_col, where)
        if not pos:
            raise DataError(f"{where}: field {pos_col!r} is an empty list")
        positive = self._doc(pos[0], pos_col, where)  # a list of positives: the first is used
        negatives: list[str] = []
        for col in _columns(s.negatives):
            negatives += [self._doc(v, col, where) for v in _as_list(_get(row, col, where), col, where)]
        if s.max_negatives is not None:
            negatives = negatives[: s.max_negatives]
        if len(negatives) < n_neg:
            raise DataError(
                f"{where}: field {s.negatives!r} has {len(negatives)} negatives, loss.n_negatives needs {n_neg}"
            )
        return (self._query(row, where), positive, negatives[:n_neg] if n_neg else [])

    def _distill_row(self, row: dict[str, Any], where: str, n_cand: int) -> tuple:
        s = self.source
        cands: list[str] = []
        scores: list[float] = []
        for col in _columns(s.candidate_ids):
            cands += [self._doc(v, col, where) for v in _as_list(_get(row, col, where), col, where)]
        for col in _columns(s.teacher_scores):
            for v in _as_list(_get(row, col, where), col, where):
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v != v:
                    raise DataError(f"{where}: field {col!r} must hold numbers, got {v!r}")
                scores.append(float(v))
        if len(cands) != len(scores):
            raise DataError(
                f"{where}: fields {s.candidate_ids!r} give {len(cands)} candidates but "
                f"{s.teacher_scores!r} give {len(scores)} scores"
            )
        if len(cands) < n_cand:
            raise DataError(
                f"{where}: field {s.candidate_ids!r} has {len(cands)} candidates, loss.n_candidates needs {n_cand}"
            )
        return (self._query(row, where), cands[:n_cand], scores[:n_cand])

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.rows)

    def _q(self, q: str) -> str:
        return self.queries[q] if self.queries is not None else q

    def _d(self, d: str) -> str:
        return self.documents[d] if self.documents is not None else d

    def __getitem__(self, i: int) -> ContrastiveExample | DistillationExample:
        row = self.rows[i]
        if self.kind == "distillation":
            return DistillationExample(self._q(row[0]), [self._d(c) for c in row[1]], list(row[2]))
        return ContrastiveExample(self._q(row[0]), self._d(row[1]), [self._d(n) for n in row[2]])


def load_sources(sources: list[DataSource], loss: LossConfig, batch_size: int) -> list[SourceData]:
    """Load and validate every source; a source smaller than the global batch is an error."""
    loaded = []
    for s in sources:
        data = SourceData(s, loss)
        if len(data) < batch_size:
            raise DataError(
                f"{s.path}: source {s.name!r} has {len(data)} rows, fewer than the global batch size {batch_size}"
            )
        loaded.append(data)
    return loaded
