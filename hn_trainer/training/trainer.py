"""`HardNegativeTrainer`: `transformers.Trainer` for a one-logit cross-encoder trained on hard negatives.

What it adds to the host trainer:

- the base model comes from a name alone (`load_reranker`): any Hugging Face checkpoint, a
  sentence-transformers folder (bi-encoder body, fresh one-logit head) or CrossEncoder folder, or a well-known
  hub id served offline from an installed package;
- negatives are picked when a step runs, not when the data loader prefetches the batch: the loader yields pair
  indices and `training_step` asks the collator for ``(seed, epoch, pair_index)``-determined negatives from
  the pools as they are *now*. A pool reordered by `RemineCallback` at step ``s`` is therefore used from step
  ``s + 1`` on, with or without loader workers, and a run resumed from checkpoint ``s`` sees exactly the pools
  and negatives of the uninterrupted run;
- the loss comes from `hn_trainer.training.losses` (``compute_loss`` on ``model(**features).logits``);
- evaluators (`RerankingEvaluationCallback`) run inside `evaluate`, so ``eval_mrr@10`` and friends reach the
  metrics dict, the logs, ``metric_for_best_model`` and early stopping;
- saved folders load with ``sentence_transformers.CrossEncoder(path)`` and score like the trained model: the
  activation ``CrossEncoder.predict`` applies is written into ``config.json`` (``"sentence_transformers":
  {"activation_fn": ...}``, read by sentence-transformers 4 to 6), and the tokenizer's ``model_max_length`` is
  the training ``max_length``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers import Trainer, set_seed
from transformers.trainer_utils import get_last_checkpoint

from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.training.data_collator import DEFERRED_KEY, HardNegativeCollator, collate_pair_indices
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import get_loss
from hn_trainer.training.training_args import HardNegativeTrainingArguments

logger = logging.getLogger(__name__)

ACTIVATIONS = {
    "sigmoid": "torch.nn.modules.activation.Sigmoid",
    "identity": "torch.nn.modules.linear.Identity",
}
"""Activation names and the dotted paths sentence-transformers' CrossEncoder imports."""

STALE_SENTENCE_TRANSFORMERS_FILES = (
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
)


# ----- base model -------------------------------------------------------------------------------------------


def resolve_model_path(name: str) -> str:
    """A local folder for ``name`` when there is one, else ``name`` unchanged (a hub id).

    An existing path is returned as is; a well-known hub id (``sentence-transformers/all-MiniLM-L6-v2``)
    resolves to the folder of the installed package that carries it
    (`hn_trainer.embeddings.packaged.known_model`), so the same configuration runs offline.
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    try:
        from hn_trainer.embeddings.packaged import known_model
    except ImportError:  # pragma: no cover - the embeddings package is part of hn_trainer
        return name
    packaged = known_model(name)
    if packaged is not None and packaged.kind == "st":
        located = packaged.locate()
        if located is not None:
            logger.info("Using the packaged copy of %s at %s", name, located)
            return str(located)
    return name


def check_single_output(model: nn.Module, name: str | None = None) -> None:
    """Raise `HNTrainerError` unless ``model`` is a sequence classifier with exactly one output."""
    config = getattr(model, "config", None)
    num_labels = getattr(config, "num_labels", None)
    if num_labels != 1:
        what = name or getattr(config, "_name_or_path", None) or type(model).__name__
        raise HNTrainerError(
            f"{what} is not a single-output reranker (num_labels={num_labels}); a cross-encoder reranker "
            "scores each (query, document) pair with one logit. Start from a base encoder or a one-label "
            "reranker."
        )


def load_reranker(
    model_name_or_path: str, *, max_length: int | None = None, **model_kwargs
) -> tuple[nn.Module, Any]:
    """Load a base model as a one-logit cross-encoder.

    Accepts a Hugging Face checkpoint (hub id or folder), a sentence-transformers bi-encoder folder (its
    encoder body gets a fresh one-logit head) or a CrossEncoder folder (loaded with its head), and a packaged
    hub id such as ``sentence-transformers/all-MiniLM-L6-v2`` (see `resolve_model_path`).

    Args:
        model_name_or_path: Hub id or folder.
        max_length: Sets the tokenizer's ``model_max_length`` when given.
        **model_kwargs: Passed to ``AutoModelForSequenceClassification.from_pretrained``.

    Returns:
        ``(AutoModelForSequenceClassification with num_labels=1, tokenizer)``.

    Raises:
        HNTrainerError: The model cannot be loaded, or is a classifier with another number of outputs (e.g. an
            NLI checkpoint with ``num_labels=3``).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

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
        raise HNTrainerError(
            f"{model_name_or_path} is a causal language model; a cross-encoder needs an encoder."
        )
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        logger.info("%s has no reranking head: adding a fresh one-logit head", model_name_or_path)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise HNTrainerError(f"cannot load {model_name_or_path!r} as a cross-encoder: {e}") from None
    check_single_output(model, model_name_or_path)
    if max_length is not None:
        tokenizer.model_max_length = max_length
    return model, tokenizer


