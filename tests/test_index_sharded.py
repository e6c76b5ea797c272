"""Sharded index build: 2 gloo (CPU) ranks encode half of a corpus each; rank 0 builds the index.

The result is compared with a one-process ``Index.build`` of the same JSONL corpus: document ids,
doclens and token counts identical; centroids, codes and search results equal up to the effects
of rounding the shard vectors to float16 (the codec's training chunk is kept in float32, so the
codec is the same; float16 shards are also compared with a one-process build from the same
float16-rounded vectors, float32 shards with the plain one-process build). A failing
rank-0 build over an existing index leaves it intact and fails every rank.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
WORLD = 2
N_DOCS = 40
# chunk 2 spans both shards; the codec is trained on the first chunk's documents
BUILD = {"chunk_size": 16, "kmeans_documents": 16, "store_texts": True, "kmeans_niter": 4}
QUERIES = ["quick brown fox", "late interaction retrieval", "protein paper who wrote", "neural network loss"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_corpus(path: Path) -> None:
    from conftest import WORDS

    rng = np.random.default_rng(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(N_DOCS):
            f.write(json.dumps({"_id": f"d{i}", "title": f"t{i}", "text": " ".join(rng.choice(WORDS, 12))}))
            f.write("\n\n" if i == 7 else "\n")  # a blank line is not a document


def _worker(rank: int, ports: tuple[int, int], corpus: str, out: str) -> None:
    sys.path.insert(0, str(HERE))
    torch.set_num_threads(1)
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(ports[0]),
        RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        LOCAL_RANK=str(rank),
    )
    from conftest import make_colbert

    from colzero.index import build_sharded

    model = make_colbert()
    report: dict = {}
    # 1. the process group is initialised (and destroyed) by build_sharded
    idx = build_sharded(model, corpus, Path(out) / "fp16", device="cpu", **BUILD)
    report["returned"] = type(idx).__name__
    report["destroyed"] = not dist.is_initialized()
    # 2. a process group the caller made is used and left alone; float32 shards
    os.environ["MASTER_PORT"] = str(ports[1])
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        build_sharded(model, corpus, Path(out) / "fp32", shard_dtype="float32", device="cpu", **BUILD)
        report["kept"] = dist.is_initialized()
        # 3. rank 0 fails while building over the existing index: every rank raises
        from colzero.index.storage import SegmentWriter

        original = SegmentWriter.write
        calls = []

        def failing_write(self, vectors):  # the fault is injected here, not through the API
            calls.append(1)
            if len(calls) > 1:
                raise RuntimeError("injected failure (test)")
            return original(self, vectors)

        SegmentWriter.write = failing_write
        try:
            build_sharded(model, corpus, Path(out) / "fp16", device="cpu", **BUILD)
        except RuntimeError as exc:
            report["failure"] = str(exc)
        finally:
            SegmentWriter.write = original
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    from conftest import make_colbert

    from colzero.index import Index, iter_documents
    from colzero.index.build import encode_documents

    root = tmp_path_factory.mktemp("sharded")
    corpus = root / "corpus.jsonl"
    _write_corpus(corpus)
    out = root / "out"
    out.mkdir()
    ports = (_free_port(), _free_port())
    workers = mp.spawn(_worker, args=(ports, str(corpus), str(out)), nprocs=WORLD, join=False)
    # the one-process references are built while the workers start
    torch.set_num_threads(1)
    model = make_colbert()
    ref = Index.build(model, str(corpus), root / "ref", **BUILD)
    # the same build from the one-process vectors rounded to float16 after the first chunk (what
    # the shards store: the codec is trained on the first chunk, which is kept in float32)
    texts = [t for _, t in iter_documents(corpus)]
    step = BUILD["chunk_size"]
    vecs = [v for i in range(0, N_DOCS, step) for v in encode_documents(model, texts[i : i + step], 32)]
    fp16 = vecs[:step] + [v.astype(np.float16) for v in vecs[step:]]
    ref16 = Index.build(model, str(corpus), root / "ref16", embeddings=fp16, **BUILD)
    while not workers.join():
        pass
    reports = [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]
    return model, ref, ref16, out, reports


def _same_index(ref, got, centroid_atol: float = 1e-5, score_atol: float = 1e-4, top_k_overlap: float = 1.0):
    assert got.doc_ids == ref.doc_ids == [f"d{i}" for i in range(N_DOCS)]
    np.testing.assert_array_equal(got.doclens, ref.doclens)
    assert got.has_texts and got.fingerprint == ref.fingerprint
    for key in ("dim", "codec", "nbits", "n_centroids"):
        assert got.meta[key] == ref.meta[key]
    assert got.meta["build"]["tokens"] == ref.meta["build"]["tokens"]
    for name in got.codec.files:  # centroids and the residual codec's tables
        np.testing.assert_allclose(
            np.load(got.base / name), np.load(ref.base / name), atol=centroid_atol, err_msg=name
        )
    assert np.mean(got.codes == ref.codes) >= 0.99
    res_got, res_ref = (np.asarray(i.segments[0].residuals) for i in (got, ref))
    assert np.mean(res_got == res_ref) >= 0.99  # packed bytes
    for a, b in zip(ref.search(QUERIES, k=5), got.search(QUERIES, k=5), strict=True):
        if top_k_overlap == 1.0:
            assert [d for d, _ in a] == [d for d, _ in b]
        assert len({d for d, _ in a} & {d for d, _ in b}) >= top_k_overlap * 5
        scores = dict(b)
        for d, s in a:
            if d in scores:
                assert scores[d] == pytest.approx(s, abs=score_atol)


def test_sharded_build_equals_one_process(sharded):
    from colzero.index import Index

    model, ref, ref16, out, reports = sharded
    assert [r["returned"] for r in reports] == ["Index", "NoneType"]
    assert all(r["destroyed"] and r["kept"] for r in reports)
    # float32 shards: the vectors as encoded, the one-process index
    _same_index(ref, Index.load(out / "fp32", model))
    # float16 shards: the one-process index built from float16-rounded vectors ...
    fp16 = Index.load(out / "fp16", model)
    _same_index(ref16, fp16)
    # ... and close to the float32 one: same codec, a few tokens' residual codes (or centroid codes) flip
    _same_index(ref, fp16, score_atol=0.1, top_k_overlap=0.8)
    assert sorted(p.name for p in out.iterdir()) == ["fp16", "fp32", "rank0.json", "rank1.json"]


def test_failed_sharded_build_keeps_previous_index(sharded):
    from colzero.index import Index

    model, ref, ref16, out, reports = sharded
    assert "injected" in reports[0]["failure"]
    assert "rank 0 failed" in reports[1]["failure"]
    _same_index(ref16, Index.load(out / "fp16", model))


def test_shard_helpers(tmp_path):
    from colzero.index.documents import count_documents
    from colzero.index.sharded import ShardEmbeddings, shard_documents

    corpus = tmp_path / "c.jsonl"
    _write_corpus(corpus)
    assert count_documents(str(corpus)) == N_DOCS
    assert [d for d, _ in shard_documents(corpus, 7, 10)] == ["d7", "d8", "d9"]
    pairs = [(f"x{i}", "t") for i in range(5)]
    assert [d for d, _ in shard_documents(pairs, 3, 5)] == ["x3", "x4"]
    with pytest.raises(TypeError, match="sequence"):
        count_documents(iter(pairs))
    rng = np.random.default_rng(0)
    docs = [rng.normal(size=(int(n), 4)).astype(np.float32) for n in (3, 1, 2, 5)]
    for r, (head, rest) in enumerate(((docs[:1], docs[1:3]), ([], docs[3:]))):
        np.save(tmp_path / f"rank-{r:05d}.head.npy", np.zeros((0, 4), np.float32) if not head else head[0])
        np.save(tmp_path / f"rank-{r:05d}.vectors.npy", np.concatenate(rest).astype(np.float16))
        lens = [len(d) for d in head + rest]
        np.save(tmp_path / f"rank-{r:05d}.doclens.npy", np.array(lens, np.int32))
    emb = ShardEmbeddings(tmp_path, 2, 4, n_head=1)
    assert len(emb) == 4 and emb[0].dtype == np.float32 and emb[3].dtype == np.float16
    assert all(np.allclose(a, b, atol=1e-2) for a, b in zip(emb[0:4], docs, strict=True))
    assert np.array_equal(emb[0], docs[0])
    with pytest.raises(ValueError, match="expected 5"):
        ShardEmbeddings(tmp_path, 2, 5, n_head=1)
    with pytest.raises(ValueError, match="rows"):
        ShardEmbeddings(tmp_path, 2, 4, n_head=2)
