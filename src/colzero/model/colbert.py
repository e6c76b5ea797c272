"""The ColBERT (multi-vector) model: backbone + bias-free projection + per-token L2 norm.

Token layout (as PyLate): ``[CLS] [Q] tokens... [SEP] [MASK]...`` for queries (padded with the
mask token up to ``query_length`` when ``do_query_expansion``), ``[CLS] [D] tokens... [SEP]`` for
documents (dynamic padding). Role prompts are prepended as text before tokenisation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from colzero._version import __version__
from colzero.model.base import (
    EncoderBase,
    RowLayout,
    TokenizedBatch,
    apply_attn_implementation,
    check_role,
    check_texts,
    load_backbone,
    usable_attn_implementation,
)
from colzero.model.config import ColBERTConfig, Role, resolve_config
from colzero.model.folder import (
    ModelLoadError,
    atomic_directory,
    describe_folder,
    load_linear_weight,
    resolve_model_path,
    save_linear,
    write_json,
)
from colzero.model.precision import Precision
from colzero.scoring.packed import PaddedEmbeddings

logger = logging.getLogger(__name__)

#: keys of config_sentence_transformers.json that PyLate reads
PYLATE_KEYS = (
    "query_prefix",
    "document_prefix",
    "query_length",
    "document_length",
    "attend_to_expansion_tokens",
    "skiplist_words",
    "do_query_expansion",
    "prompts",
)


class ColBERT(EncoderBase):
    """A late-interaction retrieval model.

    Build one with :meth:`from_pretrained` (a PyLate / sentence-transformers ColBERT folder, a
    dense sentence-transformers folder, a plain transformers encoder, or a hub name) or directly
    from an in-memory backbone and tokenizer.
    """

    config: ColBERTConfig
    #: token ids of the punctuation skiplist (a buffer)
    skiplist_ids: torch.Tensor

    def __init__(
        self,
        backbone: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        config: ColBERTConfig | None = None,
        projection_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__(backbone, tokenizer)
        self.config = config or ColBERTConfig()
        apply_attn_implementation(backbone, self.config.attn_implementation)
        self.projection = nn.Linear(self.hidden_size, self.config.embedding_dim, bias=False)
        if projection_weight is not None:
            if tuple(projection_weight.shape) != (self.config.embedding_dim, self.hidden_size):
                raise ValueError(
                    f"projection weight shape {tuple(projection_weight.shape)} does not match "
                    f"(embedding_dim={self.config.embedding_dim}, hidden={self.hidden_size})"
                )
            with torch.no_grad():
                self.projection.weight.copy_(projection_weight)
        self.projection.to(device=next(backbone.parameters()).device, dtype=next(backbone.parameters()).dtype)
        self._setup_tokens()

    # ------------------------------------------------------------------ construction / IO
    def _setup_tokens(self) -> None:
        tok = self.tokenizer
        markers = [m for m in (self.config.query_prefix, self.config.document_prefix) if m]
        missing = [m for m in dict.fromkeys(markers) if m not in tok.get_vocab()]
        if missing:
            tok.add_tokens(missing)
            self.backbone.resize_token_embeddings(len(tok))
            logger.info("added marker tokens %s to the vocabulary", missing)
        # PyLate pads with the MLM mask token (the query-expansion token); keep the same so saved
        # tokenizers are identical.
        if tok.mask_token is not None:
            tok.pad_token = tok.mask_token
        elif tok.eos_token is not None:
            tok.pad_token = tok.eos_token
        elif tok.pad_token is None:
            raise ValueError("the tokenizer has no mask, eos or pad token to use for query expansion")
        self.expansion_token_id = int(tok.pad_token_id)
        self.marker_ids: dict[str, int | None] = {
            role: (
                int(tok.convert_tokens_to_ids(self.config.prefix_for(role)))  # type: ignore[arg-type]
                if self.config.prefix_for(role)
                else None
            )
            for role in ("query", "document")
        }
        unk = tok.unk_token_id
        ids = {tok.convert_tokens_to_ids(w) for w in self.config.skiplist_words}
        known = {
            i for i in ids if i is not None and (i != unk or tok.unk_token in self.config.skiplist_words)
        }
        self.register_buffer("skiplist_ids", torch.tensor(sorted(known), dtype=torch.long), persistent=False)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        **settings: Any,
    ) -> ColBERT:
        """Load a model; ``settings`` override saved values (see :class:`ColBERTConfig`).

        - PyLate / colzero ColBERT folder: backbone, markers, projection and settings as saved.
        - dense sentence-transformers folder or plain encoder: a new projection is added (seed it
          with ``torch.manual_seed``), markers are added to the vocabulary; saved prompts are kept.
        """
        root = resolve_model_path(name_or_path)
        desc = describe_folder(root)
        saved: dict[str, Any] = {}
        weight = None
        if desc.is_multi_vector:
            saved = {k: desc.st_config.get(k) for k in PYLATE_KEYS}
            saved.update(desc.st_config.get("colzero", {}))
            if not desc.dense_dirs:
                raise ModelLoadError(
                    f"{root / 'modules.json'}: a ColBERT folder needs a Dense (projection) module"
                )
            weight = load_linear_weight(desc.dense_dirs[0])
            for extra in desc.dense_dirs[1:]:  # a chain of linear maps is one linear map
                weight = load_linear_weight(extra) @ weight
            saved["embedding_dim"] = int(weight.shape[0])
            if settings.get("embedding_dim") not in (None, saved["embedding_dim"]):
                raise ValueError(
                    f"{root}: saved projection has dimension {saved['embedding_dim']}, cannot change it to "
                    f"{settings['embedding_dim']} at load time"
                )
        else:
            saved["prompts"] = desc.st_config.get("prompts") or None
            if desc.dense_dirs:
                logger.warning(
                    "%s: dense Dense layers are ignored; a new ColBERT projection is created", root
                )
        if attn_implementation is not None:
            settings["attn_implementation"] = attn_implementation
        config = resolve_config(ColBERTConfig, settings, saved)
        config.attn_implementation = usable_attn_implementation(
            config.attn_implementation, settings.get("attn_implementation"), desc.root
        )
        backbone, tokenizer = load_backbone(desc, config.attn_implementation)
        model = cls(backbone, tokenizer, config, weight)
        if device is not None:
            model.to(device)
        return model

    def save(self, path: str | os.PathLike[str], *, training_record: dict[str, Any] | None = None) -> Path:
        """Write a sentence-transformers / PyLate folder (atomically); returns its path.

        ``training_record`` (how the model was trained) goes into the ``colzero`` block of
        ``config_sentence_transformers.json``.
        """
        path = Path(path)
        with atomic_directory(path) as tmp:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            save_linear(tmp / "1_Dense", self.projection.weight.float())
            write_json(
                tmp / "modules.json",
                [
                    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                    {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
                ],
            )
            max_positions = int(getattr(self.backbone.config, "max_position_embeddings", 512))
            write_json(
                tmp / "sentence_bert_config.json", {"max_seq_length": max_positions, "do_lower_case": False}
            )
            write_json(tmp / "config_sentence_transformers.json", self._st_config(training_record))
        return path

    def _st_config(self, training_record: dict[str, Any] | None) -> dict[str, Any]:
        import transformers

        cfg = asdict(self.config)
        out: dict[str, Any] = {
            "model_type": "ColBERT",
            "__version__": {
                "colzero": __version__,
                "transformers": transformers.__version__,
                "pytorch": torch.__version__,
            },
            "prompts": cfg["prompts"],
            "default_prompt_name": None,
            "similarity_fn_name": "MaxSim",
        }
        out.update({k: cfg[k] for k in PYLATE_KEYS if k != "prompts"})
        out["colzero"] = {k: v for k, v in cfg.items() if k not in PYLATE_KEYS}
        out["colzero"].update(training_record or {})
        return out

    # ------------------------------------------------------------------ tokenisation
    def row_layout(self, role: Role) -> RowLayout:
        """Marker after ``[CLS]``, rows of at most the role's length; queries expanded with the
        expansion token (attended if ``attend_to_expansion_tokens``) up to ``query_length``."""
        marker = self.marker_ids[role]
        length = self.config.length_for(role)
        expand = role == "query" and self.config.do_query_expansion
        return RowLayout(
            id_budget=length - (marker is not None),
            pad_id=self.expansion_token_id,
            marker=marker,
            width=length if expand else 0,
            fill_attention=int(expand and self.config.attend_to_expansion_tokens),
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        role: Role | None = None,
    ) -> torch.Tensor:
        """L2-normalised token vectors (batch, length, embedding_dim), float32.

        Positions the attention mask hides are computed only where they can be scored: query
        expansion without ``flash_attention_compat`` (``role="query"``, or ``role=None``: every
        position, as a padded forward does). Elsewhere (documents, FA-compat) the packed encoder
        skips them and their vectors are zero; the scoring mask never selects them.
        """
        computed = None
        if not self.config.flash_attention_compat and (
            role is None or (role == "query" and self.config.do_query_expansion)
        ):
            computed = torch.ones_like(attention_mask, dtype=torch.bool)
        hidden, layout = self._token_states(input_ids, attention_mask, token_type_ids, computed)
        vectors = F.normalize(self.projection(hidden).float(), p=2, dim=-1)
        if layout is not None:
            return layout.scatter(vectors)
        if self.config.flash_attention_compat:
            vectors = vectors.masked_fill(~attention_mask.bool().unsqueeze(-1), 0.0)
        return vectors

    def embed(self, batch: TokenizedBatch, role: Role) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors and scoring mask of a tokenized batch (gradients flow if enabled)."""
        vectors = self(**batch.model_inputs(), role=role)
        return vectors, self.scoring_mask(batch.input_ids, batch.attention_mask, role)

    def scoring_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, role: Role) -> torch.Tensor:
        """Positions that take part in MaxSim: every query position (with expansion), and the
        attended document tokens that are not in the punctuation skiplist."""
        if role == "query":
            if self.config.do_query_expansion:
                return torch.ones_like(input_ids, dtype=torch.bool)
            return attention_mask.bool()
        keep = attention_mask.bool()
        if self.skiplist_ids.numel():
            keep = keep & ~torch.isin(input_ids, self.skiplist_ids.to(input_ids.device))
        return keep

    # ------------------------------------------------------------------ encoding
    def encode(
        self,
        texts: str | list[str],
        role: Role = "document",
        *,
        batch_size: int = 32,
        prompt: str | None = None,
        output: Literal["list", "padded"] = "list",
        show_progress: bool = False,
        precision: Precision = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> list[torch.Tensor] | torch.Tensor | PaddedEmbeddings:
        """Encode texts into token matrices.

        ``prompt=None`` uses the model's saved prompt for ``role``; ``""`` disables it.
        ``output="list"``: one (n_tokens, dim) matrix per text, documents without padding and
        skiplist tokens, queries with their expansion positions. ``output="padded"``: a
        :class:`PaddedEmbeddings`. A single string returns a single matrix. ``precision="auto"``
        uses bf16 autocast on CUDA and on CPUs with fast bf16 (AMX / AVX512-BF16), else fp32.

        Example (``model`` is any ColBERT, e.g. ``ColBERT.from_pretrained(
        "lightonai/GTE-ModernColBERT-v1")``; the doctest runs on a tiny random one):

        >>> docs = model.encode(["ColBERT scores with MaxSim.", "A fox."])  # one matrix per text
        >>> [tuple(d.shape) for d in docs] == [(d.shape[0], model.config.embedding_dim) for d in docs]
        True
        >>> q = model.encode("what is late interaction?", "query")  # [MASK]-expanded
        >>> q.shape[0] == model.config.query_length
        True
        >>> padded = model.encode(["a fox", "the quick brown fox"], output="padded")
        >>> padded.embeddings.shape[:2] == padded.mask.shape and padded.mask.sum(1).tolist() == [
        ...     len(d) for d in model.encode(["a fox", "the quick brown fox"])]
        True
        """
        role = check_role(role)
        if output not in ("list", "padded"):
            raise ValueError(f"output must be 'list' or 'padded', got {output!r}")
        items, single = check_texts(texts)
        if not items:
            return (
                []
                if output == "list"
                else PaddedEmbeddings(
                    torch.zeros((0, 0, self.config.embedding_dim), dtype=dtype),
                    torch.zeros((0, 0), dtype=torch.bool),
                )
            )
        items = self._with_prompt(items, role, prompt)

        def run(batch: TokenizedBatch) -> list[Any]:
            vectors, mask = self.embed(batch, role)
            vectors = vectors.to("cpu", dtype)
            mask = mask.cpu()
            if output == "padded":
                return [(vectors[i], mask[i]) for i in range(len(vectors))]
            return list(vectors[mask].split(mask.sum(1).tolist()))

        results = self._run_batches(
            items,
            batch_size,
            role,
            run,
            precision,
            show_progress,
            f"Encoding {role}s",
        )
        if output == "list":
            return results[0] if single else results
        width = max(v.shape[0] for v, _ in results)
        emb = torch.zeros((len(results), width, self.config.embedding_dim), dtype=dtype)
        mask = torch.zeros((len(results), width), dtype=torch.bool)
        for i, (v, m) in enumerate(results):
            emb[i, : v.shape[0]] = v
            mask[i, : m.shape[0]] = m
        return PaddedEmbeddings(emb, mask)

    def encode_queries(
        self, texts: str | list[str], **kwargs: Any
    ) -> list[torch.Tensor] | torch.Tensor | PaddedEmbeddings:
        """``encode(texts, "query", ...)``."""
        return self.encode(texts, "query", **kwargs)

    def encode_documents(
        self, texts: str | list[str], **kwargs: Any
    ) -> list[torch.Tensor] | torch.Tensor | PaddedEmbeddings:
        """``encode(texts, "document", ...)``."""
        return self.encode(texts, "document", **kwargs)
