"""What a recipe's phases will cost before they run: device-hours from measured rates.

**GPU.** The rates are those ``benchmarks/gpu_check.py`` measured on a card and wrote as JSON:
per GPU, ``phases.phase1.pairs_per_s`` (GradCache contrastive pre-training pairs),
``phases.phase2.queries_per_s`` (supervised rows: a query, its positive and hard negatives) and
``phases.phase3.queries_per_s`` (distillation queries with their candidates), with ``device.name``
and ``torch`` (optionally ``commit`` and ``date``). A recipe phase takes the rate of the measured
phase with its loss (``cached_contrastive`` -> phase 1, ``contrastive`` -> phase 2,
``distillation`` -> phase 3) and is projected as

    GPU-hours = examples / rate / 3600,  wall hours = GPU-hours / N GPUs
    examples  = optimizer steps x global batch (batch_size x gradient_accumulation)

Assumptions (printed with every projection): the per-GPU rate is the one measured at gpu_check's
8-GPU shape of the paper's phases (ModernBERT-base, bf16, full-length synthetic inputs), N GPUs
scale it linearly, and communication, evaluation, checkpoints and data preparation cost nothing. A
phase whose lengths or documents per example differ from the measured shape (the record's
``shape`` when it has one, else the ``colbert-zero`` preset's phase, which gpu_check mirrors) is
flagged: it runs at another rate. A card without a record is *not measured*; nothing is guessed.

Records are read from ``folder`` when given, else ``$COLZERO_GPU_RECORDS``, else
``benchmarks/results/gpu/`` of the source checkout colzero runs from (an editable install, as
``make run`` / ``make test`` make). A wheel installed from PyPI has no such folder: point
``COLZERO_GPU_RECORDS`` at a copy of the records, or every card is reported as not measured.
When several records exist for a card, the newest (``date``, else the file name's
``YYYY-MM-DD`` prefix) is used.

**CPU.** :func:`calibrate_cpu` builds the phase's architecture from its ``config.json`` (random
weights, nothing downloaded but the config) and times, on this CPU with torch's threads, a
training forward + backward and a no-grad forward per sequence at each length the phases use,
with as many sequences per call as the phase embeds at once (its batch, or its GradCache chunk;
capped by a FLOP budget per call), since the time per sequence falls as calls grow, and one
AdamW step. A phase then costs, per example (the query and its documents at full length),

    cached_contrastive: fb(Lq) + f(Lq) + D * (fb(Ld) + f(Ld))   (GradCache embeds twice)
    contrastive:        fb(Lq) + D * fb(Ld)
    distillation:       fb(Lq) + D * fb(Ld)

(``D``: documents per example), plus one optimizer step per step. MaxSim, the loss, data loading,
checkpoints and evaluation are not counted, and real texts are often shorter than the maximum
lengths, so the CPU projection leans high for long-document phases and low for tiny models (where
those fixed costs dominate).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colzero.training.recipe import Recipe, repo_root

logger = logging.getLogger(__name__)

#: environment variable naming a folder of gpu_check records
RECORDS_ENV = "COLZERO_GPU_RECORDS"
#: the records' folder in a source checkout (relative to the repository root)
RECORDS_SUBDIR = Path("benchmarks") / "results" / "gpu"
#: the recipe whose phases gpu_check.py measures (its shapes are the reference)
REFERENCE_RECIPE = "colbert-zero"
#: loss -> (gpu_check phase, its rate key, what one example is)
MEASURED: dict[str, tuple[str, str, str]] = {
    "cached_contrastive": ("phase1", "pairs_per_s", "pairs"),
    "contrastive": ("phase2", "queries_per_s", "rows"),
    "distillation": ("phase3", "queries_per_s", "queries"),
}
ASSUMPTIONS = (
    "per-GPU rates measured by benchmarks/gpu_check.py at the 8-GPU shape of the paper's phases "
    "(ModernBERT-base, bf16, full-length synthetic inputs); N GPUs scale linearly; no "
    "communication, evaluation, checkpoint or data-preparation time"
)
CPU_ASSUMPTIONS = (
    "CPU: forward/backward of the phase's architecture timed now on this CPU at full lengths, plus "
    "AdamW; MaxSim, loss, data loading, checkpoints and evaluation not counted"
)
_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


class RecordError(ValueError):
    """A file in the records folder that is not a readable gpu_check record (names file and key)."""


# ---------------------------------------------------------------------- GPU records
@dataclass(frozen=True)
class GpuRecord:
    """One gpu_check result: the card, when, and the per-GPU rate of each measured phase."""

    path: Path
    device: str
    torch: str | None
    date: str | None
    commit: str | None
    #: phase1/phase2/phase3 -> examples per second per GPU (phases that failed are absent)
    rates: dict[str, float]
    #: phase -> the measured shape, where the record has one (query_length, document_length, ...)
    shapes: dict[str, dict[str, Any]] = field(default_factory=dict)


def records_folder(folder: str | os.PathLike[str] | None = None) -> Path | None:
    """Where records are read from (module docstring); None when no folder exists."""
    for candidate in (folder, os.environ.get(RECORDS_ENV) or None, repo_root() / RECORDS_SUBDIR):
        if candidate is None:
            continue
        path = Path(candidate)
        if path.is_dir():
            return path
        if candidate is folder:
            raise FileNotFoundError(f"GPU records folder {path} does not exist")
    return None


def read_record(path: Path) -> GpuRecord:
    """A gpu_check JSON record; :class:`RecordError` names the file and the key that is wrong."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not a JSON gpu_check record: {exc}") from None
    if not isinstance(data, dict):
        raise RecordError(f"{path}: expected a JSON object (a gpu_check record)")
    device = data.get("device")
    name = device.get("name") if isinstance(device, dict) else None
    if not isinstance(name, str) or not name:
        raise RecordError(f"{path}: device.name: missing (a gpu_check record names its card)")
    phases = data.get("phases")
    if not isinstance(phases, dict):
        raise RecordError(f"{path}: phases: missing (a gpu_check record holds the measured phases)")
    rates: dict[str, float] = {}
    shapes: dict[str, dict[str, Any]] = {}
    for phase, key, _ in MEASURED.values():
        entry = phases.get(phase)
        if not isinstance(entry, dict) or entry.get(key) is None:
            continue  # not measured (or out of memory) on this card
        value = entry[key]
        if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
            raise RecordError(f"{path}: phases.{phase}.{key}: expected a positive number, got {value!r}")
        rates[phase] = float(value)
        if isinstance(entry.get("shape"), dict):
            shapes[phase] = dict(entry["shape"])
    date = data.get("date")
    if not isinstance(date, str):
        found = _DATE.search(path.name)
        date = found.group(1) if found else None
    return GpuRecord(
        path=path,
        device=name,
        torch=data.get("torch") if isinstance(data.get("torch"), str) else None,
        date=date,
        commit=data.get("commit") if isinstance(data.get("commit"), str) else None,
        rates=rates,
        shapes=shapes,
    )


