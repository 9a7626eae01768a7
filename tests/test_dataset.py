"""HardNegativeDataset: construction from mined triples (disk, JSONL, rows, a mining run), and the views
the trainer, the collator and re-scoring read."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hn_trainer.errors import ConfigError, DataError, HNTrainerError
from hn_trainer.training.dataset import HardNegativeDataset

DOCS = {
    "d0": "deploy a mysql database on cloud infrastructure",
    "d1": "install mysql on premises servers",
    "d2": "a virtual cloud network is a private network",
    "d3": "a virtual network interface card attaches an instance",
    "d4": "a web application firewall filters http traffic",
    "d5": "a firewall controls network traffic",
}


def row(qid, query, pos, negs):
    return {
        "query_id": qid,
        "query": query,
        "positive_id": pos,
        "positive": DOCS[pos],
        "negative_ids": list(negs),
        "negatives": [DOCS[n] for n in negs],
    }


ROWS = [
    row("q0", "mysql in the cloud", "d0", ["d1", "d2"]),
    row("q1", "what is a vcn", "d2", ["d3"]),
    row("q2", "what does a waf filter", "d4", []),
    row("q2", "what does a waf filter", "d5", ["d4", "d3"]),  # d4 is a positive of q2: never a negative
]


def test_from_rows_items_and_shared_lookup():
    ds = HardNegativeDataset.from_rows(ROWS)
    assert len(ds) == 3  # q2/d4 has no negative and is dropped
    assert ds.stats == {
        "pairs": 4,
        "pairs_without_negatives": 1,
        "pairs_dropped": 1,
        "pool_size": 2,
        "negatives": 4,
    }
    item = ds[0]
    assert item["pair_index"] == 0
    assert item["query"] == "mysql in the cloud"
    assert item["positive"] == DOCS["d0"]
    assert item["pool_ids"] == ["d1", "d2"]
    assert item["pool_texts"] == [DOCS["d1"], DOCS["d2"]]
    last = ds[len(ds) - 1]
    assert last["query_id"] == "q2" and last["positive_id"] == "d5"
    assert last["pool_ids"] == ["d3"]  # d4 (a positive of q2) removed, order kept
    assert sorted(last["positive_ids"]) == ["d4", "d5"]
    # every document is stored once, and items reference the shared strings
    assert sorted(ds.doc_ids) == sorted(set(ds.doc_ids))
    assert item["pool_texts"][0] is ds.doc_texts[ds.doc_ids.index("d1")]
    assert ds.pools.dtype == np.int64 and ds.pools.shape == (3, 2)


def test_keep_empty_pairs():
    ds = HardNegativeDataset.from_rows(ROWS, keep_empty=True)
    assert len(ds) == 4
    assert ds.stats["pairs_dropped"] == 0 and ds.stats["pairs_without_negatives"] == 1
    assert ds[2]["pool_ids"] == []


def test_all_pairs_without_negatives_raise():
    rows = [row("q0", "mysql", "d0", []), row("q1", "vcn", "d2", [])]
    with pytest.raises(HNTrainerError, match="no training pair has a hard negative"):
        HardNegativeDataset.from_rows(rows)
    # Kept on request: they can still train on random or in-batch negatives (the trainer checks that).
    kept = HardNegativeDataset.from_rows(rows, keep_empty=True)
    assert len(kept) == 2 and kept.stats["pairs_without_negatives"] == 2
    with pytest.raises(HNTrainerError):
        HardNegativeDataset.from_rows([])


def test_extra_positives_are_excluded():
    ds = HardNegativeDataset.from_rows(ROWS, positives={"q0": ["d1"]})
    assert ds[0]["pool_ids"] == ["d2"]
    assert "d1" in ds[0]["positive_ids"]


def test_bad_rows():
    with pytest.raises(DataError, match="missing field"):
        HardNegativeDataset.from_rows([{"query_id": "q"}])
    clash = [row("q0", "a", "d0", ["d1"]), {**row("q1", "b", "d2", ["d1"]), "negatives": ["another text"]}]
    with pytest.raises(DataError, match="two different texts") as err:
        HardNegativeDataset.from_rows(clash)
    assert err.value.id == "d1" and err.value.line == 2


def test_from_disk_and_jsonl(tmp_path):
    import datasets

    features = datasets.Features(
        {
            "query_id": datasets.Value("string"),
            "query": datasets.Value("string"),
            "positive_id": datasets.Value("string"),
            "positive": datasets.Value("string"),
            "negative_ids": datasets.List(datasets.Value("string")),
            "negatives": datasets.List(datasets.Value("string")),
        }
    )
    datasets.Dataset.from_list(ROWS, features=features).save_to_disk(str(tmp_path / "mine" / "triples"))
    with open(tmp_path / "mine" / "triples.jsonl", "w") as f:
        for r in ROWS:
            f.write(json.dumps(r) + "\n")
    expected = HardNegativeDataset.from_rows(ROWS)
    for ds in (
        HardNegativeDataset.from_disk(tmp_path / "mine" / "triples"),
        HardNegativeDataset.from_disk(tmp_path / "mine"),  # the mine output folder
        HardNegativeDataset.from_jsonl(tmp_path / "mine" / "triples.jsonl"),
    ):
        assert [ds[i] for i in range(len(ds))] == [expected[i] for i in range(len(expected))]

    (tmp_path / "bad.jsonl").write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match="invalid JSON") as err:
        HardNegativeDataset.from_jsonl(tmp_path / "bad.jsonl")
    assert err.value.line == 2
    with pytest.raises(DataError, match="no such"):
        HardNegativeDataset.from_disk(tmp_path / "missing")


def test_set_pools_validates():
    ds = HardNegativeDataset.from_rows(ROWS)
    pools = ds.pools.copy()
    pools[0] = pools[0][::-1]
    ds.set_pools(pools)
    assert ds[0]["pool_ids"] == ["d2", "d1"]
    bad = ds.pools.copy()
    bad[0, 0] = ds.doc_ids.index("d5")
    with pytest.raises(HNTrainerError, match="same documents"):
        ds.set_pools(bad)
    with pytest.raises(HNTrainerError, match="shape"):
        ds.set_pools(ds.pools[:1])


def _toy_embeddings():
    # 2-d vectors: query q0 near d1 (closer than its positive d0), d2 far away
    doc_ids = ["d0", "d1", "d2", "d3"]
    corpus = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    queries = torch.tensor([[0.8, 0.2], [0.0, 1.0]])
    return doc_ids, corpus, queries


def _mine(doc_texts, pairs, query_embeddings, corpus_embeddings, **kwargs):
    from hn_trainer.mining.pipeline import mine_pairs_from_embeddings

    doc_ids, _, _ = _toy_embeddings()
    return mine_pairs_from_embeddings(
        ["q0", "q1"], ["query 0", "query 1"], doc_ids, doc_texts, pairs, query_embeddings, corpus_embeddings,
        **kwargs,
    )


def test_mined_pairs_follow_the_dual_condition_kernel():
    doc_ids, corpus, queries = _toy_embeddings()
    texts = [f"text {d}" for d in doc_ids]
    mined = _mine(texts, [("q0", "d3"), ("q1", "d2")], queries, corpus, num_negatives=3)
    assert mined.column_names == [
        "query_id", "query", "positive_id", "positive", "negative_ids", "negatives", "negative_distances"
    ]
    ds = HardNegativeDataset.from_mined(mined)

    # brute force of the two conditions for (q0, d3): d(Q,D) < d(Q,PD) and d(Q,D) < d(PD,D), cosine distance
    def dist(a, b):
        return 1 - torch.nn.functional.cosine_similarity(a, b, dim=0).item()

    q, pd = queries[0], corpus[3]
    expected = [
        i
        for i in range(4)
        if i != 3 and dist(q, corpus[i]) < dist(q, pd) and dist(q, corpus[i]) < dist(pd, corpus[i])
    ]
    expected.sort(key=lambda i: dist(q, corpus[i]))
    assert ds.stats["pairs"] == 2
    found = {ds[i]["positive_id"]: ds[i]["pool_ids"] for i in range(len(ds))}
    assert found["d3"] == [doc_ids[i] for i in expected]
    assert found["d3"] == ["d1", "d0"]
    assert ds[0]["pool_texts"] == [f"text {d}" for d in found["d3"]]
    assert mined[0]["negative_distances"] == pytest.approx([dist(q, corpus[i]) for i in expected], abs=1e-5)
    # q1's positive d2 is its nearest document: nothing qualifies, the pair is dropped and counted
    assert mined[1]["negative_ids"] == []
    assert "d2" not in found and ds.stats["pairs_without_negatives"] == 1


def test_mined_pairs_with_a_sampler_object():
    from hn_trainer.mining.kernel import MiningResult
    from hn_trainer.mining.samplers import NegativeSampler

    calls = {}

    class Sampler(NegativeSampler):
        name = "fixed"

        def mine(self, inputs, k):
            calls["inputs"], calls["k"] = inputs, k
            return MiningResult(torch.tensor([[2, 1, -1]]), torch.tensor([[0.1, 0.2, float("inf")]]))

    doc_ids, corpus, queries = _toy_embeddings()
    mined = _mine(
        list(doc_ids), [("q0", "d0")], None, None,
        num_negatives=3, sampler=Sampler(), positives={"q0": ["d3"]},
    )
    ds = HardNegativeDataset.from_mined(mined)
    assert calls["k"] == 3
    assert calls["inputs"].pairs.tolist() == [[0, 0]]
    assert calls["inputs"].positives == [[0, 3], []]
    assert ds[0]["pool_ids"] == ["d2", "d1"]
    assert mined[0]["negative_distances"] == pytest.approx([0.1, 0.2])  # padding dropped
    with pytest.raises(DataError, match="unknown document"):
        _mine(list(doc_ids), [("q0", "dx")], None, None, num_negatives=3, sampler=Sampler())
    with pytest.raises(DataError, match="unknown query"):
        _mine(list(doc_ids), [("qx", "d0")], None, None, num_negatives=3, sampler=Sampler())


def test_mined_pairs_with_a_named_sampler():
    from hn_trainer.mining.pipeline import configured_sampler
    from hn_trainer.mining.samplers import get_sampler

    doc_ids, corpus, queries = _toy_embeddings()
    pairs = [("q0", "d0"), ("q1", "d2")]

    def random_pools(sampler):
        mined = _mine(list(doc_ids), pairs, queries, corpus, num_negatives=2, sampler=sampler,
                      positives={"q0": ["d1"]})
        return HardNegativeDataset.from_mined(mined)

    ds = random_pools(get_sampler("random", seed=3))
    for i in range(len(ds)):
        item = ds[i]
        assert len(item["pool_ids"]) == 2 and not set(item["pool_ids"]) & set(item["positive_ids"])
    assert "d1" not in ds[0]["pool_ids"]  # an extra positive of q0
    again = random_pools(configured_sampler("random", {"seed": 3, "query_block_size": 8}))
    assert np.array_equal(ds.pools, again.pools)
    assert [ds[i]["pool_ids"] for i in range(len(ds))] == [again[i]["pool_ids"] for i in range(len(again))]
    # the metric reaches a sampler that takes one, a seed is not passed to one that takes none
    sampler = configured_sampler("dense_topk", {"metric": "euclidean", "seed": 3})
    assert sampler.metric == "euclidean"
    dense = HardNegativeDataset.from_mined(_mine(list(doc_ids), pairs, queries, corpus, num_negatives=1,
                                                 sampler=sampler))
    assert dense.pools.shape == (2, 1)
    with pytest.raises(ConfigError, match="unknown sampler"):
        get_sampler("nearest")
    with pytest.raises(ConfigError, match="unknown sampler"):
        configured_sampler("nearest", {"seed": 3})
    with pytest.raises(ConfigError, match="num_negatives"):
        _mine(list(doc_ids), pairs, queries, corpus, num_negatives=0)


def test_as_train_dataset():
    ds = HardNegativeDataset.from_rows(ROWS)
    train = ds.as_train_dataset()
    assert train.column_names == ["pair_index", "query", "positive"]
    assert len(train) == len(ds) == 3
    assert train["pair_index"] == [0, 1, 2]
    assert train["query"] == ["mysql in the cloud", "what is a vcn", "what does a waf filter"]
    assert train["positive"] == [DOCS["d0"], DOCS["d2"], DOCS["d5"]]
    for r in train:
        item = ds[r["pair_index"]]
        assert (r["query"], r["positive"]) == (item["query"], item["positive"])
    kept = HardNegativeDataset.from_rows(ROWS, keep_empty=True).as_train_dataset()
    assert kept["positive"] == [DOCS["d0"], DOCS["d2"], DOCS["d4"], DOCS["d5"]]


def test_distinct_pool_pairs():
    shared = [
        row("q0", "mysql in the cloud", "d0", ["d2", "d3", "d4"]),
        row("q0", "mysql in the cloud", "d1", ["d3", "d2"]),  # the same query: d2 and d3 are scored once
        row("q1", "what is a vcn", "d2", ["d3"]),  # another query: (q1, d3) is a pair of its own
    ]
    ds = HardNegativeDataset.from_rows(shared)
    pairs, inverse = ds.distinct_pool_pairs()
    assert pairs.shape == (4, 2) and inverse.shape == ds.pools.shape
    named = {(ds.query_ids[q], ds.doc_ids[d]) for q, d in pairs.tolist()}
    assert named == {("q0", "d2"), ("q0", "d3"), ("q0", "d4"), ("q1", "d3")}
    assert len({tuple(p) for p in pairs.tolist()}) == len(pairs)
    for i in range(len(ds)):
        q = ds.pair_queries[i]
        for j in range(ds.pool_size):
            if ds.pools[i, j] < 0:
                assert inverse[i, j] == -1
            else:
                assert pairs[inverse[i, j]].tolist() == [q, ds.pools[i, j]]
    assert inverse[0, 0] == inverse[1, 1] and inverse[0, 1] == inverse[1, 0]  # shared, whatever the order
    assert inverse[2, 0] != inverse[0, 1]
    assert inverse[1, 2] == -1 and (inverse[2, 1:] == -1).all()


def test_batch_pools_with_batches_in_flight():
    ds = HardNegativeDataset.from_rows(ROWS)
    before = ds.pools.copy()
    assert np.array_equal(ds.batch_pools(), before)
    after = before.copy()
    after[0] = after[0][::-1]
    ds.set_pools(after, in_flight=2)
    assert np.array_equal(ds.pools, after)
    # the two batches built ahead of the reordering still get the order they were built with
    assert np.array_equal(ds.batch_pools(), before)
    assert np.array_equal(ds.batch_pools(), before)
    assert np.array_equal(ds.batch_pools(), after)
    assert np.array_equal(ds.batch_pools(), after)
    # an explicit previous order, and no batch in flight
    again = after.copy()
    again[0] = again[0][::-1]
    ds.set_pools(again, previous=before, in_flight=1)
    assert np.array_equal(ds.batch_pools(), before)
    assert np.array_equal(ds.batch_pools(), again)
    ds.set_pools(after)
    assert np.array_equal(ds.batch_pools(), after)
    assert [ds.doc_ids[d] for d in ds.pool_rows(0, before)] == ["d1", "d2"]
    assert [ds.doc_ids[d] for d in ds.pool_rows(0)] == ["d2", "d1"]


def test_from_rows_with_the_whole_corpus():
    corpus_ids = ["d0", "d1", "d2", "d3", "d4", "d5", "d9"]
    corpus_texts = [DOCS[d] for d in corpus_ids[:-1]] + ["a corpus-only document"]
    ds = HardNegativeDataset.from_rows(ROWS, corpus=(corpus_ids, corpus_texts))
    assert ds.doc_ids[: len(corpus_ids)] == corpus_ids and len(ds.doc_ids) == len(corpus_ids)
    assert ds.doc_texts[ds.doc_ids.index("d9")] == "a corpus-only document"
    # the pairs and pools are those of the rows alone
    plain = HardNegativeDataset.from_rows(ROWS)
    assert [ds[i] for i in range(len(ds))] == [plain[i] for i in range(len(plain))]
    assert "d9" not in plain.doc_ids
    # a row giving a corpus document another text is refused
    with pytest.raises(DataError, match="two different texts"):
        HardNegativeDataset.from_rows(ROWS, corpus=(["d1"], ["another text"]))
    with pytest.raises((ValueError, DataError)):
        HardNegativeDataset.from_rows(ROWS, corpus=(["d1", "d2"], [DOCS["d1"]]))
