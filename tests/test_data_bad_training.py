"""Training data that used to pass silently: unknown positives (``mine``, ``score``, a recipe's
``mine`` step), empty positives, empty texts, and ``data check``'s choice of the row it reports."""

from __future__ import annotations

import json
import logging
import types

import pytest
from conftest import make_colbert
from test_data_tools import CORPUS

from colzero.data.mining import mine_beir, mine_file
from colzero.data.readers import DataError, iter_jsonl, load_text_table
from colzero.data.sources import SourceData
from colzero.training.config import DataSource, LossConfig


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def corpus(tmp_path):
    return write_jsonl(
        tmp_path / "corpus.jsonl", [{"_id": k, "title": "", "text": v} for k, v in CORPUS.items()]
    )


def test_score_refuses_an_unknown_positive_naming_file_line_and_id(tmp_path, corpus, caplog):
    from colzero.data.teacher import score_file

    make_colbert().save(tmp_path / "t")
    rows = [
        {"query_id": "q1", "query": "neural loss", "pos": ["p"], "neg": ["a", "b"]},
        {"query_id": "q2", "query": "fox", "pos": ["zz"], "neg": ["c", "d", "yy"]},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "kd.jsonl"
    with pytest.raises(DataError) as err:
        score_file(tmp_path / "t", data, corpus, out, n_candidates=3)
    assert str(err.value) == (
        f"{data}:2: field 'pos': positive id 'zz' is not in {corpus} "
        "(--drop-unknown drops unknown ids and the rows they leave without a positive)"
    )
    assert not out.exists()
    with caplog.at_level(logging.WARNING):
        assert score_file(tmp_path / "t", data, corpus, out, n_candidates=3, drop_unknown=True) == 1
    assert [r["query_id"] for _, r in iter_jsonl(out)] == ["q1"]  # q2 lost its positive: not written
    assert (
        f"dropped 1 unknown positive id(s) not in {corpus} (the first 'zz' at {data}:2); 1 row(s)"
        in caplog.text
    )
    assert (
        f"dropped 1 unknown negative / candidate id(s) not in {corpus} (the first 'yy' at {data}:2)"
        in caplog.text
    )


def test_cli_score_unknown_positive_exits_2_in_one_line(tmp_path, corpus, capsys):
    from colzero.cli.main import main

    make_colbert().save(tmp_path / "t")
    data = write_jsonl(tmp_path / "in.jsonl", [{"query": "fox", "pos": ["zz"], "neg": ["c", "d"]}])
    capsys.readouterr()
    assert main(["score", str(tmp_path / "t"), str(data), str(corpus), str(tmp_path / "kd.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"colzero score: error: {data}:1: field 'pos': positive id 'zz' is not in {corpus} "
        "(--drop-unknown drops unknown ids and the rows they leave without a positive)"
    ]


def test_mine_refuses_an_unknown_positive_naming_file_line_and_id(tmp_path, corpus, caplog):
    rows = [
        {"query": "neural network training loss", "pos": ["p"]},
        {"query": "the fox", "pos": ["c", "nope"]},
        {"query": "gene", "pos": "gone"},
    ]
    data = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "hn.jsonl"
    with pytest.raises(DataError) as err:
        mine_file(data, corpus, out, k=3, n_negatives=2)
    assert str(err.value) == (
        f"{data}:2: field 'pos': positive id 'nope' is not in {corpus} "
        "(2 unknown positive id(s) in all; --drop-unknown drops them)"
    )
    assert not out.exists()
    with caplog.at_level(logging.WARNING):
        assert mine_file(data, corpus, out, k=3, n_negatives=2, drop_unknown=True) == 2
    mined = [r for _, r in iter_jsonl(out)]
    assert [r["pos"] for r in mined] == [["p"], ["c"]]  # 'nope' dropped, the row of 'gone' too
    assert f"dropped 2 unknown positive id(s) (the first 'nope' at {data}:2) and 1 row(s)" in caplog.text


def beir_folder(tmp_path):
    root = tmp_path / "beir"
    (root / "qrels").mkdir(parents=True)
    write_jsonl(root / "corpus.jsonl", [{"_id": k, "title": "", "text": v} for k, v in CORPUS.items()])
    write_jsonl(root / "queries.jsonl", [{"_id": "q1", "text": "neural loss"}, {"_id": "q2", "text": "fox"}])
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq1\tp\t1\nq2\tc\t1\nq2\tghost\t1\n"
    )
    return root


def test_a_recipes_mine_step_refuses_qrels_positives_missing_from_the_corpus(tmp_path):
    from colzero.training.pipeline import run_prepare
    from colzero.training.recipe import PrepareSpec

    root = beir_folder(tmp_path)
    out = tmp_path / "hn.jsonl"
    step = PrepareSpec(tool="mine", output=str(out), args={"beir": str(root), "k": 3, "n_negatives": 2})
    with pytest.raises(DataError) as err:
        run_prepare(types.SimpleNamespace(prepare=[step]))
    assert str(err.value).startswith(
        f"{root / 'qrels' / 'train.tsv'}:4: field 'corpus-id': positive id 'ghost' of query 'q2' is not in the corpus"
    )
    assert not out.exists()
    assert mine_beir(root, out, k=3, n_negatives=2, drop_unknown=True) == 2
    assert {r["query_id"]: r["pos"] for _, r in iter_jsonl(out)} == {"q1": ["p"], "q2": ["c"]}


def test_an_empty_positive_is_an_error_in_training(tmp_path):
    inline = write_jsonl(tmp_path / "inline.jsonl", [{"q": "a", "p": "b"}, {"q": "c", "p": "  "}])
    source = SourceData(DataSource("s", str(inline), query="q", positive="p"), LossConfig())
    with pytest.raises(DataError) as err:
        source.examples([0, 1])
    assert str(err.value) == f"{inline}:2: field 'p': the positive text is empty (a positive must have text)"
    docs = write_jsonl(
        tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "one"}, {"_id": "d2", "title": "", "text": ""}]
    )
    ids = write_jsonl(tmp_path / "ids.jsonl", [{"q": "a", "p": "d1"}, {"q": "c", "p": ["d2", "d1"]}])
    source = SourceData(DataSource("s", str(ids), query="q", positive="p", documents=str(docs)), LossConfig())
    assert source[0].positive == "one"
    with pytest.raises(DataError) as err:
        source[1]
    assert str(err.value) == (
        f"{ids}:2: field 'p': the positive document 'd2' has empty text (a positive must have text)"
    )


