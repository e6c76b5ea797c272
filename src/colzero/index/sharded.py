"""Build an index with the encoding spread over several processes or GPUs (``torchrun``).

Under ``torchrun`` (``WORLD_SIZE > 1``) every rank encodes one contiguous shard of the
documents on its own device (``cuda:LOCAL_RANK`` when CUDA is available, else the CPU) and
streams the vectors, chunk by chunk, into shard files in a temporary folder next to the index
(``.<name>.shards.tmp-<pid>/rank-NNNNN.{vectors,head,doclens}.npy``, each renamed into place once
complete): ``vectors`` holds ``(n_tokens, dim)`` float16 by default, ``head`` the documents of
the first ``kmeans_documents`` documents in float32 (``Index.build`` trains the codec on them). After a barrier,
rank 0 builds the index with :meth:`Index.build`, feeding it the memory-mapped shard files in
document order as precomputed ``embeddings``: codec training, compression and segment writing
are the single-process code. The result is the index a one-process build on the same kind of
device writes: same documents, doclens and codec, and codes and residuals that differ only
where float16 rounding moves a token across a quantisation boundary (``shard_dtype="float32"``:
bit-identical when the encoder is deterministic). Rank 0 then removes the temporary folder; the
other ranks wait for it and return ``None``.

Memory per rank is one chunk of vectors: a JSONL corpus is read line by line and lines outside
the rank's shard are not parsed. Disk: the shard files hold ``2 * dim`` bytes per token
(float16) until rank 0 has built the index. The output is written atomically as in
``Index.build``: a build killed at any point leaves the previous index as it was (the
``.<name>.shards.tmp-<pid>`` folder a killed run leaves is removed by the next sharded build of the
same output once that process is gone). Several nodes need the
output's parent folder on a shared filesystem.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from colzero.data.readers import remove_stale_temps, temp_name
from colzero.index.build import KMEANS_DOCUMENTS, encode_documents
from colzero.index.documents import batches, count_documents, read_documents
from colzero.index.plaid import Index
from colzero.index.storage import raw_to_npy

logger = logging.getLogger(__name__)

#: how long ranks wait for each other (rank 0 compresses the whole corpus while the others wait)
DEFAULT_TIMEOUT = datetime.timedelta(hours=24)


def distributed_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the process group, else torchrun's environment."""
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local


def build_sharded(
    model,
    documents: Any,
    output: str | os.PathLike[str],
    *,
    chunk_size: int = 4096,
    batch_size: int = 32,
    shard_dtype: str = "float16",
    device: str | torch.device | None = None,
    timeout: datetime.timedelta = DEFAULT_TIMEOUT,
    **build_kwargs: Any,
) -> Index | None:
    """:meth:`Index.build`, with each ``torchrun`` rank encoding a contiguous shard.

    ``documents``: a JSONL path or a sequence (``len`` and slicing) of (id, text) pairs or
    dicts, the same on every rank. ``build_kwargs`` go to :meth:`Index.build` (``nbits``,
    ``n_centroids``, ``store_texts``, ``settings``, ``model_name``, ...). Without a process
    group and with ``WORLD_SIZE`` unset or 1 this is :meth:`Index.build`. The process group is
    initialised (nccl on CUDA, else gloo) if it is not yet, and destroyed at the end if it was
    initialised here. Returns the :class:`Index` on rank 0 and ``None`` on the other ranks.
    """
    if "embeddings" in build_kwargs:
        raise ValueError("build_sharded encodes the documents; pass precomputed embeddings to Index.build")
    if shard_dtype not in ("float16", "float32"):
        raise ValueError(f"shard_dtype must be 'float16' or 'float32', got {shard_dtype!r}")
    rank, world, local = distributed_world()
    if world <= 1:
        return Index.build(
            model, documents, output, chunk_size=chunk_size, batch_size=batch_size, **build_kwargs
        )
    n_docs = count_documents(documents)
    if device is None:
        cuda = torch.cuda.is_available()  # more ranks than GPUs share them (collectives run on gloo)
        device = torch.device("cuda", local % torch.cuda.device_count()) if cuda else torch.device("cpu")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = not dist.is_initialized()
    if created:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)
    # all coordination on a CPU (gloo) group with a long timeout: rank 0's build may take hours
    group = dist.new_group(backend="gloo", timeout=timeout)
    try:
        shard = (rank, world, n_docs, device, np.dtype(shard_dtype))
        return _run(model, documents, Path(output), shard, group, chunk_size, batch_size, build_kwargs)
    finally:
        dist.destroy_process_group(group)
        if created:
            dist.destroy_process_group()


