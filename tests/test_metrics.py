"""Ranking metrics: hand-computed cases, agreement with ranx, the evaluate module, and the paired test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hn_trainer.evaluation.metrics import (
    load_retrieval_metric,
    paired_test,
    per_query_metrics,
    rank_documents,
    retrieval_metrics,
)

RUN = {
    "q1": {"d1": 0.5, "d2": 0.9, "d3": 0.1, "d4": 0.3},  # ranking d2, d1, d4, d3
    "q2": {"d1": 0.2, "d2": 0.1},  # nothing relevant retrieved
    "qx": {"d1": 1.0},  # not judged: ignored
}
QRELS = {
    "q1": {"d1": 1, "d3": 2, "d9": 0},
    "q2": {"d5": 1},
    "q3": {"d7": 1},  # absent from the run: counts as 0
    "q4": {"d1": 0},  # no relevant document: not evaluated
}


def test_hand_computed_values():
    m = retrieval_metrics(RUN, QRELS, mrr_at=(1, 3, 10), ndcg_at=(10,), recall_at=(2, 10))
    ndcg_q1 = (1 / math.log2(3) + 2 / math.log2(5)) / (2 + 1 / math.log2(3))
    assert m["mrr@1"] == 0.0
    assert m["mrr@3"] == pytest.approx(0.5 / 3)
    assert m["mrr@10"] == pytest.approx(0.5 / 3)
    assert m["ndcg@10"] == pytest.approx(ndcg_q1 / 3)
    assert m["recall@2"] == pytest.approx(0.5 / 3)
    assert m["recall@10"] == pytest.approx(1 / 3)
    assert list(m) == ["mrr@1", "mrr@3", "mrr@10", "ndcg@10", "recall@2", "recall@10"]


def test_default_keys_and_per_query():
    per_q = retrieval_metrics(RUN, QRELS, per_query=True)
    assert set(per_q) == {"mrr@3", "mrr@10", "ndcg@10", "recall@10"}
    assert set(per_q["mrr@10"]) == {"q1", "q2", "q3"}
    assert per_q["mrr@10"] == {"q1": 0.5, "q2": 0.0, "q3": 0.0}
    means = retrieval_metrics(RUN, QRELS)
    for name, values in per_q.items():
        assert means[name] == pytest.approx(np.mean(list(values.values())))


def test_ties_broken_by_doc_id_descending():
    run = {"q": {"a": 1.0, "b": 1.0, "c": 0.5}}
    assert rank_documents(run["q"]) == ["b", "a", "c"]
    assert retrieval_metrics(run, {"q": {"a": 1}})["mrr@10"] == 0.5
    assert retrieval_metrics(run, {"q": {"b": 1}})["mrr@10"] == 1.0
    assert retrieval_metrics(run, {"q": {"a": 1}}, mrr_at=(1,), ndcg_at=(), recall_at=())["mrr@1"] == 0.0


def test_empty_qrels_and_bad_cutoff():
    assert retrieval_metrics(RUN, {}) == {"mrr@3": 0.0, "mrr@10": 0.0, "ndcg@10": 0.0, "recall@10": 0.0}
    with pytest.raises(ValueError):
        retrieval_metrics(RUN, QRELS, mrr_at=(0,))


def _random_case(seed: int, n_queries: int = 40, n_docs: int = 60):
    rng = np.random.default_rng(seed)
    run, qrels = {}, {}
    for q in range(n_queries):
        docs = [f"d{i}" for i in rng.choice(n_docs, size=rng.integers(1, 30), replace=False)]
        scores = rng.permutation(len(docs)) + rng.random()  # distinct: no ties
        run[f"q{q}"] = {d: float(s) for d, s in zip(docs, scores)}
        judged = rng.choice(n_docs, size=rng.integers(1, 8), replace=False)
        rels = rng.integers(0, 4, size=len(judged))
        rels[0] = max(rels[0], 1)  # at least one relevant document per query
        qrels[f"q{q}"] = {f"d{i}": int(r) for i, r in zip(judged, rels)}
    return run, qrels


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_ranx_on_random_runs(seed):
    ranx = pytest.importorskip("ranx")
    run, qrels = _random_case(seed)
    ours = retrieval_metrics(run, qrels, mrr_at=(1, 3, 10), ndcg_at=(5, 10), recall_at=(5, 10, 100))
    ours_per_query = retrieval_metrics(
        run, qrels, mrr_at=(3,), ndcg_at=(10,), recall_at=(10,), per_query=True
    )
    ranx_qrels, ranx_run = ranx.Qrels(qrels), ranx.Run(run)
    theirs = ranx.evaluate(ranx_qrels, ranx_run, list(ours))
    for name, value in ours.items():
        assert value == pytest.approx(theirs[name], abs=1e-9), name
    for name, values in ours_per_query.items():
        ranx.evaluate(ranx_qrels, ranx_run, name)
        theirs_q = ranx_run.scores[name]
        assert values == pytest.approx(dict(theirs_q), abs=1e-9), name


def test_evaluate_module_gives_same_numbers():
    run, qrels = _random_case(3, n_queries=15)
    metric = load_retrieval_metric()
    predictions = [{"query_id": q, "doc_ids": list(d), "scores": list(d.values())} for q, d in run.items()]
    references = [
        {"query_id": q, "doc_ids": list(d), "relevances": list(d.values())} for q, d in qrels.items()
    ]
    kwargs = dict(mrr_at=(3, 10), ndcg_at=(10,), recall_at=(10, 20))
    got = metric.compute(predictions=predictions, references=references, **kwargs)
    assert got == pytest.approx(retrieval_metrics(run, qrels, **kwargs))
    assert set(got) == {"mrr@3", "mrr@10", "ndcg@10", "recall@10", "recall@20"}


def test_evaluate_module_rejects_duplicate_queries():
    metric = load_retrieval_metric()
    pred = {"query_id": "q", "doc_ids": ["a"], "scores": [1.0]}
    ref = {"query_id": "q", "doc_ids": ["a"], "relevances": [1]}
    with pytest.raises(ValueError, match="twice"):
        metric.compute(predictions=[pred, pred], references=[ref, ref])


def test_per_query_metrics_is_the_per_query_view():
    run, qrels = _random_case(4, n_queries=10)
    assert per_query_metrics(run, qrels) == retrieval_metrics(run, qrels, per_query=True)


def test_paired_test():
    rng = np.random.default_rng(0)
    base = {f"q{i}": float(v) for i, v in enumerate(rng.random(60))}
    better = {q: v + 0.2 + 0.05 * rng.standard_normal() for q, v in base.items()}
    same = paired_test(base, dict(base))
    assert same.p_value == 1.0 and same.mean_difference == 0.0 and same.n == 60
    perm = paired_test(better, base, n_resamples=2000)
    assert perm.mean_difference == pytest.approx(np.mean([better[q] - base[q] for q in base]))
    assert perm.p_value < 0.01
    t = paired_test(better, base, method="t")
    assert t.p_value < 1e-6
    noise = {q: v + 0.01 * rng.standard_normal() for q, v in base.items()}
    assert paired_test(noise, base, n_resamples=2000).p_value > 0.01
    with pytest.raises(ValueError):
        paired_test(base, {"q0": 1.0})
