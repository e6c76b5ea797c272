"""PyLate side of the gradient-scale check: PyLate's contrastive losses on given embeddings.

Run with a python that has PyLate 1.6 (``../shared/tools/pylate-env.sh``); does not import colzero.

    pylate_loss_grads.py --input emb.npz --output grads.npz [--world 1|2] [--temperature T]

``emb.npz`` holds token vectors ``q`` (B, Lq, H), ``p`` and ``n`` (B, Ld, H) and bool masks
``p_mask`` / ``n_mask`` (B, Ld) (queries score every position, as with query expansion). A stand-in
model returns those vectors as trainable parameters (PyLate L2-normalises model outputs itself),
so the gradients are those of PyLate's own loss code with ``gather_across_devices=True``:
``losses.Contrastive`` and ``losses.CachedContrastive`` (``mini_batch_size=2``). With ``--world 2``
two gloo processes each take half of the rows, as the released training does under DDP, and the
gradients are averaged over the ranks (what DistributedDataParallel does). Writes
``<loss>/<role>`` gradient arrays (float32, shape of the inputs) and ``<loss>/loss`` (rank 0's).
"""

from __future__ import annotations

import argparse
import os
import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

ROLES = ("q", "p", "n")


class Vectors(nn.Module):
    """A "model" whose output for row i of role r is the parameter ``table[r][i]``.

    ``input_ids[:, 0]`` carries the role (0, 1, 2) and ``input_ids[:, 1]`` the row; PyLate reads
    ``skiplist`` (empty: every attended position scores) and ``do_query_expansion``.
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.table = nn.ParameterList([nn.Parameter(torch.from_numpy(arrays[r]).clone()) for r in ROLES])
        self.skiplist: list[int] = []
        self.do_query_expansion = True

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        role = int(features["input_ids"][0, 0])
        rows = features["input_ids"][:, 1]
        return {"token_embeddings": self.table[role][rows]}


def features(arrays: dict[str, np.ndarray], role: int, rows: list[int]) -> dict[str, torch.Tensor]:
    name = ROLES[role]
    width = arrays[name].shape[1]
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    ids[:, 0] = role
    ids[:, 1] = torch.tensor(rows)
    ids[:, 2:] = 10_000  # never a skiplist id
    mask = torch.ones(len(rows), width, dtype=torch.long)
    if name != "q":
        mask = torch.from_numpy(arrays[f"{name}_mask"][rows]).long()
    return {"input_ids": ids, "attention_mask": mask}


def run(arrays: dict[str, np.ndarray], rank: int, world: int, temperature: float) -> dict[str, np.ndarray]:
    from pylate import losses

    b = arrays["q"].shape[0]
    rows = list(range(rank * b // world, (rank + 1) * b // world))
    out: dict[str, np.ndarray] = {}
    for name in ("contrastive", "cached"):
        model = Vectors(arrays)
        if name == "cached":
            fn = losses.CachedContrastive(
                model, mini_batch_size=2, gather_across_devices=True, temperature=temperature
            )
        else:
            fn = losses.Contrastive(model, gather_across_devices=True, temperature=temperature)
        loss = fn([features(arrays, role, rows) for role in range(3)])
        loss.backward()
        for role, param in zip(ROLES, model.table, strict=True):
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            if world > 1:  # DistributedDataParallel's average over ranks
                dist.all_reduce(grad)
                grad = grad / world
            out[f"{name}/{role}"] = grad.detach().numpy().astype(np.float32)
        out[f"{name}/loss"] = np.asarray(float(loss.detach()), dtype=np.float64)
    return out


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        arrays = dict(np.load(args.input))
        out = run(arrays, rank, world, args.temperature)
        if rank == 0:
            np.savez(args.output, **out)
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--world", type=int, default=1, choices=[1, 2])
    parser.add_argument("--temperature", type=float, default=0.05)
    args = parser.parse_args()
    if args.world == 1:
        torch.set_num_threads(1)
        np.savez(args.output, **run(dict(np.load(args.input)), 0, 1, args.temperature))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(args.world, port, args), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
