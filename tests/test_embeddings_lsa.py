"""The LSA encoder: fitted on the corpus, its fingerprint, and seeded fits."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_SENTENCES
from embedding_helpers import QUERIES

from hn_trainer.embeddings import LsaEncoder, load_encoder
from hn_trainer.errors import EncoderError


def test_lsa_needs_corpus_and_its_fingerprint_depends_on_corpus_dims_and_seed():
    with pytest.raises(EncoderError, match="corpus"):
        _ = load_encoder("lsa:8").fingerprint
    base = load_encoder("lsa:8", fit_texts=TINY_SENTENCES)
    assert isinstance(base, LsaEncoder)
    assert base.fingerprint == load_encoder("lsa:8?seed=0", fit_texts=list(TINY_SENTENCES)).fingerprint
    assert base.fingerprint != load_encoder("lsa:8", fit_texts=TINY_SENTENCES[:-1]).fingerprint
    assert base.fingerprint != load_encoder("lsa:6", fit_texts=TINY_SENTENCES).fingerprint
    assert base.fingerprint != load_encoder("lsa:8?seed=1", fit_texts=TINY_SENTENCES).fingerprint
    # seeded: two fits give the same vectors
    a = base.encode(QUERIES, show_progress=False)
    b = load_encoder("lsa:8", fit_texts=TINY_SENTENCES).encode(QUERIES, show_progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # dims are capped by the tiny corpus (12 documents)
    assert load_encoder("lsa:256", fit_texts=TINY_SENTENCES).dim == len(TINY_SENTENCES) - 1
