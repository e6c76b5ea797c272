"""``DataSource``: where one training source lives and which column plays which role.

A plain dataclass (TOML / JSON round trip through ``from_dict`` / ``to_dict``), validated on
construction with messages that name the source and the field. Used by the trainer's
``PhaseConfig`` and the recipe layer; lives with the data so that ``colzero.data`` never imports
the training package.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

FORMATS = ("auto", "jsonl", "parquet", "arrow", "hf")

Columns = str | list[str] | None


def check_columns(owner: str, name: str, value: Any, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, str) and value:
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v for v in value):
        return
    raise ValueError(
        f"{owner}.{name} must be a column name or a non-empty list of column names, got {value!r}"
    )


def checked_dict(cls: type, data: Any, where: str) -> Any:
    """``data`` if it is a dict with only ``cls``'s field names (else a message naming the keys)."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise TypeError(f"{where} must be a table/dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(names)}")
    return data


def plain(value: Any) -> Any:
    """Dataclasses, tuples and paths as plain JSON/TOML values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if hasattr(value, "__fspath__"):
        return str(value)
    return value


@dataclass
class DataSource:
    """One training data source and which columns carry which role.

    Where: ``path`` is a JSONL / Parquet / Arrow file, a folder or glob of shards, a
    ``save_to_disk`` folder, or a hub dataset name (``config`` picks a hub config). ``split`` picks
    one split (a hub split, a sub-folder ``path/<split>/`` or file prefix ``<split>-*.parquet`` of a
    local folder, a DatasetDict key); ``splits = "*"`` or a list expands this entry into one source
    per split (named ``<name>/<split>``), each drawn in proportion to its size. ``streaming`` reads a
    hub dataset as a stream instead of downloading it first. ``rows`` documents the size where it
    cannot be read offline (hub data in ``--dry-run``).

    Roles are explicit column names, never guessed:

    - ``query``: the query text column (or, with ``queries`` set, ``query_id`` names the id column
      looked up in the query table).
    - ``positive``: positive document text(s); a list value uses its FIRST element (contrastive).
      With ``documents`` set, values are document ids into that table.
    - ``negatives``: hard negatives (list column, or several columns); ids when ``documents`` is set.
      ``max_negatives`` caps how many are kept per row (the first ones). ``fewer_negatives =
      "shortest"`` uses ``min(loss.n_negatives, shortest list of the source)`` negatives for this
      source (PyLate's ColBERT-Zero supervised script does this per split); "error" (default)
      stops at a row with too few.
    - ``candidate_ids`` / ``teacher_scores``: distillation candidates and their teacher scores; a
      list of column names is concatenated in order (e.g. ``["pos", "neg"]`` with
      ``["pos_scores", "neg_scores"]``). Candidates are ids when ``documents`` is set, texts otherwise.
      A list stored as the string of a JSON / Python list (PyLate's KD tables) is parsed.
    - ``documents``: a document table (a BEIR ``corpus.jsonl``, Parquet, ``hf://org/name/config``) with
      an id column (``_id``, ``id``, ``document_id``, ...) and ``text`` (+ ``title``: the text is
      ``title + " " + text``, as everywhere in colzero).
    - ``queries``: a query table of the same shape, used with ``query_id``.
    """

    name: str
    path: str
    format: str = "auto"
    split: str | None = None
    splits: str | list[str] | None = None
    config: str | None = None
    weight: float | None = None
    query: str = "query"
    positive: Columns = "pos"
    negatives: Columns = None
    candidate_ids: Columns = None
    teacher_scores: Columns = None
    documents: str | None = None
    queries: str | None = None
    query_id: str | None = None
    max_negatives: int | None = None
    fewer_negatives: str = "error"
    streaming: bool = False
    rows: int | dict[str, int] | None = None

    def __post_init__(self) -> None:
        where = f"DataSource {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"DataSource.name must be a non-empty string, got {self.name!r}")
        if not self.path:
            raise ValueError(f"{where}: path is required")
        self.path = str(self.path)
        if self.format not in FORMATS:
            raise ValueError(f"{where}: format must be one of {FORMATS}, got {self.format!r}")
        if self.weight is not None and not (isinstance(self.weight, (int, float)) and self.weight > 0):
            raise ValueError(f"{where}: weight must be a positive number or None, got {self.weight!r}")
        if self.splits is not None:
            if self.split is not None:
                raise ValueError(f"{where}: give split (one split) or splits (several), not both")
            if not (self.splits == "*" or (isinstance(self.splits, list) and self.splits)):
                raise ValueError(f"{where}: splits must be '*' or a non-empty list of split names")
        check_columns(where, "query", self.query, optional=False)
        for name in ("positive", "negatives", "candidate_ids", "teacher_scores"):
            check_columns(where, name, getattr(self, name))
            value = getattr(self, name)
            if isinstance(value, tuple):
                setattr(self, name, list(value))
        if (self.candidate_ids is None) != (self.teacher_scores is None):
            raise ValueError(f"{where}: candidate_ids and teacher_scores must be given together")
        if (
            isinstance(self.candidate_ids, list)
            and isinstance(self.teacher_scores, list)
            and len(self.candidate_ids) != len(self.teacher_scores)
        ):
            raise ValueError(
                f"{where}: candidate_ids {self.candidate_ids} and teacher_scores {self.teacher_scores} "
                "must list the same number of columns"
            )
        if self.queries is not None and self.query_id is None:
            raise ValueError(f"{where}: a query table (queries=...) needs query_id (the id column)")
        if self.max_negatives is not None and (
            not isinstance(self.max_negatives, int) or self.max_negatives < 0
        ):
            raise ValueError(
                f"{where}: max_negatives must be a non-negative integer, got {self.max_negatives!r}"
            )
        if self.fewer_negatives not in ("error", "shortest"):
            raise ValueError(
                f"{where}: fewer_negatives must be 'error' or 'shortest', got {self.fewer_negatives!r}"
            )
        sizes = self.rows.values() if isinstance(self.rows, dict) else [self.rows]
        if self.rows is not None and not all(isinstance(n, int) and n >= 0 for n in sizes):
            raise ValueError(
                f"{where}: rows must be a non-negative integer (or split -> integer), got {self.rows!r}"
            )
        for name in ("documents", "queries"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))

    @property
    def is_distillation(self) -> bool:
        return self.candidate_ids is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSource:
        return cls(**checked_dict(cls, data, "DataSource"))

    def to_dict(self) -> dict[str, Any]:
        return plain(self)
