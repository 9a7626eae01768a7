"""Dual-condition hard negatives for a `datasets.Dataset` of (query, positive) pairs, in the layouts of
sentence-transformers' `sentence_transformers.util.mine_hard_negatives`.

For users whose data is a table of pairs rather than a BEIR folder: no ids, repeated queries for several
positives, an optional corpus of extra documents. The pairs are embedded with the encoder ensemble (PCA
fitted on the corpus and these queries), mined with the exact dual-condition kernel, and written out as
``triplet``, ``n-tuple``, ``labeled-pair`` or ``labeled-list`` rows with the same column names as
sentence-transformers' function, so a training script can switch from one to the other.

Rules:

* Queries are the distinct texts of the query column; a query repeated on several rows is one query with
  several positives (duplicate rows are merged), and none of its positives is ever its negative.
* The corpus is ``corpus`` (default: none) followed by the positives not in it, texts deduplicated in
  first-seen order, as sentence-transformers builds it. Ids are derived from content: ``"q"``/``"d"``
  followed by the first 16 hex digits of the text's sha256 (the whole digest if two texts would share one).
* Pairs are ordered by query (first appearance), then by positive (first appearance with that query).
* A corpus document D is a hard negative of the pair (Q, PD) when it is not a positive of Q and
  ``d(Q, D) < d(Q, PD)`` (condition 1) and ``d(Q, D) < d(PD, D)`` (condition 2; dropped with
  ``conditions="query"``), both strict, ``d`` the cosine distance (``1 - cos``, vectors L2-normalised) or
  the euclidean distance in the PCA space. The kernel (`hn_trainer.mining.kernel`) finds, per pair, the
  ``pool_size`` qualifying documents closest to Q, exactly, ties broken by lower corpus row.
* ``sampling_strategy="top"`` keeps the ``num_negatives`` closest of the pool; ``"random"`` draws
  ``num_negatives`` of the pool with ``numpy.random.default_rng([seed, pair index])`` and keeps them in
  pool order (closest first).
* ``fallback`` tops up pairs with fewer than ``num_negatives``: ``"none"`` (the paper) leaves them short;
  ``"random"`` adds uniformly drawn corpus documents that are neither a positive of Q nor already chosen
  (``default_rng([seed, pair index, 1])``); ``"condition2"`` adds the documents closest to Q among those
  that satisfy condition 2 alone, ``d(Q, D) < d(PD, D)``, mined exactly by the same kernel with
  ``CandidateRule(closer_to_query_than_positive=True)`` (the ``conditions`` strings only express "both" and
  "query"; the rule underneath expresses condition 2 alone, so no brute force is needed). Top-ups come after
  the dual-condition negatives, closest first; a corpus without enough candidates leaves the pair short.
* Output formats follow sentence-transformers: ``triplet`` (one row per negative) and ``labeled-list``
  drop pairs that have no negative, ``n-tuple`` drops pairs with fewer than ``num_negatives``;
  ``labeled-pair`` writes, per query, its positives (label 1) then the distinct negatives of all its pairs
  (label 0). The statistics say how many pairs each format dropped.
* Scores (``output_scores=True``) are similarities where sentence-transformers reports similarities: the
  cosine similarity ``1 - d`` in the mining space for ``metric="cosine"``, and ``-d`` for
  ``metric="euclidean"`` (higher is closer in both).

Differences from sentence-transformers' ``mine_hard_negatives``, and why:

* Condition 1 is the opposite of its margin. A margin keeps candidates that score *below* the positive
  (``score <= positive score - absolute_margin``; with ``absolute_margin=0`` "the negative is always further
  away from the anchor than the positive", ties with the positive kept). Condition 1 keeps the documents
  *closer* to the query than the positive, strictly: ``d(Q, D) < d(Q, PD)``, the ones a retriever ranks
  above the positive, which the paper calls hard. For a query with one positive the two selections are
  complementary: every non-positive document is on exactly one side, a tie with the positive on
  sentence-transformers' side. Without a margin sentence-transformers keeps the top ``num_negatives``
  non-positives, and with one encoder, no PCA (``pca_variance=None``), ``conditions="query"`` and "top",
  a pair's negatives here are exactly those of its list that are closer to Q than the pair's positive (all
  of them when at least ``num_negatives`` documents are), up to ties between equal scores, ordered by
  corpus row here and in whatever order ``torch.topk`` returns there.
* Per pair, not per query: each (Q, PD) has its own threshold ``d(Q, PD)``, where sentence-transformers
  takes one threshold per query (the lowest positive score) and repeats the same negatives for all of the
  query's positives.
* Vectors: sentence-transformers ranks by the model's similarity of its (normalised) embeddings; here each
  encoder's embedding is L2-normalised, concatenated, projected by PCA and normalised again for cosine.
  On CUDA the sentence-transformers encoders of the ensemble run in half precision.
* The whole corpus is searched exactly (no ``range_max``); ``pool_size`` bounds the candidates kept.
* A named column that the dataset lacks is a `DataError` (sentence-transformers silently falls back to the
  first or second column); unknown formats, strategies and fallbacks are `ConfigError`.
* Not offered: cross-encoder rescoring, ``range_min``, ``max_score``/``min_score``, score margins, prompts,
  ``include_positives``, FAISS. Added: the ensemble, PCA, condition 2, fallbacks.

Statistics: `mine_hard_negatives` prints them when ``verbose`` and stores them, as JSON, in the returned
dataset's ``info.description`` (``json.loads(dataset.info.description)``), which ``save_to_disk`` keeps.
`mine_hard_negative_pairs` returns them as ``.stats`` together with the per-pair negatives and the vectors
they were chosen in (`HardNegativeMining`).

Example:
    >>> from datasets import Dataset
    >>> from hn_trainer import mine_hard_negatives
    >>> pairs = Dataset.from_dict({"query": ["what is a vcn"], "answer": ["a virtual cloud network"]})
    >>> triplets = mine_hard_negatives(pairs, corpus=more_texts)  # doctest: +SKIP
    >>> triplets.column_names  # doctest: +SKIP
    ['query', 'answer', 'negative']
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import numpy as np
import torch

from hn_trainer.data.pairs import content_ids
from hn_trainer.errors import ConfigError, DataError
from hn_trainer.mining.fallback import FALLBACKS, top_up
from hn_trainer.mining.kernel import CONDITIONS, METRICS, decision_distances
from hn_trainer.mining.pipeline import (
    MINED_FEATURES,
    configured_sampler,
    distance_summary,
    format_stats,
    mine_pairs_from_embeddings,
    mined_stats,
)

OUTPUT_FORMATS = ("triplet", "n-tuple", "labeled-pair", "labeled-list")
SAMPLING_STRATEGIES = ("top", "random")
DEFAULT_ENCODERS = ("sentence-transformers/all-MiniLM-L6-v2", "lsa")

OutputFormat = Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"]
Fallback = Literal["none", "random", "condition2"]
SamplingStrategy = Literal["top", "random"]

PAIR_FEATURES = {**MINED_FEATURES, "negative_sources": ["string"], "positive_distance": "float32"}
"""Columns of `HardNegativeMining.pairs`: those of a mined-pairs dataset, plus where each negative came
from (``"dual_condition"``, ``"random"`` or ``"condition2"``) and ``d(Q, PD)``."""


def default_pool_size(num_negatives: int, sampling_strategy: str) -> int:
    """Candidates mined per pair: ``num_negatives`` for "top", ``max(4 * num_negatives, 10)`` for "random"."""
    return num_negatives if sampling_strategy == "top" else max(num_negatives * 4, 10)


@dataclass
class HardNegativeMining:
    """What `mine_hard_negative_pairs` found, before it is laid out in an output format.

    Attributes:
        pairs: One row per distinct (query, positive) pair, columns `PAIR_FEATURES`, negatives in output
            order (dual-condition ones closest first, then fallback ones closest first).
        stats: Counts, dimensions, distances and seconds (see `mine_hard_negatives`).
        anchor_column_name, positive_column_name: The input's columns, reused in the output.
        query_ids, query_texts: The distinct queries, rows of ``query_embeddings``.
        corpus_ids, corpus_texts: The corpus, rows of ``corpus_embeddings``.
        query_embeddings, corpus_embeddings: The vectors the negatives were chosen in (after PCA; the kernel
            L2-normalises them again for cosine).
        metric: Distance of the conditions; scores are ``1 - d`` (cosine) or ``-d`` (euclidean).
        num_negatives: Negatives asked for per pair.
        ensemble: The `EnsembleEmbeddings`; ``ensemble.encode(texts)`` embeds new texts the same way.
    """

    pairs: Any
    stats: dict
    anchor_column_name: str
    positive_column_name: str
    query_ids: list[str]
    query_texts: list[str]
    corpus_ids: list[str]
    corpus_texts: list[str]
    query_embeddings: np.ndarray
    corpus_embeddings: np.ndarray
    metric: str
    num_negatives: int
    ensemble: Any = field(default=None, repr=False)

    def to_dataset(self, output_format: OutputFormat = "triplet", output_scores: bool = False):
        """The pairs laid out as sentence-transformers' ``mine_hard_negatives`` lays them out
        (`sentence_transformers_layout`)."""
        return sentence_transformers_layout(
            self.pairs, output_format, anchor_column_name=self.anchor_column_name,
            positive_column_name=self.positive_column_name, num_negatives=self.num_negatives, metric=self.metric,
            output_scores=output_scores, stats=self.stats,
        )


def sentence_transformers_layout(
    pairs,
    output_format: OutputFormat = "triplet",
    *,
    anchor_column_name: str = "query",
    positive_column_name: str = "positive",
    num_negatives: int,
    metric: str = "cosine",
    output_scores: bool = False,
    stats: dict | None = None,
):
    """Mined pairs laid out as sentence-transformers' ``mine_hard_negatives`` lays them out.

    Args:
        pairs: Rows with ``query``, ``positive``, ``negatives`` (hardest first), ``negative_distances`` and
            ``positive_distance`` (``d(Q, PD)``; read only with ``output_scores``).
        output_format: ``"triplet"``, ``"n-tuple"``, ``"labeled-pair"`` or ``"labeled-list"``.
        anchor_column_name, positive_column_name: The output's first two columns.
        num_negatives: Negatives per row of ``n-tuple`` (pairs with fewer are dropped).
        metric: Scores are ``1 - d`` (cosine) or ``-d`` (euclidean).
        output_scores: Scores instead of, or beside, labels (see `mine_hard_negatives`).
        stats: Mining statistics to store in ``info.description``.

    Returns:
        A `datasets.Dataset`; its ``info.description`` holds ``stats`` as JSON, with ``output_format``,
        ``rows`` and ``pairs_dropped`` (pairs the format leaves out for lack of negatives) added.

    Raises:
        ConfigError: Unknown ``output_format``.
    """
    import datasets

    _check_choice("output_format", output_format, OUTPUT_FORMATS)
    view = _PairsView(pairs, metric, num_negatives)
    columns, dropped = _LAYOUTS[output_format](view, anchor_column_name, positive_column_name, bool(output_scores))
    stats = {**(stats or {}), "output_format": output_format, "output_scores": bool(output_scores)}
    stats.update(rows=len(next(iter(columns.values()))), pairs_dropped=dropped)
    info = datasets.DatasetInfo(description=json.dumps(stats, default=_jsonable))
    return datasets.Dataset.from_dict(columns, info=info)


@dataclass
class _PairsView:
    pairs: Any
    metric: str
    num_negatives: int

    def score(self, distance: float) -> float:
        """The similarity reported for a distance: ``1 - d`` (cosine) or ``-d`` (euclidean)."""
        return 1.0 - distance if self.metric == "cosine" else -distance


def mine_hard_negatives(
    dataset,
    encoders: Sequence[str] | str = DEFAULT_ENCODERS,
    *,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus=None,
    pca_variance: float | None = 0.95,
    conditions: str = "both",
    metric: str = "cosine",
    pool_size: int | None = None,
    num_negatives: int = 3,
    sampling_strategy: SamplingStrategy = "top",
    fallback: Fallback = "none",
    output_format: OutputFormat = "triplet",
    output_scores: bool = False,
    cache_dir=None,
    batch_size: int = 64,
    seed: int = 42,
    device: str | None = None,
    verbose: bool = True,
):
    """Add dual-condition hard negatives to a dataset of (query, positive) pairs.

    The drop-in counterpart of ``sentence_transformers.util.mine_hard_negatives`` (same output columns, see
    the module docstring for the rules and the differences): an encoder ensemble and PCA instead of one
    model, the dual condition instead of a margin.

    Args:
        dataset: A `datasets.Dataset` with a query column and a positive column.
        encoders: Encoder specs (sentence-transformers ids or folders, ``"onnx:..."``, ``"lsa"``,
            ``"lsa:<dims>"``), a list or a comma-separated string.
        anchor_column_name: The query column (default: the first column).
        positive_column_name: The positive column (default: the second column).
        corpus: Extra documents negatives may be drawn from: a list of texts, a `datasets` column, or a
            `datasets.Dataset` (its ``text`` column, else its first column). The positives are always part
            of the corpus; default: the distinct positives alone.
        pca_variance: Fraction of variance the PCA keeps, in (0, 1]; ``None`` or ``1.0``: no PCA.
        conditions: ``"both"`` (the paper) or ``"query"`` (condition 1 only).
        metric: ``"cosine"`` or ``"euclidean"``.
        pool_size: Dual-condition negatives mined per pair before sampling (default: ``num_negatives`` for
            "top", ``max(4 * num_negatives, 10)`` for "random"); at least ``num_negatives``.
        num_negatives: Negatives kept per pair.
        sampling_strategy: ``"top"`` (the closest first) or ``"random"`` (a seeded draw within the pool).
        fallback: For pairs short of negatives: ``"none"``, ``"random"`` or ``"condition2"``.
        output_format: ``"triplet"``, ``"n-tuple"``, ``"labeled-pair"`` or ``"labeled-list"``.
        output_scores: Add scores as sentence-transformers does: ``scores`` ([positive, negative...]) in
            ``triplet``/``n-tuple``, ``score`` instead of ``label`` in ``labeled-pair``, ``scores`` instead of
            ``labels`` in ``labeled-list``. Scores are similarities: ``1 - d`` for cosine (the cosine
            similarity in the mining space), ``-d`` for euclidean.
        cache_dir: Embedding cache (default ``$HN_TRAINER_CACHE/embeddings`` or
            ``~/.cache/hn_trainer/embeddings``; ``False``: none).
        batch_size: Texts per encoder batch.
        seed: Seed of the random draws (a non-negative integer).
        device: Torch device of the encoders and the kernel (default: CUDA when available).
        verbose: Print the statistics table and show progress bars.

    Returns:
        A `datasets.Dataset`. Columns, named after the input's (``anchor``, ``positive``):

        - ``triplet``: anchor, positive, ``negative`` [, ``scores``]
        - ``n-tuple``: anchor, positive, ``negative_1`` ... ``negative_n`` [, ``scores``]
        - ``labeled-pair``: anchor, positive (any document), ``label`` (or ``score``)
        - ``labeled-list``: anchor, positive (list of documents, the positive first), ``labels`` (or
          ``scores``)

        The statistics (pairs, pairs short of negatives before and after the fallback, pairs the format
        dropped, dimensions before and after PCA, variance kept, distances of positives and negatives,
        distinct negatives per query, seconds) are in ``json.loads(result.info.description)``.

    Raises:
        ConfigError: An argument out of range or not among its choices (the message names it).
        DataError: An empty dataset, a missing column, a value that is not a text.
    """
    _check_choice("output_format", output_format, OUTPUT_FORMATS)
    mined = mine_hard_negative_pairs(
        dataset,
        encoders,
        anchor_column_name=anchor_column_name,
        positive_column_name=positive_column_name,
        corpus=corpus,
        pca_variance=pca_variance,
        conditions=conditions,
        metric=metric,
        pool_size=pool_size,
        num_negatives=num_negatives,
        sampling_strategy=sampling_strategy,
        fallback=fallback,
        cache_dir=cache_dir,
        batch_size=batch_size,
        seed=seed,
        device=device,
        verbose=verbose,
    )
    result = mined.to_dataset(output_format, output_scores)
    if verbose:
        print(format_hard_negative_stats(json.loads(result.info.description)))
    return result


def mine_hard_negative_pairs(
    dataset,
    encoders: Sequence[str] | str = DEFAULT_ENCODERS,
    *,
    anchor_column_name: str | None = None,
    positive_column_name: str | None = None,
    corpus=None,
    pca_variance: float | None = 0.95,
    conditions: str = "both",
    metric: str = "cosine",
    pool_size: int | None = None,
    num_negatives: int = 3,
    sampling_strategy: SamplingStrategy = "top",
    fallback: Fallback = "none",
    cache_dir=None,
    batch_size: int = 64,
    seed: int = 42,
    device: str | None = None,
    verbose: bool = True,
) -> HardNegativeMining:
    """The mining behind `mine_hard_negatives`, per (query, positive) pair, with the vectors it used.

    Arguments as `mine_hard_negatives` (without the output ones). Returns `HardNegativeMining`; its
    ``to_dataset(output_format, output_scores)`` gives `mine_hard_negatives`' result.
    """
    from hn_trainer.embeddings import build_ensemble_embeddings
    from hn_trainer.embeddings.pca import validate_pca_variance

    encoder_list = _encoder_list(encoders)
    validate_pca_variance(pca_variance)
    _check_choice("conditions", conditions, CONDITIONS)
    _check_choice("metric", metric, METRICS)
    _check_choice("sampling_strategy", sampling_strategy, SAMPLING_STRATEGIES)
    _check_choice("fallback", fallback, FALLBACKS)
    _check_count("num_negatives", num_negatives)
    _check_count("batch_size", batch_size)
    if pool_size is None:
        pool_size = default_pool_size(num_negatives, sampling_strategy)
    _check_count("pool_size", pool_size)
    if pool_size < num_negatives:
        raise ConfigError(f"pool_size ({pool_size}) must be at least num_negatives ({num_negatives})")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    anchor, positive = _columns(dataset, anchor_column_name, positive_column_name)
    query_texts, positives_of, n_rows = _read_pairs(dataset, anchor, positive)
    pair_texts = [(q, p) for q in query_texts for p in positives_of[q]]
    extra = _corpus_texts(corpus)
    corpus_texts = list(dict.fromkeys(extra + [p for _, p in pair_texts]))
    query_ids, corpus_ids = content_ids(query_texts, "q"), content_ids(corpus_texts, "d")
    q_id, d_id = dict(zip(query_texts, query_ids)), dict(zip(corpus_texts, corpus_ids))
    q_row = {t: i for i, t in enumerate(query_texts)}
    d_row = {t: i for i, t in enumerate(corpus_texts)}
    pairs = [(q_id[q], d_id[p]) for q, p in pair_texts]
    pair_rows = torch.tensor([[q_row[q], d_row[p]] for q, p in pair_texts], dtype=torch.long)
    excluded = [sorted(d_row[p] for p in positives_of[q]) for q in query_texts]
    seconds["read"] = time.perf_counter() - t0

    with _datasets_progress(verbose):
        ensemble = build_ensemble_embeddings(
            corpus_texts,
            query_texts,
            encoder_list,
            pca_variance=pca_variance,
            cache_dir=cache_dir,
            batch_size=batch_size,
            device=device,
            show_progress=verbose,
        )
    seconds.update({f"embed_{k}": v for k, v in ensemble.seconds.items()})
    q_emb, c_emb = ensemble.query_embeddings, ensemble.corpus_embeddings

    t0 = time.perf_counter()
    sampler = configured_sampler("dual_condition", {"metric": metric, "conditions": conditions, "device": device})
    pool = mine_pairs_from_embeddings(
        query_ids,
        query_texts,
        corpus_ids,
        corpus_texts,
        pairs,
        q_emb,
        c_emb,
        num_negatives=pool_size,
        sampler=sampler,
        positives={q_id[q]: [d_id[p] for p in positives_of[q]] for q in query_texts},
    )
    id_row = {d: i for i, d in enumerate(corpus_ids)}
    chosen, distances = _sample_pools(pool, id_row, num_negatives, sampling_strategy, seed)
    sources = [["dual_condition"] * len(rows) for rows in chosen]
    seconds["mine"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    added = top_up(fallback, chosen, distances, pair_rows, excluded, q_emb, c_emb, num_negatives,
                   metric=metric, seed=seed, device=device)
    for source, n in zip(sources, added):
        source.extend([fallback] * n)
    seconds["fallback"] = time.perf_counter() - t0

    d_qp = decision_distances(q_emb, c_emb, pair_rows[:, 0], pair_rows[:, 1:], metric, device=device)[:, 0]
    pairs_ds = _pairs_dataset(
        pair_texts, pairs, chosen, distances, sources, d_qp.tolist(), corpus_ids, corpus_texts
    )
    stats: dict = {
        "input_rows": n_rows,
        "queries": len(query_texts),
        "documents": len(corpus_texts),
        "corpus_given": len(set(extra)),
        "pool_size": pool_size,
        "sampling_strategy": sampling_strategy,
        "fallback": fallback,
        "seed": int(seed),
        "encoders": encoder_list,
        "per_encoder_dims": ensemble.per_encoder_dims,
        "dim_concat": ensemble.dim_concat,
        "dim_pca": ensemble.dim_pca,
        "pca_variance": ensemble.pca_variance,
        "variance_kept": float(ensemble.variance_kept),
    }
    found_dual = [len(n) for n in pool["negative_ids"]]
    kept_dual = [src.count("dual_condition") for src in sources]
    stats.update(
        pairs_short_of_dual_negatives=sum(1 for n in kept_dual if n < num_negatives),
        pairs_without_dual_negative=sum(1 for n in found_dual if n == 0),
        fallback_negatives=sum(len(s) - k for s, k in zip(sources, kept_dual)),
        pairs_topped_up=sum(1 for s, k in zip(sources, kept_dual) if len(s) > k),
    )
    stats.update(mined_stats(pairs_ds, num_negatives, SimpleNamespace(metric=metric, conditions=conditions)))
    stats["distance_summary"] = distance_summary(
        np.ascontiguousarray(q_emb), np.ascontiguousarray(c_emb), pair_rows, pairs_ds["negative_distances"], metric
    )
    stats["seconds"] = seconds
    return HardNegativeMining(
        pairs=pairs_ds,
        stats=stats,
        anchor_column_name=anchor,
        positive_column_name=positive,
        query_ids=query_ids,
        query_texts=query_texts,
        corpus_ids=corpus_ids,
        corpus_texts=corpus_texts,
        query_embeddings=q_emb,
        corpus_embeddings=c_emb,
        metric=metric,
        num_negatives=num_negatives,
        ensemble=ensemble,
    )


def format_hard_negative_stats(stats: dict) -> str:
    """The table `mine_hard_negatives` prints: `format_stats`' lines, then the fallback and the format's."""
    lines = [format_stats(stats)]
    if stats["input_rows"] != stats["pairs"]:
        lines.append(f"input rows: {stats['input_rows']} (identical queries and duplicate rows merged)")
    lines.append(
        f"pairs with fewer than {stats['num_negatives']} dual-condition negatives: "
        f"{stats['pairs_short_of_dual_negatives']} (none found: {stats['pairs_without_dual_negative']})"
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Checks and input
# ----------------------------------------------------------------------------------------------


def _check_choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _check_count(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer of at least 1, got {value!r}")


def _encoder_list(encoders) -> list[str]:
    if isinstance(encoders, str):
        encoders = encoders.split(",")
    if not isinstance(encoders, Sequence) or not all(isinstance(e, str) for e in encoders):
        raise ConfigError(f"encoders must be a list of encoder specs or a comma-separated string, got {encoders!r}")
    names = [e.strip() for e in encoders if e.strip()]
    if not names:
        raise ConfigError("encoders: name at least one encoder")
    return names


def _columns(dataset, anchor: str | None, positive: str | None) -> tuple[str, str]:
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"dataset must be a datasets.Dataset, got {type(dataset).__name__}")
    columns = list(dataset.column_names)
    if len(dataset) == 0:
        raise DataError("dataset is empty: it needs at least one (query, positive) row")
    for name, value in (("anchor_column_name", anchor), ("positive_column_name", positive)):
        if value is not None and value not in columns:
            raise DataError(f"{name}={value!r}: the dataset has no such column (columns: {', '.join(columns)})")
    anchor = anchor if anchor is not None else columns[0]
    if positive is None:
        rest = [c for c in columns if c != anchor]
        if not rest:
            raise DataError(
                f"positive_column_name: the dataset has one column ({anchor!r}), it needs a positive column too"
            )
        positive = columns[1] if columns[0] == anchor and len(columns) > 1 else rest[0]
    if anchor == positive:
        raise ConfigError(f"anchor_column_name and positive_column_name are both {anchor!r}")
    return anchor, positive


def _texts(values, what: str) -> list[str]:
    texts = list(values)
    for i, value in enumerate(texts):
        if not isinstance(value, str):
            raise DataError(f"{what}: row {i} is {value!r}, not a text")
    return texts


def _read_pairs(dataset, anchor: str, positive: str) -> tuple[list[str], dict[str, list[str]], int]:
    """Distinct queries in first-seen order, each with its distinct positives in first-seen order."""
    queries = _texts(dataset[anchor], f"column {anchor!r}")
    positives = _texts(dataset[positive], f"column {positive!r}")
    positives_of: dict[str, dict[str, None]] = {}
    for q, p in zip(queries, positives):
        positives_of.setdefault(q, {})[p] = None
    return list(positives_of), {q: list(p) for q, p in positives_of.items()}, len(queries)


def _corpus_texts(corpus) -> list[str]:
    import datasets

    if corpus is None:
        return []
    if isinstance(corpus, datasets.Dataset):
        if not corpus.column_names:
            raise DataError("corpus: the dataset has no column")
        column = "text" if "text" in corpus.column_names else corpus.column_names[0]
        return _texts(corpus[column], f"corpus column {column!r}")
    if isinstance(corpus, (str, bytes)) or not hasattr(corpus, "__iter__"):
        raise ConfigError(
            f"corpus must be a list of texts, a datasets column or a datasets.Dataset, got {type(corpus).__name__}"
        )
    return _texts(corpus, "corpus")


@contextlib.contextmanager
def _datasets_progress(show: bool):
    """Hide `datasets`' progress bars (its maps) unless ``show``; the global setting is restored after."""
    import datasets

    if show or datasets.are_progress_bars_disabled():
        yield
        return
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        datasets.enable_progress_bars()


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------


