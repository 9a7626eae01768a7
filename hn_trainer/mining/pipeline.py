"""Mining: data -> ensemble embeddings -> PCA -> negatives per (query, positive) pair, for `mine` and `train`."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hn_trainer.config import DataArguments, MineOutputArguments, MiningArguments
from hn_trainer.data import RetrievalData, load_beir, split_queries
from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.io import atomic_path, run_marker, write_json, write_jsonl, write_npy

logger = logging.getLogger(__name__)

EMBEDDING_METHODS = {"dual_condition", "dense_topk", "positive_aware"}


MINED_FEATURES = {
    "query_id": "string",
    "query": "string",
    "positive_id": "string",
    "positive": "string",
    "negative_ids": ["string"],
    "negatives": ["string"],
    "negative_distances": ["float32"],
}
"""Columns of a mined-pairs dataset: one row per (query, positive), its negatives hardest first."""


@dataclass
class MinedPairs:
    """What mining returns: the pairs with their negatives, statistics, and the vectors they came from.

    Attributes:
        dataset: A `datasets.Dataset` with the columns of `MINED_FEATURES` (``hn-trainer mine`` saves it as
            ``triples/``; `hn_trainer.training.HardNegativeDataset.from_mined` trains on it).
        stats: Counts, dimensions, distances and seconds (``stats.json``).
        query_ids: Ids of the mined queries, the rows of ``query_embeddings``.
        query_embeddings: ``[n_queries, d]`` vectors the negatives were chosen in (``None`` for text samplers).
        corpus_embeddings: ``[n_documents, d]``, in corpus order.
        ensemble: The `EnsembleEmbeddings` that produced them (its ``encode`` projects new texts with the same
            PCA), or ``None``.
        corpus_ids: Ids of the corpus documents, the rows of ``corpus_embeddings``.
    """

    dataset: Any
    stats: dict
    query_ids: list[str]
    query_embeddings: np.ndarray | None = None
    corpus_embeddings: np.ndarray | None = None
    ensemble: Any = None
    corpus_ids: list[str] = field(default_factory=list)


def configured_sampler(name: str, settings: dict, **kwargs):
    """The sampler registered as `name`, given those of `settings` (not ``None``) its constructor takes,
    and every one of `kwargs` (an argument it does not take is an error).

    One configuration serves every method: the kernel's block sizes mean nothing to BM25, a seed
    nothing to the dense samplers.
    """
    import inspect

    from hn_trainer.mining.samplers import SAMPLERS, get_sampler

    names: set[str] = set()
    for klass in getattr(SAMPLERS.get(name), "__mro__", ()):
        init = klass.__dict__.get("__init__")
        if init is not None:
            names |= set(inspect.signature(init).parameters)
    return get_sampler(name, **{k: v for k, v in settings.items() if k in names and v is not None}, **kwargs)


def sampler_settings(mining_args: MiningArguments) -> dict:
    """What a sampler may take from the mining configuration."""
    return {
        "metric": mining_args.metric,
        "conditions": mining_args.conditions,
        "seed": mining_args.mining_seed,
        "perc": mining_args.positive_aware_ratio,
        "query_block_size": mining_args.query_block_size,
        "corpus_block_size": mining_args.corpus_block_size,
        "device": mining_args.mining_device,
        "model": mining_args.st_mine_encoder,
        "absolute_margin": mining_args.st_mine_margin,
        "batch_size": mining_args.embedding_batch_size,
    }


def load_data(data_args: DataArguments) -> RetrievalData:
    """Load the dataset (BEIR, or pairs by `hn_trainer.data.pairs.load_pairs`) and apply the split options of
    `data_args`.

    Raises:
        ConfigError: Pairs options (``--query_column``, ``--positive_column``, ``--corpus``,
            ``--corpus_column``) given for BEIR data, where they mean nothing.
    """
    from hn_trainer.data.pairs import detect_format, load_pairs

    options = {name: getattr(data_args, name) for name in ("query_column", "positive_column", "corpus", "corpus_column")}
    given = [f"--{name}" for name, value in options.items() if value is not None]
    data_format = data_args.data_format
    if data_format == "auto":
        data_format = detect_format(data_args.data, pairs_options=bool(given))
    if data_format == "pairs":
        data = load_pairs(data_args.data, split=data_args.split, **options)
    else:
        if given:
            raise ConfigError(f"{', '.join(given)}: options of a pairs dataset, but --data {data_args.data} is BEIR "
                              "data (set --data_format pairs if it is not)")
        data = load_beir(data_args.data, qrels=data_args.qrels)
    if data_args.num_train_queries is not None:
        data = split_queries(
            data, data_args.num_train_queries, seed=data_args.split_seed,
            train_name=data_args.split, test_name=data_args.eval_split,
        )
    return data


def first_queries(pairs: list[tuple[str, str]], max_queries: int | None) -> list[tuple[str, str]]:
    """The pairs of the first ``max_queries`` queries (in order of first appearance); all when ``None``."""
    if max_queries is None:
        return pairs
    keep = set(list(dict.fromkeys(q for q, _ in pairs))[:max_queries])
    return [(q, d) for q, d in pairs if q in keep]


def split_pairs(data: RetrievalData, split: str, max_queries: int | None = None) -> list[tuple[str, str]]:
    pairs = first_queries(data.pairs(split), max_queries)
    if not pairs:
        raise HNTrainerError(f"split {split!r} of {data.name} has no (query, positive) pairs")
    return pairs


def all_positives(data: RetrievalData) -> dict[str, set[str]]:
    """Every document judged for each query, in any split and with any score: none may be a negative."""
    return data.judged()


def mine_pairs(
    data: RetrievalData,
    data_args: DataArguments,
    mining_args: MiningArguments,
    *,
    num_negatives: int | None = None,
    pairs: list[tuple[str, str]] | None = None,
    state=None,
) -> MinedPairs:
    """Mine the negatives of a split's (query, positive) pairs: the one mining path of ``mine`` and ``train``.

    The ensemble (and its PCA) is fitted on the corpus and the mined queries only, never on evaluation queries.
    Every document judged for a query, in any split and with any score, is excluded from its negatives.

    Args:
        data: The dataset.
        data_args: Which split (``split``, ``max_train_queries``).
        mining_args: Encoders, PCA, method, conditions, block sizes, device, pool size.
        num_negatives: Negatives kept per pair (default ``mining_args.pool_size``).
        pairs: The pairs to mine (default: those of ``data_args.split``), e.g. without held-out queries.
        state: An `accelerate.PartialState`: encoding and the kernel are split across its processes.

    Returns:
        `MinedPairs`.
    """
    from hn_trainer.embeddings import build_ensemble_embeddings

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    pairs = pairs if pairs is not None else split_pairs(data, data_args.split, data_args.max_train_queries)
    query_ids = list(dict.fromkeys(q for q, _ in pairs))
    query_index = data.query_index()
    queries = data.queries.select([query_index[q] for q in query_ids])
    stats: dict = {"data": data.name, "split": data_args.split, "method": mining_args.method}
    seconds["load"] = time.perf_counter() - t0
    width = num_negatives or mining_args.pool_size
    ensemble = None
    if mining_args.method in EMBEDDING_METHODS:
        ensemble = build_ensemble_embeddings(
            data.corpus,
            queries,
            mining_args.encoder_list,
            pca_variance=mining_args.pca_variance,
            cache_dir=mining_args.cache_dir,
            batch_size=mining_args.embedding_batch_size,
            device=mining_args.mining_device,
            state=state,
        )
        seconds.update({f"embed_{k}": v for k, v in ensemble.seconds.items()})
        stats.update(
            encoders=mining_args.encoder_list,
            per_encoder_dims=ensemble.per_encoder_dims,
            dim_concat=ensemble.dim_concat,
            dim_pca=ensemble.dim_pca,
            pca_variance=mining_args.pca_variance,
            variance_kept=ensemble.variance_kept,
        )
    q_emb = None if ensemble is None else ensemble.query_embeddings
    c_emb = None if ensemble is None else ensemble.corpus_embeddings
    t0 = time.perf_counter()
    dataset = mine_pairs_from_embeddings(
        query_ids,
        list(queries["text"]),
        list(data.corpus["_id"]),
        data.document_texts(),
        pairs,
        q_emb,
        c_emb,
        num_negatives=width,
        sampler=configured_sampler(mining_args.method, sampler_settings(mining_args)),
        positives=all_positives(data),
        state=state,
    )
    seconds["mine"] = time.perf_counter() - t0
    if q_emb is not None:
        q_row = {q: i for i, q in enumerate(query_ids)}
        d_row = data.corpus_index()
        pair_rows = torch.tensor([[q_row[q], d_row[d]] for q, d in pairs], dtype=torch.long)
    if mining_args.fallback != "none":
        t0 = time.perf_counter()
        dataset, report = _with_fallback(dataset, data, mining_args, width, query_ids, list(queries["text"]),
                                         pair_rows, q_emb, c_emb)
        stats.update(report)
        seconds["fallback"] = time.perf_counter() - t0
    stats["pairs_sharing_hardest_negative_as_mined"] = shared_hardest_negatives(dataset)
    if mining_args.spread_negatives:
        dataset, stats["pools_reordered"] = spread_negatives(dataset)
    stats.update(mined_stats(dataset, width, mining_args), seconds=seconds)
    stats["queries"], stats["documents"] = len(query_ids), len(data.corpus)
    if q_emb is not None:
        stats["distance_summary"] = distance_summary(
            q_emb, c_emb, pair_rows, dataset["negative_distances"], mining_args.metric
        )
    return MinedPairs(dataset, stats, query_ids, q_emb, c_emb, ensemble, corpus_ids=list(data.corpus["_id"]))


def _with_fallback(dataset, data, mining_args, width, query_ids, query_texts, pair_rows, q_emb, c_emb):
    """The mined pairs with each short pool topped up by ``mining_args.fallback``, and what it added."""
    from hn_trainer.mining.fallback import top_up
    from hn_trainer.mining.kernel import MiningResult

    d_row = data.corpus_index()
    doc_ids = list(data.corpus["_id"])
    chosen = [[d_row[d] for d in ids] for ids in dataset["negative_ids"]]
    distances = [list(x) for x in dataset["negative_distances"]]
    judged = all_positives(data)
    never = [{d_row[d] for d in judged.get(q, ()) if d in d_row} for q in query_ids]
    for q, d in pair_rows.tolist():
        never[q].add(d)
    excluded = [sorted(rows) for rows in never]
    before = [len(rows) for rows in chosen]
    added = top_up(mining_args.fallback, chosen, distances, pair_rows, excluded, q_emb, c_emb, width,
                   metric=mining_args.metric, seed=mining_args.mining_seed, device=mining_args.mining_device)
    indices = torch.full((len(chosen), width), -1, dtype=torch.long)
    dists = torch.full((len(chosen), width), float("inf"))
    for i, (rows, x) in enumerate(zip(chosen, distances)):
        indices[i, : len(rows)] = torch.tensor(rows, dtype=torch.long)
        dists[i, : len(x)] = torch.tensor(x)
    pairs = list(zip(dataset["query_id"], dataset["positive_id"]))
    topped = mined_dataset(query_ids, query_texts, doc_ids, data.document_texts(), pairs, MiningResult(indices, dists))
    report = {
        "fallback": mining_args.fallback,
        "pairs_short_of_dual_negatives": sum(1 for n in before if n < width),
        "pairs_without_dual_negative": sum(1 for n in before if n == 0),
        "fallback_negatives": sum(added),
        "pairs_topped_up": sum(1 for n in added if n),
    }
    return topped, report


def mine_pairs_from_embeddings(
    query_ids: list[str],
    query_texts: list[str],
    doc_ids: list[str],
    doc_texts: list[str],
    pairs: list[tuple[str, str]],
    query_embeddings: np.ndarray | torch.Tensor | None,
    corpus_embeddings: np.ndarray | torch.Tensor | None,
    *,
    num_negatives: int,
    sampler: Any = None,
    positives: Mapping[str, Iterable[str]] | None = None,
    state=None,
) -> Any:
    """Mine ``num_negatives`` per (query_id, doc_id) pair with `sampler` and return the mined-pairs dataset.

    Args:
        query_ids, query_texts: The queries (rows of ``query_embeddings``).
        doc_ids, doc_texts: The corpus (rows of ``corpus_embeddings``).
        pairs: ``(query_id, positive_doc_id)``.
        query_embeddings, corpus_embeddings: Vectors, or ``None`` for a sampler that reads texts only.
        num_negatives: Negatives per pair (the pool width).
        sampler: A `NegativeSampler` (default: the dual-condition sampler with its defaults).
        positives: Every document judged for each query id (never a negative); the pairs' positives always are.
        state: An `accelerate.PartialState`: an embedding sampler mines a contiguous slice of the pairs per
            process, gathered in pair order.

    Raises:
        DataError: A pair names an unknown query or document.
    """
    from hn_trainer.errors import DataError
    from hn_trainer.mining.kernel import as_float_tensor
    from hn_trainer.mining.samplers import MiningInputs, get_sampler

    if num_negatives < 1:
        raise ConfigError(f"--pool_size / --num_negatives must be at least 1, got {num_negatives}")
    sampler = sampler if sampler is not None else get_sampler("dual_condition")
    q_index = {q: i for i, q in enumerate(query_ids)}
    d_index = {d: i for i, d in enumerate(doc_ids)}
    rows = []
    for q, d in pairs:
        if q not in q_index:
            raise DataError("training pair names an unknown query", id=q)
        if d not in d_index:
            raise DataError("training pair names an unknown document", id=d)
        rows.append((q_index[q], d_index[d]))
    excluded: list[set[int]] = [set() for _ in query_ids]
    for q, d in rows:
        excluded[q].add(d)
    for q, docs in (positives or {}).items():
        if q in q_index:
            excluded[q_index[q]].update(d_index[d] for d in docs if d in d_index)
    pair_tensor = torch.tensor(rows, dtype=torch.long).reshape(-1, 2)
    inputs = MiningInputs(
        queries=list(query_texts),
        documents=list(doc_texts),
        pairs=pair_tensor,
        positives=[sorted(p) for p in excluded],
        query_embeddings=None if query_embeddings is None else as_float_tensor(query_embeddings),
        corpus_embeddings=None if corpus_embeddings is None else as_float_tensor(corpus_embeddings),
    )
    if state is not None and state.num_processes > 1 and inputs.has_embeddings:
        from hn_trainer.mining.distributed import mine_sharded

        def mine_slice(q_emb, c_emb, pair_slice, positives, k, metric, **_):
            part = MiningInputs(inputs.queries, inputs.documents, pair_slice, positives, q_emb, c_emb)
            return sampler.mine(part, k)

        result = mine_sharded(
            inputs.query_embeddings, inputs.corpus_embeddings, pair_tensor, inputs.positives, num_negatives,
            state=state, mine=mine_slice,
        )
    else:
        result = sampler.mine(inputs, num_negatives)
    return mined_dataset(query_ids, query_texts, doc_ids, doc_texts, pairs, result)


def mined_dataset(query_ids, query_texts, doc_ids, doc_texts, pairs, result) -> Any:
    """The mined-pairs `datasets.Dataset` of a kernel or sampler `MiningResult` (padding dropped)."""
    import datasets

    query_text = dict(zip(query_ids, query_texts))
    d_index = {d: i for i, d in enumerate(doc_ids)}
    columns: dict[str, list] = {name: [] for name in MINED_FEATURES}
    for (q, d), idx_row, dist_row in zip(pairs, result.indices.tolist(), result.distances.tolist()):
        keep = [(i, x) for i, x in zip(idx_row, dist_row) if i >= 0]
        columns["query_id"].append(q)
        columns["query"].append(query_text[q])
        columns["positive_id"].append(d)
        columns["positive"].append(doc_texts[d_index[d]])
        columns["negative_ids"].append([doc_ids[i] for i, _ in keep])
        columns["negatives"].append([doc_texts[i] for i, _ in keep])
        columns["negative_distances"].append([float(x) for _, x in keep])
    features = datasets.Features(
        {
            name: datasets.List(datasets.Value(kind[0])) if isinstance(kind, list) else datasets.Value(kind)
            for name, kind in MINED_FEATURES.items()
        }
    )
    return datasets.Dataset.from_dict(columns, features=features)


def shared_hardest_negatives(dataset: Any) -> int:
    """Pairs whose hardest negative is that of an earlier pair of the same query."""
    seen: dict[str, set[str]] = {}
    shared = 0
    for q, negs in zip(dataset["query_id"], dataset["negative_ids"]):
        if negs:
            first = seen.setdefault(q, set())
            shared += negs[0] in first
            first.add(negs[0])
    return shared


def spread_negatives(dataset: Any) -> tuple[Any, int]:
    """Reorder the pools of a query's pairs so that each pair leads with a hardest negative no earlier pair of
    the query leads with, where its pool has one.

    Pairs are taken in dataset order; a pair's pool becomes its negatives not yet used to lead, closest first,
    followed by the used ones, closest first. Nothing is added or dropped: each negative still satisfies the
    conditions for its own pair, and a query with one positive keeps its pool as mined.

    Returns:
        The dataset with reordered ``negative_ids``, ``negatives`` and ``negative_distances``, and how many pools
        changed order.
    """
    import datasets

    columns = {name: list(dataset[name]) for name in dataset.column_names}
    leading: dict[str, set[str]] = {}
    reordered = 0
    for i, q in enumerate(columns["query_id"]):
        ids = columns["negative_ids"][i]
        if not ids:
            continue
        used = leading.setdefault(q, set())
        order = [j for j, d in enumerate(ids) if d not in used] + [j for j, d in enumerate(ids) if d in used]
        if order != list(range(len(ids))):
            reordered += 1
            for name in ("negative_ids", "negatives", "negative_distances"):
                columns[name][i] = [columns[name][i][j] for j in order]
        used.add(columns["negative_ids"][i][0])
    return datasets.Dataset.from_dict(columns, features=dataset.features), reordered


def mined_stats(dataset: Any, num_negatives: int, mining_args: MiningArguments) -> dict:
    """Counts of what mining found: pairs, pairs with no or too few negatives, distinct negatives per query."""
    found = [len(n) for n in dataset["negative_ids"]]
    per_query: dict[str, set[str]] = {}
    for q, negs in zip(dataset["query_id"], dataset["negative_ids"]):
        per_query.setdefault(q, set()).update(negs)
    return {
        "pairs_sharing_hardest_negative": shared_hardest_negatives(dataset),
        "pairs": len(found),
        "num_negatives": num_negatives,
        "metric": mining_args.metric,
        "conditions": mining_args.conditions,
        "pairs_with_no_negative": sum(1 for n in found if n == 0),
        "pairs_with_fewer_than_k": sum(1 for n in found if n < num_negatives),
        "negatives": sum(found),
        "distinct_negatives_per_query": float(np.mean([len(v) for v in per_query.values()])) if per_query else 0.0,
    }


def distance_summary(q_emb, c_emb, pairs, negative_distances, metric: str) -> dict:
    """Mean / quartiles of d(Q, PD) and of d(Q, HN): the statistics table users check after mining."""
    q = torch.from_numpy(q_emb)[pairs[:, 0]]
    p = torch.from_numpy(c_emb)[pairs[:, 1]]
    if metric == "cosine":
        qp = 1 - torch.nn.functional.cosine_similarity(q, p, dim=1)
    else:
        qp = torch.linalg.vector_norm(q - p, dim=1)
    negs = torch.tensor([d for row in negative_distances for d in row], dtype=torch.float32)

    def describe(x: torch.Tensor) -> dict:
        if x.numel() == 0:
            return {"count": 0}
        qs = torch.quantile(x.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
        return {"count": int(x.numel()), "mean": float(x.mean()), "p25": qs[0], "median": qs[1], "p75": qs[2]}

    return {"query_positive": describe(qp), "query_negative": describe(negs)}


def format_stats(stats: dict) -> str:
    """A short table of what mining found, for the log."""
    lines = [
        f"pairs: {stats['pairs']} ({stats['queries']} queries, {stats['documents']} documents)",
        f"pairs with no negative: {stats['pairs_with_no_negative']}"
        f" ({100 * stats['pairs_with_no_negative'] / max(stats['pairs'], 1):.1f}%)",
        f"pairs with fewer than {stats['num_negatives']}: {stats['pairs_with_fewer_than_k']}",
        f"distinct negatives per query: {stats['distinct_negatives_per_query']:.2f}; pairs leading with the "
        f"hardest negative of an earlier pair of their query: {stats['pairs_sharing_hardest_negative']}"
        + (f" ({stats['pairs_sharing_hardest_negative_as_mined']} as mined)"
           if "pairs_sharing_hardest_negative_as_mined" in stats else ""),
    ]
    if "dim_concat" in stats:
        lines.append(
            f"encoders: {', '.join(stats['encoders'])}; dims {stats['dim_concat']} -> {stats['dim_pca']}"
            f" (variance kept {stats['variance_kept']:.3f})"
        )
    summary = stats.get("distance_summary")
    if summary:
        for name, key in (("d(Q, PD)", "query_positive"), ("d(Q, HN)", "query_negative")):
            s = summary[key]
            if s.get("count"):
                lines.append(f"{name}: mean {s['mean']:.4f}, quartiles {s['p25']:.4f} / {s['median']:.4f} / {s['p75']:.4f}")
    if stats.get("fallback", "none") != "none":
        lines.append(f"fallback {stats['fallback']!r}: {stats['fallback_negatives']} negatives added to "
                     f"{stats['pairs_topped_up']} pairs ({stats['pairs_without_dual_negative']} had no "
                     "dual-condition negative)")
    if "output_format" in stats:
        lines.append(f"{stats['output_format']}: {stats['rows']} rows; {stats['pairs_dropped']} pairs dropped "
                     "for lack of negatives")
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["seconds"].items()))
    return "\n".join(lines)


def save_mined(mined: MinedPairs, output_dir: str | Path, *, save_embeddings: bool = False, exports=None) -> Path:
    """Write the mined pairs (``triples/`` via `save_to_disk`, ``triples.jsonl``), ``stats.json`` and
    optionally the vectors; each file lands atomically, and the folder's ``COMPLETE`` marker is removed
    before the first write and written after the last (`hn_trainer.io.run_marker`). ``exports(output_dir)``,
    when given, writes more files (`hn_trainer.mining.export.write_exports`) before the stats and the marker."""
    output_dir = Path(output_dir)
    if save_embeddings and mined.query_embeddings is None:
        raise HNTrainerError(f"--save_embeddings: method {mined.stats['method']!r} uses no embeddings")
    t0 = time.perf_counter()
    with run_marker(output_dir) as marker:
        if exports is not None:
            mined.stats["exports"] = exports(output_dir)
        with atomic_path(output_dir / "triples") as tmp:
            mined.dataset.save_to_disk(str(tmp))
        write_jsonl(output_dir / "triples.jsonl", mined.dataset)
        if save_embeddings:
            write_npy(output_dir / "query_embeddings.npy", np.ascontiguousarray(mined.query_embeddings, dtype=np.float32))
            write_npy(output_dir / "corpus_embeddings.npy", np.ascontiguousarray(mined.corpus_embeddings, dtype=np.float32))
            write_json(output_dir / "query_ids.json", mined.query_ids)
            write_json(output_dir / "corpus_ids.json", mined.corpus_ids)
        mined.stats["seconds"]["write"] = time.perf_counter() - t0
        write_json(output_dir / "stats.json", mined.stats)
        marker.update(pairs=mined.stats["pairs"], method=mined.stats["method"])
    return output_dir


def run_mine(data_args: DataArguments, mining_args: MiningArguments, out_args: MineOutputArguments) -> dict:
    """Entry point of ``hn-trainer mine``."""
    from accelerate import PartialState

    prepare_output_dir(out_args.output_dir)
    data = load_data(data_args)
    state = PartialState()
    mined = mine_pairs(data, data_args, mining_args, num_negatives=out_args.num_negatives, state=state)
    mined.stats["settings"] = {"data": asdict(data_args), "mining": asdict(mining_args)}
    if state.is_main_process:
        from hn_trainer.mining.export import write_exports

        width = out_args.num_negatives or mining_args.pool_size
        save_mined(mined, out_args.output_dir, save_embeddings=out_args.save_embeddings,
                   exports=lambda folder: write_exports(mined, data, out_args, mining_args, folder, num_negatives=width))
        print(format_stats(mined.stats))
        print(f"wrote {out_args.output_dir}")
    return mined.stats


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder and check that it can be written, before any slow work starts.

    Raises:
        ConfigError: The path is a file, lies under a file, or cannot be written.
    """
    import tempfile

    path = Path(path)
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--output_dir {path}: {parent} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise ConfigError(f"--output_dir {path}: cannot write there ({e.strerror or e})") from None
    return path
