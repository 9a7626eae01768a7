"""Losses of a single-logit cross-encoder on batches laid out by `HardNegativeCollator`.

A batch holds, for each (query, positive) pair, one contiguous *group* of rows: the positive first, then its
negatives. ``labels`` is 1.0 for a positive, 0.0 for a negative and `IGNORE_LABEL` for a padding row (a slot
that only keeps the group size fixed within a batch; see `HardNegativeCollator`).

- `BinaryCrossEntropyLoss`: pointwise, each row is a binary relevance judgement.
- `LocalizedContrastiveLoss` (LCE): listwise, softmax cross-entropy over each group with the positive as
  target.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hn_trainer.errors import ConfigError

logger = logging.getLogger(__name__)

IGNORE_LABEL = -100.0
"""Label of a padding row: the row is scored but excluded from every loss."""

LossName = Literal["bce", "lce"]


def _flat_logits(logits: Tensor) -> Tensor:
    if logits.ndim == 2 and logits.shape[-1] != 1:
        raise ConfigError(f"a reranker has one output per pair; got logits of shape {tuple(logits.shape)}")
    return logits.reshape(-1)


class BinaryCrossEntropyLoss(nn.Module):
    """Pointwise binary cross-entropy on the single logit: ``BCEWithLogits(logit, label)`` averaged over rows.

    Inputs: ``logits`` of shape ``[N, 1]`` or ``[N]`` and float ``labels`` ``[N]`` (1 positive, 0 negative);
    rows labelled `IGNORE_LABEL` are skipped. The group layout is not needed.

    Args:
        pos_weight: Weight of the positive rows (``BCEWithLogitsLoss(pos_weight=...)``); ``None`` weighs every
            row alike. With ``n`` negatives per positive, ``pos_weight=n`` balances the two classes.

    Example:
        >>> loss = BinaryCrossEntropyLoss()
        >>> round(loss(torch.tensor([[0.0], [0.0]]), torch.tensor([1.0, 0.0])).item(), 4)
        0.6931
    """

    def __init__(self, pos_weight: float | None = None) -> None:
        super().__init__()
        self.pos_weight = pos_weight

    def forward(self, logits: Tensor, labels: Tensor, group_size: Tensor | int | None = None) -> Tensor:
        scores = _flat_logits(logits)
        labels = labels.reshape(-1).to(scores.dtype)
        keep = labels != IGNORE_LABEL
        pos_weight = None
        if self.pos_weight is not None:
            pos_weight = torch.tensor(self.pos_weight, dtype=scores.dtype, device=scores.device)
        # a masked mean (in float32) rather than boolean indexing, which would wait for the GPU every step
        per_row = F.binary_cross_entropy_with_logits(
            scores, torch.where(keep, labels, 0.0), pos_weight=pos_weight, reduction="none"
        )
        weights = keep.to(torch.float32)
        return (per_row.float() * weights).sum() / weights.sum()


class LocalizedContrastiveLoss(nn.Module):
    """Localized contrastive estimation (LCE): softmax cross-entropy over each group, the positive as target.

    A group is one positive (its first row) and its negatives.

    ``loss = mean over groups of -log( exp(s_pos / T) / sum_{rows r of the group} exp(s_r / T) )``; padding
    rows (label `IGNORE_LABEL`) are left out of the sum.

    References:
        Gao, Dai and Callan, *Rethink Training of BERT Rerankers in Multi-Stage Retrieval Pipeline*, ECIR 2021
        (arXiv:2101.08751).

    Inputs: ``logits`` ``[B * G, 1]``, ``labels`` ``[B * G]`` and ``group_size`` ``G`` (int or scalar tensor),
    as `HardNegativeCollator` lays them out with ``loss="lce"``.

    Args:
        temperature: Divides the logits before the softmax.

    Example:
        >>> loss = LocalizedContrastiveLoss()
        >>> round(loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 0.0]), group_size=2).item(), 4)
        0.6931
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ConfigError(f"temperature must be positive, got {temperature}")
        self.temperature = temperature

    def forward(self, logits: Tensor, labels: Tensor, group_size: Tensor | int | None = None) -> Tensor:
        if group_size is None:
            raise ConfigError("the LCE loss needs `group_size` (use HardNegativeCollator(loss='lce'))")
        size = int(group_size.reshape(-1)[0].item()) if isinstance(group_size, Tensor) else int(group_size)
        scores = _flat_logits(logits)
        if size < 1 or scores.numel() % size:
            raise ConfigError(f"{scores.numel()} rows do not split into groups of {size}")
        scores = scores.view(-1, size) / self.temperature
        labels = labels.reshape(-1, size)
        if not torch.all(labels[:, 0] == 1):
            raise ConfigError("each LCE group must start with its positive (label 1)")
        scores = scores.masked_fill(labels == IGNORE_LABEL, float("-inf"))
        target = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, target)


def get_loss(name: LossName, **kwargs) -> nn.Module:
    """The loss module for a configuration name: ``"bce"`` or ``"lce"``."""
    if name == "bce":
        return BinaryCrossEntropyLoss(**kwargs)
    if name == "lce":
        return LocalizedContrastiveLoss(**kwargs)
    raise ConfigError(f"unknown loss {name!r}; choose 'bce' or 'lce'")
