"""``colzero index build|add|delete|stats`` and ``colzero search``."""

from __future__ import annotations

import argparse
import json
import sys


def load_index_model(name: str | None, index_path: str | None = None):
    """The model named by `--model`, else the one recorded in the index's metadata.json."""
    from colzero import load_model

    if name is None and index_path is not None:
        from pathlib import Path

        from colzero.index.generations import published_metadata

        name = published_metadata(Path(index_path)).get("model_name")
        if not name:
            raise ValueError(f"{index_path}: no model recorded in metadata.json; pass --model")
    return load_model(name).eval()


def _build(args: argparse.Namespace) -> int:
    import os

    from colzero.index import Index, SearchSettings, build_sharded

    _stop_if_busy(args.output, args.wait)
    model = load_index_model(args.model)
    kwargs = {
        "codec": args.codec,
        "nbits": args.nbits,
        "residual_bytes": args.residual_bytes,
        "n_centroids": args.centroids,
        "chunk_size": args.chunk_size,
        "batch_size": args.batch_size,
        "store_texts": args.store_texts,
        "store_fields": not args.no_store_fields,
        "store_vectors": args.store_vectors,
        "settings": SearchSettings(
            **{k: v for k, v in (("nprobe", args.nprobe), ("ncandidates", args.ncandidates)) if v is not None}
        ),
        "model_name": args.model,
        "wait": args.wait,
    }
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: each rank encodes a shard
        idx = build_sharded(model, args.corpus, args.output, shard_dtype=args.shard_dtype, **kwargs)
        if idx is None:  # not rank 0: rank 0 built the index and prints its stats
            return 0
    else:
        idx = Index.build(model, args.corpus, args.output, **kwargs)
    print(json.dumps(idx.stats()))
    return 0


def _stop_if_busy(path: str, wait: float) -> None:
    """Without --wait, a busy index stops the command before it loads a model."""
    if wait <= 0:
        from pathlib import Path

        from colzero.index.generations import check_writable

        check_writable(Path(path))


def _add(args: argparse.Namespace) -> int:
    from colzero.index import Index

    _stop_if_busy(args.index, args.wait)
    idx = Index.load(args.index, load_index_model(args.model, args.index))
    added = idx.add(args.corpus, batch_size=args.batch_size, wait=args.wait)
    print(json.dumps({"added": added, "documents": len(idx), "generation": idx.generation}))
    return 0


def _delete(args: argparse.Namespace) -> int:
    from pathlib import Path

    from colzero.index import Index

    ids = list(args.ids)
    if args.ids_file:
        from colzero.data.readers import iter_lines

        ids += [line.strip() for _, line in iter_lines(Path(args.ids_file))]
    if not ids:
        raise ValueError("no ids to delete: give IDs or --ids-file")
    _stop_if_busy(args.index, args.wait)
    idx = Index.load(args.index)
    try:
        n = idx.delete(ids, missing="ignore" if args.ignore_missing else "error", wait=args.wait)
    except KeyError as exc:
        raise ValueError(f"{args.index}: {exc.args[0]}") from None
    print(json.dumps({"deleted": n, "documents": len(idx), "generation": idx.generation}))
    return 0


def _stats(args: argparse.Namespace) -> int:
    from colzero.index import Index

    print(json.dumps(Index.load(args.index, verify=True).stats(), indent=2))
    return 0


def _search(args: argparse.Namespace) -> int:
    from colzero.index import Index, parse_filter

    flt = parse_filter(args.filter) if args.filter is not None else None
    idx = Index.load(args.index, load_index_model(args.model, args.index))
    results = idx.search(
        list(args.query),
        k=args.k,
        nprobe=args.nprobe,
        ncandidates=args.ncandidates,
        rerank=args.rerank,
        filter=flt,
    )
    for q, hits in zip(args.query, results, strict=True):
        stored = idx.fields([d for d, _ in hits], args.fields) if args.fields else [{}] * len(hits)
        rows = [
            {"id": d, "score": round(s, 4), **{n: _snippet(v, args.snippet) for n, v in f.items()}}
            for (d, s), f in zip(hits, stored, strict=True)
        ]
        json.dump({"query": q, "results": rows}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    return 0


def _snippet(value, length: int):
    """Strings cut to ``length`` characters (at a word boundary, with an ellipsis)."""
    if not isinstance(value, str) or length <= 0 or len(value) <= length:
        return value
    cut = value[:length].rsplit(" ", 1)[0] or value[:length]
    return cut + "…"


def _wait_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="when another process is writing to the index, wait up to SECONDS for it (default: stop "
        "at once, leaving the index untouched, exit code 75)",
    )


