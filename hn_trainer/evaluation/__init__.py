"""Evaluation: first-stage candidates, cross-encoder reranking, ranking metrics, `RerankingEvaluator`."""

from __future__ import annotations

from hn_trainer.evaluation.evaluator import RerankingEvaluator
from hn_trainer.evaluation.first_stage import FIRST_STAGE_METHODS, dense_topk, first_stage_candidates
from hn_trainer.evaluation.metrics import (
    PairedTestResult,
    load_retrieval_metric,
    paired_test,
    per_query_metrics,
    rank_documents,
    retrieval_metrics,
)
from hn_trainer.evaluation.reranking import (
    check_cross_encoder,
    flatten_run,
    fuse_runs,
    rerank,
    score_pairs,
)

__all__ = [
    "FIRST_STAGE_METHODS",
    "PairedTestResult",
    "RerankingEvaluator",
    "check_cross_encoder",
    "dense_topk",
    "first_stage_candidates",
    "flatten_run",
    "fuse_runs",
    "load_retrieval_metric",
    "paired_test",
    "per_query_metrics",
    "rank_documents",
    "rerank",
    "retrieval_metrics",
    "score_pairs",
]
