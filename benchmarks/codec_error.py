"""How much each residual codec perturbs MaxSim, with EVERY token decompressed (no candidate stage).

Reads a corpus cached by ``benchmarks/index.py`` (``docs.npy``, ``doclens.npy``, ``queries.npy``
under ``--cache/<dataset>``), trains each codec on a 250k-vector sample, compresses and
decompresses the whole corpus, and prints per codec: recall@10 of the decompressed top 10 against
exact MaxSim, the mean squared reconstruction error per vector, and the standard deviation of the
MaxSim score error, next to the median gap between the exact 10th and 11th scores (the margin
a codec has to stay under for recall@10 to hold).

    python benchmarks/codec_error.py --cache /tmp/colzero-bench-learned --dataset scifact
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, write_result


def maxsim_scores(queries: np.ndarray, docs: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """(queries, documents) exact MaxSim over a flat (tokens, dim) corpus; 8 queries at a time."""
    flat = torch.from_numpy(np.ascontiguousarray(docs))
    out = []
    for s in range(0, len(queries), 8):
        q = torch.from_numpy(queries[s : s + 8]).reshape(-1, queries.shape[2])
        sim = (q @ flat.T).numpy()
        per_doc = np.maximum.reduceat(sim, starts, axis=1)
        out.append(per_doc.reshape(-1, queries.shape[1], len(starts)).sum(1))
    return np.concatenate(out)


def main() -> int:
    from colzero.index.codec import PQResidualCodec, ResidualCodec

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/colzero-bench"))
    ap.add_argument("--dataset", default="scifact")
    ap.add_argument("--queries", type=int, default=120)
    ap.add_argument("--centroids", type=int, default=8192)
    args = ap.parse_args()
    folder = args.cache / args.dataset
    docs = np.load(folder / "docs.npy")
    lens = np.load(folder / "doclens.npy")
    queries = np.load(folder / "queries.npy")[: args.queries]
    starts = np.concatenate([[0], np.cumsum(lens)[:-1]])
    exact = maxsim_scores(queries, docs, starts)
    top = np.argsort(-exact, axis=1)[:, :10]
    ranked = -np.sort(-exact, axis=1)
    gap = float(np.median(ranked[:, 9] - ranked[:, 10]))
    rng = np.random.default_rng(0)
    sample = docs[rng.choice(len(docs), min(len(docs), 250_000), replace=False)]
    dim = docs.shape[1]
    codecs = {
        f"pq {dim // 4} B": lambda: PQResidualCodec.train(
            sample, args.centroids, bytes_per_residual=dim // 4
        ),
        f"pq {dim // 2} B": lambda: PQResidualCodec.train(
            sample, args.centroids, bytes_per_residual=dim // 2
        ),
        f"pq {dim} B": lambda: PQResidualCodec.train(sample, args.centroids, bytes_per_residual=dim),
        "scalar 2-bit": lambda: ResidualCodec.train(sample, args.centroids, 2),
        "scalar 4-bit": lambda: ResidualCodec.train(sample, args.centroids, 4),
    }
    rows, result = [], {"median_gap_rank10_rank11": gap, "median_top_score": float(np.median(ranked[:, 0]))}
    for name, train in codecs.items():
        codec = train()
        codes, packed = codec.compress(docs)
        approx = codec.decompress(codes, packed)
        scores = maxsim_scores(queries, approx, starts)
        got = np.argsort(-scores, axis=1)[:, :10]
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, top, strict=True)]))
        mse = float(((approx - docs) ** 2).sum(1).mean())
        err = float(np.std(scores - exact))
        result[name] = {
            "bytes": codec.bytes_per_residual + 2,
            "recall@10": recall,
            "mse": mse,
            "score_err_std": err,
        }
        rows.append([name, codec.bytes_per_residual + 2, recall, mse, err, gap])
    print_table(
        ["codec", "B/vector", "recall@10 (all decompressed)", "squared error", "score err std", "gap 10-11"],
        rows,
    )
    write_result("codec_error", {"args": {k: str(v) for k, v in vars(args).items()}, **result})
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
