"""Results tables: console text, Markdown, JSON and a PNG bar chart per dataset."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from colzero.evaluation.metrics import MAIN_METRIC


def _fmt(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def table_rows(
    scores: dict[str, dict[str, dict[str, float]]], metric: str
) -> tuple[list[str], list[list[str]]]:
    """Rows = datasets (+ mean), columns = models; values in percent."""
    models = list(scores)
    datasets: list[str] = []
    for per_ds in scores.values():
        for ds in per_ds:
            if ds not in datasets:
                datasets.append(ds)
    header = ["dataset", *models]
    rows = []
    for ds in datasets:
        rows.append([ds, *[_fmt(scores[m].get(ds, {}).get(metric)) for m in models]])
    means = []
    for m in models:
        vals = [scores[m][ds][metric] for ds in datasets if ds in scores[m] and metric in scores[m][ds]]
        means.append(_fmt(sum(vals) / len(vals)) if len(vals) == len(datasets) and vals else "-")
    rows.append(["mean", *means])
    return header, rows


def text_table(scores: dict[str, dict[str, dict[str, float]]], metric: str = MAIN_METRIC) -> str:
    """``metric`` x 100 per model (rows) and dataset (columns), as aligned text."""
    header, rows = table_rows(scores, metric)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    out = [f"{metric} (x100)", line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def markdown(results: dict[str, Any], metrics: list[str]) -> str:
    """The results (:meth:`EvaluationResults.to_dict`) as a Markdown report, one table per metric."""
    scores = results["scores"]
    parts = ["# colzero evaluation", ""]
    for metric in metrics:
        header, rows = table_rows(scores, metric)
        parts += [f"## {metric} (x100)", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        parts += ["| " + " | ".join(r) + " |" for r in rows]
        parts.append("")
    parts += ["## Settings", "", "```json", json.dumps(results.get("settings", {}), indent=1), "```", ""]
    return "\n".join(parts)


def bar_charts(
    scores: dict[str, dict[str, dict[str, float]]], metrics: list[str], out_dir: Path
) -> list[Path]:
    """One PNG per dataset: grouped bars (metrics x models)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(scores)
    datasets = sorted({ds for per in scores.values() for ds in per})
    paths = []
    for ds in datasets:
        fig, ax = plt.subplots(figsize=(1.6 + 1.2 * len(metrics) * max(1, len(models)) ** 0.5, 3.6))
        width = 0.8 / max(1, len(models))
        for j, m in enumerate(models):
            vals = [100 * scores[m].get(ds, {}).get(met, float("nan")) for met in metrics]
            xs = [i + (j - (len(models) - 1) / 2) * width for i in range(len(metrics))]
            bars = ax.bar(xs, vals, width, label=m)
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(metrics)), metrics)
        ax.set_ylabel("score x100")
        ax.set_title(ds)
        ax.set_ylim(0, 105)
        ax.legend(fontsize=7, loc="upper left")
        fig.tight_layout()
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in ds)
        path = out_dir / f"{safe}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
