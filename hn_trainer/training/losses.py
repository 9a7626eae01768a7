"""Losses by configuration name: sentence-transformers' cross-encoder losses and the batch layout each reads.

`HardNegativeCollator` picks the negatives of each (query, positive) pair and lays the batch out the way the
chosen loss reads it; the loss (a `sentence_transformers.cross_encoder.losses` module) tokenises and scores:

========== ====================================== =========================================================
name       loss                                   layout
========== ====================================== =========================================================
``bce``    `BinaryCrossEntropyLoss`               ``pair``: one (query, document) row per candidate, label 1/0
``lce``    `LocalizedContrastiveLoss`             ``tuple``: (query, positive, negative_1, ..., negative_n)
``lambda`` `LambdaLoss`                           ``list``: (query, [positive, negatives...]), labels [1, 0...]
``listnet`` `ListNetLoss`                         ``list``
``listmle`` `ListMLELoss`                         ``list``
``plistmle`` `PListMLELoss`                       ``list``
``ranknet`` `RankNetLoss`                         ``list``
========== ====================================== =========================================================

``lce`` (localized contrastive estimation, Gao et al. 2021) is a softmax cross-entropy over one positive and its
``n`` negatives: sentence-transformers' `MultipleNegativesRankingLoss` on raw logits (no activation, scale 1)
with its own in-batch sampling turned off, since the collator already mixes in random and in-batch negatives.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Literal

from sentence_transformers.cross_encoder import CrossEncoder
from sentence_transformers.cross_encoder import losses as st_losses
from torch import nn

from hn_trainer.errors import ConfigError

logger = logging.getLogger(__name__)

Layout = Literal["pair", "tuple", "list"]


class LocalizedContrastiveLoss(st_losses.MultipleNegativesRankingLoss):
    """Softmax cross-entropy over (positive, negative_1, ..., negative_n) of each query, on raw logits.

    `MultipleNegativesRankingLoss` with ``activation_fn=None``, ``scale=1`` and no in-batch sampling of its own:
    every candidate of a row comes from the batch's columns.

    Inputs: ``(query, positive, negative_1, ..., negative_n)`` columns, no labels.

    References:
        Gao, Dai and Callan, *Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline*, ECIR 2021.
    """

    def __init__(self, model: CrossEncoder, temperature: float = 1.0) -> None:
        if temperature <= 0:
            raise ConfigError(f"the lce temperature must be positive, got {temperature}")
        super().__init__(model, num_negatives=0, scale=1.0 / temperature, activation_fn=None)

    def get_in_batch_negatives(self, anchors: list[str], candidates: list[list[str]]) -> Generator[list[str]]:
        return iter(())

    def forward(self, inputs: list[list[str]], labels=None, prompt: str | None = None, task: str | None = None):
        """One forward pass over every (query, candidate) pair of the batch (the host runs one per column,
        which data-parallel training refuses: the same parameters would be marked ready twice)."""
        anchors, columns = inputs[0], inputs[1:]
        pairs = [(anchor, candidate) for column in columns for anchor, candidate in zip(anchors, column)]
        logits = self.call_model_with_pairs(pairs, prompt=prompt, task=task)
        return self.calculate_loss(list(logits.view(len(columns), len(anchors))), len(anchors))

    def get_config_dict(self) -> dict[str, float]:
        return {"temperature": 1.0 / self.scale}


LOSSES: dict[str, tuple[type[nn.Module], Layout]] = {
    "bce": (st_losses.BinaryCrossEntropyLoss, "pair"),
    "lce": (LocalizedContrastiveLoss, "tuple"),
    "lambda": (st_losses.LambdaLoss, "list"),
    "listnet": (st_losses.ListNetLoss, "list"),
    "listmle": (st_losses.ListMLELoss, "list"),
    "plistmle": (st_losses.PListMLELoss, "list"),
    "ranknet": (st_losses.RankNetLoss, "list"),
}
"""Configuration name -> (loss class, batch layout it reads)."""

LossName = Literal["bce", "lce", "lambda", "listnet", "listmle", "plistmle", "ranknet"]


def _entry(name: str) -> tuple[type[nn.Module], Layout]:
    if name in LOSSES:
        return LOSSES[name]
    for loss_class, layout in LOSSES.values():  # the class name works too: "ListNetLoss"
        if loss_class.__name__ == name:
            return loss_class, layout
    raise ConfigError(f"--loss: unknown loss {name!r}; choose one of {', '.join(LOSSES)}")


def loss_layout(name: str) -> Layout:
    """The batch layout the loss called `name` reads."""
    return _entry(name)[1]


def get_loss(name: str, model: CrossEncoder, **kwargs) -> nn.Module:
    """The sentence-transformers loss module that configuration name `name` stands for, bound to `model`."""
    loss_class, _ = _entry(name)
    return loss_class(model, **kwargs)
