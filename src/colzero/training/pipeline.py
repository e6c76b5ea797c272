"""Run a recipe: data preparation, then phases in order, each from the previous phase's model.

Run folder::

    RUN/recipe.toml            copy of the recipe text (+ recipe.resolved.json, the validated form)
    RUN/logs/pipeline.log      colzero's log during the run, when the caller asks (``log_file=True``;
                               the CLI does); the trainer's metrics are in each phase folder
    RUN/data/                  outputs of [[prepare]] steps (skipped when present)
    RUN/eval/start.json        evaluation of the start model
    RUN/phase-N-name/          the trainer's output_dir (checkpoint/, final/, cost.json, ...),
                               eval.json and done.json (the phase is complete: skipped on rerun)
    RUN/final/                 the last phase's model + README.md model card
    RUN/summary.json           per-phase cost and evaluation

Resumable after a kill at any point: completed phases are marked done and skipped; the
interrupted phase resumes through ``run_phase(resume=True)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from colzero.model.encoder import Encoder
from colzero.progress import SILENT, Progress
from colzero.training import prompts as prompt_tools
from colzero.training.cost import PhaseCost, summarize
from colzero.training.recipe import Recipe, RecipeError, load_recipe, read_recipe_text, validate_recipe
from colzero.training.trainer import load_start_model, run_phase

logger = logging.getLogger(__name__)

DONE = "done.json"


@dataclass
class RunResult:
    """What :func:`run_recipe` did: the run folder, final model, per-phase records, evaluation and cost."""

    run_dir: Path
    final_model: Path | None
    phases: list[dict[str, Any]] = field(default_factory=list)
    evaluation: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    cost: dict[str, Any] = field(default_factory=dict)
    plan: list[dict[str, Any]] = field(default_factory=list)
    wall_time_s: float = 0.0


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, default=str), encoding="utf-8")
    tmp.replace(path)


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------- evaluation
def evaluate_model(
    model_path: str | Path,
    recipe: Recipe,
    index: int | None = None,
    datasets: list[str] | None = None,
    device: Any = None,
    *,
    label: str | None = None,
    progress: Progress = SILENT,
) -> dict[str, dict[str, float]]:
    """:func:`colzero.evaluation.evaluate` of one model on ``recipe.evaluation``'s datasets (or
    ``datasets``): dataset name -> metric -> value (the evaluation's default metrics).

    The model is opened with the settings of phase ``index`` (lengths, prompts) when given;
    ``label`` names it in the log and to ``progress`` (default: its path).
    """
    ev = recipe.evaluation
    datasets = ev.datasets if datasets is None else datasets
    if not datasets:
        return {}
    from colzero.evaluation import evaluate

    settings = recipe.settings_for(index) if index is not None else dict(recipe.model.settings)
    model: Encoder
    if index == 0 and Path(str(model_path)) == Path(str(recipe.model.base)):
        # the start model as phase 1 sees it: the recipe's model type, with the projection
        # phase 1 initialises from its seed (an MLM or dense folder is not a ColBERT yet)
        model = load_start_model(
            str(model_path),
            recipe.model.type,
            _loadable_for(recipe.model.type, settings),
            recipe.phases[0].seed,
        )
    else:
        from colzero.model.loading import load_model

        model = load_model(str(model_path), **_loadable(model_path, settings))
    if device is not None:
        model.to(device)  # rank 0 evaluates on its GPU when it has one
    label = label or str(model_path)
    results = evaluate(
        model,
        datasets,
        split=ev.split,
        model_names=[label],
        plots=False,
        batch_size=ev.batch_size,
        use_cache=False,
        progress=progress,
    )
    scores = results.scores[label]
    for name, metrics in scores.items():
        logger.info("%s on %s: %s", model_path, name, metrics)
    return scores


def _loadable(model_path: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Settings that the model class found in ``model_path`` accepts."""

    from colzero.model.folder import describe_folder, resolve_model_path

    multi = describe_folder(resolve_model_path(str(model_path))).is_multi_vector
    return _loadable_for("colbert" if multi else "dense", settings)


def _loadable_for(model_type: str, settings: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    from colzero.model.config import ColBERTConfig, DenseConfig

    names = {f.name for f in dataclasses.fields(ColBERTConfig if model_type == "colbert" else DenseConfig)}
    return {k: v for k, v in settings.items() if k in names}


# ---------------------------------------------------------------------- preparation
def run_prepare(recipe: Recipe, progress: Progress = SILENT) -> list[Path]:
    """Run the recipe's ``[[prepare]]`` steps whose output does not exist yet; returns the outputs."""
    outputs = []
    for i, step in enumerate(recipe.prepare):
        out = Path(step.output)
        outputs.append(out)
        if out.exists():
            logger.info("prepare[%d] %s: %s exists, skipped", i, step.tool, out)
            continue
        args = dict(step.args)
        progress.note(f"prepare {step.tool} -> {out.name}")
        t0 = time.perf_counter()
        if step.tool == "pairs":
            from colzero.data.pairs import build_pairs

            n = build_pairs(args.pop("corpus"), out, **args)
        elif step.tool == "score":
            from colzero.data.teacher import score_file

            n = score_file(args.pop("model"), args.pop("input"), args.pop("documents"), out, **args)
        elif "beir" in args:  # negatives for a BEIR split's queries, from its own qrels and corpus
            from colzero.data.mining import mine_beir

            n = mine_beir(args.pop("beir"), out, **args)
        else:
            from colzero.data.mining import mine_file

            n = mine_file(args.pop("input"), args.pop("documents"), out, **args)
        logger.info("prepare[%d] %s: %d rows -> %s (%.1f s)", i, step.tool, n, out, time.perf_counter() - t0)
    return outputs


# ---------------------------------------------------------------------- prompts
def check_static_alignment(recipe: Recipe) -> list[str]:
    """Consecutive phases must use the same prompts (refused unless allow_prompt_mismatch)."""
    warnings = []
    for i in range(1, len(recipe.phases)):
        if recipe.phases[i].model:
            continue
        before = prompt_tools.normalize_prompts(recipe.prompts_for(i - 1))
        now = prompt_tools.normalize_prompts(recipe.prompts_for(i))
        if before != now:
            msg = (
                f"phase {recipe.phases[i].name!r}: prompts are not aligned with phase "
                f"{recipe.phases[i - 1].name!r}: the previous phase trains with {prompt_tools.describe(before)}, "
                f"this phase uses {prompt_tools.describe(now)}. ColBERT-Zero found that misaligned prompts "
                "cost more than 0.8 nDCG@10 points; set `allow_prompt_mismatch = true` to run anyway."
            )
            if not recipe.allow_prompt_mismatch:
                raise prompt_tools.PromptMismatchError(msg)
            warnings.append(msg)
    return warnings


def _start_for(recipe: Recipe, index: int, previous: Path | None) -> str:
    p = recipe.phases[index]
    if p.model:
        return p.model
    return str(previous) if previous is not None else recipe.model.base


def _declared_prompts(recipe: Recipe, start: str) -> dict[str, str] | None:
    """The prompts ``[model] base_prompts`` declares for ``start`` (the base model only)."""
    return recipe.model.base_prompts if start == recipe.model.base else None


def _local_path(value: str) -> Path | None:
    path = Path(value)
    return path if (path.is_absolute() or value.startswith(".")) else None


def _record_history(model_dir: Path, entry: dict[str, Any], history: list[dict[str, Any]]) -> None:
    """Append this phase to the ``training.phases`` history in the saved model config."""
    cfg_file = model_dir / "config_sentence_transformers.json"
    if not cfg_file.is_file():
        return
    cfg = _read_json(cfg_file)
    block = cfg.setdefault("colzero", {})
    record = block.setdefault(prompt_tools.RECORD_KEY, {})
    record["phases"] = [*history, entry]
    _write_json(cfg_file, cfg)


# ---------------------------------------------------------------------- the run
def plan(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    """One row per phase: start model, loss, temperature, learning rate, batch, settings and config."""
    rows = []
    prev: Path | None = None
    for i, p in enumerate(recipe.phases):
        out = run_dir / recipe.phase_dir_name(i)
        start = _start_for(recipe, i, prev)
        cfg = recipe.phase_config(i, model=start, output_dir=out)
        rows.append(
            {
                "phase": recipe.phase_dir_name(i),
                "stage": p.stage,
                "start": start,
                "loss": p.loss.kind,
                "temperature": p.loss.temperature if p.loss.kind != "distillation" else None,
                "lr": p.optim.learning_rate,
                "global_batch": recipe.global_batch(i),
                "epochs": p.epochs,
                "max_steps": p.max_steps,
                "settings": recipe.settings_for(i),
                "sources": [s.name for s in p.sources],
                "config": cfg.to_dict(),
            }
        )
        prev = out / "final"
    return rows


def plan_sources(recipe: Recipe, run_dir: Path) -> list[dict[str, Any]]:
    """Per phase, every source (splits expanded) with its size and its share of the phase's rows."""
    from colzero.data.sources import source_sizes

    prepared = {str(Path(step.output)) for step in recipe.prepare}
    out = []
    for i in range(len(recipe.phases)):
        cfg = recipe.phase_config(i, model="<start>", output_dir=run_dir / recipe.phase_dir_name(i))
        sizes = source_sizes(cfg.sources, prepared)
        known = sum(s.rows for s in sizes if s.rows is not None)
        for s in sizes:
            share = s.rows / known if (s.rows is not None and known) else None
            out.append(
                {
                    "phase": recipe.phase_dir_name(i),
                    "source": s.name,
                    "rows": s.rows,
                    "share": share,
                    "from": s.origin,
                }
            )
    return out


def default_run_dir(recipe_name: str) -> Path:
    """``runs/<recipe name>``."""
    return Path("runs") / recipe_name


def run_recipe(
    recipe_ref: str | Path,
    run_dir: str | Path | None = None,
    *,
    dry_run: bool = False,
    overrides: dict[str, Any] | None = None,
    phase_runner: Callable[..., Path] | None = None,
    evaluate: bool = True,
    show_progress: bool = True,
    log_file: bool = False,
    progress: Progress = SILENT,
) -> RunResult:
    """Validate ``recipe_ref`` (a TOML path or a preset name) and run it into ``run_dir``.

    ``log_file=True`` copies colzero's log records (INFO and up) to ``RUN/logs/pipeline.log`` for
    the duration of the run (rank 0); the library adds no log handler otherwise. ``progress``
    (:class:`colzero.progress.Progress`, rank 0) hears the preparation, every phase's steps and
    every evaluation (the phases then draw no tqdm bar).

    Under torchrun every rank calls this: all ranks train each phase together; only rank 0 writes
    the run files, runs the preparation tools and evaluates (on its device), the others wait.
    """
    t_start = time.perf_counter()
    text, display, _ = read_recipe_text(recipe_ref)
    probe = load_recipe(recipe_ref, overrides=overrides)
    run_dir = (Path(run_dir) if run_dir is not None else default_run_dir(probe.name)).resolve()
    recipe = load_recipe(recipe_ref, run_dir=run_dir, overrides=overrides)
    warnings = check_static_alignment(recipe)
    result = RunResult(run_dir=run_dir, final_model=None, plan=plan(recipe, run_dir))
    if dry_run:
        check_start_models(recipe, run_dir, display)
        return result
    from colzero.training.distributed import setup

    run = _RecipeRun(recipe, run_dir, setup(), evaluate, show_progress)
    run.progress = progress if run.dist.is_main else SILENT
    run.dist.on_main(run.write_run_files, text, warnings)
    run.progress.run_started(recipe.name, [p.name for p in recipe.phases])
    with run.log_to_file() if log_file else contextlib.nullcontext():
        run.dist.on_main(run_prepare, recipe, run.progress)
        run.dist.on_main(run.evaluate_start)
        runner = phase_runner or run_phase
        for i in range(len(recipe.phases)):
            result.phases.append(run.phase(i, runner))
        summary = run.dist.on_main(run.finish, time.perf_counter() - t_start)
    result.final_model = run_dir / "final"
    result.evaluation = run.evaluation
    result.cost = (summary or {}).get("cost", {})
    result.wall_time_s = time.perf_counter() - t_start
    return result


def check_start_models(recipe: Recipe, run_dir: Path, display: str) -> None:
    """Dry run: local start models exist and their prompts match the phases that start from them."""
    for i, p in enumerate(recipe.phases):
        if not (i == 0 or p.model):
            continue
        start = _start_for(recipe, i, None if i == 0 else run_dir)
        local, declared = _local_path(start), _declared_prompts(recipe, start)
        if local is not None and not local.exists():
            raise FileNotFoundError(f"{display}: phases[{i}]: start model {local} does not exist")
        if local is None and declared is None:
            continue
        prompt_tools.check_alignment(
            start,
            recipe.prompts_for(i),
            phase_name=p.name,
            allow_mismatch=recipe.allow_prompt_mismatch,
            declared=declared,
        )


def _as_validated_now(resolved: Any) -> Any:
    """A run's saved ``recipe.resolved.json`` as this version validates it: an older colzero wrote
    settings it did not know yet as null (or left them out), so the same recipe resumes after an
    upgrade; anything the schema no longer accepts compares as a different recipe."""

    def without_nulls(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_nulls(v) for k, v in value.items() if v is not None}
        if isinstance(value, list):
            return [without_nulls(v) for v in value]
        return value

    try:
        return validate_recipe(without_nulls(resolved), "recipe.resolved.json").model_dump(mode="json")
    except RecipeError:
        return resolved


class _RecipeRun:
    """The steps of one recipe run; rank 0 does what writes or evaluates (see :func:`run_recipe`)."""

    def __init__(self, recipe: Recipe, run_dir: Path, dist: Any, evaluate: bool, show_progress: bool) -> None:
        self.recipe, self.run_dir, self.dist = recipe, run_dir, dist
        self.evaluate, self.show_progress = evaluate, show_progress
        self.evaluation: dict[str, dict[str, dict[str, float]]] = {}
        self.history: list[dict[str, Any]] = []
        self.previous: Path | None = None
        self.progress: Progress = SILENT

    def write_run_files(self, text: str, warnings: list[str]) -> None:
        resolved = self.recipe.model_dump(mode="json")
        before = self.run_dir / "recipe.resolved.json"
        if before.exists() and _as_validated_now(_read_json(before)) != resolved:
            raise RecipeError(
                f"{self.run_dir} holds a run of a different recipe (recipe.resolved.json differs); "
                "use another --output folder"
            )
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        if not (self.run_dir / "recipe.toml").exists():
            (self.run_dir / "recipe.toml").write_text(text, encoding="utf-8")
        _write_json(self.run_dir / "recipe.resolved.json", resolved)
        for w in warnings:
            logger.warning(w)

    def log_to_file(self) -> contextlib.AbstractContextManager[None]:
        """Rank 0's pipeline log in ``RUN/logs/pipeline.log`` for the duration of the run."""

        @contextlib.contextmanager
        def scope() -> Iterator[None]:
            if not self.dist.is_main:
                yield
                return
            handler = logging.FileHandler(self.run_dir / "logs" / "pipeline.log", encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
            root = logging.getLogger("colzero")
            root.addHandler(handler)
            if root.level == logging.NOTSET or root.level > logging.INFO:
                root.setLevel(logging.INFO)
            try:
                yield
            finally:
                root.removeHandler(handler)
                handler.close()

        return scope()

    def _evaluates(self) -> bool:
        return self.evaluate and bool(self.recipe.evaluation.datasets)

    def evaluate_start(self) -> None:
        recipe, path = self.recipe, self.run_dir / "eval" / "start.json"
        if not (self._evaluates() and recipe.evaluation.evaluate_start):
            return
        if path.exists():
            self.evaluation["start"] = _read_json(path)
        elif _local_path(recipe.model.base) is not None or Path(recipe.model.base).exists():
            scores = evaluate_model(
                recipe.model.base,
                recipe,
                0,
                recipe.evaluation.intermediate_datasets,
                self.dist.device,
                label="start",
                progress=self.progress,
            )
            self.evaluation["start"] = scores
            _write_json(path, scores)

    def phase(self, i: int, runner: Callable[..., Path]) -> dict[str, Any]:
        recipe = self.recipe
        name, p = recipe.phase_dir_name(i), recipe.phases[i]
        phase_dir = self.run_dir / name
        done = phase_dir / DONE
        if done.exists():
            record = _read_json(done)
            self.previous = Path(record["final"])
            self.history.append(record["entry"])
            if (phase_dir / "eval.json").exists():
                self.evaluation[name] = _read_json(phase_dir / "eval.json")
            logger.info("%s: done, skipped (%s)", name, self.previous)
            self.progress.phase_finished(p.name, {**self._phase_counters(phase_dir), "skipped": True})
            return {**record, "skipped": True}
        start = _start_for(recipe, i, self.previous)
        declared = _declared_prompts(recipe, start)
        if (_local_path(start) is not None or declared is not None) and self.dist.is_main:
            msg = prompt_tools.check_alignment(
                start,
                recipe.prompts_for(i),
                phase_name=p.name,
                allow_mismatch=recipe.allow_prompt_mismatch,
                declared=declared,
            )
            if msg:
                logger.warning(msg)
        cfg = recipe.phase_config(i, model=start, output_dir=phase_dir)
        logger.info("%s: start from %s", name, start)
        t0 = time.perf_counter()
        extra = {"progress": self.progress} if self.progress is not SILENT else {}
        final = Path(runner(cfg, resume=True, eval_hook=None, show_progress=self.show_progress, **extra))
        self.progress.phase_finished(p.name, {**self._phase_counters(phase_dir), "skipped": False})
        entry = {
            "phase": p.name,
            "stage": p.stage,
            "start": start,
            "sources": [s.name for s in p.sources],
            "prompts": prompt_tools.normalize_prompts(recipe.prompts_for(i)),
            "settings": recipe.settings_for(i),
        }
        record = {"final": str(final), "entry": entry}
        self.dist.on_main(self._close_phase, i, final, record, t0)
        self.history.append(entry)
        self.previous = final
        return record

    @staticmethod
    def _phase_counters(phase_dir: Path) -> dict[str, Any]:
        cost = PhaseCost.read(phase_dir)
        if cost is None:
            return {}
        return {"steps": cost.steps, "wall_s": cost.wall_s, "examples": cost.examples}

    def _close_phase(self, i: int, final: Path, record: dict[str, Any], t0: float) -> None:
        recipe, name = self.recipe, self.recipe.phase_dir_name(i)
        _record_history(final, record["entry"], self.history)
        last = i == len(recipe.phases) - 1
        if self._evaluates() and recipe.evaluation.each_phase and (last or recipe.phases[i].evaluate):
            subset = None if last else recipe.evaluation.intermediate_datasets
            self.evaluation[name] = evaluate_model(
                final, recipe, i, subset, self.dist.device, label=name, progress=self.progress
            )
            _write_json(self.run_dir / name / "eval.json", self.evaluation[name])
        record["wall_time_s"] = time.perf_counter() - t0
        _write_json(self.run_dir / name / DONE, record)

    def finish(self, wall_time_s: float) -> dict[str, Any]:
        recipe, run_dir = self.recipe, self.run_dir
        assert self.previous is not None
        final_dir = run_dir / "final"
        tmp = run_dir / "final.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(self.previous, tmp)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        tmp.replace(final_dir)
        costs = [
            (recipe.phase_dir_name(i), PhaseCost.read(run_dir / recipe.phase_dir_name(i)))
            for i in range(len(recipe.phases))
        ]
        cost = summarize(costs)
        from colzero.training.model_card import write_model_card

        write_model_card(final_dir, recipe, self.evaluation, cost)
        summary = {
            "recipe": recipe.name,
            "final": str(final_dir),
            "evaluation": self.evaluation,
            "cost": cost,
            "wall_time_s_this_invocation": wall_time_s,
        }
        _write_json(run_dir / "summary.json", summary)
        return summary
