"""PLAID-style index: roundtrip, recall vs exact, add/delete, atomicity, corruption, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import WORDS, make_colbert

from colzero.index import (
    Index,
    IndexCorruptError,
    ModelMismatchError,
    PQResidualCodec,
    ResidualCodec,
    SearchSettings,
    default_num_centroids,
    exact_search,
    load_codec,
    recall_at_k,
)

REPO = Path(__file__).resolve().parents[1]


def corpus(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    return [(f"d{i}", " ".join(rng.choice(WORDS, rng.integers(4, 20)))) for i in range(n)]


def clustered(n_docs: int, dim: int = 16, topics: int = 40, seed: int = 0):
    """Synthetic token matrices drawn around topic centres (retrieval has structure)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(topics, dim)).astype(np.float32)

    def sample(n_tok: int, picks: np.ndarray) -> np.ndarray:
        v = centres[rng.choice(picks, n_tok)] + 0.35 * rng.normal(size=(n_tok, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    docs = [sample(int(rng.integers(5, 30)), rng.choice(topics, 3, replace=False)) for _ in range(n_docs)]
    queries = [sample(8, rng.choice(topics, 2, replace=False)) for _ in range(40)]
    return docs, queries


@pytest.fixture(scope="module")
def model():
    return make_colbert()


@pytest.fixture(scope="module")
def built(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("idx") / "index"
    docs = corpus(300)
    Index.build(model, docs, path, chunk_size=100, store_texts=True)
    return path, docs


def test_codec_roundtrip_and_sizes(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 128)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    errs = {}
    for nbits in (2, 4):
        codec = ResidualCodec.train(x, 64, nbits, niter=5)
        codes, packed = codec.compress(x)
        assert packed.shape == (3000, 128 * nbits // 8) and codes.dtype == np.uint16
        y = codec.decompress(codes, packed)
        errs[nbits] = float(np.mean(np.sum(x * y, axis=1)))
    assert errs[4] > errs[2] > 0.8  # cosine to the original
    # PQ at the same bytes as 2-bit scalar: vector quantisation of 4-d sub-vectors beats per-value
    # buckets even on isotropic data; save / load gives the same decoded vectors
    pq = PQResidualCodec.train(x, 64, niter=5)
    codes, packed = pq.compress(x)
    assert packed.shape == (3000, 32) and packed.dtype == np.uint8 and pq.bits_per_dim == 2
    y = pq.decompress(codes, packed)
    assert float(np.mean(np.sum(x * y, axis=1))) > errs[2]
    folder = tmp_path / "codec"
    folder.mkdir()
    meta = pq.save(folder)
    again = load_codec(folder, meta)
    assert isinstance(again, PQResidualCodec) and np.array_equal(again.decompress(codes, packed), y)
    with pytest.raises(ValueError, match="nbits sets the scalar codec"):
        Index.build(None, [("a", "b")], tmp_path / "never", codec="pq", nbits=4)
    with pytest.raises(ValueError, match="codec must be one of"):
        Index.build(None, [("a", "b")], tmp_path / "never", codec="opq")
    assert (
        default_num_centroids(1_000_000) == 8192
        and default_num_centroids(10) == 32
        and default_num_centroids(1) == 16
    )


def test_one_dimension_pq_encodes_like_faiss_and_centroids_are_stored_in_half_precision(tmp_path):
    """M = dim (1-d sub-vectors) is encoded by binary search over each dimension's sorted levels;
    it must pick faiss's nearest level (the same squared error, the same codes up to exact ties)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    pq = PQResidualCodec.train(x, 16, bytes_per_residual=32, niter=3)
    codes, packed = pq.compress(x)
    residual = x - pq.centroids[codes.astype(np.int64)]
    reference = pq._quantizer().compute_codes(np.ascontiguousarray(residual))
    ours_err = np.square(pq.decode_residuals(packed) - residual).sum(axis=1)
    faiss_err = np.square(pq.decode_residuals(reference) - residual).sum(axis=1)
    np.testing.assert_allclose(ours_err, faiss_err, rtol=1e-5, atol=1e-9)
    assert (packed == reference).mean() > 0.999
    # centroids trained here are float16 values: stored in float16, loaded back exactly
    folder = tmp_path / "codec"
    folder.mkdir()
    meta = pq.save(folder)
    assert np.load(folder / "centroids.npy").dtype == np.float16
    assert np.array_equal(load_codec(folder, meta).centroids, pq.centroids)


def test_roundtrip_search(built, model):
    path, docs = built
    idx = Index.load(path, model)
    assert len(idx) == 300 and idx.stats()["nbits"] == 4 and idx.stats()["codec"] == "pq"
    res = idx.search(["quick brown fox", "late interaction retrieval"], k=5)
    assert len(res) == 2 and all(len(r) == 5 for r in res)
    assert all(r[i][1] >= r[i + 1][1] for r in res for i in range(4))
    # same results from precomputed query embeddings
    qv = model.encode(["quick brown fox"], "query")
    again = idx.search(qv, k=5)[0]
    assert [d for d, _ in again] == [d for d, _ in res[0]]
    assert [s for _, s in again] == pytest.approx([s for _, s in res[0]], abs=1e-5)
    # exhaustive settings reproduce exact search on the decompressed vectors' ranking closely
    exact = exact_search(qv, model.encode([t for _, t in docs], "document"), [d for d, _ in docs], 10)
    full = idx.search(qv, k=10, nprobe=10_000, ncandidates=10_000)
    assert recall_at_k(full, exact, 10) >= 0.5
    # rerank="exact" re-encodes stored texts: scores equal exact MaxSim
    rr = idx.search(qv, k=3, nprobe=10_000, ncandidates=10_000, rerank="exact")
    exact_scores = dict(exact[0])
    for d, s in rr[0]:
        if d in exact_scores:
            assert s == pytest.approx(exact_scores[d], abs=1e-4)


def test_recall_against_exact_structured(model, tmp_path):
    docs, queries = clustered(800)
    ids = [f"d{i}" for i in range(len(docs))]
    idx = Index.build(model, [(i, "") for i in ids], tmp_path / "idx", embeddings=docs, chunk_size=300)
    exact = exact_search(queries, docs, ids, 10)
    approx = idx.search(queries, k=10)
    # 16-d vectors at 2 bits are coarse; the 128-d BEIR checks live in benchmarks/index.py
    assert recall_at_k(approx, exact, 10) >= 0.85


def test_add_and_delete(built, model, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    idx = Index.load(path, model)
    assert idx.add([("new-1", "protein paper who wrote"), ("new-2", "dog cat")]) == 2
    assert len(idx) == 302 and len(idx.segments) == 2
    hits = idx.search(["protein paper who wrote"], k=300)[0]
    assert "new-1" in [d for d, _ in hits]
    with pytest.raises(ValueError, match="already in the index"):
        idx.add([("new-1", "again")])
    assert len(Index.load(path)) == 302  # failed add changed nothing
    assert idx.delete(["new-1", "d0"]) == 2
    with pytest.raises(KeyError, match="not in the index"):
        idx.delete(["nope", "d0"])
    assert idx.delete(["nope"], missing="ignore") == 0
    again = Index.load(path, model)
    assert len(again) == 300
    got = {d for d, _ in again.search(["protein paper who wrote"], k=300)[0]}
    assert "new-1" not in got and "d0" not in got
    # a deleted id may be added again
    assert again.add([("d0", "the quick brown fox")]) == 1 and len(again) == 301


def fail_after_chunks(monkeypatch, n: int) -> None:
    """Make the segment writer raise when asked to write its (n + 1)-th chunk."""
    from colzero.index.storage import SegmentWriter

    original = SegmentWriter.write
    calls = {"n": 0}

    def write(self, vectors):
        calls["n"] += 1
        if calls["n"] > n:
            raise RuntimeError("injected failure (test)")
        return original(self, vectors)

    monkeypatch.setattr(SegmentWriter, "write", write)


def test_injected_failure_keeps_previous_index(built, model, tmp_path, monkeypatch):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    idx = Index.load(path, model)
    before = idx.search(["quick brown fox"], k=5)
    with monkeypatch.context() as m:
        fail_after_chunks(m, 2)
        with pytest.raises(RuntimeError, match="injected"):
            idx.add([("n" + d, t) for d, t in corpus(50, seed=5)], chunk_size=10)
    after = Index.load(path, model)
    assert len(after) == 300 and after.search(["quick brown fox"], k=5) == before
    assert not [p for p in after.base.iterdir() if p.name.startswith(".seg-")]
    # a failed rebuild over an existing index leaves it intact
    with monkeypatch.context() as m:
        fail_after_chunks(m, 2)
        with pytest.raises(RuntimeError, match="injected"):
            Index.build(model, corpus(50), path, chunk_size=10)
    assert len(Index.load(path, model)) == 300


KILL_SCRIPT = r"""
import sys, time, pathlib
sys.path.insert(0, sys.argv[3])
from conftest import make_colbert
from colzero.index import Index
idx = Index.load(sys.argv[1], make_colbert())
marker = pathlib.Path(sys.argv[2])
def docs():
    for i in range(10_000):
        if i == 60:
            marker.write_text("mid-add")
            time.sleep(60)
        yield (f"k{i}", "late interaction colbert " * (i % 5 + 1))
idx.add(docs(), chunk_size=20)
"""


@pytest.mark.slow  # the child process imports torch: tens of seconds on a loaded 2-core box
def test_sigkill_mid_add_leaves_index_usable(built, model, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    marker = tmp_path / "marker"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), str(marker), str(REPO / "tests")])
    try:
        deadline = time.time() + 300
        while not marker.exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), f"child never reached the middle of add (exit code {proc.poll()})"
        time.sleep(0.5)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    idx = Index.load(path, model)
    assert len(idx) == 300 and len(idx.segments) == 1
    assert idx.add([("after-kill", "dog")]) == 1  # orphans cleaned, index writable
    assert not [p for p in idx.base.iterdir() if p.name.startswith(".seg-")]


def test_corrupt_and_half_written_detected(built, tmp_path):
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(built[0], path)
    base = Index.load(path).base
    seg = next(p for p in base.iterdir() if p.name.startswith("seg-"))
    data = (seg / "residuals.npy").read_bytes()
    (seg / "residuals.npy").write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexCorruptError, match="residuals.npy: size"):
        Index.load(path)
    (seg / "residuals.npy").write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    with pytest.raises(IndexCorruptError, match="sha256"):
        Index.load(path)
    (base / "metadata.json").unlink()
    with pytest.raises(IndexCorruptError, match="metadata.json: file is missing"):
        Index.load(path)
    with pytest.raises(FileNotFoundError):
        Index.load(tmp_path / "nothing")
    assert len(Index.load(built[0])) >= 300  # the original is untouched


def test_bad_input(built, model):
    idx = Index.load(built[0], model)
    with pytest.raises(ValueError, match="empty"):
        idx.search(["  "])
    with pytest.raises(ValueError, match="k must be"):
        idx.search(["fox"], k=0)
    with pytest.raises(TypeError):
        idx.search("fox")
    with pytest.raises(ValueError, match="expected a"):
        idx.search([np.zeros((3, 7), np.float32)])
    with pytest.raises(ModelMismatchError, match="fingerprint"):
        Index.load(built[0], make_colbert(seed=3))
    with pytest.raises(ValueError, match="rerank must be"):
        idx.search(["fox"], rerank="bogus")


def test_cli_build_search_delete(tmp_path, capsys):
    from colzero.cli.main import main

    model_dir = make_colbert().save(tmp_path / "model")
    corpus_file = tmp_path / "corpus.jsonl"
    with open(corpus_file, "w") as f:
        for i, (d, t) in enumerate(corpus(120)):
            f.write(json.dumps({"_id": d, "title": f"t{i}", "text": t}) + "\n")
    out = tmp_path / "idx"
    assert (
        main(
            [
                "index",
                "build",
                "--model",
                str(model_dir),
                "--corpus",
                str(corpus_file),
                "--output",
                str(out),
                "--codec",
                "scalar",
                "--nbits",
                "4",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["nbits"] == 4
    assert main(["search", str(out), "quick brown fox", "-k", "3"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert len(line["results"]) == 3
    assert main(["index", "delete", str(out), "d1", "d2"]) == 0
    assert json.loads(capsys.readouterr().out) == {"deleted": 2, "documents": 118, "generation": 2}
    assert main(["index", "delete", str(out), "zzz"]) == 2  # bad input
    assert "not in the index" in capsys.readouterr().err
    add_file = tmp_path / "add.jsonl"
    add_file.write_text(json.dumps({"_id": "x1", "text": "cat dog"}) + "\n")
    assert main(["index", "add", str(out), "--corpus", str(add_file)]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == 119
    other = make_colbert(seed=4).save(tmp_path / "other")
    assert main(["search", str(out), "fox", "--model", str(other)]) == 2
    assert "fingerprint" in capsys.readouterr().err


def test_stored_vectors_score_the_candidates_with_the_float16_vectors(tmp_path):
    """``store_vectors``: stage 3 is MaxSim against the stored float16 vectors, so with every
    document a candidate the results are exact MaxSim over those vectors (float64 reference);
    an index without them decodes residuals instead (different scores); ``add`` keeps storing them."""
    model = make_colbert()
    dim = model.config.embedding_dim
    rng = np.random.default_rng(5)
    docs = []
    for _ in range(60):
        v = rng.normal(size=(int(rng.integers(3, 12)), dim)).astype(np.float32)
        docs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    rows = [(f"d{i}", "x") for i in range(60)]
    kw = {"embeddings": docs, "n_centroids": 8, "settings": SearchSettings(nprobe=2, ncandidates=64)}
    with_vectors = Index.build(model, rows, tmp_path / "v", store_vectors=True, **kw)
    without = Index.build(model, rows, tmp_path / "n", **kw)
    q = rng.normal(size=(5, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ref = np.array(
        [(q.astype(np.float64) @ d.astype(np.float16).astype(np.float64).T).max(1).sum() for d in docs]
    )
    order = np.lexsort((np.arange(60), -ref))[:10]
    got = with_vectors.search([q], k=10)[0]
    assert [d for d, _ in got] == [f"d{i}" for i in order]
    np.testing.assert_allclose([s for _, s in got], ref[order], rtol=1e-5)
    assert [s for _, s in without.search([q], k=10)[0]] != [s for _, s in got]
    extra = with_vectors.stats()["bytes_per_token_vectors"] - without.stats()["bytes_per_token_vectors"]
    assert extra == pytest.approx(2 * dim, abs=0.5)  # + the .npy header
    assert with_vectors.add([("new", "a few words here")]) == 1
    assert all(s.vectors is not None for s in Index.load(tmp_path / "v", model).segments)
