"""benchmarks/data_scale.py's building blocks: texts assembled in numpy equal the Python join of their
words, and the 29 sources keep the paper's proportions and add up to the requested rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

data_scale = pytest.importorskip("data_scale")


def test_assembled_texts_equal_the_joined_words(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    rows = [{"title": "Ünïcode words", "text": "a bb ccc a a [95% CI] x" + " abcdefghijklmnop" * 3}]
    corpus.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    maker = data_scale.TextMaker(corpus, tmp_path / "no-vocab.txt")
    assert "abcdefghijklmnop" not in maker.words  # 16 bytes: longer than a vocabulary word may be
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 9, 200)
    ids = rng.integers(0, len(maker.words), int(counts.sum()))
    got = maker.assemble(ids, counts).to_pylist()
    ends = np.cumsum(counts)
    expected = [" ".join(maker.words[i] for i in ids[e - c : e]) for c, e in zip(counts, ends, strict=True)]
    assert got == expected
    texts = maker.strings(rng, np.array([1, 10, 120]))
    assert [len(t.split(" ")) for t in texts.to_pylist()] == [1, 10, 120]


@pytest.mark.parametrize("total", [20_000_000, 1_000_003])
def test_sources_keep_the_paper_proportions(total):
    sizes = data_scale.source_sizes(total)
    assert len(sizes) == 29 and sum(sizes.values()) == total
    full = data_scale.source_sizes(data_scale.PAPER_ROWS)
    assert full["reddit_title_body"] == 66_204_599 and sum(full.values()) == data_scale.PAPER_ROWS
    for name, rows in sizes.items():
        assert abs(rows - full[name] * total / data_scale.PAPER_ROWS) < 1
