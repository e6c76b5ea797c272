"""Atomic training checkpoints: model folder + optimizer/scheduler/loss/sampler/RNG state."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colzero.model.folder import atomic_directory

STATE_FILE = "training_state.pt"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, model, state: dict[str, Any]) -> Path:
    """Write ``path/model`` (via ``model.save``) and ``path/training_state.pt`` atomically."""
    with atomic_directory(path) as tmp:
        model.save(tmp / "model")
        torch.save(state, tmp / STATE_FILE)
    return path


def load_state(path: Path) -> dict[str, Any] | None:
    file = path / STATE_FILE
    if not file.exists():
        return None
    return torch.load(file, map_location="cpu", weights_only=False)
