"""Negative samplers behind one interface, for comparing mining strategies on equal terms.

Every sampler takes the same ``MiningInputs`` and returns the kernel's ``MiningResult``
(``indices [n_pairs, k]`` padded with ``-1``), so the training data and the comparison table are
built the same way whichever strategy produced the negatives:

=================== ============================================================================
``dual_condition``  the paper's dual-condition hard negatives (``dual_condition_mine``)
``random``          uniform non-positive documents, seeded, distinct within a pair
``bm25``            top lexical (BM25, ``bm25s``) hits that are not positives
``dense_topk``      the k closest non-positives, no condition: static hard negatives as in STAR
``positive_aware``  NV-Retriever TopK-PercPos: the k closest with ``sim(Q, D) < perc * sim(Q, PD)``
``st_mine``         sentence-transformers' own ``util.mine_hard_negatives`` on one encoder (a peer)
=================== ============================================================================

Reported distances: where embeddings are given, every sampler reports the kernel's metric
distance of each negative (``decision_distances``), so negatives of different samplers can be
compared. Without embeddings, ``bm25`` reports ``-score`` (lower is closer, as for a distance)
``random`` reports ``nan`` and ``st_mine`` its model's cosine distance. Padding is ``inf`` in every case.

Example:
    >>> sampler = get_sampler("random", seed=0)
    >>> inputs = MiningInputs(["q"], ["a", "b", "c"], [[0, 1]], [[1]])
    >>> sorted(sampler.mine(inputs, k=2).indices[0].tolist())
    [0, 2]
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from hn_trainer.errors import ConfigError
from hn_trainer.mining.kernel import (
    DEFAULT_CORPUS_BLOCK_SIZE,
    DEFAULT_QUERY_BLOCK_SIZE,
    CandidateRule,
    Conditions,
    Metric,
    MiningResult,
    Precision,
    decision_distances,
    mine_negatives,
)

logger = logging.getLogger(__name__)


@dataclass
class MiningInputs:
    """What any sampler may use: texts, (query, positive) pairs, positives, optional embeddings.

    Attributes:
        queries: query texts, indexed by query row.
        documents: corpus texts, indexed by corpus row.
        pairs: ``LongTensor[n_pairs, 2]`` (query row, positive corpus row); lists and arrays are
            converted.
        positives: per query row, every positive corpus row (all excluded as negatives).
        query_embeddings: optional ``[n_queries, d]`` tensor or array.
        corpus_embeddings: optional ``[n_documents, d]`` tensor or array.
    """

    queries: list[str]
    documents: list[str]
    pairs: torch.Tensor
    positives: list[list[int]]
    query_embeddings: torch.Tensor | np.ndarray | None = None
    corpus_embeddings: torch.Tensor | np.ndarray | None = None

    def __post_init__(self) -> None:
        pairs = self.pairs
        if not isinstance(pairs, torch.Tensor):
            pairs = torch.as_tensor(np.asarray(pairs))
        self.pairs = pairs.to("cpu", torch.long).reshape(-1, 2)
        if len(self.positives) != len(self.queries):
            raise ValueError(f"positives has {len(self.positives)} rows for {len(self.queries)} queries")
        if (self.query_embeddings is None) != (self.corpus_embeddings is None):
            raise ValueError("give both query_embeddings and corpus_embeddings, or neither")
        if self.query_embeddings is not None:
            if len(self.query_embeddings) != len(self.queries):
                raise ValueError(
                    f"{len(self.query_embeddings)} query embeddings for {len(self.queries)} queries"
                )
            if len(self.corpus_embeddings) != len(self.documents):
                raise ValueError(
                    f"{len(self.corpus_embeddings)} corpus embeddings for {len(self.documents)} documents"
                )
        if self.pairs.numel():
            if int(self.pairs[:, 0].min()) < 0 or int(self.pairs[:, 0].max()) >= len(self.queries):
                raise ValueError("pairs hold a query row outside the queries")
            if int(self.pairs[:, 1].min()) < 0 or int(self.pairs[:, 1].max()) >= len(self.documents):
                raise ValueError("pairs hold a positive corpus row outside the documents")

    @property
    def has_embeddings(self) -> bool:
        return self.query_embeddings is not None

    def excluded(self) -> list[np.ndarray]:
        """Sorted corpus rows never returned for each query row: its positives and its pairs'."""
        rows = [set(p) for p in self.positives]
        for query, positive in self.pairs.tolist():
            rows[query].add(positive)
        return [np.array(sorted(row), dtype=np.int64) for row in rows]