BUILD_DESCRIPTION = """\
Encode a corpus (JSONL: _id, title, text) into an index folder, written atomically.

Several processes or GPUs: run the same command under torchrun, e.g.

  torchrun --standalone --nproc-per-node 4 -m colzero.cli.main index build --model M --corpus C --output OUT

Each rank encodes a contiguous shard of the corpus (on cuda:LOCAL_RANK, else the CPU) into a
temporary file next to OUT; rank 0 then builds the index from them in document order: the index
a one-process build on the same kind of device writes, up to float16 rounding of the stored
vectors (--shard-dtype float32: none). Python: colzero.index.build_sharded.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("index", help="build and update a PLAID-style index")
    sub = p.add_subparsers(dest="index_command", metavar="ACTION", required=True)

    b = sub.add_parser(
        "build",
        help="encode a corpus (JSONL: _id, title, text) into an index folder",
        description=BUILD_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument("--model", required=True)
    b.add_argument("--corpus", required=True)
    b.add_argument("--output", required=True)
    b.add_argument(
        "--codec",
        choices=("pq", "scalar"),
        default="pq",
        help="residual codec: pq (default, faiss product quantisation, --residual-bytes per vector) or "
        "scalar (ColBERTv2's per-value buckets, --nbits 2 or 4)",
    )
    b.add_argument("--nbits", type=int, choices=(2, 4), default=None, help="scalar codec only (default 2)")
    b.add_argument(
        "--residual-bytes",
        type=int,
        default=None,
        help="pq codec only: bytes per token residual (default dim / 2, e.g. 64 for 128-d vectors: "
        "66 B per token with the centroid id; dim gives near-exact scores, dim / 4 the smallest index)",
    )
    b.add_argument(
        "--centroids", type=int, default=None, help="default: PLAID's 2**floor(log2(16 sqrt(#tokens)))"
    )
    b.add_argument("--chunk-size", type=int, default=4096)
    b.add_argument("--batch-size", type=int, default=32)
    b.add_argument("--nprobe", type=int, default=None, help="search default stored with the index")
    b.add_argument("--ncandidates", type=int, default=None, help="search default stored with the index")
    b.add_argument("--store-texts", action="store_true", help="keep texts (enables rerank=exact)")
    b.add_argument(
        "--store-vectors",
        action="store_true",
        help="also keep the token vectors in float16 (2 * dim bytes per token more): the final "
        "candidates are scored with them (near-exact recall; pair with a wider --ncandidates)",
    )
    b.add_argument(
        "--no-store-fields",
        action="store_true",
        help="do not keep the corpus rows' JSON fields (title, text, metadata): no --filter, no "
        "titles or snippets in search results",
    )
    b.add_argument(
        "--shard-dtype",
        choices=("float16", "float32"),
        default="float16",
        help="under torchrun: precision of the temporary per-rank vector files (default float16)",
    )
    _wait_option(b)
    b.set_defaults(func=_build)

    a = sub.add_parser("add", help="add documents (new segment, existing centroids)")
    a.add_argument("index")
    a.add_argument("--corpus", required=True)
    a.add_argument("--model", default=None, help="default: the model recorded at build")
    a.add_argument("--batch-size", type=int, default=32)
    _wait_option(a)
    a.set_defaults(func=_add)

    d = sub.add_parser("delete", help="delete documents by id (tombstones)")
    d.add_argument("index")
    d.add_argument("ids", nargs="*")
    d.add_argument("--ids-file", default=None)
    d.add_argument("--ignore-missing", action="store_true")
    _wait_option(d)
    d.set_defaults(func=_delete)

    s = sub.add_parser("stats", help="verify checksums and print sizes")
    s.add_argument("index")
    s.set_defaults(func=_stats)

    q = subparsers.add_parser("search", help="search an index")
    q.add_argument("index")
    q.add_argument("query", nargs="+")
    q.add_argument("-k", type=int, default=10)
    q.add_argument("--model", default=None, help="default: the model recorded at build")
    q.add_argument("--nprobe", type=int, default=None)
    q.add_argument("--ncandidates", type=int, default=None)
    q.add_argument("--rerank", choices=("exact",), default=None)
    q.add_argument(
        "--filter",
        default=None,
        metavar="JSON",
        help='only documents whose stored fields match, e.g. \'{"year": 2020, "source": ["a", "b"]}\' '
        '(all fields must match; a list means any of; null means missing; "_id" is the id)',
    )
    q.add_argument(
        "--fields",
        nargs="*",
        default=["title", "text"],
        metavar="NAME",
        help="stored fields to print with each hit (default: title text; --fields alone: none)",
    )
    q.add_argument("--snippet", type=int, default=200, help="cut printed strings to N characters (0: whole)")
    q.set_defaults(func=_search)
