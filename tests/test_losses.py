"""The host losses by configuration name, checked by hand against the model's own logits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sentence_transformers.cross_encoder import losses as st_losses

from hn_trainer.errors import ConfigError
from hn_trainer.training.data_collator import HardNegativeCollator
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import LOSSES, LocalizedContrastiveLoss, get_loss, loss_layout

from conftest import TINY_SENTENCES

DOCS = TINY_SENTENCES[:8]


def row(qid, query, pos, negs):
    return {
        "query_id": qid,
        "query": query,
        "positive_id": f"d{pos}",
        "positive": DOCS[pos],
        "negative_ids": [f"d{n}" for n in negs],
        "negatives": [DOCS[n] for n in negs],
    }


@pytest.fixture(scope="module")
def pool():
    return HardNegativeDataset.from_rows(
        [
            row("q0", "how do i deploy mysql in the cloud", 0, [1, 6, 7]),
            row("q1", "what is a vcn", 2, [3, 5]),
            row("q2", "what does a waf filter", 4, [5]),
        ]
    )


@pytest.fixture(scope="module")
def model(tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, max_length=32, device="cpu")
    model.eval()  # no dropout: the loss's forward and predict give the same logits
    # The random tiny BERT gives every pair nearly the same logit. A wide head, centred on the pairs of
    # these tests, spreads them a few units apart, so that which candidate is the target shows in the loss.
    params = dict(model.named_parameters())
    weight = next(p for n, p in params.items() if n.endswith("classifier.weight"))
    bias = next(p for n, p in params.items() if n.endswith("classifier.bias"))
    with torch.no_grad():
        weight.normal_(0.0, 500.0, generator=torch.Generator().manual_seed(0))
        bias.zero_()
        pairs = [(q, d) for q in ("how do i deploy mysql in the cloud", "what is a vcn") for d in DOCS]
        bias.sub_(float(logits_of(model, pairs).mean()))
    return model


def collate(model, pool, layout, num_negatives=2):
    collator = HardNegativeCollator(
        preprocess_fn=model.preprocess, pool=pool, layout=layout, num_negatives=num_negatives
    )
    return collator([{"pair_index": i} for i in range(len(pool))])


def split(batch):
    """Features and labels as `CrossEncoderTrainer.collect_features` hands them to the loss."""
    inputs = dict(batch)
    labels = inputs.pop("label", None)
    return list(inputs.values()), labels


def logits_of(model, pairs):
    return model.predict(pairs, activation_fn=torch.nn.Identity(), convert_to_tensor=True).view(-1).double()


def tuple_logits(model, batch):
    """[n_queries, 1 + n] logits of (positive, negative_1, ..., negative_n) per query."""
    columns = [c for c in batch if c != "query"]
    return torch.stack(
        [logits_of(model, list(zip(batch["query"], batch[c]))) for c in columns], dim=1
    )


def _bce(x: float, y: float, pos_weight: float = 1.0) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_matches_hand_computation(model, pool):
    batch = collate(model, pool, "pair")
    features, labels = split(batch)
    logits = logits_of(model, list(zip(batch["query"], batch["document"])))
    loss = get_loss("bce", model)(features, labels)
    assert isinstance(get_loss("bce", model), st_losses.BinaryCrossEntropyLoss)
    assert labels.tolist() == [1, 0, 0, 1, 0, 0, 1, 0]
    by_hand = sum(_bce(x, y) for x, y in zip(logits.tolist(), labels.tolist())) / len(labels)
    assert loss.item() == pytest.approx(by_hand, rel=1e-4)
    torch_loss = F.binary_cross_entropy_with_logits(logits, labels.double()).item()
    assert loss.item() == pytest.approx(torch_loss, rel=1e-4)
    flipped = F.binary_cross_entropy_with_logits(logits, 1 - labels.double()).item()
    assert abs(flipped - loss.item()) > 1e-2


def test_bce_weighs_positives(model, pool):
    batch = collate(model, pool, "pair")
    features, labels = split(batch)
    logits = logits_of(model, list(zip(batch["query"], batch["document"])))
    weighted = sum(_bce(x, y, 3.0) for x, y in zip(logits.tolist(), labels.tolist())) / len(labels)
    loss = get_loss("bce", model, pos_weight=torch.tensor(3.0))(features, labels)
    assert loss.item() == pytest.approx(weighted, rel=1e-4)
    assert loss.item() > get_loss("bce", model)(features, labels).item()


def test_lce_matches_hand_computation(model, pool):
    batch = collate(model, pool, "tuple")
    assert list(batch) == ["query", "positive", "negative_1", "negative_2"]
    features, labels = split(batch)
    assert labels is None
    logits = tuple_logits(model, batch)
    target = torch.zeros(len(logits), dtype=torch.long)
    loss = get_loss("lce", model)
    assert isinstance(loss, LocalizedContrastiveLoss)
    value = loss(features, labels).item()
    by_hand = sum(-row[0] + math.log(sum(math.exp(x) for x in row)) for row in logits.tolist()) / len(logits)
    assert value == pytest.approx(by_hand, rel=1e-4)
    assert value == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-4)
    # temperature divides the logits
    for t in (0.5, 2.0):
        scaled = get_loss("lce", model, temperature=t)(features, labels).item()
        assert scaled == pytest.approx(F.cross_entropy(logits / t, target).item(), rel=1e-4, abs=1e-4)
        assert get_loss("lce", model, temperature=t).get_config_dict() == {"temperature": t}
    assert logits.max() - logits.min() > 0.5
    assert abs(F.cross_entropy(logits, torch.ones_like(target)).item() - value) > 1e-2
    with pytest.raises(ConfigError, match="temperature"):
        get_loss("lce", model, temperature=0)
    with pytest.raises(ConfigError, match="temperature"):
        LocalizedContrastiveLoss(model, temperature=-1.0)


def test_lce_scores_only_the_batch_candidates(model, pool):
    """No in-batch sampling of its own: each query is scored against its own columns, nothing else."""
    batch = collate(model, pool, "tuple")
    features, labels = split(batch)
    scored = []
    original = model.preprocess

    def spy(inputs, *args, **kwargs):
        scored.extend(tuple(p) for p in inputs)
        return original(inputs, *args, **kwargs)

    model.preprocess = spy
    try:
        get_loss("lce", model)(features, labels)
    finally:
        del model.preprocess
    columns = ("positive", "negative_1", "negative_2")
    expected = [(q, d) for c in columns for q, d in zip(batch["query"], batch[c])]
    assert sorted(scored) == sorted(expected) and len(scored) == 3 * len(batch["query"])


@pytest.mark.parametrize("name", ["bce", "lce"])
def test_gradients_flow_to_every_row(model, pool, name):
    batch = collate(model, pool, loss_layout(name))
    features, labels = split(batch)
    scores = []

    def keep(module, args, output):
        output["scores"].retain_grad()
        scores.append(output["scores"])

    model.zero_grad()
    hook = model.register_forward_hook(keep)
    try:
        get_loss(name, model)(features, labels).backward()
    finally:
        hook.remove()
    grad = torch.cat([s.grad.view(-1) for s in scores])  # every scored pair, in the order of the batch
    if name == "bce":
        assert len(grad) == len(labels)
        assert all((g < 0) if y == 1 else (g > 0) for g, y in zip(grad.tolist(), labels.tolist()))
    else:  # column by column: the positives of every query, then each negative column
        positive, *negatives = grad.view(len(batch) - 1, len(batch["query"]))
        assert (positive < 0).all()
        for g in negatives:
            assert (g > 0).all()
    head = [p for n, p in model.named_parameters() if "classifier" in n]
    body = [p for n, p in model.named_parameters() if "classifier" not in n and p.requires_grad]
    assert head and all(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in body)


def test_get_loss_names():
    assert set(LOSSES) == {"bce", "lce", "lambda", "listnet", "listmle", "plistmle", "ranknet"}
    for name, (loss_class, layout) in LOSSES.items():
        assert loss_layout(name) == layout
        assert loss_layout(loss_class.__name__) == layout
    assert loss_layout("ListNetLoss") == "list"
    assert loss_layout("LocalizedContrastiveLoss") == "tuple"
    with pytest.raises(ConfigError, match="--loss") as err:
        loss_layout("hinge")
    assert "unknown loss" in str(err.value)


def test_get_loss_resolves_every_name(model):
    for name, (loss_class, _) in LOSSES.items():
        loss = get_loss(name, model)
        assert type(loss) is loss_class and loss.model is model
        assert type(get_loss(loss_class.__name__, model)) is loss_class
    assert isinstance(get_loss("ListNetLoss", model), st_losses.ListNetLoss)
    with pytest.raises(ConfigError, match="--loss") as err:
        get_loss("hinge", model)
    assert "unknown loss" in str(err.value)


@pytest.mark.parametrize("name", [n for n, (_, layout) in LOSSES.items() if layout == "list"])
def test_listwise_losses_run_on_a_list_batch(model, pool, name):
    batch = collate(model, pool, "list")
    assert [len(d) for d in batch["docs"]] == [3, 3, 2]  # lists of different lengths
    features, labels = split(batch)
    model.zero_grad()
    loss = get_loss(name, model)(features, labels)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
