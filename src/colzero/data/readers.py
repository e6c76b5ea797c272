"""The one reader: rows and documents from JSONL, TSV, Parquet and Hugging Face datasets.

Every tool of colzero (training sources, evaluation datasets, index corpora, ``pairs``, ``mine``,
``score``, ``demo``) reads its input through this module, so that:

- a document is always the same string: :func:`document_text` (BEIR's rule, ``title + " " + text``
  stripped, used by the published MiniLM score on SciFact);
- bad input always raises :class:`DataError` (a ``ValueError``) whose message starts with where the
  problem is (``file:line`` for text files, ``file row N`` for Parquet, ``dataset[split] row N`` for
  Hugging Face datasets) and names the field: undecodable bytes, a cut-off last line, malformed JSON,
  a missing or mistyped field, a duplicate id (both lines), an empty table;
- outputs are written atomically and nothing is left behind on failure (:func:`atomic_output`,
  :func:`write_jsonl`), and an output with no rows is an error rather than an empty file.

Memory-mapped Arrow tables for training-scale data are in :mod:`colzero.data.tables`, built on this
module's readers for their error messages.
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: id columns of document / query tables, in order of preference
ID_FIELDS = ("_id", "id", "document_id", "query_id", "doc_id", "docid", "corpus-id", "query-id", "qid")


class DataError(ValueError):
    """Bad input data; the message names the file, the line (or row) and the field."""


def document_text(title: Any, text: Any) -> str:
    """The document string everywhere in colzero: ``title + " " + text``, stripped (BEIR's rule)."""
    return (str(title or "") + " " + str(text or "")).strip()


# ---------------------------------------------------------------------- files
def data_files(path: str | os.PathLike[str], suffixes: tuple[str, ...]) -> list[Path]:
    """The files of ``path``: a file, a folder (files with ``suffixes``, recursively, sorted) or a glob."""
    text = str(path)
    if any(ch in text for ch in "*?["):
        files = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
        if not files:
            raise FileNotFoundError(f"{text}: no file matches this pattern")
        return files
    p = Path(text)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.name.lower().endswith(suffixes))
        if not files:
            raise DataError(f"{p}: folder holds no {'/'.join('*' + s for s in suffixes)} files")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{p}: data file not found")
    return [p]


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file, blank lines skipped.

    Undecodable bytes and a cut-off last line (a file that ends without a newline) are reported
    by the caller's parser; this yields the raw text and marks the last unterminated line by
    raising :class:`DataError` only when it cannot be decoded.
    """
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(
                    f"{path}:{lineno}: undecodable bytes at column {exc.start + 1} (the file must be UTF-8)"
                ) from None
            if line.strip():
                yield lineno, line


def _is_cut_off(path: Path, lineno: int, line: str) -> bool:
    """Whether ``line`` is the file's last line and has no newline (a truncated write)."""
    return not line.endswith("\n") and lineno >= 1 and os.path.getsize(path) > 0


def parse_json_line(path: Path, lineno: int, line: str) -> dict[str, Any]:
    where = f"{path}:{lineno}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        if _is_cut_off(path, lineno, line):
            raise DataError(
                f"{where}: the last line is cut off (no newline at the end of the file, malformed JSON: "
                f"{exc.msg}); was the file written completely?"
            ) from None
        raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return row


