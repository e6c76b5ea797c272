"""``DataSource``: where one training source lives and which column plays which role.

A validated settings record (:func:`colzero.schema.settings`): the same rules whether it is built
in Python, read from a phase file or from a recipe's ``[[phases.sources]]``. Lives with the data
so that ``colzero.data`` never imports the training package.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from colzero.schema import NonNegativeInt, PathText, from_dict, settings, to_dict

FORMATS = ("auto", "jsonl", "parquet", "arrow", "hf")

#: a column name, or several (concatenated in order, or the first one for a positive)
Columns = str | list[str] | None


def check_columns(owner: str, name: str, value: Any, optional: bool = True) -> None:
    """Raise unless ``value`` is a column name or a non-empty list of them (or None if optional)."""
    if value is None and optional:
        return
    if isinstance(value, str) and value:
        return
    if isinstance(value, list | tuple) and value and all(isinstance(v, str) and v for v in value):
        return
    raise ValueError(
        f"{owner}.{name} must be a column name or a non-empty list of column names, got {value!r}"
    )


@settings
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

    name: str = Field(min_length=1)
    path: PathText = Field(min_length=1)
    format: Literal["auto", "jsonl", "parquet", "arrow", "hf"] = "auto"
    split: str | None = None
    #: one source per split: "*" (every split) or a list of split names
    splits: Literal["*"] | list[str] | None = None
    #: hub config (e.g. "train" of lightonai/ms-marco-en-bge-gemma)
    config: str | None = None
    weight: float | None = Field(default=None, gt=0)
    query: str = "query"
    positive: Columns = "pos"
    negatives: Columns = None
    candidate_ids: Columns = None
    teacher_scores: Columns = None
    documents: PathText | None = None
    queries: PathText | None = None
    query_id: str | None = None
    max_negatives: NonNegativeInt | None = None
    fewer_negatives: Literal["error", "shortest"] = "error"
    streaming: bool = False
    #: size for the dry run where it cannot be read offline (per split for ``splits``)
    rows: NonNegativeInt | dict[str, NonNegativeInt] | None = None
    #: where the data comes from (hub name, paper, tool): documentation only
    origin: str | None = None

    @model_validator(mode="after")
    def _coherent(self) -> DataSource:
        where = f"DataSource {self.name!r}"
        if self.splits is not None:
            if self.split is not None:
                raise ValueError(f"{where}: give split (one split) or splits (several), not both")
            if self.splits != "*" and not self.splits:
                raise ValueError(f"{where}: splits must be '*' or a non-empty list of split names")
        check_columns(where, "query", self.query, optional=False)
        for name in ("positive", "negatives", "candidate_ids", "teacher_scores"):
            check_columns(where, name, getattr(self, name))
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
        return self

    @property
    def is_distillation(self) -> bool:
        """Whether the rows carry distillation candidates and teacher scores."""
        return self.candidate_ids is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSource:
        """Validate a plain table (TOML / JSON)."""
        return from_dict(cls, data, "DataSource")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (round trip with :meth:`from_dict`)."""
        return to_dict(self)
