"""The mining pipeline: data -> ensemble embeddings -> PCA -> negatives per (query, positive) pair."""

from __future__ import annotations

import os

import numpy as np
import pytest

from hn_trainer.config import DataArguments, MiningArguments
from hn_trainer.errors import ConfigError
from hn_trainer.mining.pipeline import (
    MINED_FEATURES,
    load_data,
    mine_pairs,
    mined_stats,
    prepare_output_dir,
)

TRAIN = [
    ("q0", "d0", 1),
    ("q1", "d2", 1),
    ("q2", "d5", 1),  # d4 is closer to q2 than d5 and closer to q2 than to d5: a dual-condition negative
    ("q3", "d7", 1),
    ("q0", "d11", 1),  # a second positive of q0
]
TEST = [
    ("q4", "d9", 1),
    ("q5", "d11", 1),
    ("q5", "d10", 1),
    ("q0", "d1", 0),  # judged for a training query in another split, with score 0: never its negative
]


@pytest.fixture
def beir(tiny_beir):
    """The tiny BEIR folder with training pairs whose positives are not always the nearest document."""
    for split, rows in (("train", TRAIN), ("test", TEST)):
        lines = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{d}\t{s}" for q, d, s in rows]
        (tiny_beir / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return tiny_beir


def _args(beir, encoder, tmp_path, **kwargs):
    data_args = DataArguments(data=str(beir))
    mining_args = MiningArguments(
        encoders=f"{encoder},lsa:8", cache_dir=str(tmp_path / "cache"), **{"pool_size": 3, **kwargs}
    )
    return data_args, mining_args


def _distances(mined):
    """Cosine distances [queries, docs] and [docs, docs] in the vectors the kernel used, in float64."""
    q = mined.query_embeddings.astype(np.float64)
    c = mined.corpus_embeddings.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return 1 - q @ c.T, 1 - c @ c.T


def test_every_negative_satisfies_both_conditions(beir, tiny_encoder_dir, tmp_path):
    data_args, mining_args = _args(beir, tiny_encoder_dir, tmp_path)
    data = load_data(data_args)
    mined = mine_pairs(data, data_args, mining_args)
    assert list(mined.dataset.column_names) == list(MINED_FEATURES)
    qd, dd = _distances(mined)
    q_row = {q: i for i, q in enumerate(mined.query_ids)}
    d_row = data.corpus_index()
    doc_ids = list(data.corpus["_id"])
    judged = data.judged()
    eps = 1e-5
    checked = 0
    for r in mined.dataset:
        q, p = q_row[r["query_id"]], d_row[r["positive_id"]]
        for n, distance in zip(r["negative_ids"], r["negative_distances"]):
            d = d_row[n]
            assert qd[q, d] < qd[q, p] + eps and qd[q, d] < dd[p, d] + eps, (r["query_id"], n)
            assert distance == pytest.approx(qd[q, d], abs=1e-4)
            checked += 1
        # and nothing is missed: the negatives are the closest qualifying documents, closest first
        found = [d_row[n] for n in r["negative_ids"]]
        assert found == sorted(found, key=lambda d: qd[q, d])
        sure = [
            d for d in range(len(doc_ids))
            if doc_ids[d] not in judged[r["query_id"]]
            and qd[q, d] < qd[q, p] - eps and qd[q, d] < dd[p, d] - eps
        ]
        if len(found) < mining_args.pool_size:
            assert set(sure) <= set(found)
        else:
            assert all(d in found for d in sure if qd[q, d] < qd[q, found[-1]] - eps)
    assert checked == mined.stats["negatives"] > 0
    # q2's positive d5 has its neighbour d4 closer to the query than to itself
    q2 = next(r for r in mined.dataset if (r["query_id"], r["positive_id"]) == ("q2", "d5"))
    assert q2["negative_ids"] == ["d4"]


def test_no_judged_document_is_a_negative(beir, tiny_encoder_dir, tmp_path):
    data_args, mining_args = _args(beir, tiny_encoder_dir, tmp_path)
    data = load_data(data_args)
    judged = data.judged()
    assert judged["q0"] == {"d0", "d11", "d1"}  # both training positives and the score-0 test judgement
    mined = mine_pairs(data, data_args, mining_args)
    for r in mined.dataset:
        assert not set(r["negative_ids"]) & judged[r["query_id"]]
    # d1 satisfies both conditions for (q0, d11) in these vectors: only the judgement keeps it out
    qd, dd = _distances(mined)
    d_row = data.corpus_index()
    q, p, d = mined.query_ids.index("q0"), d_row["d11"], d_row["d1"]
    assert qd[q, d] < qd[q, p] and qd[q, d] < dd[p, d]
    # the k nearest documents with no condition: every document but the judged ones, for every pair
    _, topk_args = _args(beir, tiny_encoder_dir, tmp_path, method="dense_topk", pool_size=len(data.corpus))
    everything = mine_pairs(data, data_args, topk_args)
    for r in everything.dataset:
        assert set(r["negative_ids"]) == set(data.corpus["_id"]) - judged[r["query_id"]]


def test_stats_count_what_was_mined(beir, tiny_encoder_dir, tmp_path):
    data_args, mining_args = _args(beir, tiny_encoder_dir, tmp_path)
    data = load_data(data_args)
    mined = mine_pairs(data, data_args, mining_args)
    stats, rows = mined.stats, list(mined.dataset)
    found = [len(r["negative_ids"]) for r in rows]
    assert [(r["query_id"], r["positive_id"]) for r in rows] == [(q, d) for q, d, _ in TRAIN]
    assert stats["pairs"] == len(rows) == 5
    assert stats["queries"] == 4 and stats["documents"] == 12
    assert stats["num_negatives"] == 3 and stats["method"] == "dual_condition" and stats["split"] == "train"
    assert stats["negatives"] == sum(found) > 0
    assert stats["pairs_with_no_negative"] == sum(n == 0 for n in found)
    assert stats["pairs_with_fewer_than_k"] == sum(n < 3 for n in found)
    per_query: dict[str, set[str]] = {}
    for r in rows:
        per_query.setdefault(r["query_id"], set()).update(r["negative_ids"])
    distinct = np.mean([len(v) for v in per_query.values()])
    assert stats["distinct_negatives_per_query"] == pytest.approx(distinct)
    assert stats["dim_concat"] == 32 + 8 and stats["dim_pca"] == mined.query_embeddings.shape[1]
    summary = stats["distance_summary"]
    assert summary["query_positive"]["count"] == 5 and summary["query_negative"]["count"] == sum(found)
    assert set(stats["seconds"]) >= {"load", "mine"}
    # num_negatives overrides the pool size
    fewer = mine_pairs(data, data_args, mining_args, num_negatives=1)
    assert fewer.stats["num_negatives"] == 1 and max(len(n) for n in fewer.dataset["negative_ids"]) <= 1


def test_mined_stats_by_hand():
    import datasets

    rows = {
        "query_id": ["q0", "q0", "q1", "q1"],
        "negative_ids": [["a", "b"], [], ["a"], ["a"]],
    }
    stats = mined_stats(datasets.Dataset.from_dict(rows), 2, MiningArguments(encoders="lsa"))
    assert stats == {
        "pairs_sharing_hardest_negative": 1,
        "pairs": 4,
        "num_negatives": 2,
        "metric": "cosine",
        "conditions": "both",
        "pairs_with_no_negative": 1,
        "pairs_with_fewer_than_k": 3,
        "negatives": 4,
        "distinct_negatives_per_query": 1.5,
    }


def test_pca_is_fitted_on_the_mined_queries_only(beir, tiny_encoder_dir, tmp_path):
    data_args, mining_args = _args(beir, tiny_encoder_dir, tmp_path)
    data = load_data(data_args)
    mined = mine_pairs(data, data_args, mining_args)
    assert mined.query_ids == ["q0", "q1", "q2", "q3"]  # the test queries q4 and q5 are not embedded
    ensemble = mined.ensemble
    pca = ensemble.encoder.projection

    def concat(ds):
        return np.asarray(ds["ensemble_embedding"], dtype=np.float64)

    fitted_on = np.concatenate([concat(ensemble.corpus_dataset), concat(ensemble.query_dataset)])
    assert list(ensemble.query_dataset["_id"]) == mined.query_ids
    assert np.allclose(pca.mean, fitted_on.mean(axis=0), atol=1e-6)
    test_texts = [t for q, t in zip(data.queries["_id"], data.queries["text"]) if q in {"q4", "q5"}]
    with_test = np.concatenate([fitted_on, ensemble.encoder.encode_concat(test_texts, show_progress=False)])
    assert not np.allclose(pca.mean, with_test.mean(axis=0), atol=1e-4)

    # mining a subset of the pairs embeds (and fits the PCA on) that subset's queries only
    subset = mine_pairs(data, data_args, mining_args, pairs=[("q2", "d5"), ("q0", "d0")])
    assert subset.query_ids == ["q2", "q0"]
    assert subset.query_embeddings.shape[0] == 2
    assert list(subset.ensemble.query_dataset["_id"]) == ["q2", "q0"]
    assert subset.stats["queries"] == 2 and subset.stats["pairs"] == 2
    sub_fit = np.concatenate([concat(subset.ensemble.corpus_dataset), concat(subset.ensemble.query_dataset)])
    assert np.allclose(subset.ensemble.encoder.projection.mean, sub_fit.mean(axis=0), atol=1e-6)
    assert [r["query_id"] for r in subset.dataset] == ["q2", "q0"]


def test_text_methods_mine_without_embeddings(beir, tmp_path):
    data_args = DataArguments(data=str(beir))
    mining_args = MiningArguments(encoders="lsa:8", method="random", pool_size=2, cache_dir=str(tmp_path))
    data = load_data(data_args)
    mined = mine_pairs(data, data_args, mining_args)
    assert mined.query_embeddings is None and mined.corpus_embeddings is None and mined.ensemble is None
    assert "distance_summary" not in mined.stats and "dim_pca" not in mined.stats
    judged = data.judged()
    for r in mined.dataset:
        assert len(r["negative_ids"]) == 2 and not set(r["negative_ids"]) & judged[r["query_id"]]


def test_prepare_output_dir(tmp_path):
    made = prepare_output_dir(tmp_path / "a" / "b")
    assert made.is_dir() and list(made.iterdir()) == []  # the write probe is gone
    assert prepare_output_dir(made) == made  # an existing folder is fine
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output_dir(a_file)
    with pytest.raises(ConfigError, match="is a file"):
        prepare_output_dir(a_file / "under")
    assert a_file.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only folder")
def test_prepare_output_dir_refuses_an_unwritable_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match="cannot write"):
            prepare_output_dir(locked)
        with pytest.raises(ConfigError, match="cannot write"):
            prepare_output_dir(locked / "inside")
    finally:
        locked.chmod(0o700)


