"""colzero pairs / mine / score on tiny corpora."""

from __future__ import annotations

import json

import pytest

from colzero.data.mining import keep_negative, mine
from colzero.data.pairs import build_pairs, make_pairs
from colzero.data.readers import iter_jsonl

DOCS = [
    {
        "_id": "1",
        "title": "Protein folding in the cell",
        "text": "Proteins fold into shapes. The cell helps them.",
    },
    {
        "_id": "2",
        "title": "Protein folding in the cell",
        "text": "A duplicate title with another body text here.",
    },
    {"_id": "3", "title": "", "text": "The quick brown fox jumps. Over the lazy dog it goes again."},
    {"_id": "4", "title": "", "text": "The quick brown fox jumps. Over the lazy dog it goes again."},
    {"_id": "5", "title": "Short", "text": "too short"},
    {
        "_id": "6",
        "title": "Neural network training loss",
        "text": "Learning with a neural network needs a loss.",
    },
]


def read_jsonl(path):
    return [row for _, row in iter_jsonl(path)]


def test_pairs_rules_and_dedup(tmp_path):
    pairs = list(make_pairs(DOCS, min_words=2))
    queries = [p["query"] for p in pairs]
    assert len(queries) == len(set(q.lower() for q in queries))  # deduplicated
    assert {p["doc_id"] for p in pairs} == {"1", "3", "6"}
    by = {p["doc_id"]: p for p in pairs}
    assert by["1"]["rule"] == "title" and by["1"]["document"].startswith("Proteins")
    assert by["3"] == {
        "query": "The quick brown fox jumps.",
        "document": "Over the lazy dog it goes again.",
        "doc_id": "3",
        "rule": "sentence",
    }
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    assert build_pairs(tmp_path, tmp_path / "out.jsonl", min_words=2) == 3
    assert len(list(read_jsonl(tmp_path / "out.jsonl"))) == 3


CORPUS = {
    "p": "neural network training loss for retrieval",
    "a": "neural network training with a contrastive loss",
    "b": "neural network model of the cell",
    "c": "the fox and the dog",
    "d": "protein folding study results",
    "e": "gene data method",
}


def test_mining_excludes_positives_bm25():
    rows = [{"query": "neural network training loss", "pos": ["p"]}]
    out = mine(rows, CORPUS, bm25=True, k=5, n_negatives=5, margin=None)
    negs = out[0]["neg"]
    assert "p" not in negs and negs and set(negs) <= set(CORPUS)
    assert all(out[0]["neg_source"][n] == "bm25" for n in negs)


def test_margin_filter_modes():
    assert keep_negative(0.5, 1.0, 0.95, "relative")
    assert not keep_negative(0.96, 1.0, 0.95, "relative")
    assert not keep_negative(0.95, 1.0, 0.1, "absolute") and keep_negative(0.85, 1.0, 0.1, "absolute")
    assert keep_negative(5.0, 1.0, None, "relative")
    rows = [{"query": "neural network training loss", "pos": ["p"]}]
    strict = mine(rows, CORPUS, bm25=True, k=5, n_negatives=5, margin=0.0)  # drops every positive-scored hit
    loose = mine(rows, CORPUS, bm25=True, k=5, n_negatives=5, margin=None)
    assert len(strict[0]["neg"]) < len(loose[0]["neg"])


def test_mining_with_model_excludes_positives(tmp_path):
    from conftest import make_colbert

    model = make_colbert("bert")
    model.save(tmp_path / "m")
    rows = [{"query": "neural network training loss", "pos": ["p", "a"]}]
    out = mine(rows, CORPUS, model=tmp_path / "m", bm25=True, k=4, n_negatives=4, margin=None)
    assert not {"p", "a"} & set(out[0]["neg"])
    assert set(out[0]["neg_source"].values()) <= {"bm25", "model", "both"}


@pytest.mark.parametrize("kind", ["colbert", "dense"])
def test_score_format(tmp_path, kind):
    from conftest import make_colbert, make_dense

    from colzero.data.teacher import score_file

    (make_colbert("bert") if kind == "colbert" else make_dense("bert")).save(tmp_path / "t")
    (tmp_path / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in CORPUS.items())
    )
    (tmp_path / "in.jsonl").write_text(
        json.dumps({"query_id": "q1", "query": "neural loss", "pos": ["p"], "neg": ["a", "b", "c", "zz"]})
        + "\n"
        + json.dumps({"query_id": "q2", "query": "fox", "pos": ["c"], "neg": ["d"]})
        + "\n"
    )
    n = score_file(
        tmp_path / "t",
        tmp_path / "in.jsonl",
        tmp_path / "corpus.jsonl",
        tmp_path / "kd.jsonl",
        n_candidates=3,
    )
    rows = list(read_jsonl(tmp_path / "kd.jsonl"))
    assert n == 1 and len(rows) == 1  # q2 has < 3 candidates; unknown id "zz" dropped
    row = rows[0]
    assert set(row) == {"query_id", "query", "document_ids", "scores"}
    assert row["query_id"] == "q1" and row["document_ids"] == ["p", "a", "b"]
    assert len(row["scores"]) == 3 and all(isinstance(s, float) for s in row["scores"])


def test_cli_pairs(tmp_path, capsys):
    from colzero.cli.main import main

    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in DOCS))
    assert main(["pairs", str(tmp_path / "corpus.jsonl"), str(tmp_path / "p.jsonl"), "--min-words", "2"]) == 0
    assert "wrote 3 pairs" in capsys.readouterr().out
