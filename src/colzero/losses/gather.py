"""All-gather of document embeddings across ranks, with gradients.

Used by the contrastive losses (ColBERT-Zero, arXiv:2602.16609, gathers documents across GPUs): only documents are gathered, queries stay local, so
each rank scores its ``B_r`` queries against the documents of every rank. Shapes may differ
between ranks (each rank pads to its own longest document): vectors are padded with zeros and
masks with False up to the cross-rank maximum length (not the model maximum) before the
collective, and the batch dimension is padded to the cross-rank maximum then cut back.

Gradients: the backward of the gather sums, over ranks, the gradient every rank computed for
this rank's rows (an all-reduce of the stacked gradients), so rank r's documents receive
``sum_r' d loss_r' / d docs_r``. With each rank's loss the mean over its local queries and DDP
averaging parameter gradients over ranks, the result is exactly the gradient of the mean loss
over the global batch: no extra world-size factor (verified by ``tests/test_distributed.py``;
PyLate multiplies by world size on top of the same summing gather, which scales its gradients
by the world size — harmless under Adam, not under gradient clipping).

Everything here is a no-op when torch.distributed is not initialised or the world size is 1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F


def world() -> tuple[int, int]:
    """(rank, world_size); (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGatherWithGrad(torch.autograd.Function):
    """Forward: all_gather of equal-shaped tensors. Backward: all-reduce (sum), own slice."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> tuple[torch.Tensor, ...]:
        rank, size = world()
        ctx.rank = rank
        out = [torch.empty_like(tensor) for _ in range(size)]
        dist.all_gather(out, tensor.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        stacked = torch.stack([g.contiguous() for g in grads])
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        return stacked[ctx.rank]


def _all_gather_shapes(shape: tuple[int, ...], device: torch.device) -> list[tuple[int, ...]]:
    local = torch.tensor(shape, dtype=torch.long, device=device)
    out = [torch.empty_like(local) for _ in range(world()[1])]
    dist.all_gather(out, local)
    return [tuple(int(v) for v in t.tolist()) for t in out]


def gather_documents(
    vectors: torch.Tensor, mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Gather every rank's documents: ``(vectors_all, mask_all, offset)``.

    ``vectors`` is ``(B_r, L_r, dim)`` (with bool ``mask`` ``(B_r, L_r)``) or ``(B_r, dim)``
    (``mask`` None). ``offset`` is the row of this rank's first document in the result
    (``rank * B`` when every rank has B rows). Gradients flow back to ``vectors``.
    """
    rank, size = world()
    if size == 1:
        return vectors, mask, 0
    shapes = _all_gather_shapes(tuple(vectors.shape), vectors.device)
    rows = [s[0] for s in shapes]
    max_rows = max(rows)
    if vectors.dim() == 3:
        max_len = max(s[1] for s in shapes)
        pad_len = max_len - vectors.shape[1]
        vectors = F.pad(vectors, (0, 0, 0, pad_len, 0, max_rows - vectors.shape[0]))
        assert mask is not None
        mask = F.pad(mask.to(torch.uint8), (0, pad_len, 0, max_rows - mask.shape[0]))
    else:
        vectors = F.pad(vectors, (0, 0, 0, max_rows - vectors.shape[0]))
    parts = _AllGatherWithGrad.apply(vectors)
    all_vectors = torch.cat([p[:n] for p, n in zip(parts, rows, strict=True)])
    all_mask = None
    if mask is not None:
        masks = [torch.empty_like(mask) for _ in range(size)]
        dist.all_gather(masks, mask.contiguous())
        all_mask = torch.cat([m[:n] for m, n in zip(masks, rows, strict=True)]).bool()
    return all_vectors, all_mask, sum(rows[:rank])


def all_reduce_mean_(tensor: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (no-op outside distributed runs)."""
    size = world()[1]
    if size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.div_(size)
    return tensor
