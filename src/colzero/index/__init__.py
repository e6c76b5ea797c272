"""PLAID-style multi-vector index: residual compression, inverted lists, atomic storage, filters.

Layout: ``plaid.py`` the :class:`Index` facade; ``generations.py`` the index folder (the
published generation, the writers' lock, leftovers); ``storage.py`` the on-disk format of one
build (files, checksums, the SQLite document table); ``documents.py`` the corpus reader; ``build.py`` the
streamed build steps; ``codec.py`` the residual codecs; ``stages.py`` the search stages as
functions over arrays; ``filters.py`` metadata filters; ``exact.py`` exact search and recall;
``sharded.py`` builds under ``torchrun``.
"""

from collections.abc import Iterator
from typing import Any

from colzero.index.codec import PQResidualCodec, ResidualCodec, default_num_centroids, load_codec
from colzero.index.documents import Document, read_documents
from colzero.index.exact import exact_search, index_recall_against_exact, recall_at_k
from colzero.index.filters import FilterError, check_filter, compile_filter, parse_filter
from colzero.index.plaid import Index, IndexBusyError, IndexCorruptError, ModelMismatchError, SearchSettings
from colzero.index.sharded import build_sharded


def iter_documents(source: Any) -> Iterator[tuple[str, str]]:
    """(id, encoded text) of each document of ``source`` (see :func:`read_documents`)."""
    for doc in read_documents(source):
        yield doc.id, doc.text


__all__ = [
    "Document",
    "FilterError",
    "Index",
    "IndexBusyError",
    "IndexCorruptError",
    "ModelMismatchError",
    "PQResidualCodec",
    "ResidualCodec",
    "SearchSettings",
    "build_sharded",
    "check_filter",
    "compile_filter",
    "default_num_centroids",
    "exact_search",
    "index_recall_against_exact",
    "iter_documents",
    "load_codec",
    "parse_filter",
    "read_documents",
    "recall_at_k",
]
