"""First-stage candidate lists for reranking evaluation: the top K documents of BM25 or of a dense retriever.

The reranker is then scored on these candidates only (`hn_trainer.evaluation.reranking.rerank`), the usual
retrieve-then-rerank protocol. ``"dense"`` and ``"ensemble"`` both rank by cosine similarity of given vectors;
``"ensemble"`` names the case where they are the concatenated-and-PCA-reduced ensemble embeddings.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

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
    """Blockwise cosine top-k: ``(scores [n_q, k'], corpus indices [n_q, k'])``, ``k' = min(k, n_docs)``."""
    device = torch.device(device or "cpu")
    queries = torch.nn.functional.normalize(_float_tensor(query_embeddings), dim=-1)
    corpus = torch.nn.functional.normalize(_float_tensor(corpus_embeddings), dim=-1)
    if queries.shape[-1] != corpus.shape[-1]:
        raise DataError(
            f"query and corpus embeddings differ in width: {queries.shape[-1]} vs {corpus.shape[-1]}"
        )
    k = min(k, corpus.shape[0])
    all_scores, all_indices = [], []
    starts = range(0, queries.shape[0], query_block_size)
    for q0 in tqdm(starts, desc="Dense top-k", disable=not show_progress_bar):
        q = queries[q0 : q0 + query_block_size].to(device)
        best_s = torch.full((q.shape[0], 0), float("-inf"), device=device)
        best_i = torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)
        for c0 in range(0, corpus.shape[0], corpus_block_size):
            block = corpus[c0 : c0 + corpus_block_size].to(device)
            s, i = torch.topk(q @ block.T, min(k, block.shape[0]), dim=1)
            merged_s, merged_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i + c0], dim=1)
            best_s, pos = torch.topk(merged_s, min(k, merged_s.shape[1]), dim=1)
            best_i = merged_i.gather(1, pos)
        all_scores.append(best_s.cpu())
        all_indices.append(best_i.cpu())
    if not all_scores:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(all_scores), torch.cat(all_indices)


def _float_tensor(vectors: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``vectors`` as a float32 tensor, sharing memory where it can.

    Embeddings read zero-copy from Arrow are read-only arrays; torch warns about wrapping those, but the
    tensor is only read here (normalising makes a new one), so the warning is silenced rather than the
    array copied.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(vectors, dtype=torch.float32)


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
