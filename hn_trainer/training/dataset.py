"""The pool of hard negatives of each (query, positive) training pair, shared by the collator and re-mining.

The pool of a pair is its ``M`` mined negatives, hardest first. Texts live once in shared lookups (queries,
documents); a pair stores row numbers only, and its pool is one row of an ``[n_pairs, M]`` integer array
(``-1`` pads a pool shorter than ``M``). `HardNegativeCollator` reads the pools when it builds a batch;
`RemineCallback` reorders them while training. The trainer itself trains on `as_train_dataset`, a
`datasets.Dataset` of ``(pair_index, query, positive)`` rows: the negatives come from here, per batch.

Ways in (this module never mines: `hn_trainer.mining.pipeline.mine_pairs` does):

- `HardNegativeDataset.from_mined`: the `datasets.Dataset` that mining returns (or ``hn-trainer mine``
  saved in ``triples/``; `from_disk` reads it), columns ``query_id, query, positive_id, positive,
  negative_ids, negatives``.
- `HardNegativeDataset.from_jsonl`: ``triples.jsonl``, the same fields.
- `HardNegativeDataset.from_rows`: the same fields from any iterable of dicts.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from hn_trainer.errors import DataError, HNTrainerError

logger = logging.getLogger(__name__)

MINED_FIELDS = ("query_id", "query", "positive_id", "positive", "negative_ids", "negatives")


class HardNegativeDataset(Dataset):
    """(query, positive, hard-negative pool) per (query, positive) pair.

    Items are dicts::

        {"pair_index": int, "query_id": str, "query": str, "positive_id": str, "positive": str,
         "pool_ids": [str, ...], "pool_texts": [str, ...],   # current pool order, hardest first
         "positive_ids": [str, ...]}                          # every positive of the query (never a negative)

    Args:
        query_ids: Query ids (one row per query).
        query_texts: Query texts, aligned with ``query_ids``.
        doc_ids: Document ids of the lookup (the corpus, or every document the pairs mention).
        doc_texts: Document texts, aligned with ``doc_ids``.
        pair_queries: Query row of each pair.
        pair_positives: Document row of each pair's positive.
        pools: ``[n_pairs, M]`` document rows, hardest first, ``-1`` padded.
        query_positives: Document rows of every positive of each query row (excluded from random and in-batch
            negatives). Defaults to the positives of the pairs.
        keep_empty: Keep pairs whose pool is empty (they train on the positive, plus random or in-batch
            negatives when configured). By default they are dropped; either way they are counted in `stats`.

    Raises:
        HNTrainerError: When there is no pair, or no pair has a hard negative and empty pools are not kept
            (nothing to train on).
    """

    def __init__(
        self,
        query_ids: Sequence[str],
        query_texts: Sequence[str],
        doc_ids: Sequence[str],
        doc_texts: Sequence[str],
        pair_queries: Sequence[int] | np.ndarray,
        pair_positives: Sequence[int] | np.ndarray,
        pools: np.ndarray | torch.Tensor,
        query_positives: Sequence[Sequence[int]] | None = None,
        *,
        keep_empty: bool = False,
    ) -> None:
        if len(query_ids) != len(query_texts):
            raise DataError(f"{len(query_ids)} query ids but {len(query_texts)} query texts")
        if len(doc_ids) != len(doc_texts):
            raise DataError(f"{len(doc_ids)} document ids but {len(doc_texts)} document texts")
        self.query_ids = list(query_ids)
        self.query_texts = list(query_texts)
        self.doc_ids = list(doc_ids)
        self.doc_texts = list(doc_texts)
        pair_queries = np.asarray(pair_queries, dtype=np.int64).reshape(-1)
        pair_positives = np.asarray(pair_positives, dtype=np.int64).reshape(-1)
        pools = np.asarray(pools.cpu() if isinstance(pools, torch.Tensor) else pools, dtype=np.int64)
        if pools.size == 0:
            pools = np.zeros((len(pair_queries), 0), dtype=np.int64)
        elif pools.ndim != 2 or len(pools) != len(pair_queries):
            raise DataError(f"a pool array of shape {pools.shape} for {len(pair_queries)} pairs")
        if len(pair_positives) != len(pair_queries):
            raise DataError(f"{len(pair_queries)} pair queries but {len(pair_positives)} pair positives")
        if query_positives is None:
            grouped: list[list[int]] = [[] for _ in self.query_ids]
            for q, p in zip(pair_queries.tolist(), pair_positives.tolist()):
                if p not in grouped[q]:
                    grouped[q].append(p)
            query_positives = grouped
        self.query_positives = [np.asarray(sorted(set(rows)), dtype=np.int64) for rows in query_positives]

        has_negative = (pools >= 0).any(axis=1) if pools.shape[1] else np.zeros(len(pools), dtype=bool)
        n_total = len(pair_queries)
        n_empty = int((~has_negative).sum())
        if n_total == 0 or (n_empty == n_total and not keep_empty):
            raise HNTrainerError(
                f"no training pair has a hard negative ({n_total} (query, positive) pairs, {n_empty} without "
                "one): nothing to train on. Mine a larger pool, relax the conditions (conditions='query'), "
                "or use another negative sampler."
            )
        keep = np.ones(n_total, dtype=bool) if keep_empty else has_negative
        self.pair_queries = pair_queries[keep]
        self.pair_positives = pair_positives[keep]
        self.pools = _left_pack(pools[keep])
        self._previous, self._in_flight = self.pools, 0
        self.stats = {
            "pairs": n_total,
            "pairs_without_negatives": n_empty,
            "pairs_dropped": 0 if keep_empty else n_empty,
            "pool_size": int(self.pools.shape[1]),
            "negatives": int((self.pools >= 0).sum()),
        }
        if n_empty:
            logger.info(
                "%d of %d pairs have no hard negative (%s)",
                n_empty,
                n_total,
                "kept" if keep_empty else "dropped",
            )

    # ----- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Mapping[str, Any]],
        *,
        keep_empty: bool = False,
        positives: Mapping[str, Iterable[str]] | None = None,
        source: str | None = None,
        corpus: tuple[Sequence[str], Sequence[str]] | None = None,
    ) -> HardNegativeDataset:
        """Build from dicts with the fields of mined triples; pools keep the order given (hardest first).

        Fields: ``query_id, query, positive_id, positive, negative_ids, negatives``.

        Args:
            rows: The records.
            keep_empty: Keep pairs without negatives.
            positives: Extra relevant document ids per query id, never used as negatives.
            source: File name for error messages.
            corpus: ``(ids, texts)`` of the whole corpus, so that random negatives are drawn from all of it
                (by default the document lookup holds the positives and pool documents only).
        """
        queries: dict[str, int] = {}
        query_texts: list[str] = []
        docs: dict[str, int] = {}
        doc_texts: list[str] = []

        def add(index: dict[str, int], texts: list[str], _id: str, text: str, line: int) -> int:
            row = index.get(_id)
            if row is None:
                index[_id] = row = len(texts)
                texts.append(text)
            elif texts[row] != text:
                raise DataError(
                    "the same id appears with two different texts", file=source, line=line, id=_id
                )
            return row

        if corpus is not None:
            if len(corpus[0]) != len(corpus[1]):
                raise DataError(f"corpus: {len(corpus[0])} ids but {len(corpus[1])} texts", file=source)
            for _id, text in zip(*corpus):
                add(docs, doc_texts, str(_id), text, 0)
        pair_queries, pair_positives, pool_rows = [], [], []
        for line, row in enumerate(rows, start=1):
            missing = [f for f in MINED_FIELDS if f not in row]
            if missing:
                raise DataError(f"missing field(s) {', '.join(missing)}", file=source, line=line)
            if len(row["negative_ids"]) != len(row["negatives"]):
                raise DataError("negative_ids and negatives differ in length", file=source, line=line)
            q = add(queries, query_texts, str(row["query_id"]), row["query"], line)
            p = add(docs, doc_texts, str(row["positive_id"]), row["positive"], line)
            pool = [
                add(docs, doc_texts, str(i), t, line) for i, t in zip(row["negative_ids"], row["negatives"])
            ]
            pair_queries.append(q)
            pair_positives.append(p)
            pool_rows.append(pool)
        width = max((len(p) for p in pool_rows), default=0)
        pools = np.full((len(pool_rows), width), -1, dtype=np.int64)
        for i, pool in enumerate(pool_rows):
            pools[i, : len(pool)] = pool
        query_positives: list[set[int]] = [set() for _ in query_texts]
        for q, p in zip(pair_queries, pair_positives):
            query_positives[q].add(p)
        for qid, doc_list in (positives or {}).items():
            if qid in queries:
                query_positives[queries[qid]].update(docs[d] for d in doc_list if d in docs)
        clash = _is_positive(pools, pair_queries, query_positives)
        if clash.any():
            logger.warning("removed %d negatives that are positives of their query", int(clash.sum()))
            pools[clash] = -1
        return cls(
            list(queries),
            query_texts,
            list(docs),
            doc_texts,
            pair_queries,
            pair_positives,
            pools,
            [sorted(p) for p in query_positives],
            keep_empty=keep_empty,
        )

    @classmethod
    def from_mined(cls, mined: Any, **kwargs) -> HardNegativeDataset:
        """Build from the `datasets.Dataset` that `hn_trainer.mining.pipeline.mine_pairs` returns.

        Keyword arguments go to `from_rows`.
        """
        missing = [f for f in MINED_FIELDS if f not in mined.column_names]
        if missing:
            raise DataError(f"the mined dataset lacks the column(s) {', '.join(missing)}")
        return cls.from_rows(mined.select_columns(list(MINED_FIELDS)), **kwargs)

    @classmethod
    def from_disk(cls, path: str | os.PathLike, **kwargs) -> HardNegativeDataset:
        """Read a `datasets.Dataset` saved with ``save_to_disk``.

        That is the ``triples/`` folder ``hn-trainer mine`` writes (its parent folder is accepted too).
        Keyword arguments go to `from_rows`.
        """
        import datasets

        path = Path(path)
        if (path / "triples").is_dir() and not (path / "dataset_info.json").exists():
            path = path / "triples"
        if not path.exists():
            raise DataError("no such mined dataset", file=path)
        try:
            table = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as e:
            raise DataError(f"not a dataset saved with save_to_disk: {e}", file=path) from None
        if isinstance(table, datasets.DatasetDict):
            raise DataError(f"expected one dataset, found splits {list(table)}", file=path)
        missing = [f for f in MINED_FIELDS if f not in table.column_names]
        if missing:
            raise DataError(f"missing column(s) {', '.join(missing)}", file=path)
        return cls.from_rows(table.select_columns(list(MINED_FIELDS)), source=str(path), **kwargs)

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike, **kwargs) -> HardNegativeDataset:
        """Read ``triples.jsonl``: one JSON object per line with the fields of mined triples.

        Keyword arguments go to `from_rows`.
        """
        path = Path(path)
        if not path.exists():
            raise DataError("no such file", file=path)

        def records():
            with open(path, encoding="utf-8") as f:
                for line_no, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"invalid JSON: {e.msg}", file=path, line=line_no) from None

        return cls.from_rows(records(), source=str(path), **kwargs)

    # ----- access -------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.pair_queries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        q = int(self.pair_queries[index])
        p = int(self.pair_positives[index])
        pool = self.pool_rows(index)
        return {
            "pair_index": index,
            "query_id": self.query_ids[q],
            "query": self.query_texts[q],
            "positive_id": self.doc_ids[p],
            "positive": self.doc_texts[p],
            "pool_ids": [self.doc_ids[d] for d in pool],
            "pool_texts": [self.doc_texts[d] for d in pool],
            "positive_ids": [self.doc_ids[d] for d in self.query_positives[q]],
        }

    def pool_rows(self, index: int, pools: np.ndarray | None = None) -> list[int]:
        """Document rows of a pair's pool in the current order (hardest first), without padding."""
        row = (self.pools if pools is None else pools)[index]
        return row[row >= 0].tolist()

    def as_train_dataset(self) -> Any:
        """The `datasets.Dataset` the trainer iterates: ``pair_index``, ``query``, ``positive`` per pair.

        The collator looks each pair's negatives up here by ``pair_index`` when it builds a batch.
        """
        import datasets

        return datasets.Dataset.from_dict(
            {
                "pair_index": list(range(len(self))),
                "query": [self.query_texts[q] for q in self.pair_queries.tolist()],
                "positive": [self.doc_texts[p] for p in self.pair_positives.tolist()],
            }
        )

    def distinct_pool_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every distinct (query row, document row) of the pools, and for each pool entry its index there.

        Returns:
            ``(pairs [n_distinct, 2], inverse [n_pairs, M])``; ``inverse`` is ``-1`` at padding. A query with many
            positives shares most of its pools across its pairs: re-scoring scores each distinct pair once.
        """
        rows, cols = np.nonzero(self.pools >= 0)
        keys = np.stack([self.pair_queries[rows], self.pools[rows, cols]], axis=1)
        distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
        grid = np.full(self.pools.shape, -1, dtype=np.int64)
        grid[rows, cols] = inverse.reshape(-1)
        return distinct.reshape(-1, 2), grid

    # ----- the order a batch sees ---------------------------------------------------------------------------

    def batch_pools(self) -> np.ndarray:
        """The pool order for the batch being built now.

        Usually `pools`. Right after `set_pools(..., in_flight=n)` the next ``n`` batches still get the order
        they would have had before (they were built ahead of the step that reordered the pools; see
        `RemineCallback`), so a resumed run replays exactly what the uninterrupted run saw.
        """
        if self._in_flight > 0:
            self._in_flight -= 1
            return self._previous
        return self.pools

    @property
    def pool_size(self) -> int:
        """``M``, the width of the pool array."""
        return int(self.pools.shape[1])

    def set_pools(self, pools: np.ndarray, *, previous: np.ndarray | None = None, in_flight: int = 0) -> None:
        """Replace the pool order (e.g. after re-scoring with the model being trained).

        Every row must hold the same documents as before, in any order, ``-1`` padding last.

        Args:
            pools: The new ``[n_pairs, M]`` order.
            previous: The order batches already in flight were built with (default: the current one).
            in_flight: How many batches to come still get ``previous`` (see `batch_pools`).

        Raises:
            HNTrainerError: The array's shape or a row's documents differ from the current pools.
        """
        pools = np.asarray(pools, dtype=np.int64)
        if pools.shape != self.pools.shape:
            raise HNTrainerError(
                f"pool array of shape {pools.shape} does not match the dataset's {self.pools.shape}"
            )
        same = np.array_equal(np.sort(pools, axis=1), np.sort(self.pools, axis=1))
        if not same or not np.array_equal(_left_pack(pools), pools):
            raise HNTrainerError(
                "new pools must reorder each pair's negatives (same documents, padding last)"
            )
        self._previous = self.pools if previous is None else np.asarray(previous, dtype=np.int64)
        self._in_flight = int(in_flight)
        self.pools = pools.copy()


def _left_pack(pools: np.ndarray) -> np.ndarray:
    """Move the ``-1`` padding of each row to the end, keeping the order of the documents."""
    if pools.size == 0:
        return pools.copy()
    order = np.argsort(pools < 0, axis=1, kind="stable")
    return np.take_along_axis(pools, order, axis=1)


def _is_positive(
    pools: np.ndarray, pair_queries: Sequence[int], query_positives: Sequence[set[int]]
) -> np.ndarray:
    """Mask of pool entries that are a positive of the pair's query (never kept as negatives)."""
    mask = np.zeros(pools.shape, dtype=bool)
    for i, q in enumerate(pair_queries):
        if query_positives[q]:
            mask[i] = np.isin(pools[i], list(query_positives[q]))
    return mask
