"""Rerank first-stage candidate lists with a cross-encoder, optionally sharded across processes.

With several processes (an `accelerate.PartialState` or `Accelerator`), the flattened (query, document)
pairs are cut into one contiguous shard per rank, each rank scores its shard, and one `gather_object` hands
every rank the full run, identical to a single-process run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from hn_trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def resolve_cross_encoder(model: Any) -> tuple[torch.nn.Module, Any, int | None]:
    """``(classification model, tokenizer, max_length)`` of a `CrossEncoder` or a (model, tokenizer) pair."""
    if isinstance(model, (tuple, list)):
        hf_model, tokenizer = model
        return hf_model, tokenizer, None
    if hasattr(model, "model") and hasattr(model, "tokenizer"):  # sentence_transformers.CrossEncoder
        return model.model, model.tokenizer, getattr(model, "max_seq_length", None)
    raise ConfigError(f"expected a CrossEncoder or a (model, tokenizer) pair, got {type(model).__name__}")


@torch.inference_mode()
def score_pairs(
    model: torch.nn.Module,
    tokenizer: Any,
    pairs: Sequence[tuple[str, str]],
    batch_size: int = 32,
    max_length: int | None = None,
    *,
    show_progress_bar: bool = False,
) -> np.ndarray:
    """Raw logits of a single-output sequence-classification model on (query, document) pairs.

    Pairs are batched longest first (less padding) and the scores returned in input order. No activation is
    applied: these equal ``CrossEncoder.predict(pairs, activation_fn=torch.nn.Identity())``.

    Args:
        model: A transformers ``AutoModelForSequenceClassification`` with one label.
        tokenizer: Its tokenizer.
        pairs: ``(query, document)`` texts.
        batch_size: Pairs per forward pass.
        max_length: Truncation length of a pair (default: the tokenizer's ``model_max_length``, at most 512).
        show_progress_bar: Show a progress bar over batches.

    Returns:
        ``float32`` array of ``len(pairs)`` scores.
    """
    if max_length is None:
        max_length = min(getattr(tokenizer, "model_max_length", 512) or 512, 512)
    model.eval()
    device = next(model.parameters()).device
    order = np.argsort([-(len(q) + len(d)) for q, d in pairs], kind="stable")
    scores = np.empty(len(pairs), dtype=np.float32)
    for start in tqdm(range(0, len(pairs), batch_size), desc="Reranking", disable=not show_progress_bar):
        idx = order[start : start + batch_size]
        features = tokenizer(
            [pairs[i][0] for i in idx],
            [pairs[i][1] for i in idx],
            padding=True,
            truncation="longest_first",
            max_length=max_length,
            return_tensors="pt",
        ).to(device)
        logits = model(**features).logits
        if logits.ndim == 2 and logits.shape[-1] != 1:
            raise ConfigError(f"the reranker must have one output (num_labels=1), got {logits.shape[-1]}")
        scores[idx] = logits.reshape(-1).float().cpu().numpy()
    return scores


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous ``[start, end)`` of rank ``rank`` of ``world_size``; shard sizes differ by at most one."""
    return n * rank // world_size, n * (rank + 1) // world_size


def flatten_run(candidates_run: Mapping[str, Mapping[str, float]]) -> list[tuple[str, str]]:
    """The run's (query_id, doc_id) pairs: queries, then their documents, in the mappings' order."""
    return [(qid, doc) for qid, docs in candidates_run.items() for doc in docs]


def rerank_shard(
    model: Any,
    candidates_run: Mapping[str, Mapping[str, float]],
    query_texts: Mapping[str, str],
    doc_texts: Mapping[str, str],
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 32,
    max_length: int | None = None,
    show_progress_bar: bool = False,
) -> list[float]:
    """Scores of rank ``rank``'s contiguous shard of `flatten_run`; concatenated over ranks, every score."""
    hf_model, tokenizer, model_max_length = resolve_cross_encoder(model)
    keys = flatten_run(candidates_run)
    start, end = shard_bounds(len(keys), rank, world_size)
    pairs = []
    for qid, doc in keys[start:end]:
        if qid not in query_texts or doc not in doc_texts:
            raise DataError("no text for this query or document of the candidate run", id=f"{qid}/{doc}")
        pairs.append((query_texts[qid], doc_texts[doc]))
    logger.info("Reranking %d of %d pairs on rank %d of %d", len(pairs), len(keys), rank, world_size)
    scores = score_pairs(
        hf_model,
        tokenizer,
        pairs,
        batch_size,
        max_length or model_max_length,
        show_progress_bar=show_progress_bar,
    )
    return scores.tolist()


def rerank(
    model: Any,
    candidates_run: Mapping[str, Mapping[str, float]],
    query_texts: Mapping[str, str],
    doc_texts: Mapping[str, str],
    *,
    batch_size: int = 32,
    max_length: int | None = None,
    show_progress_bar: bool = True,
    accelerator_state: Any = None,
) -> dict[str, dict[str, float]]:
    """Score every (query, candidate) pair with a cross-encoder and return the reranked run.

    Args:
        model: A sentence-transformers `CrossEncoder` (its ``max_seq_length`` is used) or a
            ``(AutoModelForSequenceClassification, tokenizer)`` pair; one output label.
        candidates_run: First-stage run ``{query_id: {doc_id: score}}``; only its document ids are used.
        query_texts: ``{query_id: text}``.
        doc_texts: ``{doc_id: text}``.
        batch_size: Pairs per forward pass.
        max_length: Truncation length (overrides the CrossEncoder's).
        show_progress_bar: Show a progress bar (main process only).
        accelerator_state: An `accelerate.PartialState` or `Accelerator`; with several processes each rank
            moves the model to its device, scores one contiguous shard, and all ranks receive the full run.

    Returns:
        ``{query_id: {doc_id: raw logit}}`` with the queries and documents of ``candidates_run``.
    """
    rank, world_size = 0, 1
    if accelerator_state is not None:
        rank, world_size = accelerator_state.process_index, accelerator_state.num_processes
        resolve_cross_encoder(model)[0].to(accelerator_state.device)
    scores = rerank_shard(
        model,
        candidates_run,
        query_texts,
        doc_texts,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        max_length=max_length,
        show_progress_bar=show_progress_bar and rank == 0,
    )
    if world_size > 1:
        from accelerate.utils import gather_object

        scores = gather_object(scores)
    run: dict[str, dict[str, float]] = {qid: {} for qid in candidates_run}
    for (qid, doc), score in zip(flatten_run(candidates_run), scores, strict=True):
        run[qid][doc] = float(score)
    return run


def fuse_runs(
    first_stage_run: Mapping[str, Mapping[str, float]],
    reranker_run: Mapping[str, Mapping[str, float]],
    weight: float,
) -> dict[str, dict[str, float]]:
    """Per-query z-score fusion: ``weight * z(reranker) + (1 - weight) * z(first stage)``.

    Both runs are standardised over the documents of the reranker run for that query (a constant list
    standardises to zeros); a reranked document missing from the first-stage run takes that query's lowest
    first-stage score.

    Args:
        first_stage_run: ``{query_id: {doc_id: score}}`` of the retriever.
        reranker_run: ``{query_id: {doc_id: score}}`` of the reranker (its documents are the fused list).
        weight: Weight of the reranker, in ``[0, 1]``.

    Returns:
        The fused run over the queries and documents of ``reranker_run``.
    """
    if not 0.0 <= weight <= 1.0:
        raise ConfigError(f"fusion weight must be in [0, 1], got {weight}")
    fused: dict[str, dict[str, float]] = {}
    for qid, reranked in reranker_run.items():
        docs = list(reranked)
        first = first_stage_run.get(qid, {})
        floor = min((first[d] for d in docs if d in first), default=0.0)
        z_first = _zscore([first.get(d, floor) for d in docs])
        z_rerank = _zscore([reranked[d] for d in docs])
        fused[qid] = {d: float(weight * r + (1.0 - weight) * f) for d, r, f in zip(docs, z_rerank, z_first)}
    return fused


def _zscore(values: list[float]) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return x
    std = x.std()
    return (x - x.mean()) / std if std > 0 else np.zeros_like(x)