def _sample_pools(pool, id_row: dict[str, int], k: int, strategy: str, seed: int):
    """``k`` of each pair's pool (closest first): the first ``k``, or a seeded draw kept in pool order."""
    chosen, distances = [], []
    for i, (ids, dists) in enumerate(zip(pool["negative_ids"], pool["negative_distances"])):
        rows = [id_row[d] for d in ids]
        picks = range(min(k, len(rows)))
        if strategy == "random" and len(rows) > k:
            picks = np.sort(np.random.default_rng([seed, i]).choice(len(rows), size=k, replace=False)).tolist()
        chosen.append([rows[j] for j in picks])
        distances.append([float(dists[j]) for j in picks])
    return chosen, distances


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def _pairs_dataset(pair_texts, pairs, chosen, distances, sources, d_qp, corpus_ids, corpus_texts):
    import datasets

    columns = {
        "query_id": [q for q, _ in pairs],
        "query": [q for q, _ in pair_texts],
        "positive_id": [d for _, d in pairs],
        "positive": [p for _, p in pair_texts],
        "negative_ids": [[corpus_ids[d] for d in rows] for rows in chosen],
        "negatives": [[corpus_texts[d] for d in rows] for rows in chosen],
        "negative_distances": distances,
        "negative_sources": sources,
        "positive_distance": d_qp,
    }
    features = datasets.Features(
        {
            name: datasets.List(datasets.Value(kind[0])) if isinstance(kind, list) else datasets.Value(kind)
            for name, kind in PAIR_FEATURES.items()
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def _rows(mined: _PairsView):
    for r in mined.pairs:
        yield r["query"], r["positive"], r["negatives"], r["negative_distances"], r.get("positive_distance")


def _triplet(mined: _PairsView, anchor: str, positive: str, scores: bool):
    columns: dict[str, list] = {anchor: [], positive: [], "negative": []}
    if scores:
        columns["scores"] = []
    dropped = 0
    for q, p, negatives, dists, d_qp in _rows(mined):
        dropped += not negatives
        for n, d in zip(negatives, dists):
            columns[anchor].append(q)
            columns[positive].append(p)
            columns["negative"].append(n)
            if scores:
                columns["scores"].append([mined.score(d_qp), mined.score(d)])
    return columns, dropped


def _n_tuple(mined: _PairsView, anchor: str, positive: str, scores: bool):
    k = mined.num_negatives
    columns: dict[str, list] = {anchor: [], positive: [], **{f"negative_{i}": [] for i in range(1, k + 1)}}
    if scores:
        columns["scores"] = []
    dropped = 0
    for q, p, negatives, dists, d_qp in _rows(mined):
        if len(negatives) < k:
            dropped += 1
            continue
        columns[anchor].append(q)
        columns[positive].append(p)
        for i, n in enumerate(negatives[:k], start=1):
            columns[f"negative_{i}"].append(n)
        if scores:
            columns["scores"].append([mined.score(d_qp)] + [mined.score(d) for d in dists[:k]])
    return columns, dropped


def _labeled_pair(mined: _PairsView, anchor: str, positive: str, scores: bool):
    label = "score" if scores else "label"
    columns: dict[str, list] = {anchor: [], positive: [], label: []}
    by_query: dict[str, tuple[list, dict]] = {}
    for q, p, negatives, dists, d_qp in _rows(mined):
        positives, negs = by_query.setdefault(q, ([], {}))
        positives.append((p, d_qp))
        for n, d in zip(negatives, dists):
            negs.setdefault(n, d)
    for q, (positives, negs) in by_query.items():
        for text, d, value in [(p, d, 1) for p, d in positives] + [(n, d, 0) for n, d in negs.items()]:
            columns[anchor].append(q)
            columns[positive].append(text)
            columns[label].append(mined.score(d) if scores else value)
    return columns, 0


def _labeled_list(mined: _PairsView, anchor: str, positive: str, scores: bool):
    label = "scores" if scores else "labels"
    columns: dict[str, list] = {anchor: [], positive: [], label: []}
    dropped = 0
    for q, p, negatives, dists, d_qp in _rows(mined):
        if not negatives:
            dropped += 1
            continue
        columns[anchor].append(q)
        columns[positive].append([p] + list(negatives))
        if scores:
            columns[label].append([mined.score(d_qp)] + [mined.score(d) for d in dists])
        else:
            columns[label].append([1] + [0] * len(negatives))
    return columns, dropped


_LAYOUTS = {
    "triplet": _triplet,
    "n-tuple": _n_tuple,
    "labeled-pair": _labeled_pair,
    "labeled-list": _labeled_list,
}


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
