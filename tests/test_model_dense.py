"""DenseModel (tiny and real MiniLM), and ColBERT started from dense / MLM checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from colzero import ColBERT, DenseModel
from tests.conftest import make_dense, make_tokenizer, minilm_path, shared_path

TEXTS = ["the quick brown fox", "a cat", "colbert is a late interaction model for retrieval of text"]


def manual_pool(model, texts, pooling, normalize):
    out = []
    for t in texts:
        enc = model.tokenizer(t, return_tensors="pt")
        with torch.no_grad():
            h = model.backbone(**enc).last_hidden_state[0]
        v = h[0] if pooling == "cls" else h.mean(0)
        out.append(torch.nn.functional.normalize(v, dim=0) if normalize else v)
    return torch.stack(out)


@pytest.mark.parametrize("arch", ["bert", "modernbert"])
@pytest.mark.parametrize(("pooling", "normalize"), [("mean", True), ("cls", False)])
def test_pooling_and_normalisation(arch, pooling, normalize):
    m = make_dense(arch, pooling=pooling, normalize=normalize)
    got = m.encode(TEXTS, batch_size=2, precision="fp32")  # padded batches: mean must ignore padding
    assert got.shape == (3, 32)
    assert torch.allclose(got, manual_pool(m, TEXTS, pooling, normalize), atol=1e-5)
    norms = got.norm(dim=-1)
    assert (
        torch.allclose(norms, torch.ones(3), atol=1e-5)
        if normalize
        else not torch.allclose(norms, torch.ones(3))
    )
    assert m.encode("a cat").shape == (32,)
    assert m.encode([]).shape == (0, 32)


def test_dense_save_load_round_trip(tmp_path):
    m = make_dense("bert", pooling="cls", normalize=True, max_length=64, prompts={"query": "query : "})
    path = m.save(tmp_path / "dense")
    modules = json.loads((path / "modules.json").read_text())
    assert [mod["type"].rsplit(".", 1)[-1] for mod in modules] == ["Transformer", "Pooling", "Normalize"]
    loaded = DenseModel.from_pretrained(path)
    assert loaded.config == m.config
    for role in ("query", "document"):
        assert torch.equal(m.encode(TEXTS, role), loaded.encode(TEXTS, role))
    assert not torch.allclose(m.encode(TEXTS, "query"), m.encode(TEXTS, "document"))  # prompt applied


def test_dense_in_sentence_transformers(tmp_path):
    from sentence_transformers import SentenceTransformer

    m = make_dense("bert", pooling="mean", normalize=True)
    path = m.save(tmp_path / "dense")
    ref = SentenceTransformer(str(path), device="cpu").encode(TEXTS, convert_to_tensor=True)
    assert torch.allclose(m.encode(TEXTS, precision="fp32"), ref.cpu().float(), atol=1e-5)


def test_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    path = minilm_path()
    texts = [*TEXTS, "Aspirin reduces the risk of heart attack in adults over 50."]
    ours = DenseModel.from_pretrained(path).encode(texts, batch_size=2, precision="fp32")
    ref = SentenceTransformer(str(path), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_tensor=True
    )
    assert ours.shape == (4, 384)
    assert (ours - ref.cpu().float()).abs().max().item() < 1e-5


def test_colbert_from_minilm():
    torch.manual_seed(0)
    m = ColBERT.from_pretrained(minilm_path(), document_length=40)
    vocab = m.tokenizer.get_vocab()
    assert "[Q] " in vocab and "[D] " in vocab
    assert m.projection.weight.shape == (128, 384)
    assert m.backbone.get_input_embeddings().weight.shape[0] == len(m.tokenizer)
    q = m.encode("what lowers heart attack risk", "query")
    d = m.encode("Aspirin reduces the risk of heart attack.", "document")
    assert q.shape == (32, 128) and d.shape[1] == 128
    assert torch.allclose(d.norm(dim=-1), torch.ones(d.shape[0]), atol=1e-5)


def test_colbert_from_mlm_checkpoint(tmp_path):
    torch.manual_seed(0)
    m = ColBERT.from_pretrained(
        shared_path("models", "splade-tiny-bert"), query_length=24, document_length=48
    )
    assert m.projection.weight.shape == (128, 128)
    assert m.tokenizer.pad_token == m.tokenizer.mask_token  # PyLate's padding convention
    q = m.encode(["what is a cell"], "query")[0]
    assert q.shape == (24, 128)
    path = m.save(tmp_path / "m")
    assert torch.equal(ColBERT.from_pretrained(path).encode(["what is a cell"], "query")[0], q)


def test_dense_needs_pad_token():
    from transformers import BertConfig, BertModel

    tok = make_tokenizer()
    tok.pad_token = None
    backbone = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
        )
    )
    with pytest.raises(ValueError, match="pad token"):
        DenseModel(backbone, tok)
