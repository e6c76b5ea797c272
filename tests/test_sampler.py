"""Property tests of the same-source batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colzero.data.sampler import SameSourceBatchSampler


def epoch(sampler: SameSourceBatchSampler) -> list[tuple[int, list[int]]]:
    return [(b.source, b.rows.tolist()) for b in sampler.iter_epoch()]


setup = st.tuples(
    st.lists(st.integers(8, 60), min_size=1, max_size=4),
    st.sampled_from([(4, 1), (4, 2), (4, 4), (8, 2), (6, 3)]),
    st.integers(0, 10_000),
)


@settings(max_examples=40, deadline=None)
@given(setup)
def test_batches_single_source_and_ranks_slice_the_global_batch(args):
    sizes, (batch, world), seed = args
    full = SameSourceBatchSampler(sizes, batch, seed=seed)
    plan = full.plan(0)
    assert len(plan) == sum(n // batch for n in sizes)
    seen = [set() for _ in sizes]
    for s, rows in plan:
        assert len(rows) == batch and rows.max() < sizes[s]
        assert not seen[s] & set(rows.tolist())  # without weights every row is used at most once
        seen[s] |= set(rows.tolist())
    per_rank = [
        epoch(SameSourceBatchSampler(sizes, batch, seed=seed, rank=r, world_size=world)) for r in range(world)
    ]
    for i, (s, rows) in enumerate(plan):
        parts = [per_rank[r][i] for r in range(world)]
        assert all(p[0] == s for p in parts)  # every rank's slice comes from the same source
        per = batch // world
        for r, p in enumerate(parts):
            assert p[1] == rows[r * per : (r + 1) * per].tolist()
        assert sum((p[1] for p in parts), []) == rows.tolist()


@settings(max_examples=25, deadline=None)
@given(setup, st.integers(0, 30), st.integers(0, 2))
def test_resumed_sampler_replays_identical_sequence(args, cut, epochs_before):
    sizes, (batch, world), seed = args
    ref = SameSourceBatchSampler(sizes, batch, seed=seed, rank=world - 1, world_size=world)
    seq = []
    for _ in range(epochs_before + 2):
        seq += [(ref.epoch, *x) for x in epoch(ref)]
        ref.next_epoch()
    a = SameSourceBatchSampler(sizes, batch, seed=seed, rank=world - 1, world_size=world)
    done = []
    while len(done) < min(cut, len(seq)):
        for b in a.iter_epoch():
            done.append((a.epoch, b.source, b.rows.tolist()))
            if len(done) == min(cut, len(seq)):
                break
        else:
            a.next_epoch()
    state = a.state_dict()
    b = SameSourceBatchSampler(sizes, batch, seed=seed, rank=world - 1, world_size=world)
    b.load_state_dict(state)
    rest = []
    while len(done) + len(rest) < len(seq):
        rest += [(b.epoch, *x) for x in epoch(b)]
        b.next_epoch()
    assert done + rest == seq


def test_proportions_follow_sizes_and_weights():
    sizes = [400, 100, 1000]
    s = SameSourceBatchSampler(sizes, 4, seed=1)
    counts = np.bincount([src for src, _ in s.plan(0)], minlength=3)
    assert counts.tolist() == [100, 25, 250]  # exact per epoch without weights
    # the order is mixed: the first quarter of the epoch already holds every source
    assert len({src for src, _ in s.plan(0)[: len(s) // 4]}) == 3
    w = SameSourceBatchSampler(sizes, 4, seed=1, weights=[1, 1, 2])
    draws = np.concatenate([[src for src, _ in w.plan(e)] for e in range(20)])
    freq = np.bincount(draws, minlength=3) / len(draws)
    assert np.allclose(freq, [0.25, 0.25, 0.5], atol=0.02)


def test_seed_changes_order_and_epochs_differ():
    a = SameSourceBatchSampler([50, 50], 5, seed=1)
    b = SameSourceBatchSampler([50, 50], 5, seed=2)
    key = lambda p: [(s, r.tolist()) for s, r in p]  # noqa: E731
    assert key(a.plan(0)) != key(b.plan(0))
    assert key(a.plan(0)) != key(a.plan(1))
    assert key(a.plan(3)) == key(SameSourceBatchSampler([50, 50], 5, seed=1).plan(3))


def test_bad_arguments():
    with pytest.raises(ValueError, match="fewer than the global batch size"):
        SameSourceBatchSampler([3, 10], 4)
    with pytest.raises(ValueError, match="not divisible"):
        SameSourceBatchSampler([10], 4, world_size=3)
