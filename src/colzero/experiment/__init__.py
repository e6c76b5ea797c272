"""Experiments: a grid of training routes x seeds, prefix-shared training, evaluation on the same
datasets by the same code, bootstrap intervals, paired tests and a quality-versus-cost report.

``colzero experiment GRID`` runs :func:`run_experiment`; grid presets live in
``colzero/recipes/grids/`` (``paper-routes``, ``paper-routes-cpu``).
"""

from colzero.experiment.grid import Grid, GridError, grid_preset_names, load_grid, parse_grid
from colzero.experiment.plan import Plan, build_plan
from colzero.experiment.report import Collected, RouteInfo, build_results, render_markdown, write_report
from colzero.experiment.runner import ExperimentResult, collect, describe_plan, run_experiment
from colzero.experiment.stats import (
    Interval,
    PairedComparison,
    bootstrap_ci,
    compare_paired,
    paired_randomization_test,
    verdict,
)

__all__ = [
    "Collected",
    "ExperimentResult",
    "Grid",
    "GridError",
    "Interval",
    "PairedComparison",
    "Plan",
    "RouteInfo",
    "bootstrap_ci",
    "build_plan",
    "build_results",
    "collect",
    "compare_paired",
    "describe_plan",
    "grid_preset_names",
    "load_grid",
    "paired_randomization_test",
    "parse_grid",
    "render_markdown",
    "run_experiment",
    "verdict",
    "write_report",
]
