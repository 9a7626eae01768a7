"""Reranker training: dataset, dynamic-negative collator, losses, trainer, callbacks, model card.

The pieces follow the method's order: `HardNegativeDataset` (pairs and their mined pools) ->
`HardNegativeCollator` (negatives picked per step, tokenised like `CrossEncoder`) -> `HardNegativeTrainer`
(`transformers.Trainer` with BCE or LCE loss) with `RemineCallback` and `RerankingEvaluationCallback` ->
`save_for_hub` (a folder `CrossEncoder` loads, with its model card).
"""

from __future__ import annotations

from hn_trainer.training.callbacks import RemineCallback, RerankingEvaluationCallback
from hn_trainer.training.data_collator import Group, HardNegativeCollator, collate_pair_indices
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import (
    IGNORE_LABEL,
    BinaryCrossEntropyLoss,
    LocalizedContrastiveLoss,
    get_loss,
)
from hn_trainer.training.model_card import (
    RerankerCardData,
    files_to_push,
    generate_model_card,
    push_folder_to_hub,
    save_for_hub,
)
from hn_trainer.training.trainer import (
    HardNegativeTrainer,
    check_single_output,
    load_reranker,
    resolve_model_path,
    save_reranker,
    set_score_activation,
)
from hn_trainer.training.training_args import HardNegativeTrainingArguments

__all__ = [
    "IGNORE_LABEL",
    "BinaryCrossEntropyLoss",
    "Group",
    "HardNegativeCollator",
    "HardNegativeDataset",
    "HardNegativeTrainer",
    "HardNegativeTrainingArguments",
    "LocalizedContrastiveLoss",
    "RemineCallback",
    "RerankerCardData",
    "RerankingEvaluationCallback",
    "check_single_output",
    "collate_pair_indices",
    "files_to_push",
    "generate_model_card",
    "get_loss",
    "load_reranker",
    "push_folder_to_hub",
    "resolve_model_path",
    "save_for_hub",
    "save_reranker",
    "set_score_activation",
]
