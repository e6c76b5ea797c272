"""Index.search (vectorised) equals a slow, per-document reference of its three stages.

The reference reads each segment's files itself, decodes residuals in float64 (scalar codec: bit
by bit; PQ codec: one sub-centroid per byte) and walks documents one by one: stage 1 (probe-only
centroid MaxSim over the live documents holding a probed centroid, filled up with the other live
documents in pid order when they are fewer than the pool), stage 2 (centroid-only MaxSim over every token code of the pool),
stage 3 (MaxSim on the decompressed, normalised vectors). Ties are broken by the smaller pid, as
in ``Index.search``.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import WORDS, make_colbert

from colzero.index import Index


def _clustered(n_docs: int, dim: int, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(12, dim)).astype(np.float32)

    def sample(n_tok: int) -> np.ndarray:
        v = centres[rng.choice(12, n_tok)] + 0.5 * rng.normal(size=(n_tok, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    docs = [sample(int(rng.integers(3, 25))) for _ in range(n_docs)]
    queries = [sample(int(rng.integers(4, 9))) for _ in range(12)]
    return docs, queries


def _documents(idx: Index) -> list[tuple[np.ndarray, np.ndarray]]:
    """(codes, packed residuals) of every pid, read from the segment files."""
    out = []
    for seg in idx.segments:
        folder = idx.base / seg.name
        codes = np.load(folder / "codes.npy")
        res = np.load(folder / "residuals.npy")
        start = 0
        for n in np.load(folder / "doclens.npy"):
            out.append((codes[start : start + n].astype(np.int64), res[start : start + n]))
            start += n
    return out


def _decode64(idx: Index, codes: np.ndarray, packed: np.ndarray) -> np.ndarray:
    if idx.codec.kind == "pq":
        table = idx.codec.pq_centroids.astype(np.float64)  # (M, 256, dsub)
        residual = np.concatenate([table[m, packed[:, m]] for m in range(packed.shape[1])], axis=1)
        v = idx.codec.centroids[codes].astype(np.float64) + residual
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    nbits = idx.codec.nbits
    weights = idx.codec.weights.astype(np.float64)
    per_byte = 8 // nbits
    buckets = np.zeros((len(codes), packed.shape[1] * per_byte), dtype=np.int64)
    for j in range(per_byte):
        buckets[:, j::per_byte] = (packed >> (8 - nbits * (j + 1))) & ((1 << nbits) - 1)
    v = idx.codec.centroids[codes].astype(np.float64) + weights[buckets]
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def _best(scores: dict[int, float], n: int) -> list[int]:
    return sorted(scores, key=lambda p: (-scores[p], p))[:n]


def reference_search(idx: Index, q: np.ndarray, cs: np.ndarray, k: int, nprobe: int, ncandidates: int):
    docs = _documents(idx)
    nprobe = min(nprobe, cs.shape[1])
    probes = [np.argsort(-row, kind="stable")[:nprobe] for row in cs]
    floor = [float(row[p].min()) for row, p in zip(cs, probes, strict=True)]
    probed = set(np.concatenate(probes).tolist())
    # stage 1: live documents that hold a probed centroid, ranked; then the other live documents in
    # pid order when they are too few
    approx = {}
    unlisted = []
    for pid, (codes, _) in enumerate(docs):
        present = set(codes.tolist()) & probed
        if idx.deleted[pid]:
            continue
        if not present:
            unlisted.append(pid)
            continue
        approx[pid] = sum(
            max([float(cs[i, c]) for c in probes[i] if c in present], default=floor[i]) for i in range(len(q))
        )
    n_pool = ncandidates * idx.settings.prefilter_factor
    pool = (_best(approx, n_pool) + unlisted)[:n_pool]
    if not pool:
        return [], []
    # stage 2: every token code of the pooled documents
    if len(pool) > ncandidates:
        cscore = {p: float(cs[:, docs[p][0]].astype(np.float64).max(axis=1).sum()) for p in pool}
        pool = _best(cscore, ncandidates)
    # stage 3: decompressed vectors, float64
    q64 = q.astype(np.float64)
    final = {p: float((q64 @ _decode64(idx, *docs[p]).T).max(axis=1).sum()) for p in pool}
    best = _best(final, k)
    return [idx.doc_ids[p] for p in best], [final[p] for p in best]


@pytest.mark.parametrize(("codec", "nbits"), [("scalar", 2), ("scalar", 4), ("pq", None)])
def test_search_matches_reference(tmp_path, codec, nbits):
    model = make_colbert()
    dim = model.config.embedding_dim
    docs, queries = _clustered(260, dim, seed=nbits or 3)
    ids = [f"d{i}" for i in range(len(docs))]
    idx = Index.build(
        model, [(i, "") for i in ids], tmp_path / "idx", embeddings=docs, codec=codec, nbits=nbits
    )
    assert idx.codec.kind == codec
    rng = np.random.default_rng(1)
    # a second segment (encoded by the model) and some tombstones
    idx.add([(f"t{i}", " ".join(rng.choice(WORDS, rng.integers(3, 12)))) for i in range(40)])
    idx.delete([f"d{i}" for i in range(0, 260, 7)] + ["t3", "t17"])
    assert len(idx.segments) == 2
    flat = np.concatenate(queries)
    cs_all = flat @ idx.codec.centroids.T  # what Index.search computes for the batch
    settings = [(10, 4, 256), (5, 1, 8), (8, 2, 20), (3, 10_000, 10_000), (20, 3, 6)]
    for k, nprobe, ncand in settings:
        got = idx.search(queries, k=k, nprobe=nprobe, ncandidates=ncand)
        start = 0
        for q, res in zip(queries, got, strict=True):
            cs = cs_all[start : start + len(q)]
            start += len(q)
            ref_ids, ref_scores = reference_search(idx, q, cs, k, nprobe, max(k, ncand))
            assert [d for d, _ in res] == ref_ids, (k, nprobe, ncand)
            assert [s for _, s in res] == pytest.approx(ref_scores, abs=1e-5)
