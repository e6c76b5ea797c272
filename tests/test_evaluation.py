"""Evaluation: dataset loading and validation, exact search, self-hit removal, metrics, cache, CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_colbert, make_dense

from colzero.evaluation import (
    DatasetError,
    RetrievalSettings,
    compute_metrics,
    evaluate,
    load_dataset,
    make_eval_hook,
    retrieve,
)
from colzero.evaluation.retrieval import CorpusEmbeddings, preset_settings, search_colbert, search_dense
from colzero.scoring.maxsim import maxsim_all_pairs

DOCS = [
    ("d1", "Fox", "the quick brown fox jumps over the lazy dog"),
    ("d2", "", "colbert late interaction retrieval model"),
    ("d3", "Cells", "protein cell gene study results show data"),
    ("d4", "", "neural network training loss learning"),
    ("q2", "", "who wrote this paper on vector search"),  # a document whose id is a query id
    ("d6", "Text", "token score query document search vector"),
]
QUERIES = [
    ("q1", "quick fox"),
    ("q2", "who wrote the paper"),
    ("q3", "protein gene"),
    ("q4", "a query without qrels"),
]


def write_beir(root: Path, docs=DOCS, queries=QUERIES, qrels=None, split="test") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "qrels").mkdir(exist_ok=True)
    with open(root / "corpus.jsonl", "w") as fh:
        for i, t, x in docs:
            fh.write(json.dumps({"_id": i, "title": t, "text": x}) + "\n")
    with open(root / "queries.jsonl", "w") as fh:
        for i, x in queries:
            fh.write(json.dumps({"_id": i, "text": x}) + "\n")
    qrels = (
        qrels if qrels is not None else [("q1", "d1", 1), ("q2", "d2", 1), ("q3", "d3", 2), ("q3", "d6", 1)]
    )
    with open(root / "qrels" / f"{split}.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, d, s in qrels:
            fh.write(f"{q}\t{d}\t{s}\n")
    return root


# ------------------------------------------------------------------ datasets


def test_queries_selected_through_qrels_and_title_text(tmp_path):
    ds = load_dataset(write_beir(tmp_path / "set"))
    assert ds.query_ids == ["q1", "q2", "q3"]  # q4 has no qrels
    assert ds.corpus_texts[0] == "Fox the quick brown fox jumps over the lazy dog"
    assert ds.corpus_texts[1] == "colbert late interaction retrieval model"  # empty title: stripped
    assert ds.qrels["q3"] == {"d3": 2, "d6": 1}


def test_unknown_qrels_are_counted_and_warned(tmp_path, caplog):
    root = write_beir(
        tmp_path / "set", qrels=[("q1", "d1", 1), ("qX", "d1", 1), ("q2", "nope", 1), ("q2", "d2", 1)]
    )
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(root)
    assert ds.dropped_qrels == {"unknown_queries": 1, "unknown_documents": 1}
    assert "unknown" in caplog.text and "test.tsv:4" in caplog.text
    assert "qX" not in ds.qrels and ds.qrels["q2"] == {"nope": 1, "d2": 1}  # BEIR keeps it: unretrievable


def test_duplicate_ids_name_file_and_line(tmp_path):
    root = write_beir(tmp_path / "set", docs=[*DOCS, ("d3", "", "again")])
    with pytest.raises(
        DatasetError, match=r"corpus\.jsonl:7: field '_id': duplicate document id 'd3' \(first at .*:3\)"
    ):
        load_dataset(root)
    root = write_beir(tmp_path / "q", queries=[*QUERIES, ("q1", "x")])
    with pytest.raises(DatasetError, match=r"queries\.jsonl:5: field '_id': duplicate query id 'q1'"):
        load_dataset(root)


@pytest.mark.parametrize(
    ("file", "line", "pattern"),
    [
        ("corpus.jsonl", "{not json", r"corpus\.jsonl:7: malformed JSON"),
        ("corpus.jsonl", '{"title": "x", "text": "y"}', r"corpus\.jsonl:7: field '_id'"),
        ("corpus.jsonl", '{"_id": "z", "text": 3}', r"corpus\.jsonl:7: field 'text'"),
        ("qrels/test.tsv", "q1\td2", r"test\.tsv:6: expected 3 fields"),
        ("qrels/test.tsv", "q1\td2\thigh", r"test\.tsv:6: field 'score'"),
    ],
)
def test_malformed_lines(tmp_path, file, line, pattern):
    root = write_beir(tmp_path / "set")
    with open(root / file, "a") as fh:
        fh.write(line + "\n")
    with pytest.raises(DatasetError, match=pattern):
        load_dataset(root)


def test_empty_corpus_and_missing_files(tmp_path):
    root = write_beir(tmp_path / "set", docs=[])
    with pytest.raises(DatasetError, match="corpus is empty"):
        load_dataset(root)
    with pytest.raises(FileNotFoundError, match="train.tsv"):
        load_dataset(write_beir(tmp_path / "x"), split="train")


def test_msmarco_tsv_and_trec_qrels(tmp_path):
    root = tmp_path / "mm"
    root.mkdir()
    (root / "collection.tsv").write_text("".join(f"{i}\t{t} {x}\n" for i, t, x in DOCS))
    (root / "queries.tsv").write_text("".join(f"{i}\t{x}\n" for i, x in QUERIES))
    (root / "qrels.test.txt").write_text("q1 0 d1 1\nq3 0 d3 2\nq3 0 d4 0\n")
    ds = load_dataset(root)
    assert ds.query_ids == ["q1", "q3"] and ds.qrels["q3"] == {"d3": 2, "d4": 0}


def test_hf_local_folder_nanobeir_layout(tmp_path):
    datasets = pytest.importorskip("datasets")
    root = tmp_path / "NanoSet"
    for config, rows in {
        "corpus": [{"_id": i, "text": f"{t} {x}".strip()} for i, t, x in DOCS],
        "queries": [{"_id": i, "text": x} for i, x in QUERIES],
        "qrels": [{"query-id": "q1", "corpus-id": "d1"}, {"query-id": "q3", "corpus-id": "d3"}],
    }.items():
        (root / config).mkdir(parents=True)
        datasets.Dataset.from_list(rows).to_parquet(str(root / config / "train-00000.parquet"))
    ds = load_dataset(root)
    assert ds.name == "NanoSet" and ds.query_ids == ["q1", "q3"] and ds.qrels["q1"] == {"d1": 1}
    assert len(ds.corpus_ids) == len(DOCS)


# ------------------------------------------------------------------ search


def _random_corpus(n=37, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 12, (n,), generator=g)
    mats = [torch.nn.functional.normalize(torch.randn(int(L), dim, generator=g), dim=-1) for L in lengths]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum([m.shape[0] for m in mats], out=offsets[1:])
    return mats, CorpusEmbeddings(torch.cat(mats).numpy(), offsets)


def test_colbert_search_is_exact_and_excludes():
    from colzero import pad_embeddings

    mats, corpus = _random_corpus()
    q = torch.nn.functional.normalize(torch.randn(5, 4, 8), dim=-1)
    padded = pad_embeddings(mats)
    ref = maxsim_all_pairs(q, padded.embeddings, padded.mask)
    s, i = search_colbert(q, None, corpus, 10, doc_group=7)
    top = ref.topk(10, dim=1)
    assert torch.allclose(s, top.values, atol=1e-5)
    assert torch.equal(torch.sort(i, 1).values, torch.sort(top.indices, 1).values)
    exclude = top.indices[:, 0].clone()
    exclude[1] = -1
    s2, i2 = search_colbert(q, None, corpus, 10, exclude=exclude, doc_group=5)
    assert i2.shape == (5, 10)
    for r in range(5):
        assert (exclude[r] == -1) == (exclude[r].item() in i2[r].tolist() or exclude[r] == -1)
        expected = [x for x in top.indices[r].tolist() if x != exclude[r]][:9]
        assert i2[r, :9].tolist() == expected


def test_dense_search_is_exact_and_excludes():
    g = torch.Generator().manual_seed(1)
    docs, q = torch.randn(50, 6, generator=g), torch.randn(4, 6, generator=g)
    ref = (q @ docs.T).topk(7, dim=1)
    s, i = search_dense(q, CorpusEmbeddings(docs.numpy(), None), 7, doc_chunk=9)
    assert torch.equal(i, ref.indices) and torch.allclose(s, ref.values, atol=1e-5)
    excl = ref.indices[:, 0]
    _, i2 = search_dense(q, CorpusEmbeddings(docs.numpy(), None), 7, exclude=excl, doc_chunk=9)
    assert not (i2 == excl[:, None]).any() and torch.equal(i2[:, :6], ref.indices[:, 1:])


@pytest.mark.parametrize("kind", ["colbert", "dense"])
def test_self_hit_removal_switch(tmp_path, kind):
    ds = load_dataset(write_beir(tmp_path / "set"))
    model = make_colbert() if kind == "colbert" else make_dense()
    on = retrieve(model, ds, RetrievalSettings(k=10, use_cache=False)).run
    off = retrieve(model, ds, RetrievalSettings(k=10, use_cache=False, remove_self_hits=False)).run
    assert "q2" not in on["q2"] and len(on["q2"]) == len(DOCS) - 1
    assert "q2" in off["q2"] and len(off["q2"]) == len(DOCS)
    assert on["q1"] == pytest.approx(off["q1"])


def test_corpus_cache_reused_and_invalidated(tmp_path):
    ds = load_dataset(write_beir(tmp_path / "set"))
    model = make_colbert()
    base = RetrievalSettings(k=3, cache_dir=tmp_path / "cache")
    first = retrieve(model, ds, base)
    again = retrieve(model, ds, base.replace(k=5))
    assert not first.cache_hit and again.cache_hit and first.cache_path == again.cache_path
    assert first.run["q1"] == pytest.approx({d: again.run["q1"][d] for d in first.run["q1"]})
    assert retrieve(model, ds, base.replace(query_length=12)).cache_hit  # query-side settings keep it
    for change in ({"document_length": 8}, {"document_prompt": "passage: "}, {"storage_dtype": "float16"}):
        out = retrieve(model, ds, base.replace(**change))
        assert not out.cache_hit and out.cache_path != first.cache_path, change
    with torch.no_grad():
        model.projection.weight.mul_(1.5)  # new weights -> new fingerprint
    assert not retrieve(model, ds, base).cache_hit
    entries = [p for p in (tmp_path / "cache").iterdir()]
    assert len(entries) == 5 and not any(p.name.startswith(".") for p in entries)  # no temp leftovers


def test_preset_query_lengths():
    s = RetrievalSettings()
    assert preset_settings(s, "scifact", "colbert-zero").query_length == 48
    assert preset_settings(s, "arguana", "colbert-zero").query_length == 64
    assert preset_settings(s, "vaswani", "colbert-zero").query_length is None
    assert preset_settings(s.replace(query_length=20), "arguana", "colbert-zero").query_length == 20


# ------------------------------------------------------------------ metrics


def test_graded_relevance_and_zero_grades():
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    best = compute_metrics(qrels, {"q": {"a": 3.0, "b": 2.0, "c": 1.0}})
    swapped = compute_metrics(qrels, {"q": {"b": 3.0, "a": 2.0, "c": 1.0}})
    assert best["ndcg@10"] == pytest.approx(1.0)
    assert swapped["ndcg@10"] < 1.0 and swapped["mrr@10"] == 1.0  # both relevant, grade matters for nDCG only
    only_zero = compute_metrics(qrels, {"q": {"c": 3.0, "a": 2.0, "b": 1.0}})
    assert only_zero["mrr@10"] == pytest.approx(0.5)  # grade 0 is not relevant
    assert only_zero["recall@100"] == pytest.approx(1.0)


def test_missing_queries_in_run_score_zero():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    res = compute_metrics(qrels, {"q1": {"a": 1.0}, "q9": {"b": 1.0}})
    assert res["ndcg@10"] == pytest.approx(0.5) and res["recall@100"] == pytest.approx(0.5)


# ------------------------------------------------------------------ API, hook, CLI


def test_evaluate_api_and_hook(tmp_path):
    root = write_beir(tmp_path / "set")
    colbert, dense = make_colbert(), make_dense()
    res = evaluate(
        [colbert, dense],
        [root],
        model_names=["cb", "dn"],
        cache_dir=tmp_path / "c",
        output_dir=tmp_path / "out",
    )
    assert set(res.scores) == {"cb", "dn"} and set(res.scores["cb"]["set"]) == {
        "ndcg@10",
        "mrr@10",
        "recall@100",
        "map@100",
    }
    assert (tmp_path / "out" / "results.json").is_file() and (
        tmp_path / "out" / "set.png"
    ).stat().st_size > 1000
    assert "| set |" in (tmp_path / "out" / "results.md").read_text()
    hook = make_eval_hook([root])
    colbert.train()
    logs = hook(colbert, 3)
    assert colbert.training
    assert logs["eval/set/ndcg@10"] == pytest.approx(res.scores["cb"]["set"]["ndcg@10"])
    assert logs["eval/mean/ndcg@10"] == logs["eval/set/ndcg@10"]


def test_cli_smoke(tmp_path, capsys):
    from colzero.cli.main import main

    root = write_beir(tmp_path / "set")
    model_dir = make_colbert().save(tmp_path / "tiny-colbert")
    rc = main(
        [
            "evaluate",
            str(model_dir),
            "--datasets",
            str(root),
            "--output",
            str(tmp_path / "out"),
            "--cache-dir",
            str(tmp_path / "cache"),
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "ndcg@10" in out and "tiny-colbert" in out and "mean" in out
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert 0.0 <= data["scores"]["tiny-colbert"]["set"]["ndcg@10"] <= 1.0
    assert main(["evaluate", str(model_dir), "--datasets", str(tmp_path / "absent")]) == 2  # bad input


def test_cli_as_the_authors_ran_it(tmp_path, capsys):
    """``--query-lengths colbert-zero --search index``: per-dataset query lengths, PLAID search, both
    reported per dataset."""
    from colzero.cli.main import main

    root = write_beir(tmp_path / "scifact")  # named as a dataset of the preset (48 query tokens)
    model_dir = make_colbert().save(tmp_path / "tiny-colbert")
    args = ["evaluate", str(model_dir), "--datasets", str(root), "--cache-dir", str(tmp_path / "cache")]
    extra = ["--query-lengths", "colbert-zero", "--search", "index", "--no-plots"]
    assert main([*args, *extra, "--output", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "scifact: index search, query length 48 (colbert-zero preset)" in out
    used = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]["scifact"]
    assert used["search"] == "index" and used["query_tokens"] == used["query_length"] == 48
    assert main([*args, "--no-plots", "--output", str(tmp_path / "exact")]) == 0
    assert "scifact: exact search, query length 16 (the model's own)" in capsys.readouterr().out
