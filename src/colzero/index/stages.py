"""PLAID's search stages (Santhanam et al., 2022, arXiv:2205.09707) as functions over arrays.

A query is ``q`` (Lq, dim), its token-centroid similarities ``cs = q @ centroids.T`` (Lq, C).
Documents are pids ``0..N-1``; document ``p`` holds tokens ``doc_starts[p] : doc_starts[p] +
doclens[p]`` of the flat ``codes`` array (each token's centroid id). The inverted lists hold, for
centroid ``c``, the pids ``ivf_pids[ivf_offsets[c] : ivf_offsets[c + 1]]`` that have a token there.

1. :func:`probe`: the ``nprobe`` best centroids of every query token;
2. :func:`candidate_pool`: documents in the probed lists, ranked by the probe-only centroid
   MaxSim ``sum_i max_{c in probes_i, c in doc} cs[i, c]`` (a query token that meets none of its
   probed centroids in the document counts the lowest probed score);
3. :func:`centroid_maxsim`: the centroid interaction over ALL of a document's token codes,
   ``sum_i max_t cs[i, code_t]``;
4. :func:`maxsim_decoded`: MaxSim against the decoded vectors of the survivors,
   ``sum_i max_t (q_i . v_t) / |v_t|``, decoded in blocks of documents so that memory is one block.

Ties are broken by the smaller pid everywhere (:func:`top`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np


def ranges(starts: np.ndarray, lens: np.ndarray) -> np.ndarray:
    """Flat indices of the ranges ``[starts[i], starts[i] + lens[i])``."""
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    return np.repeat(starts - (np.cumsum(lens) - lens), lens) + np.arange(total)


def top(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties broken by the smaller index)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    if k < len(scores):
        kth = scores[np.argpartition(-scores, k - 1)[k - 1]]
        # argpartition keeps an arbitrary subset of the scores tied with the k-th: keep the
        # smallest indices instead
        above = np.flatnonzero(scores > kth)
        part = np.concatenate([above, np.flatnonzero(scores == kth)[: k - len(above)]])
    else:
        part = np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def probe(cs: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
    """(centroid ids (Lq, nprobe), their scores (Lq, nprobe)) of each query token's best centroids."""
    nq, n_centroids = cs.shape
    nprobe = min(nprobe, n_centroids)
    if nprobe < n_centroids:
        # numpy, single-threaded: torch's thread pool costs more than this work on a busy CPU
        ids = np.argpartition(-cs, nprobe - 1, axis=1)[:, :nprobe]
    else:
        ids = np.tile(np.arange(n_centroids), (nq, 1))
    return ids, np.take_along_axis(cs, ids, axis=1)


def candidate_pool(
    probe_ids: np.ndarray,
    probe_scores: np.ndarray,
    ivf_pids: np.ndarray,
    ivf_offsets: np.ndarray,
    allowed: np.ndarray,
    n: int,
) -> np.ndarray:
    """Stage 1: the best ``n`` allowed pids by probe-only centroid MaxSim.

    ``allowed``: a bool mask over pids (live and matching the filter); no other pid enters. When
    the probed lists hold fewer than ``n`` allowed documents, the pool is filled with unlisted
    allowed documents in pid order, so it always holds ``min(n, allowed.sum())`` pids."""
    nq, nprobe = probe_ids.shape
    flat = probe_ids.ravel()
    starts = ivf_offsets[flat]
    lens = ivf_offsets[flat + 1] - starts
    uniq, inv = np.unique(ivf_pids[ranges(starts, lens)], return_inverse=True)
    nu = len(uniq)
    floor = probe_scores.min(axis=1)
    rows = np.repeat(np.arange(0, nq * nu, nu).repeat(nprobe), lens)
    approx = np.repeat(floor.astype(np.float32), nu)
    np.maximum.at(approx, rows + inv, np.repeat(probe_scores.ravel(), lens))
    # numpy adds the rows one after another for every column alike, so documents with the same
    # per-token values tie exactly
    scores = approx.reshape(nq, nu).sum(0)
    keep = allowed[uniq]
    uniq, scores = uniq[keep], scores[keep]
    if len(uniq) >= n:
        return uniq[top(scores, n)]
    everyone = np.flatnonzero(allowed)
    full = np.full(len(everyone), -np.inf, dtype=scores.dtype)
    full[np.searchsorted(everyone, uniq)] = scores
    return everyone[top(full, n)]


