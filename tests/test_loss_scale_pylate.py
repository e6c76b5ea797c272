"""Opt-in: ``loss_scale="pylate"`` gives PyLate 1.6's gradients on the same embeddings.

PyLate's ``losses.Contrastive`` and ``losses.CachedContrastive`` (``gather_across_devices=True``,
as the released ColBERT-Zero scripts use them) run in their own environment
(``scripts/pylate_loss_grads.py``) on token vectors given as parameters; colzero's losses run here
on the same vectors. Both at one rank and at two gloo ranks (gradients averaged over ranks, as
DDP does). ``"mean"`` is checked to differ by exactly the documented factor.

Run with ``PYLATE_PYTHON=/path/to/pylate-venv/bin/python pytest -m pylate tests/test_loss_scale_pylate.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from colzero.data.batch import ContrastiveBatch
from colzero.losses import CachedContrastive, Contrastive
from colzero.model.base import TokenizedBatch
from tests.conftest import REPO
from tests.test_interop_pylate import pylate_python

pytestmark = pytest.mark.pylate

B, LQ, LD, H, TAU = 6, 5, 7, 8, 0.05
ROLES = ("q", "p", "n")


def embeddings() -> dict[str, np.ndarray]:
    """Positive components, so every token similarity is > 0: PyLate multiplies similarities by
    the document mask (a padded position scores 0) where colzero leaves it out of the max, which
    differ only when all of a token's similarities are negative (not what is tested here)."""
    g = np.random.default_rng(3)
    out = {r: np.abs(g.standard_normal((B, LQ if r == "q" else LD, H))).astype(np.float32) for r in ROLES}
    for r in ("p", "n"):
        lengths = g.integers(1, LD + 1, size=B)
        out[f"{r}_mask"] = np.arange(LD)[None, :] < lengths[:, None]
    return out


class Vectors(nn.Module):
    """colzero's stand-in model: row i of role r is ``normalize(table[r][i])`` (as PyLate's)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.table = nn.ParameterList([nn.Parameter(torch.from_numpy(arrays[r]).clone()) for r in ROLES])
        self.masks = [None, *(torch.from_numpy(arrays[f"{r}_mask"]) for r in ("p", "n"))]

    def embed(self, batch: TokenizedBatch, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        kind, rows = int(batch.input_ids[0, 0]), batch.input_ids[:, 1]
        vectors = F.normalize(self.table[kind][rows], dim=-1)
        mask = self.masks[kind]
        return vectors, (torch.ones(vectors.shape[:2], dtype=torch.bool) if mask is None else mask[rows])


def _tokens(kind: int, rows: list[int]) -> TokenizedBatch:
    ids = torch.tensor([[kind, r] for r in rows])
    return TokenizedBatch(ids, torch.ones_like(ids), None, list(range(len(rows))))


def colzero_grads(arrays, name: str, scale: str, rank: int, world: int) -> dict[str, np.ndarray]:
    rows = list(range(rank * B // world, (rank + 1) * B // world))
    model = Vectors(arrays)
    if name == "cached":
        fn: Contrastive = CachedContrastive(model, mini_batch_size=2, temperature=TAU, loss_scale=scale)
    else:
        fn = Contrastive(model, temperature=TAU, loss_scale=scale)
    batch = ContrastiveBatch(_tokens(0, rows), _tokens(1, rows), _tokens(2, rows), 1)
    fn(batch).backward()
    out = {}
    for role, param in zip(ROLES, model.table, strict=True):
        grad = param.grad if param.grad is not None else torch.zeros_like(param)
        if world > 1:
            dist.all_reduce(grad)
            grad = grad / world
        out[f"{name}/{role}"] = grad.numpy().copy()
    return out


def _two_rank_job(rank: int, world: int) -> dict:
    arrays = embeddings()
    return {
        scale: {
            k: v
            for name in ("contrastive", "cached")
            for k, v in colzero_grads(arrays, name, scale, rank, world).items()
        }
        for scale in ("mean", "pylate")
    }


def ours(arrays, world: int, tmp: Path) -> dict[str, dict[str, np.ndarray]]:
    from tests.test_losses_helpers import on_gloo_ranks

    if world == 1:
        return _two_rank_job(0, 1)
    return on_gloo_ranks(_two_rank_job, world, tmp)


def theirs(arrays, world: int, tmp: Path) -> dict[str, np.ndarray]:
    exe = pylate_python()
    np.savez(tmp / "emb.npz", **arrays)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(
        [exe, str(REPO / "scripts" / "pylate_loss_grads.py"), "--input", str(tmp / "emb.npz"),
         "--output", str(tmp / "pylate.npz"), "--world", str(world), "--temperature", str(TAU)],
        check=True, env=env, stdout=sys.stderr, stderr=sys.stderr, timeout=600,
    )  # fmt: skip
    return dict(np.load(tmp / "pylate.npz"))


@pytest.mark.parametrize("world", [1, 2])
def test_pylate_scale_matches_pylate(world, tmp_path):
    arrays = embeddings()
    ref = theirs(arrays, world, tmp_path)
    got = ours(arrays, world, tmp_path)
    for name in ("contrastive", "cached"):
        # the released scale: W x the mean (plain), the global sum = B x the mean (cached)
        factor = world if name == "contrastive" else B
        for role in ROLES:
            key = f"{name}/{role}"
            atol = 1e-6 * float(np.abs(ref[key]).max())
            np.testing.assert_allclose(got["pylate"][key], ref[key], rtol=1e-4, atol=atol, err_msg=key)
            np.testing.assert_allclose(got["mean"][key] * factor, ref[key], rtol=1e-4, atol=atol, err_msg=key)
            assert np.abs(ref[key]).max() > 0
