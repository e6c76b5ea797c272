"""Filtered search: restricted BEFORE ranking, equal to exact search over the matching documents.

The reference is exact MaxSim (``colzero.index.exact_search``) over the index's own decoded
vectors of the matching documents, so the comparison isolates the filter (the codec's error is
the same on both sides); with settings that make the index exhaustive, ids and order must match.
"""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
from conftest import WORDS, make_colbert
from hypothesis import given, settings
from hypothesis import strategies as st

from colzero.index import Index, exact_search
from colzero.index.filters import compile_filter, matches

N_DOCS = 600
SOURCES = ["pubmed", "arxiv", "acl"]


def _rows(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        row = {
            "_id": f"d{i}",
            "title": f"title {i}",
            "text": " ".join(rng.choice(WORDS, 8)),
            "year": int(2015 + i % 6),
            "source": SOURCES[i % 3],
            "tags": ["rare"] if i % 100 == 7 else ["x", f"t{i % 4}"],
        }
        if i % 5 == 0:
            row["lang"] = "de"
        rows.append(row)
    return rows


def _vectors(n: int, dim: int, seed: int = 0) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(30, dim)).astype(np.float32)

    def sample(n_tok: int) -> np.ndarray:
        v = centres[rng.choice(30, n_tok)] + 0.4 * rng.normal(size=(n_tok, dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    return [sample(int(rng.integers(4, 20))) for _ in range(n)], [sample(6) for _ in range(8)]


@pytest.fixture(scope="module")
def filtered(tmp_path_factory):
    model = make_colbert()
    rows = _rows(N_DOCS)
    docs, queries = _vectors(N_DOCS, model.config.embedding_dim)
    idx = Index.build(model, rows, tmp_path_factory.mktemp("flt") / "idx", embeddings=docs, chunk_size=128)
    idx.delete(["d3", "d33"])
    return idx, rows, queries


def _decoded(idx: Index) -> list[np.ndarray]:
    """Every document's decoded, normalised vectors (what the index's last stage scores)."""
    out = []
    for seg in idx.segments:
        folder = idx.base / seg.name
        vecs = idx.codec.decompress(np.load(folder / "codes.npy"), np.load(folder / "residuals.npy"))
        start = 0
        for n in np.load(folder / "doclens.npy"):
            out.append(vecs[start : start + n])
            start += n
    return out


def _exact_restricted(idx, rows, queries, flt, k):
    decoded = _decoded(idx)
    keep = [i for i, r in enumerate(rows) if not idx.deleted[i] and matches(r, r["_id"], flt or {})]
    if not keep:
        return [[] for _ in queries]
    return exact_search(queries, [decoded[i] for i in keep], [rows[i]["_id"] for i in keep], k)


FILTERS = {
    "everything": {},
    "everything (listed)": {"year": list(range(2015, 2021))},
    "some": {"source": "arxiv", "year": [2016, 2019]},
    "list field": {"tags": "t1"},
    "missing field": {"lang": None},
    "one": {"_id": "d17"},
    "deleted only": {"_id": ["d3", "d33"]},
    "nothing": {"year": 1900},
}


@pytest.mark.parametrize("name", list(FILTERS))
def test_filtered_search_equals_exact_restricted(filtered, name):
    idx, rows, queries = filtered
    flt = FILTERS[name]
    k = 10
    got = idx.search(queries, k=k, nprobe=10_000, ncandidates=10_000, filter=flt)
    ref = _exact_restricted(idx, rows, queries, flt, k)
    n_match = sum(1 for i, r in enumerate(rows) if not idx.deleted[i] and matches(r, r["_id"], flt))
    for g, r in zip(got, ref, strict=True):
        assert len(g) == min(k, n_match)
        assert [d for d, _ in g] == [d for d, _ in r]
        assert [s for _, s in g] == pytest.approx([s for _, s in r], abs=1e-4)


def test_selective_filter_returns_k_at_default_settings(filtered):
    """1% of the corpus (every 100th document) still gives k results with the default settings:
    the filter applies before the candidate stages, not to their output."""
    idx, rows, queries = filtered
    flt = {"tags": "rare"}
    got = idx.search(queries, k=5, filter=flt)
    ref = _exact_restricted(idx, rows, queries, flt, 5)
    assert all(len(g) == 5 for g in got)
    assert [[d for d, _ in g] for g in got] == [[d for d, _ in r] for r in ref]
    # a broad filter that keeps more documents than stage 2 takes goes through the inverted lists
    broad = {"source": ["pubmed", "arxiv"]}
    for hits in idx.search(queries, k=10, ncandidates=32, filter=broad):
        assert len(hits) == 10 and all(rows[int(d[1:])]["source"] != "acl" for d, _ in hits)


def test_stored_fields_and_bad_filters(filtered, tmp_path):
    idx, rows, queries = filtered
    got = idx.fields(["d5", "d6"], ["title", "year", "nope"])
    assert got == [{"title": "title 5", "year": 2020}, {"title": "title 6", "year": 2015}]
    assert idx.fields(["d7"])[0] == {k: v for k, v in rows[7].items() if k != "_id"}
    with pytest.raises(KeyError, match="d3"):
        idx.fields(["d3"])  # deleted
    for bad in ({"year": {"$gt": 1}}, {"": 1}, {'a"b': 1}, [1]):
        with pytest.raises(ValueError, match="filter"):
            idx.search(queries[:1], filter=bad)
    # without stored fields nothing matches a field, and ids still do
    model = make_colbert()
    docs, _ = _vectors(40, model.config.embedding_dim, seed=2)
    bare = Index.build(model, _rows(40), tmp_path / "bare", embeddings=docs, store_fields=False)
    assert bare.fields(["d1"]) == [{}]
    assert bare.search(queries[:1], filter={"year": 2016}) == [[]]
    assert [d for d, _ in bare.search(queries[:1], filter={"_id": ["d4", "d9"]})[0]] in (
        ["d4", "d9"],
        ["d9", "d4"],
    )


VALUES = st.one_of(st.integers(-3, 3), st.sampled_from(["a", "b", "3", ""]), st.booleans(), st.none())
STORED = st.one_of(VALUES, st.lists(VALUES, max_size=3), st.floats(-3, 3).map(lambda x: float(round(x))))


@settings(max_examples=150, deadline=None)
@given(
    docs=st.lists(
        st.dictionaries(st.sampled_from(["f", "g", "h"]), STORED, max_size=3), min_size=1, max_size=8
    ),
    flt=st.dictionaries(
        st.sampled_from(["f", "g", "_id"]), st.one_of(VALUES, st.lists(VALUES, max_size=3)), max_size=2
    ),
)
def test_sql_filter_matches_python_rule(docs, flt):
    """The SQL the filter compiles to selects exactly the documents the Python rule keeps."""
    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE docs (pid INTEGER PRIMARY KEY, doc_id TEXT, fields TEXT)")
    for i, fields in enumerate(docs):
        con.execute(
            "INSERT INTO docs VALUES (?, ?, ?)", (i, f"{i - 1}", json.dumps(fields) if fields else None)
        )
    where, params = compile_filter(flt)
    got = {r[0] for r in con.execute(f"SELECT pid FROM docs WHERE {where}", params)}
    assert got == {i for i, fields in enumerate(docs) if matches(fields, f"{i - 1}", flt)}


def test_cli_search_filter_and_fields(tmp_path, capsys):
    from colzero.cli.main import main

    model_dir = make_colbert().save(tmp_path / "model")
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in _rows(60)))
    out = tmp_path / "idx"
    assert (
        main(["index", "build", "--model", str(model_dir), "--corpus", str(corpus), "--output", str(out)])
        == 0
    )
    capsys.readouterr()
    flt = json.dumps({"source": "acl", "year": [2017, 2020]})
    assert main(["search", str(out), "quick brown fox", "-k", "50", "--filter", flt, "--snippet", "12"]) == 0
    hits = json.loads(capsys.readouterr().out)["results"]
    expected = [r for r in _rows(60) if r["source"] == "acl" and r["year"] in (2017, 2020)]
    assert sorted(h["id"] for h in hits) == sorted(r["_id"] for r in expected)
    first = next(r for r in expected if r["_id"] == hits[0]["id"])
    assert hits[0]["title"] == first["title"] and len(hits[0]["text"]) <= 13
    assert main(["search", str(out), "fox", "--filter", "{year: 1}"]) == 2  # bad input
    assert "invalid JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flt", "path", "needle"),
    [
        ({"year": 2**63}, ("year",), "9223372036854775808 does not fit in a 64-bit integer"),
        ({"year": -(2**63) - 1}, ("year",), "does not fit in a 64-bit integer"),
        ({"year": [2020, float("nan")]}, ("year", 1), "nan is not a finite number"),
        ({"score": float("inf")}, ("score",), "inf is not a finite number"),
        ({"source": "\ud800"}, ("source",), "lone surrogate '\\ud800' at position 0"),
        ({"a\udfff": 1}, ("a\udfff",), "the name is not valid Unicode"),
        ({f"f{i}": 1 for i in range(65)}, (), "at most 64 fields"),
        ({"a": list(range(600)), "b": list(range(600))}, ("b",), "at most 1024 values"),
        ({"year": [[2020]]}, ("year", 0), "got a nested list"),
        ({"year": {"$gt": 1}}, ("year",), "got an object"),
        ({"source": "x" * 5000}, ("source",), "a string of 5000 characters (at most 4096)"),
        ({"": 1}, ("",), "a field name is a non-empty printable string"),
        ({"a" * 300: 1}, ("a" * 300,), "at most 256 characters"),
        ([1, 2], (), "a filter is a JSON object"),
    ],
)
def test_filter_limits_name_the_key(flt, path, needle):
    from colzero.index.filters import FilterError, check_filter

    with pytest.raises(FilterError) as err:
        check_filter(flt)
    assert needle in str(err.value) and err.value.path == path