def load_records(folder: Path | None) -> list[GpuRecord]:
    """Every ``*.json`` record of ``folder``, newest first (none when ``folder`` is None)."""
    if folder is None:
        return []
    records = [read_record(p) for p in sorted(folder.glob("*.json"))]
    return sorted(records, key=lambda r: (r.date or "", r.path.name), reverse=True)


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", text.lower()) if t and t != "nvidia"]


def records_for(records: Iterable[GpuRecord], kind: str) -> list[GpuRecord]:
    """Records of the card ``kind`` (case-insensitive; every word of ``kind`` is a word of the
    card's name: ``H200`` matches ``NVIDIA H200``), newest first."""
    wanted = _tokens(kind)
    return [r for r in records if wanted and all(t in _tokens(r.device) for t in wanted)]


def newest_per_card(records: Iterable[GpuRecord]) -> list[GpuRecord]:
    """The newest record of each card name."""
    out: dict[str, GpuRecord] = {}
    for r in records:  # newest first
        out.setdefault(r.device, r)
    return list(out.values())


# ---------------------------------------------------------------------- the work of a phase
@dataclass
class PhaseWork:
    """What one phase will compute: its optimizer steps and examples, and their shape."""

    name: str
    loss: str
    model_type: str
    #: the model (folder or hub name) whose config.json gives the phase's architecture
    architecture: str
    global_batch: int
    steps: int | None
    #: True when some sources have an unknown size: steps and examples are then at least these
    lower_bound: bool = False
    #: why the steps are unknown (None when known)
    unknown: str | None = None
    query_length: int | None = None
    document_length: int | None = None
    max_length: int | None = None
    documents_per_example: int = 1
    #: sequences per forward call on one process: queries, documents (GradCache: its chunk)
    query_batch: int = 1
    document_batch: int = 1

    @property
    def examples(self) -> int | None:
        """Examples trained on: steps x global batch."""
        return None if self.steps is None else self.steps * self.global_batch

    @property
    def unit(self) -> str:
        """What one example is (pairs, rows, queries)."""
        return MEASURED.get(self.loss, ("", "", "examples"))[2]

    def lengths(self) -> tuple[int, int]:
        """(query length, document length) in tokens (a dense model: its max_length for both)."""
        if self.query_length and self.document_length:
            return self.query_length, self.document_length
        n = self.max_length or self.document_length or self.query_length or 512
        return self.query_length or n, self.document_length or n

    def passes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((query length, queries per call), (document length, documents per call))."""
        q, d = self.lengths()
        return (q, self.query_batch), (d, self.document_batch)


def _documents_per_example(loss: Any) -> int:
    if loss.kind == "distillation":
        return int(loss.n_candidates)
    return 1 + int(loss.n_negatives or 0)


def phase_steps(recipe: Recipe, index: int, run_dir: Path) -> tuple[int | None, bool, str | None]:
    """(optimizer steps, lower bound?, why unknown) of phase ``index``: ``max_steps``, else
    ``epochs`` x the sampler's batches per epoch (``rows // batch`` per source, one source per
    batch) / gradient accumulation, from the sizes the dry-run plan knows."""
    p = recipe.phases[index]
    if p.max_steps is not None:
        return p.max_steps, False, None
    from colzero.data.sources import source_sizes

    prepared = {str(Path(step.output)) for step in recipe.prepare}
    cfg = recipe.phase_config(index, model="<start>", output_dir=run_dir / recipe.phase_dir_name(index))
    sizes = source_sizes(cfg.sources, prepared)
    known = [s.rows for s in sizes if s.rows is not None]
    unknown = [s for s in sizes if s.rows is None]
    if not known:
        reasons = sorted({s.origin for s in unknown})
        return None, False, f"source sizes unknown ({'; '.join(reasons)})"
    b = p.batch_size
    batches = sum(n // b + (0 if p.drop_last or n % b == 0 else 1) for n in known)
    steps = p.epochs * batches // p.gradient_accumulation
    return steps, bool(unknown), None


def phase_work(
    recipe: Recipe, index: int, run_dir: str | os.PathLike[str], architecture: str | None = None
) -> PhaseWork:
    """The work of phase ``index`` (``architecture``: the model whose config describes it; default
    the phase's own start model, else the recipe's base)."""
    p = recipe.phases[index]
    settings = recipe.settings_for(index)
    if architecture is None:
        architecture = next(
            (q.model for q in reversed(recipe.phases[: index + 1]) if q.model), recipe.model.base
        )
    steps, lower, unknown = phase_steps(recipe, index, Path(run_dir))
    docs = _documents_per_example(p.loss)
    if p.loss.kind == "cached_contrastive":  # GradCache embeds each role in chunks of mini_batch_size rows
        chunk = p.loss.mini_batch_size or p.batch_size
        query_batch, document_batch = min(chunk, p.batch_size), min(chunk, p.batch_size * docs)
    else:
        query_batch, document_batch = p.batch_size, p.batch_size * docs
    return PhaseWork(
        name=recipe.phase_dir_name(index),
        loss=p.loss.kind,
        model_type=recipe.model.type,
        architecture=str(architecture),
        global_batch=recipe.global_batch(index),
        steps=steps,
        lower_bound=lower,
        unknown=unknown,
        query_length=settings.get("query_length"),
        document_length=settings.get("document_length"),
        max_length=settings.get("max_length"),
        documents_per_example=docs,
        query_batch=query_batch,
        document_batch=document_batch,
    )


def recipe_work(recipe: Recipe, run_dir: str | os.PathLike[str]) -> list[PhaseWork]:
    """:func:`phase_work` of every phase."""
    return [phase_work(recipe, i, run_dir) for i in range(len(recipe.phases))]


# ---------------------------------------------------------------------- projections
@dataclass
class Projection:
    """One phase on one device: device-hours and wall hours (None when not projected, ``note``
    says why), the rate used, and flags (other shape, lower bound)."""

    device_hours: float | None
    wall_hours: float | None
    rate: float | None = None
    note: str = ""
    lower_bound: bool = False


def reference_shapes() -> dict[str, dict[str, Any]]:
    """gpu_check phase -> the shape it measures, read from the ``colbert-zero`` preset (the
    phase of each loss): lengths and documents per example."""
    from colzero.training.recipe import load_recipe

    recipe = load_recipe(REFERENCE_RECIPE)
    out: dict[str, dict[str, Any]] = {}
    for i, p in enumerate(recipe.phases):
        if p.loss.kind in MEASURED:
            settings = recipe.settings_for(i)
            out[MEASURED[p.loss.kind][0]] = {
                "query_length": settings.get("query_length"),
                "document_length": settings.get("document_length"),
                "docs_per_query": _documents_per_example(p.loss),
            }
    return out


def shape_differences(work: PhaseWork, measured: dict[str, Any]) -> list[str]:
    """How ``work`` differs from the ``measured`` shape (lengths, documents per example, model type)."""
    out = []
    q, d = work.lengths()
    for key, ours in (
        ("query_length", q),
        ("document_length", d),
        ("docs_per_query", work.documents_per_example),
    ):
        theirs = measured.get(key)
        if theirs is not None and ours != theirs:
            label = {"query_length": "query length", "document_length": "document length"}.get(
                key, "documents per example"
            )
            out.append(f"{label} {ours} (measured {theirs})")
    if work.model_type != "colbert":
        out.append("dense model (measured: ColBERT)")
    return out


def project_gpu(
    work: PhaseWork, record: GpuRecord | None, gpus: int, reference: dict[str, dict[str, Any]] | None = None
) -> Projection:
    """``work`` on ``gpus`` GPUs of ``record``'s card (module docstring); not measured without a
    record or a rate for the phase's loss."""
    if gpus < 1:
        raise ValueError(f"--gpus must be at least 1, got {gpus}")
    if record is None:
        return Projection(None, None, note="not measured")
    if work.loss not in MEASURED:
        return Projection(None, None, note=f"loss {work.loss!r}: no measured rate")
    phase, _, _ = MEASURED[work.loss]
    rate = record.rates.get(phase)
    if rate is None:
        return Projection(None, None, note=f"{phase} not measured on {record.device}")
    if work.examples is None:
        return Projection(None, None, rate=rate, note=work.unknown or "steps unknown")
    hours = work.examples / rate / 3600
    measured = record.shapes.get(phase) or (reference or {}).get(phase, {})
    diff = shape_differences(work, measured)
    note = "other shape: " + ", ".join(diff) if diff else ""
    return Projection(hours, hours / gpus, rate=rate, note=note, lower_bound=work.lower_bound)


