"""The experiment report: ``results.json``, ``report.md`` and PNG charts from per-query scores.

Inputs (:class:`Collected`): per route, dataset and seed the per-query nDCG@10; per route and
seed the measured training cost. Definitions used throughout (values in nDCG@10 x 100):

- a route's score on a dataset: the mean over queries of the query's nDCG@10 averaged over the
  seeds the route was run with (= the mean over seeds of the per-seed nDCG@10); interval: 95%
  percentile bootstrap over queries (:func:`colzero.experiment.stats.bootstrap_ci`);
- a route's overall score: the mean over datasets (macro mean), interval from the bootstrap
  stratified by dataset;
- comparisons: per-query differences of the seed-averaged scores on the same queries (seeds
  pooled by averaging), the bootstrap interval of the mean difference and the two-sided paired
  randomisation test (:func:`colzero.experiment.stats.compare_paired`);
- a finding "A > B" is *reproduced* when the interval of A - B is above 0, *not reproduced*
  when it is below 0, *inconclusive at this scale* otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from colzero.experiment.grid import FindingSpec, PaperNumbers, StatisticsSpec
from colzero.experiment.stats import Interval, bootstrap_ci, compare_paired, verdict

SCALE = 100.0  # report nDCG@10 in points


@dataclass
class RouteInfo:
    name: str
    label: str
    paper: PaperNumbers | None = None
    description: str | None = None


@dataclass
class Collected:
    grid: str
    reference: str
    seeds: list[int]
    routes: list[RouteInfo]
    #: name -> {"n_queries", "n_documents", "note", "settings"}
    datasets: dict[str, dict[str, Any]]
    #: route -> dataset -> seed -> {query id: nDCG@10 in [0, 1]}
    scores: dict[str, dict[str, dict[int, dict[str, float]]]]
    #: route -> seed -> {"total_s", "own_s", "device_hours", "own_device_hours", "phases", "own_phases",
    #: "tokens"}
    costs: dict[str, dict[int, dict[str, float]]] = field(default_factory=dict)
    findings: list[FindingSpec] = field(default_factory=list)
    statistics: StatisticsSpec = field(default_factory=StatisticsSpec)
    description: str = ""
    notes: list[str] = field(default_factory=list)
    paper_source: str = ""
    #: route -> dataset -> seed -> {metric: mean} for the secondary metrics
    other_metrics: dict[str, dict[str, dict[int, dict[str, float]]]] = field(default_factory=dict)
    run_info: dict[str, Any] = field(default_factory=dict)
    #: one row per trained phase (node) and seed: "phase", "from", "seed", "loss", "loss_scale",
    #: "max_grad_norm", "grad_norm_steps", "clipped_steps", "grad_norm_mean", "grad_norm_first",
    #: "grad_norm_last" (PhaseCost's gradient record)
    phases: list[dict[str, Any]] = field(default_factory=list)
    #: how every model was searched: "search", "query_lengths" (EvaluationSpec)
    evaluation: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- numbers
def seed_averaged(per_seed: dict[int, dict[str, float]]) -> tuple[list[str], np.ndarray]:
    """Query ids present for every seed (sorted) and their scores averaged over seeds."""
    seeds = sorted(per_seed)
    common = sorted(set.intersection(*(set(per_seed[s]) for s in seeds)))
    values = np.array([[per_seed[s][q] for q in common] for s in seeds]).mean(axis=0)
    return common, values


def _paired(
    c: Collected, a: str, b: str, datasets: list[str]
) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    xa, xb = [], []
    for ds in datasets:
        sa, sb = c.scores.get(a, {}).get(ds), c.scores.get(b, {}).get(ds)
        if not sa or not sb:
            return None
        qa, va = seed_averaged(sa)
        qb, vb = seed_averaged(sb)
        common = sorted(set(qa) & set(qb))
        if not common:
            return None
        ia, ib = {q: i for i, q in enumerate(qa)}, {q: i for i, q in enumerate(qb)}
        xa.append(np.array([va[ia[q]] for q in common]))
        xb.append(np.array([vb[ib[q]] for q in common]))
    return xa, xb


def _interval(iv: Interval) -> dict[str, float]:
    return {k: v for k, v in iv.as_dict(SCALE).items() if k != "confidence"}


def build_results(c: Collected) -> dict[str, Any]:
    """Every number of the report (nDCG@10 x 100) as plain data."""
    st = c.statistics
    kw = {"confidence": st.confidence, "n_resamples": st.n_resamples, "seed": st.seed}
    datasets = list(c.datasets)
    routes: dict[str, Any] = {}
    for r in c.routes:
        entry: dict[str, Any] = {"label": r.label, "datasets": {}, "mean": None}
        groups = []
        for ds in datasets:
            per_seed = c.scores.get(r.name, {}).get(ds)
            if not per_seed:
                continue
            qids, values = seed_averaged(per_seed)
            iv = bootstrap_ci([values], **kw)
            entry["datasets"][ds] = {
                **_interval(iv),
                "per_seed": {
                    str(s): SCALE * float(np.mean(list(per_seed[s].values()))) for s in sorted(per_seed)
                },
                "n_seeds": len(per_seed),
                "n_queries": len(qids),
                "other_metrics": {
                    str(s): {m: SCALE * v for m, v in mets.items()}
                    for s, mets in sorted(c.other_metrics.get(r.name, {}).get(ds, {}).items())
                },
            }
            groups.append(values)
        if groups and len(groups) == len(datasets):
            entry["mean"] = _interval(bootstrap_ci(groups, **kw))
            seeds = sorted(set.intersection(*(set(c.scores[r.name][ds]) for ds in datasets)))
            entry["mean"]["per_seed"] = {
                str(s): SCALE
                * float(np.mean([np.mean(list(c.scores[r.name][ds][s].values())) for ds in datasets]))
                for s in seeds
            }
        cost = c.costs.get(r.name, {})
        if cost:
            entry["cost"] = {
                key: float(np.mean([v.get(key, 0.0) or 0.0 for v in cost.values()]))
                for key in (
                    "total_s",
                    "own_s",
                    "device_hours",
                    "own_device_hours",
                    "phases",
                    "own_phases",
                    "tokens",
                )
            } | {"per_seed": {str(s): v for s, v in sorted(cost.items())}}
        if r.paper is not None:
            entry["paper"] = r.paper.model_dump(exclude_none=True)
        routes[r.name] = entry

    comparisons: dict[str, Any] = {}
    for r in c.routes:
        if r.name == c.reference:
            continue
        out: dict[str, Any] = {}
        for ds in datasets:
            pair = _paired(c, r.name, c.reference, [ds])
            if pair is not None:
                out[ds] = compare_paired(pair[0], pair[1], **kw).as_dict(SCALE)
        pair = _paired(c, r.name, c.reference, datasets)
        if pair is not None:
            out["mean"] = compare_paired(pair[0], pair[1], **kw).as_dict(SCALE)
        comparisons[r.name] = out

    findings = []
    for f in c.findings:
        row: dict[str, Any] = {"id": f.id, "claim": f.claim, "better": f.better, "worse": f.worse}
        row["paper"] = f.paper
        pair = _paired(c, f.better, f.worse, datasets)
        if pair is None:
            row["verdict"] = "not run"
        else:
            cmp = compare_paired(pair[0], pair[1], **kw)
            row.update(cmp.as_dict(SCALE))
            row["verdict"] = verdict(cmp.difference)
            row["per_dataset"] = {}
            for ds in datasets:
                one = _paired(c, f.better, f.worse, [ds])
                assert one is not None
                row["per_dataset"][ds] = compare_paired(one[0], one[1], **kw).as_dict(SCALE)
        findings.append(row)

    clipping: dict[tuple[str, str], dict[str, Any]] = {}
    for row in c.phases:
        key = (row["phase"], row["from"])
        agg = clipping.setdefault(
            key,
            {
                "phase": row["phase"],
                "from": row["from"],
                "loss": row.get("loss"),
                "loss_scale": row.get("loss_scale"),
                "max_grad_norm": row.get("max_grad_norm"),
                "seeds": [],
                "grad_norm_steps": 0,
                "clipped_steps": 0,
                "grad_norm_means": [],
                "grad_norm_first": [],
                "grad_norm_last": [],
            },
        )
        agg["seeds"].append(row["seed"])
        agg["grad_norm_steps"] += row.get("grad_norm_steps") or 0
        agg["clipped_steps"] += row.get("clipped_steps") or 0
        for k, out in (("grad_norm_mean", "grad_norm_means"), ("grad_norm_first", "grad_norm_first"),
                       ("grad_norm_last", "grad_norm_last")):  # fmt: skip
            if row.get(k) is not None:
                agg[out].append(row[k])
    clipping_rows = []
    for agg in clipping.values():
        steps = agg["grad_norm_steps"]
        clipping_rows.append(
            {
                **{k: agg[k] for k in ("phase", "from", "loss", "loss_scale", "max_grad_norm", "seeds")},
                "steps": steps,
                "clipped_steps": agg["clipped_steps"],
                "clipped_fraction": agg["clipped_steps"] / steps if steps else None,
                "grad_norm_mean": float(np.mean(agg["grad_norm_means"])) if agg["grad_norm_means"] else None,
                "grad_norm_first": float(np.mean(agg["grad_norm_first"])) if agg["grad_norm_first"] else None,
                "grad_norm_last": float(np.mean(agg["grad_norm_last"])) if agg["grad_norm_last"] else None,
            }
        )

    cost_unit = (
        "device_hours"
        if any((e.get("cost") or {}).get("device_hours", 0) > 0 for e in routes.values())
        else "wall_minutes"
    )
    return {
        "grid": c.grid,
        "description": c.description,
        "metric": "nDCG@10 x 100",
        "reference": c.reference,
        "seeds": c.seeds,
        "datasets": c.datasets,
        "statistics": {
            "confidence": st.confidence,
            "n_resamples": st.n_resamples,
            "seed": st.seed,
            "interval": "percentile bootstrap over queries (stratified by dataset for the mean)",
            "test": "two-sided paired randomisation (sign-flip) test over queries, seeds pooled by averaging",
        },
        "cost_unit": cost_unit,
        "evaluation": c.evaluation,
        "clipping": clipping_rows,
        "routes": routes,
        "comparisons": comparisons,
        "findings": findings,
        "paper_source": c.paper_source,
        "notes": c.notes,
        "run": c.run_info,
    }


# ---------------------------------------------------------------------- markdown
def _ci(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    return f"{entry['estimate']:.2f} [{entry['low']:.2f}, {entry['high']:.2f}]"


def _diff(entry: dict[str, Any] | None) -> str:
    if not entry:
        return "—"
    return f"{entry['difference_estimate']:+.2f} [{entry['difference_low']:+.2f}, {entry['difference_high']:+.2f}]"


def _num(value: float | None) -> str:
    """A gradient norm: 3 significant digits (norms span 1e-2 to 1e3 across loss scales)."""
    return "—" if value is None else f"{value:.3g}"


def _p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if value >= 1e-4 else f"{value:.1e}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return [*out, ""]


def cost_value(entry: dict[str, Any], unit: str, own: bool = False) -> float | None:
    cost = entry.get("cost")
    if not cost:
        return None
    if unit == "device_hours":
        return cost["own_device_hours" if own else "device_hours"]
    return cost["own_s" if own else "total_s"] / 60.0


def _fmt_cost(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:.2f} device-h" if unit == "device_hours" else f"{value:.1f} min"


def render_markdown(results: dict[str, Any], charts: dict[str, str] | None = None) -> str:
    charts = charts or {}
    routes: dict[str, Any] = results["routes"]
    datasets = list(results["datasets"])
    unit = results["cost_unit"]
    conf = round(100 * results["statistics"]["confidence"])
    ref = results["reference"]
    ref_label = routes[ref]["label"]
    lines = [f"# Experiment `{results['grid']}`", ""]
    if results.get("description"):
        lines += [results["description"], ""]
    run = results.get("run") or {}
    if run.get("command"):
        lines += ["Reproduce with:", "", "```bash", run["command"], "```", ""]
    if run.get("grid overrides"):
        lines += [f"**This run overrides the grid:** {run['grid overrides']}.", ""]
    lines += [
        f"Seeds: {', '.join(str(s) for s in results['seeds'])}. Metric: nDCG@10 x 100. Intervals: {conf}% "
        f"{results['statistics']['interval']}, {results['statistics']['n_resamples']} resamples. Tests: "
        f"{results['statistics']['test']}.",
        "",
        "## Evaluation sets",
        "",
    ]
    rows = []
    for name, info in results["datasets"].items():
        rows.append(
            [
                name,
                str(info.get("n_queries", "—")),
                str(info.get("n_documents", "—")),
                info.get("rule", ""),
                info.get("note", "") or "",
            ]
        )
    lines += _table(["dataset", "queries", "documents", "relevance / self-hits", "note"], rows)
    ev = results.get("evaluation") or {}
    if ev:
        lengths = (
            f"the `{ev['query_lengths']}` per-dataset query lengths"
            if ev.get("query_lengths")
            else "each model's own query length"
        )
        search = "through a PLAID index" if ev.get("search") == "index" else "exact"
        lines += [
            f"Search: {search}; {lengths} (a dataset's own length wins); prompts: each model's own, or "
            "those its start declares when it is evaluated as it is.",
            "",
        ]

    lines += [f"## nDCG@10 per route and dataset (mean over seeds, {conf}% interval over queries)", ""]
    header = ["route", *datasets, "mean over datasets", "per-seed means"]
    rows = []
    for name, e in routes.items():
        per_seed = (e.get("mean") or {}).get("per_seed", {})
        rows.append(
            [
                e["label"] + (" (reference)" if name == ref else ""),
                *[_ci(e["datasets"].get(ds)) for ds in datasets],
                _ci(e.get("mean")),
                " / ".join(f"{v:.2f}" for v in per_seed.values()) or "—",
            ]
        )
    lines += _table(header, rows)
    if "by_dataset" in charts:
        lines += [f"![nDCG@10 per dataset]({charts['by_dataset']})", ""]

    lines += [f"## Paired tests against {ref_label}", ""]
    lines += [
        f"Difference = route - {ref_label} (nDCG@10 points), {conf}% bootstrap interval, two-sided "
        "randomisation p-value, queries where the route wins / loses.",
        "",
    ]
    rows = []
    for name, cmp in results["comparisons"].items():
        for ds in [*datasets, "mean"]:
            entry = cmp.get(ds)
            if entry is None:
                continue
            rows.append(
                [
                    routes[name]["label"],
                    "mean over datasets" if ds == "mean" else ds,
                    _diff(entry),
                    _p(entry["p_value"]),
                    f"{entry['wins']} / {entry['losses']}",
                ]
            )
    lines += _table(["route", "dataset", "difference [interval]", "p", "wins / losses"], rows)
    if "effects" in charts:
        lines += [f"![difference to {ref_label}]({charts['effects']})", ""]

    unit_text = "device-hours" if unit == "device_hours" else "minutes of training wall time on this machine"
    lines += [
        "## Quality versus training cost",
        "",
        f"Cost = measured training time of the route ({unit_text}), the sum of every phase its final "
        "model depends on, shared prefixes and the start route included; 'own phases' counts only the "
        "route's own phases (a dense start counted as given, as the paper's cost column does). Tokens "
        "trained (all phases) measures the same work independently of machine load. Data preparation "
        "(pairs, teacher scores) is shared by all routes and not counted.",
        "",
    ]
    rows = []
    for e in routes.values():
        c = e.get("cost") or {}
        rows.append(
            [
                e["label"],
                _fmt_cost(cost_value(e, unit), unit),
                _fmt_cost(cost_value(e, unit, own=True), unit),
                f"{c.get('phases', 0):.0f} / {c.get('own_phases', 0):.0f}" if c else "—",
                f"{c['tokens'] / 1e6:.2f} M" if c.get("tokens") else "—",
                _ci(e.get("mean")),
            ]
        )
    lines += _table(
        [
            "route",
            "cost (all phases)",
            "cost (own phases)",
            "phases (all / own)",
            "tokens trained",
            "nDCG@10",
        ],
        rows,
    )
    if "quality_vs_cost" in charts:
        lines += [f"![quality versus cost]({charts['quality_vs_cost']})", ""]

    if results.get("clipping"):
        lines += [
            "## Gradient norm and clipping per phase",
            "",
            "Pre-clip global gradient norm (what the optimizer step clips to `max_grad_norm`) averaged "
            "over each phase's steps, then over seeds (first and last step likewise), and the fraction "
            "of all those steps whose norm exceeded `max_grad_norm`. The loss scale decides how often "
            "the clip binds (`loss_scale`: `mean` = the global mean's gradient; `pylate` = the released "
            "code's, the global sum's under GradCache).",
            "",
        ]
        rows = []
        for r in results["clipping"]:
            rows.append(
                [
                    r["phase"],
                    r["from"],
                    f"{r.get('loss') or '—'} ({r.get('loss_scale') or '—'})",
                    str(len(r["seeds"])),
                    str(r["steps"]),
                    _num(r.get("grad_norm_mean")),
                    f"{_num(r.get('grad_norm_first'))} / {_num(r.get('grad_norm_last'))}",
                    _num(r.get("max_grad_norm")),
                    "—" if r.get("clipped_fraction") is None else f"{100 * r['clipped_fraction']:.0f}%",
                ]
            )
        lines += _table(
            [
                "phase",
                "from",
                "loss (scale)",
                "seeds",
                "steps",
                "mean pre-clip norm",
                "first / last",
                "clip at",
                "steps clipped",
            ],
            rows,
        )

    lines += ["## The paper's published numbers beside ours", ""]
    if results.get("paper_source"):
        lines += [f"Paper: {results['paper_source']}. Ours: this grid (not the same scale or data).", ""]
    rows = []
    for e in routes.values():
        paper = e.get("paper") or {}
        pv = paper.get("ndcg10")
        rows.append(
            [
                e["label"],
                f"{pv:.2f}" if isinstance(pv, int | float) else "—",
                paper.get("cost", "—"),
                paper.get("note", ""),
                _ci(e.get("mean")),
                _fmt_cost(cost_value(e, unit), unit),
            ]
        )
    lines += _table(
        ["route", "paper: BEIR nDCG@10", "paper: cost", "paper: note", "ours: nDCG@10", "ours: cost"], rows
    )

    lines += ["## Verdicts on the paper's findings", ""]
    lines += [
        f"A finding 'A > B' is **reproduced** when the {conf}% interval of A - B (mean over datasets) lies "
        "above 0, **not reproduced** when it lies below 0, **inconclusive at this scale** when it holds 0.",
        "",
    ]
    rows = []
    for f in results["findings"]:
        if f["verdict"] == "not run":
            rows.append([f["claim"], f["paper"], "—", "—", "not run"])
            continue
        rows.append([f["claim"], f["paper"], _diff(f), _p(f["p_value"]), f"**{f['verdict']}**"])
    lines += _table(["finding", "paper", "ours: A - B [interval]", "p", "verdict"], rows)

    if results.get("notes"):
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    if run:
        lines += ["## Run", ""]
        lines += [f"- {k}: {v}" for k, v in run.items() if k not in ("command", "grid overrides")] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- charts
def write_charts(results: dict[str, Any], out_dir: Path) -> dict[str, str]:
    """PNG charts (matplotlib, no global backend state): quality vs cost, per dataset, effects."""
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    routes: dict[str, Any] = results["routes"]
    datasets = list(results["datasets"])
    unit = results["cost_unit"]
    conf = round(100 * results["statistics"]["confidence"])
    files: dict[str, str] = {}

    points = [(e["label"], cost_value(e, unit), e.get("mean")) for e in routes.values()]
    points = [(lab, x, m) for lab, x, m in points if x is not None and m]
    if points:
        fig = Figure(figsize=(7.5, 5.0))
        ax = fig.subplots()
        for lab, x, m in points:
            ax.errorbar(
                [x],
                [m["estimate"]],
                yerr=[[m["estimate"] - m["low"]], [m["high"] - m["estimate"]]],
                fmt="o",
                capsize=4,
                label=lab,
            )
        xs = [x for _, x, _ in points]
        if min(xs) > 0 and max(xs) / min(xs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(
            "training cost, all phases (device-hours)"
            if unit == "device_hours"
            else "training cost, all phases (wall-time minutes)"
        )
        ax.set_ylabel(f"nDCG@10 x100, mean over datasets ({conf}% interval)")
        ax.set_title(f"{results['grid']}: quality versus training cost")
        ax.margins(x=0.2)
        ax.grid(alpha=0.3)
        # a legend, not labels beside the points: routes of similar cost and quality overlap
        ax.legend(fontsize=8, loc="best")
        fig.tight_layout()
        fig.savefig(out_dir / "quality_vs_cost.png", dpi=120)
        files["quality_vs_cost"] = "quality_vs_cost.png"

    names = [n for n, e in routes.items() if e["datasets"]]
    if names and datasets:
        fig = Figure(figsize=(max(7.0, 1.6 * len(datasets) * max(1, len(names)) ** 0.5), 4.8))
        ax = fig.subplots()
        width = 0.8 / len(names)
        for j, n in enumerate(names):
            e = routes[n]
            xs, ys, lo, hi = [], [], [], []
            for i, ds in enumerate(datasets):
                d = e["datasets"].get(ds)
                if d is None:
                    continue
                xs.append(i + (j - (len(names) - 1) / 2) * width)
                ys.append(d["estimate"])
                lo.append(d["estimate"] - d["low"])
                hi.append(d["high"] - d["estimate"])
            ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=e["label"])
        ax.set_xticks(range(len(datasets)), datasets)
        ax.set_ylabel(f"nDCG@10 x100 ({conf}% interval)")
        ax.legend(fontsize=7, ncols=2)
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out_dir / "ndcg_by_dataset.png", dpi=120)
        files["by_dataset"] = "ndcg_by_dataset.png"

    effects = [(routes[n]["label"], c["mean"]) for n, c in results["comparisons"].items() if c.get("mean")]
    if effects:
        fig = Figure(figsize=(7.0, 1.2 + 0.5 * len(effects)))
        ax = fig.subplots()
        for i, (_, e) in enumerate(effects):
            est = e["difference_estimate"]
            ax.errorbar(
                [est],
                [i],
                xerr=[[est - e["difference_low"]], [e["difference_high"] - est]],
                fmt="o",
                capsize=4,
            )
        ax.axvline(0.0, color="grey", lw=1)
        ax.set_yticks(range(len(effects)), [lab for lab, _ in effects])
        ax.set_xlabel(
            f"nDCG@10 difference to {routes[results['reference']]['label']} (points, {conf}% interval)"
        )
        fig.tight_layout()
        fig.savefig(out_dir / "effects_vs_reference.png", dpi=120)
        files["effects"] = "effects_vs_reference.png"
    return files


def write_report(c: Collected, out_dir: Path) -> dict[str, str]:
    """results.json, report.md and the charts into ``out_dir``; returns their paths."""
    from colzero.experiment.evaluation import write_json_atomic

    results = build_results(c)
    charts = write_charts(results, out_dir)
    write_json_atomic(out_dir / "results.json", _finite(results))
    text = render_markdown(results, charts)
    tmp = out_dir / ".report.md.tmp"
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out_dir / "report.md")
    return {"json": str(out_dir / "results.json"), "markdown": str(out_dir / "report.md")} | {
        k: str(out_dir / v) for k, v in charts.items()
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


__all__ = ["Collected", "RouteInfo", "build_results", "render_markdown", "write_charts", "write_report"]
