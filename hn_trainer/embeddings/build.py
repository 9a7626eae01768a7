"""Build ensemble embeddings for a corpus and its queries: concatenation map, PCA fit, projection map."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hn_trainer.embeddings.base import make_fingerprint
from hn_trainer.embeddings.ensemble import EnsembleEncoder, TextFn, check_specs, document_text
from hn_trainer.embeddings.maps import (
    CONCAT_COLUMN,
    EMBEDDING_COLUMN,
    EnsembleEmbeddingMap,
    PcaMap,
    vector_matrix,
)
from hn_trainer.embeddings.pca import DEFAULT_PCA_VARIANCE, PcaProjection, validate_pca_variance
from hn_trainer.embeddings.specs import parse_spec
from hn_trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass
class EnsembleEmbeddings:
    """Result of `build_ensemble_embeddings`.

    Attributes:
        corpus_embeddings: float32 [n_docs, dim_pca], corpus order.
        query_embeddings: float32 [n_queries, dim_pca], query order.
        dim_concat: Width of the concatenation (sum of `per_encoder_dims`).
        dim_pca: Width after PCA (= dim_concat without PCA).
        variance_kept: Fraction of variance the PCA kept (1.0 without PCA).
        per_encoder_dims: Encoder spec -> its dimension, in concatenation order.
        seconds: Wall time per stage (``load_encoders``, ``encode_corpus``, ``encode_queries``,
            ``pca_fit``, ``pca_apply``, ``total``) and per encoder (``encoder:<spec>``).
        corpus_dataset: The corpus with columns ``ensemble_embedding`` and ``embedding``.
        query_dataset: The queries with the same two columns.
        encoder: The fitted ensemble; ``encoder.encode(texts)`` embeds new texts the same way.
        cache_stats: Encoder spec -> ``{"encoded": n, "cached": m}``: distinct texts encoded, rows
            served from the cache.
        pca_variance: The variance fraction asked for (``None``: no PCA).
    """

    corpus_embeddings: np.ndarray
    query_embeddings: np.ndarray
    dim_concat: int
    dim_pca: int
    variance_kept: float
    per_encoder_dims: dict[str, int]
    seconds: dict[str, float]
    corpus_dataset: Any
    query_dataset: Any
    encoder: EnsembleEncoder
    cache_stats: dict[str, dict[str, int]] = field(default_factory=dict)
    pca_variance: float | None = None

    @property
    def corpus(self) -> np.ndarray:
        """Alias of `corpus_embeddings`."""
        return self.corpus_embeddings

    @property
    def queries(self) -> np.ndarray:
        """Alias of `query_embeddings`."""
        return self.query_embeddings

    def encode(self, texts: Sequence[str], **kwargs) -> np.ndarray:
        """Embed new texts (e.g. queries) with the same encoders and PCA."""
        return self.encoder.encode(texts, **kwargs)


def encode_texts(
    ensemble: EnsembleEmbeddings | EnsembleEncoder,
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    show_progress: bool = True,
) -> np.ndarray:
    """Embed arbitrary texts with a fitted ensemble (encoders + PCA): float32 [len(texts), dim]."""
    encoder = ensemble.encoder if isinstance(ensemble, EnsembleEmbeddings) else ensemble
    return encoder.encode(texts, batch_size=batch_size, show_progress=show_progress)


def _as_dataset(data, what: str):
    import datasets

    if isinstance(data, datasets.Dataset):
        return data
    if isinstance(data, (list, tuple)) and all(isinstance(t, str) for t in data):
        return datasets.Dataset.from_dict({"_id": [str(i) for i in range(len(data))], "text": list(data)})
    raise ConfigError(f"{what} must be a datasets.Dataset or a list of texts, got {type(data).__name__}")


def _column_array(ds, column: str, dim: int) -> np.ndarray:
    """A vector column as a float32 matrix, read as one Arrow array (row order kept)."""
    if len(ds) == 0:
        return np.zeros((0, dim), dtype=np.float32)
    values = ds.with_format("arrow", columns=[column])[:].column(column)
    return np.ascontiguousarray(vector_matrix(values).reshape(len(ds), -1))


def _vector_features(ds, column: str, dim: int):
    import datasets

    list_type = getattr(datasets, "List", None)
    feature = (
        list_type(datasets.Value("float32"), length=dim)
        if list_type is not None
        else datasets.Sequence(datasets.Value("float32"), length=dim)
    )
    features = ds.features.copy()
    features[column] = feature
    return features


def _add_concat_column(ds, embed: EnsembleEmbeddingMap, chunk_size: int, desc: str):
    """Run the concatenation map (in memory; our own cache replaces datasets' cache files)."""
    if not len(ds):
        return ds
    return ds.map(
        embed,
        batched=True,
        with_indices=True,
        batch_size=chunk_size,
        keep_in_memory=True,
        load_from_cache_file=False,
        features=_vector_features(ds, embed.output_column, embed.ensemble.dim_concat),
        # an explicit fingerprint spares datasets from hashing the models inside `embed`
        new_fingerprint=make_fingerprint(
            base=ds._fingerprint, ensemble=embed.ensemble.fingerprint, step="concat"
        ),
        desc=desc,
    )


def _add_embedding_column(ds, project: PcaMap, dim: int, chunk_size: int, name: str):
    """Add the ``embedding`` column: the projection map on Arrow batches, or, without PCA, the
    concatenated column itself (its Arrow buffers shared, nothing copied)."""
    if not len(ds):
        return ds
    pca = project.projection
    fingerprint = make_fingerprint(
        base=ds._fingerprint,
        pca=None if pca is None else hashlib.sha1(pca.components.tobytes()).hexdigest(),
        step="pca",
    )
    features = _vector_features(ds, project.output_column, dim)
    if pca is None:
        column = ds.with_format("arrow", columns=[project.input_column])[:].column(project.input_column)
        return ds.add_column(
            project.output_column,
            column.combine_chunks(),
            new_fingerprint=fingerprint,
            feature=features[project.output_column],
        )
    # numpy batches: the vector column arrives as one matrix, with no per-row conversion
    return (
        ds.with_format("numpy", columns=[project.input_column], output_all_columns=True)
        .map(
            project,
            batched=True,
            batch_size=chunk_size,
            keep_in_memory=True,
            load_from_cache_file=False,
            features=features,
            new_fingerprint=fingerprint,
            desc=f"Projecting {name}",
        )
        .with_format(None)
    )


def _default_state():
    """The `accelerate.PartialState` if the program already set one up, else ``None``."""
    try:
        from accelerate.state import PartialState
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return None
    return PartialState() if PartialState._shared_state else None


def build_ensemble_embeddings(
    corpus,
    queries=None,
    encoders: Sequence[str] = (),
    *,
    pca_variance: float | None = DEFAULT_PCA_VARIANCE,
    cache_dir: str | os.PathLike | None | bool = None,
    batch_size: int = 64,
    device: str | None = None,
    text_fn: TextFn | None = None,
    chunk_size: int = 2048,
    state=None,
    show_progress: bool = True,
) -> EnsembleEmbeddings:
    """Embed a corpus and its queries with an encoder ensemble, then reduce with PCA.

    Each encoder's L2-normalised embedding of every document and query is concatenated (a
    batched `Dataset.map`, column ``ensemble_embedding``); a PCA fitted on corpus and queries
    together keeps `pca_variance` of the variance (a second batched map, column ``embedding``;
    without PCA that column is the concatenation itself). Vectors are cached per encoder and per
    text, so re-runs only encode what is new.

    Args:
        corpus: A `datasets.Dataset` with ``_id``, ``title``, ``text`` (a list of texts also works),
            or an object with ``.corpus`` and ``.queries`` datasets (`RetrievalData`) when
            `queries` is ``None``.
        queries: A `datasets.Dataset` with ``_id``, ``text`` (or a list of texts); ``None`` for none.
        encoders: Encoder specs, in concatenation order (see `hn_trainer.embeddings.specs`).
        pca_variance: Fraction of variance to keep, in (0, 1]; ``None`` or ``1.0``: no PCA
            (the ``embedding`` column is the concatenation).
        cache_dir: Cache root; ``None``: ``$HN_TRAINER_CACHE/embeddings`` or
            ``~/.cache/hn_trainer/embeddings``; ``False``: no disk cache.
        batch_size: Texts per encoder forward pass.
        device: Torch device for neural encoders (default: CUDA when available).
        text_fn: Row -> text; default `document_text` (title + " " + text, title skipped when empty).
            LSA encoders are fitted on the corpus texts it gives.
        chunk_size: Rows per map call (texts are length-sorted within a chunk; one cache shard per chunk).
        state: An `accelerate.PartialState` to split encoding across processes; default: the
            program's state if it created one.
        show_progress: Show progress bars.

    Returns:
        `EnsembleEmbeddings`.

    Raises:
        ConfigError: Bad `pca_variance`, empty or duplicate encoder list.
        EncoderError: An encoder spec cannot be loaded, or an encoder produced NaN (names the text id).
        DataError: The corpus has no ``text`` column (with the default `text_fn`).
    """
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    variance = validate_pca_variance(pca_variance)
    specs = check_specs(encoders)
    if queries is None and hasattr(corpus, "corpus") and hasattr(corpus, "queries"):
        corpus, queries = corpus.corpus, corpus.queries
    corpus_ds = _as_dataset(corpus, "corpus")
    query_ds = _as_dataset(queries if queries is not None else [], "queries")
    if text_fn is None:
        for ds, what in ((corpus_ds, "corpus"), (query_ds, "queries")):
            if len(ds) and "text" not in ds.column_names:
                raise DataError(f"{what} has no 'text' column (columns: {', '.join(ds.column_names)})")
    text_fn = text_fn or document_text
    if state is None:
        state = _default_state()
    is_main = state is None or state.is_main_process
    progress = show_progress and is_main

    fit_texts = None
    if any(parse_spec(s).kind == "lsa" for s in specs):
        fit_texts = [
            text_fn({c: batch[c][i] for c in batch})
            for batch in corpus_ds.iter(batch_size=chunk_size)
            for i in range(len(next(iter(batch.values()))))
        ]
    ensemble = EnsembleEncoder.from_specs(
        specs, fit_texts=fit_texts, cache_dir=cache_dir, device=device, state=state
    )
    seconds["load_encoders"] = time.perf_counter() - start

    embed = EnsembleEmbeddingMap(ensemble, text_fn=text_fn, batch_size=batch_size, show_progress=progress)
    mapped = {}
    for name, ds in (("corpus", corpus_ds), ("queries", query_ds)):
        t = time.perf_counter()
        mapped[name] = _add_concat_column(ds, embed, chunk_size, desc=f"Embedding {name}")
        seconds[f"encode_{name}"] = time.perf_counter() - t
    dim_concat = ensemble.dim_concat

    t = time.perf_counter()
    if variance is not None:
        both = [_column_array(mapped[name], CONCAT_COLUMN, dim_concat) for name in ("corpus", "queries")]
        ensemble.projection = PcaProjection.fit(np.concatenate(both), variance)
    seconds["pca_fit"] = time.perf_counter() - t

    t = time.perf_counter()
    project = PcaMap(ensemble.projection)
    for name in ("corpus", "queries"):
        mapped[name] = _add_embedding_column(mapped[name], project, ensemble.dim, chunk_size, name)
    corpus_embeddings = _column_array(mapped["corpus"], EMBEDDING_COLUMN, ensemble.dim)
    query_embeddings = _column_array(mapped["queries"], EMBEDDING_COLUMN, ensemble.dim)
    seconds["pca_apply"] = time.perf_counter() - t
    for e in ensemble.encoders:
        seconds[f"encoder:{e.name}"] = e.seconds
    seconds["total"] = time.perf_counter() - start

    stats = {e.name: {"encoded": e.texts_encoded, "cached": e.texts_cached} for e in ensemble.encoders}
    result = EnsembleEmbeddings(
        corpus_embeddings=corpus_embeddings,
        query_embeddings=query_embeddings,
        dim_concat=ensemble.dim_concat,
        dim_pca=ensemble.dim,
        variance_kept=ensemble.projection.variance_kept if ensemble.projection is not None else 1.0,
        per_encoder_dims=ensemble.per_encoder_dims,
        seconds=seconds,
        corpus_dataset=mapped["corpus"],
        query_dataset=mapped["queries"],
        encoder=ensemble,
        cache_stats=stats,
        pca_variance=variance,
    )
    if is_main:
        _log_summary(result)
    return result


def _log_summary(result: EnsembleEmbeddings) -> None:
    lines = [f"{'encoder':<50} {'dim':>6} {'encoded':>9} {'cached':>9} {'seconds':>8}"]
    for name, dim in result.per_encoder_dims.items():
        s = result.cache_stats.get(name, {})
        lines.append(
            f"{name[-50:]:<50} {dim:>6} {s.get('encoded', 0):>9} {s.get('cached', 0):>9} "
            f"{result.seconds.get('encoder:' + name, 0.0):>8.1f}"
        )
    pca = (
        f"PCA {result.dim_concat} -> {result.dim_pca} dims ({100 * result.variance_kept:.1f}% variance, "
        f"target {100 * result.pca_variance:.0f}%)"
        if result.pca_variance is not None
        else f"no PCA: {result.dim_concat} dims (concatenation)"
    )
    logger.info(
        "Ensemble embeddings: %d documents, %d queries; %s\n%s",
        len(result.corpus_embeddings),
        len(result.query_embeddings),
        pca,
        "\n".join(lines),
    )
