"""First-stage candidate lists for reranking evaluation: the top K documents of BM25 or of a dense retriever.

The reranker is then scored on these candidates only (`hn_trainer.evaluation.reranking.rerank`), the usual
retrieve-then-rerank protocol. ``"dense"`` and ``"ensemble"`` both rank by cosine similarity of given vectors;
``"ensemble"`` names the case where they are the concatenated-and-PCA-reduced ensemble embeddings.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from hn_trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

FirstStageMethod = Literal["bm25", "dense", "ensemble"]
FIRST_STAGE_METHODS = ("bm25", "dense", "ensemble")


def first_stage_candidates(
    method: FirstStageMethod,
    query_ids: Sequence[str],
    query_texts: Sequence[str] | None,
    doc_ids: Sequence[str],
    doc_texts: Sequence[str] | None,
    k: int = 20,
    query_embeddings: np.ndarray | torch.Tensor | None = None,
    corpus_embeddings: np.ndarray | torch.Tensor | None = None,
    *,
    query_block_size: int = 1024,
    corpus_block_size: int = 65536,
    device: str | torch.device | None = None,
    show_progress_bar: bool = True,
) -> dict[str, dict[str, float]]:
    """Top ``k`` documents per query as a run ``{query_id: {doc_id: score}}``.

    Args:
        method: ``"bm25"`` (bm25s, Lucene scoring, English stopwords; needs the texts) or ``"dense"`` /
            ``"ensemble"`` (cosine similarity of the given embeddings).
        query_ids: Query ids, aligned with ``query_texts`` / ``query_embeddings`` rows.
        query_texts: Query texts (BM25 only).
        doc_ids: Document ids, aligned with ``doc_texts`` / ``corpus_embeddings`` rows.
        doc_texts: Document texts (BM25 only).
        k: Candidates per query (capped at the corpus size).
        query_embeddings: ``[n_queries, d]`` vectors (dense methods).
        corpus_embeddings: ``[n_docs, d]`` vectors (dense methods).
        query_block_size: Queries scored at once (dense).
        corpus_block_size: Documents scored at once (dense); top-k lists of blocks are merged.
        device: Torch device of the dense search (default CPU).
        show_progress_bar: Show a progress bar.

    Returns:
        The run. BM25 leaves out documents sharing no term with the query (score 0), so a list can be shorter
        than ``k``; dense lists always hold ``min(k, n_docs)`` documents.

    Example:
        >>> ids, docs = ["a", "b"], ["mysql on cloud", "vaccines"]
        >>> first_stage_candidates("bm25", ["q"], ["mysql cloud"], ids, docs, k=2)  # doctest: +ELLIPSIS
        {'q': {'a': ...}}
    """
    if method not in FIRST_STAGE_METHODS:
        raise ConfigError(f"unknown first-stage method {method!r}; choose one of {FIRST_STAGE_METHODS}")
    if k < 1:
        raise ConfigError(f"k must be positive, got {k}")
    if method == "bm25":
        if query_texts is None or doc_texts is None:
            raise ConfigError("the bm25 first stage needs query_texts and doc_texts")
        _check_aligned("query", query_ids, query_texts)
        _check_aligned("document", doc_ids, doc_texts)
        return _bm25_run(query_ids, query_texts, doc_ids, doc_texts, k, show_progress_bar)
    if query_embeddings is None or corpus_embeddings is None:
        raise ConfigError(f"the {method} first stage needs query_embeddings and corpus_embeddings")
    _check_aligned("query", query_ids, query_embeddings)
    _check_aligned("document", doc_ids, corpus_embeddings)
    scores, indices = dense_topk(
        query_embeddings,
        corpus_embeddings,
        k,
        query_block_size=query_block_size,
        corpus_block_size=corpus_block_size,
        device=device,
        show_progress_bar=show_progress_bar,
    )
    return {
        qid: {doc_ids[j]: float(s) for j, s in zip(row_idx, row_scores)}
        for qid, row_idx, row_scores in zip(query_ids, indices.tolist(), scores.tolist())
    }


def dense_topk(
    query_embeddings: np.ndarray | torch.Tensor,
    corpus_embeddings: np.ndarray | torch.Tensor,
    k: int,
    *,
    query_block_size: int = 1024,
    corpus_block_size: int = 65536,
    device: str | torch.device | None = None,
    show_progress_bar: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise cosine top-k: ``(scores [n_q, k'], corpus indices [n_q, k'])``, ``k' = min(k, n_docs)``.

    The mining kernel's `streamed_topk` (one dense top-k for the package), in full precision, with the
    cosine distances turned back into similarities.
    """
    from hn_trainer.mining.kernel import as_float_tensor, streamed_topk

    queries, corpus = as_float_tensor(query_embeddings), as_float_tensor(corpus_embeddings)
    if queries.shape[-1] != corpus.shape[-1]:
        raise DataError(
            f"query and corpus embeddings differ in width: {queries.shape[-1]} vs {corpus.shape[-1]}"
        )
    k = min(k, corpus.shape[0])
    if queries.shape[0] == 0 or k == 0:
        return torch.zeros((queries.shape[0], k)), torch.zeros((queries.shape[0], k), dtype=torch.long)
    result = streamed_topk(
        queries, corpus, k, "cosine", query_block_size=query_block_size, corpus_block_size=corpus_block_size,
        precision="fp32", device=device or "cpu", show_progress_bar=show_progress_bar,
    )
    scores = 1.0 - result.distances.cpu().float()
    order = torch.argsort(-scores, dim=1, stable=True)  # best first, as a run is read
    return scores.gather(1, order), result.indices.cpu().gather(1, order)


def _bm25_run(
    query_ids, query_texts, doc_ids, doc_texts, k, show_progress_bar
) -> dict[str, dict[str, float]]:
    import bm25s

    retriever = bm25s.BM25()
    corpus_tokens = bm25s.tokenize(list(doc_texts), stopwords="en", return_ids=False, show_progress=False)
    retriever.index(corpus_tokens, show_progress=show_progress_bar)
    query_tokens = bm25s.tokenize(list(query_texts), stopwords="en", return_ids=False, show_progress=False)
    indices, scores = retriever.retrieve(
        query_tokens, k=min(k, len(doc_ids)), show_progress=show_progress_bar
    )
    return {
        qid: {doc_ids[j]: float(s) for j, s in zip(row_idx, row_scores) if s > 0}
        for qid, row_idx, row_scores in zip(query_ids, indices.tolist(), scores.tolist())
    }


def _check_aligned(kind: str, ids: Sequence, rows) -> None:
    if len(ids) != len(rows):
        raise DataError(f"{len(ids)} {kind} ids but {len(rows)} {kind} rows")
