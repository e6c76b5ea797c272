"""README.md model card for a model trained by a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from colzero.evaluation.metrics import MAIN_METRIC
from colzero.losses import LOSSES
from colzero.training.recipe import Recipe


def render_model_card(
    recipe: Recipe,
    evaluation: dict[str, dict[str, dict[str, float]]],
    cost: dict[str, Any],
    model_dir: str = "RUN/final",
) -> str:
    """The model card (Markdown with Hugging Face front matter) of a recipe's final model."""
    lines = [
        "---",
        "library_name: colzero",
        "tags: [ColBERT, PyLate, sentence-transformers, late-interaction, colzero]"
        if recipe.model.type == "colbert"
        else "tags: [sentence-transformers, dense, colzero]",
        "---",
        "",
        f"# {recipe.name}",
        "",
        recipe.description,
        "",
        f"Trained with colzero's `{recipe.name}` recipe, starting from `{recipe.model.base}` "
        f"({recipe.model.type} model).",
        "",
        "## Phases",
        "",
        "| # | phase | stage | loss | τ | lr | global batch | epochs / max steps | data |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for i, p in enumerate(recipe.phases):
        lines.append(
            f"| {i + 1} | {p.name} | {p.stage} | {p.loss.kind} | {p.loss.temperature if p.loss.kind != 'distillation' else '-'} | "
            f"{p.optim.learning_rate:g} | {recipe.global_batch(i)} | {p.epochs} / {p.max_steps or '-'} | "
            + ", ".join(f"`{s.name}`" for s in p.sources)
            + " |"
        )
    kinds = list(dict.fromkeys(p.loss.kind for p in recipe.phases))
    lines += ["", "Losses: " + "; ".join(f"`{k}`: {LOSSES[k].citation}" for k in kinds) + "."]
    lines += ["", "## Data sources", ""]
    for i, p in enumerate(recipe.phases):
        for s in p.sources:
            origin = f" — {s.origin}" if s.origin else ""
            lines.append(
                f"- phase {i + 1} `{s.name}`: `{s.path}`{f' (split `{s.split}`)' if s.split else ''}{origin}"
            )
    settings = recipe.settings_for(len(recipe.phases) - 1)
    lines += ["", "## Model settings", "", "```", *[f"{k} = {v!r}" for k, v in settings.items()], "```"]
    if evaluation:
        datasets = sorted({d for scores in evaluation.values() for d in scores})
        lines += [
            "",
            f"## Evaluation ({MAIN_METRIC} × 100)",
            "",
            "| model | " + " | ".join(datasets) + " |",
            "|---" * (len(datasets) + 1) + "|",
        ]
        for stage, scores in evaluation.items():
            cells = []
            for d in datasets:
                v = scores.get(d, {}).get(MAIN_METRIC)
                cells.append("-" if v is None else f"{100 * v:.2f}")
            lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    total = (cost or {}).get("total") or {}
    if total:
        lines += [
            "",
            "## Training cost",
            "",
            f"examples {total.get('examples', 0):,}, tokens {total.get('tokens', 0):,}, "
            f"wall time {total.get('wall_s', 0):,.0f} s, device-hours {total.get('device_hours', 0):.3f}",
        ]
    if recipe.notes:
        lines += ["", "## Notes", "", *[f"- {n}" for n in recipe.notes]]
    q = settings.get("prompts", {}).get("query", "")
    lines += [
        "",
        "## Usage",
        "",
        "colzero:",
        "",
        "```python",
        "from colzero import load_model",
        f'model = load_model("{model_dir}")',
        'q = model.encode(["what is late interaction?"], role="query")',
        'd = model.encode(["ColBERT scores queries against documents token by token."], role="document")',
        "```",
        "",
    ]
    if recipe.model.type == "colbert":
        lines += [
            "PyLate (the folder is PyLate's format; prompts are saved in the config):",
            "",
            "```python",
            "from pylate import models",
            f'model = models.ColBERT(model_name_or_path="{model_dir}")',
            'q = model.encode(["what is late interaction?"], is_query=True)',
            "```",
            "",
            "sentence-transformers (multi-vector):",
            "",
            "```python",
            "from sentence_transformers import MultiVectorEncoder",
            f'model = MultiVectorEncoder("{model_dir}")',
            "```",
        ]
    else:
        lines += [
            "sentence-transformers:",
            "",
            "```python",
            "from sentence_transformers import SentenceTransformer",
            f'model = SentenceTransformer("{model_dir}")',
            "```",
        ]
    if q:
        lines += ["", f"Queries are prefixed with the prompt {q!r} automatically (saved `prompts`)."]
    return "\n".join(lines) + "\n"


def write_model_card(
    model_dir: str | Path,
    recipe: Recipe,
    evaluation: dict[str, dict[str, dict[str, float]]],
    cost: dict[str, Any],
) -> Path:
    """Write ``model_dir/README.md``."""
    path = Path(model_dir) / "README.md"
    path.write_text(render_model_card(recipe, evaluation, cost, str(model_dir)), encoding="utf-8")
    return path
