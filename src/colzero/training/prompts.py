"""Prompt alignment between pre-training and fine-tuning.

The ColBERT-Zero paper found that prompts must be *aligned* across phases: adding prompts to a
model pre-trained without them, or dropping them from one pre-trained with them, costs more than
0.8 nDCG@10 points on BEIR. A model therefore records the prompts (and lengths) it was trained
with in ``model.training_record`` (saved in the ``colzero`` block of
``config_sentence_transformers.json``), and a phase whose prompts differ is refused unless the
recipe sets ``allow_prompt_mismatch = true``.

A start model's prompts can also be *declared* (a recipe's ``[model] base_prompts``, a grid
start's ``prompts``): a declaration is the truth and wins over what the saved config says. This
matters for models whose saved config lies by omission, e.g. ``nomic-ai/modernbert-embed-base``
was trained with ``search_query: `` / ``search_document: `` but saves empty prompts, so a local
copy of it would otherwise be taken for a model trained without prompts (and a hub name, never
read before training, would not be checked at all).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: key of the training record inside the ``colzero`` block of config_sentence_transformers.json
RECORD_KEY = "training"


class PromptMismatchError(ValueError):
    """A phase would train with prompts that differ from those the start model was trained with."""


def normalize_prompts(prompts: dict[str, str] | None) -> dict[str, str]:
    """Drop empty prompts: ``{"query": ""}`` and ``{}`` mean the same thing."""
    return {k: v for k, v in sorted((prompts or {}).items()) if v}


def make_record(
    prompts: dict[str, str] | None,
    lengths: dict[str, int],
    phases: list[dict[str, Any]],
) -> dict[str, Any]:
    """The ``training_record`` dict a trained model carries."""
    return {RECORD_KEY: {"prompts": normalize_prompts(prompts), "lengths": dict(lengths), "phases": phases}}


def recorded_prompts(model_path: str | Path) -> dict[str, str] | None:
    """Prompts a saved model was trained with, or None when nothing is known.

    Order: colzero's training record; else the ``prompts`` of a sentence-transformers config
    (a retrieval model trained elsewhere, e.g. nomic-ai/modernbert-embed-base); a plain
    transformers folder (an MLM checkpoint) records nothing and is compatible with any prompts.
    Hub names that are not local folders also return None (they are checked after download).
    """
    path = Path(model_path)
    cfg_file = path / "config_sentence_transformers.json"
    if not cfg_file.is_file():
        return None
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    record = (cfg.get("colzero") or {}).get(RECORD_KEY)
    if isinstance(record, dict) and isinstance(record.get("prompts"), dict):
        return normalize_prompts(record["prompts"])
    if "prompts" in cfg and isinstance(cfg["prompts"], dict):
        return normalize_prompts(cfg["prompts"])
    if (path / "modules.json").is_file():  # a sentence-transformers model saved without prompts
        return {}
    return None


def recorded_phases(model_path: str | Path) -> list[dict[str, Any]]:
    """The phase history recorded in a saved model (empty when none)."""
    cfg_file = Path(model_path) / "config_sentence_transformers.json"
    if not cfg_file.is_file():
        return []
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return []
    record = (cfg.get("colzero") or {}).get(RECORD_KEY)
    return list(record.get("phases", [])) if isinstance(record, dict) else []


def describe(prompts: dict[str, str] | None) -> str:
    p = normalize_prompts(prompts)
    if not p:
        return "no prompts"
    return ", ".join(f"{k}={v!r}" for k, v in p.items())


def check_alignment(
    start_model: str | Path,
    phase_prompts: dict[str, str] | None,
    *,
    phase_name: str = "",
    allow_mismatch: bool = False,
    declared: dict[str, str] | None = None,
) -> str | None:
    """Refuse (raise) a phase whose prompts differ from the start model's prompts: ``declared``
    when given (module docstring; empty prompts count as none), else those recorded in the saved
    model (:func:`recorded_prompts`).

    Returns a warning message when a mismatch is allowed, None when aligned or unknown.
    """
    recorded = normalize_prompts(declared) if declared is not None else recorded_prompts(start_model)
    if recorded is None:
        return None
    wanted = normalize_prompts(phase_prompts)
    if recorded == wanted:
        return None
    msg = (
        f"phase {phase_name!r}: prompts are not aligned with the start model {start_model}: "
        f"the model was trained with {describe(recorded)}"
        f"{' (declared)' if declared is not None else ''}, the phase uses {describe(wanted)}. "
        "ColBERT-Zero found that misaligned prompts between pre-training and fine-tuning cost more "
        "than 0.8 nDCG@10 points; set the same prompts, or `allow_prompt_mismatch = true` in the recipe."
    )
    if not allow_mismatch:
        raise PromptMismatchError(msg)
    return msg
