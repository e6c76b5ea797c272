"""PLAID-style multi-vector index: residual compression, inverted lists, atomic storage."""

from colzero.index.codec import PQResidualCodec, ResidualCodec, default_num_centroids, load_codec
from colzero.index.exact import exact_search, index_recall_against_exact, recall_at_k
from colzero.index.plaid import Index, IndexCorruptError, ModelMismatchError, SearchSettings, iter_documents
from colzero.index.sharded import build_sharded

__all__ = [
    "Index",
    "IndexCorruptError",
    "ModelMismatchError",
    "PQResidualCodec",
    "ResidualCodec",
    "SearchSettings",
    "build_sharded",
    "default_num_centroids",
    "exact_search",
    "index_recall_against_exact",
    "iter_documents",
    "load_codec",
    "recall_at_k",
]
