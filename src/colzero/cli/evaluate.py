"""``colzero evaluate MODEL... --datasets PATH...``: BEIR evaluation (exact or index search) and reports."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="evaluate models on retrieval datasets (nDCG@10, MRR@10, Recall@100, MAP@100)",
        description="Exact search (MaxSim for ColBERT, dot/cosine for dense models); corpus embeddings "
        "are cached on disk. Prints a datasets x models table, writes results.json, results.md and one "
        "PNG per dataset into --output.",
    )
    p.add_argument("models", nargs="+", help="model folders or hub names (ColBERT or dense)")
    p.add_argument(
        "--datasets",
        nargs="+",
        required=True,
        help="BEIR folders, MS MARCO TSV folders, local HF folders, or hub names (hf:BeIR/scifact)",
    )
    p.add_argument("--split", default="test")
    p.add_argument("--output", type=Path, default=Path("eval-results"), help="report folder")
    p.add_argument("-k", type=int, default=100, help="hits per query (default 100)")
    p.add_argument("--query-length", type=int, default=None)
    p.add_argument("--document-length", type=int, default=None)
    p.add_argument("--query-prompt", default=None, help="text prepended to queries ('' = none)")
    p.add_argument("--document-prompt", default=None)
    p.add_argument(
        "--per-dataset",
        default=None,
        help='JSON of per-dataset overrides, e.g. \'{"arguana": {"query_length": 64}}\'',
    )
    p.add_argument(
        "--query-lengths",
        "--preset",
        dest="preset",
        choices=["colbert-zero"],
        default=None,
        help="per-dataset query lengths of a preset (colbert-zero: 48 for SciFact, TREC-COVID, SCIDOCS; "
        "64 for ArguAna, ClimateFEVER), where --query-length / --per-dataset set none",
    )
    p.add_argument(
        "--search",
        choices=["exact", "index"],
        default="exact",
        help="exact search, or search through a PLAID index built per model and dataset (ColBERT "
        "models; dense models stay exact). The authors' published numbers use PLAID",
    )
    p.add_argument(
        "--nprobe", type=int, default=None, help="--search index: centroids probed per query token"
    )
    p.add_argument("--ncandidates", type=int, default=None, help="--search index: candidates scored exactly")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    p.add_argument(
        "--keep-self-hits", action="store_true", help="let a query retrieve the document with its id"
    )
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from colzero.cli.live import run_view
    from colzero.cli.term import console as get_console
    from colzero.evaluation import RetrievalSettings, evaluate

    settings = RetrievalSettings(
        k=args.k,
        query_length=args.query_length,
        document_length=args.document_length,
        query_prompt=args.query_prompt,
        document_prompt=args.document_prompt,
        batch_size=args.batch_size,
        precision=args.precision,
        remove_self_hits=not args.keep_self_hits,
        use_cache=not args.no_cache,
        cache_dir=args.cache_dir,
        show_progress=args.progress,
    )
    per_dataset = json.loads(args.per_dataset) if args.per_dataset else None
    retriever = None
    if args.search == "index":
        from colzero.index.retrieval import IndexEvaluation, IndexRetriever

        retriever = IndexRetriever(IndexEvaluation(nprobe=args.nprobe, ncandidates=args.ncandidates))
    console = get_console()
    with run_view(console, "colzero evaluate", enabled=not args.progress) as view:
        results = evaluate(
            args.models,
            args.datasets,
            settings=settings,
            per_dataset=per_dataset,
            preset=args.preset,
            split=args.split,
            output_dir=args.output,
            plots=not args.no_plots,
            device=args.device,
            progress=view,
            retriever=retriever,
        )
    lengths = (
        "--query-length"
        if args.query_length
        else f"{args.preset} preset"
        if args.preset
        else "the model's own"
    )
    for name, used in results.settings.items():  # how each dataset was searched
        console.print(
            f"{name}: {used['search']} search, query length {used['query_tokens']} ({lengths}), "
            f"document length {used['document_tokens']}",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
    console.print(metrics_table(results.scores, results.metrics))
    console.print("wrote " + ", ".join(results.files.values()), soft_wrap=True, markup=False)
    return 0


def metrics_table(scores: dict[str, dict[str, dict[str, float]]], metrics: list[str]) -> Any:
    """Every metric x 100 per dataset and model, and each model's mean over the datasets."""
    from rich.table import Table

    table = Table(title="colzero evaluate (x100)")
    table.add_column("dataset")
    table.add_column("model")
    for m in metrics:
        table.add_column(m, justify="right")
    datasets = list(dict.fromkeys(d for per_model in scores.values() for d in per_model))
    for d in datasets:
        for model, per_model in scores.items():
            if d in per_model:
                table.add_row(d, model, *[f"{100 * per_model[d][m]:.2f}" for m in metrics])
    for model, per_model in scores.items():
        means = [sum(v[m] for v in per_model.values()) / len(per_model) for m in metrics]
        table.add_row("mean", model, *[f"{100 * v:.2f}" for v in means], style="bold")
    return table