class NegativeSampler(ABC):
    """Mines ``k`` negatives per (query, positive) pair of ``MiningInputs``."""

    name: ClassVar[str]
    requires_embeddings: ClassVar[bool] = False

    @abstractmethod
    def mine(self, inputs: MiningInputs, k: int) -> MiningResult:
        """Return ``k`` negatives per pair, ``-1``/``inf`` padded, never a positive of the query."""

    def _check(self, inputs: MiningInputs, k: int) -> None:
        if not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if self.requires_embeddings and not inputs.has_embeddings:
            raise ConfigError(f"the {self.name!r} sampler needs query and corpus embeddings")

    def __repr__(self) -> str:
        fields = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({fields})"


class _DenseSampler(NegativeSampler):
    """Samplers that run the exact blockwise kernel with a ``CandidateRule``."""

    requires_embeddings = True

    def __init__(
        self,
        metric: Metric = "cosine",
        *,
        query_block_size: int | None = DEFAULT_QUERY_BLOCK_SIZE,
        corpus_block_size: int | None = DEFAULT_CORPUS_BLOCK_SIZE,
        precision: Precision = "auto",
        device: str | torch.device | None = None,
        show_progress_bar: bool = False,
    ) -> None:
        self.metric = metric
        self.query_block_size = query_block_size
        self.corpus_block_size = corpus_block_size
        self.precision = precision
        self.device = device
        self.show_progress_bar = show_progress_bar

    @abstractmethod
    def rule(self) -> CandidateRule:
        """Which candidates qualify for a pair."""

    def mine(self, inputs: MiningInputs, k: int) -> MiningResult:
        self._check(inputs, k)
        return mine_negatives(
            inputs.query_embeddings,
            inputs.corpus_embeddings,
            inputs.pairs,
            inputs.positives,
            k,
            self.metric,
            rule=self.rule(),
            query_block_size=self.query_block_size,
            corpus_block_size=self.corpus_block_size,
            precision=self.precision,
            device=self.device,
            show_progress_bar=self.show_progress_bar,
        )


class DualConditionSampler(_DenseSampler):
    """The paper's negatives: ``d(Q,D) < d(Q,PD)`` and ``d(Q,D) < d(PD,D)`` (or only the first).

    Args:
        metric: ``"cosine"`` or ``"euclidean"``.
        conditions: ``"both"`` or ``"query"`` (condition 1 only, the ablation).
        **kwargs: block sizes, precision, device, progress bar (see ``dual_condition_mine``).
    """

    name = "dual_condition"

    def __init__(self, metric: Metric = "cosine", conditions: Conditions = "both", **kwargs) -> None:
        super().__init__(metric, **kwargs)
        CandidateRule.from_conditions(conditions)  # validate early
        self.conditions = conditions

    def rule(self) -> CandidateRule:
        return CandidateRule.from_conditions(self.conditions)


class DenseTopKSampler(_DenseSampler):
    """Static hard negatives (STAR): the ``k`` closest non-positive documents, no condition."""

    name = "dense_topk"

    def rule(self) -> CandidateRule:
        return CandidateRule()


