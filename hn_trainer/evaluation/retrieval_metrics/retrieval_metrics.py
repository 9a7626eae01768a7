"""`evaluate` metric module: MRR@k, nDCG@k and Recall@k of ranked candidate lists.

Load it from its folder, offline: ``evaluate.load("<path>/retrieval_metrics")`` or
``hn_trainer.evaluation.load_retrieval_metric()``. It delegates to
`hn_trainer.evaluation.metrics.retrieval_metrics`, whose docstring states the conventions (ties by document id
descending, queries without a ranking count as 0).
"""

from __future__ import annotations

import logging

import datasets
import evaluate

from hn_trainer.evaluation.metrics import retrieval_metrics

logger = logging.getLogger(__name__)

_DESCRIPTION = """Ranking metrics of a reranker or retriever: MRR@k, nDCG@k (linear gain) and Recall@k,
averaged over the queries of the references that have at least one relevant document."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: one dict per query: {"query_id": str, "doc_ids": list[str], "scores": list[float]}.
    references: one dict per query: {"query_id": str, "doc_ids": list[str], "relevances": list[int]}.
    mrr_at: MRR cut-offs, default (3, 10).
    ndcg_at: nDCG cut-offs, default (10,).
    recall_at: Recall cut-offs, default (10,).
Returns:
    {"mrr@3": float, "mrr@10": float, "ndcg@10": float, "recall@10": float}
Example:
    >>> metric = evaluate.load("hn_trainer/evaluation/retrieval_metrics")
    >>> metric.compute(
    ...     predictions=[{"query_id": "q1", "doc_ids": ["a", "b"], "scores": [0.9, 0.1]}],
    ...     references=[{"query_id": "q1", "doc_ids": ["b"], "relevances": [1]}],
    ... )["mrr@10"]
    0.5
"""


def _to_mapping(rows: list[dict], ids: str, values: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for row in rows:
        if row["query_id"] in out:
            raise ValueError(f"query id {row['query_id']!r} appears twice in the {values} inputs")
        if len(row[ids]) != len(row[values]):
            raise ValueError(
                f"query {row['query_id']!r}: {len(row[ids])} doc_ids but {len(row[values])} {values}"
            )
        out[row["query_id"]] = dict(zip(row[ids], row[values]))
    return out


class RetrievalMetrics(evaluate.Metric):
    """MRR@k, nDCG@k and Recall@k from per-query ranked lists and relevance judgements."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "query_id": datasets.Value("string"),
                        "doc_ids": datasets.Sequence(datasets.Value("string")),
                        "scores": datasets.Sequence(datasets.Value("float64")),
                    },
                    "references": {
                        "query_id": datasets.Value("string"),
                        "doc_ids": datasets.Sequence(datasets.Value("string")),
                        "relevances": datasets.Sequence(datasets.Value("int64")),
                    },
                }
            ),
        )

    def _compute(self, predictions, references, mrr_at=(3, 10), ndcg_at=(10,), recall_at=(10,)):
        run = _to_mapping(predictions, "doc_ids", "scores")
        qrels = _to_mapping(references, "doc_ids", "relevances")
        return retrieval_metrics(
            run, qrels, mrr_at=tuple(mrr_at), ndcg_at=tuple(ndcg_at), recall_at=tuple(recall_at)
        )
