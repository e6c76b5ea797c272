"""Phase 1 at data scale: a synthetic 29-source Parquet dataset, its one-time Arrow conversion, a 2-rank
training run at N and 2N rows, the input pipeline against the bare tokenizer, and the sampler at the paper's
238,998,494 rows (issue 10, "Benchmarks").

Parts (``--part``, each runnable alone and resumable; ``all`` runs them in order, each in a fresh process):

- ``generate``: ``--rows`` (default 20,000,000) (query, document) pairs in 29 Parquet sources named and
  sized like ``nomic-ai/nomic-embed-unsupervised-data`` (``scripts/preset_data.py``: the 14 sizes of the
  data card, the other 15 splits sharing the remaining 2,243,498 rows equally), scaled to ``--rows``.
  Queries have 5-15 words (mean 10), documents 60-180 (mean 120), words drawn independently from the
  SciFact corpus' word frequencies (so every text is unique and bytes, compression and WordPiece
  lengths are those of real scientific English). Strings are assembled in numpy (word ids -> a byte
  gather -> an Arrow ``StringArray`` from offsets and data buffers), no Python loop per word. Each
  source is two shards ``<source>/part-0000{0,1}.parquet`` of half its rows; a run at N = rows / 2 reads
  shard 0 of every source, a run at 2N both, so both share one Arrow cache. Files are written
  atomically and skipped when present.
- ``prepare``: what ``colzero data prepare`` runs (``load_sources`` of the phase's sources: Parquet ->
  memory-mapped Arrow in the cache ``OUT/cache``, one file per input file): time, converted rows/s (bar
  >= 100k rows/s), Parquet and Arrow bytes, peak RSS, and the time to reopen the prepared tables (what
  a training launch pays). ``--fresh`` deletes the cache first to measure the conversion again.
- ``train``: ``torchrun --standalone --nproc-per-node 2 -m colzero.cli.main train-phase --config`` (gloo,
  CPU, ``OMP_NUM_THREADS=1`` per rank, ``--train-workers`` DataLoader workers per rank) on BERT-tiny
  (``../shared/models/splade-tiny-bert``) with the colbert-zero preset's phase-1 settings (query 39 /
  document 187 tokens, prompts and [Q]/[D] markers, 128-d, cached_contrastive tau 0.02 with the GradCache
  chunk = the per-rank batch, lr 3e-4), ``--steps`` optimizer steps of global batch ``--batch``, once on
  N rows and once on 2N, each in a fresh process tree. A monitor samples every process of the tree
  (``/proc``: RSS and PSS, grouped per rank: the rank and its DataLoader workers) and every version of
  ``cost.json`` (written at each checkpoint). Reported: per-rank peak RSS (the trainer's ``ru_maxrss``
  of each rank; bar <= 2.5 GB and not growing from N to 2N); the rank's and its workers' RSS split
  into their own memory (RssAnon + RssShmem) and mapped file pages (RssFile: the memory-mapped
  tables' page cache, shared and reclaimable; on kernels that map whole large folios per fault, 6.18
  here, a worker reading rows that ``prepare`` just wrote maps MBs per row), with the same bar on the
  own memory of rank + workers; and the peak PSS of rank + workers; time
  from launch to the end of the first optimizer step (``cost.json: first_step_unix``; bar <= 60 s; the
  conversion is the separate prepare step); the fraction of step time spent waiting for data
  (``data_wait_s / wall_s``; bar <= 5%), over all steps and over the steps after the first checkpoint
  (the first batch also waits for the workers to start).
- ``pipeline``: the input pipeline alone (no model): ``colzero.data.loader.input_pipeline`` over the
  prepared 2N sources with 0, 1 and 2 DataLoader workers (one rank's share of the global batch), next to
  the bare tokenizer (``model.tokenizer(texts, truncation=True, max_length=L - 1)`` per role, the
  tokenizer's usual batch call and the bar's reference) on the same texts in the same run, single-threaded (``TOKENIZERS_PARALLELISM=false``),
  and its Rust backend's ``encode_batch_fast`` (the entry point the pipeline calls: same ids, no offsets).
  Repeats are interleaved (tokenizer, 0, 1, 2 workers, again ...) and the medians reported, in pairs/s of
  wall time and per CPU-second (the process's and its reaped workers' ``getrusage``, robust to a busy
  machine). Bar: 2 workers >= 0.9 x 2 x the tokenizer's rate. Beside it: what one H100 consumes at 40%
  of its bf16 peak (989 TFLOP/s) on ModernBERT-base phase 1 (FLOPs per pair from
  ``transformers.ModernBertConfig()``'s shapes, as ``benchmarks/gpu_check.py`` counts them), the rate the
  GPU check measured (``--gpu-check`` JSON), and the cores the pipeline needs to feed each.
  ``--cold-cache`` (root) drops the page cache before each training run and each pipeline mode, so
  rows come from the disk as in a real phase 1 (one epoch over tables far larger than memory);
  without it they mostly come from the page cache ``prepare`` left. The length
  profile is BERT's WordPiece tokenizer (splade-tiny-bert); ModernBERT's BPE tokenizer is not available
  offline.
- ``sampler``: ``benchmarks/sampler_scale.py``'s measurement of the Feistel same-source sampler at
  238,998,494 rows (plan + first batch time, per-batch time, peak traced bytes and RSS).

Results: one table per part, ``OUT/results/<part>.json``, and all parts so far merged into
``benchmarks/results/data_scale-latest.json``. Timings on a shared machine are contended: ratios are
measured in the same run (the machine's load average is recorded with every part).

    PYTHONPATH=src python benchmarks/data_scale.py --part all                # 20M rows, ~1 h on 2 busy cores
    PYTHONPATH=src python benchmarks/data_scale.py --part train --steps 40   # one part again
    PYTHONPATH=src python benchmarks/data_scale.py --part prepare --fresh    # re-measure the conversion

Disk: ~0.6 KB Parquet + ~0.9 KB Arrow per row (~30 GB at 20M rows); ``OUT`` defaults to
``/work/bench-data/data_scale`` (not the repository, not /tmp).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # single-threaded tokenizer; workers fork

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "scripts"))

from _common import SHARED, format_table, machine_info, write_result  # noqa: E402

PARTS = ("generate", "prepare", "train", "pipeline", "sampler")
PAPER_ROWS = 238_998_494
QUERY_WORDS = (5, 15)  # inclusive ranges: means 10 and 120 words
DOCUMENT_WORDS = (60, 180)
CHUNK_ROWS = 65_536  # rows generated and written at once (one Parquet row group)
MAX_WORD_BYTES = 15
MODEL = SHARED / "models" / "splade-tiny-bert"
WORDS_FROM = SHARED / "data" / "beir" / "scifact" / "corpus.jsonl"
GPU_CHECK = Path("/work/notes/device/gpu_check_run1.json")
H100_BF16_PEAK = 989e12
GIB = 2**30


# ---------------------------------------------------------------------- layout
def source_sizes(total: int) -> dict[str, int]:
    """The 29 phase-1 splits in the paper's proportions, scaled to ``total`` rows (largest remainder)."""
    from preset_data import UNSUPERVISED_ROWS, UNSUPERVISED_SPLITS, UNSUPERVISED_TOTAL

    unknown = [s for s in UNSUPERVISED_SPLITS if s not in UNSUPERVISED_ROWS]
    rest = UNSUPERVISED_TOTAL - sum(UNSUPERVISED_ROWS.values())
    card = dict(UNSUPERVISED_ROWS)
    for i, s in enumerate(unknown):  # only their total is published: equal shares
        card[s] = rest // len(unknown) + (i < rest % len(unknown))
    assert sum(card.values()) == PAPER_ROWS and len(card) == 29
    exact = {s: card[s] * total / PAPER_ROWS for s in UNSUPERVISED_SPLITS}
    sizes = {s: int(v) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: sizes[s] - exact[s])[: total - sum(sizes.values())]:
        sizes[s] += 1
    return sizes