class PositiveAwareSampler(_DenseSampler):
    """NV-Retriever TopK-PercPos: closest documents with ``sim(Q,D) < perc * sim(Q,PD)``.

    Cosine similarity (``1 - cosine distance``); the threshold drops likely false negatives that
    score almost as high as the positive.

    Args:
        perc: fraction of the positive's similarity a negative must stay below (default 0.95).
        **kwargs: block sizes, precision, device, progress bar (see ``dual_condition_mine``).
    """

    name = "positive_aware"

    def __init__(self, perc: float = 0.95, **kwargs) -> None:
        if kwargs.setdefault("metric", "cosine") != "cosine":
            raise ConfigError("the positive_aware sampler is defined on cosine similarity")
        super().__init__(**kwargs)
        if not 0.0 < perc <= 1.0:
            raise ConfigError(f"perc must be in (0, 1], got {perc!r}")
        self.perc = float(perc)

    def rule(self) -> CandidateRule:
        return CandidateRule(max_similarity_ratio=self.perc)


def _report_distances(
    inputs: MiningInputs, indices: torch.Tensor, fallback: torch.Tensor, metric: Metric
) -> torch.Tensor:
    """Metric distances of ``indices`` where embeddings exist, else ``fallback``; ``inf`` padding."""
    if inputs.has_embeddings:
        distances = decision_distances(
            inputs.query_embeddings,
            inputs.corpus_embeddings,
            inputs.pairs[:, 0],
            indices,
            metric,
            device="cpu",
        )
    else:
        distances = fallback.float()
    return distances.masked_fill(indices < 0, math.inf)


class RandomSampler(NegativeSampler):
    """Uniformly random non-positive documents, distinct within a pair, reproducible by seed.

    Args:
        seed: seed of the numpy generator; pairs are drawn in order, so a seed fixes the output.
        metric: distance reported when embeddings are given (otherwise ``nan``).
    """

    name = "random"

    def __init__(self, seed: int = 0, metric: Metric = "cosine") -> None:
        self.seed = seed
        self.metric = metric

    def mine(self, inputs: MiningInputs, k: int) -> MiningResult:
        self._check(inputs, k)
        rng = np.random.default_rng(self.seed)
        n_docs = len(inputs.documents)
        excluded = inputs.excluded()
        # corpus row = rank + number of excluded rows e_j with e_j - j <= rank
        shifts = [row - np.arange(len(row)) for row in excluded]
        indices = np.full((len(inputs.pairs), k), -1, dtype=np.int64)
        for i, query in enumerate(inputs.pairs[:, 0].tolist()):
            available = n_docs - len(excluded[query])
            ranks = rng.choice(available, size=min(k, available), replace=False)
            indices[i, : len(ranks)] = ranks + np.searchsorted(shifts[query], ranks, side="right")
        indices = torch.from_numpy(indices)
        nan = torch.full(indices.shape, math.nan)
        return MiningResult(indices, _report_distances(inputs, indices, nan, self.metric))


