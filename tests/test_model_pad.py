"""``_pad`` (the padding of every tokenised batch) against a per-row reference."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import make_colbert

MODEL = make_colbert()

rows_strategy = st.lists(st.lists(st.integers(0, 2**40), min_size=1, max_size=12), min_size=1, max_size=6)


def reference(rows, attention, pad_id):
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (row, att) in enumerate(zip(rows, attention, strict=True)):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(att)] = torch.tensor(att, dtype=torch.long)
    return ids, mask


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, pad_id=st.integers(0, 50), data=st.data())
def test_pad_equals_the_per_row_reference(rows, pad_id, data):
    attention = [data.draw(st.lists(st.integers(0, 1), min_size=len(r), max_size=len(r))) for r in rows]
    got = MODEL._pad(rows, attention, pad_id, list(range(len(rows))))
    ids, mask = reference(rows, attention, pad_id)
    assert got.input_ids.dtype == torch.long and got.attention_mask.dtype == torch.long
    assert torch.equal(got.input_ids, ids) and torch.equal(got.attention_mask, mask)
    assert got.positions == list(range(len(rows)))
