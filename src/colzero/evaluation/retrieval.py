"""Exact retrieval for evaluation: encode (with an on-disk corpus cache), search, return runs.

Both searches are :func:`colzero.scoring.search.search` over the corpus as
:class:`~colzero.scoring.packed.PackedEmbeddings`: ColBERT by MaxSim (length-sorted groups of
documents, padded per group), DenseModel by dot product (cosine for normalised models). Memory
stays bounded by the group size and the MaxSim byte budget; the corpus vectors are memory-mapped
from the cache.

Cache entries live in ``cache_dir`` (default ``$COLZERO_CACHE/embeddings`` or
``~/.cache/colzero/embeddings``), one folder per key = sha256 of (model fingerprint, corpus
content hash, document length, document prompt, precision, storage dtype, format version).
Each folder holds ``vectors.npy`` (tokens x dim, or docs x dim for dense), ``offsets.npy``
(ColBERT: docs + 1) and ``meta.json``; it is written to a temporary folder and renamed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from colzero.data.datasets import RetrievalDataset
from colzero.model.colbert import ColBERT
from colzero.model.config import ColBERTConfig, Role
from colzero.model.encoder import Encoder
from colzero.model.precision import Precision, resolve_precision
from colzero.scoring.maxsim import DEFAULT_BUDGET_BYTES
from colzero.scoring.packed import PackedEmbeddings
from colzero.scoring.search import DOT_CHUNK, MAXSIM_GROUP, SEARCH_BUDGET_BYTES, search

logger = logging.getLogger(__name__)

CACHE_FORMAT = 1

#: per-dataset query lengths used by some ColBERT-Zero models (SPEC section 4); opt-in preset
QUERY_LENGTH_PRESETS: dict[str, dict[str, int]] = {
    "colbert-zero": {
        "scifact": 48,
        "trec-covid": 48,
        "trec_covid": 48,
        "trec-covid-beir": 48,
        "scidocs": 48,
        "arguana": 64,
        "climate-fever": 64,
        "climatefever": 64,
    }
}


def default_cache_dir() -> Path:
    """``$COLZERO_CACHE/embeddings``, else ``~/.cache/colzero/embeddings``."""
    root = os.environ.get("COLZERO_CACHE")
    return Path(root) / "embeddings" if root else Path.home() / ".cache" / "colzero" / "embeddings"


@dataclass
class RetrievalSettings:
    """How one dataset is searched. ``None`` lengths/prompts mean the model's own settings."""

    k: int = 100
    query_length: int | None = None
    document_length: int | None = None
    query_prompt: str | None = None
    document_prompt: str | None = None
    batch_size: int = 32
    precision: Precision = "auto"
    remove_self_hits: bool = True
    use_cache: bool = True
    cache_dir: str | os.PathLike[str] | None = None
    storage_dtype: Literal["float32", "float16"] = "float32"
    #: documents per length-sorted group (ColBERT)
    doc_group: int = MAXSIM_GROUP
    #: per-chunk similarity tensor (see :data:`colzero.scoring.search.SEARCH_BUDGET_BYTES`)
    budget_bytes: int = SEARCH_BUDGET_BYTES
    show_progress: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.storage_dtype not in ("float32", "float16"):
            raise ValueError(f"storage_dtype must be 'float32' or 'float16', got {self.storage_dtype!r}")
        for name in ("query_length", "document_length"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < 2):
                raise ValueError(f"{name} must be an integer >= 2, got {v!r}")

    def replace(self, **changes: Any) -> RetrievalSettings:
        """A copy with ``changes`` applied (None values are ignored)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def preset_settings(settings: RetrievalSettings, dataset_name: str, preset: str | None) -> RetrievalSettings:
    """Apply a per-dataset query-length preset (only where the caller set no query length)."""
    if not preset or settings.query_length is not None:
        return settings
    if preset not in QUERY_LENGTH_PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {sorted(QUERY_LENGTH_PRESETS)}")
    table = QUERY_LENGTH_PRESETS[preset]
    key = dataset_name.lower()
    for candidate in (key, key.split("[")[0], key.removesuffix("-mini").split("[")[0]):
        if candidate in table:
            return settings.replace(query_length=table[candidate])
    return settings


@dataclass
class RetrievalOutput:
    """A run (query id -> {document id: score}) with timings and where the corpus vectors came from."""

    run: dict[str, dict[str, float]]
    timings: dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    cache_path: str | None = None


# ---------------------------------------------------------------------- model helpers


@contextlib.contextmanager
def _lengths(model: Encoder, role: Role, length: int | None) -> Iterator[None]:
    """Temporarily encode ``role`` texts with ``length`` tokens."""
    if length is None:
        yield
        return
    holder: Any = model  # the protocol's config is read-only; the models' own is settable
    old = holder.config
    if isinstance(old, ColBERTConfig):
        key = "query_length" if role == "query" else "document_length"
    else:
        key = "max_length"
    holder.config = dataclasses.replace(old, **{key: length})
    try:
        yield
    finally:
        holder.config = old


def effective_length(model: Encoder, role: Role, settings: RetrievalSettings) -> int:
    """The token length ``role`` texts are encoded with under ``settings``."""
    explicit = settings.query_length if role == "query" else settings.document_length
    if explicit is not None:
        return explicit
    config = model.config
    return config.length_for(role) if isinstance(config, ColBERTConfig) else config.max_length


def _encode(model: Encoder, texts: list[str], role: Role, settings: RetrievalSettings, **kw: Any) -> Any:
    length = settings.query_length if role == "query" else settings.document_length
    prompt = settings.query_prompt if role == "query" else settings.document_prompt
    with _lengths(model, role, length):
        return model.encode(
            texts,
            role,
            batch_size=settings.batch_size,
            prompt=prompt,
            precision=settings.precision,
            show_progress=settings.show_progress,
            **kw,
        )


def query_vectors(model: Encoder, texts: list[str], settings: RetrievalSettings) -> list[torch.Tensor]:
    """Each query's token matrix (ColBERT) as the searches score it: the settings' query length
    and prompt, every position kept (query expansion included)."""
    return _encode(model, texts, "query", settings, output="list")


# ---------------------------------------------------------------------- corpus cache


def corpus_cache_key(model: Encoder, dataset: RetrievalDataset, settings: RetrievalSettings) -> str:
    """The cache key of a corpus's vectors (see the module docstring)."""
    prompt = settings.document_prompt
    if prompt is None:
        prompt = model.config.prompt_for("document")
    payload = {
        "format": CACHE_FORMAT,
        "kind": type(model).__name__,
        "model": model.fingerprint(),
        "corpus": dataset.corpus_hash(),
        "document_length": effective_length(model, "document", settings),
        "document_prompt": prompt,
        "precision": resolve_precision(settings.precision, model.device),
        "storage_dtype": settings.storage_dtype,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


#: a corpus's vectors: (tokens, dim) + offsets for ColBERT, (docs, dim) (one vector each) for dense
CorpusEmbeddings = PackedEmbeddings


def _write_atomic(final: Path, emb: PackedEmbeddings, meta: dict[str, Any]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        emb.save(tmp)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent writer's complete copy
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _read_cache(path: Path) -> PackedEmbeddings | None:
    if not (path / "meta.json").is_file():
        return None
    try:
        return PackedEmbeddings.load(path, mmap=True)
    except (OSError, ValueError) as exc:
        logger.warning("%s: unreadable cache entry (%s); re-encoding", path, exc)
        return None


def encode_corpus(
    model: Encoder, dataset: RetrievalDataset, settings: RetrievalSettings
) -> tuple[CorpusEmbeddings, bool, Path | None]:
    """(embeddings, cache_hit, cache_path)."""
    path = None
    if settings.use_cache:
        root = Path(settings.cache_dir) if settings.cache_dir is not None else default_cache_dir()
        path = root / f"{dataset.name.replace('/', '_')}-{corpus_cache_key(model, dataset, settings)}"
        cached = _read_cache(path)
        if cached is not None:
            logger.info("corpus embeddings of %s from cache %s", dataset.name, path)
            return cached, True, path
    dtype = torch.float16 if settings.storage_dtype == "float16" else torch.float32
    if isinstance(model, ColBERT):
        mats = _encode(model, dataset.corpus_texts, "document", settings, output="list")
        emb = PackedEmbeddings.from_list(mats, dim=model.config.embedding_dim).to(dtype=dtype)
        del mats
    else:
        emb = PackedEmbeddings(_encode(model, dataset.corpus_texts, "document", settings).to(dtype))
    if path is not None:
        meta = {
            "dataset": dataset.name,
            "source": dataset.source,
            "n_docs": len(dataset.corpus_ids),
            "model_class": type(model).__name__,
            "fingerprint": model.fingerprint(),
            "settings": dataclasses.asdict(settings) | {"cache_dir": str(settings.cache_dir)},
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        _write_atomic(path, emb, meta)
    return emb, False, path


# ---------------------------------------------------------------------- search


def _self_index(dataset: RetrievalDataset, query_ids: list[str]) -> torch.Tensor:
    pos = {d: i for i, d in enumerate(dataset.corpus_ids)}
    return torch.tensor([pos.get(q, -1) for q in query_ids], dtype=torch.long)


def search_colbert(
    queries: torch.Tensor,
    queries_mask: torch.Tensor | None,
    corpus: PackedEmbeddings,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    doc_group: int = MAXSIM_GROUP,
    budget_bytes: int = DEFAULT_BUDGET_BYTES,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact MaxSim top-k over a packed corpus (:func:`colzero.scoring.search.search`).

    ``exclude[i]`` (a document index or -1) is never returned for query i; a slot left empty
    holds (-inf, -1).
    """
    return search(
        queries,
        corpus,
        k,
        score="maxsim",
        query_mask=queries_mask,
        exclude=exclude,
        doc_group=doc_group,
        budget_bytes=budget_bytes,
    )


def search_dense(
    queries: torch.Tensor,
    corpus: PackedEmbeddings,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    doc_chunk: int = DOT_CHUNK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact dot-product top-k over single-vector documents, one GEMM per chunk."""
    return search(queries, corpus, k, score="dot", exclude=exclude, doc_group=doc_chunk)


def retrieve(
    model: Encoder, dataset: RetrievalDataset, settings: RetrievalSettings | None = None
) -> RetrievalOutput:
    """Encode (corpus from cache when possible) and search; the run maps query id -> {doc id: score}."""
    settings = settings or RetrievalSettings()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    corpus, hit, path = encode_corpus(model, dataset, settings)
    timings["encode_corpus_s"] = time.perf_counter() - t0
    exclude = _self_index(dataset, dataset.query_ids) if settings.remove_self_hits else None
    if exclude is not None and not (exclude >= 0).any():
        exclude = None
    t0 = time.perf_counter()
    if isinstance(model, ColBERT):
        q = _encode(model, dataset.query_texts, "query", settings, output="padded")
        timings["encode_queries_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        qmask = None if bool(q.mask.all()) else q.mask
        scores, idx = search_colbert(
            q.embeddings,
            qmask,
            corpus,
            settings.k,
            exclude=exclude,
            doc_group=settings.doc_group,
            budget_bytes=settings.budget_bytes,
        )
    else:
        q = _encode(model, dataset.query_texts, "query", settings)
        timings["encode_queries_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores, idx = search_dense(q, corpus, settings.k, exclude=exclude)
    timings["search_s"] = time.perf_counter() - t0
    ids = dataset.corpus_ids
    run: dict[str, dict[str, float]] = {}
    s_list, i_list = scores.tolist(), idx.tolist()
    for qi, qid in enumerate(dataset.query_ids):
        run[qid] = {
            ids[j]: float(v) for v, j in zip(s_list[qi], i_list[qi], strict=True) if v != float("-inf")
        }
    return RetrievalOutput(run, timings, hit, str(path) if path else None)
