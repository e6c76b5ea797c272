"""Training checkpoints that survive failures: step-numbered folders, the last N kept.

Layout: ``OUT/checkpoints/step-00000500/{model/, training_state.pt}``. A checkpoint is written
into a hidden temporary folder and renamed into place in one step, so a folder named ``step-N``
is always complete; older ones are deleted only after the new one exists, so there is never a
moment with none; an old one is first renamed to a hidden name, then deleted, so a kill while
deleting never leaves a half-deleted folder under a ``step-N`` name. A kill at any point leaves at
most hidden folders (ignored, then removed by the next save) and the previous checkpoints
untouched; resuming picks the highest complete step. A step that already has a complete
checkpoint is not written again (a resumed run that saves the step it resumed from has trained
nothing since): replacing it would leave a moment without it.
"""

from __future__ import annotations

import logging
import os
import random
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from colzero.model.folder import atomic_directory

CHECKPOINTS = "checkpoints"
STATE_FILE = "training_state.pt"
_STEP = re.compile(r"^step-(\d+)$")

logger = logging.getLogger(__name__)


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


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / CHECKPOINTS / f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """``(step, folder)`` of every complete checkpoint under ``root``, oldest first."""
    folder = Path(root) / CHECKPOINTS
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _STEP.match(p.name)
        if m and _is_complete(p):
            out.append((int(m.group(1)), p))
    return sorted(out)


def _is_complete(folder: Path) -> bool:
    return (folder / STATE_FILE).is_file() and (folder / "model" / "modules.json").is_file()


def latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def save_checkpoint(root: Path, step: int, model: Any, state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` (``model.save`` + ``training_state.pt``) atomically, then keep the
    newest ``keep`` complete checkpoints and remove leftovers of interrupted writes."""
    target = step_dir(root, step)
    if _is_complete(target):
        logger.info("checkpoint %s is complete already (nothing trained since): kept as it is", target)
    else:
        with atomic_directory(target) as tmp:
            model.save(tmp / "model")
            torch.save(state, tmp / STATE_FILE)
            fsync_tree(tmp)  # on disk before the rename makes it visible (other nodes, power loss)
    for _, old in complete_checkpoints(root)[: -max(1, keep)]:
        _remove(old)
    for leftover in (Path(root) / CHECKPOINTS).glob(".step-*"):  # killed writes and deletions
        shutil.rmtree(leftover, ignore_errors=True)
    return target


def _remove(folder: Path) -> None:
    """Hide ``folder`` (one rename), then delete it; best effort: the newer checkpoints are complete."""
    hidden = folder.with_name(f".{folder.name}.del-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, hidden)
    except OSError as exc:
        logger.warning("could not remove old checkpoint %s (%s); the next save tries again", folder, exc)
        return
    shutil.rmtree(hidden, ignore_errors=True)


def load_state(folder: Path) -> dict[str, Any]:
    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=False)


def fsync_tree(folder: Path) -> None:
    """Flush a written folder to disk (shared file systems: other nodes read it next)."""
    for p in Path(folder).rglob("*"):
        if p.is_file():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
