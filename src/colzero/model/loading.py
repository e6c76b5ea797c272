"""Open any model folder as the right class."""

from __future__ import annotations

import os
from typing import Any

from colzero.model.colbert import ColBERT
from colzero.model.dense import DenseModel
from colzero.model.encoder import Encoder
from colzero.model.folder import describe_folder, resolve_model_path


def load_model(name_or_path: str | os.PathLike[str], **kwargs: Any) -> Encoder:
    """A ColBERT for multi-vector folders (PyLate / colzero), a DenseModel otherwise."""
    desc = describe_folder(resolve_model_path(name_or_path))
    cls = ColBERT if desc.is_multi_vector else DenseModel
    return cls.from_pretrained(name_or_path, **kwargs)
