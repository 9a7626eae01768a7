"""`RemineCallback`: re-score every pair's pool with the model being trained and reorder it hardest first;
`KeepStepCallback`: keep the weights of one step (a recorded run's checkpoint, built again).

`RemineCallback` is the cheap counterpart of ANCE/ADORE-style dynamic negatives: no re-encoding of the corpus and no index
rebuild, only one cross-encoder score per distinct (query, pool document). With the ``"hardest"`` strategy the
collator then follows what the model now finds hard.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState

from hn_trainer.errors import HNTrainerError
from hn_trainer.io import atomic_path
from hn_trainer.training.dataset import HardNegativeDataset

logger = logging.getLogger(__name__)


class RemineCallback(TrainerCallback, ExportableState):
    """Reorder every pool hardest-first by the current model's scores, every ``remine_steps`` optimizer steps.

    The scores are the cross-encoder's logits of (query, pool document), each distinct pair scored once (a query
    with many positives shares its pools across them). With several processes each rank scores a shard and the
    scores are gathered once, so every rank holds the same pools.

    When the new order takes effect: the trainer's data loader builds one batch ahead, so the batch of step
    ``s + 1`` already exists when the pools are reordered at the end of step ``s``; the new order is used from
    the next batch built. A checkpoint of step ``s`` records both orders, and a run resumed from it builds that
    one batch with the old order again: it trains on exactly the negatives of the uninterrupted run.

    State: the step of the last re-scoring and the history of re-scorings live in the trainer state
    (``ExportableState``, restored by ``restore_callback_states_from_checkpoint``); the pool arrays, too large for
    ``trainer_state.json``, in ``remine_state.npz`` in each checkpoint folder, read back in `on_train_begin`.

    Args:
        dataset: The shared `HardNegativeDataset` whose pools are reordered. ``None``: the pools of the
            trainer's collator (a callback restored from a checkpoint finds them so).
        remine_steps: Re-score every this many optimizer steps (> 0).
        batch_size: (query, document) pairs per forward pass.
        show_progress_bar: Show a progress bar while scoring.
    """

    STATE_FILE = "remine_state.npz"

    def __init__(
        self,
        dataset: HardNegativeDataset | None = None,
        remine_steps: int = 1,
        *,
        batch_size: int = 64,
        show_progress_bar: bool = False,
    ) -> None:
        if remine_steps <= 0:
            raise HNTrainerError(f"remine_steps must be positive, got {remine_steps}")
        self.dataset = dataset
        self.remine_steps = remine_steps
        self.batch_size = batch_size
        self.show_progress_bar = show_progress_bar
        self.last_step = 0
        self.history: list[dict[str, float]] = []
        self._previous: np.ndarray | None = None

    def state(self) -> dict:
        return {
            "args": {
                "remine_steps": self.remine_steps,
                "batch_size": self.batch_size,
                "show_progress_bar": self.show_progress_bar,
            },
            "attributes": {"last_step": self.last_step, "history": self.history},
        }

    # ----- re-scoring ---------------------------------------------------------------------------------------

    def remine(self, model: Any, step: int | None = None) -> np.ndarray:
        """Score every pool entry with ``model`` (a `CrossEncoder`) and reorder the pools, highest score first.

        Returns:
            The new ``[n_pairs, M]`` pool array (also set on the dataset).
        """
        from accelerate import PartialState

        from hn_trainer.evaluation.reranking import score_pairs

        dataset = self._require_dataset()
        pools = dataset.pools
        distinct, inverse = dataset.distinct_pool_pairs()
        texts = [(dataset.query_texts[q], dataset.doc_texts[d]) for q, d in distinct.tolist()]
        state = PartialState()
        was_training = model.training
        try:
            scores = score_pairs(
                model,
                texts,
                batch_size=self.batch_size,
                show_progress_bar=self.show_progress_bar and state.is_main_process,
                state=state,
            )
        finally:
            model.train(was_training)
        grid = np.where(inverse >= 0, np.asarray(scores, dtype=np.float64)[np.maximum(inverse, 0)], -np.inf)
        order = np.argsort(-grid, axis=1, kind="stable")
        new_pools = np.take_along_axis(pools, order, axis=1)
        changed = float(np.mean(new_pools[:, 0] != pools[:, 0])) if len(pools) else 0.0
        self._previous = pools
        dataset.set_pools(new_pools)
        self.last_step = int(step) if step is not None else self.last_step
        self.history.append({"step": float(self.last_step), "top_changed": changed})
        logger.info(
            "Re-scored %d distinct pairs for %d pool entries at step %d: the hardest negative changed for %.1f%% "
            "of pairs",
            len(distinct),
            int((pools >= 0).sum()),
            self.last_step,
            100 * changed,
        )
        return new_pools

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        step = state.global_step
        last = state.max_steps > 0 and step >= state.max_steps  # nothing trains on pools re-scored now
        if step % self.remine_steps == 0 and step != self.last_step and not last:
            self._bind(kwargs)
            model = kwargs.get("model")
            if model is None:
                raise HNTrainerError("RemineCallback needs the trainer's model")
            self.remine(model, step=step)
        return control

    # ----- checkpoint state ---------------------------------------------------------------------------------

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not args.should_save or self.dataset is None:
            return control
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            epoch_end = state.epoch is not None and float(state.epoch).is_integer()
            in_flight = int(self.last_step == state.global_step and self._previous is not None and not epoch_end)
            previous = self._previous if self._previous is not None else self.dataset.pools
            with atomic_path(folder / self.STATE_FILE) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, pools=self.dataset.pools, previous=previous, in_flight=np.int64(in_flight))
        return control

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        """Bind the pools, and on a resumed run restore their order from the checkpoint (the one place)."""
        self._bind(kwargs)
        if state.global_step > 0:
            folder = args.resume_from_checkpoint
            if not (isinstance(folder, (str, os.PathLike)) and Path(folder).is_dir()):
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            self.load_checkpoint(folder)
        return control

    def load_checkpoint(self, checkpoint_dir: str | os.PathLike) -> bool:
        """Restore the pool order saved in ``checkpoint_dir``; ``False`` when the folder holds none."""
        path = Path(checkpoint_dir) / self.STATE_FILE
        if not path.exists():
            logger.warning("%s holds no %s: the pools keep their current order", checkpoint_dir, self.STATE_FILE)
            return False
        dataset = self._require_dataset()
        with np.load(path) as saved:
            pools, previous, in_flight = saved["pools"], saved["previous"], int(saved["in_flight"])
        try:
            dataset.set_pools(previous)
            dataset.set_pools(pools, previous=previous, in_flight=in_flight)
        except HNTrainerError as e:
            raise HNTrainerError(f"the saved pool order of {checkpoint_dir} does not fit the training data: {e}") from None
        self._previous = previous
        logger.info("Restored the pool order from %s", checkpoint_dir)
        return True

    # ----- the pools ----------------------------------------------------------------------------------------

    def _bind(self, kwargs: dict) -> None:
        if self.dataset is None:
            loader = kwargs.get("train_dataloader")
            self.dataset = getattr(getattr(loader, "collate_fn", None), "pool", None)

    def _require_dataset(self) -> HardNegativeDataset:
        if self.dataset is None:
            raise HNTrainerError("RemineCallback has no pools: pass dataset= or train with a HardNegativeCollator")
        return self.dataset


class KeepStepCallback(TrainerCallback):
    """Keep the weights of the model at optimizer step ``step``, and the validation run and ``metric`` of the
    evaluation made at that step (``validation.last_run`` then), whatever checkpoint the trainer ends on.

    It builds again the model a run recorded ("checkpoint of step 237 of 313") when two validation scores are
    so close that floating-point order on another machine could pick the other one.
    """

    def __init__(self, step: int, validation: Any, metric: str):
        self.step, self.validation, self.metric = step, validation, metric
        self.weights: dict | None = None
        self.run: dict | None = None
        self.score: float | None = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model=None,
                    **kwargs):
        if state.global_step == self.step:
            self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, metrics=None,
                    **kwargs):
        if state.global_step == self.step and metrics and self.metric in metrics:
            self.run, self.score = self.validation.last_run, metrics[self.metric]
