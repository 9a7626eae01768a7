"""HardNegativeDataset: construction from mined triples (disk, JSONL, rows) and from embeddings."""

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


def test_from_embeddings_uses_the_dual_condition_kernel():
    pytest.importorskip("hn_trainer.mining.kernel")
    doc_ids, corpus, queries = _toy_embeddings()
    texts = [f"text {d}" for d in doc_ids]
    ds = HardNegativeDataset.from_embeddings(
        ["q0", "q1"],
        ["query 0", "query 1"],
        doc_ids,
        texts,
        pairs=[("q0", "d3"), ("q1", "d2")],
        query_embeddings=queries,
        corpus_embeddings=corpus,
        pool_size=3,
    )

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
    # q1's positive d2 is its nearest document: nothing qualifies, the pair is dropped and counted
    assert "d2" not in found and ds.stats["pairs_without_negatives"] == 1


def test_from_embeddings_with_a_sampler_object():
    from hn_trainer.mining.kernel import MiningResult
    from hn_trainer.mining.samplers import NegativeSampler

    calls = {}

    class Sampler(NegativeSampler):
        name = "fixed"

        def mine(self, inputs, k):
            calls["inputs"], calls["k"] = inputs, k
            return MiningResult(torch.tensor([[2, 1, -1]]), torch.tensor([[0.1, 0.2, float("inf")]]))

    doc_ids, corpus, queries = _toy_embeddings()
    ds = HardNegativeDataset.from_embeddings(
        ["q0", "q1"],
        ["query 0", "query 1"],
        doc_ids,
        list(doc_ids),
        pairs=[("q0", "d0")],
        query_embeddings=None,
        corpus_embeddings=None,
        pool_size=3,
        sampler=Sampler(),
        positives={"q0": ["d3"]},
    )
    assert calls["k"] == 3
    assert calls["inputs"].pairs.tolist() == [[0, 0]]
    assert calls["inputs"].positives == [[0, 3], []]
    assert ds[0]["pool_ids"] == ["d2", "d1"]
    with pytest.raises(DataError, match="unknown document"):
        HardNegativeDataset.from_embeddings(
            ["q0"],
            ["query"],
            doc_ids,
            list(doc_ids),
            pairs=[("q0", "dx")],
            query_embeddings=None,
            corpus_embeddings=None,
            sampler=Sampler(),
        )


def test_from_embeddings_with_a_named_sampler():
    pytest.importorskip("hn_trainer.mining.samplers")
    doc_ids, corpus, queries = _toy_embeddings()
    kwargs = dict(pairs=[("q0", "d0"), ("q1", "d2")], query_embeddings=queries, corpus_embeddings=corpus)
    ds = HardNegativeDataset.from_embeddings(
        ["q0", "q1"],
        ["query 0", "query 1"],
        doc_ids,
        list(doc_ids),
        pool_size=2,
        sampler="random",
        sampler_kwargs={"seed": 3},
        positives={"q0": ["d1"]},
        **kwargs,
    )
    for i in range(len(ds)):
        item = ds[i]
        assert len(item["pool_ids"]) == 2 and not set(item["pool_ids"]) & set(item["positive_ids"])
    assert "d1" not in ds[0]["pool_ids"]  # an extra positive of q0
    again = HardNegativeDataset.from_embeddings(
        ["q0", "q1"],
        ["query 0", "query 1"],
        doc_ids,
        list(doc_ids),
        pool_size=2,
        sampler="random",
        sampler_kwargs={"seed": 3},
        positives={"q0": ["d1"]},
        **kwargs,
    )
    assert np.array_equal(ds.pools, again.pools)
    # the metric reaches a sampler that takes one; an unknown sampler is a configuration error
    dense = HardNegativeDataset.from_embeddings(
        ["q0", "q1"],
        ["query 0", "query 1"],
        doc_ids,
        list(doc_ids),
        pool_size=1,
        sampler="dense_topk",
        metric="euclidean",
        **kwargs,
    )
    assert dense.pools.shape == (2, 1)
    with pytest.raises(ConfigError, match="unknown sampler"):
        HardNegativeDataset.from_embeddings(
            ["q0", "q1"], ["query 0", "query 1"], doc_ids, list(doc_ids), sampler="nearest", **kwargs
        )
