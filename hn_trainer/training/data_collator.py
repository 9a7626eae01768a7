"""Dynamic negatives: per batch, pick each pair's negatives from the shared pools and lay them out for the loss.

`HardNegativeCollator` is sentence-transformers' `CrossEncoderDataCollator` with one job added: a batch of
``pair_index`` rows becomes (query, candidate) texts with the pair's positive and the negatives chosen for this
step, laid out the way the configured loss reads them (`hn_trainer.training.losses`). Tokenisation stays where
the host does it, inside the loss.

Which negatives a pair gets is a pure function of ``(seed, epoch, pair_index)`` and the pool order: no
generator state carries over from one batch to the next, so a run resumed from a checkpoint (which restores the
epoch, the step and, with `RemineCallback`, the pool order) picks exactly the negatives of the uninterrupted run.

Order of a pair's candidates: its positive, then hard negatives from the pool, random corpus negatives,
in-batch negatives (the other pairs' positives, never one of the pair's own positives).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from sentence_transformers.cross_encoder.data_collator import CrossEncoderDataCollator
from transformers import TrainerCallback

from hn_trainer.errors import ConfigError
from hn_trainer.training.dataset import HardNegativeDataset
from hn_trainer.training.losses import Layout

logger = logging.getLogger(__name__)


@dataclass
class Group:
    """The candidates of one pair in a batch: its positive and the negatives picked for this step.

    Attributes:
        pair_index: Index of the pair in its pool.
        query: Query text.
        positive: Positive document text.
        negative_ids: Ids of the negatives, in batch order.
        negative_texts: Their texts.
        kinds: ``"hard"``, ``"random"`` or ``"in_batch"`` for each negative.
    """

    pair_index: int
    query: str
    positive: str
    negative_ids: list[str] = field(default_factory=list)
    negative_texts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)

    def add(self, doc_id: str, text: str, kind: str) -> None:
        self.negative_ids.append(doc_id)
        self.negative_texts.append(text)
        self.kinds.append(kind)


@dataclass
class HardNegativeCollator(CrossEncoderDataCollator, TrainerCallback):
    """Collator that picks the negatives of each (query, positive) pair when its batch is built.

    Features are rows with a ``pair_index`` (`HardNegativeDataset.as_train_dataset`). Output, by ``layout``:

    - ``"pair"``: ``{"query": [...], "document": [...], "label": tensor}``, one row per candidate (label 1.0 for
      the positive, 0.0 for a negative), for `BinaryCrossEntropyLoss`.
    - ``"tuple"``: ``{"query", "positive", "negative_1", ..., "negative_n"}``, the same ``n`` for every pair of
      the batch (a pair short of negatives is topped up with random ones), for ``lce``.
    - ``"list"``: ``{"query": [...], "docs": [[positive, negatives...]], "label": [tensor([1, 0, ...])]}`` for
      the listwise losses, which take lists of any length.

    Args:
        preprocess_fn: The model's ``preprocess`` (the host's field; the loss tokenises).
        pool: The shared `HardNegativeDataset` the negatives come from.
        layout: The loss's layout (`hn_trainer.training.losses.loss_layout`).
        num_negatives: Hard negatives per pair taken from its pool (``n``).
        strategy: ``"hardest"``: the first ``n`` of the pool's current order; ``"sample"``: ``n`` drawn at random
            within the pool (a different draw each epoch, the same draw for the same seed and epoch).
        seed: Seed of every random choice.
        random_negatives: Random corpus documents added per pair (never a positive of the query).
        fill_random: Top a pool shorter than ``n`` up with random corpus negatives.
        in_batch_negatives: Add the positives of the other pairs of the batch.
        epoch: Epoch of the batches being built (set at each epoch's start when the collator is a callback of
            the trainer, as `HardNegativeTrainer` makes it).

    Example:
        ::

            collator = HardNegativeCollator(model.preprocess, pool=pool, layout="list", num_negatives=2)
            batch = collator([{"pair_index": 0}, {"pair_index": 1}])
            batch["label"]  # [tensor([1., 0., 0.]), tensor([1., 0., 0.])]
    """

    pool: HardNegativeDataset | None = None
    layout: Layout = "pair"
    num_negatives: int = 1
    strategy: Literal["hardest", "sample"] = "hardest"
    seed: int = 42
    random_negatives: int = 0
    fill_random: bool = False
    in_batch_negatives: bool = False
    epoch: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy not in ("hardest", "sample"):
            raise ConfigError(f"--negative_strategy: unknown strategy {self.strategy!r}; choose hardest or sample")
        if self.layout not in ("pair", "tuple", "list"):
            raise ConfigError(f"unknown batch layout {self.layout!r}")
        if self.num_negatives < 0 or self.random_negatives < 0:
            raise ConfigError("--num_negatives and --random_negatives must not be negative")
        if self.seed < 0:
            raise ConfigError(f"--seed must not be negative, got {self.seed}")

    # ----- the trainer's hooks ------------------------------------------------------------------------------

    def on_epoch_begin(self, args, state, control, **kwargs):
        """Batches built from now on belong to epoch ``floor(state.epoch)`` (restored on resume)."""
        self.epoch = int(np.floor(state.epoch or 0.0))
        return control

    # ----- selection ----------------------------------------------------------------------------------------

    def rng(self, pair_index: int, epoch: int) -> np.random.Generator:
        """The generator of one pair in one epoch: a pure function of ``(seed, epoch, pair_index)``."""
        return np.random.default_rng([self.seed, int(epoch), int(pair_index)])

    @property
    def needs_random(self) -> bool:
        return self.random_negatives > 0 or self.fill_random or self.layout == "tuple"

    def select(self, features: Sequence[Mapping[str, Any]]) -> list[Group]:
        """Pick the negatives of each feature's pair (``feature["pair_index"]``, optional ``"epoch"``)."""
        if self.pool is None:
            raise ConfigError("HardNegativeCollator needs pool= (the HardNegativeDataset of the training pairs)")
        pool = self.pool
        order = pool.batch_pools()
        groups = []
        for feature in features:
            try:
                pair_index = int(feature["pair_index"])
            except KeyError:
                raise ConfigError("collator features need a 'pair_index' (HardNegativeDataset.as_train_dataset)") from None
            epoch = int(feature.get("epoch", self.epoch))
            q, p = int(pool.pair_queries[pair_index]), int(pool.pair_positives[pair_index])
            own = {int(d) for d in pool.query_positives[q]} | {p}
            rows = pool.pool_rows(pair_index, order)
            # a generator only when something is drawn at random (making one costs more than the rest here)
            rng = self.rng(pair_index, epoch) if self.strategy == "sample" or self.needs_random else None
            group = Group(pair_index, pool.query_texts[q], pool.doc_texts[p])
            take = min(self.num_negatives, len(rows))
            chosen = range(take) if self.strategy == "hardest" else sorted(rng.choice(len(rows), take, replace=False))
            taken = set()
            for i in chosen:
                d = rows[int(i)]
                if d not in own:
                    group.add(pool.doc_ids[d], pool.doc_texts[d], "hard")
                    taken.add(d)
            n_random = self.random_negatives
            if self.fill_random:
                n_random += self.num_negatives - len(group.negative_ids)
            self._add_random(group, rng, n_random, own, taken)
            groups.append((group, own, taken))

        if self.in_batch_negatives:
            for group, own, taken in groups:
                for other, _, _ in groups:
                    d = int(pool.pair_positives[other.pair_index])
                    if d in own or d in taken:
                        continue
                    group.add(pool.doc_ids[d], pool.doc_texts[d], "in_batch")
                    taken.add(d)
        if self.layout == "tuple":  # a softmax needs the same number of candidates in every row
            width = max(len(g.negative_ids) for g, _, _ in groups)
            for (group, own, taken), feature in zip(groups, features):
                rng = self.rng(group.pair_index, int(feature.get("epoch", self.epoch)))
                self._add_random(group, rng, width - len(group.negative_ids), own, taken)
        return [g for g, _, _ in groups]

    def _add_random(self, group: Group, rng, count: int, own: set[int], taken: set[int]) -> None:
        pool = self.pool
        n_docs = len(pool.doc_ids)
        tries = 0
        while count > 0 and tries < 8 * count + 64 and n_docs:
            d = int(rng.integers(n_docs))
            tries += 1
            if d in own or d in taken:
                continue
            group.add(pool.doc_ids[d], pool.doc_texts[d], "random")
            taken.add(d)
            count -= 1

    # ----- layout -------------------------------------------------------------------------------------------

    def layout_batch(self, groups: Sequence[Group]) -> dict[str, Any]:
        """The batch as the loss reads it (see the class docstring)."""
        if self.layout == "pair":
            queries, docs, labels = [], [], []
            for g in groups:
                rows = [g.positive, *g.negative_texts]
                queries += [g.query] * len(rows)
                docs += rows
                labels += [1.0] + [0.0] * len(g.negative_texts)
            return {"query": queries, "document": docs, "label": torch.tensor(labels, dtype=torch.float32)}
        if self.layout == "tuple":
            width = min(len(g.negative_texts) for g in groups)
            if width != max(len(g.negative_texts) for g in groups):
                raise ConfigError(
                    "the lce layout needs the same number of negatives for every pair of a batch, and the corpus "
                    f"has too few documents to top every pair up to {max(len(g.negative_texts) for g in groups)}"
                )
            batch = {"query": [g.query for g in groups], "positive": [g.positive for g in groups]}
            for i in range(width):
                batch[f"negative_{i + 1}"] = [g.negative_texts[i] for g in groups]
            return batch
        return {
            "query": [g.query for g in groups],
            "docs": [[g.positive, *g.negative_texts] for g in groups],
            "label": [torch.tensor([1.0] + [0.0] * len(g.negative_texts)) for g in groups],
        }

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.layout_batch(self.select(features))
        prompt = self._resolve_scalar(self.prompts, batch)  # as the host collator passes it to the loss
        if prompt:
            batch["prompt"] = prompt
        return batch