def shard_rows(rows: int) -> tuple[int, int]:
    return rows // 2, rows - rows // 2


def parquet_root(out: Path) -> Path:
    return out / "parquet"


def shard_path(out: Path, source: str, shard: int) -> Path:
    return parquet_root(out) / source / f"part-{shard:05d}.parquet"


def data_sources(out: Path, rows: int, half: bool) -> list[dict[str, Any]]:
    """Phase sources: every source's folder (2N) or its shard 0 (N)."""
    return [
        {
            "name": s,
            "path": str(shard_path(out, s, 0) if half else parquet_root(out) / s),
            "format": "parquet",
            "query": "query",
            "positive": "document",
        }
        for s in source_sizes(rows)
    ]


def phase_config(args: argparse.Namespace, half: bool, output_dir: Path) -> dict[str, Any]:
    """Phase 1 of the colbert-zero preset on BERT-tiny, sized for 2 CPU ranks."""
    per_rank = args.batch // 2
    return {
        "name": "data-scale",
        "model": str(MODEL),
        "model_type": "colbert",
        "output_dir": str(output_dir),
        "sources": data_sources(args.out, args.rows, half),
        "batch_size": args.batch,
        "loss": {"kind": "cached_contrastive", "temperature": 0.02, "mini_batch_size": per_rank},
        "optim": {"learning_rate": 3e-4, "weight_decay": 0.0, "max_grad_norm": 1.0},
        "model_settings": {
            "query_prefix": "[Q] ",
            "document_prefix": "[D] ",
            "embedding_dim": 128,
            "prompts": {"query": "search_query: ", "document": "search_document: "},
            "query_length": 39,
            "document_length": 187,
            "flash_attention_compat": True,
            "attn_implementation": "sdpa",
        },
        "max_steps": args.steps,
        "save_every": args.save_every,
        "keep_checkpoints": 2,
        "log_every": 1,
        "seed": 42,
        "precision": "auto",
        "num_workers": args.train_workers,
        "data_cache": str(cache_dir(args.out)),
    }


def cache_dir(out: Path) -> Path:
    return out / "cache"


def dir_bytes(path: Path, suffix: str = "") -> int:
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file()) if path.exists() else 0


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


def status_fields_kb(pid: int | str, fields: Sequence[str]) -> dict[str, int]:
    """``fields`` of ``/proc/PID/status`` in kB (0 where absent), from one read of the file."""
    found = dict.fromkeys(fields, 0)
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name in found:
                    found[name] = int(value.split()[0])
    except OSError:
        pass
    return found


def status_kb(pid: int | str, field: str) -> int:
    return status_fields_kb(pid, (field,))[field]


def save_part(args: argparse.Namespace, part: str, payload: dict[str, Any]) -> Path:
    """``OUT/results/<part>.json`` and every part so far merged into benchmarks/results."""
    folder = args.out / "results"
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"part": part, "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **payload}
    payload["machine"] = machine_info()
    tmp = folder / f".{part}.json.tmp"
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, folder / f"{part}.json")
    merged = {
        p: json.loads((folder / f"{p}.json").read_text()) for p in PARTS if (folder / f"{p}.json").exists()
    }
    path = write_result("data_scale", {"out": str(args.out), "rows": args.rows, "parts": merged})
    print(f"wrote {folder / f'{part}.json'} and {path}", flush=True)
    return path


def print_table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    print(f"\n== {title}", flush=True)
    print(format_table(headers, rows), flush=True)