def _run(model, documents, output: Path, shard, group, chunk_size, batch_size, kwargs) -> Index | None:
    rank, world, n_docs, device, dtype = shard
    name = [None]
    if rank == 0:
        output.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(output.parent, f"{output.name}.shards")  # a killed run's shard files
        folder = output.parent / temp_name(f"{output.name}.shards")
        folder.mkdir()
        name = [folder.name]
    dist.broadcast_object_list(name, src=0, group=group)
    folder = output.parent / name[0]
    try:
        # phase 1: every rank encodes its shard
        start, end = rank * n_docs // world, (rank + 1) * n_docs // world
        # Index.build trains the codec on its first kmeans_documents: those are kept in float32
        n_sample = kwargs.get("kmeans_documents", KMEANS_DOCUMENTS)
        n_head = min(n_sample, n_docs) if dtype != np.float32 else 0
        error: BaseException | None = None
        try:
            stem = folder / f"rank-{rank:05d}"
            _encode_shard(model, documents, start, end, n_head, stem, device, chunk_size, batch_size, dtype)
        except Exception as exc:  # reported to every rank below, re-raised here
            error = exc
        if not _all_ok(error is None, group):
            raise error or RuntimeError(f"sharded index build: encoding failed on another rank than {rank}")
        # phase 2: rank 0 builds the index from the shard files; the others wait for it
        index, error = None, None
        if rank == 0:
            try:
                embeddings = ShardEmbeddings(folder, world, n_docs, n_head)
                index = Index.build(
                    model, documents, output, embeddings=embeddings, chunk_size=chunk_size, **kwargs
                )
            except Exception as exc:
                error = exc
            shutil.rmtree(folder, ignore_errors=True)
        if not _all_ok(error is None, group):
            raise error or RuntimeError(f"sharded index build: rank 0 failed to build {output} (see its log)")
        return index
    finally:
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)


def _all_ok(ok: bool, group) -> bool:
    failed = torch.tensor([0 if ok else 1], dtype=torch.int64)
    dist.all_reduce(failed, group=group)
    return int(failed.item()) == 0


# ---------------------------------------------------------------------------- documents
def shard_documents(documents: Any, start: int, end: int) -> Iterator[tuple[str, str]]:
    """(id, text) of documents ``start:end`` (0-based, blank JSONL lines not counted); only
    those are parsed."""
    for doc in read_documents(documents, start, end):
        yield doc.id, doc.text


