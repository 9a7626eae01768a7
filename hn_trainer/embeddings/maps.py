"""`datasets.Dataset.map` functions (batched, callable classes) for the two ensemble steps.

`EnsembleEmbeddingMap` adds ``ensemble_embedding``: each encoder's L2-normalised embedding,
concatenated. `PcaMap` adds ``embedding``: the concatenation projected by the fitted PCA (or
copied when there is no PCA).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hn_trainer.embeddings.ensemble import EnsembleEncoder, TextFn, document_text
from hn_trainer.embeddings.pca import PcaProjection

logger = logging.getLogger(__name__)

CONCAT_COLUMN = "ensemble_embedding"
EMBEDDING_COLUMN = "embedding"


class EnsembleEmbeddingMap:
    """`Dataset.map` function (``batched=True, with_indices=True``) adding the concatenated embedding.

    Example:
        >>> embed = EnsembleEmbeddingMap(ensemble)  # doctest: +SKIP
        >>> corpus = corpus.map(embed, batched=True, with_indices=True, batch_size=2048)  # doctest: +SKIP

    Args:
        ensemble: The encoders.
        text_fn: Row -> text (default `document_text`: title + text).
        id_column: Column with row ids, used in error messages (row numbers when absent).
        output_column: Column to add (default ``ensemble_embedding``).
        batch_size: Encoder batch size (the map's batch size is the chunk handled per call).
        show_progress: Show encoders' progress bars within each chunk.
    """

    def __init__(
        self,
        ensemble: EnsembleEncoder,
        *,
        text_fn: TextFn | None = None,
        id_column: str = "_id",
        output_column: str = CONCAT_COLUMN,
        batch_size: int = 64,
        show_progress: bool = False,
    ) -> None:
        self.ensemble = ensemble
        self.text_fn = text_fn or document_text
        self.id_column = id_column
        self.output_column = output_column
        self.batch_size = batch_size
        self.show_progress = show_progress

    def __call__(self, batch: dict[str, list], indices: list[int]) -> dict[str, np.ndarray]:
        columns = list(batch)
        texts = [self.text_fn(dict(zip(columns, row))) for row in zip(*(batch[c] for c in columns))]
        ids = (
            [str(x) for x in batch[self.id_column]] if self.id_column in batch else [str(i) for i in indices]
        )
        vectors = self.ensemble.encode_concat(
            texts, ids=ids, batch_size=self.batch_size, show_progress=self.show_progress
        )
        return {self.output_column: vectors}


class PcaMap:
    """`Dataset.map` function (``batched=True``; Arrow, numpy or python batches) projecting a column.

    Args:
        projection: Fitted PCA, or ``None`` to copy the column unchanged (concatenation only).
        input_column: Column of concatenated embeddings.
        output_column: Column to add.
    """

    def __init__(
        self,
        projection: PcaProjection | None,
        *,
        input_column: str = CONCAT_COLUMN,
        output_column: str = EMBEDDING_COLUMN,
    ) -> None:
        self.projection = projection
        self.input_column = input_column
        self.output_column = output_column

    def __call__(self, batch: Any) -> dict[str, np.ndarray]:
        x = vector_matrix(batch[self.input_column])
        return {self.output_column: self.projection.transform(x) if self.projection is not None else x}


def vector_matrix(column: Any) -> np.ndarray:
    """A column of equal-length vectors as a float32 matrix: numpy or lists, or an Arrow
    (chunked) fixed-size-list array, read without a per-row conversion."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if isinstance(column, pa.Array):
        if pa.types.is_fixed_size_list(column.type) and column.null_count == 0:
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return np.asarray(flat, dtype=np.float32).reshape(len(column), column.type.list_size)
        column = column.to_pylist()
    return np.asarray(column, dtype=np.float32)
