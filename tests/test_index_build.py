"""Streamed builds (memory in bytes, chunked == one chunk) and bad corpus input (file:line:field)."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from conftest import make_colbert

from colzero.data.readers import DataError
from colzero.index import Index, read_documents


class SyntheticVectors:
    """Per-document token matrices generated on demand (seeded per document): a corpus that is
    never in memory as a whole, so whatever a build holds is the build's own doing."""

    def __init__(self, n_docs: int, dim: int, seed: int = 0) -> None:
        self.n_docs, self.dim, self.seed = n_docs, dim, seed
        self.lens = np.random.default_rng(seed).integers(5, 36, n_docs)
        self.centres = np.random.default_rng(seed + 1).normal(size=(50, dim)).astype(np.float32)

    def __len__(self) -> int:
        return self.n_docs

    def __getitem__(self, key: slice) -> list[np.ndarray]:
        out = []
        for i in range(*key.indices(self.n_docs)):
            rng = np.random.default_rng((self.seed, i))
            noise = rng.standard_normal((self.lens[i], self.dim), dtype=np.float32)
            v = self.centres[rng.integers(0, 50, self.lens[i])] + 0.5 * noise
            out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return out

    @property
    def nbytes(self) -> int:
        return int(self.lens.sum()) * self.dim * 4


def _traced_build(model, n_docs: int, path) -> tuple[int, SyntheticVectors]:
    vectors = SyntheticVectors(n_docs, 64)
    ids = ((f"d{i}", "") for i in range(n_docs))  # not a list: the ids are not held either
    tracemalloc.start()
    try:
        Index.build(
            model,
            ids,
            path,
            embeddings=vectors,
            expected_documents=n_docs,
            chunk_size=64,
            kmeans_documents=64,
            n_centroids=256,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, vectors


def test_streamed_build_memory_is_bounded_by_the_chunk_not_the_corpus(tmp_path):
    """Traced (numpy + Python) peak bytes of a build: far below the corpus, and growing with the
    corpus only by the inverted lists (one int64 per distinct (document, centroid) pair while they
    are sorted), not by its vectors (256 B per 64-d float32 token). What it does hold is one
    chunk's vectors and its (tokens x centroids) assignment scores."""
    model = make_colbert()
    _traced_build(model, 100, tmp_path / "warm-up")  # lazy imports (faiss, sqlite3) are not the build's
    small, small_vecs = _traced_build(model, 800, tmp_path / "small")
    large, large_vecs = _traced_build(model, 3200, tmp_path / "large")
    extra_tokens = int(large_vecs.lens.sum() - small_vecs.lens.sum())
    assert large < large_vecs.nbytes / 3, (large, large_vecs.nbytes)
    assert large - small < 24 * extra_tokens, (small, large, extra_tokens)  # vectors would be 256 / token
    assert len(Index.load(tmp_path / "large")) == 3200


def test_streamed_build_equals_one_chunk_build(tmp_path):
    model = make_colbert()
    rows = [{"_id": f"d{i}", "text": "x", "n": i} for i in range(300)]
    vectors = SyntheticVectors(300, model.config.embedding_dim, seed=3)[0:300]
    kw = {"embeddings": vectors, "kmeans_documents": 200}
    streamed = Index.build(model, rows, tmp_path / "streamed", chunk_size=7, **kw)
    whole = Index.build(model, rows, tmp_path / "whole", chunk_size=10_000, **kw)
    for name in streamed.codec.files:
        assert (streamed.base / name).read_bytes() == (whole.base / name).read_bytes(), name
    a, b = streamed.segments[0], whole.segments[0]
    for name in a.files:
        assert a.files[name] == b.files[name], name  # same size and sha256
    assert streamed.doc_ids == whole.doc_ids and streamed.fields(["d9"]) == whole.fields(["d9"]) == [
        {"text": "x", "n": 9}
    ]
    q = vectors[5][:4]
    assert streamed.search([q], k=5) == whole.search([q], k=5)


def _write(path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_bad_corpus_errors_name_file_line_and_field(tmp_path):
    ok = json.dumps({"_id": "a", "title": "t", "text": "x"})
    cases = {  # file stem: (lines, the error expected)
        "dup": (
            [ok, json.dumps({"_id": "b", "text": "y"}), "", json.dumps({"_id": "a", "text": "z"})],
            r"dup\.jsonl:4: field '_id': duplicate document id 'a' \(first at .*dup\.jsonl:1\)",
        ),
        "no-id": (
            [ok, json.dumps({"text": "y"})],
            r"no-id\.jsonl:2: field '_id' \(the id; or one of .*\) is missing",
        ),
        "title": (
            [json.dumps({"_id": 1, "title": 3, "text": "y"})],
            r"title\.jsonl:1: field 'title' must be",
        ),
        "json": ([ok, "{not json"], r"json\.jsonl:2: malformed JSON"),
        "array": (["[1, 2]"], r"array\.jsonl:1: expected a JSON object"),
        "empty-id": (
            [json.dumps({"_id": "", "text": "y"})],
            r"empty-id\.jsonl:1: field '_id' must hold an id",
        ),
    }
    model = make_colbert()
    for stem, (lines, pattern) in cases.items():
        corpus = _write(tmp_path / f"{stem}.jsonl", lines)
        with pytest.raises(DataError, match=pattern):
            Index.build(model, corpus, tmp_path / f"idx-{stem}")
        assert not (tmp_path / f"idx-{stem}").exists()  # nothing half-written
    # rows in Python name their position
    with pytest.raises(DataError, match=r"document 1: field 'text' must be a string"):
        list(read_documents([("a", "x"), ("b", None)]))
    with pytest.raises(DataError, match=r"document 2: field '_id' \(the id; or one of .*\) is missing"):
        Index.build(
            model, [{"_id": "a", "text": "a"}, {"id": "b", "title": "b"}, {"text": "c"}], tmp_path / "never"
        )
    with pytest.raises(DataError, match=r"document 0: field 'text' is missing"):
        Index.build(model, [{"_id": "a"}], tmp_path / "never")
    # an id already in the index (add) names the new line; nothing is added
    idx = Index.build(model, [{"_id": "a", "text": "x"}, {"_id": "b", "text": "y"}], tmp_path / "idx")
    more = _write(
        tmp_path / "more.jsonl",
        [json.dumps({"_id": "c", "text": "x"}), json.dumps({"_id": "b", "text": "q"})],
    )
    with pytest.raises(
        DataError, match=r"more\.jsonl:2: field '_id': document id 'b' is already in the index"
    ):
        idx.add(more)
    again = _write(
        tmp_path / "again.jsonl",
        [json.dumps({"_id": "c", "text": "x"}), json.dumps({"_id": "c", "text": "q"})],
    )
    with pytest.raises(
        DataError,
        match=r"again\.jsonl:2: field '_id': duplicate document id 'c' \(first at .*again\.jsonl:1\)",
    ):
        idx.add(again)
    assert len(Index.load(tmp_path / "idx")) == 2