def set_score_activation(model: nn.Module, activation: Literal["sigmoid", "identity"]) -> None:
    """Record in the model config the activation ``CrossEncoder.predict`` applies to the logit."""
    if activation not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    try:
        from sentence_transformers import __version__ as st_version
    except ImportError:  # pragma: no cover - a dependency
        st_version = None
    model.config.sentence_transformers = {"activation_fn": ACTIVATIONS[activation], "version": st_version}


def save_reranker(
    model: nn.Module,
    tokenizer: Any,
    output_dir: str | os.PathLike,
    *,
    activation: Literal["sigmoid", "identity"] = "sigmoid",
    max_length: int | None = None,
) -> Path:
    """Save a one-logit cross-encoder so that ``CrossEncoder(output_dir)`` scores like ``activation(logit)``.

    Writes ``model.save_pretrained`` (config with the activation), the tokenizer (``model_max_length`` set to
    ``max_length`` when given), and removes sentence-transformers module files a previous save may have left,
    which would override the activation.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    set_score_activation(model, activation)
    if max_length is not None:
        tokenizer.model_max_length = max_length
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    _remove_stale_files(output_dir)
    return output_dir


def _remove_stale_files(folder: Path) -> None:
    for name in STALE_SENTENCE_TRANSFORMERS_FILES:
        if (folder / name).exists():
            logger.info("Removing %s left in %s by an earlier sentence-transformers save", name, folder)
            (folder / name).unlink()


def _is_cross_encoder(obj: Any) -> bool:
    try:
        from sentence_transformers import CrossEncoder
    except ImportError:  # pragma: no cover - a dependency
        return False
    return isinstance(obj, CrossEncoder)


# ----- trainer ----------------------------------------------------------------------------------------------


class HardNegativeTrainer(Trainer):
    """Fine-tune a cross-encoder reranker on (query, positive, hard-negative pool) pairs.

    Args:
        model: A model name or folder (loaded with `load_reranker`), a ``sentence_transformers.CrossEncoder``,
            or a one-logit ``AutoModelForSequenceClassification`` (then pass ``processing_class``).
        args: `HardNegativeTrainingArguments`.
        train_dataset: A `HardNegativeDataset` (negatives picked per step), or any dataset of collator
            features.
        eval_dataset: Optional dataset whose loss is reported as ``eval_loss``.
        processing_class: The tokenizer (taken from the model when a name or CrossEncoder is given).
        data_collator: Default: a `HardNegativeCollator` configured from ``args``.
        loss: Default: ``get_loss(args.loss)``.
        evaluator: A callable ``(model, tokenizer, accelerator_state=None) -> dict[str, float]`` or a list of
            them, e.g. `RerankingEvaluationCallback`; evaluators passed in ``callbacks`` are found there too.
        callbacks: Trainer callbacks. A `RemineCallback` is added when ``args.remine_steps > 0`` and none is
            given.
        card_data: A `RerankerCardData` for the ``README.md`` that `create_model_card` (and so
            ``push_to_hub``) writes; the training settings are filled in from ``args``.
        **kwargs: Passed to `transformers.Trainer`.

    Example:
        ::

            args = HardNegativeTrainingArguments("out", loss="lce", num_negatives=4, max_steps=100)
            data = HardNegativeDataset.from_disk("runs/mine")
            trainer = HardNegativeTrainer("sentence-transformers/all-MiniLM-L6-v2", args, train_dataset=data)
            trainer.train()
            save_for_hub(trainer, output_dir="runs/reranker/final", card_data=RerankerCardData())
    """

    def __init__(
        self,
        model: str | nn.Module | Any = None,
        args: HardNegativeTrainingArguments | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        data_collator: Callable | None = None,
        loss: nn.Module | None = None,
        evaluator: Callable | Sequence[Callable] | None = None,
        callbacks: list | None = None,
        card_data: Any = None,
        **kwargs,
    ) -> None:
        if args is None:
            args = HardNegativeTrainingArguments(output_dir="hn-trainer-output")
        if not isinstance(args, HardNegativeTrainingArguments):
            raise ConfigError("HardNegativeTrainer needs HardNegativeTrainingArguments")
        if args.remove_unused_columns:
            logger.warning(
                "remove_unused_columns=True would strip the collator's text columns; setting it to False"
            )
            args.remove_unused_columns = False
        if train_dataset is not None and hasattr(train_dataset, "__len__") and len(train_dataset) == 0:
            raise HNTrainerError("the training dataset is empty: no (query, positive) pair to train on")
        base_model_name = str(model) if isinstance(model, (str, os.PathLike)) else None
        model, processing_class = self._resolve_model(model, processing_class, args)
        if data_collator is None:
            data_collator = self.default_collator(args, processing_class)
        if isinstance(data_collator, HardNegativeCollator):
            if loss is None and data_collator.loss != args.loss:
                raise ConfigError(
                    f"the collator lays batches out for loss={data_collator.loss!r} "
                    f"but args.loss={args.loss!r}"
                )
            if data_collator.needs_corpus and data_collator.corpus_texts is None:
                if isinstance(train_dataset, HardNegativeDataset):
                    data_collator.bind_corpus(train_dataset.doc_texts, train_dataset.doc_ids)
        max_length = getattr(data_collator, "max_length", args.max_length)
        if (
            isinstance(train_dataset, HardNegativeDataset)
            and train_dataset.stats["pairs_without_negatives"] == len(train_dataset)
            and isinstance(data_collator, HardNegativeCollator)
            and not (data_collator.needs_corpus or data_collator.in_batch_negatives)
        ):
            raise HNTrainerError(
                f"no training pair has a negative: all {len(train_dataset)} pools are empty and neither random nor "
                "in-batch negatives are configured, so there is nothing to train on. Mine a larger pool, relax the "
                "conditions (conditions='query'), or set fill_random_negatives / in_batch_negatives."
            )
        callbacks = list(callbacks or [])
        evaluators = self._collect_evaluators(evaluator, callbacks, max_length)
        callbacks += self._remine_callbacks(args, train_dataset, callbacks, max_length)

        # transformers refuses eval_strategy != "no" without an eval_dataset; evaluators need none
        super().__init__(
            model=model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset if eval_dataset is not None or not evaluators else "dummy",
            processing_class=processing_class,
            callbacks=callbacks,
            **kwargs,
        )
        if isinstance(self.eval_dataset, str) and self.eval_dataset == "dummy":
            self.eval_dataset = None
        self.loss = loss if loss is not None else get_loss(args.loss)
        self.evaluators = evaluators
        # compute_loss returns a mean over the batch; the host must not rescale it by item counts
        self.model_accepts_loss_kwargs = False
        self.can_return_loss = True
        self._last_features: dict[str, torch.Tensor] | None = None
        self.card_data = card_data
        self.base_model_name = base_model_name

    args: HardNegativeTrainingArguments

    @staticmethod
    def _resolve_model(
        model: Any, processing_class: Any, args: HardNegativeTrainingArguments
    ) -> tuple[nn.Module, Any]:
        if model is None:
            raise ConfigError("HardNegativeTrainer needs a model (a name, a folder, or a model)")
        if isinstance(model, (str, os.PathLike)):
            set_seed(args.seed)  # the fresh head of a base encoder is part of the reproducible run
            model, tokenizer = load_reranker(str(model), max_length=args.max_length)
            processing_class = processing_class or tokenizer
        elif _is_cross_encoder(model):  # train the transformers model inside the CrossEncoder
            processing_class = processing_class or model.tokenizer
            model = model.model
        if processing_class is None:
            raise ConfigError("pass processing_class (the tokenizer) with a model object")
        check_single_output(model)
        return model, processing_class

    @staticmethod
    def default_collator(args: HardNegativeTrainingArguments, tokenizer: Any) -> HardNegativeCollator:
        """The `HardNegativeCollator` that ``args`` describe."""
        return HardNegativeCollator(
            tokenizer,
            num_negatives=args.num_negatives,
            strategy=args.negative_strategy,
            seed=args.resolved_negative_seed,
            random_negatives=args.random_negatives,
            in_batch_negatives=args.in_batch_negatives,
            max_length=args.max_length,
            loss=args.loss,
            fill_random=args.fill_random_negatives,
        )

    @staticmethod
    def _collect_evaluators(evaluator: Any, callbacks: list, max_length: int | None) -> list[Callable]:
        from hn_trainer.training.callbacks import RerankingEvaluationCallback

        evaluators = (
            [] if evaluator is None else list(evaluator) if isinstance(evaluator, Sequence) else [evaluator]
        )
        evaluators += [
            cb for cb in callbacks if isinstance(cb, RerankingEvaluationCallback) and cb not in evaluators
        ]
        for ev in evaluators:
            if getattr(ev, "max_length", 0) is None:
                ev.max_length = max_length
        return evaluators

    @staticmethod
    def _remine_callbacks(args, train_dataset, callbacks: list, max_length: int | None) -> list:
        from hn_trainer.training.callbacks import RemineCallback

        if (
            args.remine_steps <= 0
            or train_dataset is None
            or any(isinstance(cb, RemineCallback) for cb in callbacks)
        ):
            return []  # no training data (evaluation only) or already configured
        if not isinstance(train_dataset, HardNegativeDataset):
            raise ConfigError("remine_steps needs a HardNegativeDataset as train_dataset")
        return [
            RemineCallback(
                train_dataset, args.remine_steps, batch_size=args.remine_batch_size, max_length=max_length
            )
        ]

    # ----- data ---------------------------------------------------------------------------------------------

    def get_train_dataloader(self) -> DataLoader:
        """With a `HardNegativeDataset`, the loader yields pair indices only; see `training_step`."""
        if not isinstance(self.train_dataset, HardNegativeDataset):
            return super().get_train_dataloader()
        collator, self.data_collator = self.data_collator, collate_pair_indices
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = collator

    def current_epoch(self) -> int:
        """Epoch of the step being run (restored with the trainer state on resume)."""
        return math.floor(self.state.epoch or 0.0)

    def collate_pairs(self, pair_indices: Sequence[int], epoch: int | None = None) -> dict[str, torch.Tensor]:
        """Pick the negatives of training pairs for `epoch` (default: the current one) and tokenise them."""
        epoch = self.current_epoch() if epoch is None else epoch
        features = [dict(self.train_dataset[int(i)], epoch=epoch) for i in pair_indices]
        return self.data_collator(features)

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        """Pick and tokenise the negatives of a deferred batch now, then run the host's training step."""
        if DEFERRED_KEY in inputs:
            inputs = self.collate_pairs(inputs[DEFERRED_KEY].tolist())
            self._last_features = {
                "input_ids": inputs["input_ids"],
                "attention_mask": inputs["attention_mask"],
            }
        return super().training_step(model, inputs, num_items_in_batch)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """The host's estimate (6 x tokens x non-embedding parameters) for the real batch.

        The parameter count is computed once per model instead of once per step: counting walks every module,
        a cost the step would otherwise pay each time.
        """
        if DEFERRED_KEY in inputs and self._last_features is not None:
            inputs = self._last_features
        main_input = getattr(self.model, "main_input_name", "input_ids")
        if main_input not in inputs or not hasattr(self.model, "num_parameters"):
            return super().floating_point_ops(inputs)
        cached = getattr(self, "_flop_parameters", None)
        if cached is None or cached[0] is not self.model:
            cached = self._flop_parameters = (self.model, self.model.num_parameters(exclude_embeddings=True))
        return 6 * inputs[main_input].numel() * cached[1]

    def _track_num_input_tokens(self, inputs):  # transformers >= 4.57: counts tokens of the real batch
        if DEFERRED_KEY in inputs and self._last_features is not None:
            inputs = self._last_features
        return super()._track_num_input_tokens(inputs)

    # ----- loss ---------------------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """`self.loss` on ``model(**features).logits`` (``[rows, 1]``), ``labels`` and ``group_size``."""
        features = {k: v for k, v in inputs.items() if k not in ("labels", "group_size")}
        outputs = model(**features)
        loss = self.loss(outputs.logits, inputs["labels"], inputs.get("group_size"))
        return (loss, outputs) if return_outputs else loss

    # ----- evaluation ---------------------------------------------------------------------------------------

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        if eval_dataset is None and self.eval_dataset is None and self.evaluators:
            return DataLoader([])
        return super().get_eval_dataloader(eval_dataset)

    def evaluation_loop(
        self, dataloader, description, prediction_loss_only=None, ignore_keys=None, metric_key_prefix="eval"
    ):
        output = super().evaluation_loop(
            dataloader,
            description,
            prediction_loss_only=prediction_loss_only,
            ignore_keys=ignore_keys,
            metric_key_prefix=metric_key_prefix,
        )
        if not self.evaluators:
            return output
        if isinstance(self.eval_dataset, dict):
            # several eval datasets: run the evaluators once, with the first dataset, under the plain prefix
            first = f"{metric_key_prefix.split('_')[0]}_{next(iter(self.eval_dataset))}"
            if metric_key_prefix != first:
                return output
            metric_key_prefix = metric_key_prefix.split("_")[0]
        output.metrics.update(self.run_evaluators(metric_key_prefix))
        return output

    def run_evaluators(self, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Run every evaluator on the current model; keys prefixed ``f"{metric_key_prefix}_"``."""
        state = self.accelerator if self.accelerator.num_processes > 1 else None
        prefix = f"{metric_key_prefix}_"
        metrics: dict[str, float] = {}
        was_training = self.model.training
        for evaluator in self.evaluators:
            values = evaluator(self.model, self.processing_class, accelerator_state=state)
            metrics.update({k if k.startswith(prefix) else prefix + k: v for k, v in values.items()})
        self.model.train(was_training)
        return metrics

    # ----- checkpoints and saving ---------------------------------------------------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`transformers.Trainer.train`; on resume, callbacks having ``load_checkpoint(folder)`` reload."""
        if resume_from_checkpoint is True or resume_from_checkpoint == "True":
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise HNTrainerError(f"no checkpoint found in {self.args.output_dir} to resume from")
        if resume_from_checkpoint:
            for callback in self.callback_handler.callbacks:
                if hasattr(callback, "load_checkpoint"):
                    callback.load_checkpoint(resume_from_checkpoint)
        return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        unwrapped = self.accelerator.unwrap_model(self.model)
        if hasattr(unwrapped, "config"):
            set_score_activation(unwrapped, self.args.resolved_activation)
        max_length = getattr(self.data_collator, "max_length", None) or self.args.max_length
        if max_length is not None and self.processing_class is not None:
            self.processing_class.model_max_length = max_length
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            _remove_stale_files(Path(output_dir))

    def create_model_card(
        self,
        language: str | list[str] | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        dataset: str | list[str] | None = None,
        **kwargs,
    ) -> None:
        """Write the reranker card (`hn_trainer.training.model_card`) as ``README.md`` in ``args.output_dir``.

        Replaces the generic card of `transformers.Trainer`, so ``trainer.push_to_hub()`` uploads this one.
        """
        import copy

        from hn_trainer.training.model_card import RerankerCardData, generate_model_card

        if not self.is_world_process_zero():
            return
        card = copy.deepcopy(self.card_data) if self.card_data is not None else RerankerCardData()
        card.model_id = card.model_id or self.args.hub_model_id
        card.base_model = card.base_model or finetuned_from or self.base_model_name
        if language and not card.language:
            card.language = [language] if isinstance(language, str) else list(language)
        card.license = card.license or license
        if dataset and not card.datasets:
            card.datasets = [dataset] if isinstance(dataset, str) else list(dataset)
        card.add_training_args(self.args, self.state.global_step)
        text = generate_model_card(card, model_name=model_name or Path(self.args.output_dir).name)
        os.makedirs(self.args.output_dir, exist_ok=True)
        with open(os.path.join(self.args.output_dir, "README.md"), "w", encoding="utf-8") as f:
            f.write(text)
