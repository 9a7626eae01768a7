"""Pick the negatives of each pair for one step and tokenise the (query, document) pairs of a batch.

Which negatives a pair gets is a pure function of ``(seed, epoch, pair_index)`` and the pool order: no
generator state carries over from one batch to the next, so a run resumed from a checkpoint (which restores
the epoch, the step and, with `RemineCallback`, the pool order) picks exactly the negatives the uninterrupted
run picked.

Layout of a batch: one contiguous group per pair, the positive first, then its negatives in this order: hard
negatives from the pool, random corpus negatives, in-batch negatives. ``labels`` is 1.0 for the positive and
0.0 for a negative.

- ``loss="bce"``: groups may differ in size.
- ``loss="lce"``: every group of the batch has the same size ``group_size`` (returned as a tensor); a group
  with fewer negatives than the largest one is padded with rows labelled `IGNORE_LABEL` (query paired with an
  empty document), which the LCE loss leaves out of its softmax. No pair is dropped. Set ``fill_random=True``
  (with a corpus) to top short pools up with random negatives instead.

Tokenisation is that of ``sentence_transformers.CrossEncoder``: the query is the first segment, the document
the second, ``truncation="longest_first"`` at ``max_length``, dynamic padding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from hn_trainer.errors import ConfigError
from hn_trainer.training.losses import IGNORE_LABEL

logger = logging.getLogger(__name__)

DEFERRED_KEY = "deferred_pair_index"
"""Key of a batch whose negatives are picked when the step runs (see `collate_pair_indices`)."""

MAX_LENGTH_CAP = 512


@dataclass
class Group:
    """The rows of one pair in a batch: its positive and the negatives picked for this step.

    Attributes:
        pair_index: Index of the pair in its dataset.
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


