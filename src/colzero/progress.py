"""Progress events of a run, for whoever draws them (the CLI's live view, a notebook, a test).

The library reports how far a run is through one object, a :class:`Progress`; every method does
nothing unless a subclass overrides it. The trainer, the recipe pipeline, the experiment runner
and :func:`colzero.evaluation.evaluate` accept ``progress=`` and call it on the process that owns
the run's files (rank 0 under torchrun), from the thread that runs the work. Drawing is the
caller's business: the library itself only logs.

Events, in the order a recipe run sends them::

    run_started(name, phases)             the phase names, in order
    note(text)                            a step without a count (data preparation, loading)
    evaluation_started(model, dataset)    one model on one dataset
    evaluation_finished(model, dataset, metrics, seconds)
    phase_started(name, total_steps, step)         step > 0 when the phase resumes
    phase_step(name, step, metrics)                after every optimizer step
    phase_finished(name, record)                   steps, wall_s, examples, loss, skipped
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class Progress:
    """Receives a run's progress events (module docstring); the base class ignores them all."""

    def run_started(self, name: str, phases: Sequence[str]) -> None:
        """A run of ``phases`` (names, in order) begins."""

    def note(self, text: str) -> None:
        """A step of the run that has no count (data preparation, a model loading)."""

    def phase_started(self, name: str, total_steps: int, step: int) -> None:
        """Phase ``name`` trains to ``total_steps`` optimizer steps from ``step`` (0, or where it resumes)."""

    def phase_step(self, name: str, step: int, metrics: Mapping[str, float]) -> None:
        """Optimizer step ``step`` is done. ``metrics``: ``loss``, ``lr`` (and ``grad_norm``,
        ``temperature`` where they exist), plus the phase's running counters ``examples``,
        ``tokens`` and ``wall_s`` (training time so far, every invocation of the phase)."""

    def phase_finished(self, name: str, record: Mapping[str, Any]) -> None:
        """Phase ``name`` is complete: ``record`` holds ``steps``, ``wall_s``, ``examples`` and
        ``skipped`` (True when an earlier run had finished it)."""

    def evaluation_started(self, model: str, dataset: str) -> None:
        """``model`` (a label: ``start``, a phase, a route) starts its evaluation on ``dataset``."""

    def evaluation_finished(
        self, model: str, dataset: str, metrics: Mapping[str, float], seconds: float
    ) -> None:
        """``model`` scored ``metrics`` (fractions, e.g. ``ndcg@10``) on ``dataset`` in ``seconds``."""


#: the progress that draws nothing (the default everywhere)
SILENT = Progress()

__all__ = ["SILENT", "Progress"]
