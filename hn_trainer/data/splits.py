"""The paper's split scheme: from a pool of queries, N for training and the rest for testing."""

from __future__ import annotations

import random

import datasets

from hn_trainer.data.beir import RetrievalData, score_column, score_value
from hn_trainer.errors import ConfigError


def split_queries(
    data: RetrievalData,
    num_train: int,
    *,
    seed: int = 42,
    source_splits: list[str] | None = None,
    train_name: str = "train",
    test_name: str = "test",
) -> RetrievalData:
    """Pool the judged queries of `source_splits` (default: all), draw `num_train` of them for
    training and keep the rest for testing, seeded. Returns data with exactly those two splits.

    The draw is over queries, not judgements: all positives of a query land on the same side.
    """
    source_splits = source_splits or data.splits
    rows: dict[str, list[tuple[str, str, int | float]]] = {}
    for split in source_splits:
        qrels = data._split(split)
        for q, d, s in zip(qrels["query-id"], qrels["corpus-id"], qrels["score"]):
            rows.setdefault(q, []).append((q, d, score_value(s)))
    queries = sorted(rows)
    if not 0 < num_train < len(queries):
        raise ConfigError(f"num_train must be between 1 and {len(queries) - 1} (the pool has {len(queries)} queries)")
    random.Random(seed).shuffle(queries)
    parts = {train_name: sorted(queries[:num_train]), test_name: sorted(queries[num_train:])}
    qrels = {}
    for name, ids in parts.items():
        flat = [r for q in ids for r in rows[q]]
        qrels[name] = datasets.Dataset.from_dict(
            {
                "query-id": [r[0] for r in flat],
                "corpus-id": [r[1] for r in flat],
                "score": score_column([r[2] for r in flat]),
            }
        )
    return data.with_qrels(qrels)
