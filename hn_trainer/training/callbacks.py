"""Trainer callbacks: re-mining the pools with the model being trained, and reranking evaluation (MRR, nDCG).

- `RemineCallback`: every N steps, scores each pair's pool with the current cross-encoder and reorders it
  hardest first, so the ``"hardest"`` strategy follows what the model now finds hard. It is the cheap
  counterpart of ANCE/ADORE-style dynamic negatives: no re-encoding of the corpus and no index rebuild, only
  ``n_pairs x M`` cross-encoder scores.
- `RerankingEvaluationCallback`: reranks first-stage candidate lists and reports ``eval_mrr@3``,
  ``eval_mrr@10``, ``eval_ndcg@10``, ``eval_recall@10``; `HardNegativeTrainer` runs it inside ``evaluate``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hn_trainer.errors import HNTrainerError
from hn_trainer.io import atomic_path
from hn_trainer.training.dataset import HardNegativeDataset

logger = logging.getLogger(__name__)


class RemineCallback(TrainerCallback):
    """Reorder every pool hardest-first by the current model's scores, every ``remine_steps`` optimizer steps.

    The scores are the cross-encoder's logits of (query, pool document); the reordered pools take effect from
    the next step (`HardNegativeTrainer` picks negatives when a step runs). With several processes each rank
    scores a contiguous shard of the pairs and the scores are gathered once, so every rank holds the same
    pools.

    Checkpoints: the pool order is training state. ``on_save`` writes it to ``remine_state.npz`` in the
    checkpoint folder just written (``{output_dir}/checkpoint-{step}``); ``load_checkpoint(folder)`` reads it
    back (`HardNegativeTrainer.train(resume_from_checkpoint=...)` calls it, and with a plain
    `transformers.Trainer` ``on_train_begin`` finds the folder from the restored step). A file rather than
    transformers' ``ExportableState``: the state is an ``[n_pairs, M]`` array (too large for
    ``trainer_state.json``), and ``ExportableState`` restores by re-constructing the callback from JSON
    arguments, which cannot carry the dataset.

    Args:
        dataset: The training `HardNegativeDataset` whose pools are reordered.
        remine_steps: Re-score every this many optimizer steps (> 0).
        batch_size: (query, document) pairs per forward pass.
        max_length: Truncation length of a pair (default: the tokenizer's, at most 512).
        show_progress_bar: Show a progress bar while scoring.
    """

    STATE_FILE = "remine_state.npz"

    def __init__(
        self,
        dataset: HardNegativeDataset,
        remine_steps: int,
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        if remine_steps <= 0:
            raise HNTrainerError(f"remine_steps must be positive, got {remine_steps}")
        self.dataset = dataset
        self.remine_steps = remine_steps
        self.batch_size = batch_size
        self.max_length = max_length
        self.show_progress_bar = show_progress_bar
        self.last_step = 0
        self.history: list[dict[str, float]] = []
        self._restored_from: str | None = None

    # ----- re-scoring ---------------------------------------------------------------------------------------

    def remine(self, model: torch.nn.Module, tokenizer: Any, step: int | None = None) -> np.ndarray:
        """Score every pool entry with ``model`` and reorder the dataset's pools, highest score first.

        Returns:
            The new ``[n_pairs, M]`` pool array (also set on the dataset).
        """
        from accelerate import PartialState

        from hn_trainer.evaluation.reranking import score_pairs, shard_bounds

        pools = self.dataset.pools
        rows, cols = np.nonzero(pools >= 0)
        state = PartialState()
        start, end = shard_bounds(len(rows), state.process_index, state.num_processes)
        pairs = []
        for r, c in zip(rows[start:end].tolist(), cols[start:end].tolist()):
            q = self.dataset.query_texts[self.dataset.pair_queries[r]]
            pairs.append((q, self.dataset.doc_texts[pools[r, c]]))
        was_training = model.training
        try:
            scores = score_pairs(
                model,
                tokenizer,
                pairs,
                self.batch_size,
                self.max_length,
                show_progress_bar=self.show_progress_bar and state.is_main_process,
            ).tolist()
        finally:
            model.train(was_training)
        if state.num_processes > 1:
            from accelerate.utils import gather_object

            scores = gather_object(scores)
        grid = np.full(pools.shape, -np.inf)
        grid[rows, cols] = scores
        order = np.argsort(-grid, axis=1, kind="stable")
        new_pools = np.take_along_axis(pools, order, axis=1)
        changed = float(np.mean(new_pools[:, 0] != pools[:, 0])) if len(pools) else 0.0
        self.dataset.set_pools(new_pools)
        self.last_step = int(step) if step is not None else self.last_step
        self.history.append({"step": float(self.last_step), "top_changed": changed})
        logger.info(
            "Re-scored %d pool entries at step %d: the hardest negative changed for %.1f%% of pairs",
            len(rows),
            self.last_step,
            100 * changed,
        )
        return new_pools

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        step = state.global_step
        # nothing trains on pools re-scored after the last step
        last = state.max_steps > 0 and step >= state.max_steps
        if step % self.remine_steps == 0 and step != self.last_step and not last:
            model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
            if model is None or tokenizer is None:
                raise HNTrainerError(
                    "RemineCallback needs the trainer's model and processing_class (tokenizer)"
                )
            self.remine(model, tokenizer, step=step)
        return control

    # ----- checkpoint state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"pools": self.dataset.pools, "last_step": np.asarray(self.last_step, dtype=np.int64)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        try:
            self.dataset.set_pools(np.asarray(state["pools"]))
        except HNTrainerError as e:
            raise HNTrainerError(f"the saved pool order does not fit the training data: {e}") from None
        self.last_step = int(state["last_step"])

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if not args.should_save:
            return control
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            with atomic_path(folder / self.STATE_FILE) as tmp:
                with open(tmp, "wb") as f:
                    np.savez(f, **self.state_dict())
        return control

    def load_checkpoint(self, checkpoint_dir: str | os.PathLike) -> bool:
        """Restore the pool order saved in ``checkpoint_dir``; ``False`` when the folder holds none."""
        path = Path(checkpoint_dir) / self.STATE_FILE
        if not path.exists():
            logger.warning(
                "%s holds no %s: the pools keep their current order", checkpoint_dir, self.STATE_FILE
            )
            return False
        with np.load(path) as saved:
            self.load_state_dict({k: saved[k] for k in saved.files})
        self._restored_from = str(checkpoint_dir)
        logger.info("Restored the pool order of step %d from %s", self.last_step, checkpoint_dir)
        return True

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        if state.global_step > 0 and self._restored_from is None:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if folder.is_dir():
                self.load_checkpoint(folder)
        return control


class RerankingEvaluationCallback(TrainerCallback):
    """Rerank first-stage candidates with the model being trained and compute ranking metrics.

    Called as an evaluator, ``callback(model, tokenizer, accelerator_state=None)`` returns metrics named like
    ``"mrr@10"`` (``"{name}_mrr@10"`` with a name); `HardNegativeTrainer` adds the ``eval_`` prefix and puts
    them in the dict ``evaluate`` returns and logs, so ``metric_for_best_model="eval_mrr@10"`` works. Used
    with a plain `transformers.Trainer`, ``on_evaluate`` adds the same ``eval_`` keys to the metrics dict in
    place.

    With several processes (``accelerator_state``), `hn_trainer.evaluation.reranking.rerank` scores one shard
    per rank and gathers the scores once.

    Args:
        candidates: First-stage run ``{query_id: {doc_id: score}}`` (`hn_trainer.evaluation.first_stage`).
        query_texts: ``{query_id: text}``.
        doc_texts: ``{doc_id: text}``.
        qrels: ``{query_id: {doc_id: relevance}}``.
        batch_size: Pairs per forward pass.
        max_length: Truncation length (`HardNegativeTrainer` sets the training one when ``None``).
        mrr_at: MRR cut-offs.
        ndcg_at: nDCG cut-offs.
        recall_at: Recall cut-offs.
        name: Optional name inserted in the metric keys.
        show_progress_bar: Show a progress bar while reranking.
    """

    def __init__(
        self,
        candidates: Mapping[str, Mapping[str, float]],
        query_texts: Mapping[str, str],
        doc_texts: Mapping[str, str],
        qrels: Mapping[str, Mapping[str, int]],
        *,
        batch_size: int = 64,
        max_length: int | None = None,
        mrr_at: Sequence[int] = (3, 10),
        ndcg_at: Sequence[int] = (10,),
        recall_at: Sequence[int] = (10,),
        name: str | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        self.candidates = {q: dict(docs) for q, docs in candidates.items() if q in qrels}
        if not self.candidates:
            raise HNTrainerError("no evaluation query has both candidates and relevance judgements")
        self.query_texts = query_texts
        self.doc_texts = doc_texts
        self.qrels = {q: dict(rels) for q, rels in qrels.items() if q in self.candidates}
        self.batch_size = batch_size
        self.max_length = max_length
        self.mrr_at, self.ndcg_at, self.recall_at = tuple(mrr_at), tuple(ndcg_at), tuple(recall_at)
        self.name = name
        self.show_progress_bar = show_progress_bar
        self.last_run: dict[str, dict[str, float]] | None = None

    def metric_names(self) -> list[str]:
        """The metric names this evaluator returns, without prefixes."""
        return (
            [f"mrr@{k}" for k in self.mrr_at]
            + [f"ndcg@{k}" for k in self.ndcg_at]
            + [f"recall@{k}" for k in self.recall_at]
        )

    @classmethod
    def from_data(cls, data: Any, split: str, candidates: Mapping[str, Mapping[str, float]], **kwargs):
        """Build from a `hn_trainer.data.RetrievalData` and a qrels split."""
        query_texts = dict(zip(data.queries["_id"], data.query_texts()))
        doc_texts = dict(zip(data.corpus["_id"], data.document_texts()))
        return cls(candidates, query_texts, doc_texts, data.relevant(split), **kwargs)

    def __call__(self, model: Any, tokenizer: Any = None, accelerator_state: Any = None) -> dict[str, float]:
        from hn_trainer.evaluation.metrics import retrieval_metrics
        from hn_trainer.evaluation.reranking import rerank

        target = model if tokenizer is None else (model, tokenizer)
        run = rerank(
            target,
            self.candidates,
            self.query_texts,
            self.doc_texts,
            batch_size=self.batch_size,
            max_length=self.max_length,
            show_progress_bar=self.show_progress_bar,
            accelerator_state=accelerator_state,
        )
        self.last_run = run
        metrics = retrieval_metrics(
            run, self.qrels, mrr_at=self.mrr_at, ndcg_at=self.ndcg_at, recall_at=self.recall_at
        )
        prefix = f"{self.name}_" if self.name else ""
        return {f"{prefix}{key}": float(value) for key, value in metrics.items()}

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs):
        metrics = kwargs.get("metrics")
        model, tokenizer = kwargs.get("model"), kwargs.get("processing_class")
        if metrics is None or model is None or tokenizer is None:
            return control
        prefix = f"eval_{self.name}_" if self.name else "eval_"
        if any(prefix + name in metrics for name in self.metric_names()):
            return control  # already computed inside HardNegativeTrainer.evaluate
        was_training = model.training
        values = self(model, tokenizer)
        model.train(was_training)
        metrics.update({f"eval_{key}": value for key, value in values.items()})
        return control
