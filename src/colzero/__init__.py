"""colzero: train late-interaction retrieval models the ColBERT-Zero way."""

from colzero._version import __version__
from colzero.model.colbert import ColBERT
from colzero.model.config import ColBERTConfig, DenseConfig
from colzero.model.dense import DenseModel
from colzero.model.loading import load_model
from colzero.scoring.maxsim import maxsim_all_pairs, maxsim_nway, maxsim_pairwise
from colzero.scoring.packed import PaddedEmbeddings, pad_embeddings

__all__ = [
    "ColBERT",
    "ColBERTConfig",
    "DenseConfig",
    "DenseModel",
    "PaddedEmbeddings",
    "__version__",
    "load_model",
    "maxsim_all_pairs",
    "maxsim_nway",
    "maxsim_pairwise",
    "pad_embeddings",
]
