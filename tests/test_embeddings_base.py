"""The encoder base class: normalised float32 rows in input order, each distinct text encoded once."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SENTENCES
from embedding_helpers import QUERIES

from hn_trainer.embeddings import load_encoder


@pytest.mark.parametrize("which", ["tiny", "lsa"])
def test_encoders_return_normalised_float32_in_input_order_each_distinct_text_once(
    which, tiny_encoder_dir, monkeypatch
):
    enc = (
        load_encoder(str(tiny_encoder_dir), device="cpu")
        if which == "tiny"
        else load_encoder("lsa:8", fit_texts=TINY_SENTENCES)
    )
    seen: list[str] = []
    original = type(enc)._encode_batch

    def spy(self, texts):
        seen.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(type(enc), "_encode_batch", spy)
    texts = QUERIES + QUERIES[:2]
    vectors = enc.encode(texts, batch_size=4, show_progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), enc.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert sorted(seen) == sorted(QUERIES)  # duplicates encoded once
    assert [len(t) for t in seen[:4]] == sorted((len(t) for t in QUERIES), reverse=True)[:4]  # longest first
    np.testing.assert_array_equal(vectors[-2:], vectors[:2])
    reversed_vectors = enc.encode(texts[::-1], batch_size=4, show_progress=False)
    np.testing.assert_allclose(reversed_vectors, vectors[::-1], atol=1e-6)
