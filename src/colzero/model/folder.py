"""Reading and writing sentence-transformers model folders (PyLate's keys for ColBERT).

Layout written by colzero (identical to PyLate 1.6 / sentence-transformers)::

    modules.json                      [Transformer at "", Dense at "1_Dense"]   (ColBERT)
                                      [Transformer at "", Pooling, Normalize]   (DenseModel)
    config.json, model.safetensors    the backbone (transformers ``save_pretrained``)
    tokenizer files                   with the marker tokens added
    sentence_bert_config.json         {"max_seq_length", "do_lower_case"}
    config_sentence_transformers.json PyLate keys + a "colzero" block
    1_Dense/{config.json, model.safetensors}  bias-free projection, key "linear.weight"

Folders are written to a temporary sibling and renamed into place, so a killed save never
leaves a half-written model where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file


class ModelLoadError(ValueError):
    """A model folder is missing a file or holds a corrupt one; the message names it."""


@dataclass
class FolderDescription:
    """What a model folder holds, read from its metadata files (no weights loaded)."""

    root: Path
    backbone_dir: Path
    modules: list[dict[str, Any]] = field(default_factory=list)
    st_config: dict[str, Any] = field(default_factory=dict)
    sbert_config: dict[str, Any] = field(default_factory=dict)
    dense_dirs: list[Path] = field(default_factory=list)
    pooling: dict[str, Any] | None = None
    normalize: bool = False

    @property
    def is_multi_vector(self) -> bool:
        """Whether the folder holds a ColBERT (PyLate / colzero) model."""
        return (
            self.st_config.get("similarity_fn_name") == "MaxSim"
            or self.st_config.get("model_type") == "ColBERT"
        )


def read_json(path: Path) -> Any:
    """A JSON file's content; a malformed file is a ModelLoadError naming the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path}: file is missing") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(
            f"{path}: line {exc.lineno}, column {exc.colno}: invalid JSON ({exc.msg})"
        ) from exc
    if not isinstance(value, dict | list):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return value


def resolve_model_path(name_or_path: str | os.PathLike[str]) -> Path:
    """A local folder as it is; otherwise a Hugging Face hub name, downloaded to the cache."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ModelLoadError(f"{path}: expected a model folder, found a file")
    name = str(name_or_path)
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelLoadError(f"{name}: no such model folder")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name))
    except Exception as exc:  # offline, unknown repo, auth: say what was tried
        raise ModelLoadError(
            f"{name}: not a local folder and could not be fetched from the hub ({exc})"
        ) from exc


def describe_folder(root: Path) -> FolderDescription:
    """Parse ``modules.json`` and friends; a plain transformers folder has none of them."""
    if not (root / "config.json").exists() and not (root / "modules.json").exists():
        raise ModelLoadError(f"{root}: neither config.json nor modules.json found; not a model folder")
    desc = FolderDescription(root=root, backbone_dir=root)
    if (root / "modules.json").exists():
        modules = read_json(root / "modules.json")
        if not isinstance(modules, list):
            raise ModelLoadError(f"{root / 'modules.json'}: expected a list of modules")
        desc.modules = modules
        for i, module in enumerate(modules):
            kind = str(module.get("type", ""))
            sub = root / str(module.get("path", ""))
            short = kind.rsplit(".", 1)[-1]
            if short != "Normalize" and not sub.is_dir():  # Normalize has no files
                raise ModelLoadError(
                    f"{root / 'modules.json'}: module {i} ({kind}) points to missing folder {sub}"
                )
            if short == "Transformer":
                desc.backbone_dir = sub
            elif short == "Dense":
                desc.dense_dirs.append(sub)
            elif short == "Pooling":
                desc.pooling = read_json(sub / "config.json")
            elif short == "Normalize":
                desc.normalize = True
    if (root / "config_sentence_transformers.json").exists():
        desc.st_config = read_json(root / "config_sentence_transformers.json")
    sbert = desc.backbone_dir / "sentence_bert_config.json"
    if sbert.exists():
        desc.sbert_config = read_json(sbert)
    if not (desc.backbone_dir / "config.json").exists():
        raise ModelLoadError(f"{desc.backbone_dir / 'config.json'}: file is missing (the backbone's config)")
    return desc


def load_linear_weight(dense_dir: Path) -> torch.Tensor:
    """The weight of a sentence-transformers / PyLate ``Dense`` layer (bias must be absent)."""
    config = read_json(dense_dir / "config.json")
    weights = dense_dir / "model.safetensors"
    if weights.exists():
        try:
            state = load_file(str(weights))
        except (SafetensorError, OSError) as exc:
            raise ModelLoadError(f"{weights}: corrupt safetensors file ({exc})") from exc
    elif (dense_dir / "pytorch_model.bin").exists():
        state = torch.load(dense_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise ModelLoadError(f"{weights}: file is missing (the projection weights)")
    if "linear.weight" not in state:
        raise ModelLoadError(f"{weights}: no 'linear.weight' tensor (found {sorted(state)})")
    weight = state["linear.weight"]
    expected = (config.get("out_features"), config.get("in_features"))
    if tuple(weight.shape) != expected:
        raise ModelLoadError(
            f"{weights}: linear.weight has shape {tuple(weight.shape)}, config says {expected}"
        )
    if config.get("bias") or "linear.bias" in state:
        raise ModelLoadError(f"{dense_dir}: projection has a bias; colzero's projection is bias-free")
    act = str(config.get("activation_function", "torch.nn.modules.linear.Identity"))
    if not act.endswith("Identity"):
        raise ModelLoadError(
            f"{dense_dir / 'config.json'}: activation_function {act} is not supported (Identity only)"
        )
    return weight


def save_linear(dense_dir: Path, weight: torch.Tensor) -> None:
    """Write a bias-free linear layer as PyLate's ``Dense`` module folder."""
    dense_dir.mkdir(parents=True, exist_ok=True)
    out_features, in_features = weight.shape
    config = {
        "in_features": int(in_features),
        "out_features": int(out_features),
        "bias": False,
        "activation_function": "torch.nn.modules.linear.Identity",
        "use_residual": False,
    }
    (dense_dir / "config.json").write_text(json.dumps(config, indent=4))
    save_file({"linear.weight": weight.detach().to("cpu").contiguous()}, str(dense_dir / "model.safetensors"))


def write_json(path: Path, value: Any) -> None:
    """Write ``value`` as indented JSON."""
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success it replaces ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_directory(tmp, target)


def replace_directory(src: Path, target: Path) -> None:
    """Move ``src`` onto ``target``; the old ``target`` is removed only once ``src`` is in place."""
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, backup)
    os.replace(src, target)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
