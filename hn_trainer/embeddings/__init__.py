"""Embeddings: encoder specs, a per-text cache, and the ensemble (concatenation + PCA) as datasets maps.

Example:
    >>> from hn_trainer.embeddings import build_ensemble_embeddings
    >>> result = build_ensemble_embeddings(  # doctest: +SKIP
    ...     data.corpus, data.queries,
    ...     ["sentence-transformers/all-MiniLM-L6-v2", "paraphrase-MiniLM-L3-v2", "lsa:256"],
    ...     pca_variance=0.95,
    ... )
    >>> result.corpus_embeddings.shape, result.dim_concat, result.dim_pca  # doctest: +SKIP
    >>> new_query_vectors = result.encoder.encode(["how do i deploy mysql"])  # doctest: +SKIP
"""

from __future__ import annotations

from hn_trainer.embeddings.base import Encoder, l2_normalize
from hn_trainer.embeddings.build import EnsembleEmbeddings, build_ensemble_embeddings, encode_texts
from hn_trainer.embeddings.cache import CachedEncoder, EmbeddingCache, default_cache_dir, text_key
from hn_trainer.embeddings.distributed import encode_sharded, merge_shards, shard_indices
from hn_trainer.embeddings.encoders import load_encoder, resolve_device
from hn_trainer.embeddings.ensemble import EnsembleEncoder, document_text
from hn_trainer.embeddings.lsa import LsaEncoder
from hn_trainer.embeddings.maps import CONCAT_COLUMN, EMBEDDING_COLUMN, EnsembleEmbeddingMap, PcaMap
from hn_trainer.embeddings.onnx import OnnxEncoder
from hn_trainer.embeddings.packaged import KNOWN_MODELS, PackagedModel, known_model
from hn_trainer.embeddings.pca import DEFAULT_PCA_VARIANCE, PcaProjection, validate_pca_variance
from hn_trainer.embeddings.sentence_transformer import SentenceTransformerEncoder
from hn_trainer.embeddings.specs import EncoderSpec, parse_spec

__all__ = [
    "CONCAT_COLUMN",
    "DEFAULT_PCA_VARIANCE",
    "EMBEDDING_COLUMN",
    "KNOWN_MODELS",
    "CachedEncoder",
    "EmbeddingCache",
    "Encoder",
    "EncoderSpec",
    "EnsembleEmbeddingMap",
    "EnsembleEmbeddings",
    "EnsembleEncoder",
    "LsaEncoder",
    "OnnxEncoder",
    "PackagedModel",
    "PcaMap",
    "PcaProjection",
    "SentenceTransformerEncoder",
    "build_ensemble_embeddings",
    "default_cache_dir",
    "document_text",
    "encode_sharded",
    "encode_texts",
    "known_model",
    "l2_normalize",
    "load_encoder",
    "merge_shards",
    "parse_spec",
    "resolve_device",
    "shard_indices",
    "text_key",
    "validate_pca_variance",
]
