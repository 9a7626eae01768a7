"""What ``hn-trainer mine`` writes besides its own triples: sentence-transformers layouts, a dataset card, and
the push to the Hugging Face Hub.

``--output_format triplet|n-tuple|labeled-pair|labeled-list`` writes ``dataset/`` (``save_to_disk``) and
``dataset.jsonl`` with the columns of sentence-transformers' ``mine_hard_negatives``, which
``SentenceTransformerTrainer`` and ``CrossEncoderTrainer`` take as they are. The first two columns are named
after the input's query and positive columns for pairs data, ``query`` and ``positive`` for BEIR data.

``--push_to_hub --hub_dataset_id USER/NAME`` uploads that dataset (or the triples, without
``--output_format``) with ``Dataset.push_to_hub`` and a dataset card (``README.md``, also written to the output
folder) saying how it was mined: data, encoders, PCA, sampler, conditions, fallback, statistics.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from hn_trainer.errors import ConfigError

CARD_TAGS = ["sentence-transformers", "hard-negatives", "hn-trainer"]
PAPER = "https://arxiv.org/abs/2505.18366"


def sentence_transformers_dataset(mined, data, *, output_format: str, num_negatives: int, metric: str,
                                  output_scores: bool = False):
    """`MinedPairs` in a sentence-transformers layout (`hn_trainer.mining.hard_negatives.sentence_transformers_layout`).

    Raises:
        ConfigError: ``output_scores`` for a sampler that has no vectors (``bm25``, ``random``).
    """
    from hn_trainer.mining.hard_negatives import sentence_transformers_layout
    from hn_trainer.mining.kernel import decision_distances

    pairs = mined.dataset
    if output_scores:
        if mined.query_embeddings is None:
            raise ConfigError(f"--output_scores: method {mined.stats['method']!r} has no distances to report")
        q_row = {q: i for i, q in enumerate(mined.query_ids)}
        d_row = {d: i for i, d in enumerate(mined.corpus_ids)}
        rows = torch.tensor([[q_row[q], d_row[d]] for q, d in zip(pairs["query_id"], pairs["positive_id"])],
                            dtype=torch.long).reshape(-1, 2)
        d_qp = decision_distances(mined.query_embeddings, mined.corpus_embeddings, rows[:, 0], rows[:, 1:], metric)
        pairs = pairs.add_column("positive_distance", d_qp[:, 0].tolist())
    anchor, positive = data.pair_columns or ("query", "positive")
    return sentence_transformers_layout(
        pairs, output_format, anchor_column_name=anchor, positive_column_name=positive,
        num_negatives=num_negatives, metric=metric, output_scores=output_scores, stats=mined.stats,
    )


def _table(rows: list[tuple[str, Any]]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in rows if value is not None]
    return "\n".join(lines)


def dataset_card(stats: dict, *, repo_id: str | None, columns: list[str], output_format: str | None,
                 folder: str | Path | None = None) -> str:
    """The ``README.md`` of a mined dataset: YAML front matter, how it was mined, statistics, columns, usage
    (loading ``repo_id`` from the Hub, else the saved ``folder``)."""
    import yaml

    front = {"tags": CARD_TAGS, "task_categories": ["text-ranking"], "language": ["en"]}
    if repo_id:
        load = f'from datasets import load_dataset\n\ndataset = load_dataset("{repo_id}", split="train")'
    else:
        load = f'from datasets import load_from_disk\n\ndataset = load_from_disk("{folder or "."}")'
    settings = stats.get("settings", {})
    mining = settings.get("mining", {})
    how = [
        ("Source data", f"{stats.get('data')} (split `{stats.get('split')}`)"),
        ("Negative sampler", f"`{stats.get('method')}`"),
        ("Encoders (ensemble)", ", ".join(f"`{e}`" for e in stats.get("encoders", [])) or None),
        ("Dimensions per encoder", ", ".join(f"`{k}`: {v}" for k, v in stats.get("per_encoder_dims", {}).items())
         or None),
        ("Concatenated dimension", stats.get("dim_concat")),
        ("PCA", None if "dim_pca" not in stats else
         f"{stats['dim_concat']} -> {stats['dim_pca']} dimensions, variance kept "
         f"{stats['variance_kept']:.3f} (target {stats.get('pca_variance')})"),
        ("Distance", stats.get("metric")),
        ("Conditions", {"both": "d(Q,D) < d(Q,PD) and d(Q,D) < d(PD,D)", "query": "d(Q,D) < d(Q,PD)"}.get(
            stats.get("conditions"), stats.get("conditions"))),
        ("Negatives per pair (pool)", stats.get("num_negatives")),
        ("Fallback for short pairs", mining.get("fallback", "none")),
        ("Seed", mining.get("mining_seed")),
    ]
    counts = [
        ("Pairs", stats.get("pairs")),
        ("Queries", stats.get("queries")),
        ("Documents", stats.get("documents")),
        ("Pairs with no negative" + (" (after the fallback)" if stats.get("fallback", "none") != "none" else ""),
         stats.get("pairs_with_no_negative")),
        (f"Pairs with fewer than {stats.get('num_negatives')}", stats.get("pairs_with_fewer_than_k")),
        ("Distinct negatives per query", f"{stats.get('distinct_negatives_per_query', 0):.2f}"),
    ]
    if stats.get("fallback", "none") != "none":
        counts.append(("Fallback negatives added", f"{stats['fallback_negatives']} to {stats['pairs_topped_up']} "
                       f"pairs ({stats['pairs_without_dual_negative']} had no dual-condition negative)"))
    summary = stats.get("distance_summary") or {}
    for label, key in (("d(Q, PD)", "query_positive"), ("d(Q, HN)", "query_negative")):
        s = summary.get(key) or {}
        if s.get("count"):
            counts.append((label, f"mean {s['mean']:.4f}, quartiles {s['p25']:.4f} / {s['median']:.4f} / "
                           f"{s['p75']:.4f}"))
    if output_format:
        counts.append((f"Rows ({output_format})", stats.get("rows")))
        counts.append(("Pairs dropped by the format", stats.get("pairs_dropped")))
    layout = (f"sentence-transformers' `{output_format}` layout, as `sentence_transformers.util.mine_hard_negatives` "
              "writes it" if output_format else "hn-trainer's mined pairs: one row per (query, positive), its "
              "negatives hardest first")
    trainer = ("SentenceTransformerTrainer` with `MultipleNegativesRankingLoss` or `CrossEncoderTrainer"
               if output_format in ("triplet", "n-tuple") else "CrossEncoderTrainer")
    body = f"""# Hard negatives mined with hn-trainer