def centroid_maxsim(
    cs: np.ndarray, codes: np.ndarray, doc_starts: np.ndarray, doclens: np.ndarray, pids: np.ndarray
) -> np.ndarray:
    """Stage 2: ``sum_i max_t cs[i, code_t]`` over every token of each (sorted) pid."""
    plens = doclens[pids]
    toks = ranges(doc_starts[pids], plens)
    # np.take along axis 1 gives a C-ordered (Lq, tokens) matrix, so reduceat runs over contiguous
    # rows (cs[:, codes] is laid out the other way round and makes reduceat ~10x slower)
    sim = np.take(cs, codes[toks].astype(np.intp), axis=1)
    return np.maximum.reduceat(sim, np.cumsum(plens) - plens, axis=1).sum(0)


def maxsim_decoded(
    q: np.ndarray,
    cs: np.ndarray,
    pids: np.ndarray,
    doclens: np.ndarray,
    read: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    block_tokens: int = 1 << 16,
) -> np.ndarray:
    """Stage 3: MaxSim of ``q`` with the decoded, normalised token vectors of each (sorted) pid.

    A token decodes to ``v = centroid[code] + r`` (``r`` its decoded residual); its similarity to
    query token ``q_i`` is ``(q_i . v) / |v| = (cs[i, code] + q_i . r) / |v|``: the centroid part
    is read from ``cs`` (no centroid rows are gathered) and ``|v|`` is stored per token.
    ``read(pids)`` returns their tokens' ``(codes, residuals r (tokens, dim), 1 / |v|)`` in pid
    order. Documents are decoded in blocks of about ``block_tokens`` tokens, so memory is one
    block, not the candidates' vectors."""
    scores = np.empty(len(pids), dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    lens = doclens[pids]
    bounds = _blocks(lens, block_tokens)
    for a, b in itertools.pairwise(bounds):
        codes, residuals, inv_norms = read(pids[a:b])
        sim = np.take(cs, codes, axis=1)  # (Lq, tokens), C-ordered: reduceat runs along rows
        sim += q @ residuals.T
        sim *= inv_norms
        blens = lens[a:b]
        scores[a:b] = np.maximum.reduceat(sim, np.cumsum(blens) - blens, axis=1).sum(0)
    return scores


def _blocks(lens: np.ndarray, block_tokens: int) -> list[int]:
    """Boundaries [0, ..., len(lens)] of consecutive groups of about ``block_tokens`` tokens."""
    if len(lens) == 0:
        return [0]
    ends = np.cumsum(lens)
    cuts = np.searchsorted(ends, np.arange(block_tokens, int(ends[-1]), block_tokens), side="left") + 1
    return sorted({0, *cuts.tolist(), len(lens)})


def maxsim_vectors(
    q: np.ndarray,
    pids: np.ndarray,
    doclens: np.ndarray,
    read: Callable[[np.ndarray], np.ndarray],
    block_tokens: int = 1 << 16,
) -> np.ndarray:
    """Stage 3 of an index that stores its token vectors (``store_vectors``): MaxSim of ``q``
    with the stored vectors of each (sorted) pid, ``sum_i max_t q_i . v_t``. ``read(pids)`` returns
    their token vectors (tokens, dim) float32 in pid order; blocks of about ``block_tokens``."""
    scores = np.empty(len(pids), dtype=np.float32)
    q = np.ascontiguousarray(q, dtype=np.float32)
    lens = doclens[pids]
    bounds = _blocks(lens, block_tokens)
    for a, b in itertools.pairwise(bounds):
        sim = q @ read(pids[a:b]).T
        blens = lens[a:b]
        scores[a:b] = np.maximum.reduceat(sim, np.cumsum(blens) - blens, axis=1).sum(0)
    return scores
