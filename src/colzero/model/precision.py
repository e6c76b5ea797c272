"""Choosing the compute precision: bf16 autocast only where the hardware runs it fast."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX tiles or AVX512-BF16; elsewhere bf16 GEMMs are emulated (slow).

    Measured on an AVX2-only AMD EPYC (torch 2.13 CPU): bf16 matmul 0.34 GFLOP/s vs 108 fp32.
    """
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``"auto"``: bf16 on CUDA, fp32 elsewhere.

    On CPU, "auto" stays fp32 even where bf16 is fast (AMX): the vectors then do not depend on
    which CPU computed them and equal PyLate's and sentence-transformers' (which compute in fp32).
    Ask for ``"bf16"`` to use AMX (``cpu_has_fast_bf16()`` tells whether it is fast here).
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "fp32"


def autocast(device: torch.device, precision: Literal["fp32", "bf16"]) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device`` for ``"bf16"``, nothing for ``"fp32"``."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
