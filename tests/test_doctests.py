"""The examples in the public API's docstrings run (offline, on tiny in-memory models).

Docstrings that need a model use the name ``model``: here a tiny random ColBERT (see
``conftest.make_colbert``). ``Index.search``'s example comes with the index split (issue 14).
"""

from __future__ import annotations

import doctest
import importlib

import pytest
from conftest import make_colbert

MODULES = (
    "colzero.scoring.maxsim",
    "colzero.model.colbert",
    "colzero.losses.contrastive",
    "colzero.losses.distillation",
    "colzero.losses.registry",
    "colzero.evaluation.metrics",
    "colzero.evaluation.evaluate",
)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.setenv("COLZERO_CACHE", str(tmp_path))
    module = importlib.import_module(name)
    result = doctest.testmod(
        module,
        extraglobs={"model": make_colbert()},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        verbose=False,
    )
    assert result.attempted > 0, f"{name} has no docstring example"
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
    )
