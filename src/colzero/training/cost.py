"""What a phase cost (``PhaseCost``, the trainer's ``cost.json``) and a run's total."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

COST_FILE = "cost.json"


@dataclass
class PhaseCost:
    """One phase's cost: written by the trainer (``OUTPUT/cost.json`` and every checkpoint), read
    by the run summary and the model card.

    Counters are global (every rank): ``examples`` and ``tokens`` trained on, optimizer ``steps``,
    ``wall_s`` of training steps (data waiting included, ``data_wait_s`` of it on rank 0),
    ``first_step_unix`` (when the first step ended: launch overhead for benchmarks). Memory:
    peak resident set size of each rank in MiB, and rank 0's peak CUDA allocation.

    Gradient clipping (phases with ``max_grad_norm``): ``grad_norm_steps`` optimizer steps whose
    pre-clip global gradient norm (what ``clip_grad_norm_`` returns, the same on every rank) was
    measured, its sum, min, max, first and last value, and ``clipped_steps``, the steps where it
    exceeded ``max_grad_norm`` (the update was scaled down). :attr:`clipped_fraction` and
    :attr:`grad_norm_mean` derive from them; with a loss scale the clip binds at a different rate
    (``LossConfig.loss_scale``).
    """

    phase: str
    steps: int = 0
    examples: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    data_wait_s: float = 0.0
    first_step_unix: float | None = None
    world_size: int = 1
    device: str = "cpu"
    precision: str = "fp32"
    peak_rss_mb: float = 0.0
    peak_rss_mb_per_rank: list[float] = field(default_factory=list)
    peak_cuda_mb: float | None = None
    max_grad_norm: float | None = None
    grad_norm_steps: int = 0
    clipped_steps: int = 0
    grad_norm_sum: float = 0.0
    grad_norm_min: float | None = None
    grad_norm_max: float | None = None
    grad_norm_first: float | None = None
    grad_norm_last: float | None = None

    def record_grad_norm(self, norm: float, max_norm: float) -> None:
        """Count one optimizer step's pre-clip gradient norm (non-finite norms are not counted)."""
        self.max_grad_norm = max_norm
        if not math.isfinite(norm):
            return
        self.grad_norm_steps += 1
        self.clipped_steps += int(norm > max_norm)
        self.grad_norm_sum += norm
        self.grad_norm_min = norm if self.grad_norm_min is None else min(self.grad_norm_min, norm)
        self.grad_norm_max = norm if self.grad_norm_max is None else max(self.grad_norm_max, norm)
        if self.grad_norm_first is None:
            self.grad_norm_first = norm
        self.grad_norm_last = norm

    @property
    def clipped_fraction(self) -> float | None:
        """Fraction of measured steps whose gradient was clipped (None when none was measured)."""
        return self.clipped_steps / self.grad_norm_steps if self.grad_norm_steps else None

    @property
    def grad_norm_mean(self) -> float | None:
        """Mean pre-clip gradient norm over the measured steps (None when none was measured)."""
        return self.grad_norm_sum / self.grad_norm_steps if self.grad_norm_steps else None

    @property
    def device_hours(self) -> float:
        """Accelerator-hours: ``wall_s * world_size / 3600`` on GPUs, 0 on the CPU."""
        return self.wall_s * self.world_size / 3600 if self.device.startswith("cuda") else 0.0

    @property
    def peak_memory_bytes(self) -> int:
        """The peak that bounds the run: CUDA memory on a GPU, else the largest RSS of a rank."""
        mb = self.peak_cuda_mb if self.peak_cuda_mb is not None else self.peak_rss_mb
        return int(mb * 2**20)

    def counters(self) -> dict[str, float]:
        """What every ``metrics.jsonl`` line carries: examples, tokens, wall_s, steps."""
        return {"examples": self.examples, "tokens": self.tokens, "wall_s": self.wall_s, "steps": self.steps}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the ``cost.json`` content), with the derived ``clipped_fraction``
        and ``grad_norm_mean`` (ignored by :meth:`from_dict`)."""
        return {
            **dataclasses.asdict(self),
            "clipped_fraction": self.clipped_fraction,
            "grad_norm_mean": self.grad_norm_mean,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], phase: str = "") -> PhaseCost:
        """The inverse of :meth:`to_dict`; ``phase`` names it where ``data`` does not (the
        checkpoints of older versions), and counters those did not keep start at their defaults."""
        known = {f.name for f in fields(cls)}
        return cls(**{"phase": phase, **{k: v for k, v in data.items() if k in known}})

    def write(self, folder: str | Path) -> Path:
        """Write ``folder/cost.json`` atomically."""
        path = Path(folder) / COST_FILE
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path

    @classmethod
    def read(cls, folder: str | Path) -> PhaseCost | None:
        """``folder/cost.json``, or None when the phase wrote none (not trained yet)."""
        path = Path(folder) / COST_FILE
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def summarize(phase_costs: list[tuple[str, PhaseCost | None]]) -> dict[str, Any]:
    """Per phase and in total: examples, tokens, wall_s, device_hours, peak_memory_bytes (the
    largest of any phase), plus each phase's full record (gradient norm and clipping included)."""
    total: dict[str, Any] = {"examples": 0, "tokens": 0, "wall_s": 0.0, "device_hours": 0.0}
    peak = 0
    phases: dict[str, dict[str, Any]] = {}
    for name, cost in phase_costs:
        if cost is None:
            phases[name] = {}
            continue
        phases[name] = {
            **cost.to_dict(),
            "device_hours": cost.device_hours,
            "peak_memory_bytes": cost.peak_memory_bytes,
        }
        total["examples"] += cost.examples
        total["tokens"] += cost.tokens
        total["wall_s"] += cost.wall_s
        total["device_hours"] += cost.device_hours
        peak = max(peak, cost.peak_memory_bytes)
    total["peak_memory_bytes"] = peak
    return {"phases": phases, "total": total}