def test_empty_text_warnings_name_the_first_ids_and_lines(tmp_path, caplog):
    docs = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"_id": "d1", "text": "one"}, {"_id": "d2", "text": " "}, {"_id": "d3", "title": "", "text": ""}],
    )
    with caplog.at_level(logging.WARNING):
        load_text_table(docs)
    assert f"{docs}: 2 of 3 documents have empty text ({docs}:2: id 'd2'; {docs}:3: id 'd3')" in caplog.text
    caplog.clear()
    rows = write_jsonl(
        tmp_path / "rows.jsonl",
        [{"q": "a", "p": "d1", "n": ["d1", "d3"]}, {"q": "b", "p": "d1", "n": ["d2", "d1"]}],
    )
    src = DataSource("s", str(rows), query="q", positive="p", negatives="n", documents=str(docs))
    with caplog.at_level(logging.WARNING):
        SourceData(src, LossConfig(n_negatives=2)).examples([0, 1])
    assert (
        f"source s: 2 empty text(s) in the rows just read, e.g. {rows}:1: field 'n' (id 'd3'); "
        f"{rows}:2: field 'n' (id 'd2')"
    ) in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        make_colbert().encode(["a fox", " ", "the dog", ""])
    assert "2 of 4 texts are empty or whitespace (positions 1, 3)" in caplog.text


def test_data_check_reports_the_earliest_bad_row(tmp_path):
    docs = write_jsonl(tmp_path / "corpus.jsonl", [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(4)])
    rows = [{"q": f"q{i}", "p": "d1", "n": ["d2", "d3"]} for i in range(12)]
    rows[3]["n"] = ["d2", "missing"]  # an unknown id: found when ids are joined to texts
    rows[8]["n"] = ["d2"]  # too few negatives: found when the row is parsed, before any join
    data = write_jsonl(tmp_path / "rows.jsonl", rows)
    src = DataSource("s", str(data), query="q", positive="p", negatives="n", documents=str(docs))
    source = SourceData(src, LossConfig(n_negatives=2))
    with pytest.raises(DataError) as err:
        list(source.check_all())
    assert str(err.value).startswith(f"{data}:4: field 'n': document id 'missing' is not in")
