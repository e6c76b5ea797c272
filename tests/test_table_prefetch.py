"""Prefetching a batch's rows (``Table.prefetch``): the page ranges asked for hold every row's offsets
and bytes (checked by reading those ranges of memory, not by recomputing the addresses), the rows
read are unchanged, and the range arithmetic equals a page-by-page reference."""

from __future__ import annotations

import ctypes
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from colzero.data import tables
from colzero.data.tables import open_table, page_ranges

PAGE = 4096


def reference_ranges(starts, ends, page):
    """Every page a non-empty range touches, then runs of consecutive pages merged."""
    pages = sorted(
        {p for s, e in zip(starts, ends, strict=True) if e > s for p in range(s // page, (e - 1) // page + 1)}
    )
    merged = []
    for p in pages:
        if merged and merged[-1][1] == p * page:
            merged[-1][1] = (p + 1) * page
        else:
            merged.append([p * page, (p + 1) * page])
    return merged


@settings(max_examples=200, deadline=None)
@given(
    spans=st.lists(st.tuples(st.integers(0, 40_000), st.integers(0, 9_000)), max_size=30),
    page=st.sampled_from([1, 16, 4096]),
)
def test_page_ranges_equal_the_page_by_page_reference(spans, page):
    starts = np.array([s for s, _ in spans], dtype=np.int64)
    ends = np.array([s + n for s, n in spans], dtype=np.int64)
    lo, hi = page_ranges(starts, ends, page)
    assert [[int(a), int(b)] for a, b in zip(lo, hi, strict=True)] == reference_ranges(
        starts.tolist(), ends.tolist(), page
    )


@pytest.fixture
def text_table(tmp_path, monkeypatch):
    """A Parquet file of string, large_string and list columns converted to memory-mapped Arrow in
    chunks of 7 rows (so rows lie in many chunks), with texts of 0 to ~9,000 bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 60
    query = [f"q{i}:" + "é" * int(rng.integers(0, 40)) for i in range(n)]
    document = [f"<doc {i}>" + "word " * int(rng.integers(0, 1800)) for i in range(n)]
    document[5] = ""
    table = pa.table(
        {
            "query": pa.array(query, pa.string()),
            "document": pa.array(document, pa.large_string()),
            "negatives": pa.array([[f"n{i}"] for i in range(n)]),
        }
    )
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    monkeypatch.setattr(tables, "CONVERT_BATCH_ROWS", 7)
    opened, _ = open_table(str(path), cache_dir=tmp_path / "cache")
    assert opened.arrow.column("document").num_chunks > 5
    return opened, {"query": query, "document": document}


def test_prefetch_asks_for_the_pages_that_hold_each_rows_offsets_and_bytes(text_table, monkeypatch):
    table, texts = text_table
    asked: list[tuple[int, int]] = []
    real = tables._PageAdvice.__call__

    def recording(self, lo, hi):
        asked.extend(zip(lo.tolist(), hi.tolist(), strict=True))
        return real(self, lo, hi)

    monkeypatch.setattr(tables._PageAdvice, "__call__", recording)
    rows = np.array([59, 3, 5, 3, 17, 0, 41, 40], dtype=np.int64)
    for column, code in (("query", "i"), ("document", "q")):
        asked.clear()
        assert table.prefetch(rows, [column]) > 0
        memory = [ctypes.string_at(a, b - a) for a, b in asked]  # what the asked-for pages hold
        chunks = table.arrow.column(column).chunks
        starts = np.cumsum([0] + [len(c) for c in chunks])
        for row in rows.tolist():
            k = int(np.searchsorted(starts, row, side="right") - 1)
            local = row - int(starts[k]) + chunks[k].offset
            raw = chunks[k].buffers()[1].to_pybytes()
            begin, end = struct.unpack_from(f"<{code}{code}", raw, local * struct.calcsize(f"<{code}"))
            pair = struct.pack(f"<{code}{code}", begin, end)
            assert any(pair in m for m in memory), (column, row, "offsets not in an asked-for range")
            text = texts[column][row].encode()
            if text:
                assert any(text in m for m in memory), (column, row, "bytes not in an asked-for range")
    got = table.take(rows, ["query", "document", "negatives"])  # prefetching changes nothing read
    assert got["query"] == [texts["query"][r] for r in rows.tolist()]
    assert got["document"] == [texts["document"][r] for r in rows.tolist()]
    assert got["negatives"] == [[f"n{r}"] for r in rows.tolist()]


def test_prefetch_skips_what_is_not_text_or_not_its_rows(text_table):
    table, _ = text_table
    assert table.prefetch(np.array([1, 2]), ["negatives"]) == 0  # a list column: not prefetched
    assert table._pages["negatives"] is False
    assert table.prefetch(np.array([], dtype=np.int64), ["query"]) == 0
    assert table.prefetch(np.array([10_000]), ["query"]) == 0  # out of range: the read reports it
    with pytest.raises(IndexError):
        table.take(np.array([10_000]), ["query"])
    shuffled = tables.Table(table.dataset.shuffle(seed=0), table.spans, table.label)
    assert shuffled.prefetch(np.array([1, 2]), ["query"]) == 0  # a re-indexed view


def test_the_fallback_without_process_madvise_asks_for_the_same_rows(text_table):
    table, texts = text_table
    table.prefetch(np.array([1]), ["document"])
    pages = table._pages["document"]
    pages.advise.syscall = None  # as on a kernel without process_madvise: one madvise per range
    assert table.prefetch(np.array([4, 9, 30]), ["document"]) > 0
    assert table.take(np.array([4, 9, 30]), ["document"])["document"] == [
        texts["document"][r] for r in (4, 9, 30)
    ]


def test_a_pickled_table_finds_its_own_row_addresses(text_table):
    import pickle

    table, texts = text_table
    table.prefetch(np.array([1, 2]), ["document"])
    copy = pickle.loads(pickle.dumps(table))  # what a spawned DataLoader worker receives
    assert copy._pages == {}
    assert copy.prefetch(np.array([3, 50]), ["document"]) > 0
    assert copy.take(np.array([3, 50]), ["document"])["document"] == [texts["document"][r] for r in (3, 50)]
