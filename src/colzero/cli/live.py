"""One live view per run: the phases with the current one's step, loss, examples/s and ETA, and
every evaluation as it finishes.

On a terminal it is a ``rich`` live display (log lines scroll above it). When standard output is
not a terminal, plain lines replace it so that logs stay readable: one line per phase when it ends,
one per evaluation, and, for a phase that runs long, one line every ``HEARTBEAT_S`` seconds.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn

from colzero.evaluation.metrics import MAIN_METRIC
from colzero.progress import Progress as RunProgress

#: plain mode: a line for a running phase at most this often
HEARTBEAT_S = 600.0
#: live mode: rows kept on screen (the oldest finished rows are hidden first)
MAX_ROWS = 12


def duration(seconds: float | None) -> str:
    """``42.0 s``, ``3:05`` (minutes), ``1:02:03`` (hours); ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class PhaseState:
    """What the view knows of one phase."""

    name: str
    total: int | None = None
    step: int = 0
    first_step: int = 0
    started: float | None = None
    loss: float | None = None
    examples0: float | None = None
    wall0: float | None = None
    examples: float = 0.0
    wall_s: float = 0.0
    done: bool = False
    skipped: bool = False
    last_line: float = field(default_factory=time.monotonic)

    def rate(self) -> float | None:
        """Examples per second of training time, in this invocation."""
        if self.examples0 is None or self.wall0 is None or self.wall_s <= self.wall0:
            return None
        return (self.examples - self.examples0) / (self.wall_s - self.wall0)

    def eta(self) -> float | None:
        """Seconds left at this invocation's pace (checkpoints included)."""
        done = self.step - self.first_step
        if self.started is None or self.total is None or done <= 0:
            return None
        return (self.total - self.step) * (time.monotonic() - self.started) / done

    def describe(self) -> str:
        """``loss 2.2398 · 218 ex/s``."""
        parts = []
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        rate = self.rate()
        if rate is not None:
            parts.append(f"{rate:,.0f} ex/s" if rate >= 10 else f"{rate:.2f} ex/s")
        return " · ".join(parts)


def _score(metrics: Mapping[str, float]) -> str:
    value = metrics.get(MAIN_METRIC)
    return "-" if value is None else f"nDCG@10 {100 * value:.2f}"


class PlainView(RunProgress):
    """Plain lines on standard output (module docstring)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.phases: dict[str, PhaseState] = {}

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def phase_started(self, name: str, total_steps: int, step: int) -> None:
        self.phases[name] = PhaseState(name, total_steps, step, step, time.monotonic())

    def phase_step(self, name: str, step: int, metrics: Mapping[str, float]) -> None:
        state = self.phases.setdefault(name, PhaseState(name))
        _update(state, step, metrics)
        if time.monotonic() - state.last_line >= HEARTBEAT_S:
            state.last_line = time.monotonic()
            self._print(
                f"phase {name}: step {step:,}/{state.total or 0:,}, {state.describe()}, "
                f"ETA {duration(state.eta())}"
            )

    def phase_finished(self, name: str, record: Mapping[str, Any]) -> None:
        state = self.phases.get(name) or PhaseState(name)
        if record.get("skipped"):
            self._print(f"phase {name}: done earlier, skipped")
            return
        steps = record.get("steps", state.step)
        rate = _rate(state, record)
        parts = [f"{steps:,} steps" if isinstance(steps, int) else "done"]
        if state.loss is not None:
            parts.append(f"loss {state.loss:.4f}")
        if rate is not None:
            parts.append(f"{rate:,.1f} examples/s")
        parts.append(f"{duration(record.get('wall_s'))} training")
        self._print(f"phase {name}: " + ", ".join(parts))

    def evaluation_finished(
        self, model: str, dataset: str, metrics: Mapping[str, float], seconds: float
    ) -> None:
        self._print(f"evaluated {model} on {dataset}: {_score(metrics)} ({duration(seconds)})")


def _update(state: PhaseState, step: int, metrics: Mapping[str, float]) -> None:
    state.step = step
    if "loss" in metrics:
        state.loss = float(metrics["loss"])
    if "examples" in metrics and "wall_s" in metrics:
        state.examples, state.wall_s = float(metrics["examples"]), float(metrics["wall_s"])
        if state.examples0 is None:  # the rate counts from the end of this invocation's first step
            state.examples0, state.wall0 = state.examples, state.wall_s


def _rate(state: PhaseState, record: Mapping[str, Any]) -> float | None:
    """This invocation's examples/s, else the phase's whole record's."""
    rate = state.rate()
    if rate is None and record.get("wall_s"):
        rate = float(record.get("examples") or 0) / float(record["wall_s"])
    return rate


class _Bar(BarColumn):
    """The bar of phase rows only (other rows: nothing)."""

    def render(self, task: Any) -> Any:
        from rich.text import Text

        return super().render(task) if task.fields.get("bar") else Text("")