class BM25Sampler(NegativeSampler):
    """Top BM25 hits that are not positives (lexical hard negatives), using ``bm25s``.

    The documents are indexed once per ``mine`` call, each query is retrieved once (top
    ``k + its number of positives``), and its pairs share the filtered list. Documents with a
    zero score share no term with the query and are not returned, so a pair may get fewer than
    ``k``. Equal scores are ordered by corpus row.

    Args:
        k1: BM25 term-frequency saturation.
        b: BM25 length normalisation.
        method: ``bm25s`` scoring variant (``"lucene"``, ``"robertson"``, ``"atire"``, ...).
        stopwords: ``bm25s`` stopword list (``"en"``) or ``None``.
        metric: distance reported when embeddings are given (otherwise ``-score``).
        show_progress_bar: show ``bm25s`` progress bars.
    """

    name = "bm25"

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        stopwords: str | list[str] | None = "en",
        metric: Metric = "cosine",
        show_progress_bar: bool = False,
    ) -> None:
        self.k1 = k1
        self.b = b
        self.method = method
        self.stopwords = stopwords
        self.metric = metric
        self.show_progress_bar = show_progress_bar

    def mine(self, inputs: MiningInputs, k: int) -> MiningResult:
        import bm25s

        self._check(inputs, k)
        n_pairs, n_docs = len(inputs.pairs), len(inputs.documents)
        indices = torch.full((n_pairs, k), -1, dtype=torch.long)
        scores = torch.full((n_pairs, k), -math.inf)
        if n_pairs == 0 or n_docs == 0:
            return MiningResult(indices, scores.neg())
        stopwords = self.stopwords or []
        retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        retriever.index(
            bm25s.tokenize(inputs.documents, stopwords=stopwords, show_progress=False),
            show_progress=self.show_progress_bar,
        )
        excluded = inputs.excluded()
        rows = sorted(set(inputs.pairs[:, 0].tolist()))
        depth = min(n_docs, k + max(len(excluded[q]) for q in rows))
        texts = [inputs.queries[q] for q in rows]
        tokens = bm25s.tokenize(texts, stopwords=stopwords, return_ids=False, show_progress=False)
        found = retriever.retrieve(tokens, k=depth, show_progress=self.show_progress_bar)
        per_query: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for q, docs, doc_scores in zip(rows, found.documents, found.scores):
            keep = (doc_scores > 0) & ~np.isin(docs, excluded[q])
            docs, doc_scores = docs[keep], doc_scores[keep]
            order = np.lexsort((docs, -doc_scores))[:k]
            per_query[q] = docs[order], doc_scores[order]
        for i, query in enumerate(inputs.pairs[:, 0].tolist()):
            docs, doc_scores = per_query[query]
            indices[i, : len(docs)] = torch.from_numpy(docs.astype(np.int64))
            scores[i, : len(docs)] = torch.from_numpy(doc_scores.astype(np.float32))
        return MiningResult(indices, _report_distances(inputs, indices, -scores, self.metric))


