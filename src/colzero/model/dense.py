"""The single-vector baseline: same backbone handling, mean or CLS pooling, optional L2 norm."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
from colzero.model.config import DenseConfig, Role, resolve_config
from colzero.model.folder import atomic_directory, describe_folder, resolve_model_path, write_json
from colzero.model.precision import Precision


class DenseModel(EncoderBase):
    """One vector per text; scores are dot products (cosine when ``normalize``)."""

    config: DenseConfig

    def __init__(
        self, backbone: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, config: DenseConfig | None = None
    ) -> None:
        super().__init__(backbone, tokenizer)
        self.config = config or DenseConfig()
        apply_attn_implementation(backbone, self.config.attn_implementation)
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        device: str | torch.device | None = None,
        attn_implementation: str | None = None,
        **settings: Any,
    ) -> DenseModel:
        """Load a sentence-transformers folder (pooling and normalisation as saved) or a plain encoder."""
        desc = describe_folder(resolve_model_path(name_or_path))
        saved: dict[str, Any] = {"prompts": desc.st_config.get("prompts") or None}
        saved.update(desc.st_config.get("colzero", {}))
        if desc.pooling is not None:
            saved["pooling"] = "cls" if desc.pooling.get("pooling_mode_cls_token") else "mean"
            if not (
                desc.pooling.get("pooling_mode_cls_token") or desc.pooling.get("pooling_mode_mean_tokens")
            ):
                raise ValueError(f"{desc.root}: only mean or CLS pooling is supported ({desc.pooling})")
            saved["normalize"] = desc.normalize
        if desc.sbert_config.get("max_seq_length"):
            saved["max_length"] = int(desc.sbert_config["max_seq_length"])
        if attn_implementation is not None:
            settings["attn_implementation"] = attn_implementation
        config = resolve_config(DenseConfig, settings, saved)
        config.attn_implementation = usable_attn_implementation(
            config.attn_implementation, settings.get("attn_implementation"), desc.root
        )
        backbone, tokenizer = load_backbone(desc, config.attn_implementation)
        model = cls(backbone, tokenizer, config)
        if device is not None:
            model.to(device)
        return model

    def save(self, path: str | os.PathLike[str], *, training_record: dict[str, Any] | None = None) -> Path:
        """Write a sentence-transformers folder (atomically); returns its path.

        ``training_record`` (how the model was trained) goes into the ``colzero`` block of
        ``config_sentence_transformers.json``.
        """
        import transformers

        path = Path(path)
        cfg = self.config
        with atomic_directory(path) as tmp:
            self.backbone.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            modules = [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
            if cfg.normalize:
                modules.append(
                    {
                        "idx": 2,
                        "name": "2",
                        "path": "2_Normalize",
                        "type": "sentence_transformers.models.Normalize",
                    }
                )
                (tmp / "2_Normalize").mkdir()
            write_json(tmp / "modules.json", modules)
            (tmp / "1_Pooling").mkdir()
            write_json(
                tmp / "1_Pooling" / "config.json",
                {
                    "word_embedding_dimension": self.hidden_size,
                    "pooling_mode_cls_token": cfg.pooling == "cls",
                    "pooling_mode_mean_tokens": cfg.pooling == "mean",
                    "pooling_mode_max_tokens": False,
                    "pooling_mode_mean_sqrt_len_tokens": False,
                },
            )
            write_json(
                tmp / "sentence_bert_config.json", {"max_seq_length": cfg.max_length, "do_lower_case": False}
            )
            write_json(
                tmp / "config_sentence_transformers.json",
                {
                    "__version__": {
                        "colzero": __version__,
                        "transformers": transformers.__version__,
                        "pytorch": torch.__version__,
                    },
                    "prompts": cfg.prompts,
                    "default_prompt_name": None,
                    "similarity_fn_name": "cosine" if cfg.normalize else "dot",
                    "colzero": {
                        **{k: v for k, v in asdict(cfg).items() if k != "prompts"},
                        **(training_record or {}),
                    },
                },
            )
        return path

    def row_layout(self, role: Role) -> RowLayout:
        """Rows truncated to ``max_length``, padded with the pad token (both roles alike)."""
        return RowLayout(id_budget=self.config.max_length, pad_id=int(self.tokenizer.pad_token_id))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        role: Role | None = None,
    ) -> torch.Tensor:
        """One vector per row (batch, hidden), float32 (``role`` is accepted for a uniform call and
        changes nothing: only attended positions are pooled)."""
        states, layout = self._token_states(input_ids, attention_mask, token_type_ids)
        hidden = (states if layout is None else layout.scatter(states)).float()
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=-1) if self.config.normalize else pooled

    def embed(self, batch: TokenizedBatch, role: Role) -> tuple[torch.Tensor, None]:
        """(vectors (batch, hidden), None): same shape of answer as ColBERT.embed."""
        return self(**batch.model_inputs(), role=role), None

    def encode(
        self,
        texts: str | list[str],
        role: Role = "document",
        *,
        batch_size: int = 32,
        prompt: str | None = None,
        show_progress: bool = False,
        precision: Precision = "auto",
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """(n, hidden) tensor, or (hidden,) for a single string."""
        role = check_role(role)
        items, single = check_texts(texts)
        if not items:
            return torch.zeros((0, self.hidden_size), dtype=dtype)
        items = self._with_prompt(items, role, prompt)
        rows = self._run_batches(
            items,
            batch_size,
            role,
            lambda batch: list(self.embed(batch, role)[0].to("cpu", dtype)),
            precision,
            show_progress,
            f"Encoding {role}s",
        )
        out = torch.stack(rows)
        return out[0] if single else out
