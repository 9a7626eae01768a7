"""The `mine` command: data -> ensemble embeddings -> PCA -> negatives -> triples on disk."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from hn_trainer.config import DataArguments, MineOutputArguments, MiningArguments
from hn_trainer.data import RetrievalData, load_beir, split_queries
from hn_trainer.errors import HNTrainerError
from hn_trainer.io import atomic_path, write_json, write_jsonl, write_npy

logger = logging.getLogger(__name__)

EMBEDDING_METHODS = {"dual_condition", "dense_topk", "positive_aware"}


@dataclass
class MinedTriples:
    """Negatives chosen for each (query, positive) pair of a split, with the vectors they came from."""

    data: RetrievalData
    query_ids: list[str]
    pairs: list[tuple[str, str]]
    negative_ids: list[list[str]]
    negative_distances: list[list[float]]
    query_embeddings: np.ndarray | None
    corpus_embeddings: np.ndarray | None
    stats: dict

    def rows(self):
        """One dict per (query, positive), the layout of ``triples.jsonl``."""
        queries = dict(zip(self.data.queries["_id"], self.data.queries["text"]))
        docs = dict(zip(self.data.corpus["_id"], self.data.document_texts()))
        for (q, p), negs in zip(self.pairs, self.negative_ids):
            yield {
                "query_id": q,
                "query": queries[q],
                "positive_id": p,
                "positive": docs[p],
                "negative_ids": negs,
                "negatives": [docs[n] for n in negs],
            }


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
    }


def load_data(data_args: DataArguments) -> RetrievalData:
    """Load the dataset and apply the split options of `data_args`."""
    data = load_beir(data_args.data, qrels=data_args.qrels)
    if data_args.num_train_queries is not None:
        data = split_queries(
            data, data_args.num_train_queries, seed=data_args.split_seed,
            train_name=data_args.split, test_name=data_args.eval_split,
        )
    return data


def split_pairs(data: RetrievalData, split: str, max_queries: int | None = None) -> list[tuple[str, str]]:
    pairs = data.pairs(split)
    if max_queries is not None:
        keep = set(list(dict.fromkeys(q for q, _ in pairs))[:max_queries])
        pairs = [(q, d) for q, d in pairs if q in keep]
    if not pairs:
        raise HNTrainerError(f"split {split!r} of {data.name} has no (query, positive) pairs")
    return pairs


def all_positives(data: RetrievalData) -> dict[str, set[str]]:
    """Every document judged relevant to each query, across all splits: none may be a negative."""
    out: dict[str, set[str]] = {}
    for split in data.splits:
        for q, docs in data.relevant(split).items():
            out.setdefault(q, set()).update(docs)
    return out


def mine(
    data_args: DataArguments,
    mining_args: MiningArguments,
    num_negatives: int = 1,
    data: RetrievalData | None = None,
) -> MinedTriples:
    """Run the mining half of the method and return the triples (nothing is written)."""
    from hn_trainer.embeddings import build_ensemble_embeddings
    from hn_trainer.mining.samplers import MiningInputs

    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    data = data if data is not None else load_data(data_args)
    pairs = split_pairs(data, data_args.split, data_args.max_train_queries)
    seconds["load"] = time.perf_counter() - t0

    query_ids = list(dict.fromkeys(q for q, _ in pairs))
    q_row = {q: i for i, q in enumerate(query_ids)}
    doc_ids = list(data.corpus["_id"])
    d_row = data.corpus_index()
    positives_by_query = all_positives(data)
    positives = [sorted(d_row[d] for d in positives_by_query[q]) for q in query_ids]
    pair_tensor = torch.tensor([[q_row[q], d_row[d]] for q, d in pairs], dtype=torch.long)
    query_index = data.query_index()
    queries = data.queries.select([query_index[q] for q in query_ids])

    q_emb = c_emb = None
    stats: dict = {"data": data.name, "split": data_args.split, "method": mining_args.method}
    if mining_args.method in EMBEDDING_METHODS:
        ens = build_ensemble_embeddings(
            data.corpus,
            queries,
            mining_args.encoder_list,
            pca_variance=mining_args.pca_variance,
            cache_dir=mining_args.cache_dir,
            batch_size=mining_args.embedding_batch_size,
        )
        q_emb, c_emb = ens.query_embeddings, ens.corpus_embeddings
        seconds.update({f"embed_{k}": v for k, v in ens.seconds.items()})
        stats.update(
            encoders=mining_args.encoder_list,
            per_encoder_dims=ens.per_encoder_dims,
            dim_concat=ens.dim_concat,
            dim_pca=ens.dim_pca,
            pca_variance=mining_args.pca_variance,
            variance_kept=ens.variance_kept,
        )

    t0 = time.perf_counter()
    sampler = configured_sampler(mining_args.method, sampler_settings(mining_args))
    inputs = MiningInputs(
        queries=list(queries["text"]),
        documents=data.document_texts(),
        pairs=pair_tensor,
        positives=positives,
        query_embeddings=None if q_emb is None else torch.from_numpy(q_emb),
        corpus_embeddings=None if c_emb is None else torch.from_numpy(c_emb),
    )
    result = sampler.mine(inputs, num_negatives)
    seconds["mine"] = time.perf_counter() - t0

    negative_ids, negative_distances = [], []
    for idx_row, dist_row in zip(result.indices.tolist(), result.distances.tolist()):
        keep = [(i, d) for i, d in zip(idx_row, dist_row) if i >= 0]
        negative_ids.append([doc_ids[i] for i, _ in keep])
        negative_distances.append([float(d) for _, d in keep])
    found = [len(n) for n in negative_ids]
    stats.update(
        pairs=len(pairs),
        queries=len(query_ids),
        documents=len(doc_ids),
        num_negatives=num_negatives,
        metric=mining_args.metric,
        conditions=mining_args.conditions,
        pairs_with_no_negative=sum(1 for n in found if n == 0),
        pairs_with_fewer_than_k=sum(1 for n in found if n < num_negatives),
        negatives=sum(found),
        seconds=seconds,
    )
    if q_emb is not None:
        stats["distance_summary"] = distance_summary(q_emb, c_emb, pair_tensor, negative_distances, mining_args.metric)
    return MinedTriples(data, query_ids, pairs, negative_ids, negative_distances, q_emb, c_emb, stats)


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
    lines.append("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stats["seconds"].items()))
    return "\n".join(lines)


def save_mined(mined: MinedTriples, output_dir: str | Path, *, save_embeddings: bool = False) -> Path:
    """Write triples (``triples/`` via `save_to_disk` and ``triples.jsonl``), ``stats.json`` and
    optionally the vectors; each file lands atomically, ``stats.json`` last."""
    import datasets

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = list(mined.rows())
    features = datasets.Features(
        {
            "query_id": datasets.Value("string"),
            "query": datasets.Value("string"),
            "positive_id": datasets.Value("string"),
            "positive": datasets.Value("string"),
            "negative_ids": datasets.List(datasets.Value("string")),
            "negatives": datasets.List(datasets.Value("string")),
        }
    )
    table = datasets.Dataset.from_list(rows, features=features)
    with atomic_path(output_dir / "triples") as tmp:
        table.save_to_disk(str(tmp))
    write_jsonl(output_dir / "triples.jsonl", rows)
    if save_embeddings:
        if mined.query_embeddings is None:
            raise HNTrainerError(f"--save_embeddings: method {mined.stats['method']!r} uses no embeddings")
        write_npy(output_dir / "query_embeddings.npy", np.ascontiguousarray(mined.query_embeddings, dtype=np.float32))
        write_npy(output_dir / "corpus_embeddings.npy", np.ascontiguousarray(mined.corpus_embeddings, dtype=np.float32))
        write_json(output_dir / "query_ids.json", mined.query_ids)
        write_json(output_dir / "corpus_ids.json", list(mined.data.corpus["_id"]))
    mined.stats["seconds"]["write"] = time.perf_counter() - t0
    write_json(output_dir / "stats.json", mined.stats)
    return output_dir


def run_mine(data_args: DataArguments, mining_args: MiningArguments, out_args: MineOutputArguments) -> dict:
    """Entry point of ``hn-trainer mine``."""
    mined = mine(data_args, mining_args, out_args.num_negatives)
    mined.stats["settings"] = {"data": asdict(data_args), "mining": asdict(mining_args)}
    save_mined(mined, out_args.output_dir, save_embeddings=out_args.save_embeddings)
    logger.info("mining statistics\n%s", format_stats(mined.stats))
    print(format_stats(mined.stats))
    print(f"wrote {out_args.output_dir}")
    return mined.stats
