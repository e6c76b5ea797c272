"""Row parsing of training sources: texts that start with "[" are texts (only id and score columns may
hold a list stored as its string), and a row's place (a JSONL line is found by reading the file up to
it) is worked out only for an error message, never for every row read."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import colzero.data.tables as tables
from colzero.data.readers import DataError
from colzero.data.sources import TrainingSource
from colzero.training.config import DataSource, LossConfig


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("COLZERO_CACHE", str(tmp_path / "cache"))


TEXT_ROWS = [
    {"query": "[citation needed] who", "document": "[95% CI 1.2-3.4] odds ratio", "negative": ["[1] Intro"]},
    {"query": "plain", "document": "[1, 2, 3]", "negative": ["['a', 'b']"]},
]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_text_columns_starting_with_a_bracket_are_texts(tmp_path, fmt):
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in TEXT_ROWS))
    else:
        pq.write_table(pa.Table.from_pylist(TEXT_ROWS), path)
    source = TrainingSource(
        DataSource("s", str(path), query="query", positive="document", negatives="negative"),
        LossConfig(n_negatives=1),
    )
    got = source.examples([0, 1])
    assert [e.query for e in got] == ["[citation needed] who", "plain"]
    assert [e.positive for e in got] == ["[95% CI 1.2-3.4] odds ratio", "[1, 2, 3]"]
    assert [e.negatives for e in got] == [["[1] Intro"], ["['a', 'b']"]]


def test_id_and_score_columns_may_still_be_list_strings(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"_id": f"d{i}", "text": f"[{i}] document {i}"}) + "\n" for i in range(3))
    )
    queries = tmp_path / "queries.jsonl"
    queries.write_text(json.dumps({"_id": "q0", "text": "[x] a query"}) + "\n")
    kd = tmp_path / "kd.jsonl"
    kd.write_text(
        json.dumps({"query_id": "q0", "ids": "['d2', 'd0', 'd1']", "scores": "[0.5, 0.25, 0.0]"}) + "\n"
    )
    source = TrainingSource(
        DataSource(
            "kd",
            str(kd),
            query_id="query_id",
            queries=str(queries),
            documents=str(corpus),
            candidate_ids="ids",
            teacher_scores="scores",
            positive=None,
        ),
        LossConfig(kind="distillation", n_candidates=3),
    )
    (example,) = source.examples([0])
    assert example.query == "[x] a query"
    assert example.candidates == ["[2] document 2", "[0] document 0", "[1] document 1"]
    assert example.scores == [0.5, 0.25, 0.0]


def test_the_line_of_a_jsonl_row_is_looked_up_only_for_an_error(tmp_path, monkeypatch):
    rows = [{"q": f"query {i}", "p": f"document {i}", "ids": ["a"]} for i in range(50)]
    rows[40] = {"q": "query 40", "p": 7, "ids": ["a"]}
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    looked_up = []
    real = tables._line_of_row

    def counting(file, row):
        looked_up.append(row)
        return real(file, row)

    monkeypatch.setattr(tables, "_line_of_row", counting)
    source = TrainingSource(DataSource("s", str(path), query="q", positive="p"), LossConfig())
    examples = source.examples(list(range(30, 40)))
    assert [e.positive for e in examples] == [f"document {i}" for i in range(30, 40)]
    assert looked_up == []  # reading rows scans nothing
    with pytest.raises(DataError, match=r"pairs\.jsonl:41: field 'p' must hold text"):
        source.examples([39, 40])
    assert looked_up == [40]
