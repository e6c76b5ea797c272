"""``colzero serve IDX --host 127.0.0.1 --port N``."""

from __future__ import annotations

import argparse


def _serve(args: argparse.Namespace) -> int:
    from colzero.cli.index import load_index_model
    from colzero.index import Index
    from colzero.serve import ServeLimits, serve

    index = Index.load(args.index, load_index_model(args.model, args.index))
    limits = ServeLimits(
        max_k=args.max_k,
        max_queries=args.max_queries,
        max_chars=args.max_chars,
        max_body_bytes=args.max_body_bytes,
        batch_wait_ms=args.batch_wait_ms,
        max_batch_queries=args.max_batch_queries,
    )
    print(
        f"serving {args.index} (generation {index.generation}, {len(index)} documents) on "
        f"http://{args.host}:{args.port}; it follows the folder's new generations",
        flush=True,
    )
    serve(index, host=args.host, port=args.port, limits=limits)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="serve an index over HTTP (POST /search, /encode; GET /health)")
    p.add_argument("index")
    p.add_argument("--model", default=None, help="default: the model recorded at build")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-k", type=int, default=100)
    p.add_argument("--max-queries", type=int, default=32, help="texts per request")
    p.add_argument("--max-chars", type=int, default=2000, help="characters per text")
    p.add_argument(
        "--max-body-bytes", type=int, default=1 << 20, help="request body limit (413 beyond; default 1 MiB)"
    )
    p.add_argument("--batch-wait-ms", type=float, default=3.0)
    p.add_argument("--max-batch-queries", type=int, default=64, help="queries searched together")
    p.set_defaults(func=_serve)
