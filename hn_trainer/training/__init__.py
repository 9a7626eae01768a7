"""Reranker training on sentence-transformers' cross-encoder stack, with mined hard negatives.

The pieces follow the method's order: `HardNegativeDataset` (pairs and their mined pools, shared) ->
`HardNegativeCollator` (negatives picked per batch, laid out for the loss) -> `HardNegativeTrainer`
(`CrossEncoderTrainer` with a loss chosen by name) with `RemineCallback` (re-scores the pools while training)
-> a `CrossEncoder` whose card (`HardNegativeModelCardData`) records how its negatives were mined.
"""

from __future__ import annotations

from hn_trainer.training.callbacks import RemineCallback
from hn_trainer.training.data_collator import Group, HardNegativeCollator
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import LOSSES, LocalizedContrastiveLoss, get_loss, loss_layout
from hn_trainer.training.model_card import HardNegativeModelCardData
from hn_trainer.training.trainer import (
    HardNegativeTrainer,
    check_single_output,
    last_complete_checkpoint,
    load_reranker,
    resolve_checkpoint,
    resolve_model_path,
)
from hn_trainer.training.training_args import HardNegativeTrainingArguments

__all__ = [
    "LOSSES",
    "Group",
    "HardNegativeCollator",
    "HardNegativeDataset",
    "HardNegativeModelCardData",
    "HardNegativeTrainer",
    "HardNegativeTrainingArguments",
    "LocalizedContrastiveLoss",
    "RemineCallback",
    "check_single_output",
    "get_loss",
    "last_complete_checkpoint",
    "load_reranker",
    "loss_layout",
    "resolve_checkpoint",
    "resolve_model_path",
]
