"""HardNegativeCollator: negative choice and seeding, batch layouts, what the host loss scores."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerControl, TrainerState

from hn_trainer.errors import ConfigError
from hn_trainer.training.data_collator import HardNegativeCollator
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import get_loss

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
def model(tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, max_length=12, device="cpu")
    model.eval()
    return model


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


def make(model, pool, **kwargs):
    return HardNegativeCollator(preprocess_fn=model.preprocess, pool=pool, **kwargs)


def features(ds, epoch=None):
    out = [{"pair_index": i} for i in range(len(ds))]
    return out if epoch is None else [dict(f, epoch=epoch) for f in out]


def negatives(collator, feats):
    return [g.negative_ids for g in collator.select(feats)]


def test_hardest_takes_the_head_of_the_pool(model, dataset):
    collator = make(model, dataset, num_negatives=2, strategy="hardest")
    assert negatives(collator, features(dataset)) == [
        ["d5", "d6"],
        ["d6", "d7"],
        ["d12"],
        ["d13", "d14"],
        ["d19"],
    ]
    assert negatives(collator, features(dataset, epoch=3)) == negatives(collator, features(dataset))
    assert all(g.kinds == ["hard"] * len(g.negative_ids) for g in collator.select(features(dataset)))
    # the pool order is what counts: reorder a pool, the head follows
    ds = HardNegativeDataset.from_rows([row("q0", 0, [5, 6, 7])])
    ds.set_pools(ds.pools[:, ::-1].copy())
    assert negatives(make(model, ds, num_negatives=2), features(ds)) == [["d7", "d6"]]
    # a batch built while an earlier order is in flight still sees that order, the next one the new order
    ds.set_pools(ds.pools[:, ::-1].copy(), in_flight=1)
    head = make(model, ds, num_negatives=2)
    assert negatives(head, features(ds)) == [["d7", "d6"]]
    assert negatives(head, features(ds)) == [["d5", "d6"]]


def test_sample_is_seeded_per_pair_and_epoch(model, dataset):
    a = make(model, dataset, num_negatives=2, strategy="sample", seed=7)
    b = make(model, dataset, num_negatives=2, strategy="sample", seed=7)
    feats0 = features(dataset, epoch=0)
    assert negatives(a, feats0) == negatives(b, feats0)
    # the same pair gets the same negatives whatever else is in the batch, and in any batch order
    alone = negatives(a, [feats0[3]])
    assert alone == [negatives(a, feats0)[3]] == [negatives(a, feats0[::-1])[1]]
    for negs, i in zip(negatives(a, feats0), range(len(dataset))):
        pool_ids = dataset[i]["pool_ids"]
        assert set(negs) <= set(pool_ids) and len(negs) == min(2, len(pool_ids))
    epochs = [negatives(a, features(dataset, epoch=e)) for e in range(4)]
    assert any(e != epochs[0] for e in epochs[1:])
    other_seed = make(model, dataset, num_negatives=2, strategy="sample", seed=8)
    assert any(negatives(other_seed, features(dataset, epoch=e)) != epochs[e] for e in range(4))
    # the epoch the trainer announces applies to features without an epoch
    state = TrainerState()
    state.epoch = 2.0
    a.on_epoch_begin(None, state, TrainerControl())
    assert a.epoch == 2
    assert negatives(a, features(dataset)) == epochs[2]
    a.epoch = 3
    assert negatives(a, features(dataset)) == epochs[3]


def test_random_negatives_and_fill(model, dataset):
    collator = make(model, dataset, num_negatives=2, random_negatives=3, seed=1)
    groups = collator.select(features(dataset, epoch=0))
    for g in groups:
        item = dataset[g.pair_index]
        randoms = [d for d, k in zip(g.negative_ids, g.kinds) if k == "random"]
        assert len(randoms) == 3
        assert not set(randoms) & set(item["positive_ids"])
        assert len(set(g.negative_ids)) == len(g.negative_ids)
        assert set(randoms) <= set(dataset.doc_ids)
        assert g.negative_texts == [dataset.doc_texts[dataset.doc_ids.index(d)] for d in g.negative_ids]
    assert [g.negative_ids for g in groups] == [
        g.negative_ids for g in collator.select(features(dataset, epoch=0))
    ]
    # short pools are topped up only with fill_random
    fill = make(model, dataset, num_negatives=3, fill_random=True)
    short = fill.select([{"pair_index": 4}])[0]  # pool of one
    assert short.kinds == ["hard", "random", "random"]
    assert not set(short.negative_ids) & set(dataset[4]["positive_ids"])
    no_fill = make(model, dataset, num_negatives=3)
    assert no_fill.select([{"pair_index": 4}])[0].kinds == ["hard"]
    # random negatives come from the pool's document lookup: with the whole corpus given, from all of it
    wide = HardNegativeDataset.from_rows(
        [row("q0", 0, [1])], corpus=([f"d{i}" for i in range(20)], DOCS)
    )
    drawn = set()
    for epoch in range(10):
        collator = make(model, wide, num_negatives=1, random_negatives=4)
        drawn |= set(collator.select([{"pair_index": 0, "epoch": epoch}])[0].negative_ids)
    assert drawn - {"d0", "d1"} and "d0" not in drawn
    with pytest.raises(ConfigError, match="pool"):
        HardNegativeCollator(preprocess_fn=model.preprocess, random_negatives=1).select([{"pair_index": 0}])


def test_in_batch_negatives_skip_the_pairs_own_positives(model, dataset):
    collator = make(model, dataset, num_negatives=1, in_batch_negatives=True)
    feats = features(dataset)
    groups = collator.select(feats)
    batch_positives = {dataset[f["pair_index"]]["positive_id"] for f in feats}
    for g in groups:
        item = dataset[g.pair_index]
        in_batch = [d for d, k in zip(g.negative_ids, g.kinds) if k == "in_batch"]
        assert not set(in_batch) & set(item["positive_ids"])
        others = batch_positives - set(item["positive_ids"])
        assert set(in_batch) == others
    # q2 has positives d2 and d3, both in the batch: neither is a negative of either q2 pair
    assert "d3" not in groups[2].negative_ids and "d2" not in groups[3].negative_ids


def test_bce_layout(model, dataset):
    collator = make(model, dataset, num_negatives=2, layout="pair")
    batch = collator(features(dataset)[:3])
    assert list(batch) == ["query", "document", "label"]
    assert batch["label"].tolist() == [1, 0, 0, 1, 0, 0, 1, 0]
    assert batch["label"].dtype == torch.float32
    assert "group_size" not in batch
    assert len(batch["query"]) == len(batch["document"]) == 8
    assert batch["query"] == ["query q0 about the cloud"] * 3 + ["query q1 about the cloud"] * 3 + [
        "query q2 about the cloud"
    ] * 2
    assert batch["document"] == [DOCS[i] for i in (0, 5, 6, 1, 6, 7, 2, 12)]


def test_lce_layout_has_a_fixed_group_size(model, dataset):
    collator = make(model, dataset, num_negatives=3, layout="tuple")
    feats = features(dataset)[2:5]  # pools of 1, 6 (capped at 3) and 1 negatives
    batch = collator(feats)
    assert list(batch) == ["query", "positive", "negative_1", "negative_2", "negative_3"]
    assert "label" not in batch
    assert all(len(column) == 3 for column in batch.values())
    assert batch["query"] == [f"query {q} about the cloud" for q in ("q2", "q2", "q4")]
    assert batch["positive"] == [DOCS[2], DOCS[3], DOCS[4]]
    # hard negatives first; the short pools are topped up with random negatives, never a positive
    assert [batch[f"negative_{i}"][1] for i in (1, 2, 3)] == [DOCS[13], DOCS[14], DOCS[15]]
    assert batch["negative_1"][0] == DOCS[12] and batch["negative_1"][2] == DOCS[19]
    groups = collator.select(feats)
    topped_up = ["hard", "random", "random"]
    assert [g.kinds for g in groups] == [topped_up, ["hard"] * 3, topped_up]
    for r, g in enumerate(groups):
        item = dataset[g.pair_index]
        row_docs = [batch[f"negative_{i}"][r] for i in (1, 2, 3)]
        assert len(set(row_docs)) == 3
        assert not set(g.negative_ids) & set(item["positive_ids"])
        assert row_docs == g.negative_texts
    # the same group size with in-batch negatives (which differ in number per pair) and no short pools
    mixed = make(model, dataset, num_negatives=1, layout="tuple", in_batch_negatives=True)(features(dataset))
    assert len({len(column) for column in mixed.values()}) == 1 and len(mixed) >= 3


def test_list_layout(model, dataset):
    collator = make(model, dataset, num_negatives=2, layout="list")
    feats = features(dataset)[:3]
    batch = collator(feats)
    assert list(batch) == ["query", "docs", "label"]
    assert batch["query"] == [f"query {q} about the cloud" for q in ("q0", "q1", "q2")]
    assert batch["docs"] == [[DOCS[0], DOCS[5], DOCS[6]], [DOCS[1], DOCS[6], DOCS[7]], [DOCS[2], DOCS[12]]]
    assert [lab.tolist() for lab in batch["label"]] == [[1, 0, 0], [1, 0, 0], [1, 0]]
    for docs, labels in zip(batch["docs"], batch["label"]):
        assert isinstance(labels, torch.Tensor) and len(labels) == len(docs)


def test_the_loss_scores_exactly_the_emitted_pairs(model, dataset):
    collator = make(model, dataset, num_negatives=1)
    batch = collator(features(dataset)[:2])
    emitted = list(zip(batch["query"], batch["document"]))
    groups = collator.select(features(dataset)[:2])
    assert emitted == [(g.query, t) for g in groups for t in [g.positive, *g.negative_texts]]

    seen = {}
    original = model.preprocess

    def spy(inputs, *args, **kwargs):
        seen["pairs"] = [tuple(p) for p in inputs]
        seen["tokens"] = out = original(inputs, *args, **kwargs)
        return out

    def keep(module, args, output):
        seen["scores"] = output["scores"]

    hook = model.register_forward_hook(keep)
    try:
        model.preprocess = spy
        inputs = dict(batch)
        labels = inputs.pop("label")
        loss = get_loss("bce", model)(list(inputs.values()), labels)
    finally:
        del model.preprocess
        hook.remove()
    assert seen["pairs"] == emitted
    # tokenised as the CrossEncoder tokenises those pairs, truncated at its max_length
    expected = model.preprocess(emitted)
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(seen["tokens"][key], expected[key]), key
    assert seen["tokens"]["input_ids"].shape[1] == 12
    logits = seen["scores"].detach().view(-1)
    predicted = model.predict(emitted, activation_fn=torch.nn.Identity(), convert_to_tensor=True)
    assert torch.allclose(logits, predicted.view(-1), atol=1e-5)
    expected_loss = torch.nn.functional.binary_cross_entropy_with_logits(predicted.view(-1), labels)
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)


def test_train_dataset_rows_and_config_errors(model, dataset):
    train = dataset.as_train_dataset()
    collator = make(model, dataset, num_negatives=2)
    assert [g.pair_index for g in collator.select([train[1], train[3]])] == [1, 3]
    by_index = negatives(collator, [{"pair_index": 1}, {"pair_index": 3}])
    assert negatives(collator, [train[1], train[3]]) == by_index
    with pytest.raises(ConfigError, match="strategy"):
        make(model, dataset, strategy="semi-hard")
    with pytest.raises(ConfigError, match="layout"):
        make(model, dataset, layout="margin")
    with pytest.raises(ConfigError, match="negative"):
        make(model, dataset, num_negatives=-1)
    with pytest.raises(ConfigError, match="negative"):
        make(model, dataset, random_negatives=-1)
    with pytest.raises(ConfigError, match="seed"):
        make(model, dataset, seed=-1)
    with pytest.raises(ConfigError, match="pair_index"):
        collator([{"query": "q", "positive": "p"}])
    with pytest.raises(ConfigError, match="pool"):
        HardNegativeCollator(preprocess_fn=model.preprocess)([{"pair_index": 0}])
