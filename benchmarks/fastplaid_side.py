"""fast-plaid's side of ``benchmarks/index.py``: runs in fast-plaid's own environment.

    FASTPLAID/bin/python benchmarks/fastplaid_side.py build  CACHE/DATASET INDEX_DIR OUT.json --nbits 4
    FASTPLAID/bin/python benchmarks/fastplaid_side.py search CACHE/DATASET INDEX_DIR OUT.json \
        --n-ivf-probe 8 --n-full-scores 4096

Reads the vectors colzero cached (``docs.npy`` (tokens, dim) float32, ``doclens.npy``,
``queries.npy`` (queries, Lq, dim)), so both indexes see the very same vectors. Imports only
numpy, torch and fast_plaid (build the environment with ``bash ../shared/tools/fastplaid-env.sh``).
Each command is one process: its peak RSS is that step's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import peak_rss_mb


def folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["build", "search"])
    ap.add_argument("cache")
    ap.add_argument("index")
    ap.add_argument("out")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--nbits", type=int, default=4)
    ap.add_argument("--n-ivf-probe", type=int, default=8)
    ap.add_argument("--n-full-scores", type=int, default=4096)
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()

    import numpy as np
    import torch
    from fast_plaid import search

    torch.set_num_threads(args.threads)
    result: dict = {}
    if args.step == "build":
        flat = np.load(os.path.join(args.cache, "docs.npy"), mmap_mode="r")
        lens = np.load(os.path.join(args.cache, "doclens.npy"))
        starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
        # fast-plaid takes a list of per-document tensors (it holds them all during create)
        docs = [torch.from_numpy(np.array(flat[s : s + n])) for s, n in zip(starts, lens, strict=True)]
        t0 = time.perf_counter()
        search.FastPlaid(index=args.index, device="cpu").create(documents_embeddings=docs, nbits=args.nbits)
        result["build_s"] = time.perf_counter() - t0
        result["folder_bytes"] = folder_bytes(args.index)
    else:
        queries = torch.from_numpy(np.load(os.path.join(args.cache, "queries.npy")))
        index = search.FastPlaid(index=args.index, device="cpu")
        kw = {"top_k": args.k, "n_ivf_probe": args.n_ivf_probe, "n_full_scores": args.n_full_scores}
        index.search(queries_embeddings=queries[:4], show_progress=False, **kw)  # warm-up
        t0 = time.perf_counter()
        hits = index.search(queries_embeddings=queries, show_progress=False, **kw)
        result["search_s"] = time.perf_counter() - t0
        result["queries"] = len(queries)
        result["hits"] = [[[int(d), float(s)] for d, s in row] for row in hits]
    result["peak_rss_mb"] = peak_rss_mb()
    with open(args.out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
