"""`HardNegativeTrainer`: sentence-transformers' `CrossEncoderTrainer` that trains on mined hard negatives.

What it adds to its host, and nothing else:

- the base model may be a name: any one-output sequence-classification checkpoint, a `CrossEncoder`, or a
  plain encoder that gets a fresh one-logit head (`load_reranker`), including a well-known hub id served
  offline from an installed package;
- ``train_dataset`` may be the `HardNegativeDataset` of the mined pools: the trainer iterates its
  ``(pair_index, query, positive)`` rows and the `HardNegativeCollator` picks each pair's negatives per batch,
  laid out for the loss named by ``args.loss`` (a sentence-transformers loss; `hn_trainer.training.losses`);
- with ``remine_steps`` a `RemineCallback` re-scores the pools while training;
- the saved model's activation follows the loss (``args.score_activation``).

Saving, the model card, ``push_to_hub`` and evaluators are the host's: a saved folder loads with
``CrossEncoder(path)`` and scores like the trained model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer
from transformers import set_seed

from hn_trainer.embeddings.packaged import resolve_model_path
from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.training.data_collator import HardNegativeCollator
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import get_loss, loss_layout
from hn_trainer.training.model_card import HardNegativeModelCardData
from hn_trainer.training.training_args import HardNegativeTrainingArguments

logger = logging.getLogger(__name__)

ACTIVATIONS = {"sigmoid": torch.nn.Sigmoid, "identity": torch.nn.Identity}


def load_reranker(model_name_or_path: str, *, max_length: int | None = None, **kwargs) -> CrossEncoder:
    """Load a base model as a one-logit `CrossEncoder`.

    Accepts a Hugging Face checkpoint (hub id or folder), a sentence-transformers bi-encoder or CrossEncoder
    folder, and a packaged hub id such as ``sentence-transformers/all-MiniLM-L6-v2`` (`resolve_model_path`).
    A model without a sequence-classification head gets a fresh one-logit head.

    Args:
        model_name_or_path: Hub id or folder.
        max_length: Truncation length of a (query, document) pair.
        **kwargs: Passed to `CrossEncoder`.

    Raises:
        HNTrainerError: The model cannot be loaded, or is a classifier with another number of outputs (e.g. an
            NLI checkpoint with ``num_labels=3``), or a causal language model.
    """
    from transformers import AutoConfig

    path = resolve_model_path(model_name_or_path)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise HNTrainerError(f"cannot load the model configuration of {model_name_or_path!r}: {e}") from None
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForSequenceClassification") for a in architectures) and config.num_labels != 1:
        raise HNTrainerError(
            f"{model_name_or_path} is a classifier with {config.num_labels} outputs ({architectures[0]}, "
            f"num_labels={config.num_labels}), not a single-output reranker; start from a base encoder or a "
            "one-label cross-encoder."
        )
    if any(a.endswith("ForCausalLM") for a in architectures):
        raise HNTrainerError(f"{model_name_or_path} is a causal language model; a cross-encoder needs an encoder.")
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        logger.info("%s has no reranking head: adding a fresh one-logit head", model_name_or_path)
    try:
        model = CrossEncoder(path, num_labels=1, max_length=max_length, **kwargs)
    except (OSError, ValueError) as e:
        raise HNTrainerError(f"cannot load {model_name_or_path!r} as a cross-encoder: {e}") from None
    check_single_output(model, model_name_or_path)
    return model


def check_single_output(model: Any, name: str | None = None) -> None:
    """Raise `HNTrainerError` unless ``model`` scores a pair with exactly one output."""
    num_labels = getattr(model, "num_labels", None)
    if num_labels is None:
        num_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if num_labels != 1:
        what = name or type(model).__name__
        raise HNTrainerError(
            f"{what} is not a single-output reranker (num_labels={num_labels}); a cross-encoder reranker "
            "scores each (query, document) pair with one logit. Start from a base encoder or a one-label "
            "reranker."
        )


class HardNegativeTrainer(CrossEncoderTrainer):
    """`CrossEncoderTrainer` for one-logit rerankers trained on the mined pools of (query, positive) pairs.

    Args:
        model: A `CrossEncoder`, or a name / folder for `load_reranker`.
        args: `HardNegativeTrainingArguments`.
        train_dataset: A `HardNegativeDataset` (the mined pools; the usual case), or a `datasets.Dataset` the
            host's collator and loss read as they are.
        loss: A loss module, or ``None`` for the sentence-transformers loss ``args.loss`` names.
        model_card_data: Mining settings and results for the model card (`HardNegativeModelCardData`).
        **kwargs: Everything `CrossEncoderTrainer` takes (``eval_dataset``, ``evaluator``, ``callbacks``, ...).

    Example:
        ::

            pool = HardNegativeDataset.from_mined(mine_pairs(data, data_args, mining_args).dataset)
            args = HardNegativeTrainingArguments("runs/api", loss="lce", num_negatives=3)
            HardNegativeTrainer("sentence-transformers/all-MiniLM-L6-v2", args, train_dataset=pool).train()
    """

    model_card_data_class = HardNegativeModelCardData
    data_collator_class = HardNegativeCollator
    training_args_class = HardNegativeTrainingArguments

    def __init__(
        self,
        model: CrossEncoder | str | os.PathLike | None = None,
        args: HardNegativeTrainingArguments | None = None,
        train_dataset: HardNegativeDataset | Any = None,
        *,
        loss: torch.nn.Module | None = None,
        model_card_data: HardNegativeModelCardData | None = None,
        callbacks: list | None = None,
        **kwargs,
    ) -> None:
        if args is None:
            raise ConfigError("HardNegativeTrainer needs args (HardNegativeTrainingArguments)")
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise HNTrainerError("the training dataset is empty: no (query, positive) pair to train on")
        self.pool = train_dataset if isinstance(train_dataset, HardNegativeDataset) else None
        if self.pool is not None:
            self._check_negatives(self.pool, args)
            train_dataset = self.pool.as_train_dataset()
        model = self._resolve_model(model, args, model_card_data)
        if loss is None:
            loss = get_loss(args.loss, model)
        callbacks = list(callbacks or [])
        if args.remine_steps and self.pool is not None:
            from hn_trainer.training.callbacks import RemineCallback

            if not any(isinstance(cb, RemineCallback) for cb in callbacks):
                callbacks.append(RemineCallback(self.pool, args.remine_steps, batch_size=args.remine_batch_size))
        super().__init__(model=model, args=args, train_dataset=train_dataset, loss=loss, callbacks=callbacks, **kwargs)
        if isinstance(self.data_collator, HardNegativeCollator):
            self.add_callback(self.data_collator)  # it learns each epoch's number at the epoch's start

    args: HardNegativeTrainingArguments

    @staticmethod
    def _resolve_model(model, args: HardNegativeTrainingArguments, card: HardNegativeModelCardData | None):
        if model is None:
            raise ConfigError("HardNegativeTrainer needs a model (a name, a folder, or a CrossEncoder)")
        if isinstance(model, (str, os.PathLike)):
            set_seed(args.seed)  # the fresh head of a base encoder is part of the reproducible run
            model = load_reranker(str(model), max_length=args.max_length, model_card_data=card)
        elif not isinstance(model, CrossEncoder):
            raise ConfigError(
                f"HardNegativeTrainer trains a sentence_transformers CrossEncoder, got {type(model).__name__}; "
                "pass CrossEncoder(...) or a model name"
            )
        else:
            check_single_output(model)
            if args.max_length is not None:
                model.max_seq_length = args.max_length
            if card is not None:
                model.model_card_data = card
                card.register_model(model)
        model.activation_fn = ACTIVATIONS[args.resolved_activation]()
        return model

    @staticmethod
    def _check_negatives(pool: HardNegativeDataset, args: HardNegativeTrainingArguments) -> None:
        random_ok = args.random_negatives > 0 or args.fill_random_negatives or loss_layout(args.loss) == "tuple"
        if pool.stats["pairs_without_negatives"] == len(pool) and not (random_ok or args.in_batch_negatives):
            raise HNTrainerError(
                f"no training pair has a negative: all {len(pool)} pools are empty and neither random nor "
                "in-batch negatives are configured, so there is nothing to train on. Mine a larger pool, relax "
                "the conditions (conditions='query'), or set fill_random_negatives / in_batch_negatives."
            )

    def get_data_collator(self, model: CrossEncoder, args: HardNegativeTrainingArguments, processing_class=None):
        """The `HardNegativeCollator` over the pools, or the host's collator for a plain dataset."""
        if self.pool is None:
            from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator

            return CrossEncoderDataCollator(preprocess_fn=model.preprocess, prompts=args.prompts)
        return HardNegativeCollator(
            preprocess_fn=model.preprocess,
            prompts=args.prompts,
            pool=self.pool,
            layout=loss_layout(args.loss),
            num_negatives=args.num_negatives,
            strategy=args.negative_strategy,
            seed=args.resolved_negative_seed,
            random_negatives=args.random_negatives,
            fill_random=args.fill_random_negatives,
            in_batch_negatives=args.in_batch_negatives,
        )

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`transformers.Trainer.train`, resuming from the newest complete checkpoint for ``True``."""
        resume_from_checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if resume_from_checkpoint is not None:
            self.args.resume_from_checkpoint = resume_from_checkpoint
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)


CHECKPOINT_FILES = ("trainer_state.json",)


def resolve_checkpoint(value: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint folder a ``--resume_from_checkpoint`` value names.

    ``True`` (spelled ``true``, ``yes``, ``1`` on a command line too): the newest complete checkpoint of
    ``output_dir`` (one whose ``trainer_state.json`` was written: the trainer writes it last); ``False``/``None``:
    none; a path: that folder, which must exist.

    Raises:
        HNTrainerError: A path that is not a folder, or ``True`` with no complete checkpoint.
    """
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in {"false", "no", "0", "none", ""}:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in {"true", "yes", "1"}):
        found = last_complete_checkpoint(output_dir)
        if found is None:
            raise HNTrainerError(f"--resume_from_checkpoint: no complete checkpoint in {output_dir}")
        return found
    if not Path(value).is_dir():
        raise HNTrainerError(f"--resume_from_checkpoint: {value} is not a checkpoint folder")
    return str(value)


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that a kill did not leave half-written."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    steps = []
    for folder in root.glob("checkpoint-*"):
        suffix = folder.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and folder.is_dir() and all((folder / f).exists() for f in CHECKPOINT_FILES):
            steps.append((int(suffix), folder))
    return str(max(steps)[1]) if steps else None
