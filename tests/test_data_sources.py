"""Readers and source loading: roles from explicit columns, errors naming file, line and field."""

from __future__ import annotations

import json

import pytest

from colzero.data.collate import Collator
from colzero.data.readers import DataError, iter_rows, load_text_table
from colzero.data.sources import SourceData, load_sources
from colzero.training.config import DataSource, LossConfig, PhaseConfig
from tests.conftest import make_colbert, shared_path


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"q": f"query {i}", "p": [f"pos {i}", "other"], "n": [f"neg {i} a", f"neg {i} b"]} for i in range(6)]


def test_jsonl_parquet_and_hf_read_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    j = write_jsonl(tmp_path / "d.jsonl", ROWS)
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "hf"))
    src = dict(query="q", positive="p", negatives="n")
    loss = LossConfig(n_negatives=2)
    got = [
        [SourceData(DataSource("s", str(p), **src), loss)[i] for i in range(6)]
        for p in (j, tmp_path / "d.parquet", tmp_path / "hf")
    ]
    assert got[0] == got[1] == got[2]
    assert got[0][3].query == "query 3" and got[0][3].positive == "pos 3"  # first positive of a list
    assert got[0][3].negatives == ["neg 3 a", "neg 3 b"]


def test_malformed_line_and_missing_field_name_file_line_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: malformed JSON"):
        list(iter_rows(str(bad)))
    # rows are checked when a batch reads them (no full pass before the first step)
    miss = write_jsonl(tmp_path / "miss.jsonl", [ROWS[0], {"q": "x", "n": []}])
    source = SourceData(DataSource("s", str(miss), query="q", positive="p"), LossConfig())
    assert source[0].query == "query 0"
    with pytest.raises(DataError, match=r"miss\.jsonl:2: field 'p' is missing"):
        source.examples([0, 1])
    few = write_jsonl(tmp_path / "few.jsonl", [ROWS[0], {"q": "x", "p": "y", "n": ["only one"]}])
    source = SourceData(
        DataSource("s", str(few), query="q", positive="p", negatives="n"), LossConfig(n_negatives=2)
    )
    with pytest.raises(DataError, match=r"few\.jsonl:2: field 'n' has 1 negatives"):
        list(source.check_all())


def test_empty_source_and_batch_larger_than_data(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="holds no rows"):
        SourceData(DataSource("s", str(empty), query="q", positive="p"), LossConfig())
    small = write_jsonl(tmp_path / "small.jsonl", ROWS)
    with pytest.raises(
        DataError, match=r"small\.jsonl: source 's' has 6 rows, fewer than the global batch size 8"
    ):
        load_sources([DataSource("s", str(small), query="q", positive="p")], LossConfig(), 8)


def test_kd_ids_joined_to_tables_and_unknown_id(tmp_path):
    docs = write_jsonl(
        tmp_path / "corpus.jsonl",
        [
            {"_id": "d1", "title": "T", "text": "one"},
            {"_id": "d2", "title": "", "text": "two"},
            {"id": 3, "text": "x"},
        ],
    )
    assert load_text_table(str(docs)) == {"d1": "T one", "d2": "two", "3": "x"}
    rows = [{"query": "q", "pos": ["d1"], "neg": ["d2", 3], "pos_scores": [0.9], "neg_scores": [0.1, 0.2]}]
    data = write_jsonl(tmp_path / "kd.jsonl", rows)
    src = DataSource(
        "kd",
        str(data),
        documents=str(docs),
        candidate_ids=["pos", "neg"],
        teacher_scores=["pos_scores", "neg_scores"],
    )
    ex = SourceData(src, LossConfig(kind="distillation", n_candidates=3))[0]
    assert ex.candidates == ["T one", "two", "x"] and ex.scores == [0.9, 0.1, 0.2]
    rows[0]["neg"] = ["d2", "nope"]
    write_jsonl(data, rows)
    with pytest.raises(
        DataError, match=r"kd\.jsonl:1: field 'neg': document id 'nope' is not in .*corpus\.jsonl"
    ):
        SourceData(src, LossConfig(kind="distillation", n_candidates=3))[0]


def test_phase_config_validation_messages():
    src = DataSource("a", "x.jsonl")
    with pytest.raises(ValueError, match="needs candidate_ids and teacher_scores on source 'a'"):
        PhaseConfig(
            name="p", model="m", output_dir="o", sources=[src], batch_size=2, loss=LossConfig("distillation")
        )
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        PhaseConfig(name="p", model="m", output_dir="o", sources=[src], batch_size=0)
    with pytest.raises(ValueError, match="unknown key"):
        PhaseConfig.from_dict(
            {"name": "p", "model": "m", "output_dir": "o", "sources": [], "batch_size": 2, "lr": 1}
        )
    cfg = PhaseConfig(name="p", model="m", output_dir="o", sources=[src], batch_size=2)
    assert PhaseConfig.from_dict(cfg.to_dict()) == cfg


def test_scifact_hn_as_supervised_and_kd_data():
    train = shared_path("data", "train", "scifact-train-hn", "train.jsonl")
    corpus = shared_path("data", "beir", "scifact", "corpus.jsonl")
    sup = SourceData(
        DataSource("sf", str(train), documents=str(corpus), negatives="neg"), LossConfig(n_negatives=2)
    )
    kd = SourceData(
        DataSource(
            "sf",
            str(train),
            documents=str(corpus),
            candidate_ids=["pos", "neg"],
            teacher_scores=["pos_scores", "neg_scores"],
        ),
        LossConfig(kind="distillation", n_candidates=8),
    )
    assert len(sup) == len(kd) == 809
    model = make_colbert()
    batch = Collator(model)([sup[i] for i in range(4)])
    assert len(batch) == 4 and batch.n_negatives == 2 and len(batch.negatives) == 8
    kb = Collator(model)([kd[i] for i in range(4)])
    assert kb.teacher_scores.shape == (4, 8) and len(kb.documents) == 32
