"""HardNegativeCollator: negative choice and seeding, batch layouts, CrossEncoder tokenisation."""

from __future__ import annotations

import pytest
import torch

from hn_trainer.errors import ConfigError
from hn_trainer.training.data_collator import HardNegativeCollator, collate_pair_indices
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import IGNORE_LABEL

DOCS = [f"document number {i} about cloud network traffic" for i in range(20)]


def row(qid, pos, negs):
    return {
        "query_id": qid,
        "query": f"query {qid} about the cloud",
        "positive_id": f"d{pos}",
        "positive": DOCS[pos],
        "negative_ids": [f"d{n}" for n in negs],
        "negatives": [DOCS[n] for n in negs],
    }


@pytest.fixture(scope="module")
def tokenizer(tiny_bert_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_bert_dir))


@pytest.fixture(scope="module")
def dataset():
    rows = [
        row("q0", 0, [5, 6, 7, 8, 9, 10]),
        row("q1", 1, [6, 7, 8, 9, 10, 11]),
        row("q2", 2, [3, 12]),  # q2 has two positives: d2 and d3 (next row); d3 is removed from this pool
        row("q2", 3, [13, 14, 15, 16, 17, 18]),
        row("q4", 4, [19]),
    ]
    return HardNegativeDataset.from_rows(rows)


def corpus(ds):
    return {"corpus_texts": ds.doc_texts, "corpus_ids": ds.doc_ids}


def items(ds, epoch=None):
    out = [ds[i] for i in range(len(ds))]
    return out if epoch is None else [dict(f, epoch=epoch) for f in out]


def negatives(collator, features):
    return [g.negative_ids for g in collator.select(features)]


def test_hardest_takes_the_head_of_the_pool(tokenizer, dataset):
    collator = HardNegativeCollator(tokenizer, num_negatives=2, strategy="hardest")
    assert negatives(collator, items(dataset)) == [
        ["d5", "d6"],
        ["d6", "d7"],
        ["d12"],
        ["d13", "d14"],
        ["d19"],
    ]
    assert negatives(collator, items(dataset, epoch=3)) == negatives(collator, items(dataset))
    # the pool order is what counts: reorder a pool, the head follows
    ds = HardNegativeDataset.from_rows([row("q0", 0, [5, 6, 7])])
    ds.set_pools(ds.pools[:, ::-1].copy())
    assert negatives(collator, items(ds)) == [["d7", "d6"]]


def test_sample_is_seeded_per_pair_and_epoch(tokenizer, dataset):
    a = HardNegativeCollator(tokenizer, num_negatives=2, strategy="sample", seed=7)
    b = HardNegativeCollator(tokenizer, num_negatives=2, strategy="sample", seed=7)
    feats0 = items(dataset, epoch=0)
    assert negatives(a, feats0) == negatives(b, feats0)
    # the same pair gets the same negatives whatever else is in the batch, and in any batch order
    alone = negatives(a, [feats0[3]])
    assert alone == [negatives(a, feats0)[3]] == [negatives(a, feats0[::-1])[1]]
    for negs, feature in zip(negatives(a, feats0), feats0):
        assert set(negs) <= set(feature["pool_ids"]) and len(negs) == min(2, len(feature["pool_ids"]))
    epochs = [negatives(a, items(dataset, epoch=e)) for e in range(4)]
    assert any(e != epochs[0] for e in epochs[1:])
    other_seed = HardNegativeCollator(tokenizer, num_negatives=2, strategy="sample", seed=8)
    assert any(negatives(other_seed, items(dataset, epoch=e)) != epochs[e] for e in range(4))
    # set_epoch applies to features without an epoch
    a.set_epoch(2)
    assert negatives(a, items(dataset)) == epochs[2]


