"""Packed embeddings and the one exact search, against slow float64 per-pair references.

Integer-valued vectors make every float32 score exact, so ties are common and the tie order
(score descending, smaller document index first) is checked exactly, not within a tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from colzero.scoring.packed import PackedBuilder, PackedEmbeddings, PaddedEmbeddings, pad_embeddings
from colzero.scoring.search import score_candidates, search
from colzero.scoring.topk import TopK, order_topk

NEG = float("-inf")


# ------------------------------------------------------------------ references


def ref_maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
    """sum_i max_j <q_i, d_j> in float64, one pair at a time; an empty document scores -inf."""
    if d.shape[0] == 0:
        return NEG if q.shape[0] else 0.0
    total = 0.0
    for i in range(q.shape[0]):
        total += max(
            sum(float(q[i, c]) * float(d[j, c]) for c in range(q.shape[1])) for j in range(d.shape[0])
        )
    return total


def ref_dot(q: torch.Tensor, d: torch.Tensor) -> float:
    return sum(float(a) * float(b) for a, b in zip(q.tolist(), d.tolist(), strict=True))


def ref_search(scores: list[list[float]], k: int, exclude: list[set[int]] | None = None):
    """Top-k by (score desc, index asc); excluded documents dropped; empty slots (-inf, -1)."""
    n = len(scores[0]) if scores else 0
    width = min(k, n)
    out_s, out_i = [], []
    for qi, row in enumerate(scores):
        skip = exclude[qi] if exclude else set()
        ranked = sorted((j for j in range(n) if j not in skip), key=lambda j: (-row[j], j))[:width]
        out_s.append([row[j] for j in ranked] + [NEG] * (width - len(ranked)))
        out_i.append(ranked + [-1] * (width - len(ranked)))
    return out_s, out_i


def int_matrices(g: torch.Generator, lengths: list[int], dim: int) -> list[torch.Tensor]:
    return [torch.randint(-2, 3, (n, dim), generator=g).float() for n in lengths]


def corpus_and_queries(seed: int, n_docs: int = 23, n_queries: int = 5, dim: int = 3, empty: bool = True):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 9, (n_docs,), generator=g).tolist()
    if empty:
        lengths[3] = 0
        lengths[-1] = 0  # the last document empty too: its offset is the token count
    docs = int_matrices(g, lengths, dim)
    q_lengths = torch.randint(1, 6, (n_queries,), generator=g).tolist()
    queries = int_matrices(g, q_lengths, dim)
    return docs, queries


def maxsim_table(queries, docs) -> list[list[float]]:
    return [[ref_maxsim(q, d) for d in docs] for q in queries]


# ------------------------------------------------------------------ packed


def test_packed_views_and_padding():
    g = torch.Generator().manual_seed(0)
    mats = int_matrices(g, [3, 0, 5, 1, 2], 4)
    packed = PackedEmbeddings.from_list(mats)
    assert len(packed) == 5 and packed.dim == 4 and packed.vectors.shape == (11, 4)
    assert packed.lengths.tolist() == [3, 0, 5, 1, 2] and packed.offsets.tolist() == [0, 3, 3, 8, 9, 11]
    for i, m in enumerate(mats):
        assert torch.equal(packed.doc(i), m)
    assert torch.equal(packed.doc(-1), mats[-1])
    with pytest.raises(IndexError):
        packed.doc(5)
    sub = packed.padded([3, 4, 1], fill="zeros")  # width = the subset's longest (2), not 5
    assert sub.embeddings.shape == (3, 2, 4)
    assert sub.mask.tolist() == [[True, False], [True, True], [False, False]]
    assert torch.equal(sub.embeddings[0, 0], mats[3][0]) and not sub.embeddings[0, 1].any()
    assert not sub.embeddings[2].any()
    last = packed.padded([0, 2, 1], fill="last", dtype=torch.float64)
    assert last.embeddings.dtype == torch.float64 and last.embeddings.shape == (3, 5, 4)
    assert torch.equal(last.embeddings[0, 3:], mats[0][-1].double().expand(2, 4))  # repeats the last vector
    assert not last.embeddings[2].any() and not last.mask[2].any() and last.mask[1].all()
    assert packed.padded([1], min_width=1).embeddings.shape == (1, 1, 4)
    assert list(map(torch.Tensor.tolist, packed)) == [m.tolist() for m in mats]


def test_pad_embeddings_is_the_packed_padding_and_is_reexported():
    import colzero

    assert colzero.pad_embeddings is pad_embeddings and colzero.PaddedEmbeddings is PaddedEmbeddings
    mats = [torch.randn(2, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)]
    p = pad_embeddings(mats)
    assert p.embeddings.dtype == torch.float64 and p.embeddings.shape == (2, 4, 3) and len(p) == 2
    assert torch.equal(p.embeddings[0, :2], mats[0]) and not p.embeddings[0, 2:].any()
    assert p.mask.sum(1).tolist() == [2, 4]
    with pytest.raises(ValueError, match="at least one"):
        pad_embeddings([])


def test_packed_rejects_bad_offsets():
    v = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="end at the token count"):
        PackedEmbeddings(v, [0, 2, 4])
    with pytest.raises(ValueError, match="non-decreasing"):
        PackedEmbeddings(v, [0, 3, 2, 5])
    with pytest.raises(ValueError, match="tokens, dim"):
        PackedEmbeddings(torch.zeros(5), None)
    with pytest.raises(ValueError, match="dim="):
        PackedEmbeddings.from_list([])
    assert len(PackedEmbeddings.from_list([], dim=7)) == 0


def test_packed_builder_grows_and_equals_from_list():
    g = torch.Generator().manual_seed(11)
    batches = [int_matrices(g, lengths, 3) for lengths in ([2, 0, 4], [], [1], [5, 5, 0, 3], [7] * 9)]
    builder = PackedBuilder(3)
    everything: list[torch.Tensor] = []
    for batch in batches:
        rows = builder.extend(batch)
        assert list(rows) == list(range(len(everything), len(everything) + len(batch)))
        everything += batch
        got, want = builder.packed(), PackedEmbeddings.from_list(everything, dim=3)
        assert torch.equal(got.offsets, want.offsets) and torch.equal(got.vectors, want.vectors)
    assert len(builder) == len(everything)
    with pytest.raises(ValueError, match="expected"):
        builder.extend([torch.zeros(2, 4)])


def test_single_vector_corpus_and_from_lengths():
    v = torch.randn(6, 3)
    dense = PackedEmbeddings(v)
    assert len(dense) == 6 and dense.is_single_vector() and torch.equal(dense.doc(2)[0], v[2])
    multi = PackedEmbeddings.from_lengths(v, [2, 0, 4])
    assert multi.offsets.tolist() == [0, 2, 2, 6] and not multi.is_single_vector()


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=30), size=st.integers(1, 8))
def test_groups_cover_every_document_once_longest_first(lengths, size):
    packed = PackedEmbeddings.from_list([torch.full((n, 2), float(i)) for i, n in enumerate(lengths)], dim=2)
    seen: list[int] = []
    previous_min = math.inf
    for rows, padded in packed.groups(size):
        group_lengths = [lengths[r] for r in rows.tolist()]
        assert padded.embeddings.shape[1] == max(1, max(group_lengths))  # padded to its own longest
        assert max(group_lengths) <= previous_min
        previous_min = min(group_lengths)
        assert padded.mask.sum(1).tolist() == group_lengths
        seen.extend(rows.tolist())
    assert seen == sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))  # each once, stable order


def test_save_load_memory_mapped(tmp_path):
    mats = [torch.randn(n, 4) for n in (2, 0, 3)]
    packed = PackedEmbeddings.from_list(mats).to(dtype=torch.float16)
    packed.save(tmp_path)
    back = PackedEmbeddings.load(tmp_path)
    assert back.dtype == torch.float16 and torch.equal(back.offsets, packed.offsets)
    assert torch.equal(back.vectors, packed.vectors)
    assert isinstance(np.load(tmp_path / "vectors.npy", mmap_mode="r"), np.memmap)
    (tmp_path / "offsets.npy").unlink()  # a dense cache entry has no offsets: one vector per row
    assert PackedEmbeddings.load(tmp_path).is_single_vector()


# ------------------------------------------------------------------ search: MaxSim


@pytest.mark.parametrize("doc_group", [1, 4, 256])
@pytest.mark.parametrize("budget_bytes", [4 * 3 * 8, 1 << 20])
def test_maxsim_search_equals_reference_with_ties(doc_group, budget_bytes):
    docs, queries = corpus_and_queries(seed=1)
    table = maxsim_table(queries, docs)
    assert any(len(set(row)) < len(row) for row in table)  # the data does have ties
    want_s, want_i = ref_search(table, 7)
    packed = PackedEmbeddings.from_list(docs)
    got = search(queries, packed, 7, doc_group=doc_group, budget_bytes=budget_bytes)
    assert got.indices.tolist() == want_i
    assert got.scores.tolist() == want_s  # exact: integer data


def test_query_mask_and_input_forms():
    docs, queries = corpus_and_queries(seed=2)
    packed = PackedEmbeddings.from_list(docs)
    want_s, want_i = ref_search(maxsim_table(queries, docs), 5)
    padded = pad_embeddings(queries)
    as_padded = search(padded, packed, 5)
    as_tensor = search(padded.embeddings, packed, 5, query_mask=padded.mask)
    as_packed = search(PackedEmbeddings.from_list(queries), packed, 5)
    for got in (as_padded, as_tensor, as_packed):
        assert got.indices.tolist() == want_i and got.scores.tolist() == want_s
    one = search(queries[0], packed, 5)  # one (Lq, dim) matrix
    assert one.indices.tolist() == want_i[:1]
    with pytest.raises(ValueError, match="twice"):
        search(padded, packed, 5, query_mask=padded.mask)


def test_excluded_documents_are_never_returned():
    docs, queries = corpus_and_queries(seed=3, n_docs=9)
    packed = PackedEmbeddings.from_list(docs)
    table = maxsim_table(queries, docs)
    one_each = torch.tensor([0, -1, 8, 3, 5])
    want_s, want_i = ref_search(table, 4, [{0}, set(), {8}, {3}, {5}])
    got = search(queries, packed, 4, exclude=one_each, doc_group=2)
    assert got.indices.tolist() == want_i and got.scores.tolist() == want_s
    rows = [[0, 1, 2], [], [8], [3, 4, 5, 6, 7, 8], [5, 5]]  # ragged lists, repeats
    sets = [set(r) for r in rows]
    got = search(queries, packed, 9, exclude=rows, doc_group=3)
    want_s, want_i = ref_search(table, 9, sets)
    assert got.indices.tolist() == want_i and got.scores.tolist() == want_s
    assert got.indices[3, 3:].tolist() == [-1] * 6  # only 3 documents left for query 3
    for qi, skip in enumerate(sets):
        assert not skip & set(got.indices[qi].tolist())


def test_k_larger_than_corpus_empty_queries_and_empty_corpus():
    docs, queries = corpus_and_queries(seed=4, n_docs=6)
    packed = PackedEmbeddings.from_list(docs)
    got = search(queries, packed, 100)
    want_s, want_i = ref_search(maxsim_table(queries, docs), 100)
    assert got.indices.shape == (5, 6) and got.indices.tolist() == want_i and got.scores.tolist() == want_s
    none = search(torch.zeros((0, 4, 3)), packed, 3)
    assert none.scores.shape == (0, 3) and none.indices.shape == (0, 3)
    assert search([], packed, 3).indices.shape == (0, 3)
    empty = search(queries, PackedEmbeddings.from_list([], dim=3), 3)
    assert empty.scores.shape == (5, 0)
    with pytest.raises(ValueError, match="k must be"):
        search(queries, packed, 0)


def test_random_float_corpus_matches_reference():
    g = torch.Generator().manual_seed(5)
    docs = [torch.nn.functional.normalize(torch.randn(n, 8, generator=g), dim=-1) for n in (3, 7, 1, 4, 9, 2)]
    queries = torch.nn.functional.normalize(torch.randn(3, 4, 8, generator=g), dim=-1)
    table = maxsim_table(list(queries), docs)
    got = search(queries, PackedEmbeddings.from_list(docs), 6, doc_group=2)
    for qi in range(3):
        want = sorted(range(6), key=lambda j: -table[qi][j])
        assert got.indices[qi].tolist() == want  # random data: no ties
        assert got.scores[qi].tolist() == pytest.approx([table[qi][j] for j in want], abs=1e-5)


def test_memory_mapped_float16_corpus(tmp_path):
    docs, queries = corpus_and_queries(seed=6)
    PackedEmbeddings.from_list(docs).to(dtype=torch.float16).save(tmp_path)  # small integers: exact
    got = search(queries, PackedEmbeddings.load(tmp_path), 5)
    want_s, want_i = ref_search(maxsim_table(queries, docs), 5)
    assert got.indices.tolist() == want_i and got.scores.tolist() == want_s


# ------------------------------------------------------------------ search: dot


def test_dot_search_equals_reference_with_ties_and_exclusion():
    g = torch.Generator().manual_seed(7)
    docs = torch.randint(-2, 3, (40, 3), generator=g).float()
    queries = torch.randint(-2, 3, (6, 3), generator=g).float()
    table = [[ref_dot(q, d) for d in docs] for q in queries]
    for chunk in (1, 7, 1000):
        got = search(queries, docs, 9, score="dot", doc_group=chunk)
        want_s, want_i = ref_search(table, 9)
        assert got.indices.tolist() == want_i and got.scores.tolist() == want_s
        ex = [[0, 1], [39], [], [5, 6, 7], [2], [10, 20, 30]]
        got = search(queries, PackedEmbeddings(docs), 9, score="dot", doc_group=chunk, exclude=ex)
        want_s, want_i = ref_search(table, 9, [set(r) for r in ex])
        assert got.indices.tolist() == want_i and got.scores.tolist() == want_s
    with pytest.raises(ValueError, match="single-vector"):
        search(queries, PackedEmbeddings.from_lengths(docs, [20, 20]), 3, score="dot")


# ------------------------------------------------------------------ score_candidates


@pytest.mark.parametrize("budget_bytes", [1, 1 << 20])
def test_score_candidates_maxsim_and_dot(budget_bytes):
    docs, queries = corpus_and_queries(seed=8, n_docs=12)
    packed = PackedEmbeddings.from_list(docs)
    cands = [[5, 3, 11, 0], [1], [], [2, 2, 7], [11, 10, 9, 8]]
    got = score_candidates(queries, packed, cands, budget_bytes=budget_bytes)
    assert got.shape == (5, 4)
    for qi, row in enumerate(cands):
        assert got[qi, : len(row)].tolist() == [ref_maxsim(queries[qi], docs[j]) for j in row]
        assert got[qi, len(row) :].tolist() == [NEG] * (4 - len(row))
    g = torch.Generator().manual_seed(9)
    dense, dq = (
        torch.randint(-2, 3, (12, 3), generator=g).float(),
        torch.randint(-2, 3, (5, 3), generator=g).float(),
    )
    got = score_candidates(dq, dense, cands, score="dot", budget_bytes=budget_bytes)
    for qi, row in enumerate(cands):
        assert got[qi, : len(row)].tolist() == [ref_dot(dq[qi], dense[j]) for j in row]
    with pytest.raises(ValueError, match="candidate indices"):
        score_candidates(queries, packed, [[12]] * 5)
    assert score_candidates(torch.zeros(0, 4, 3), packed, torch.zeros(0, 3, dtype=torch.long)).shape == (0, 3)


# ------------------------------------------------------------------ top-k merge and devices


def test_order_topk_breaks_ties_by_smaller_index_and_puts_empty_slots_last():
    scores = torch.tensor([[1.0, 2.0, 2.0, NEG, 2.0, NEG]])
    idx = torch.tensor([[9, 7, 3, -1, 5, 0]])
    s, i = order_topk(scores, idx, 6)
    assert i.tolist() == [[3, 5, 7, 9, 0, -1]] and s.tolist() == [[2.0, 2.0, 2.0, 1.0, NEG, NEG]]
    best = TopK(1, 3)
    best.push(torch.tensor([[2.0, 2.0]]), torch.tensor([8, 6]))
    best.push(torch.tensor([[2.0, 1.0]]), torch.tensor([7, 0]))
    assert best.result()[1].tolist() == [[6, 7, 8]]
    assert best.result(5)[1].tolist() == [[6, 7, 8, -1, -1]]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(
        st.sampled_from(
            [0.0, -0.0, 1.5, -1.5, 2.0**-140, -(2.0**-140), 2.0**127, -(2.0**127), math.inf, -math.inf]
        ),
        min_size=1,
        max_size=12,
    ),
    k=st.integers(1, 14),
    seed=st.integers(0, 1000),
)
def test_order_topk_equals_sorting_by_score_then_index(values, k, seed):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(40, generator=g)[: len(values)]
    idx[torch.rand(len(values), generator=g) < 0.2] = -1  # some empty slots
    s, i = order_topk(torch.tensor([values]), idx[None], k)
    key = [
        (-v if v == v else 0.0, j if j >= 0 else math.inf) for v, j in zip(values, idx.tolist(), strict=True)
    ]
    want = sorted(range(len(values)), key=lambda n: key[n])[:k]
    assert i[0].tolist() == [idx[n].item() for n in want]
    assert s[0].tolist() == [values[n] for n in want]


def test_topk_buffers_follow_the_input_device():
    """The meta device checks placement without data: every buffer must be created there."""
    best = TopK(3, 12, device="meta")  # chunks no wider than k: the merge has no data-dependent branch
    assert best.scores.device.type == "meta" and best.indices.device.type == "meta"
    for _ in range(2):
        best.push(torch.empty((3, 10), device="meta"), torch.empty(10, dtype=torch.long, device="meta"))
    s, i = best.result(14)
    assert s.device.type == i.device.type == "meta" and s.shape == i.shape == (3, 14)
    from colzero.scoring.topk import maxsim_topk

    q, d = torch.randn(2, 3, 4), torch.randn(5, 6, 4)
    cpu = maxsim_topk(q, d, torch.ones(5, 6, dtype=torch.bool), 3)
    assert cpu[0].device == q.device and cpu[1].device == q.device


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_search_on_cuda_with_a_cpu_corpus_equals_cpu():
    docs, queries = corpus_and_queries(seed=10)
    packed = PackedEmbeddings.from_list(docs)  # stays on the CPU; groups are moved one at a time
    want = search(queries, packed, 6, exclude=[[1], [2], [], [0, 4], [3]])
    got = search(queries, packed, 6, exclude=[[1], [2], [], [0, 4], [3]], device="cuda")
    assert got.scores.device.type == "cuda" and got.indices.device.type == "cuda"
    assert got.indices.cpu().tolist() == want.indices.tolist()
    assert got.scores.cpu().tolist() == want.scores.tolist()
    on_gpu = search(pad_embeddings(queries).embeddings.cuda(), packed.to("cuda"), 6)
    assert on_gpu.indices.device.type == "cuda"
    cands = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    assert torch.equal(
        score_candidates(queries, packed, cands, device="cuda").cpu(),
        score_candidates(queries, packed, cands),
    )


# ------------------------------------------------------------------ thin callers: mining, teacher

from tests.test_data_tools import CORPUS  # noqa: E402  (the same small corpus as the data tools)

QUERIES = ["neural network training loss", "fox dog", "protein results"]


def _reference_scores(model, queries, doc_ids):
    """Per (query, document) float64 scores: MaxSim for ColBERT, dot for dense."""
    from colzero.model.colbert import ColBERT

    qs = model.encode(list(queries), role="query")
    ds = model.encode([CORPUS[d] for d in doc_ids], role="document")
    multi = isinstance(model, ColBERT)
    return [
        [ref_maxsim(q.double(), d.double()) if multi else ref_dot(q.double(), d.double()) for d in ds]
        for q in qs
    ]


@pytest.mark.parametrize("kind", ["colbert", "dense"])
def test_model_search_and_teacher_equal_the_reference(tmp_path, kind):
    from conftest import make_colbert, make_dense

    from colzero.data.mining import model_search
    from colzero.data.teacher import Teacher

    model = make_colbert("bert") if kind == "colbert" else make_dense("bert")
    model.save(tmp_path / "m")
    ids = list(CORPUS)
    table = _reference_scores(model, QUERIES, ids)
    hits, scorer = model_search(tmp_path / "m", CORPUS, QUERIES, 4)
    for qi, row in enumerate(table):
        ranked = sorted(range(len(ids)), key=lambda j: (-row[j], j))[:4]
        assert [d for d, _ in hits[qi]] == [ids[j] for j in ranked]
        assert [s for _, s in hits[qi]] == pytest.approx([row[j] for j in ranked], abs=1e-4)
        assert scorer(qi, ["e", "a"]) == pytest.approx([row[5], row[1]], abs=1e-4)
    teacher = Teacher(tmp_path / "m")
    lists = [["p", "a", "b"], ["c"], ["e", "d", "p", "a"]]
    got = teacher.score_batch(QUERIES, lists, CORPUS)
    for qi, docs in enumerate(lists):
        assert got[qi] == pytest.approx([table[qi][ids.index(d)] for d in docs], abs=1e-4)
    assert teacher.score(QUERIES[2], lists[2], CORPUS) == pytest.approx(got[2], abs=1e-6)
    assert teacher.score_batch([], [], CORPUS) == []
    growing = Teacher(tmp_path / "m")  # the packed document cache grows between calls
    assert growing.score(QUERIES[0], ["p"], CORPUS) == pytest.approx(got[0][:1], abs=1e-6)
    assert growing.score_batch(QUERIES, lists, CORPUS) == [pytest.approx(r, abs=1e-6) for r in got]
