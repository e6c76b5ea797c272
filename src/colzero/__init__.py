"""colzero: train late-interaction retrieval models the ColBERT-Zero way."""

__version__ = "0.1.0"

from colzero.model.colbert import ColBERT, PaddedEmbeddings, pad_embeddings  # noqa: E402
from colzero.model.config import ColBERTConfig, DenseConfig  # noqa: E402
from colzero.model.dense import DenseModel  # noqa: E402
from colzero.model.loading import load_model  # noqa: E402
from colzero.scoring.maxsim import maxsim_all_pairs, maxsim_nway, maxsim_pairwise  # noqa: E402

__all__ = [
    "ColBERT",
    "ColBERTConfig",
    "DenseConfig",
    "DenseModel",
    "PaddedEmbeddings",
    "load_model",
    "maxsim_all_pairs",
    "maxsim_nway",
    "maxsim_pairwise",
    "pad_embeddings",
    "__version__",
]
