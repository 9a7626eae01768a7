"""The datasets maps that embed and project in chunks."""

from __future__ import annotations

import numpy as np

from hn_trainer.embeddings import build_ensemble_embeddings




def test_maps_over_several_batches_give_the_same_vectors(tiny_encoder_dir, corpus, queries, tmp_path):
    """Corpora larger than one map chunk: every batch is embedded and projected, in order."""
    specs = [str(tiny_encoder_dir), "lsa:8"]
    whole = build_ensemble_embeddings(corpus, queries, specs, cache_dir=tmp_path, device="cpu", show_progress=False)
    chunked = build_ensemble_embeddings(
        corpus, queries, specs, cache_dir=tmp_path, device="cpu", show_progress=False, chunk_size=3
    )
    # (the projection's matrix product may round differently with another number of rows)
    np.testing.assert_allclose(chunked.corpus_embeddings, whole.corpus_embeddings, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked.query_embeddings, whole.query_embeddings, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(chunked.corpus_dataset["embedding"], dtype=np.float32), chunked.corpus_embeddings
    )
