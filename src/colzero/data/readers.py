"""Row readers for training data: JSONL, Parquet and Hugging Face ``datasets``.

Every reader yields ``(where, row)`` pairs, where ``where`` names the file and line (JSONL), the
file and row (Parquet) or the dataset and row (HF), so that errors can say exactly which input is
bad. Errors are :class:`DataError` (a ``ValueError``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad training input; the message names the file, line/row and field."""


def detect_format(path: str, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    p = Path(path)
    name = p.name.lower()
    if p.is_file():
        if name.endswith((".jsonl", ".json", ".ndjson")):
            return "jsonl"
        if name.endswith(".parquet"):
            return "parquet"
        raise DataError(f"{path}: cannot tell the format from the file name; set format='jsonl' or 'parquet'")
    if p.is_dir():
        files = sorted(p.iterdir())
        if any(f.suffix == ".parquet" for f in files) and not (p / "dataset_info.json").exists():
            return "parquet"
        if any(f.suffix == ".jsonl" for f in files) and not (p / "dataset_info.json").exists():
            return "jsonl"
        return "hf"
    if not os.path.isabs(path) and "/" in path and not path.startswith("."):
        return "hf"  # a hub name such as "org/dataset"
    raise FileNotFoundError(f"{path}: data file or folder not found")


def _files(path: str, suffix: str) -> list[Path]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.name.endswith(suffix))
        if not files:
            raise DataError(f"{path}: folder holds no *{suffix} files")
        return files
    if not p.exists():
        raise FileNotFoundError(f"{path}: data file not found")
    return [p]


def iter_jsonl(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for file in _files(path, ".jsonl"):
        with open(file, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{file}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
                if not isinstance(row, dict):
                    raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row


def iter_parquet(path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    for file in _files(path, ".parquet"):
        pf = pq.ParquetFile(file)
        row_no = 0
        for batch in pf.iter_batches(batch_size=4096):
            for row in batch.to_pylist():
                yield f"{file} row {row_no}", row
                row_no += 1


def iter_hf(path: str, split: str, streaming: bool) -> Iterator[tuple[str, dict[str, Any]]]:
    import datasets

    try:
        if Path(path).is_dir() and (Path(path) / "dataset_info.json").exists():
            ds = datasets.load_from_disk(path)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(path, split=split, streaming=streaming)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        raise DataError(f"{path} (split {split!r}): cannot load Hugging Face dataset ({exc})") from exc
    for i, row in enumerate(ds):
        yield f"{path}[{split}] row {i}", row


def iter_rows(path: str, fmt: str = "auto", split: str = "train", streaming: bool = False):
    """Yield ``(where, row)`` from a JSONL / Parquet file or folder, or a HF dataset."""
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        return iter_jsonl(path)
    if fmt == "parquet":
        return iter_parquet(path)
    if fmt == "hf":
        return iter_hf(path, split, streaming)
    raise DataError(f"{path}: unknown format {fmt!r}")


def load_text_table(path: str, fmt: str = "auto") -> dict[str, str]:
    """An id -> text table: BEIR ``{_id, title, text}`` or ``{id, text}`` rows.

    A non-empty title is joined as ``title + " " + text`` (the BEIR convention).
    """
    table: dict[str, str] = {}
    count = 0
    for where, row in iter_rows(path, fmt):
        count += 1
        key = row.get("_id", row.get("id"))
        if key is None:
            raise DataError(f"{where}: field '_id' (or 'id') is missing")
        if "text" not in row or not isinstance(row["text"], str):
            raise DataError(f"{where}: field 'text' is missing or not a string")
        title = row.get("title") or ""
        table[str(key)] = f"{title.strip()} {row['text']}".strip() if title else row["text"]
    if not count:
        raise DataError(f"{path}: table is empty")
    return table