def yes(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


# ---------------------------------------------------------------------- part 1: generate
class TextMaker:
    """Random texts of independent words drawn from a real corpus' word frequencies, built in numpy.

    The vocabulary (words of at most 15 bytes) is a zero-padded ``(V, 16)`` byte matrix, each word
    followed by a space; a text of k words is the gather of k rows, cut to each word's length (the last
    word without its space): one boolean mask over the gathered bytes gives the Arrow data buffer, and
    the cumulative row lengths its offsets.
    """

    def __init__(self, corpus: Path, model_vocab: Path) -> None:
        words, counts, self.origin = self._words(corpus, model_vocab)
        self.words = words
        encoded = [w.encode("utf-8") + b" " for w in words]
        self.width = MAX_WORD_BYTES + 1
        self.matrix = np.zeros((len(encoded), self.width), np.uint8)
        for i, e in enumerate(encoded):  # once per vocabulary word, not per generated word
            self.matrix[i, : len(e)] = np.frombuffer(e, np.uint8)
        self.lengths = np.array([len(e) for e in encoded], np.int64)
        p = np.asarray(counts, np.float64) / np.sum(counts)
        self.bytes_per_word = float(p @ self.lengths)
        # alias-free sampling: a 4M-entry table where word i appears ~p_i * 2**22 times (at least once)
        self.table = np.repeat(
            np.arange(len(words), dtype=np.int32), np.maximum(1, np.round(p * (1 << 22))).astype(np.int64)
        )
        self.vocabulary = len(words)

    @staticmethod
    def _words(corpus: Path, model_vocab: Path) -> tuple[list[str], list[int], str]:
        counter: collections.Counter[str] = collections.Counter()
        if corpus.is_file():
            with open(corpus, encoding="utf-8") as fh:
                for line in fh:
                    row = json.loads(line)
                    counter.update(f"{row.get('title', '')} {row.get('text', '')}".split())
            origin = f"word frequencies of {corpus}"
        else:  # Zipf over the model's whole-word vocabulary
            words = [w for w in model_vocab.read_text().split("\n") if w.isalpha() and not w.startswith("##")]
            counter.update({w: int(1e6 / (r + 1)) + 1 for r, w in enumerate(words)})
            origin = f"Zipf over the whole words of {model_vocab}"
        kept = [(w, c) for w, c in counter.most_common() if 0 < len(w.encode("utf-8")) <= MAX_WORD_BYTES]
        return [w for w, _ in kept], [c for _, c in kept], origin

    def strings(self, rng: np.random.Generator, words_per_row: np.ndarray) -> Any:
        """An Arrow StringArray of ``len(words_per_row)`` random texts of that many words."""
        ids = self.table[rng.integers(0, len(self.table), int(words_per_row.sum()))]
        return self.assemble(ids, words_per_row)

    def assemble(self, ids: np.ndarray, words_per_row: np.ndarray) -> Any:
        """The texts ``" ".join(words[ids[...]])`` of consecutive runs of ``words_per_row`` word ids."""
        import pyarrow as pa

        n = len(words_per_row)
        lengths = self.lengths[ids]
        ends = np.cumsum(words_per_row) - 1
        lengths[ends] -= 1  # no space after a text's last word
        mask = np.arange(self.width, dtype=np.int64)[None, :] < lengths[:, None]
        data = self.matrix[ids][mask]
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(np.add.reduceat(lengths, ends - words_per_row + 1), out=offsets[1:])
        if offsets[-1] >= 2**31:
            raise ValueError("a chunk of texts over 2 GiB: lower CHUNK_ROWS")
        return pa.StringArray.from_buffers(n, pa.py_buffer(offsets.astype(np.int32)), pa.py_buffer(data))


def write_shard(maker: TextMaker, path: Path, rows: int, seed: int) -> None:
    """``rows`` random pairs to ``path`` (Parquet, snappy, one row group per chunk), atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("query", pa.string()), ("document", pa.string())])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with pq.ParquetWriter(tmp, schema) as writer:
            for k, start in enumerate(range(0, rows, CHUNK_ROWS)):
                n = min(CHUNK_ROWS, rows - start)
                rng = np.random.default_rng([seed, k])
                queries = maker.strings(rng, rng.integers(QUERY_WORDS[0], QUERY_WORDS[1] + 1, n))
                documents = maker.strings(rng, rng.integers(DOCUMENT_WORDS[0], DOCUMENT_WORDS[1] + 1, n))
                writer.write_table(pa.Table.from_arrays([queries, documents], schema=schema))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def part_generate(args: argparse.Namespace) -> None:
    sizes = source_sizes(args.rows)
    maker = TextMaker(WORDS_FROM, MODEL / "vocab.txt")
    print(
        f"vocabulary: {maker.vocabulary:,} words ({maker.origin}), {maker.bytes_per_word:.2f} bytes/word",
        flush=True,
    )
    for leftover in parquet_root(args.out).rglob(".*.tmp-*") if parquet_root(args.out).exists() else []:
        leftover.unlink()  # a killed run's partial shard
    start = time.perf_counter()
    written = skipped = 0
    for i, (source, rows) in enumerate(sizes.items()):
        for shard, n in enumerate(shard_rows(rows)):
            path = shard_path(args.out, source, shard)
            if path.exists():
                skipped += n
                continue
            t0 = time.perf_counter()
            write_shard(maker, path, n, seed=1000 * i + shard)
            written += n
            dt = time.perf_counter() - t0
            print(
                f"{path.relative_to(args.out)}: {n:,} rows in {dt:.1f} s ({n / dt:,.0f} rows/s)", flush=True
            )
    seconds = time.perf_counter() - start
    parquet = dir_bytes(parquet_root(args.out), ".parquet")
    table = [
        [s, f"{n:,}", f"{n / args.rows:.4f}", f"{dir_bytes(parquet_root(args.out) / s, '.parquet'):,}"]
        for s, n in sizes.items()
    ]
    print_table(
        f"generate: {args.rows:,} pairs in 29 Parquet sources", ["source", "rows", "share", "bytes"], table
    )
    summary = [
        ["rows written now", f"{written:,}"],
        ["rows already present", f"{skipped:,}"],
        ["seconds", f"{seconds:.1f}"],
        ["rows/s (written now)", f"{written / seconds:,.0f}" if written else "-"],
        ["Parquet bytes", f"{parquet:,} ({parquet / GIB:.2f} GiB)"],
        ["bytes/row (Parquet)", f"{parquet / args.rows:.0f}"],
        ["disk free after", f"{disk_free(args.out) / GIB:.1f} GiB"],
    ]
    print_table("generate: summary", ["what", "value"], summary)
    save_part(
        args,
        "generate",
        {
            "rows": args.rows,
            "sizes": sizes,
            "vocabulary": maker.vocabulary,
            "words_from": maker.origin,
            "bytes_per_word": maker.bytes_per_word,
            "query_words": QUERY_WORDS,
            "document_words": DOCUMENT_WORDS,
            "rows_written": written,
            "rows_skipped": skipped,
            "seconds": seconds,
            "parquet_bytes": parquet,
            "disk_free_bytes": disk_free(args.out),
        },
    )


# ---------------------------------------------------------------------- part 2: prepare
def _sources_cfg(args: argparse.Namespace, half: bool) -> Any:
    from colzero.training.config import PhaseConfig

    return PhaseConfig.from_dict(phase_config(args, half, args.out / "runs" / "prepare"))


def part_prepare(args: argparse.Namespace) -> None:
    from colzero.data.sources import load_sources

    cache = cache_dir(args.out)
    if args.fresh and cache.exists():
        shutil.rmtree(cache)
    previous = args.out / "results" / "prepare.json"
    cfg = _sources_cfg(args, half=False)
    rss0 = status_kb("self", "VmRSS")
    start, cpu0 = time.perf_counter(), time.process_time()
    sources = load_sources(cfg.sources, cfg.loss, 1, cache_dir=cache)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu0
    peak_rss = (status_kb("self", "VmHWM")) / 1024
    converted = sum(s.prepare_report.converted_rows for s in sources)
    rows = sum(len(s) for s in sources)
    arrow = dir_bytes(cache / "arrow", ".arrow")
    parquet = dir_bytes(parquet_root(args.out), ".parquet")
    del sources
    reopen = {}
    for label, half in (("N", True), ("2N", False)):
        cfg = _sources_cfg(args, half)
        t0 = time.perf_counter()
        opened = load_sources(cfg.sources, cfg.loss, 1, cache_dir=cache)
        reopen[label] = {"seconds": time.perf_counter() - t0, "rows": sum(len(s) for s in opened)}
        del opened
    per_source = [
        {"source": s.name, "rows": len(s), "converted": s.prepare_report.converted_rows}
        for s in load_sources(cfg.sources, cfg.loss, 1, cache_dir=cache)
    ]
    result = {
        "rows": rows,
        "converted_rows": converted,
        "seconds": seconds,
        "rows_per_s": converted / seconds if converted else None,
        "cpu_seconds": cpu_seconds,
        "rows_per_cpu_s": converted / cpu_seconds if converted else None,
        "load_avg_after": os.getloadavg(),
        "parquet_bytes": parquet,
        "arrow_bytes": arrow,
        "peak_rss_mb": peak_rss,
        "rss_before_mb": rss0 / 1024,
        "reopen": reopen,
        "disk_free_bytes": disk_free(args.out),
        "sources": per_source,
        "bar_rows_per_s_ge_100k": (converted / seconds >= 100_000) if converted else None,
    }
    if not converted and previous.exists():  # nothing to convert: keep the measured conversion
        before = json.loads(previous.read_text())
        if before.get("converted_rows"):
            print("already prepared: the conversion figures are those of the run that converted", flush=True)
            keep = ("converted_rows", "seconds", "rows_per_s", "cpu_seconds", "rows_per_cpu_s", "peak_rss_mb")
            result.update({k: before.get(k) for k in keep})
            result["bar_rows_per_s_ge_100k"] = before.get("bar_rows_per_s_ge_100k")
            result["reopened_only"] = True
    rate = result["rows_per_s"]
    print_table(
        "prepare: Parquet -> memory-mapped Arrow (colzero data prepare's code path)",
        ["what", "value"],
        [
            ["rows (2N)", f"{rows:,}"],
            ["rows converted", f"{result['converted_rows']:,}"],
            ["seconds", f"{result['seconds']:.1f}"],
            ["rows/s", f"{rate:,.0f}" if rate else "-"],
            ["bar >= 100k rows/s", "-" if rate is None else yes(rate >= 100_000)],
            [
                "CPU seconds (all threads)",
                f"{result['cpu_seconds']:.1f}" if result.get("cpu_seconds") else "-",
            ],
            [
                "rows per CPU-second",
                f"{result['rows_per_cpu_s']:,.0f}" if result.get("rows_per_cpu_s") else "-",
            ],
            ["Parquet bytes", f"{parquet:,} ({parquet / GIB:.2f} GiB)"],
            ["Arrow bytes", f"{arrow:,} ({arrow / GIB:.2f} GiB)"],
            ["peak RSS of the prepare process", f"{result['peak_rss_mb']:,.0f} MB"],
            ["reopen N (29 sources)", f"{reopen['N']['seconds']:.2f} s"],
            ["reopen 2N (29 sources)", f"{reopen['2N']['seconds']:.2f} s"],
            ["disk free after", f"{result['disk_free_bytes'] / GIB:.1f} GiB"],
        ],
    )
    save_part(args, "prepare", result)


# ---------------------------------------------------------------------- part 3: train
def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(x) for x in fh.read().split()]
    except OSError:
        return []


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


MEMORY_KEYS = (
    "rank_rss_mb", "rank_anon_mb", "rank_file_mb", "worker_rss_mb", "worker_anon_mb", "worker_file_mb",
    "tree_anon_mb", "tree_pss_mb",
)  # fmt: skip


def _memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and its parts (RssAnon: the process's own memory; RssShmem: shared memory, e.g. batches
    on their way from a worker; RssFile: pages of mapped files, i.e. the memory-mapped tables' page
    cache, which the kernel reclaims under pressure) of a process, in kB."""
    return status_fields_kb(pid, ("VmRSS", "RssAnon", "RssShmem", "RssFile"))


def drop_page_cache() -> None:
    """Empty the kernel's page cache (``--cold-cache``: rows are then read from the disk, as phase 1
    reads its 239M rows once each from tables far larger than memory). Needs root."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
    except OSError as exc:
        raise SystemExit(
            f"--cold-cache: cannot drop the page cache ({exc}); run as root or without it"
        ) from exc


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


class TreeMonitor(threading.Thread):
    """Samples the process tree of a torchrun launch: per rank (the rank and its descendants, i.e. its
    DataLoader workers) the RSS of the rank process, the largest worker RSS and the summed PSS; and
    every new version of ``cost.json``."""

    def __init__(self, root: int, cost_file: Path, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.cost_file, self.interval = root, cost_file, interval
        self.stop = threading.Event()
        self.peak: dict[int, dict[str, float]] = {}
        self.costs: list[dict[str, Any]] = []
        self.samples = 0
        self._cost_mtime = 0

    def run(self) -> None:
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.interval)
        self.sample()

    def sample(self) -> None:
        self.samples += 1
        for pid in _children(self.root):  # torchrun's agent starts the ranks
            rank = _rank_of(pid)
            if rank is None:
                continue
            tree, stack = [], [pid]
            while stack:
                p = stack.pop()
                tree.append(p)
                stack.extend(_children(p))
            workers = tree[1:]
            peak = self.peak.setdefault(rank, dict.fromkeys(MEMORY_KEYS, 0.0) | {"workers": 0})
            status = {p: _memory_kb(p) for p in tree}
            update = {
                "rank_rss_mb": status[pid]["VmRSS"],
                "rank_anon_mb": status[pid]["RssAnon"] + status[pid]["RssShmem"],
                "rank_file_mb": status[pid]["RssFile"],
                "worker_rss_mb": max((status[w]["VmRSS"] for w in workers), default=0),
                "worker_anon_mb": max((status[w]["RssAnon"] + status[w]["RssShmem"] for w in workers), default=0),
                "worker_file_mb": max((status[w]["RssFile"] for w in workers), default=0),
                "tree_anon_mb": sum(v["RssAnon"] + v["RssShmem"] for v in status.values()),
                "tree_pss_mb": sum(_pss_kb(p) for p in tree),
            }  # fmt: skip
            for key, kb in update.items():
                peak[key] = max(peak[key], kb / 1024)
            peak["workers"] = max(peak["workers"], len(workers))
        try:
            mtime = self.cost_file.stat().st_mtime_ns
            if mtime != self._cost_mtime:
                self._cost_mtime = mtime
                self.costs.append(json.loads(self.cost_file.read_text()))
        except (OSError, ValueError):
            pass


def train_once(args: argparse.Namespace, label: str, half: bool) -> dict[str, Any]:
    run_dir = args.out / "runs" / label
    if run_dir.exists():
        shutil.rmtree(run_dir)  # a fresh run every time (--no-resume as well)
    run_dir.mkdir(parents=True)
    cfg = phase_config(args, half, run_dir / "phase")
    config_file = run_dir / "phase.json"
    config_file.write_text(json.dumps(cfg, indent=2))
    if args.cold_cache:
        drop_page_cache()
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p),
    )
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "colzero.cli.main", "train-phase", "--config", str(config_file), "--no-resume",
    ]  # fmt: skip
    log = run_dir / "train.log"
    print(f"[{label}] {' '.join(command)}  (log: {log})", flush=True)
    launch = time.time()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(command, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        monitor = TreeMonitor(proc.pid, run_dir / "phase" / "cost.json")
        monitor.start()
        try:
            rc = proc.wait(timeout=args.train_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait()
            rc = -1
        finally:
            monitor.stop.set()
            monitor.join()
    ended = time.time()
    if rc != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"[{label}] training failed (exit {rc}); the end of {log}:\n{tail}")
    cost = json.loads((run_dir / "phase" / "cost.json").read_text())
    checkpoints = [c for c in monitor.costs if c.get("steps", 0) < cost["steps"]]
    first = checkpoints[0] if checkpoints else None
    steady = None
    if first is not None:
        wall = cost["wall_s"] - first["wall_s"]
        steady = {
            "from_step": first["steps"],
            "steps": cost["steps"] - first["steps"],
            "wall_s": wall,
            "data_wait_s": cost["data_wait_s"] - first["data_wait_s"],
            "wait_fraction": (cost["data_wait_s"] - first["data_wait_s"]) / wall if wall > 0 else None,
        }
    return {
        "label": label,
        "rows": sum(
            source_sizes(args.rows)[s] // 2 if half else source_sizes(args.rows)[s]
            for s in source_sizes(args.rows)
        ),
        "config": str(config_file),
        "command": command,
        "launch_unix": launch,
        "end_unix": ended,
        "launch_to_first_step_s": cost["first_step_unix"] - launch,
        "total_s": ended - launch,
        "cost": cost,
        "step_s": cost["wall_s"] / cost["steps"],
        "wait_fraction_all": cost["data_wait_s"] / cost["wall_s"],
        "steady": steady,
        "monitor": {
            "peak_per_rank": {str(k): v for k, v in sorted(monitor.peak.items())},
            "samples": monitor.samples,
        },
        "load_avg_after": os.getloadavg(),
    }


def unprepared(args: argparse.Namespace) -> list[Path]:
    """Parquet files of the dataset without their Arrow file in the cache (the trainer would convert
    them at launch, which the prepare part measures apart)."""
    from colzero.data.tables import _file_key

    arrow = cache_dir(args.out) / "arrow"
    files = sorted(parquet_root(args.out).rglob("*.parquet"))
    return (
        [f for f in files if not (arrow / f"{_file_key(f)}.arrow").exists()]
        if files
        else [parquet_root(args.out)]
    )


def part_train(args: argparse.Namespace) -> None:
    if not MODEL.is_dir():
        raise SystemExit(f"{MODEL}: BERT-tiny is needed for the training part (set COLZERO_SHARED)")
    missing = unprepared(args)
    if missing:
        raise SystemExit(
            f"{missing[0]} (and {len(missing) - 1} more): not prepared; run --part generate, prepare"
        )
    runs = [train_once(args, label, half) for label, half in (("N", True), ("2N", False))]
    rows = []
    for r in runs:
        peaks = r["monitor"]["peak_per_rank"]
        for rank, rss in enumerate(r["cost"]["peak_rss_mb_per_rank"]):
            m = peaks.get(str(rank), {})
            rows.append(
                [
                    r["label"], f"{r['rows']:,}", rank, f"{rss:,.0f}",
                    f"{m.get('rank_anon_mb', 0):,.0f} / {m.get('rank_file_mb', 0):,.0f}",
                    f"{m.get('worker_anon_mb', 0):,.0f} / {m.get('worker_file_mb', 0):,.0f}",
                    f"{m.get('tree_anon_mb', 0):,.0f}", f"{m.get('tree_pss_mb', 0):,.0f}", m.get("workers", 0),
                    f"{r['launch_to_first_step_s']:.1f}", f"{r['step_s']:.2f}",
                    f"{100 * r['wait_fraction_all']:.2f}%",
                    "-" if not r["steady"] else f"{100 * r['steady']['wait_fraction']:.2f}%",
                ]
            )  # fmt: skip
    headers = [
        "run", "rows", "rank", "peak RSS MB", "rank anon / file MB", "worker anon / file MB",
        "rank+workers anon MB", "rank+workers PSS MB", "workers",
        "launch->1st step s", "s/step", "data wait (all)", "data wait (after 1st ckpt)",
    ]  # fmt: skip
    print_table(
        f"train: {args.steps} steps of phase 1 (BERT-tiny, cached_contrastive, global batch {args.batch}), "
        "torchrun 2 ranks, gloo, CPU",
        headers,
        rows,
    )
    n, n2 = runs
    rss_n = max(n["cost"]["peak_rss_mb_per_rank"])
    rss_2n = max(n2["cost"]["peak_rss_mb_per_rank"])
    tree_n, tree_2n = (max(p["tree_anon_mb"] for p in r["monitor"]["peak_per_rank"].values()) for r in runs)
    bars = {
        "peak_rss_le_2.5GB": max(rss_n, rss_2n) <= 2500,
        "rss_growth_2N_over_N": rss_2n / rss_n,
        "rss_not_growing": rss_2n <= rss_n * 1.05 + 20,
        "rank_and_workers_anon_le_2.5GB": max(tree_n, tree_2n) <= 2500,
        "rank_and_workers_anon_growth_2N_over_N": tree_2n / tree_n,
        "rank_and_workers_anon_not_growing": tree_2n <= tree_n * 1.05 + 20,
        "launch_to_first_step_le_60s": max(r["launch_to_first_step_s"] for r in runs) <= 60,
        "data_wait_le_5pct_all_steps": max(r["wait_fraction_all"] for r in runs) <= 0.05,
        "data_wait_le_5pct_after_first_checkpoint": all(r["steady"] and r["steady"]["wait_fraction"] <= 0.05 for r in runs),
    }  # fmt: skip
    print_table(
        "train: bars",
        ["bar", "value", ""],
        [
            ["peak RSS per rank <= 2.5 GB", f"{max(rss_n, rss_2n):,.0f} MB", yes(bars["peak_rss_le_2.5GB"])],
            ["RSS does not grow N -> 2N (<= 5% + 20 MB)", f"x{bars['rss_growth_2N_over_N']:.3f}", yes(bars["rss_not_growing"])],
            ["rank + its workers, own memory (RssAnon + RssShmem) <= 2.5 GB", f"{max(tree_n, tree_2n):,.0f} MB",
             yes(bars["rank_and_workers_anon_le_2.5GB"])],
            ["rank + its workers, own memory does not grow N -> 2N", f"x{bars['rank_and_workers_anon_growth_2N_over_N']:.3f}",
             yes(bars["rank_and_workers_anon_not_growing"])],
            ["launch -> first step <= 60 s", f"{max(r['launch_to_first_step_s'] for r in runs):.1f} s", yes(bars["launch_to_first_step_le_60s"])],
            ["data wait <= 5% (all steps)", f"{100 * max(r['wait_fraction_all'] for r in runs):.2f}%", yes(bars["data_wait_le_5pct_all_steps"])],
            ["data wait <= 5% (after the 1st checkpoint)",
             f"{100 * max(r['steady']['wait_fraction'] for r in runs if r['steady']):.2f}%" if all(r["steady"] for r in runs) else "-",
             yes(bars["data_wait_le_5pct_after_first_checkpoint"])],
        ],
    )  # fmt: skip
    save_part(
        args,
        "train",
        {
            "steps": args.steps,
            "batch": args.batch,
            "workers_per_rank": args.train_workers,
            "cold_cache": args.cold_cache,
            "runs": runs,
            "bars": bars,
        },
    )


# ---------------------------------------------------------------------- part 4: pipeline
def modernbert_pair_flops(global_batch: int = 16_384) -> dict[str, float]:
    """FLOPs of one phase-1 pair on ModernBERT-base (q 39 / d 187 tokens) from its config's shapes:
    encoder forward F(L) as gpu_check.encoder_flops (2 * linear parameters * L + attention), MaxSim
    forward 2 * Lq * Ld * 128 per (query, document) against ``global_batch`` documents; with GradCache
    the encoders run 4 forward-equivalents (no-grad pass, forward, backward = 2), useful work 3."""
    import torch
    from gpu_check import encoder_flops
    from transformers import AutoModel, ModernBertConfig

    config = ModernBertConfig()
    with torch.device("meta"):
        backbone = AutoModel.from_config(config)
    n_linear = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))
    n_linear += config.hidden_size * 128  # the ColBERT projection
    encoder = encoder_flops(config, n_linear, 39) + encoder_flops(config, n_linear, 187)
    maxsim = 2.0 * 39 * 187 * 128 * global_batch
    return {
        "linear_parameters": n_linear,
        "encoder_forward": encoder,
        "maxsim_forward": maxsim,
        "encoder_gradcache_executed": 4 * encoder,
        "useful": 3 * encoder + 3 * maxsim,
        "executed": 4 * encoder + 4 * maxsim,
    }


def _cpu_seconds() -> tuple[float, float]:
    """CPU seconds of this process and of its live children (DataLoader workers, from /proc)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    children = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _children(os.getpid()):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children += (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15 of stat)
    return me.ru_utime + me.ru_stime, children


def part_pipeline(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    from colzero.data.collate import Collator
    from colzero.data.loader import Position, input_pipeline
    from colzero.data.sampler import SameSourceBatchSampler
    from colzero.data.sources import load_sources
    from colzero.training.trainer import load_start_model

    cfg = _sources_cfg(args, half=False)
    t0 = time.perf_counter()
    sources = load_sources(cfg.sources, cfg.loss, cfg.batch_size, cache_dir=cache_dir(args.out))
    open_s = time.perf_counter() - t0
    if any(s.prepare_report.converted_rows for s in sources):
        print("note: some sources were converted now (run --part prepare first for its figures)", flush=True)
    model = load_start_model(str(MODEL), "colbert", cfg.model_settings, seed=42)
    collate = Collator(model)
    tok = model.tokenizer
    prompts = model.config.prompts
    qlen, dlen = model.config.length_for("query"), model.config.length_for("document")
    sampler = SameSourceBatchSampler(
        [len(s) for s in sources], cfg.batch_size, seed=42, rank=0, world_size=2, drop_last=True
    )
    per_rank = cfg.batch_size // 2
    k = args.pipeline_batches

    def plan(rep: int) -> tuple[Position, list[tuple[int, np.ndarray]]]:
        start = Position(0, 1 + rep * (k + 1))  # other rows every repeat, read cold the first time
        walk = sampler.iter_from(start.epoch, start.step)
        return start, [(int(p.source), np.asarray(p.rows)) for _, _, p in itertools.islice(walk, k + 1)]

    def bare_tokenizer(examples: list[list[Any]]) -> tuple[float, float]:
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()[0]
        for batch in examples:
            tok(
                [(prompts.get("query", "") + e.query).strip() for e in batch],
                truncation=True,
                max_length=qlen - 1,
            )
            tok(
                [(prompts.get("document", "") + e.positive).strip() for e in batch],
                truncation=True,
                max_length=dlen - 1,
            )
        return time.perf_counter() - wall0, _cpu_seconds()[0] - cpu0

    def bare_backend(examples: list[list[Any]]) -> tuple[float, float]:
        """The same texts through the Rust backend's ``encode_batch_fast`` (no offsets): the
        entry point the pipeline itself calls, shown so the gain from choosing it is visible."""
        backends = {
            r: model._truncating_backend(model.row_layout(r).id_budget) for r in ("query", "document")
        }
        encode = {r: getattr(b, "encode_batch_fast", b.encode_batch) for r, b in backends.items()}
        wall0, cpu0 = time.perf_counter(), _cpu_seconds()[0]
        for batch in examples:
            encode["query"]([(prompts.get("query", "") + e.query).strip() for e in batch])
            encode["document"]([(prompts.get("document", "") + e.positive).strip() for e in batch])
        return time.perf_counter() - wall0, _cpu_seconds()[0] - cpu0

    def bare_tokenizer_processes(examples: list[list[Any]], n: int) -> tuple[float, float]:
        """The same texts tokenised by ``n`` forked processes (every n-th batch each): the peer of the
        pipeline with n workers under the same contention."""
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        procs = [ctx.Process(target=bare_tokenizer, args=(examples[i::n],)) for i in range(n)]
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall0 = time.perf_counter()
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        wall = time.perf_counter() - wall0
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return wall, kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime

    def pipeline(start: Position, workers: int) -> tuple[float, float, float, float]:
        if args.cold_cache:  # every mode reads its rows from the disk, not from the previous mode's cache
            drop_page_cache()
        t_start = time.perf_counter()
        loader = input_pipeline(sources, sampler, collate, start, count=k + 1, num_workers=workers)
        it = iter(loader)
        next(it)  # the first batch pays for starting the workers: timed apart
        first = time.perf_counter() - t_start
        wall0, (main0, workers0) = time.perf_counter(), _cpu_seconds()
        for _ in range(k):
            next(it)
        wall, (main1, workers1) = time.perf_counter() - wall0, _cpu_seconds()  # workers still alive
        del it, loader
        return wall, main1 - main0, workers1 - workers0, first

    peer2 = "tokenizer, 2 processes"
    backend = "tokenizer backend, encode_batch_fast"
    modes = ["tokenizer", peer2, backend, "workers=0", "workers=1", "workers=2"]
    loaders = modes[3:]
    wall: dict[str, list[float]] = {m: [] for m in modes}
    cpu: dict[str, list[float]] = {m: [] for m in modes}
    cpu_main: dict[str, list[float]] = {m: [] for m in loaders}
    first: dict[str, list[float]] = {m: [] for m in loaders}
    read_cold = []
    tokens = {"query": [], "document": []}
    for rep in range(args.pipeline_repeats):
        start, batches = plan(rep)
        t0 = time.perf_counter()
        examples = [sources[s].examples(rows) for s, rows in batches[1:]]  # first touch of these rows
        read_cold.append(k * per_rank / (time.perf_counter() - t0))
        if rep == 0:
            for batch in examples[:10]:
                q = collate.tokenize([e.query for e in batch], "query")
                d = collate.tokenize([e.positive for e in batch], "document")
                tokens["query"] += q.attention_mask.sum(1).tolist()
                tokens["document"] += d.attention_mask.sum(1).tolist()
        w, c = bare_tokenizer(examples)
        wall["tokenizer"].append(w)
        cpu["tokenizer"].append(c)
        w, c = bare_tokenizer_processes(examples, 2)
        wall[peer2].append(w)
        cpu[peer2].append(c)
        w, c = bare_backend(examples)
        wall[backend].append(w)
        cpu[backend].append(c)
        for workers in (0, 1, 2):
            w, c_main, c_workers, f = pipeline(start, workers)
            wall[f"workers={workers}"].append(w)
            cpu[f"workers={workers}"].append(c_main + c_workers)
            cpu_main[f"workers={workers}"].append(c_main)
            first[f"workers={workers}"].append(f)
        print(
            f"repeat {rep + 1}/{args.pipeline_repeats}: "
            + ", ".join(f"{m} {k * per_rank / wall[m][-1]:,.0f} pairs/s" for m in modes),
            flush=True,
        )
    pairs = k * per_rank
    rate = {m: pairs / statistics.median(wall[m]) for m in modes}
    rate_cpu = {m: pairs / statistics.median(cpu[m]) for m in modes}
    flops = modernbert_pair_flops()
    gpu = {
        "h100_40pct_encoder_only": 0.4 * H100_BF16_PEAK / flops["encoder_gradcache_executed"],
        "h100_40pct_useful": 0.4 * H100_BF16_PEAK / flops["useful"],
        "h100_40pct_executed": 0.4 * H100_BF16_PEAK / flops["executed"],
    }
    if args.gpu_check.is_file():
        measured = json.loads(args.gpu_check.read_text())
        p1 = measured["phases"]["phase1"]
        gpu["measured_pairs_per_s"] = p1["pairs_per_s"]
        gpu["measured_device"] = measured["device"]["name"]
        gpu["measured_fraction_of_gemm_executed"] = p1["fraction_of_gemm_executed"]
        gpu["measured_flops_per_pair"] = {
            k2: v / p1["shape"]["queries"] for k2, v in p1["flops_per_step"].items()
        }
    per_core = rate_cpu["workers=1"]  # pairs per CPU-second of the whole pipeline (workers + main)
    table = [
        [m, f"{rate[m]:,.0f}", f"{rate_cpu[m]:,.0f}", f"{rate[m] / rate['tokenizer']:.2f}",
         f"{rate_cpu[m] / rate_cpu['tokenizer']:.2f}",
         "-" if m not in loaders else f"{1e3 * statistics.median(cpu_main[m]) / k:.2f}",
         "-" if m not in loaders else f"{statistics.median(first[m]):.2f}"]
        for m in modes
    ]  # fmt: skip
    print_table(
        f"pipeline: pairs/s, {per_rank} pairs per batch, {k} batches x {args.pipeline_repeats} repeats (medians)",
        ["what", "pairs/s (wall)", "pairs per CPU-s", "x tokenizer (wall)", "x tokenizer (CPU)",
         "main-process CPU ms/batch", "first batch s"],
        table,
    )  # fmt: skip
    bar_value = rate["workers=2"] / (2 * rate["tokenizer"])
    peer_value = rate["workers=2"] / rate[peer2]  # the same bar against 2 tokenizer processes measured
    consumers = [
        ["H100 at 40% of bf16 peak, encoders only (4 passes, GradCache)", gpu["h100_40pct_encoder_only"]],
        ["H100 at 40% of bf16 peak, useful FLOPs incl. MaxSim vs 16,384 docs", gpu["h100_40pct_useful"]],
        ["H100 at 40% of bf16 peak, executed FLOPs incl. MaxSim", gpu["h100_40pct_executed"]],
    ]
    if "measured_pairs_per_s" in gpu:
        consumers.append(
            [f"measured on one {gpu['measured_device']} (gpu_check)", gpu["measured_pairs_per_s"]]
        )
    print_table(
        "pipeline: what one GPU consumes, and the cores that feed it "
        f"(BERT WordPiece lengths; {per_core:,.0f} pairs per CPU-second with 1 worker)",
        ["consumer", "pairs/s", "cores (CPU time)", "cores (1-worker wall rate)"],
        [[name, f"{r:,.0f}", f"{r / per_core:.1f}", f"{r / rate['workers=1']:.1f}"] for name, r in consumers],
    )
    print_table(
        "pipeline: bars",
        ["bar", "value", ""],
        [
            ["2 workers >= 0.9 x 2 x tokenizer (wall)", f"{bar_value:.2f} x (2 x tokenizer)", yes(bar_value >= 0.9)],
            ["2 workers >= 0.9 x 2 tokenizer processes measured (wall)", f"{peer_value:.2f} x",
             yes(peer_value >= 0.9)],
            ["2 tokenizer processes / (2 x tokenizer): the machine's parallel headroom",
             f"{rate[peer2] / (2 * rate['tokenizer']):.2f}", ""],
            ["pipeline CPU efficiency vs tokenizer (per CPU-s, 2 workers)",
             f"{rate_cpu['workers=2'] / rate_cpu['tokenizer']:.2f}", ""],
        ],
    )  # fmt: skip
    save_part(
        args,
        "pipeline",
        {
            "pairs_per_batch": per_rank,
            "batches": k,
            "repeats": args.pipeline_repeats,
            "cold_cache": args.cold_cache,
            "sources_open_s": open_s,
            "wall_s": wall,
            "cpu_s": cpu,
            "cpu_s_main_process": cpu_main,
            "first_batch_s": first,
            "pairs_per_s": rate,
            "pairs_per_cpu_s": rate_cpu,
            "read_cold_pairs_per_s": read_cold,
            "tokens_per_text": {
                r: {"mean": float(np.mean(v)), "max": int(np.max(v))} for r, v in tokens.items()
            },
            "tokenizer": f"{MODEL} (BERT WordPiece)",
            "bar_2_workers_over_2x_tokenizer": bar_value,
            "bar_met": bar_value >= 0.9,
            "bar_2_workers_over_2_tokenizer_processes": peer_value,
            "modernbert_flops_per_pair": flops,
            "gpu_consumption_pairs_per_s": gpu,
            "cores_to_feed": {name: r / per_core for name, r in consumers},
        },
    )


# ---------------------------------------------------------------------- part 5: sampler
def part_sampler(args: argparse.Namespace) -> None:
    import sampler_scale

    ns = argparse.Namespace(world_size=args.sampler_world_size, repeats=3, old_scale=1.0)
    results = []
    for batch in (16_384, 64):
        for weighted in (False, True):
            r = sampler_scale.run_case("new", batch, weighted, ns)
            results.append(r)
    rows = [
        [r["batch"], r["mode"], f"{r['rows']:,}", f"{r['plan_s']:.3f}", f"{r['per_batch_ms']:.3f}",
         f"{r['traced_peak_mb']:.1f}", f"{r['rss_delta_mb']:.1f}",
         yes(r["plan_s"] <= 2.0 and max(r["traced_peak_mb"], r["rss_delta_mb"]) <= 200 / 1.048576)]
        for r in results
    ]  # fmt: skip
    print_table(
        f"sampler at {PAPER_ROWS:,} rows in 29 sources (rank 0 of {args.sampler_world_size}; sampler_scale.py)",
        [
            "batch",
            "mode",
            "rows",
            "plan + 1st batch s",
            "ms/batch",
            "traced MiB",
            "RSS+ MiB",
            "<= 2 s, <= 200 MB",
        ],
        rows,
    )
    save_part(args, "sampler", {"world_size": args.sampler_world_size, "results": results})


# ---------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=[*PARTS, "all"], default="all")
    parser.add_argument("--rows", type=int, default=20_000_000, help="2N: rows of the whole dataset")
    parser.add_argument("--out", type=Path, default=Path("/work/bench-data/data_scale"))
    parser.add_argument("--fresh", action="store_true", help="prepare: delete the Arrow cache first")
    parser.add_argument("--steps", type=int, default=30, help="train: optimizer steps per run")
    parser.add_argument(
        "--save-every", type=int, default=10, help="train: checkpoint (and cost.json) interval"
    )
    parser.add_argument("--batch", type=int, default=128, help="train/pipeline: global batch (2 ranks)")
    parser.add_argument("--train-workers", type=int, default=1, help="train: DataLoader workers per rank")
    parser.add_argument("--train-timeout", type=int, default=3600)
    parser.add_argument(
        "--cold-cache",
        action="store_true",
        help="train/pipeline: drop the page cache before each run / mode (root), so rows come from the disk",
    )
    parser.add_argument("--pipeline-batches", type=int, default=100)
    parser.add_argument("--pipeline-repeats", type=int, default=5)
    parser.add_argument("--gpu-check", type=Path, default=GPU_CHECK, help="gpu_check.py JSON (measured rate)")
    parser.add_argument("--sampler-world-size", type=int, default=1)
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.rows < 2 * 29 * args.batch:
        raise SystemExit(
            f"--rows {args.rows} is too small for 29 sources of two shards of >= {args.batch} rows"
        )
    if args.part != "all":
        {
            "generate": part_generate,
            "prepare": part_prepare,
            "train": part_train,
            "pipeline": part_pipeline,
            "sampler": part_sampler,
        }[args.part](args)
        return
    for part in PARTS:  # each part in a fresh process: honest peak memory, no shared state
        argv = [a for a in sys.argv[1:]]
        if "--part" in argv:
            i = argv.index("--part")
            del argv[i : i + 2]
        argv = [a for a in argv if not a.startswith("--part=")]
        print(f"\n##### part {part}", flush=True)
        subprocess.run([sys.executable, __file__, "--part", part, *argv], check=True)


if __name__ == "__main__":
    main()
