"""Where mined negatives sit in the first stage's ranking of their query.

A reranker is trained on (query, positive, negative) triples and then reranks the first stage's top k. This
script reads the ``triples.jsonl`` files that ``hn-trainer mine`` writes (one per way of choosing negatives)
and, ranking the whole corpus for each query with the first-stage encoder (dense, cosine, as the recipe's
first stage), reports per file: how many pairs have a negative, how often the positive is the first stage's
first document, and where each pair's first negative falls: its median rank, the share inside the top k, and
the share ranked above the positive (documents the first stage prefers to the judged one: the hardest, and the
likeliest to be unjudged relevant ones).

Example (SciFact's training pairs, the recipe's ensemble; embeddings come from the embedding cache):
    hn-trainer mine --config recipes/configs/scifact.yaml --method dual_condition \\
        --output_dir runs/negatives/dual_condition
    python benchmarks/negative_ranks.py --data ../shared/data/scifact runs/negatives/*/triples.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def negative_ranks(triples: list[dict], corpus_ids: list[str], query_vectors: np.ndarray,
                   corpus_vectors: np.ndarray, *, top_k: int = 20) -> dict:
    """Rank statistics of each pair's first negative and its positive in the cosine ranking of the corpus.

    ``query_vectors[i]`` embeds ``triples[i]["query"]``; ranks start at 1."""
    row_of = {doc_id: row for row, doc_id in enumerate(corpus_ids)}
    q = query_vectors / np.linalg.norm(query_vectors, axis=1, keepdims=True)
    c = corpus_vectors / np.linalg.norm(corpus_vectors, axis=1, keepdims=True)
    scores = q @ c.T
    positive_ranks, negative_ranks_, above = [], [], []
    for i, triple in enumerate(triples):
        row = scores[i]
        positive_rank = int((row > row[row_of[triple["positive_id"]]]).sum()) + 1
        positive_ranks.append(positive_rank)
        if triple["negative_ids"]:
            negative_rank = int((row > row[row_of[triple["negative_ids"][0]]]).sum()) + 1
            negative_ranks_.append(negative_rank)
            above.append(negative_rank < positive_rank)
    negatives = np.asarray(negative_ranks_)
    return {
        "pairs": len(triples),
        "pairs_with_a_negative": len(negatives),
        "positive_ranked_first": float(np.mean(np.asarray(positive_ranks) == 1)),
        "negative_rank_median": float(np.median(negatives)) if len(negatives) else None,
        f"negative_in_top_{top_k}": float(np.mean(negatives <= top_k)) if len(negatives) else None,
        "negative_above_positive": float(np.mean(above)) if above else None,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("triples", nargs="+", help="triples.jsonl files written by `hn-trainer mine`.")
    parser.add_argument("--data", required=True, help="The BEIR folder the triples were mined from.")
    parser.add_argument("--first_stage_encoder", default="sentence-transformers/all-MiniLM-L6-v2")
    parser.add_argument("--top_k", type=int, default=20, help="The first stage's candidates (the recipe's 20).")
    parser.add_argument("--out", help="Also write the statistics to this JSON file.")
    args = parser.parse_args(argv)

    from hn_trainer.data.beir import load_beir
    from hn_trainer.embeddings.cache import CachedEncoder
    from hn_trainer.embeddings.encoders import load_encoder
    from hn_trainer.io import write_json

    data = load_beir(args.data)
    corpus_ids = list(data.corpus["_id"])
    encoder = CachedEncoder.create(load_encoder(args.first_stage_encoder))
    corpus_vectors = np.asarray(encoder.encode(data.document_texts()), dtype=np.float32)
    report = {"data": args.data, "first_stage_encoder": args.first_stage_encoder, "files": {}}
    for path in args.triples:
        triples = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        query_vectors = np.asarray(encoder.encode([t["query"] for t in triples]), dtype=np.float32)
        stats = negative_ranks(triples, corpus_ids, query_vectors, corpus_vectors, top_k=args.top_k)
        report["files"][path] = stats
        print(f"{path}: {json.dumps(stats)}")
    if args.out:
        write_json(args.out, report, indent=1)


if __name__ == "__main__":
    main()
