"""Cost accounting: per-phase examples, tokens, wall time, peak memory, device-hours."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COST_FILE = "cost.json"


def read_phase_cost(phase_dir: str | Path) -> dict[str, Any]:
    """The trainer's ``cost.json`` of one phase (empty dict when absent)."""
    path = Path(phase_dir) / COST_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return normalize_cost(data)


def _first(data: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return None


def _mb(value: Any) -> int | None:
    return None if value is None else int(float(value) * 2**20)


def normalize_cost(data: dict[str, Any]) -> dict[str, Any]:
    """Map the trainer's keys (whatever their exact spelling) to the ones this module reports."""
    wall = _first(data, "wall_time_s", "wall_s", "wall_time", "seconds")
    device = str(_first(data, "device", "device_type") or "cpu")
    n_dev = int(_first(data, "n_devices", "world_size", "devices") or 1)
    out = {
        "examples": _first(data, "examples", "n_examples", "examples_seen"),
        "tokens": _first(data, "tokens", "n_tokens", "tokens_seen"),
        "steps": _first(data, "steps", "optimizer_steps", "global_step"),
        "wall_time_s": wall,
        "peak_memory_bytes": _first(data, "peak_memory_bytes", "peak_memory", "peak_mem_bytes")
        or _mb(_first(data, "peak_cuda_mb", "peak_rss_mb")),
        "device": device,
        "n_devices": n_dev,
    }
    gpu = device.startswith("cuda") or "gpu" in device.lower()
    given = _first(data, "device_hours", "gpu_hours")
    out["device_hours"] = given if given is not None else (wall * n_dev / 3600 if gpu and wall else 0.0)
    for key, value in data.items():
        out.setdefault(key, value)
    return out


def summarize(phase_costs: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    total: dict[str, Any] = {"examples": 0, "tokens": 0, "wall_time_s": 0.0, "device_hours": 0.0}
    peak = 0
    for _, cost in phase_costs:
        for key in ("examples", "tokens", "wall_time_s", "device_hours"):
            if isinstance(cost.get(key), int | float):
                total[key] += cost[key]
        if isinstance(cost.get("peak_memory_bytes"), int | float):
            peak = max(peak, int(cost["peak_memory_bytes"]))
    total["peak_memory_bytes"] = peak
    return {"phases": {name: cost for name, cost in phase_costs}, "total": total}


def _fmt_bytes(value: Any) -> str:
    if not isinstance(value, int | float) or value <= 0:
        return "-"
    return f"{value / 2**30:.2f} GiB" if value >= 2**30 else f"{value / 2**20:.0f} MiB"


def _fmt_num(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else ("-" if value is None else f"{value:,.0f}")


def render_table(summary: dict[str, Any], evaluation: dict[str, dict[str, float]] | None = None):
    """A rich Table: one row per phase and a total row."""
    from rich.table import Table

    table = Table(title="colzero run cost")
    for col in ("phase", "examples", "tokens", "wall time", "peak memory", "device-h"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    rows = list(summary["phases"].items()) + [("total", summary["total"])]
    for name, cost in rows:
        wall = cost.get("wall_time_s")
        table.add_row(
            name,
            _fmt_num(cost.get("examples")),
            _fmt_num(cost.get("tokens")),
            "-" if not isinstance(wall, int | float) else f"{wall:,.1f} s",
            _fmt_bytes(cost.get("peak_memory_bytes")),
            f"{cost.get('device_hours') or 0.0:.3f}",
        )
    return table


def render_eval_table(evaluation: dict[str, dict[str, float]], metric: str = "nDCG@10"):
    """Rows: model stage; columns: datasets."""
    from rich.table import Table

    datasets = sorted({d for scores in evaluation.values() for d in scores})
    table = Table(title=f"{metric} (x100)")
    table.add_column("model")
    for d in datasets:
        table.add_column(d, justify="right")
    for stage, scores in evaluation.items():
        table.add_row(stage, *[f"{100 * scores[d]:.2f}" if d in scores else "-" for d in datasets])
    return table
