"""Arguments of `HardNegativeTrainer`: `transformers.TrainingArguments` plus the negative settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from hn_trainer.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass
class HardNegativeTrainingArguments(TrainingArguments):
    """`transformers.TrainingArguments` with the settings of hard-negative reranker training.

    Every field is a command-line flag through `HfArgumentParser`. ``remove_unused_columns`` defaults to
    ``False`` (the collator needs the text columns); ``seed`` also seeds the choice of negatives unless
    ``negative_seed`` is set.
    """

    loss: Literal["bce", "lce"] = field(
        default="bce",
        metadata={
            "help": "'bce': pointwise binary cross-entropy; 'lce': softmax over one positive and its "
            "negatives (localized contrastive estimation)."
        },
    )
    num_negatives: int = field(
        default=1, metadata={"help": "Hard negatives per pair and step, taken from its pool."}
    )
    negative_strategy: Literal["hardest", "sample"] = field(
        default="hardest",
        metadata={
            "help": "'hardest': the first num_negatives of the pool (hardest first); 'sample': drawn at "
            "random within the pool, a new draw each epoch."
        },
    )
    pool_size: int = field(
        default=8, metadata={"help": "Negatives mined per pair (the pool the collator picks from)."}
    )
    random_negatives: int = field(default=0, metadata={"help": "Random corpus negatives added per pair."})
    fill_random_negatives: bool = field(
        default=False,
        metadata={"help": "Top pools shorter than num_negatives up with random corpus negatives."},
    )
    in_batch_negatives: bool = field(
        default=False, metadata={"help": "Add the other pairs' positives of the batch as negatives."}
    )
    negative_seed: int | None = field(
        default=None, metadata={"help": "Seed of the negatives' random choices (default: seed)."}
    )
    max_length: int | None = field(
        default=None,
        metadata={
            "help": "Truncation length of a (query, document) pair (default: the tokenizer's, at most 512)."
        },
    )
    remine_steps: int = field(
        default=0,
        metadata={
            "help": "Every N steps, re-score each pool with the model being trained and reorder it hardest "
            "first (0: off)."
        },
    )
    remine_batch_size: int = field(
        default=64, metadata={"help": "Pairs per forward pass when re-scoring pools."}
    )
    keep_pairs_without_negatives: bool = field(
        default=False, metadata={"help": "Keep (query, positive) pairs for which mining found no negative."}
    )
    eval_candidates_k: int = field(
        default=100,
        metadata={"help": "First-stage candidates per evaluation query that the reranker reorders."},
    )
    eval_batch_pairs: int = field(
        default=64, metadata={"help": "(query, document) pairs per evaluation forward pass."}
    )
    score_activation: Literal["auto", "sigmoid", "identity"] = field(
        default="auto",
        metadata={
            "help": "Activation CrossEncoder.predict applies to the saved model's logit: 'sigmoid' (a "
            "probability of relevance), 'identity' (the raw logit), 'auto': sigmoid for bce, identity "
            "for lce."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator needs the text columns."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_negatives < 0:
            raise ConfigError(f"num_negatives must not be negative, got {self.num_negatives}")
        if self.pool_size < 1:
            raise ConfigError(f"pool_size must be at least 1, got {self.pool_size}")
        if self.random_negatives < 0:
            raise ConfigError(f"random_negatives must not be negative, got {self.random_negatives}")
        if self.remine_steps < 0:
            raise ConfigError(f"remine_steps must not be negative, got {self.remine_steps}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"max_length must be at least 8, got {self.max_length}")
        if self.num_negatives > self.pool_size:
            logger.warning(
                "num_negatives=%d exceeds pool_size=%d: pairs get at most pool_size hard negatives",
                self.num_negatives,
                self.pool_size,
            )

    @property
    def resolved_activation(self) -> Literal["sigmoid", "identity"]:
        """The activation written with saved models (``score_activation`` with ``"auto"`` resolved)."""
        if self.score_activation == "auto":
            return "sigmoid" if self.loss == "bce" else "identity"
        return self.score_activation

    @property
    def resolved_negative_seed(self) -> int:
        return self.seed if self.negative_seed is None else self.negative_seed