def test_filters_at_the_limits_run_in_sqlite():
    from colzero.index.filters import MAX_FIELDS, MAX_VALUES

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE docs (pid INTEGER PRIMARY KEY, doc_id TEXT, fields TEXT)")
    con.execute("INSERT INTO docs VALUES (0, 'a', ?)", (json.dumps({f"f{i}": i for i in range(MAX_FIELDS)}),))
    widest = {
        f"f{i}": [i] + list(range(1000, 1000 + MAX_VALUES // MAX_FIELDS - 1)) for i in range(MAX_FIELDS)
    }
    extremes = {"f0": [0, 2**63 - 1, -(2**63), 1e308, -0.0, "\U0010ffff" * 4096, True, None]}
    for flt in (widest, extremes):
        where, params = compile_filter(flt)
        assert [r[0] for r in con.execute(f"SELECT pid FROM docs WHERE {where}", params)] == [0]


JSONISH = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(st.characters(blacklist_categories=()), max_size=6),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    flt=st.one_of(
        st.dictionaries(st.text(st.characters(blacklist_categories=()), max_size=4), JSONISH, max_size=4),
        JSONISH,
    )
)
def test_a_filter_that_passes_the_checks_never_fails_in_sqlite(flt):
    """Any value: either a FilterError naming the problem, or SQL that SQLite runs."""
    from colzero.index.filters import FilterError, check_filter

    con = sqlite3.connect(":memory:")
    con.execute("CREATE TABLE docs (pid INTEGER PRIMARY KEY, doc_id TEXT, fields TEXT)")
    con.execute("INSERT INTO docs VALUES (0, 'a', ?)", (json.dumps({"a": [1, "x"], "": None}),))
    try:
        check_filter(flt)
    except FilterError:
        return
    where, params = compile_filter(flt)
    con.execute(f"SELECT pid FROM docs WHERE {where}", params).fetchall()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('{"year": 9223372036854775808}', "does not fit in a 64-bit integer"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (json.dumps({f"f{i}": i for i in range(1200)}), "at most 64 fields"),
        ('{"year": NaN}', "NaN is not a number JSON allows"),
        ('{"s": "\\ud800"}', "lone surrogate"),
    ],
)
def test_cli_search_bad_filters_end_in_one_line_and_exit_2(tmp_path, capsys, text, needle):
    from colzero.cli.main import main

    assert main(["search", str(tmp_path / "never-opened"), "fox", "--filter", text]) == 2
    err = capsys.readouterr().err
    assert (
        len(err.strip().splitlines()) == 1
        and needle in err
        and err.startswith("colzero search: error: --filter")
    )
