"""Who this process is in a multi-process run, and the few collectives the run needs.

Launchers: ``torchrun`` (one or several nodes: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` are set by it) is the supported way. Under SLURM without torchrun
(``srun python -m colzero.cli.main ...``), ``SLURM_PROCID`` / ``SLURM_NTASKS`` / ``SLURM_LOCALID`` are
mapped to ranks when ``MASTER_ADDR`` and ``MASTER_PORT`` are exported; without them the run is
refused, never trained as N independent "rank 0"s writing one folder.

The process group uses NCCL on CUDA and gloo otherwise, with a long timeout (``COLZERO_DIST_TIMEOUT_S``,
default 4 h): the other ranks wait at a barrier while rank 0 evaluates or prepares data.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


class LaunchError(RuntimeError):
    """The process cannot tell which rank it is (or would train as a duplicate rank 0)."""


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world``, ``local`` rank on its node, device."""

    rank: int = 0
    world: int = 1
    local: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.active:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_ok(self, ok: bool) -> bool:
        """True only if ``ok`` holds on every rank (a rank's failure stops them all)."""
        if not self.active:
            return ok
        flag = torch.tensor([0 if ok else 1], dtype=torch.int32, device=self.device)
        dist.all_reduce(flag)
        return int(flag.item()) == 0

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value``, in rank order (on every rank)."""
        if not self.active:
            return [value]
        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def on_main(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on rank 0 while the other ranks wait; its result on rank 0 (None
        elsewhere). An error on rank 0 stops every rank instead of leaving them waiting."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                error = exc
        failed = self.broadcast(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        if failed is not None:
            raise RuntimeError(f"rank 0 failed, so rank {self.rank} stops too: {failed}")
        return result

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.active:
            dist.all_reduce(tensor)
        return tensor


def _slurm_env(env: dict[str, str]) -> dict[str, str]:
    """RANK/WORLD_SIZE/LOCAL_RANK from SLURM's variables, or a LaunchError that says what to do."""
    ntasks = int(env.get("SLURM_NTASKS", "1"))
    if ntasks <= 1 or "RANK" in env:
        return {}
    if not (env.get("MASTER_ADDR") and env.get("MASTER_PORT")):
        raise LaunchError(
            f"SLURM started {ntasks} tasks but no torchrun: each would train as rank 0 of 1 and write the "
            "same folder. Launch with `srun torchrun --nnodes $SLURM_NNODES --nproc-per-node <gpus> "
            "--rdzv-backend c10d --rdzv-endpoint $HEAD:29500 -m colzero.cli.main train ...`, or export "
            "MASTER_ADDR (the first node) and MASTER_PORT so colzero maps SLURM_PROCID/SLURM_NTASKS to ranks."
        )
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": str(ntasks),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
    }


def from_environment(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world, local rank) from torchrun's variables (or SLURM's, see the module doc)."""
    env = dict(os.environ if env is None else env)
    mapped = _slurm_env(env)
    env.update(mapped)
    world = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local = int(env.get("LOCAL_RANK", str(rank if world > 1 else 0)))
    if not 0 <= rank < world:
        raise LaunchError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    if mapped:
        os.environ.update(mapped)
    return rank, world, local


def setup() -> Dist:
    """Join the process group (once per process) and pick this rank's device."""
    rank, world, local = from_environment()
    if torch.cuda.is_available():
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        seconds = float(os.environ.get("COLZERO_DIST_TIMEOUT_S", 4 * 3600))
        dist.init_process_group(
            backend="nccl" if device.type == "cuda" else "gloo",
            timeout=datetime.timedelta(seconds=seconds),
            **({"device_id": device} if device.type == "cuda" else {}),
        )
    if world > 1 and dist.get_world_size() != world:
        raise LaunchError(f"WORLD_SIZE={world} but the process group has {dist.get_world_size()} ranks")
    return Dist(rank, world, local, device)
