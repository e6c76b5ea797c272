"""Bad inputs and broken model folders give clear errors that name the culprit."""

from __future__ import annotations

import logging

import pytest
import torch

from colzero import ColBERT, load_model
from colzero.model.folder import ModelLoadError
from tests.conftest import make_colbert


@pytest.fixture(scope="module")
def model():
    return make_colbert("bert")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, model):
    return model.save(tmp_path_factory.mktemp("m") / "model")


def test_empty_list(model):
    assert model.encode([], "query") == []
    padded = model.encode([], "document", output="padded")
    assert padded.embeddings.shape == (0, 0, 16) and padded.mask.shape == (0, 0)


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_or_whitespace_is_special_tokens_only(model, text, caplog):
    with caplog.at_level(logging.WARNING, logger="colzero"):
        doc = model.encode([text, "a cat"], "document")
    assert "empty or whitespace" in caplog.text
    assert doc[0].shape == (3, 16)  # [CLS] [D] [SEP]
    ids = model.tokenize([text], "document", prompt="").input_ids[0].tolist()
    tok = model.tokenizer
    assert ids == [tok.cls_token_id, tok.convert_tokens_to_ids("[D] "), tok.sep_token_id]
    q = model.encode(text, "query")
    assert q.shape == (16, 16) and torch.isfinite(q).all()


def test_very_long_text_is_truncated(model, caplog):
    long = " ".join(["protein cell gene study"] * 500)
    with caplog.at_level(logging.DEBUG, logger="colzero"):
        d = model.encode(long, "document")
        q = model.encode(long, "query")
    assert d.shape == (32, 16) and q.shape == (16, 16)  # document_length / query_length
    assert "truncated" in caplog.text
    ids = model.tokenize([long], "document", prompt="").input_ids[0].tolist()
    assert ids[-1] == model.tokenizer.sep_token_id and len(ids) == 32


@pytest.mark.parametrize(("texts", "index"), [(["ok", 3], 1), ([None], 0), (["a", "b", b"bytes"], 2)])
def test_non_str_items(model, texts, index):
    with pytest.raises(TypeError, match=rf"texts\[{index}\]"):
        model.encode(texts, "document")


def test_not_a_sequence(model):
    with pytest.raises(TypeError, match="string or a sequence"):
        model.encode(42, "document")


def test_wrong_role(model):
    with pytest.raises(ValueError, match="role"):
        model.encode(["a"], "passage")
    with pytest.raises(ValueError, match="output"):
        model.encode(["a"], "query", output="dict")
    with pytest.raises(ValueError, match="batch_size"):
        model.encode(["a"], "query", batch_size=0)
    with pytest.raises(ValueError, match="precision"):
        model.encode(["a"], "query", precision="fp8")


def copy(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "copy")


def test_missing_dense_weights(saved, tmp_path):
    path = copy(saved, tmp_path)
    (path / "1_Dense" / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError, match=r"1_Dense.model\.safetensors.*missing"):
        ColBERT.from_pretrained(path)


def test_corrupt_safetensors(saved, tmp_path):
    path = copy(saved, tmp_path)
    (path / "1_Dense" / "model.safetensors").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelLoadError, match=r"1_Dense.model\.safetensors.*corrupt"):
        ColBERT.from_pretrained(path)
    path2 = tmp_path / "copy2"
    import shutil

    shutil.copytree(saved, path2)
    (path2 / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        ColBERT.from_pretrained(path2)


def test_corrupt_json_names_file_and_line(saved, tmp_path):
    path = copy(saved, tmp_path)
    (path / "config_sentence_transformers.json").write_text('{\n  "query_length": 16,\n  oops\n}\n')
    with pytest.raises(ModelLoadError, match=r"config_sentence_transformers\.json: line 3"):
        ColBERT.from_pretrained(path)
    (path / "config_sentence_transformers.json").write_text(
        (saved / "config_sentence_transformers.json").read_text()
    )
    (path / "modules.json").write_text("[")
    with pytest.raises(ModelLoadError, match=r"modules\.json: line 1"):
        load_model(path)


def test_missing_config_json(saved, tmp_path):
    path = copy(saved, tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(ModelLoadError, match=r"config\.json.*missing"):
        ColBERT.from_pretrained(path)


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(ModelLoadError, match="no such model folder"):
        ColBERT.from_pretrained(tmp_path / "nope" / "deeper")
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ModelLoadError, match="found a file"):
        ColBERT.from_pretrained(f)
    with pytest.raises(ModelLoadError, match="not a model folder"):
        ColBERT.from_pretrained(tmp_path)


def test_model_load_error_is_value_error():
    assert issubclass(ModelLoadError, ValueError)
