"""Same-source global batches, split across ranks, reproducible and resumable mid-epoch.

An epoch's plan depends only on (seed, epoch, source sizes, weights, batch size): each source's
rows are permuted and cut into full global batches; then

- without weights, the batches of all sources are interleaved in a random order, so sources are
  drawn in proportion to their number of batches (their size) and every row is used once;
- with weights, each of the epoch's ``sum(n_batches)`` slots draws a source with probability
  proportional to its weight; a source that runs out is re-permuted (cycled).

Rank ``r`` of ``W`` takes rows ``[r*B/W, (r+1)*B/W)`` of every global batch. The sampler's state is
``(epoch, step)`` (``step`` = global batches already consumed in the epoch), which is enough to
replay the identical sequence after a restart.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class PlannedBatch:
    source: int
    rows: np.ndarray  # this rank's slice of the global batch (row indices into the source)


class SameSourceBatchSampler:
    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        *,
        weights: Sequence[float] | None = None,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by world size {world_size}")
        if not sizes:
            raise ValueError("no sources")
        for i, n in enumerate(sizes):
            if n < batch_size:
                raise ValueError(f"source {i} has {n} rows, fewer than the global batch size {batch_size}")
        if weights is not None and (len(weights) != len(sizes) or any(w is None or w <= 0 for w in weights)):
            raise ValueError(f"weights must be positive, one per source; got {weights}")
        self.sizes = [int(n) for n in sizes]
        self.batch_size = batch_size
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        # same-source batches cannot be completed from another source; partial batches are only
        # kept single-process with drop_last=False
        self.keep_partial = not drop_last and world_size == 1
        self.epoch = 0
        self.step = 0

    # ------------------------------------------------------------------ plan
    def _batches_of(self, n: int) -> int:
        full = n // self.batch_size
        return full + (1 if self.keep_partial and n % self.batch_size and self.weights is None else 0)

    def __len__(self) -> int:
        """Global batches per epoch."""
        return sum(self._batches_of(n) for n in self.sizes)

    def plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """The epoch's global batches: (source, global row indices)."""
        rng = np.random.default_rng([self.seed, epoch])
        B = self.batch_size
        if self.weights is None:
            chunks: list[list[np.ndarray]] = []
            for n in self.sizes:
                perm = rng.permutation(n)
                chunks.append([perm[i : i + B] for i in range(0, self._batches_of(n) * B, B)])
                if len(chunks[-1]) and len(chunks[-1][-1]) == 0:
                    chunks[-1].pop()
            order = np.concatenate([np.full(len(c), s, dtype=np.int64) for s, c in enumerate(chunks)])
            rng.shuffle(order)
            taken = [0] * len(self.sizes)
            out = []
            for s in order:
                out.append((int(s), chunks[s][taken[s]]))
                taken[s] += 1
            return out
        p = self.weights / self.weights.sum()
        draws = rng.choice(len(self.sizes), size=len(self), p=p)
        perms = [rng.permutation(n) for n in self.sizes]
        pos = [0] * len(self.sizes)
        out = []
        for s in draws:
            s = int(s)
            if pos[s] + B > self.sizes[s]:
                perms[s] = rng.permutation(self.sizes[s])
                pos[s] = 0
            out.append((s, perms[s][pos[s] : pos[s] + B]))
            pos[s] += B
        return out

    def global_batch(self, epoch: int, step: int) -> tuple[int, np.ndarray]:
        """(source, global rows) of global batch ``step`` of ``epoch``."""
        return self.plan(epoch)[step]

    def local_slice(self, rows: np.ndarray) -> np.ndarray:
        if len(rows) < self.batch_size:  # a kept partial batch (single process only)
            return rows
        per = self.batch_size // self.world_size
        return rows[self.rank * per : (self.rank + 1) * per]

    # ------------------------------------------------------------------ iteration / state
    def iter_epoch(self) -> Iterator[PlannedBatch]:
        """Batches of the current epoch from the current step; advances ``step`` as it yields."""
        plan = self.plan(self.epoch)
        while self.step < len(plan):
            source, rows = plan[self.step]
            self.step += 1
            yield PlannedBatch(source, self.local_slice(rows))

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.step = int(state["step"])
