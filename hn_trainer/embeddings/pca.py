"""PCA over concatenated ensemble embeddings, keeping a fraction of the variance."""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import numpy as np

from hn_trainer.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_PCA_VARIANCE = 0.95


def validate_pca_variance(value: object) -> float | None:
    """Check a PCA variance fraction.

    Args:
        value: A number in (0, 1], or ``None``.

    Returns:
        The fraction, or ``None`` when no PCA is wanted (``None`` or ``1.0``: concatenation only).

    Raises:
        ConfigError: Not a number, or outside (0, 1].
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"pca_variance must be a number in (0, 1] or None, got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0 or np.isnan(value):
        raise ConfigError(
            f"pca_variance must be in (0, 1] (fraction of variance kept; 1.0 or None = no PCA), got {value!r}"
        )
    return None if value == 1.0 else value


# Below this many matrix elements a PCA fit takes well under a second on one core, while BLAS
# threads that spin-wait for busy cores can make it 10 to 50 times slower on a loaded machine.
_SINGLE_THREAD_ELEMENTS = 1 << 23


def _blas_threads_for(x: np.ndarray):
    """One BLAS thread for small fits (a no-op context for large ones)."""
    import contextlib

    if x.size > _SINGLE_THREAD_ELEMENTS:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1, user_api="blas")


@dataclass
class PcaProjection:
    """A fitted PCA: ``(x - mean) @ components.T``.

    Attributes:
        mean: Feature means [d_concat], float32.
        components: Principal axes [d_pca, d_concat], float32.
        explained_variance_ratio: Variance fraction of each kept component.
        target: The variance fraction that was asked for.
    """

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    target: float

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    @property
    def variance_kept(self) -> float:
        return float(self.explained_variance_ratio.sum())

    @classmethod
    def fit(cls, x: np.ndarray, variance: float) -> PcaProjection:
        """Fit on rows of `x`, keeping the fewest components whose variance reaches `variance`."""
        from sklearn.decomposition import PCA

        x = np.asarray(x, dtype=np.float32)
        if len(x) < 2:
            raise ConfigError(f"PCA needs at least 2 texts, got {len(x)}; set pca_variance to None")
        # Tall data (many more texts than dims): eigendecomposition of the covariance is much faster.
        solver = "covariance_eigh" if x.shape[0] >= 10 * x.shape[1] else "full"
        pca = PCA(n_components=variance, svd_solver=solver)
        with _blas_threads_for(x):
            pca.fit(x)
        proj = cls(
            mean=pca.mean_.astype(np.float32),
            components=np.ascontiguousarray(pca.components_, dtype=np.float32),
            explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
            target=variance,
        )
        logger.info(
            "PCA: %d -> %d dims, %.2f%% of variance kept (target %.0f%%)",
            x.shape[1],
            proj.dim,
            100 * proj.variance_kept,
            100 * variance,
        )
        return proj

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Project rows of `x`; float32 [n, dim]."""
        x = np.asarray(x, dtype=np.float32)
        return (x - self.mean) @ self.components.T
