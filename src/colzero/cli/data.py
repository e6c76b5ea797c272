"""Data tools: ``colzero pairs``, ``colzero mine``, ``colzero score``."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser(
        "data", help="prepare (convert once to memory-mapped Arrow) or check the data of a recipe"
    )
    dsub = d.add_subparsers(dest="data_command", required=True)
    for name, helptext in (
        ("prepare", "convert every source and id table of a recipe to Arrow in the cache (resumable)"),
        ("check", "read and check every row of a recipe's sources (file, line and field of the first error)"),
    ):
        c = dsub.add_parser(name, help=helptext)
        c.add_argument("recipe", help="a recipe .toml file or a preset name")
        c.add_argument("--phase", action="append", help="only these phases (names; repeatable)")
        c.add_argument("--output", "-o", default=None, help="the run folder (resolves ${run} in paths)")
        c.add_argument(
            "--cache", default=None, help="Arrow cache folder (default $COLZERO_CACHE or ~/.cache/colzero)"
        )
        c.set_defaults(func=_data_prepare if name == "prepare" else _data_check)

    p = subparsers.add_parser(
        "pairs", help="weak (query, document) pairs from a corpus (title→body, first sentence→rest)"
    )
    p.add_argument("corpus", help="BEIR corpus.jsonl or its folder")
    p.add_argument("output", help="output JSONL {query, document, doc_id, rule}")
    p.add_argument("--mode", choices=["auto", "title", "sentence"], default="auto")
    p.add_argument("--min-words", type=int, default=3)
    p.add_argument("--max-pairs", type=int, default=None)
    p.set_defaults(func=_pairs)

    m = subparsers.add_parser(
        "mine", help="hard negatives for (query, positive) JSONL with BM25 and/or a model"
    )
    m.add_argument("input", help="JSONL rows with a query text and positive id(s)")
    m.add_argument("documents", help="BEIR corpus.jsonl (ids of positives / negatives)")
    m.add_argument("output")
    m.add_argument("--model", default=None, help="a colzero-loadable model (ColBERT or dense)")
    m.add_argument("--no-bm25", action="store_true")
    m.add_argument("-k", type=int, default=30, help="candidates per retriever")
    m.add_argument("--n-negatives", type=int, default=20)
    m.add_argument(
        "--margin", type=float, default=0.95, help="negative-score filter (see --margin-mode); <0 disables"
    )
    m.add_argument(
        "--margin-mode",
        choices=["relative", "absolute"],
        default="relative",
        help="relative: drop negatives scoring > margin×positive; absolute: drop those > positive−margin",
    )
    m.add_argument("--query-key", default="query")
    m.add_argument("--positive-key", default="pos")
    m.add_argument(
        "--drop-unknown",
        action="store_true",
        help="drop positive ids that are not in DOCUMENTS (and rows left without one), with a count; "
        "default: such an id is an error naming its line",
    )
    m.set_defaults(func=_mine)

    s = subparsers.add_parser("score", help="teacher scores for KD data: {query_id, document_ids, scores}")
    s.add_argument("model", help="teacher: colzero model (ColBERT/dense) or a transformers cross-encoder")
    s.add_argument("input", help="JSONL with query/query_id and pos+neg ids (or --candidate-ids column)")
    s.add_argument("documents", help="BEIR corpus.jsonl")
    s.add_argument("output")
    s.add_argument("--queries", default=None, help="BEIR queries.jsonl when rows carry only query ids")
    s.add_argument("--n-candidates", type=int, default=32)
    s.add_argument("--max-queries", type=int, default=None)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--max-length", type=int, default=None)
    s.add_argument("--candidate-ids", default=None, help="column with candidate ids (else pos + neg)")
    s.add_argument(
        "--drop-unknown",
        action="store_true",
        help="drop positive ids that are not in DOCUMENTS (and rows left without one), with a count; "
        "default: such an id is an error naming its line",
    )
    s.set_defaults(func=_score)


def _pairs(args: argparse.Namespace) -> int:
    from colzero.data.pairs import build_pairs

    n = build_pairs(
        args.corpus, args.output, mode=args.mode, min_words=args.min_words, max_pairs=args.max_pairs
    )
    print(f"wrote {n} pairs to {args.output}")
    return 0


def _mine(args: argparse.Namespace) -> int:
    from colzero.data.mining import mine_file

    n = mine_file(
        args.input,
        args.documents,
        args.output,
        model=args.model,
        bm25=not args.no_bm25,
        k=args.k,
        n_negatives=args.n_negatives,
        margin=None if args.margin < 0 else args.margin,
        margin_mode=args.margin_mode,
        query_key=args.query_key,
        positive_key=args.positive_key,
        drop_unknown=args.drop_unknown,
    )
    print(f"wrote {n} rows with mined negatives to {args.output}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from colzero.data.teacher import score_file

    n = score_file(
        args.model,
        args.input,
        args.documents,
        args.output,
        queries=args.queries,
        n_candidates=args.n_candidates,
        max_queries=args.max_queries,
        batch_size=args.batch_size,
        max_length=args.max_length,
        candidate_ids=args.candidate_ids,
        drop_unknown=args.drop_unknown,
    )
    print(f"wrote {n} scored queries to {args.output}")
    return 0


def _recipe_sources(args: argparse.Namespace):
    """(phase name, loss config, sources) of the phases a ``colzero data`` command works on."""
    from pathlib import Path

    from colzero.training.pipeline import default_run_dir
    from colzero.training.recipe import load_recipe

    probe = load_recipe(args.recipe)
    run_dir = Path(args.output or default_run_dir(probe.name)).resolve()
    recipe = load_recipe(args.recipe, run_dir=run_dir)
    for i, p in enumerate(recipe.phases):
        if args.phase and p.name not in args.phase:
            continue
        cfg = recipe.phase_config(i, model="<start>", output_dir=run_dir / recipe.phase_dir_name(i))
        yield p.name, cfg


def _data_prepare(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from colzero.data.sources import load_sources
    from colzero.data.tables import cache_root

    table = Table(title=f"prepared into {cache_root(args.cache)}")
    for col in ("phase", "source", "rows", "converted rows", "seconds", "rows/s", "Arrow bytes"):
        table.add_column(col)
    for phase, cfg in _recipe_sources(args):
        for src in load_sources(cfg.sources, cfg.loss, 1, cache_dir=args.cache):
            r = src.prepare_report
            rate = f"{r.rows_per_s:,.0f}" if r.converted_rows else "-"
            table.add_row(
                phase,
                src.name,
                f"{r.rows:,}",
                f"{r.converted_rows:,}",
                f"{r.seconds:.1f}",
                rate,
                f"{r.bytes_on_disk:,}",
            )
    Console(width=None if Console().is_terminal else 160).print(table)
    return 0


def _data_check(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from colzero.data.sources import load_sources

    for phase, cfg in _recipe_sources(args):
        for src in load_sources(cfg.sources, cfg.loss, 1, cache_dir=args.cache):
            with tqdm(total=len(src), desc=f"{phase}/{src.name}", unit="row") as bar:
                done = 0
                for n in src.check_all():
                    bar.update(n - done)
                    done = n
    print("every row is valid")
    return 0
