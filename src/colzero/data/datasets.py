"""Retrieval evaluation datasets: BEIR folders, Hugging Face datasets (BEIR / NanoBEIR layouts)
and MS MARCO-style TSV folders, all read into one :class:`RetrievalDataset`.

Rules (as BEIR's ``GenericDataLoader``): a document's text is ``title + " " + text`` stripped;
the queries of a split are those named by the split's qrels; qrels rows are kept with their
integer grade (grade <= 0 is judged non-relevant by the metrics). Qrels naming unknown queries or
documents are dropped with a warning and counted (``dropped_qrels``); duplicate ids, malformed
lines and an empty corpus are errors that name the file, the line and the field.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colzero.data.readers import (
    DataError,
    document_text,
    iter_documents,
    iter_jsonl,
    iter_tsv,
    row_id,
    text_field,
)

logger = logging.getLogger(__name__)


#: the one input error type of colzero (a dataset file is missing, malformed or inconsistent)
DatasetError = DataError


@dataclass
class RetrievalDataset:
    """A retrieval test set: corpus (ids, texts), queries (ids, texts) and graded qrels."""

    name: str
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]
    source: str = ""
    split: str = "test"
    dropped_qrels: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.corpus_ids:
            raise DatasetError(f"{self.source or self.name}: the corpus is empty")

    def __repr__(self) -> str:
        return (
            f"RetrievalDataset({self.name!r}, split={self.split!r}, docs={len(self.corpus_ids)}, "
            f"queries={len(self.query_ids)}, qrels={sum(len(v) for v in self.qrels.values())})"
        )

    def corpus_hash(self) -> str:
        """sha256 of the document ids and texts, in order (keys the embedding cache)."""
        h = hashlib.sha256()
        for doc_id, text in zip(self.corpus_ids, self.corpus_texts, strict=True):
            h.update(doc_id.encode())
            h.update(b"\x00")
            h.update(text.encode())
            h.update(b"\x01")
        return h.hexdigest()

    def subset(self, n_docs: int | None = None, n_queries: int | None = None) -> RetrievalDataset:
        """First ``n_queries`` queries and ``n_docs`` documents (relevant ones kept first); for benchmarks."""
        qids = self.query_ids[:n_queries] if n_queries else list(self.query_ids)
        keep_q = set(qids)
        qrels = {q: dict(v) for q, v in self.qrels.items() if q in keep_q}
        if n_docs and n_docs < len(self.corpus_ids):
            rel = {d for v in qrels.values() for d in v}
            idx = [i for i, d in enumerate(self.corpus_ids) if d in rel][:n_docs]
            have = set(idx)
            idx += [i for i in range(len(self.corpus_ids)) if i not in have][: n_docs - len(idx)]
            idx.sort()
        else:
            idx = list(range(len(self.corpus_ids)))
        docs = {self.corpus_ids[i] for i in idx}
        qrels = {q: {d: s for d, s in v.items() if d in docs} for q, v in qrels.items()}
        pos = {q: i for i, q in enumerate(self.query_ids)}
        return RetrievalDataset(
            name=f"{self.name}[{len(idx)}docs]" if len(idx) < len(self.corpus_ids) else self.name,
            corpus_ids=[self.corpus_ids[i] for i in idx],
            corpus_texts=[self.corpus_texts[i] for i in idx],
            query_ids=qids,
            query_texts=[self.query_texts[pos[q]] for q in qids],
            qrels=qrels,
            source=self.source,
            split=self.split,
        )


#: BEIR's document string, the same everywhere in colzero (training, evaluation, index)
doc_text = document_text


# ---------------------------------------------------------------------- assembly


def _assemble(
    name: str,
    source: str,
    split: str,
    corpus: Iterable[tuple[str, str, str]],
    queries: Iterable[tuple[str, str, str]],
    qrels_rows: Iterable[tuple[str, str, int, str]],
    drop_unknown_documents: bool = False,
) -> RetrievalDataset:
    """corpus/queries: (id, text, where); qrels rows: (qid, did, score, where)."""
    corpus_ids: list[str] = []
    corpus_texts: list[str] = []
    seen: dict[str, str] = {}
    for doc_id, text, where in corpus:
        if doc_id in seen:
            raise DatasetError(
                f"{where}: field '_id': duplicate document id {doc_id!r} (first at {seen[doc_id]})"
            )
        seen[doc_id] = where
        corpus_ids.append(doc_id)
        corpus_texts.append(text)
    if not corpus_ids:
        raise DatasetError(f"{source}: the corpus is empty")
    query_text: dict[str, str] = {}
    qseen: dict[str, str] = {}
    for qid, text, where in queries:
        if qid in qseen:
            raise DatasetError(f"{where}: field '_id': duplicate query id {qid!r} (first at {qseen[qid]})")
        qseen[qid] = where
        query_text[qid] = text
    qrels: dict[str, dict[str, int]] = {}
    pair_seen: dict[tuple[str, str], str] = {}
    unknown_q = unknown_d = 0
    examples: list[str] = []
    for qid, did, score, where in qrels_rows:
        if (qid, did) in pair_seen:
            raise DatasetError(
                f"{where}: duplicate qrels pair ({qid!r}, {did!r}) (first at {pair_seen[(qid, did)]})"
            )
        pair_seen[(qid, did)] = where
        if qid not in query_text:
            unknown_q += 1
            if len(examples) < 3:
                examples.append(f"{where}: query {qid!r}")
            continue
        if did not in seen:
            unknown_d += 1
            if len(examples) < 3:
                examples.append(f"{where}: document {did!r}")
            if drop_unknown_documents:
                continue
        qrels.setdefault(qid, {})[did] = score
    if unknown_q or unknown_d:
        logger.warning(
            "%s (%s): %d qrels name unknown queries (dropped) and %d name unknown documents (%s; e.g. %s)",
            name,
            split,
            unknown_q,
            unknown_d,
            "dropped" if drop_unknown_documents else "kept as unretrievable relevant, as BEIR",
            "; ".join(examples),
        )
    if not qrels:
        raise DatasetError(f"{source}: no usable qrels for split {split!r}")
    query_ids = [q for q in query_text if q in qrels]  # queries selected through the qrels
    return RetrievalDataset(
        name=name,
        corpus_ids=corpus_ids,
        corpus_texts=corpus_texts,
        query_ids=query_ids,
        query_texts=[query_text[q] for q in query_ids],
        qrels=qrels,
        source=source,
        split=split,
        dropped_qrels={"unknown_queries": unknown_q, "unknown_documents": unknown_d},
    )


# ---------------------------------------------------------------------- file readers


def _read_jsonl(path: Path, kind: str) -> Iterator[tuple[str, str, str]]:
    """(id, text, where) of a BEIR corpus (text = title + " " + text) or queries file."""
    if kind == "corpus":
        for doc in iter_documents(path):
            yield doc.id, doc.text, doc.where
        return
    for where, row in iter_jsonl(path):
        yield row_id(row, where), text_field(row, "text", where), where


def _parse_score(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        try:
            f = float(value)
        except ValueError:
            raise DatasetError(f"{where}: field 'score' is not a number: {value!r}") from None
        if not f.is_integer():
            raise DatasetError(f"{where}: field 'score' must be an integer grade, got {value!r}") from None
        return int(f)


def _read_qrels(path: Path) -> Iterator[tuple[str, str, int, str]]:
    """BEIR TSV (``query-id corpus-id score`` with optional header) or TREC (``qid Q0 did rel``)."""
    for n, (where, parts) in enumerate(iter_tsv(path)):
        if len(parts) == 1:
            parts = parts[0].split()
        if n == 0 and parts and parts[0].strip().lower() in ("query-id", "query_id", "qid"):
            continue
        if len(parts) == 3:
            qid, did, score = parts
        elif len(parts) == 4:
            qid, _, did, score = parts
        else:
            raise DatasetError(
                f"{where}: expected 3 fields (query-id, corpus-id, score) or 4 (TREC), got {len(parts)}"
            )
        qid, did = qid.strip(), did.strip()
        if not qid:
            raise DatasetError(f"{where}: field 'query-id' is empty")
        if not did:
            raise DatasetError(f"{where}: field 'corpus-id' is empty")
        yield qid, did, _parse_score(score.strip(), where), where


def _read_tsv(path: Path, kind: str) -> Iterator[tuple[str, str, str]]:
    """MS MARCO ``id<TAB>text`` (or ``id<TAB>title<TAB>text`` for collections)."""
    for where, parts in iter_tsv(path):
        if len(parts) == 2:
            row_id_, text = parts
            title = ""
        elif len(parts) == 3 and kind == "corpus":
            row_id_, title, text = parts
        else:
            raise DatasetError(f"{where}: expected 'id<TAB>text', got {len(parts)} fields")
        if not row_id_.strip():
            raise DatasetError(f"{where}: field 'id' is empty")
        yield row_id_.strip(), document_text(title, text) if kind == "corpus" else text, where


# ---------------------------------------------------------------------- loaders


def load_beir(path: str | os.PathLike[str], split: str = "test", name: str | None = None) -> RetrievalDataset:
    """A BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``) as a dataset."""
    root = Path(path)
    corpus, queries = root / "corpus.jsonl", root / "queries.jsonl"
    qrels = root / "qrels" / f"{split}.tsv"
    for p in (corpus, queries, qrels):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p}: file is missing (BEIR folder needs corpus.jsonl, queries.jsonl, qrels/)"
            )
    return _assemble(
        name or root.name,
        str(root),
        split,
        _read_jsonl(corpus, "corpus"),
        _read_jsonl(queries, "queries"),
        _read_qrels(qrels),
    )


def _first_existing(root: Path, names: list[str]) -> Path | None:
    for n in names:
        if (root / n).is_file():
            return root / n
    return None


def load_msmarco_tsv(
    path: str | os.PathLike[str], split: str = "test", name: str | None = None
) -> RetrievalDataset:
    """A folder with ``collection.tsv``, ``queries[.<split>].tsv`` and ``qrels[.<split>].tsv|.txt``."""
    root = Path(path)
    coll = _first_existing(root, ["collection.tsv", "corpus.tsv"])
    queries = _first_existing(root, [f"queries.{split}.tsv", "queries.tsv"])
    qrels = _first_existing(
        root,
        [f"qrels.{split}.tsv", f"qrels.{split}.txt", f"qrels/{split}.tsv", "qrels.tsv", "qrels.txt"],
    )
    if coll is None or queries is None or qrels is None:
        raise FileNotFoundError(f"{root}: MS MARCO folder needs collection.tsv, queries.tsv and qrels")
    return _assemble(
        name or root.name,
        str(root),
        split,
        _read_tsv(coll, "corpus"),
        _read_tsv(queries, "queries"),
        _read_qrels(qrels),
    )


def _hf_rows(name: str, config: str, split: str | None, **kwargs: Any) -> list[dict[str, Any]]:
    """Rows of one table of a Hugging Face dataset (hub name or local folder)."""
    import datasets

    local = Path(name)
    if local.is_dir() and (local / config).is_dir():
        files = sorted(p for p in (local / config).rglob("*") if p.is_file())
        by_ext = {
            ".parquet": "parquet",
            ".jsonl": "json",
            ".json": "json",
            ".csv": "csv",
            ".tsv": "csv",
            ".arrow": "arrow",
        }
        kinds = {by_ext[p.suffix] for p in files if p.suffix in by_ext}
        if len(kinds) != 1:
            raise DatasetError(f"{local / config}: expected data files of one format, found {sorted(kinds)}")
        kind = kinds.pop()
        extra = {"delimiter": "\t"} if any(p.suffix == ".tsv" for p in files) else {}
        ds = datasets.load_dataset(
            kind, data_files=[str(p) for p in files if p.suffix in by_ext], split="train", **extra
        )
        return list(ds)
    dd = datasets.load_dataset(name, config, **kwargs)
    if isinstance(dd, datasets.DatasetDict):
        key = split if split in dd else next(iter(dd))
        return list(dd[key])
    return list(dd)


def _hf_id(row: dict[str, Any], keys: tuple[str, ...], where: str) -> str:
    for k in keys:
        if k in row and row[k] is not None and str(row[k]) != "":
            return str(row[k])
    raise DatasetError(f"{where}: field {keys[0]!r} is missing or empty")


def load_hf(
    name: str,
    split: str = "test",
    *,
    qrels_name: str | None = None,
    dataset_name: str | None = None,
    **kwargs: Any,
) -> RetrievalDataset:
    """BEIR on the hub (``BeIR/scifact`` with configs corpus/queries and ``BeIR/scifact-qrels``) or
    NanoBEIR (``zeta-alpha-ai/NanoSciFact``: configs corpus/queries/qrels, split ``train``, qrels
    without score = grade 1). ``name`` may be a local folder with ``corpus/``, ``queries/`` and
    ``qrels/`` sub-folders of parquet/jsonl/csv files."""
    corpus_rows = _hf_rows(name, "corpus", "corpus", **kwargs)
    query_rows = _hf_rows(name, "queries", "queries", **kwargs)
    qrels_rows: list[dict[str, Any]] | None = None
    if qrels_name is not None:
        qrels_rows = (
            _hf_rows(qrels_name, "default", split, **kwargs) if not Path(qrels_name).is_dir() else None
        )
        if qrels_rows is None:
            qrels_rows = _hf_rows(qrels_name, split, split, **kwargs)
    else:
        try:
            qrels_rows = _hf_rows(name, "qrels", split, **kwargs)
        except (ValueError, FileNotFoundError) as exc:
            if Path(name).is_dir():
                raise
            try:  # BEIR keeps qrels in a sibling repository
                import datasets

                qrels_rows = list(datasets.load_dataset(f"{name}-qrels", split=split, **kwargs))
            except Exception:
                raise DatasetError(
                    f"{name}: found no qrels (config 'qrels' or '{name}-qrels'): {exc}"
                ) from exc

    def corpus() -> Iterator[tuple[str, str, str]]:
        for i, row in enumerate(corpus_rows):
            where = f"{name} corpus row {i}"
            yield (
                _hf_id(row, ("_id", "id", "corpus-id"), where),
                doc_text(row.get("title"), row.get("text")),
                where,
            )

    def queries() -> Iterator[tuple[str, str, str]]:
        for i, row in enumerate(query_rows):
            where = f"{name} queries row {i}"
            text = row.get("text")
            if not isinstance(text, str):
                raise DatasetError(f"{where}: field 'text' is missing")
            yield _hf_id(row, ("_id", "id", "query-id"), where), text, where

    def qrels() -> Iterator[tuple[str, str, int, str]]:
        for i, row in enumerate(qrels_rows or []):
            where = f"{qrels_name or name} qrels row {i}"
            qid = _hf_id(row, ("query-id", "query_id", "qid"), where)
            did = _hf_id(row, ("corpus-id", "corpus_id", "doc_id", "docid"), where)
            score = row.get("score", 1)
            yield qid, did, _parse_score(str(score), where), where

    label = dataset_name or Path(name).name or name
    return _assemble(label, name, split, corpus(), queries(), qrels())


def load_dataset(
    spec: str | os.PathLike[str] | RetrievalDataset,
    split: str = "test",
    name: str | None = None,
    **kwargs: Any,
) -> RetrievalDataset:
    """Load a dataset from a BEIR folder, an MS MARCO TSV folder, a local HF folder or a hub name
    (``hf:`` prefix optional)."""
    if isinstance(spec, RetrievalDataset):
        return spec
    text = str(spec)
    if text.startswith("hf:"):
        return load_hf(text[3:], split, dataset_name=name, **kwargs)
    root = Path(text)
    if root.is_dir():
        if (root / "corpus.jsonl").is_file():
            return load_beir(root, split, name)
        if _first_existing(root, ["collection.tsv", "corpus.tsv"]):
            return load_msmarco_tsv(root, split, name)
        if (root / "corpus").is_dir() and (root / "queries").is_dir():
            return load_hf(text, split, dataset_name=name, **kwargs)
        raise DatasetError(f"{root}: not a BEIR, MS MARCO or Hugging Face dataset folder")
    if root.exists() or text.startswith((".", "/")):
        raise FileNotFoundError(f"{root}: dataset folder not found")
    return load_hf(text, split, dataset_name=name, **kwargs)


__all__ = [
    "DatasetError",
    "RetrievalDataset",
    "csv",
    "doc_text",
    "load_beir",
    "load_dataset",
    "load_hf",
    "load_msmarco_tsv",
]
