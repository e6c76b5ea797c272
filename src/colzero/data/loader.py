"""The input pipeline: a ``torch.utils.data.DataLoader`` whose worker processes read, check, tokenise
and collate whole batches while the training loop computes.

The order belongs to the sampler, not to the workers: :class:`PlannedBatches` walks the
same-source plan from a :class:`Position` (epoch, global batch) and hands each worker a complete
request (source, this rank's rows); the DataLoader returns results in request order, so a run
resumed at a position replays the identical rows whatever the number of workers or prefetching.
The trainer records the position of the next batch it has *not yet consumed*, never what the
workers have prefetched.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from colzero.data.collate import Collator
from colzero.data.sources import TrainingSource


@dataclass(frozen=True, order=True)
class Position:
    """The next global batch: ``step`` of ``epoch`` (world-size independent)."""

    epoch: int = 0
    step: int = 0

    def after(self, batches_per_epoch: int) -> Position:
        step = self.step + 1
        return Position(self.epoch + 1, 0) if step >= batches_per_epoch else Position(self.epoch, step)

    def to_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "step": self.step}

    @classmethod
    def from_dict(cls, state: dict[str, int]) -> Position:
        return cls(int(state["epoch"]), int(state["step"]))


@dataclass(frozen=True)
class BatchRequest:
    position: Position
    source: int
    rows: np.ndarray  # this rank's rows of the global batch (row indices into the source)


class PlannedBatches(Sampler[BatchRequest]):
    """This rank's requests from ``start`` on (``count`` of them, or forever), across epochs."""

    def __init__(self, sampler: Any, start: Position = Position(), count: int | None = None) -> None:
        self.sampler = sampler
        self.start = start
        self.count = count

    def __iter__(self) -> Iterator[BatchRequest]:
        if self.count == 0:
            return
        plan = self.sampler.iter_from(self.start.epoch, self.start.step)
        for n, (epoch, step, planned) in enumerate(plan, 1):
            yield BatchRequest(Position(epoch, step), int(planned.source), np.asarray(planned.rows))
            if self.count is not None and n >= self.count:
                return

    def __len__(self) -> int:
        if self.count is None:
            raise TypeError("an endless plan has no length")
        return self.count


class BatchReader(Dataset):
    """``reader[request] -> (position, batch)``: read and check the rows, tokenise, collate."""

    def __init__(self, sources: Sequence[TrainingSource], collate: Collator) -> None:
        self.sources = list(sources)
        self.collate = collate

    def __getitem__(self, request: BatchRequest) -> tuple[Position, Any]:
        examples = self.sources[request.source].examples(request.rows)
        batch = self.collate(examples)
        if torch.utils.data.get_worker_info() is not None:  # sent to the training process
            batch = one_storage_per_dtype(batch)
        return request.position, batch

    def __len__(self) -> int:  # map-style datasets need one; requests come from the sampler
        return 0


def one_storage_per_dtype(batch: Any) -> Any:
    """``batch`` (a dataclass of tensors and dataclasses of tensors) with every tensor a view of one
    contiguous storage per dtype: equal values, shapes and dtypes.

    A DataLoader worker sends each tensor storage through its own shared-memory segment and file
    descriptor, work for the worker and the training process alike; a training batch has 6 to 9
    tensors (ids, attention mask, token types per role), a packed one a single int64 storage.
    """
    tensors: dict[int, torch.Tensor] = {}

    def collect(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensors[id(value)] = value
        elif dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                collect(getattr(value, f.name))

    collect(batch)
    views: dict[int, torch.Tensor] = {}
    for dtype in {t.dtype for t in tensors.values()}:
        group = [(key, t) for key, t in tensors.items() if t.dtype == dtype]
        flat = torch.cat([t.reshape(-1) for _, t in group])
        offset = 0
        for key, t in group:
            views[key] = flat[offset : offset + t.numel()].view(t.shape)
            offset += t.numel()

    def rebuild(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return views[id(value)]
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return dataclasses.replace(
                value,
                **{f.name: rebuild(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init},
            )
        return value

    return rebuild(batch)


def _as_is(item: Any) -> Any:
    return item


def input_pipeline(
    sources: Sequence[TrainingSource],
    sampler: Any,
    collate: Collator,
    start: Position = Position(),
    *,
    count: int | None = None,
    num_workers: int = 2,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader yielding ``(position, batch)`` for this rank from ``start`` (see module doc)."""
    kwargs: dict[str, Any] = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False)
        # fork where there is one, also in processes that were themselves spawned (torch's mp.spawn
        # makes "spawn" their default): workers start at once and share the memory-mapped tables
        if "fork" in multiprocessing.get_all_start_methods():
            kwargs["multiprocessing_context"] = "fork"
    return DataLoader(
        BatchReader(sources, collate),
        sampler=PlannedBatches(sampler, start, count),
        batch_size=None,
        collate_fn=_as_is,
        num_workers=num_workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
        # its own generator: creating the iterator must not draw from the global RNG (dropout)
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    )
