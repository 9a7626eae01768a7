"""The ensemble encoder: encoder list checks, document text, and encoding new texts after a save and load."""

from __future__ import annotations

import numpy as np
import pytest
from embedding_helpers import QUERIES, doc_texts

from hn_trainer.embeddings import EnsembleEncoder, build_ensemble_embeddings, document_text, encode_texts
from hn_trainer.errors import ConfigError, DataError




def test_encoder_list_must_be_nonempty_without_duplicates(corpus):
    with pytest.raises(ConfigError, match="no encoders"):
        build_ensemble_embeddings(corpus, None, [], cache_dir=False)
    with pytest.raises(ConfigError, match="listed twice"):
        build_ensemble_embeddings(corpus, None, ["lsa:4", "lsa:4?"], cache_dir=False)


def test_document_text_and_missing_text_column(corpus):
    assert document_text({"title": "T", "text": "body"}) == "T body"
    assert document_text({"title": "", "text": "body"}) == "body"
    assert document_text({"text": "query"}) == "query"
    with pytest.raises(DataError, match="no 'text' column"):
        build_ensemble_embeddings(corpus.rename_column("text", "body"), None, ["lsa:4"], cache_dir=False)


def test_fitted_ensemble_encodes_new_texts_like_the_corpus_and_round_trips(
    tiny_encoder_dir, corpus, queries, tmp_path
):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    result = build_ensemble_embeddings(
        corpus,
        queries,
        specs,
        pca_variance=0.9,
        cache_dir=tmp_path / "cache",
        device="cpu",
        show_progress=False,
    )
    np.testing.assert_allclose(
        encode_texts(result, QUERIES[::-1], show_progress=False), result.queries[::-1], atol=1e-5
    )
    new = result.encode(["a brand new question about firewalls"], show_progress=False)
    assert new.shape == (1, result.dim_pca)
    saved = result.encoder.save(tmp_path / "ensemble")
    loaded = EnsembleEncoder.load(
        saved, fit_texts=doc_texts(corpus), cache_dir=tmp_path / "cache", device="cpu"
    )
    np.testing.assert_allclose(loaded.encode(QUERIES, show_progress=False), result.queries, atol=1e-5)
    with pytest.raises(ConfigError, match="different corpus"):
        EnsembleEncoder.load(saved, fit_texts=doc_texts(corpus)[:-1], cache_dir=tmp_path / "cache")
