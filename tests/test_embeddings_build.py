"""build_ensemble_embeddings end to end: concatenation order and dims, and the inputs it accepts."""

from __future__ import annotations

import numpy as np
from conftest import TINY_SENTENCES
from embedding_helpers import QUERIES, doc_texts

from hn_trainer.embeddings import build_ensemble_embeddings, load_encoder




def test_concatenation_order_and_dims_without_pca(tiny_encoder_dir, corpus, queries, tmp_path):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    for no_pca in (None, 1.0, 1):
        result = build_ensemble_embeddings(
            corpus, queries, specs, pca_variance=no_pca, cache_dir=tmp_path, device="cpu", show_progress=False
        )
        assert result.per_encoder_dims == {specs[0]: 32, "lsa:8": 8}
        assert result.dim_concat == result.dim_pca == 40 and result.variance_kept == 1.0
    tiny = load_encoder(specs[0], device="cpu").encode(doc_texts(corpus), show_progress=False)
    lsa = load_encoder("lsa:8", fit_texts=doc_texts(corpus)).encode(doc_texts(corpus), show_progress=False)
    np.testing.assert_allclose(result.corpus_embeddings, np.hstack([tiny, lsa]), atol=1e-5)
    assert result.corpus_embeddings.dtype == np.float32 and result.query_embeddings.shape == (
        len(QUERIES),
        40,
    )
    # datasets columns: the concatenation, and `embedding` equal to it when there is no PCA
    assert {"ensemble_embedding", "embedding"} <= set(result.corpus_dataset.column_names)
    np.testing.assert_array_equal(
        np.asarray(result.corpus_dataset["embedding"], dtype=np.float32), result.corpus
    )
    np.testing.assert_array_equal(
        np.asarray(result.query_dataset["ensemble_embedding"], dtype=np.float32), result.queries
    )
    # the order of encoders is the order of the columns
    swapped = build_ensemble_embeddings(
        corpus, queries, specs[::-1], pca_variance=None, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    np.testing.assert_allclose(swapped.corpus_embeddings, np.hstack([lsa, tiny]), atol=1e-5)


def test_accepts_text_lists_and_retrieval_data_like_objects(tiny_encoder_dir):
    class Data:
        def __init__(self, corpus, queries):
            self.corpus, self.queries = corpus, queries

    import datasets

    as_lists = build_ensemble_embeddings(
        TINY_SENTENCES, QUERIES, ["lsa:8"], pca_variance=None, cache_dir=False, show_progress=False
    )
    data = Data(
        datasets.Dataset.from_dict({"_id": list("abcdefghijkl"), "title": [""] * 12, "text": TINY_SENTENCES}),
        datasets.Dataset.from_dict({"_id": list("uvwxyz"), "text": QUERIES}),
    )
    as_data = build_ensemble_embeddings(
        data, encoders=["lsa:8"], pca_variance=None, cache_dir=False, show_progress=False
    )
    np.testing.assert_allclose(as_lists.corpus, as_data.corpus, atol=1e-6)
    np.testing.assert_allclose(as_lists.queries, as_data.queries, atol=1e-6)
