"""Full evaluation of a MiniLM ColBERT on a BEIR set: colzero vs PyLate, and the exact search stage.

    python benchmarks/evaluate.py                       # beir/scifact, 5,183 docs, 300 queries
    python benchmarks/evaluate.py --subset 500 --queries 50

1. End to end (encode corpus + queries, exact search, metrics), each side in a fresh subprocess:
   wall time and peak memory (max RSS from ``wait4``). colzero runs without its cache. PyLate:
   ``models.ColBERT.encode`` + ``rank.rerank`` over all documents + ``evaluation.evaluate``.
2. Search alone (colzero ``search_colbert`` on the cached corpus vectors): time vs floor =
   FLOPs / measured GEMM rate, FLOPs = 2 * queries * query_length * real document tokens * dim,
   fp32 here (AVX2, no fast bf16).
Results go to ``benchmarks/results/evaluate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, gemm_rate, machine_info, print_table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from pylate_eval_compare import METRICS, PYLATE_PYTHON, PYLATE_SIDE  # noqa: E402

COLZERO_SIDE = r"""
import json, sys, time
t0 = time.perf_counter()
from colzero import ColBERT
from colzero.evaluation import RetrievalSettings, compute_metrics, load_dataset, retrieve
model_dir, data_dir, k, cache, out = sys.argv[1:6]
ds = load_dataset(data_dir)
model = ColBERT.from_pretrained(model_dir)
o = retrieve(model, ds, RetrievalSettings(k=int(k), cache_dir=cache, use_cache=cache != "-"))
res = compute_metrics(ds.qrels, o.run, json.loads(sys.argv[6]))
json.dump({"metrics": res, "timings": o.timings | {"total_s": time.perf_counter() - t0}}, open(out, "w"))
"""


def run_child(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, max RSS MiB) of a fresh subprocess."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024


def write_subset(src: Path, dst: Path, n_docs: int | None, n_queries: int | None) -> Path:
    from colzero.evaluation import load_dataset

    ds = load_dataset(src).subset(n_docs, n_queries)
    (dst / "qrels").mkdir(parents=True)
    with open(dst / "corpus.jsonl", "w") as fh:
        for i, t in zip(ds.corpus_ids, ds.corpus_texts, strict=True):
            fh.write(json.dumps({"_id": i, "title": "", "text": t}) + "\n")
    with open(dst / "queries.jsonl", "w") as fh:
        for i, t in zip(ds.query_ids, ds.query_texts, strict=True):
            fh.write(json.dumps({"_id": i, "text": t}) + "\n")
    with open(dst / "qrels" / "test.tsv", "w") as fh:
        fh.write("query-id\tcorpus-id\tscore\n")
        for q, docs in ds.qrels.items():
            for d, s in docs.items():
                fh.write(f"{q}\t{d}\t{s}\n")
    return dst


def search_stage(model_dir: Path, data: Path, cache: Path, k: int, repeats: int) -> dict:
    import numpy as np
    import torch

    from colzero import ColBERT
    from colzero.evaluation import RetrievalSettings, load_dataset
    from colzero.evaluation.retrieval import _encode, encode_corpus, search_colbert

    ds = load_dataset(data)
    model = ColBERT.from_pretrained(model_dir)
    settings = RetrievalSettings(k=k, cache_dir=cache)
    corpus, hit, _ = encode_corpus(model, ds, settings)
    q = _encode(model, ds.query_texts, "query", settings, output="padded")
    nq, lq, dim = q.embeddings.shape
    tokens = int(corpus.offsets[-1])
    flops = 2.0 * nq * lq * tokens * dim
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        search_colbert(
            q.embeddings, None, corpus, k, budget_bytes=settings.budget_bytes, doc_group=settings.doc_group
        )
        times.append(time.perf_counter() - t0)
    rate = gemm_rate(2048, dim, 16384, torch.float32)
    lengths = np.diff(corpus.offsets)
    return {
        "queries": nq,
        "query_length": lq,
        "documents": len(lengths),
        "doc_tokens": tokens,
        "mean_doc_tokens": float(lengths.mean()),
        "dim": dim,
        "corpus_from_cache": hit,
        "gflop": flops / 1e9,
        "gemm_gflops_fp32": rate,
        "floor_s": flops / 1e9 / rate,
        "search_s": min(times),
        "search_s_all": times,
        "x_floor": min(times) / (flops / 1e9 / rate),
    }


def summarize(result: dict) -> None:
    """Print the end-to-end table (colzero vs PyLate) and the search stage against its floor."""
    sides = [name for name in ("colzero", "pylate") if name in result]
    if sides:
        rows = [
            [name, result[name]["wall_s"], result[name]["max_rss_mib"]]
            + [result[name]["metrics"][m] for m in METRICS]
            for name in sides
        ]
        if len(sides) == 2:
            a, b = (result[name] for name in sides)
            rows.append(
                ["colzero / pylate", a["wall_s"] / b["wall_s"], a["max_rss_mib"] / b["max_rss_mib"]]
                + [a["metrics"][m] - b["metrics"][m] for m in METRICS]
            )
        print_table(["side", "wall s", "max RSS MiB", *METRICS], rows)
    s = result["search"]
    print_table(
        ["search stage", "GFLOP", "fp32 GEMM GFLOP/s", "floor s", "search s (min)", "x floor"],
        [
            [
                "colzero exact MaxSim",
                s["gflop"],
                s["gemm_gflops_fp32"],
                s["floor_s"],
                s["search_s"],
                s["x_floor"],
            ]
        ],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=SHARED / "data" / "beir" / "scifact")
    p.add_argument("--subset", type=int, default=None, help="keep N documents (relevant ones first)")
    p.add_argument("--queries", type=int, default=None, help="keep the first N queries")
    p.add_argument(
        "--model", type=Path, default=None, help="saved ColBERT (default: MiniLM + seeded projection)"
    )
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--repeats", type=int, default=3, help="search-stage repeats")
    p.add_argument("--skip-pylate", action="store_true")
    p.add_argument("--search-only", action="store_true")
    p.add_argument("--out", type=Path, default=RESULTS / "evaluate.json")
    args = p.parse_args(argv)
    from pylate_eval_compare import make_default_model

    result: dict = {"machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or make_default_model(work / "minilm-colbert")
        data = args.dataset
        if args.subset or args.queries:
            data = write_subset(args.dataset, work / "subset", args.subset, args.queries)
        cache = work / "cache"
        if not args.search_only:
            out = work / "colzero.json"
            wall, rss = run_child(
                [
                    sys.executable,
                    "-c",
                    COLZERO_SIDE,
                    str(model),
                    str(data),
                    str(args.k),
                    str(cache),
                    str(out),
                    json.dumps(METRICS),
                ]
            )
            result["colzero"] = json.loads(out.read_text()) | {"wall_s": wall, "max_rss_mib": rss}
            print("colzero", json.dumps(result["colzero"]), flush=True)
            if not args.skip_pylate:
                out = work / "pylate.json"
                wall, rss = run_child(
                    [
                        PYLATE_PYTHON,
                        "-c",
                        PYLATE_SIDE,
                        str(model),
                        str(data),
                        str(args.k),
                        str(out),
                        json.dumps(METRICS),
                    ]
                )
                result["pylate"] = json.loads(out.read_text()) | {"wall_s": wall, "max_rss_mib": rss}
                result["wall_ratio_colzero_over_pylate"] = result["colzero"]["wall_s"] / wall
                print("pylate", json.dumps(result["pylate"]), flush=True)
        result["search"] = search_stage(model, data, cache, args.k, args.repeats)
        print("search", json.dumps(result["search"]), flush=True)
    summarize(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
