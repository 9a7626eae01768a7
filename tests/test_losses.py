"""Loss values on hand-computed batches."""

from __future__ import annotations

import math

import pytest
import torch

from hn_trainer.errors import ConfigError
from hn_trainer.training.losses import (
    IGNORE_LABEL,
    BinaryCrossEntropyLoss,
    LocalizedContrastiveLoss,
    get_loss,
)


def _bce(x: float, y: float) -> float:
    p = 1.0 / (1.0 + math.exp(-x))
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


def test_bce_matches_hand_computation():
    logits = torch.tensor([[2.0], [-1.0], [0.5], [0.0]])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0])
    expected = sum(_bce(x, y) for x, y in [(2.0, 1), (-1.0, 0), (0.5, 0), (0.0, 1)]) / 4
    assert BinaryCrossEntropyLoss()(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_bce_skips_padding_rows_and_weighs_positives():
    logits = torch.tensor([2.0, -1.0, 7.0])
    labels = torch.tensor([1.0, 0.0, IGNORE_LABEL])
    expected = (_bce(2.0, 1) + _bce(-1.0, 0)) / 2
    assert BinaryCrossEntropyLoss()(logits, labels).item() == pytest.approx(expected, rel=1e-6)
    weighted = (3 * _bce(2.0, 1) + _bce(-1.0, 0)) / 2
    assert BinaryCrossEntropyLoss(pos_weight=3.0)(logits, labels).item() == pytest.approx(weighted, rel=1e-6)


def test_lce_matches_hand_computation():
    # two groups of three: positive first
    logits = torch.tensor([[3.0], [1.0], [0.0], [0.5], [2.0], [-1.0]])
    labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    g1 = -3.0 + math.log(math.exp(3.0) + math.exp(1.0) + math.exp(0.0))
    g2 = -0.5 + math.log(math.exp(0.5) + math.exp(2.0) + math.exp(-1.0))
    loss = LocalizedContrastiveLoss()(logits, labels, torch.tensor(3))
    assert loss.item() == pytest.approx((g1 + g2) / 2, rel=1e-6)
    # temperature divides the logits
    t = 2.0
    g1t = -1.5 + math.log(math.exp(1.5) + math.exp(0.5) + math.exp(0.0))
    g2t = -0.25 + math.log(math.exp(0.25) + math.exp(1.0) + math.exp(-0.5))
    assert LocalizedContrastiveLoss(temperature=t)(logits, labels, 3).item() == pytest.approx(
        (g1t + g2t) / 2, rel=1e-6
    )


def test_lce_masks_padding_rows():
    logits = torch.tensor([3.0, 1.0, 100.0, 0.5, 2.0, -1.0])
    labels = torch.tensor([1.0, 0.0, IGNORE_LABEL, 1.0, 0.0, 0.0])
    g1 = -3.0 + math.log(math.exp(3.0) + math.exp(1.0))  # the padding row (logit 100) is left out
    g2 = -0.5 + math.log(math.exp(0.5) + math.exp(2.0) + math.exp(-1.0))
    assert LocalizedContrastiveLoss()(logits, labels, 3).item() == pytest.approx((g1 + g2) / 2, rel=1e-6)


def test_lce_gradients_flow_to_every_real_row():
    logits = torch.tensor([1.0, 0.0, 2.0, 0.0], requires_grad=True)
    labels = torch.tensor([1.0, 0.0, 1.0, IGNORE_LABEL])
    LocalizedContrastiveLoss()(logits, labels, 2).backward()
    assert logits.grad[0] < 0 < logits.grad[1]
    assert logits.grad[2] == 0 and logits.grad[3] == 0  # a group of one positive has nothing to contrast


def test_lce_errors():
    loss = LocalizedContrastiveLoss()
    with pytest.raises(ConfigError, match="group_size"):
        loss(torch.zeros(4), torch.tensor([1.0, 0, 1, 0]))
    with pytest.raises(ConfigError, match="groups of 3"):
        loss(torch.zeros(4), torch.tensor([1.0, 0, 1, 0]), 3)
    with pytest.raises(ConfigError, match="start with its positive"):
        loss(torch.zeros(4), torch.tensor([0.0, 1, 1, 0]), 2)
    with pytest.raises(ConfigError, match="one output"):
        loss(torch.zeros(4, 2), torch.tensor([1.0, 0, 1, 0]), 2)
    with pytest.raises(ConfigError):
        LocalizedContrastiveLoss(temperature=0)


def test_get_loss():
    assert isinstance(get_loss("bce"), BinaryCrossEntropyLoss)
    assert isinstance(get_loss("lce", temperature=0.5), LocalizedContrastiveLoss)
    with pytest.raises(ConfigError, match="unknown loss"):
        get_loss("hinge")