def test_random_negatives_and_fill(tokenizer, dataset):
    collator = HardNegativeCollator(tokenizer, num_negatives=2, random_negatives=3, seed=1, **corpus(dataset))
    groups = collator.select(items(dataset, epoch=0))
    for g, feature in zip(groups, items(dataset)):
        randoms = [d for d, k in zip(g.negative_ids, g.kinds) if k == "random"]
        assert len(randoms) == 3
        assert not set(randoms) & set(feature["positive_ids"])
        assert len(set(g.negative_ids)) == len(g.negative_ids)
    assert [g.negative_ids for g in groups] == [
        g.negative_ids for g in collator.select(items(dataset, epoch=0))
    ]
    # short pools are topped up only with fill_random
    fill = HardNegativeCollator(tokenizer, num_negatives=3, fill_random=True, **corpus(dataset))
    short = fill.select([dataset[4]])[0]  # pool of one
    assert short.kinds == ["hard", "random", "random"]
    no_fill = HardNegativeCollator(tokenizer, num_negatives=3)
    assert no_fill.select([dataset[4]])[0].kinds == ["hard"]
    with pytest.raises(ConfigError, match="corpus"):
        HardNegativeCollator(tokenizer, random_negatives=1).select([dataset[0]])


def test_in_batch_negatives_skip_the_pairs_own_positives(tokenizer, dataset):
    collator = HardNegativeCollator(tokenizer, num_negatives=1, in_batch_negatives=True)
    feats = items(dataset)
    groups = collator.select(feats)
    for g, feature in zip(groups, feats):
        in_batch = [d for d, k in zip(g.negative_ids, g.kinds) if k == "in_batch"]
        assert not set(in_batch) & set(feature["positive_ids"])
        others = {f["positive_id"] for f in feats} - set(feature["positive_ids"])
        assert set(in_batch) == others
    # q2 has positives d2 and d3, both in the batch: neither is a negative of either q2 pair
    assert "d3" not in groups[2].negative_ids and "d2" not in groups[3].negative_ids


def test_bce_layout(tokenizer, dataset):
    collator = HardNegativeCollator(tokenizer, num_negatives=2, loss="bce")
    batch = collator(items(dataset)[:3])
    assert batch["labels"].tolist() == [1, 0, 0, 1, 0, 0, 1, 0]
    assert batch["labels"].dtype == torch.float32
    assert "group_size" not in batch
    assert batch["input_ids"].shape[0] == 8 == batch["attention_mask"].shape[0]


def test_lce_layout_pads_to_a_fixed_group_size(tokenizer, dataset):
    collator = HardNegativeCollator(tokenizer, num_negatives=3, loss="lce")
    batch = collator(items(dataset)[2:5])  # pools of 1, 3 (capped) and 1 negatives
    assert int(batch["group_size"]) == 4
    p = IGNORE_LABEL
    assert batch["labels"].tolist() == [1, 0, p, p, 1, 0, 0, 0, 1, 0, p, p]
    # padding rows pair the query with an empty document
    pad_row = batch["input_ids"][2][batch["attention_mask"][2].bool()]
    assert pad_row.tolist() == tokenizer(["query q2 about the cloud"], [""])["input_ids"][0]


def test_tokenisation_matches_cross_encoder(tokenizer, dataset, tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    collator = HardNegativeCollator(tokenizer, num_negatives=1, max_length=12)
    feats = items(dataset)[:2]
    batch = collator(feats)
    pairs = []
    for g in collator.select(feats):
        pairs += [(g.query, g.positive)] + [(g.query, t) for t in g.negative_texts]
    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, max_length=12, device="cpu")
    expected = model.preprocess(pairs)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(batch[key], expected[key]), key
        assert batch[key].dtype == expected[key].dtype == torch.int64, key
    assert batch["input_ids"].shape[1] == 12  # truncated at max_length


def test_collate_pair_indices_and_config_errors(tokenizer, dataset):
    assert collate_pair_indices([dataset[1], dataset[3]])["deferred_pair_index"].tolist() == [1, 3]
    with pytest.raises(ConfigError, match="strategy"):
        HardNegativeCollator(tokenizer, strategy="semi-hard")
    with pytest.raises(ConfigError, match="loss"):
        HardNegativeCollator(tokenizer, loss="margin")
    with pytest.raises(ConfigError, match="pool_texts"):
        HardNegativeCollator(tokenizer)([{"pair_index": 0, "query": "q", "positive": "p"}])
