"""Ranking metrics for a run against qrels: MRR@k, nDCG@k and Recall@k, overall or per query.

A *run* maps each query id to ``{doc_id: score}`` (higher is better); *qrels* map each query id to
``{doc_id: relevance}`` (integers, ``> 0`` means relevant).

Conventions (the same as ``trec_eval -c``, so numbers agree with pytrec_eval and ranx):

- Documents are ranked by score descending; **ties are broken by document id in descending string order**
  (``trec_eval`` sorts by score, then docno, both descending).
- The queries evaluated are those of the qrels with at least one relevant document. A query absent from the
  run (or with an empty ranking) scores 0 on every metric; run queries absent from the qrels are ignored.
- nDCG uses linear gain (``rel / log2(rank + 1)``, trec_eval's ``ndcg_cut``); relevance ``<= 0`` gains 0.
- MRR@k is the reciprocal rank of the first relevant document within the top k (0 if none).
- Recall@k is the number of relevant documents in the top k over the number of relevant documents.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

logger = logging.getLogger(__name__)

Run = dict[str, dict[str, float]]
Qrels = dict[str, dict[str, int]]

METRIC_MODULE_DIR = Path(__file__).resolve().parent / "retrieval_metrics"


def rank_documents(scores: Mapping[str, float], k: int | None = None) -> list[str]:
    """Document ids by score descending, ties by document id descending (trec_eval's order).

    Example:
        >>> rank_documents({"a": 1.0, "b": 2.0, "c": 1.0})
        ['b', 'c', 'a']
    """
    ranked = [doc for doc, _ in sorted(scores.items(), key=lambda item: (item[1], item[0]), reverse=True)]
    return ranked if k is None else ranked[:k]


def per_query_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    mrr_at: Sequence[int] = (3, 10),
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (10,),
) -> dict[str, dict[str, float]]:
    """Every metric for every evaluated query.

    Args:
        run: ``{query_id: {doc_id: score}}``.
        qrels: ``{query_id: {doc_id: relevance}}``.
        mrr_at: Cut-offs for MRR.
        ndcg_at: Cut-offs for nDCG.
        recall_at: Cut-offs for Recall.

    Returns:
        ``{metric_name: {query_id: value}}`` with names such as ``"mrr@10"``, over the qrels queries that have
        at least one relevant document (see the module docstring for the conventions).
    """
    cutoffs = [*mrr_at, *ndcg_at, *recall_at]
    if any(k < 1 for k in cutoffs):
        raise ValueError(f"cut-offs must be positive, got {cutoffs}")
    max_k = max(cutoffs, default=0)
    out: dict[str, dict[str, float]] = {f"mrr@{k}": {} for k in mrr_at}
    out.update({f"ndcg@{k}": {} for k in ndcg_at})
    out.update({f"recall@{k}": {} for k in recall_at})
    for qid, judged in qrels.items():
        relevant = {doc: rel for doc, rel in judged.items() if rel > 0}
        if not relevant:
            continue
        ranked = rank_documents(run.get(qid, {}), max_k)
        gains = [max(judged.get(doc, 0), 0) for doc in ranked]
        first = next((i for i, g in enumerate(gains) if g > 0), None)
        for k in mrr_at:
            out[f"mrr@{k}"][qid] = 1.0 / (first + 1) if first is not None and first < k else 0.0
        ideal = sorted(relevant.values(), reverse=True)
        for k in ndcg_at:
            dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains[:k]))
            idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal[:k]))
            out[f"ndcg@{k}"][qid] = dcg / idcg
        for k in recall_at:
            out[f"recall@{k}"][qid] = sum(g > 0 for g in gains[:k]) / len(relevant)
    return out


def retrieval_metrics(
    run: Mapping[str, Mapping[str, float]],
    qrels: Mapping[str, Mapping[str, int]],
    *,
    mrr_at: Sequence[int] = (3, 10),
    ndcg_at: Sequence[int] = (10,),
    recall_at: Sequence[int] = (10,),
    per_query: bool = False,
) -> dict[str, float] | dict[str, dict[str, float]]:
    """Mean MRR@k, nDCG@k and Recall@k of a run over the qrels queries.

    Args:
        run: ``{query_id: {doc_id: score}}``.
        qrels: ``{query_id: {doc_id: relevance}}``.
        mrr_at: Cut-offs for MRR.
        ndcg_at: Cut-offs for nDCG.
        recall_at: Cut-offs for Recall.
        per_query: Return ``{metric: {query_id: value}}`` (as `per_query_metrics`) instead of means.

    Returns:
        ``{"mrr@3": ..., "mrr@10": ..., "ndcg@10": ..., "recall@10": ...}``; every mean is 0.0 when no
        query has a relevant document.

    Example:
        >>> run, qrels = {"q": {"a": 0.9, "b": 0.5}}, {"q": {"b": 1}}
        >>> retrieval_metrics(run, qrels, mrr_at=(1, 10), ndcg_at=(), recall_at=())
        {'mrr@1': 0.0, 'mrr@10': 0.5}
    """
    values = per_query_metrics(run, qrels, mrr_at=mrr_at, ndcg_at=ndcg_at, recall_at=recall_at)
    if per_query:
        return values
    return {name: float(np.mean(list(v.values()))) if v else 0.0 for name, v in values.items()}


@dataclass
class PairedTestResult:
    """Outcome of a paired test: mean of ``a - b``, two-sided p-value and number of paired queries."""

    mean_difference: float
    p_value: float
    n: int


def paired_test(
    a: Mapping[str, float] | Sequence[float],
    b: Mapping[str, float] | Sequence[float],
    *,
    method: Literal["permutation", "t"] = "permutation",
    n_resamples: int = 10_000,
    seed: int = 0,
) -> PairedTestResult:
    """Two-sided paired significance test over per-query values of two systems.

    Args:
        a: Per-query values of system A (``{query_id: value}`` or a sequence aligned with ``b``).
        b: Per-query values of system B; with mappings, the queries must be the same.
        method: ``"permutation"`` (randomisation test flipping the sign of each difference, numpy) or
            ``"t"`` (paired t-test, scipy).
        n_resamples: Random sign flips for the permutation test.
        seed: Seed of the sign flips.

    Returns:
        A `PairedTestResult`; ``p_value`` is 1.0 when all differences are zero.
    """
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("a and b must both be mappings or both be sequences")
    if isinstance(a, Mapping):
        if set(a) != set(b):
            raise ValueError(f"a and b cover different queries ({len(set(a) ^ set(b))} not in both)")
        keys = sorted(a)
        a, b = [a[key] for key in keys], [b[key] for key in keys]
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if diff.ndim != 1 or len(a) != len(b):
        raise ValueError("a and b must be 1-d and of the same length")
    mean = float(diff.mean()) if len(diff) else 0.0
    if not len(diff) or np.allclose(diff, 0.0):
        return PairedTestResult(mean, 1.0, len(diff))
    if method == "t":
        from scipy.stats import ttest_rel

        return PairedTestResult(mean, float(ttest_rel(a, b).pvalue), len(diff))
    if method != "permutation":
        raise ValueError(f"unknown method {method!r}; expected 'permutation' or 't'")
    signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(n_resamples, len(diff)))
    extreme = np.sum(np.abs((signs * diff).mean(axis=1)) >= abs(mean) - 1e-12)
    return PairedTestResult(mean, float((extreme + 1) / (n_resamples + 1)), len(diff))


def load_retrieval_metric(**kwargs):
    """Load the packaged ``retrieval_metrics`` module with `evaluate.load` from its folder (no download).

    Args:
        **kwargs: Passed to `evaluate.load` (e.g. ``experiment_id``).

    Returns:
        An `evaluate.EvaluationModule` whose ``compute(predictions=..., references=...)`` returns
        `retrieval_metrics` of the run and qrels they describe.
    """
    import evaluate

    return evaluate.load(str(METRIC_MODULE_DIR), **kwargs)