def collate_pair_indices(features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Collate pair indices only: `HardNegativeTrainer` picks negatives and tokenises when the step runs."""
    return {DEFERRED_KEY: torch.tensor([int(f["pair_index"]) for f in features], dtype=torch.long)}


class HardNegativeCollator:
    """Dynamic-negative data collator for cross-encoder training.

    Args:
        tokenizer: The reranker's tokenizer.
        num_negatives: Hard negatives per pair taken from its pool (``n``).
        strategy: ``"hardest"``: the first ``n`` of the pool's current order; ``"sample"``: ``n`` drawn at
            random within the pool (a different draw each epoch, the same draw for the same seed and epoch).
        seed: Seed of every random choice.
        random_negatives: Random corpus documents added per pair (never a positive of the query).
        in_batch_negatives: Add the positives of the other pairs of the batch (skipping the pair's own
            positives and documents already picked).
        corpus_texts: Documents random negatives are drawn from (`HardNegativeTrainer` binds the training
            dataset's document lookup when this is ``None``).
        corpus_ids: Their ids (default: the texts), compared with the query's positive ids.
        max_length: Truncation length of a (query, document) pair (default: the tokenizer's
            ``model_max_length``, at most 512).
        loss: ``"bce"`` or ``"lce"`` (fixed group size per batch, ``group_size`` returned).
        fill_random: Top a pool shorter than ``num_negatives`` up with random corpus negatives.

    Example:
        ::

            collator = HardNegativeCollator(tokenizer, num_negatives=2, strategy="sample", loss="lce")
            batch = collator([dataset[0], dataset[1]])
            batch["labels"]      # tensor([1., 0., 0., 1., 0., 0.])
            batch["group_size"]  # tensor(3)
    """

    def __init__(
        self,
        tokenizer: Any,
        num_negatives: int = 1,
        strategy: Literal["hardest", "sample"] = "hardest",
        seed: int = 42,
        random_negatives: int = 0,
        in_batch_negatives: bool = False,
        corpus_texts: Sequence[str] | None = None,
        corpus_ids: Sequence[str] | None = None,
        max_length: int | None = None,
        loss: Literal["bce", "lce"] = "bce",
        fill_random: bool = False,
    ) -> None:
        if strategy not in ("hardest", "sample"):
            raise ConfigError(f"unknown negative strategy {strategy!r}; choose 'hardest' or 'sample'")
        if loss not in ("bce", "lce"):
            raise ConfigError(f"unknown loss {loss!r}; choose 'bce' or 'lce'")
        if num_negatives < 0 or random_negatives < 0:
            raise ConfigError("num_negatives and random_negatives must not be negative")
        if seed < 0:
            raise ConfigError(f"seed must not be negative, got {seed}")
        self.tokenizer = tokenizer
        self.num_negatives = num_negatives
        self.strategy = strategy
        self.seed = seed
        self.random_negatives = random_negatives
        self.in_batch_negatives = in_batch_negatives
        self.loss = loss
        self.fill_random = fill_random
        self.epoch = 0
        if max_length is None:
            model_max = getattr(tokenizer, "model_max_length", None) or MAX_LENGTH_CAP
            max_length = min(int(model_max), MAX_LENGTH_CAP)
        self.max_length = int(max_length)
        self.corpus_texts: Sequence[str] | None = None
        self.corpus_ids: Sequence[str] | None = None
        if corpus_texts is not None:
            self.bind_corpus(corpus_texts, corpus_ids)

    @property
    def needs_corpus(self) -> bool:
        """Whether random negatives are configured (so a corpus must be bound)."""
        return self.random_negatives > 0 or self.fill_random

    def bind_corpus(self, texts: Sequence[str], ids: Sequence[str] | None = None) -> None:
        """Set the documents random negatives come from."""
        if ids is not None and len(ids) != len(texts):
            raise ConfigError(f"{len(ids)} corpus ids but {len(texts)} corpus texts")
        self.corpus_texts = texts
        self.corpus_ids = ids if ids is not None else texts

    def set_epoch(self, epoch: int) -> None:
        """Epoch used for features that carry no ``"epoch"`` key."""
        self.epoch = int(epoch)

    def rng(self, pair_index: int, epoch: int) -> np.random.Generator:
        """The generator of one pair in one epoch: a pure function of ``(seed, epoch, pair_index)``."""
        return np.random.default_rng([self.seed, int(epoch), int(pair_index)])

    # ----- selection ----------------------------------------------------------------------------------------

    def select(self, features: Sequence[Mapping[str, Any]]) -> list[Group]:
        """Pick the negatives of each feature (a `HardNegativeDataset` item, optionally with ``"epoch"``)."""
        groups, excluded = [], []
        for feature in features:
            try:
                pair_index = int(feature["pair_index"])
                query, positive = feature["query"], feature["positive"]
                pool_texts = list(feature["pool_texts"])
            except KeyError as e:
                raise ConfigError(f"collator feature lacks the {e.args[0]!r} field") from None
            pool_ids = list(feature.get("pool_ids") or pool_texts)
            positive_id = feature.get("positive_id", positive)
            own = set(feature.get("positive_ids") or ()) | {positive_id}
            epoch = int(feature.get("epoch", self.epoch))
            # a generator only when something is drawn at random (making one costs more than the rest here)
            rng = self.rng(pair_index, epoch) if self.strategy == "sample" or self.needs_corpus else None
            group = Group(pair_index, query, positive)

            take = min(self.num_negatives, len(pool_texts))
            if self.strategy == "hardest":
                chosen = range(take)
            else:
                chosen = sorted(rng.choice(len(pool_texts), size=take, replace=False).tolist())
            for i in chosen:
                if pool_ids[i] not in own:
                    group.add(pool_ids[i], pool_texts[i], "hard")

            n_random = self.random_negatives
            if self.fill_random:
                n_random += self.num_negatives - len(group.negative_ids)
            if n_random > 0:
                self._add_random(group, rng, n_random, own)
            groups.append(group)
            excluded.append(own)

        if self.in_batch_negatives:
            batch_positives = [(f.get("positive_id", f["positive"]), f["positive"]) for f in features]
            for group, own in zip(groups, excluded):
                taken = set(group.negative_ids)
                for doc_id, text in batch_positives:
                    if doc_id in own or doc_id in taken:
                        continue
                    group.add(doc_id, text, "in_batch")
                    taken.add(doc_id)
        return groups

    def _add_random(self, group: Group, rng: np.random.Generator, count: int, own: set[str]) -> None:
        if self.corpus_texts is None or self.corpus_ids is None:
            raise ConfigError("random negatives need a corpus: pass corpus_texts= or call bind_corpus()")
        n_docs = len(self.corpus_texts)
        taken = set(group.negative_ids)
        tries = 0
        while count > 0 and tries < 8 * count + 64 and n_docs:
            row = int(rng.integers(n_docs))
            tries += 1
            doc_id = self.corpus_ids[row]
            if doc_id in own or doc_id in taken:
                continue
            group.add(doc_id, self.corpus_texts[row], "random")
            taken.add(doc_id)
            count -= 1

    # ----- tokenisation -------------------------------------------------------------------------------------

    def encode(self, groups: Sequence[Group]) -> dict[str, torch.Tensor]:
        """Tokenise the groups into one batch (see the module docstring for the layout)."""
        queries, docs, labels = [], [], []
        size = 1 + max((len(g.negative_texts) for g in groups), default=0)
        for g in groups:
            rows = [g.positive, *g.negative_texts]
            row_labels = [1.0] + [0.0] * len(g.negative_texts)
            if self.loss == "lce":
                pad = size - len(rows)
                rows += [""] * pad
                row_labels += [IGNORE_LABEL] * pad
            queries += [g.query] * len(rows)
            docs += rows
            labels += row_labels
        encoded = self.tokenizer(
            queries, docs, padding=True, truncation="longest_first", max_length=self.max_length
        )
        # padded lists -> one numpy array per key -> tensors sharing its memory: several times faster than the
        # tokenizer's own return_tensors="pt" conversion, which flattens every list in Python first
        batch = {key: torch.from_numpy(np.asarray(value, dtype=np.int64)) for key, value in encoded.items()}
        batch["labels"] = torch.tensor(labels, dtype=torch.float32)
        if self.loss == "lce":
            batch["group_size"] = torch.tensor(size, dtype=torch.long)
        return batch

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return self.encode(self.select(features))