def _encode_shard(
    model, documents, start: int, end: int, head_end: int, stem: Path, device, chunk_size, batch_size, dtype
) -> None:
    """Stream the vectors of documents ``start:end`` into ``stem.vectors.npy`` (``dtype``), those
    of the documents before ``head_end`` (the codec's training chunk) into ``stem.head.npy``
    (float32), and the token counts into ``stem.doclens.npy``."""
    original = next(model.parameters()).device
    model.to(device)
    head = _RawWriter(stem.with_name(stem.name + ".head.npy"), np.dtype(np.float32))
    tail = _RawWriter(stem.with_name(stem.name + ".vectors.npy"), dtype)
    lens: list[np.ndarray] = []
    done = 0
    try:
        for chunk in batches(read_documents(documents, start, end), chunk_size):
            vecs = encode_documents(model, [d.text for d in chunk], batch_size)
            lens.append(np.array([len(v) for v in vecs], dtype=np.int32))
            k = min(len(vecs), max(0, head_end - start - done))
            head.write(vecs[:k])
            tail.write(vecs[k:])
            done += len(vecs)
            logger.info("%s: %d/%d documents encoded", stem.name, done, end - start)
        if done != end - start:
            raise ValueError(f"expected {end - start} documents in this shard, read {done} (corpus changed?)")
        head.close()
        tail.close()
    finally:
        model.to(original)
        head.discard()
        tail.discard()
    part = stem.with_name(stem.name + ".doclens.npy.part")
    with open(part, "wb") as f:
        np.save(f, np.concatenate(lens) if lens else np.zeros(0, np.int32))
    os.replace(part, stem.with_name(stem.name + ".doclens.npy"))


class _RawWriter:
    """Appends token matrices to a raw file; ``close`` turns it into ``path`` (.npy) atomically."""

    def __init__(self, path: Path, dtype: np.dtype) -> None:
        self.path, self.dtype = path, dtype
        self.raw = path.with_name(path.name + ".raw")
        self.file = open(self.raw, "wb")  # noqa: SIM115 (closed in close() / discard())
        self.rows, self.dim = 0, 0

    def write(self, vecs: list[np.ndarray]) -> None:
        if vecs:
            flat = np.concatenate(vecs).astype(self.dtype)
            self.file.write(flat.tobytes())
            self.rows, self.dim = self.rows + len(flat), flat.shape[1]

    def close(self) -> None:
        self.file.close()
        part = self.path.with_name(self.path.name + ".part")
        raw_to_npy(self.raw, part, self.dtype, (self.rows, self.dim))
        os.replace(part, self.path)

    def discard(self) -> None:
        self.file.close()
        self.raw.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- reading shards
class ShardEmbeddings:
    """The shard files of a sharded build as one sequence of per-document (n_tokens, dim)
    matrices in document order (memory-mapped; a slice reads only its documents). The first
    ``n_head`` documents come from the float32 ``head`` files."""

    def __init__(
        self, folder: str | os.PathLike[str], world: int, n_docs: int | None = None, n_head: int = 0
    ) -> None:
        folder = Path(folder)
        self.parts: list[np.ndarray] = []
        lens, part_of, starts = [], [], []
        first = 0  # the shard's first document
        for r in range(world):
            stem = folder / f"rank-{r:05d}"
            dl = np.load(stem.with_name(stem.name + ".doclens.npy")).astype(np.int64)
            k = min(len(dl), max(0, n_head - first))
            for name, sub in (("head", dl[:k]), ("vectors", dl[k:])):
                vecs = np.load(stem.with_name(f"{stem.name}.{name}.npy"), mmap_mode="r")
                if int(sub.sum()) != len(vecs):
                    raise ValueError(f"{stem}.{name}.npy: {len(vecs)} rows, the doclens say {int(sub.sum())}")
                part_of.append(np.full(len(sub), len(self.parts)))
                starts.append(np.cumsum(sub) - sub)
                self.parts.append(vecs)
            lens.append(dl)
            first += len(dl)
        self.doclens = np.concatenate(lens)
        if n_docs is not None and len(self.doclens) != n_docs:
            raise ValueError(f"{folder}: the shards hold {len(self.doclens)} documents, expected {n_docs}")
        self.part_of = np.concatenate(part_of)
        self.starts = np.concatenate(starts)  # token offset within the part's file

    def __len__(self) -> int:
        return len(self.doclens)

    def __getitem__(self, key):
        if isinstance(key, slice):
            return [self[i] for i in range(*key.indices(len(self)))]
        i = int(key)
        a = int(self.starts[i])
        return self.parts[int(self.part_of[i])][a : a + int(self.doclens[i])]
