"""Reading a Parquet file (the Arrow conversion and streamed sources) holds about one batch in memory,
not the whole file: pyarrow's pre-buffering would read every column chunk of the file up front."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROW_GROUPS, ROWS_PER_GROUP, TEXT_BYTES = 48, 1000, 1000  # ~48 MB of text

CHILD = r"""
import json, sys
from pathlib import Path
import pyarrow as pa
import colzero.data.tables as tables
from colzero.data.readers import iter_parquet

src = Path(sys.argv[1])
pool = pa.default_memory_pool()
tables.CONVERT_BATCH_ROWS = 1000
converted = tables._convert_parquet(src, src.with_suffix(".arrow"))
peak_convert = pool.max_memory()
streamed = sum(1 for _ in iter_parquet(src))
# the peak only grows: a stream that buffered the file would show here
print(json.dumps({"rows": [converted, streamed], "peaks": [peak_convert, pool.max_memory()]}))
"""


def test_parquet_reads_hold_a_batch_not_the_file(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "big.parquet"
    with pq.ParquetWriter(path, pa.schema([("text", pa.string())]), compression="none") as writer:
        for _ in range(ROW_GROUPS):
            letters = rng.integers(97, 123, (ROWS_PER_GROUP, TEXT_BYTES), dtype=np.uint8)
            texts = [bytes(r).decode() for r in letters]
            writer.write_table(pa.table({"text": texts}), row_group_size=ROWS_PER_GROUP)
    file_bytes = path.stat().st_size
    assert file_bytes > 0.9 * ROW_GROUPS * ROWS_PER_GROUP * TEXT_BYTES
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, check=True, env=os.environ
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["rows"] == [ROW_GROUPS * ROWS_PER_GROUP] * 2
    # a few batches at most (pre-buffering would hold the whole file)
    assert max(got["peaks"]) < file_bytes / 2, (got, file_bytes)