def iter_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` of every JSON object line of a file, a folder of ``*.jsonl`` or a glob."""
    for file in data_files(path, (".jsonl", ".json", ".ndjson")):
        for lineno, line in iter_lines(file):
            yield f"{file}:{lineno}", parse_json_line(file, lineno, line)


def iter_tsv(path: str | os.PathLike[str]) -> Iterator[tuple[str, list[str]]]:
    """``(where, fields)`` of every non-blank line of a tab-separated file."""
    file = Path(path)
    for lineno, line in iter_lines(file):
        yield f"{file}:{lineno}", line.rstrip("\n").rstrip("\r").split("\t")


def iter_parquet(path: str | os.PathLike[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for file in data_files(path, (".parquet",)):
        row_no = 0
        # without pre_buffer=False, iter_batches buffers every column chunk of the file up front
        for batch in pq.ParquetFile(file, pre_buffer=False).iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"{file} row {row_no}", row
                row_no += 1


def parse_hub(spec: str) -> tuple[str, str | None]:
    """``(name, config)`` of a hub reference: ``org/name``, ``hf://org/name`` or ``hf://org/name/config``."""
    parts = spec.removeprefix("hf://").split("/")
    return "/".join(parts[:2]), (parts[2] if len(parts) > 2 else None)


def iter_hf(path: str, split: str | None, streaming: bool, config: str | None = None):
    """Rows of a Hugging Face dataset (hub name, ``hf://org/name/config``, ``save_to_disk`` folder).

    Without a split, a dataset with one split (BEIR's ``corpus`` config) gives that split."""
    import datasets

    if path.startswith("hf://"):
        path, config = parse_hub(path)[0], parse_hub(path)[1] or config
    try:
        if Path(path).is_dir():
            ds = datasets.load_from_disk(path)
        else:
            ds = datasets.load_dataset(path, config, split=split, streaming=streaming)
        if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            if split is None and len(ds) > 1 and "train" in ds:
                split = "train"
            ds = ds[split or next(iter(ds))]
    except (FileNotFoundError, ValueError, KeyError, ConnectionError) as exc:
        raise DataError(f"{path} (split {split!r}): cannot load the Hugging Face dataset ({exc})") from exc
    label = f"{path}[{split or 'train'}]"
    for i, row in enumerate(ds):
        yield f"{label} row {i}", row


def detect_format(path: str, fmt: str = "auto") -> str:
    """``jsonl`` | ``parquet`` | ``arrow`` | ``hf`` from a file name, folder content or hub name."""
    if fmt != "auto":
        return fmt
    text = str(path)
    if any(ch in text for ch in "*?["):
        return _format_of_files([Path(p) for p in glob.glob(text, recursive=True)], text)
    p = Path(text)
    if p.is_file():
        return _format_of_files([p], text)
    if p.is_dir():
        if (
            (p / "dataset_info.json").exists()
            or (p / "dataset_dict.json").exists()
            or (p / "state.json").exists()
        ):
            return "hf"
        return _format_of_files([f for f in p.rglob("*") if f.is_file()], text)
    if text.startswith("hf://") or (not os.path.isabs(text) and "/" in text and not text.startswith(".")):
        return "hf"  # a hub name such as "org/dataset" or "hf://org/dataset/config"
    raise FileNotFoundError(f"{text}: data file or folder not found")


_SUFFIX_FORMATS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


def _format_of_files(files: list[Path], label: str) -> str:
    kinds = {_SUFFIX_FORMATS[f.suffix.lower()] for f in files if f.suffix.lower() in _SUFFIX_FORMATS}
    if len(kinds) == 1:
        return kinds.pop()
    if not kinds:
        raise DataError(f"{label}: cannot tell the format (no .jsonl/.parquet/.arrow files); set format=")
    raise DataError(f"{label}: files of several formats {sorted(kinds)}; point at one format or set format=")


def iter_rows(
    path: str, fmt: str = "auto", split: str | None = "train", streaming: bool = False
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, row)`` from a JSONL / Parquet file, folder or glob, or a Hugging Face dataset."""
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        return iter_jsonl(path)
    if fmt == "parquet":
        return iter_parquet(path)
    if fmt in ("hf", "arrow"):
        return iter_hf(path, split, streaming or path.startswith("hf://"))
    raise DataError(f"{path}: unknown format {fmt!r}")


# ---------------------------------------------------------------------- fields
def field_value(row: dict[str, Any], name: str, where: str) -> Any:
    if name not in row:
        raise DataError(f"{where}: field {name!r} is missing (present: {sorted(row)})")
    return row[name]


def text_field(row: dict[str, Any], name: str, where: str) -> str:
    value = field_value(row, name, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must hold text, got {type(value).__name__}")
    return value


def id_value(value: Any, name: str, where: object) -> str:
    """An id as a string (strings and integers are ids; anything else is an error). ``where`` (a
    string or an object that renders the place lazily) is formatted only into the error."""
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value) != "":
        return str(value)
    raise DataError(
        f"{where}: field {name!r} must hold an id (a non-empty string or an integer), got {value!r:.80}"
    )


def row_id(row: dict[str, Any], where: str, fields: tuple[str, ...] = ID_FIELDS) -> str:
    for name in fields:
        if name in row and row[name] is not None:
            return id_value(row[name], name, where)
    raise DataError(f"{where}: field {fields[0]!r} (the id; or one of {list(fields[1:])}) is missing")


# ---------------------------------------------------------------------- documents and tables
@dataclass
class Document:
    """One corpus row: its id, its text by :func:`document_text`, the row's other fields."""

    id: str
    text: str
    where: str
    fields: dict[str, Any] = field(default_factory=dict)


def _document(row: dict[str, Any], where: str) -> Document:
    doc_id = row_id(row, where)
    for name in ("title", "text"):
        value = row.get(name)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if row.get("text") is None and row.get("title") is None:
        raise DataError(f"{where}: field 'text' is missing")
    extra = {k: v for k, v in row.items() if k not in ID_FIELDS}
    return Document(doc_id, document_text(row.get("title"), row.get("text")), where, extra)


def iter_documents(source: Any, *, what: str = "document") -> Iterator[Document]:
    """Documents of a BEIR ``corpus.jsonl`` (or its folder), a Parquet / HF table, or in-memory
    rows (``{"_id", "title", "text", ...}`` dicts or ``(id, text)`` pairs).

    A duplicate id stops the read with both places; an empty source is an error.
    """
    seen: dict[str, str] = {}
    empty: list[Document] = []
    n_empty = 0
    for doc in _raw_documents(source):
        first = seen.get(doc.id)
        if first is not None:
            raise DataError(f"{doc.where}: field '_id': duplicate {what} id {doc.id!r} (first at {first})")
        seen[doc.id] = doc.where
        if not doc.text.strip():
            n_empty += 1
            if len(empty) < 3:
                empty.append(doc)
        yield doc
    if not seen:
        noun = "corpus" if what == "document" else f"{what} table"
        raise DataError(f"{_label(source)}: the {noun} is empty")
    if n_empty:
        logger.warning(
            "%s: %d of %d %ss have empty text (%s); they encode to the special tokens only",
            _label(source),
            n_empty,
            len(seen),
            what,
            "; ".join(f"{d.where}: id {d.id!r}" for d in empty) + ("; ..." if n_empty > len(empty) else ""),
        )


def _label(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else f"<{type(source).__name__}>"


def _raw_documents(source: Any) -> Iterator[Document]:
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if not text.startswith("hf://"):  # a hub table: hf://org/name/config (streamed)
            path = Path(text)
            text = str(path / "corpus.jsonl" if path.is_dir() and (path / "corpus.jsonl").is_file() else path)
        for where, row in iter_rows(text, split=None):
            yield _document(row, where)
        return
    for n, item in enumerate(source):
        where = f"document {n}"
        if isinstance(item, Document):
            yield item
        elif isinstance(item, dict):
            yield _document(item, where)
        else:
            doc_id, text = item
            yield Document(id_value(doc_id, "id", where), str(text), where)


def load_text_table(path: str | os.PathLike[str], what: str = "document") -> dict[str, str]:
    """A small id → text table (documents or queries) as a dict, for tools on small data.

    Training-scale tables are memory-mapped instead (:class:`colzero.data.tables.IdTable`).
    """
    return {doc.id: doc.text for doc in iter_documents(path, what=what)}


# ---------------------------------------------------------------------- outputs
def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists (on this machine)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def temp_name(name: str) -> str:
    """The name of this process's temporary file or folder for ``name``: ``.NAME.tmp-PID``."""
    return f".{name}.tmp-{os.getpid()}"


def temp_owner(entry: str) -> tuple[str, int] | None:
    """``(name, pid)`` of a temporary entry named by :func:`temp_name`, else None."""
    if not entry.startswith("."):
        return None
    stem, sep, pid = entry[1:].rpartition(".tmp-")
    return (stem, int(pid)) if sep and stem and pid.isdigit() else None


def remove_stale_temps(folder: Path, name: str | None = None) -> list[Path]:
    """Delete the temporary entries (:func:`temp_name`) in ``folder`` whose process is gone (only
    those for ``name`` when given); a live process's are never touched. Returns what was removed."""
    import shutil

    removed = []
    try:
        entries = list(folder.iterdir())
    except FileNotFoundError:
        return removed
    for entry in entries:
        owner = temp_owner(entry.name)
        if owner is None or (name is not None and owner[0] != name) or pid_alive(owner[1]):
            continue
        with contextlib.suppress(FileNotFoundError):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place on success, delete it on error.

    The temporary entry is ``.NAME.tmp-PID``; those a killed run left for the same ``path`` are
    removed first (only when their process is gone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = path.parent / temp_name(path.name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            if tmp.is_dir():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[dict[str, Any]], *, what: str = "rows") -> int:
    """Write rows atomically; returns the count. No rows is an error (nothing is written)."""
    n = 0
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
        if n == 0:
            raise DataError(f"{path}: no {what} to write (the output would be empty); nothing was written")
    return n
