"""Rerank first-stage candidate lists with a `sentence_transformers.CrossEncoder`, sharded across processes.

Scores are ``CrossEncoder.predict`` logits (``activation_fn=torch.nn.Identity()``), so that `fuse_runs`
standardises logits rather than squashed probabilities. With several processes (an `accelerate.PartialState`
or `Accelerator`), `score_pairs` gives each rank one contiguous shard of the pairs and a single
``gather_object`` hands every rank all the scores in input order, identical to a one-process run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from sentence_transformers import CrossEncoder

from hn_trainer.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


def check_cross_encoder(model: Any) -> CrossEncoder:
    """``model`` itself if it is a `CrossEncoder` with one output (``num_labels=1``), else `ConfigError`."""
    if not isinstance(model, CrossEncoder):
        raise ConfigError(
            f"expected a sentence_transformers.CrossEncoder, got {type(model).__name__} (load one with "
            "CrossEncoder(path_or_id, num_labels=1); (model, tokenizer) pairs are not accepted)"
        )
    if model.num_labels != 1:
        raise ConfigError(
            f"the reranker must have one output (num_labels=1), got num_labels={model.num_labels}"
        )
    return model


def _predict(
    model: CrossEncoder, pairs: list, batch_size: int, show_progress_bar: bool, bf16: bool = False
) -> np.ndarray:
    if not pairs:
        return np.empty(0, dtype=np.float32)
    with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
        scores = model.predict(
            pairs,
            batch_size=batch_size,
            show_progress_bar=show_progress_bar,
            activation_fn=torch.nn.Identity(),
            convert_to_numpy=True,
        )
    return np.asarray(scores, dtype=np.float32).reshape(-1)


def score_pairs(
    model: CrossEncoder,
    pairs: Sequence[tuple[str, str]],
    *,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    state: Any = None,
    bf16: bool = False,
) -> np.ndarray:
    """Raw logits of a one-output `CrossEncoder` on (query, document) pairs, optionally over processes.

    With one process this is ``model.predict(pairs, activation_fn=torch.nn.Identity())``. When ``state`` has
    several processes, every rank must call it with the same pairs: each scores its contiguous
    ``state.split_between_processes`` shard and one ``accelerate.utils.gather_object`` returns every score,
    in input order, on every rank. When only one rank runs the scoring while the others serve it (inside
    ``CrossEncoderTrainer.evaluate``, whose ``distributed_evaluation`` makes ``predict`` shard by itself),
    the plain ``predict`` is used and no collective is issued here.

    Args:
        model: A `CrossEncoder` with ``num_labels=1``, on this rank's device.
        pairs: ``(query, document)`` texts.
        batch_size: Pairs per forward pass.
        show_progress_bar: Show a progress bar (the main process only, when sharded).
        state: An `accelerate.PartialState` or `Accelerator`; ``None`` scores everything in this process.
        bf16: Score under ``torch.autocast`` in bfloat16 (what ``--bf16`` training uses; native on CPUs with
            AVX-512 BF16 or AMX, and on recent GPUs).

    Returns:
        ``float32`` array of ``len(pairs)`` scores.

    Raises:
        ConfigError: ``model`` is not a one-output `CrossEncoder`.
    """
    check_cross_encoder(model)
    pairs = [tuple(pair) for pair in pairs]
    world_size = 1 if state is None else state.num_processes
    if world_size == 1 or getattr(model, "_distributed_inference", None) is not None:
        return _predict(model, pairs, batch_size, show_progress_bar, bf16)

    from accelerate.utils import gather_object

    with state.split_between_processes(pairs) as shard:
        logger.info(
            "Scoring %d of %d pairs on rank %d of %d", len(shard), len(pairs), state.process_index, world_size
        )
        local = _predict(model, list(shard), batch_size, show_progress_bar and state.is_main_process, bf16)
    scores = np.asarray(gather_object(local.tolist()), dtype=np.float32)
    if scores.shape != (len(pairs),):
        raise RuntimeError(
            f"gathered {scores.shape[0]} scores for {len(pairs)} pairs; did every rank take part?"
        )
    return scores


def flatten_run(candidates_run: Mapping[str, Mapping[str, float]]) -> list[tuple[str, str]]:
    """The run's (query_id, doc_id) pairs: queries, then their documents, in the mappings' order."""
    return [(qid, doc) for qid, docs in candidates_run.items() for doc in docs]


def rerank(
    model: CrossEncoder,
    candidates_run: Mapping[str, Mapping[str, float]],
    query_texts: Mapping[str, str],
    doc_texts: Mapping[str, str],
    *,
    batch_size: int = 64,
    show_progress_bar: bool = False,
    state: Any = None,
    bf16: bool = False,
) -> dict[str, dict[str, float]]:
    """Score every (query, candidate) pair with a cross-encoder and return the reranked run.

    Args:
        model: A `CrossEncoder` with ``num_labels=1`` (its ``max_seq_length`` truncates the pairs).
        candidates_run: First-stage run ``{query_id: {doc_id: score}}``; only its document ids are used.
        query_texts: ``{query_id: text}``.
        doc_texts: ``{doc_id: text}``.
        batch_size: Pairs per forward pass.
        show_progress_bar: Show a progress bar.
        state: An `accelerate.PartialState` or `Accelerator`: with several processes every rank must call
            this with the same run; each scores one shard and all receive the full run (see `score_pairs`).
        bf16: Score under bfloat16 autocast (see `score_pairs`).

    Returns:
        ``{query_id: {doc_id: raw logit}}`` with the queries and documents of ``candidates_run``.

    Raises:
        ConfigError: ``model`` is not a one-output `CrossEncoder`.
        DataError: A query or document of the run has no text.
    """
    check_cross_encoder(model)
    keys = flatten_run(candidates_run)
    pairs = []
    for qid, doc in keys:
        if qid not in query_texts or doc not in doc_texts:
            raise DataError("no text for this query or document of the candidate run", id=f"{qid}/{doc}")
        pairs.append((query_texts[qid], doc_texts[doc]))
    logger.info("Reranking %d pairs of %d queries", len(pairs), len(candidates_run))
    scores = score_pairs(
        model, pairs, batch_size=batch_size, show_progress_bar=show_progress_bar, state=state, bf16=bf16
    )
    run: dict[str, dict[str, float]] = {qid: {} for qid in candidates_run}
    for (qid, doc), score in zip(keys, scores.tolist(), strict=True):
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
