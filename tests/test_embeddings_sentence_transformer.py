"""The sentence-transformers encoder: its fingerprint (precision, file content) and load errors."""

from __future__ import annotations

import shutil

import pytest

from hn_trainer.embeddings import load_encoder
from hn_trainer.errors import EncoderError


def test_half_precision_on_cuda_enters_the_fingerprint(tiny_encoder_dir):
    cpu = load_encoder(str(tiny_encoder_dir), device="cpu")
    gpu = load_encoder(str(tiny_encoder_dir), device="cuda")  # not loaded: no GPU needed
    assert (cpu.precision, gpu.precision) == ("fp32", "fp16")
    assert cpu.fingerprint != gpu.fingerprint


def test_fingerprint_follows_file_content_not_location(tiny_encoder_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder_dir, copy)
    original = load_encoder(str(tiny_encoder_dir), device="cpu").fingerprint
    assert load_encoder(str(copy), device="cpu").fingerprint == original
    config = copy / "config_sentence_transformers.json"
    config.write_text(config.read_text().replace("{", '{"changed": 1, ', 1))
    assert load_encoder(str(copy), device="cpu").fingerprint != original


def test_folder_that_is_not_a_model_raises_encoder_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    enc = load_encoder(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(EncoderError) as info:
        enc.encode(["a text"], show_progress=False)
    assert repr(str(tmp_path / "empty")) in str(info.value) and "cannot load encoder" in str(info.value)
