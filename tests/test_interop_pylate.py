"""Opt-in: a colzero-saved ColBERT loaded by PyLate 1.6 gives colzero's vectors.

Run with ``PYLATE_PYTHON=/path/to/pylate-venv/bin/python pytest -m pylate tests/test_interop_pylate.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from colzero import ColBERT
from tests.conftest import REPO, make_colbert, shared_path

pytestmark = pytest.mark.pylate

QUERIES = ["who wrote the paper", "quick brown fox , dog", "what is late interaction retrieval?"]
DOCS = [
    "the quick brown fox jumps over the lazy dog.",
    "a cat",
    "colbert: a late interaction model, for retrieval!",
    "",
    " ".join(["protein cell gene study"] * 60),
]


def pylate_python() -> str:
    exe = os.environ.get("PYLATE_PYTHON")
    if not exe:
        pytest.skip("set PYLATE_PYTHON to a python with PyLate 1.6 installed")
    ok = subprocess.run([exe, "-c", "import pylate"], capture_output=True)
    if ok.returncode != 0:
        pytest.skip(f"{exe} cannot import pylate")
    return exe


def pylate_vectors(exe: str, folder: Path, tmp: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    (tmp / "texts.json").write_text(json.dumps({"queries": QUERIES, "documents": DOCS}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    subprocess.run(
        [exe, str(REPO / "scripts" / "pylate_interop.py"), "encode", "--model", str(folder),
         "--input", str(tmp / "texts.json"), "--output", str(tmp / "out.npz"), "--batch-size", "2"],
        check=True, env=env, stdout=sys.stderr, stderr=sys.stderr, timeout=600,
    )  # fmt: skip
    data = np.load(tmp / "out.npz")
    return [data[f"q{i}"] for i in range(len(QUERIES))], [data[f"d{i}"] for i in range(len(DOCS))]


def max_diff(ours: list[torch.Tensor], theirs: list[np.ndarray]) -> float:
    assert len(ours) == len(theirs)
    worst = 0.0
    for a, b in zip(ours, theirs, strict=True):
        assert tuple(a.shape) == b.shape
        worst = max(worst, float((a - torch.from_numpy(b)).abs().max()))
    return worst


def check(model: ColBERT, tmp_path: Path) -> float:
    exe = pylate_python()
    folder = model.save(tmp_path / "model")
    q, d = pylate_vectors(exe, folder, tmp_path)
    ours_q = model.encode(QUERIES, "query", precision="fp32")  # PyLate runs fp32
    ours_d = model.encode(DOCS, "document", precision="fp32")
    worst = max(max_diff(ours_q, q), max_diff(ours_d, d))
    print(f"colzero vs PyLate max abs diff: {worst:.3g}")
    assert worst < 1e-5
    return worst


def test_tiny_bert_with_prompts(tmp_path):
    check(make_colbert("bert", prompts={"query": "search query : ", "document": "text : "}), tmp_path)


def test_bert_tiny_from_mlm(tmp_path):
    torch.manual_seed(0)
    model = ColBERT.from_pretrained(
        shared_path("models", "splade-tiny-bert"), query_length=32, document_length=64
    )
    check(model, tmp_path)