# ---------------------------------------------------------------------- CPU calibration
class CalibrationUnavailable(RuntimeError):
    """The phase's architecture cannot be built here (its config.json is not reachable)."""


@dataclass
class CpuCalibration:
    """Seconds on this CPU: per sequence, training forward + backward (``fb``) and no-grad
    forward (``f``) by (length, sequences per call); one AdamW step (``optimizer_s``)."""

    architecture: str
    threads: int
    fb: dict[tuple[int, int], float] = field(default_factory=dict)
    f: dict[tuple[int, int], float] = field(default_factory=dict)
    optimizer_s: float = 0.0
    seconds: float = 0.0

    def per_example(self, work: PhaseWork) -> float:
        """Seconds per example of ``work`` (module docstring)."""
        q, d = work.passes()
        n = work.documents_per_example
        if work.loss == "cached_contrastive":
            return self.fb[q] + self.f[q] + n * (self.fb[d] + self.f[d])
        return self.fb[q] + n * self.fb[d]


def _config(architecture: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(architecture)
    except Exception as exc:  # offline without a cached config, a folder without config.json, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CalibrationUnavailable(
            f"the config of {architecture} is not available ({first[:160]})"
        ) from None


def _time(fn: Any, budget_s: float, repeats: int = 3) -> float:
    """Seconds of ``fn()``: the first call alone when it takes half of ``budget_s`` or more (its
    start-up cost is then small beside it), else the median of up to ``repeats`` calls after it
    within ``budget_s``."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    if first >= budget_s / 2:
        return first
    times: list[float] = []
    spent = 0.0
    while len(times) < repeats and (not times or spent < budget_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        spent += times[-1]
    return statistics.median(times)


#: FLOPs of one timed training call (forward + backward ~ 6 x parameters x tokens): the sequences
#: per call are the phase's own, capped so that a call stays near a second on a small CPU
CALL_FLOPS = 2e11


def calibrate_cpu(
    architecture: str, passes: Iterable[tuple[int, int]], *, budget_s: float = 1.0
) -> CpuCalibration:
    """Time ``architecture`` (random weights from its config) on this CPU for each (length,
    sequences per call) of ``passes`` (fp32, torch's thread count); per-sequence time falls with
    the sequences per call, so a pass runs at its own batch, capped at :data:`CALL_FLOPS`
    (and at least 256 tokens); one warm-up and up to three timed calls within ``budget_s``.
    :class:`CalibrationUnavailable` when the config is unreachable or a length does not run."""
    import torch
    from transformers import AutoModel

    config = _config(architecture)
    t_start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        try:
            model = AutoModel.from_config(config, attn_implementation="sdpa")
        except (ValueError, ImportError):
            model = AutoModel.from_config(config)
    model.float().train()
    vocab = int(getattr(config, "vocab_size", 1000) or 1000)
    cal = CpuCalibration(architecture, torch.get_num_threads())
    generator = torch.Generator().manual_seed(0)
    n_params = sum(p.numel() for p in model.parameters())
    max_tokens = max(256, int(CALL_FLOPS / (6 * n_params)))
    measured: dict[tuple[int, int], tuple[float, float]] = {}  # (length, batch run) -> (fb, f)
    for length, wanted in sorted(set(passes)):
        batch = max(1, min(wanted, max_tokens // length))
        if (length, batch) in measured:  # another pass capped to the same call
            cal.fb[length, wanted], cal.f[length, wanted] = measured[length, batch]
            continue
        ids = torch.randint(5, max(6, vocab - 1), (batch, length), generator=generator)
        mask = torch.ones_like(ids)

        def train_pass(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            out.float().pow(2).mean().backward()

        def inference_pass(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            with torch.no_grad():
                model(input_ids=ids, attention_mask=mask)

        try:
            cal.fb[length, wanted] = _time(train_pass, budget_s) / batch
            cal.f[length, wanted] = _time(inference_pass, budget_s) / batch
            measured[length, batch] = cal.fb[length, wanted], cal.f[length, wanted]
        except (RuntimeError, IndexError, ValueError) as exc:  # e.g. longer than its position table
            first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise CalibrationUnavailable(f"{architecture} does not run {length} tokens: {first}") from None
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    cal.optimizer_s = _time(optimizer.step, budget_s)
    model.zero_grad(set_to_none=True)
    cal.seconds = time.perf_counter() - t_start
    logger.info(
        "CPU calibration of %s (%d threads, %.1f s): fb %s, f %s, AdamW %.4f s",
        architecture,
        cal.threads,
        cal.seconds,
        {f"{k[0]}x{k[1]}": round(v, 5) for k, v in cal.fb.items()},
        {f"{k[0]}x{k[1]}": round(v, 5) for k, v in cal.f.items()},
        cal.optimizer_s,
    )
    return cal


def project_cpu(work: PhaseWork, calibration: CpuCalibration | None, reason: str = "") -> Projection:
    """``work`` on this CPU from ``calibration`` (None: not measured, ``reason`` says why)."""
    if calibration is None:
        return Projection(None, None, note=f"not measured{': ' + reason if reason else ''}")
    per_example = calibration.per_example(work)
    if work.examples is None or work.steps is None:
        return Projection(None, None, rate=1 / per_example, note=work.unknown or "steps unknown")
    seconds = work.examples * per_example + work.steps * calibration.optimizer_s
    hours = seconds / 3600
    return Projection(hours, hours, rate=1 / per_example, lower_bound=work.lower_bound)


class CpuCalibrations:
    """One calibration per architecture, with every length its phases need (measured once)."""

    def __init__(self, works: Iterable[PhaseWork], enabled: bool = True) -> None:
        self.results: dict[str, CpuCalibration] = {}
        self.failures: dict[str, str] = {}
        self.enabled = enabled
        needs: dict[str, set[tuple[int, int]]] = {}
        for w in works:
            needs.setdefault(w.architecture, set()).update(w.passes())
        if not enabled:
            return
        for arch, needed in needs.items():
            try:
                self.results[arch] = calibrate_cpu(arch, needed)
            except CalibrationUnavailable as exc:
                self.failures[arch] = str(exc)

    def project(self, work: PhaseWork) -> Projection:
        """:func:`project_cpu` of ``work`` with its architecture's calibration."""
        if not self.enabled:
            return project_cpu(work, None, "--no-calibrate")
        return project_cpu(
            work, self.results.get(work.architecture), self.failures.get(work.architecture, "")
        )


__all__ = [
    "ASSUMPTIONS",
    "CPU_ASSUMPTIONS",
    "MEASURED",
    "RECORDS_ENV",
    "CalibrationUnavailable",
    "CpuCalibration",
    "CpuCalibrations",
    "GpuRecord",
    "PhaseWork",
    "Projection",
    "RecordError",
    "calibrate_cpu",
    "load_records",
    "newest_per_card",
    "phase_work",
    "project_cpu",
    "project_gpu",
    "read_record",
    "recipe_work",
    "records_folder",
    "records_for",
    "reference_shapes",
]
