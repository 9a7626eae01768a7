"""Resolving a spec to an encoder: local folders, well-known hub ids, and specs that cannot be loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hn_trainer.embeddings import (
    KNOWN_MODELS,
    SentenceTransformerEncoder,
    build_ensemble_embeddings,
    load_encoder,
)
from hn_trainer.embeddings.encoders import is_sentence_transformer
from hn_trainer.errors import EncoderError



def test_local_folder_resolves_to_sentence_transformer(tiny_encoder_dir):
    enc = load_encoder(str(tiny_encoder_dir), device="cpu")
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.local_dir == Path(tiny_encoder_dir).resolve()
    # the st: prefix means the same; the fingerprint is computed without loading the model
    prefixed = load_encoder(f"st:{tiny_encoder_dir}", device="cpu")
    assert prefixed.fingerprint == enc.fingerprint and enc._model is None
    # settings enter the fingerprint
    assert (
        load_encoder(f"st:{tiny_encoder_dir}?max_seq_length=16", device="cpu").fingerprint != enc.fingerprint
    )
    assert (
        load_encoder(f"st:{tiny_encoder_dir}?max_seq_length=16", device="cpu").fingerprint
        == load_encoder(f"{tiny_encoder_dir}?max_seq_length=16", device="cpu").fingerprint
    )


def test_known_id_without_package_goes_to_the_hub(monkeypatch):
    key = "sentence-transformers/all-minilm-l6-v2"
    monkeypatch.setitem(KNOWN_MODELS, key, dataclasses.replace(KNOWN_MODELS[key], locate=lambda: None))
    enc = load_encoder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.local_dir is None and enc.model_ref == "sentence-transformers/all-MiniLM-L6-v2"


@pytest.mark.parametrize(
    "spec",
    [
        "st:/no/such/folder",
        "./no/such/folder",
        "onnx:/no/such/model.onnx",
        "no-such-org/no-such-model",
        "not a hub id!",
    ],
)
def test_unloadable_encoder_raises_encoder_error_naming_the_spec(spec, corpus, tmp_path):
    with pytest.raises(EncoderError) as info:
        build_ensemble_embeddings(corpus, None, [spec], cache_dir=tmp_path, device="cpu", show_progress=False)
    assert repr(spec) in str(info.value)


def test_is_sentence_transformer_follows_the_resolution_without_loading(tiny_encoder_dir, tmp_path, monkeypatch):
    from hn_trainer.config import MiningArguments

    onnx_folder = tmp_path / "onnx_model"
    onnx_folder.mkdir()
    (onnx_folder / "model.onnx").write_bytes(b"")
    assert is_sentence_transformer(str(tiny_encoder_dir)) and is_sentence_transformer(f"st:{tiny_encoder_dir}")
    assert not is_sentence_transformer("lsa:8") and not is_sentence_transformer("onnx:/no/such/model.onnx")
    assert not is_sentence_transformer(str(onnx_folder))  # a folder holding only an ONNX file
    assert is_sentence_transformer("some-org/some-model")  # a hub id
    # a hub id whose installed copy is ONNX does not load as a sentence-transformers model offline
    key = "sentence-transformers/paraphrase-minilm-l3-v2"
    assert KNOWN_MODELS[key].kind == "onnx"
    monkeypatch.setitem(KNOWN_MODELS, key, dataclasses.replace(KNOWN_MODELS[key], locate=lambda: onnx_folder))
    assert not is_sentence_transformer("sentence-transformers/paraphrase-MiniLM-L3-v2")
    # st: asks for sentence-transformers, as load_encoder reads it: not the ONNX copy, not a folder's ONNX file
    assert is_sentence_transformer("st:sentence-transformers/paraphrase-MiniLM-L3-v2")
    assert is_sentence_transformer(f"st:{onnx_folder}")
    mining = MiningArguments(encoders=f"sentence-transformers/paraphrase-MiniLM-L3-v2,lsa:8,{tiny_encoder_dir}",
                             method="st_mine")
    assert mining.st_mine_encoder == str(tiny_encoder_dir)
    # without the installed copy it is the hub's sentence-transformers model
    monkeypatch.setitem(KNOWN_MODELS, key, dataclasses.replace(KNOWN_MODELS[key], locate=lambda: None))
    assert is_sentence_transformer("sentence-transformers/paraphrase-MiniLM-L3-v2")
