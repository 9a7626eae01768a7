"""The PCA projection of the concatenated embeddings: variance kept, dims, and pca_variance checks."""

from __future__ import annotations

import numpy as np
import pytest

from hn_trainer.embeddings import build_ensemble_embeddings, validate_pca_variance
from hn_trainer.errors import ConfigError




def test_pca_keeps_target_variance_and_dims_grow_with_target(tiny_encoder_dir, corpus, queries, tmp_path):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    concat = build_ensemble_embeddings(
        corpus, queries, specs, pca_variance=None, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    x = np.vstack([concat.corpus, concat.queries]).astype(np.float64)
    # brute-force reference: eigenvalues of the covariance of corpus + queries
    eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1].clip(min=0)
    ratio = np.cumsum(eig) / eig.sum()
    dims = []
    for target in (0.70, 0.80, 0.95, 0.99):
        result = build_ensemble_embeddings(
            corpus, queries, specs, pca_variance=target, cache_dir=tmp_path, device="cpu", show_progress=False
        )
        assert result.variance_kept >= target
        assert result.dim_pca == int(np.searchsorted(ratio, target, side="right")) + 1
        assert result.corpus_embeddings.shape == (len(corpus), result.dim_pca)
        assert result.cache_stats[specs[0]]["encoded"] == 0  # served from the cache
        proj = result.encoder.projection
        mean = x.mean(axis=0)
        np.testing.assert_allclose(result.corpus, (concat.corpus - mean) @ proj.components.T, atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(result.query_dataset["embedding"], dtype=np.float32), result.queries
        )
        dims.append(result.dim_pca)
    assert dims == sorted(dims) and dims[0] < dims[-1] < concat.dim_concat


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), "0.9", True, [0.9]])
def test_bad_pca_variance_raises_config_error(bad, corpus):
    with pytest.raises(ConfigError, match="pca_variance"):
        build_ensemble_embeddings(
            corpus, None, ["lsa:4"], pca_variance=bad, cache_dir=False, show_progress=False
        )
    assert validate_pca_variance(0.95) == 0.95 and validate_pca_variance(1.0) is None