class SentenceTransformersSampler(NegativeSampler):
    """sentence-transformers' ``util.mine_hard_negatives`` itself, as the peer a user would otherwise run.

    One bi-encoder embeds the queries and the documents; each query takes its top-scoring documents (``"top"``)
    that are not positives of its pairs and score at most its lowest-scoring positive minus
    ``absolute_margin`` (sentence-transformers' query-anchored margin; ``0`` keeps only documents that score
    below every positive). There is no condition on ``d(PD, D)``. Documents judged for the query elsewhere (other
    splits, other scores), which the function does not know of, are dropped from its output afterwards: it is
    asked for ``k`` plus as many as could be dropped. Texts it returns map back to the first corpus row holding
    them, so duplicate documents count once.

    Args:
        model: An encoder spec resolved by `hn_trainer.embeddings.encoders.load_encoder` (a hub id, a folder, or a
            packaged model) that loads as a ``SentenceTransformer``.
        absolute_margin: ``mine_hard_negatives``' ``absolute_margin`` (``None``: no margin).
        relative_margin: ``mine_hard_negatives``' ``relative_margin``.
        range_min, range_max: Ranks of the candidates considered (``range_max`` ``None``: the function's default).
        sampling_strategy: ``"top"`` or ``"random"`` among the candidates.
        batch_size: Texts per encoding batch.
        device: Torch device of the model (default: CUDA when available).
    """

    name = "st_mine"

    def __init__(
        self,
        model: str = "sentence-transformers/all-MiniLM-L6-v2",
        absolute_margin: float | None = 0.0,
        relative_margin: float | None = None,
        range_min: int = 0,
        range_max: int | None = None,
        sampling_strategy: str = "top",
        batch_size: int = 64,
        device: str | torch.device | None = None,
    ) -> None:
        if sampling_strategy not in ("top", "random"):
            raise ConfigError(f"sampling_strategy must be 'top' or 'random', got {sampling_strategy!r}")
        self.model = model
        self.absolute_margin = absolute_margin
        self.relative_margin = relative_margin
        self.range_min = range_min
        self.range_max = range_max
        self.sampling_strategy = sampling_strategy
        self.batch_size = batch_size
        self.device = device

    def _model(self):
        from hn_trainer.embeddings.encoders import load_encoder
        from hn_trainer.embeddings.sentence_transformer import SentenceTransformerEncoder

        encoder = load_encoder(self.model, device=None if self.device is None else str(self.device))
        if not isinstance(encoder, SentenceTransformerEncoder):
            raise ConfigError(f"the st_mine sampler needs a sentence-transformers model; {self.model!r} is not one")
        return encoder.model

    def mine(self, inputs: MiningInputs, k: int) -> MiningResult:
        import datasets
        from sentence_transformers.util import mine_hard_negatives

        self._check(inputs, k)
        n_pairs = len(inputs.pairs)
        indices = torch.full((n_pairs, k), -1, dtype=torch.long)
        distances = torch.full((n_pairs, k), math.inf)
        if n_pairs == 0:
            return MiningResult(indices, distances)
        pair_list = inputs.pairs.tolist()
        excluded = [set(row.tolist()) for row in inputs.excluded()]
        in_pairs: list[set[int]] = [set() for _ in inputs.queries]
        for query, positive in pair_list:
            in_pairs[query].add(positive)
        extra = max(len(excluded[q] - in_pairs[q]) for q, _ in pair_list)
        row_of: dict[str, int] = {}
        for row, text in enumerate(inputs.documents):
            row_of.setdefault(text, row)
        anchors = [inputs.queries[q] for q, _ in pair_list]
        positives = [inputs.documents[d] for _, d in pair_list]
        mined = mine_hard_negatives(
            datasets.Dataset.from_dict({"query": anchors, "positive": positives}),
            self._model(),
            corpus=list(inputs.documents),
            range_min=self.range_min,
            range_max=self.range_max,
            absolute_margin=self.absolute_margin,
            relative_margin=self.relative_margin,
            num_negatives=k + extra,
            sampling_strategy=self.sampling_strategy,
            output_format="triplet",
            output_scores=True,
            batch_size=self.batch_size,
            verbose=False,
        )
        found: dict[tuple[str, str], list[tuple[int, float]]] = {}
        for query, positive, negative, scores in zip(mined["query"], mined["positive"], mined["negative"],
                                                     mined["scores"]):
            found.setdefault((query, positive), []).append((row_of[negative], 1.0 - scores[1]))
        for i, ((query, _), anchor, positive) in enumerate(zip(pair_list, anchors, positives)):
            kept = [(row, d) for row, d in found.get((anchor, positive), []) if row not in excluded[query]][:k]
            for j, (row, d) in enumerate(kept):
                indices[i, j], distances[i, j] = row, d
        return MiningResult(indices, _report_distances(inputs, indices, distances, "cosine"))


SAMPLERS: dict[str, type[NegativeSampler]] = {
    sampler.name: sampler
    for sampler in (
        DualConditionSampler, RandomSampler, BM25Sampler, DenseTopKSampler, PositiveAwareSampler,
        SentenceTransformersSampler,
    )
}


def get_sampler(name: str, **kwargs) -> NegativeSampler:
    """Instantiate a sampler of ``SAMPLERS`` by name with its keyword arguments.

    Example:
        >>> get_sampler("dense_topk", corpus_block_size=4096).corpus_block_size
        4096
    """
    try:
        cls = SAMPLERS[name]
    except KeyError:
        raise ConfigError(f"unknown sampler {name!r}; choose from {sorted(SAMPLERS)}") from None
    try:
        return cls(**kwargs)
    except TypeError as error:
        raise ConfigError(f"bad arguments for sampler {name!r}: {error}") from None

