"""PyLate side of the colzero <-> PyLate checks; run it with a python that has PyLate 1.6.

Does not import colzero (PyLate lives in its own environment). Two commands:

    encode  --model DIR --input texts.json --output vectors.npz
            texts.json: {"queries": [...], "documents": [...]}; the model's saved prompts are
            applied (prompt_name "query" / "document") when it has them, as colzero does by
            default. Writes q0..qN / d0..dN arrays (float32, one token matrix per text).
    bench   --model DIR --input texts.json --output timings.json [--batch-size 32 --repeats 3]
            encodes the documents repeatedly; writes {"seconds": [...], "n_docs", "n_tokens", ...}.

Usage (from the repository root)::

    /work/pylate-venv/bin/python scripts/pylate_interop.py encode --model M --input T --output O
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def load(model_dir: str, threads: int | None):
    if threads:
        torch.set_num_threads(threads)
    from pylate import models

    return models.ColBERT(model_name_or_path=model_dir, device="cpu")


def prompt_name(model, role: str) -> str | None:
    return role if role in (getattr(model, "prompts", None) or {}) else None


def encode(model, texts: list[str], role: str, batch_size: int) -> list[np.ndarray]:
    out = model.encode(
        texts,
        is_query=role == "query",
        batch_size=batch_size,
        prompt_name=prompt_name(model, role),
        show_progress_bar=False,
    )
    return [np.asarray(v, dtype=np.float32) for v in out]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("command", choices=["encode", "bench"])
    parser.add_argument("--model", required=True)
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    with open(args.input, encoding="utf-8") as f:
        texts = json.load(f)
    model = load(args.model, args.threads)
    import pylate

    if args.command == "encode":
        arrays = {}
        for role, key, tag in (("query", "queries", "q"), ("document", "documents", "d")):
            for i, v in enumerate(encode(model, texts.get(key, []), role, args.batch_size)):
                arrays[f"{tag}{i}"] = v
        np.savez(args.output, **arrays)
        print(f"pylate {pylate.__version__}: wrote {len(arrays)} matrices to {args.output}")
        return
    docs = texts["documents"]
    encode(model, docs[: min(8, len(docs))], "document", args.batch_size)  # warm-up
    seconds = []
    n_tokens = 0
    for _ in range(args.repeats):
        start = time.perf_counter()
        with torch.inference_mode():
            vecs = encode(model, docs, "document", args.batch_size)
        seconds.append(time.perf_counter() - start)
    tok = model.tokenize(docs, is_query=False)  # real (unpadded) token counts, as colzero counts them
    n_tokens = int(tok["attention_mask"].sum())
    result = {
        "pylate_version": pylate.__version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "n_docs": len(docs),
        "n_tokens": n_tokens,
        "n_vectors": int(sum(v.shape[0] for v in vecs)),
        "batch_size": args.batch_size,
        "seconds": seconds,
    }
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