def test_spread_negatives_gives_each_pair_of_a_query_its_own_hardest_negative():
    import datasets

    from hn_trainer.mining.pipeline import MINED_FEATURES, shared_hardest_negatives, spread_negatives

    rows = [  # query a has three positives whose pools share their closest documents
        ("a", "p1", ["n1", "n2", "n3"], [0.1, 0.2, 0.3]),
        ("a", "p2", ["n1", "n2", "n4"], [0.1, 0.2, 0.4]),
        ("b", "p3", ["n1", "n2"], [0.1, 0.2]),  # another query: n1 is free for it
        ("a", "p4", ["n1", "n2"], [0.1, 0.2]),  # its whole pool already leads: kept as it is
        ("a", "p5", [], []),
    ]
    features = datasets.Features({
        name: datasets.List(datasets.Value(kind[0])) if isinstance(kind, list) else datasets.Value(kind)
        for name, kind in MINED_FEATURES.items()
    })
    ds = datasets.Dataset.from_dict({
        "query_id": [r[0] for r in rows], "query": [r[0] for r in rows], "positive_id": [r[1] for r in rows],
        "positive": [r[1] for r in rows], "negative_ids": [r[2] for r in rows],
        "negatives": [[f"text {n}" for n in r[2]] for r in rows], "negative_distances": [r[3] for r in rows],
    }, features=features)
    assert shared_hardest_negatives(ds) == 2
    spread, reordered = spread_negatives(ds)
    assert spread["negative_ids"] == [["n1", "n2", "n3"], ["n2", "n4", "n1"], ["n1", "n2"], ["n1", "n2"], []]
    assert spread["negatives"][1] == ["text n2", "text n4", "text n1"]
    assert spread["negative_distances"][1] == pytest.approx([0.2, 0.4, 0.1])
    assert reordered == 1 and shared_hardest_negatives(spread) == 1
    # nothing added or dropped
    assert [sorted(x) for x in spread["negative_ids"]] == [sorted(r[2]) for r in rows]


def test_st_mine_runs_sentence_transformers_on_the_first_model_and_keeps_judged_documents_out(beir, tiny_encoder_dir,
                                                                                             tmp_path):
    data_args = DataArguments(data=str(beir))
    data = load_data(data_args)
    judged = data.judged()
    # a margin of -2 removes no cosine candidate: every unjudged document, for every pair
    mining_args = MiningArguments(encoders=f"lsa:8,{tiny_encoder_dir}", method="st_mine", st_mine_margin=-2.0,
                                  pool_size=len(data.corpus), cache_dir=str(tmp_path))
    assert mining_args.st_mine_encoder == str(tiny_encoder_dir)
    mined = mine_pairs(data, data_args, mining_args)
    assert mined.ensemble is None and mined.stats["method"] == "st_mine"
    for r in mined.dataset:
        assert set(r["negative_ids"]) == set(data.corpus["_id"]) - judged[r["query_id"]]
        if r["query_id"] != "q0":  # q0's two pools are reordered (spread_negatives)
            assert r["negative_distances"] == sorted(r["negative_distances"])
    with pytest.raises(ConfigError, match="st_mine_model"):
        MiningArguments(encoders="lsa:8", method="st_mine")