class LiveView(RunProgress):
    """A ``rich`` live display of the run (module docstring); use as a context manager."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.progress = Progress(
            TextColumn("{task.fields[mark]}"),
            TextColumn("{task.description}"),
            _Bar(bar_width=24),
            TextColumn("{task.fields[count]}", justify="right"),
            TextColumn("{task.fields[info]}"),
            TextColumn("{task.fields[eta]}"),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.title = title
        self.header: TaskID | None = None
        self.rows: list[tuple[TaskID, bool]] = []  # (task, finished), in creation order
        self.tasks: dict[str, TaskID] = {}
        self.phases: dict[str, PhaseState] = {}
        self.order: list[str] = []
        self.evaluations = 0

    # ------------------------------------------------------------------ rows
    def __enter__(self) -> LiveView:
        self.progress.start()
        self.header = self.progress.add_task(
            self.title, total=None, mark="", count="", info="", eta="", bar=False
        )
        return self

    def __exit__(self, *exc: Any) -> None:
        self._refresh_header()
        self.progress.stop()

    def _row(self, key: str, description: str, **fields: Any) -> TaskID:
        if key in self.tasks:
            return self.tasks[key]
        values = {"mark": " ", "count": "", "info": "", "eta": "", "bar": False, **fields}
        task = self.progress.add_task(description, total=None, start=False, **values)
        self.tasks[key] = task
        self.rows.append((task, False))
        self._trim()
        return task

    def _finish_row(self, key: str) -> None:
        task = self.tasks[key]
        self.rows = [(t, done or t == task) for t, done in self.rows]
        self._trim()

    def _trim(self) -> None:
        """Hide the oldest finished rows while more than ``MAX_ROWS`` are visible."""
        shown = {t.id for t in self.progress.tasks if t.visible}
        excess = sum(t in shown for t, _ in self.rows) - MAX_ROWS
        for t, done in self.rows:
            if excess <= 0:
                break
            if done and t in shown:
                self.progress.update(t, visible=False)
                excess -= 1

    def _refresh_header(self, description: str | None = None) -> None:
        if self.header is None:
            return
        done = sum(p.done for p in self.phases.values())
        parts = [f"phases {done}/{len(self.order)}"] if self.order else []
        if self.evaluations:
            parts.append(f"evaluations {self.evaluations}")
        upcoming = [p for p in self.order if not self.phases[p].done and self.phases[p].started is None]
        if upcoming:
            parts.append("next: " + ", ".join(upcoming[:4]) + (", ..." if len(upcoming) > 4 else ""))
        self.progress.update(self.header, info=" · ".join(parts), description=description or self.title)

    # ------------------------------------------------------------------ events
    def run_started(self, name: str, phases: Sequence[str]) -> None:
        self.order = list(phases)
        for p in phases:
            self.phases[p] = PhaseState(p)
        self._refresh_header()

    def note(self, text: str) -> None:
        self._refresh_header(f"{self.title} — {text}")

    def phase_started(self, name: str, total_steps: int, step: int) -> None:
        state = self.phases.setdefault(name, PhaseState(name))
        if name not in self.order:
            self.order.append(name)
        state.total, state.step, state.first_step, state.started = total_steps, step, step, time.monotonic()
        task = self._row(f"phase:{name}", f"phase {name}", bar=True)
        self.progress.start_task(task)
        self.progress.update(
            task, total=total_steps, completed=step, mark="▶", count=f"{step:,}/{total_steps:,}", info=""
        )
        self._refresh_header()

    def phase_step(self, name: str, step: int, metrics: Mapping[str, float]) -> None:
        state = self.phases.setdefault(name, PhaseState(name))
        _update(state, step, metrics)
        task = self._row(f"phase:{name}", f"phase {name}")
        self.progress.update(
            task,
            completed=step,
            count=f"{step:,}/{state.total or 0:,}",
            info=state.describe(),
            eta=f"ETA {duration(state.eta())}",
        )

    def phase_finished(self, name: str, record: Mapping[str, Any]) -> None:
        state = self.phases.setdefault(name, PhaseState(name))
        state.done, state.skipped = True, bool(record.get("skipped"))
        if name not in self.order:
            self.order.append(name)
        key = f"phase:{name}"
        task = self._row(key, f"phase {name}")
        steps = record.get("steps", state.step)
        info = "done earlier, skipped" if state.skipped else state.describe()
        self.progress.update(
            task,
            total=1,
            completed=1,
            mark="✓",
            count=(f"{steps:,}/{state.total or steps:,}" if isinstance(steps, int) else ""),
            info=info,
            eta="" if state.skipped else duration(record.get("wall_s")),
        )
        self._finish_row(key)
        self._refresh_header()

    def evaluation_started(self, model: str, dataset: str) -> None:
        task = self._row(f"eval:{model}:{dataset}", f"evaluate {model} on {dataset}")
        self.progress.start_task(task)
        self.progress.update(task, mark="▶", info="encoding and searching")
        self._refresh_header()

    def evaluation_finished(
        self, model: str, dataset: str, metrics: Mapping[str, float], seconds: float
    ) -> None:
        key = f"eval:{model}:{dataset}"
        task = self._row(key, f"evaluate {model} on {dataset}")
        self.progress.update(
            task, total=1, completed=1, mark="✓", info=_score(metrics), eta=duration(seconds)
        )
        self._finish_row(key)
        self.evaluations += 1
        self._refresh_header()


@contextlib.contextmanager
def run_view(console: Console, title: str, enabled: bool = True) -> Iterator[RunProgress]:
    """The live view on a terminal, plain lines otherwise (``enabled=False``: neither)."""
    if not enabled:
        yield RunProgress()
    elif console.is_terminal:
        with LiveView(console, title) as view:
            yield view
    else:
        yield PlainView(console)
