"""The CLI's one log filter: quiet by default, colzero's INFO with -v, everything with -vv; what
asks for action (colzero's warnings, a load report with weights that were not loaded) always."""

from __future__ import annotations

import logging
import sys

import pytest

from colzero.cli import logs

#: a transformers load report as transformers 5 logs it (warning of transformers.modeling_utils)
REPORT = """BertModel LOAD REPORT from: models/splade-tiny-bert
Key                                        | Status     |
-------------------------------------------+------------+-
cls.predictions.bias                       | UNEXPECTED |
{missing}
Notes:
- UNEXPECTED:\tcan be ignored when loading from different task/architecture
- MISSING:\tthose params were newly initialized because missing from the checkpoint."""
POOLER = "pooler.dense.bias                          | MISSING    |\npooler.dense.weight | MISSING |"
EMBEDDINGS = "embeddings.word_embeddings.weight          | MISSING    |"


def record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def passes(verbosity: int, rec: logging.LogRecord) -> bool:
    return logs.LevelFilter(*logs.levels(verbosity)).filter(rec)


@pytest.mark.parametrize(
    ("rec", "shown_from"),
    [
        (record("colzero.training.pipeline", logging.WARNING, "prompts are not aligned"), 0),
        (record("colzero.data.readers", logging.ERROR, "bad row"), 0),
        (record("colzero.training.pipeline", logging.INFO, "phase-1: start"), 1),
        (record("colzero.training.trainer", logging.DEBUG, "details"), 2),
        (record("bm25s", logging.DEBUG, "Building index from IDs objects"), 2),
        (record("bm25s", logging.INFO, "Retrieving"), 2),
        (record("transformers.modeling_utils", logging.WARNING, "The new embeddings ... vocab-expansion"), 1),
        (record("transformers.modeling_utils", logging.WARNING, REPORT.format(missing=POOLER)), 1),
        (record("transformers.modeling_utils", logging.WARNING, REPORT.format(missing=EMBEDDINGS)), 0),
        (record("datasets.load", logging.WARNING, "Using the latest cached version"), 1),
        (record("faiss", logging.ERROR, "an error"), 0),
        (
            record(
                "py.warnings", logging.WARNING, "/venv/site-packages/ranx/ndcg.py:72: NumbaTypeSafetyWarning"
            ),
            1,
        ),
        (record("py.warnings", logging.WARNING, "/src/colzero/scoring/packed.py:9: UserWarning: x"), 0),
    ],
)
def test_each_record_is_shown_from_its_level(rec, shown_from):
    assert [passes(v, rec) for v in (0, 1, 2)] == [v >= shown_from for v in (0, 1, 2)]


def test_a_load_report_missing_real_weights_needs_action():
    assert logs.needs_action(record("transformers", logging.WARNING, REPORT.format(missing=EMBEDDINGS)))
    assert not logs.needs_action(record("transformers", logging.WARNING, REPORT.format(missing=POOLER)))
    assert not logs.needs_action(record("transformers", logging.WARNING, "no report here | MISSING"))


def test_configure_installs_one_handler_and_routes_library_handlers():
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        logs.configure(0)
        logs.configure(1)  # a second call replaces the first handler
        mine = [h for h in root.handlers if getattr(h, "_colzero_cli_handler", False)]
        assert len(mine) == 1 and all(h in root.handlers for h in before)
        from transformers.utils import logging as hf_logging

        assert logging.getLogger("transformers").propagate
        assert not hf_logging.is_progress_bar_enabled()
        # a library that adds its own stderr handler when its logging module loads (datasets) is adopted
        stray = logging.StreamHandler(sys.stderr)
        logging.getLogger("huggingface_hub").addHandler(stray)
        logs.adopt("huggingface_hub")
        assert stray not in logging.getLogger("huggingface_hub").handlers
        logs.configure(2)
        assert hf_logging.is_progress_bar_enabled()
    finally:
        for h in list(root.handlers):
            if h not in before:
                root.removeHandler(h)
        root.setLevel(level)
        from transformers.utils import logging as hf_logging

        hf_logging.enable_progress_bar()