Hard negatives for (query, positive) pairs, mined as in "Hard Negative Mining for Domain-Specific Retrieval in
Enterprise Systems" (ACL 2025, {PAPER}): every query
and document is embedded with an ensemble of encoders, the normalised embeddings are concatenated and reduced
with PCA, and for each pair (Q, PD) the negatives are the documents D closest to Q with
d(Q, D) < d(Q, PD) (harder than the positive) and d(Q, D) < d(PD, D) (closer to the query than to the
positive, a guard against unlabelled positives).

## How it was mined

{_table(how)}

## Statistics

{_table(counts)}

## Columns

{layout}: {", ".join(f"`{c}`" for c in columns)}.

## Usage

```python
{load}
```

The columns feed sentence-transformers' `{trainer}` as they are.
"""
    return f"---\n{yaml.safe_dump(front, sort_keys=False)}---\n\n{body}"


def push_dataset_to_hub(dataset, card: str, repo_id: str, *, private: bool = False, token: str | None = None) -> str:
    """Create the dataset repository, upload the card, then the data (``Dataset.push_to_hub`` keeps the card's
    text and adds its own metadata to it). Returns the repository URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(path_or_fileobj=card.encode("utf-8"), path_in_repo="README.md", repo_id=repo_id,
                    repo_type="dataset", commit_message="Dataset card (hn-trainer)")
    dataset.push_to_hub(repo_id, private=private, token=token, commit_message="Mined hard negatives (hn-trainer)")
    return str(url)


def write_exports(mined, data, out_args, mining_args, output_dir: Path, *, num_negatives: int) -> dict:
    """``dataset/``, ``dataset.jsonl`` (with ``--output_format``) and ``README.md`` in ``output_dir``, then the
    push (with ``--push_to_hub``). Returns what was written and pushed."""
    from hn_trainer.io import atomic_path, write_jsonl, write_text

    written: dict[str, Any] = {}
    dataset = mined.dataset
    if out_args.output_format:
        dataset = sentence_transformers_dataset(
            mined, data, output_format=out_args.output_format, num_negatives=num_negatives,
            metric=mining_args.metric, output_scores=out_args.output_scores,
        )
        layout = json.loads(dataset.info.description)
        mined.stats.update(output_format=out_args.output_format, rows=layout["rows"],
                           pairs_dropped=layout["pairs_dropped"])
        with atomic_path(output_dir / "dataset") as tmp:
            dataset.save_to_disk(str(tmp))
        write_jsonl(output_dir / "dataset.jsonl", dataset)
        written["dataset"] = str(output_dir / "dataset")
    card = dataset_card(mined.stats, repo_id=out_args.hub_dataset_id, columns=list(dataset.column_names),
                        output_format=out_args.output_format,
                        folder=output_dir / ("dataset" if out_args.output_format else "triples"))
    write_text(output_dir / "README.md", card)
    if out_args.push_to_hub:
        written["hub"] = push_dataset_to_hub(dataset, card, out_args.hub_dataset_id, private=out_args.hub_private,
                                             token=out_args.hub_token)
    return written
