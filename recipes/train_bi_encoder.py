"""Fine-tune a sentence-transformers bi-encoder on hn-trainer's hard negatives.

The negatives serve both kinds of model: `hn_trainer.mine_hard_negatives` lays them out as sentence-transformers'
own ``mine_hard_negatives`` does, so its ``n-tuple`` output (query, positive, negative_1 ... negative_n) goes to
``SentenceTransformerTrainer`` with ``MultipleNegativesRankingLoss`` as it is: each query is contrasted with its
positive, its own hard negatives, and every other text of the batch.

    python recipes/train_bi_encoder.py --pairs pairs.jsonl --corpus corpus.jsonl \
        --model sentence-transformers/all-MiniLM-L6-v2 --output_dir runs/bi-encoder

``--pairs`` and ``--corpus`` take what ``hn-trainer mine --data`` takes for pairs: a JSONL, CSV, TSV or Parquet
file or a Hub dataset id, the query and positive in the first two columns (or ``--query_column``,
``--positive_column``).
"""

from __future__ import annotations

import argparse
import sys


def train_bi_encoder(
    pairs,
    model_name_or_path: str,
    output_dir: str,
    *,
    corpus=None,
    encoders=("sentence-transformers/all-MiniLM-L6-v2", "lsa"),
    num_negatives: int = 3,
    fallback: str = "condition2",
    num_train_epochs: float = 1.0,
    max_steps: int = -1,
    batch_size: int = 16,
    learning_rate: float = 2e-5,
    seed: int = 42,
    cache_dir=None,
):
    """Mine ``num_negatives`` hard negatives per pair, then fine-tune ``model_name_or_path`` on the n-tuples.

    Args:
        pairs: A `datasets.Dataset` of (query, positive) rows, the query first.
        corpus: Further documents negatives may come from (texts, a column, or a Dataset).
        fallback: Pairs short of dual-condition negatives: ``"condition2"`` tops them up with documents closer
            to the query than to the positive, ``"none"`` drops them (``n-tuple`` needs every negative).

    Returns:
        The trained `SentenceTransformer`, also saved to ``output_dir/final``.
    """
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.losses import MultipleNegativesRankingLoss

    from hn_trainer import mine_hard_negatives

    train = mine_hard_negatives(pairs, encoders=list(encoders), corpus=corpus, num_negatives=num_negatives,
                                output_format="n-tuple", fallback=fallback, cache_dir=cache_dir, seed=seed)
    model = SentenceTransformer(model_name_or_path)
    args = SentenceTransformerTrainingArguments(
        output_dir=output_dir, num_train_epochs=num_train_epochs, max_steps=max_steps,
        per_device_train_batch_size=batch_size, learning_rate=learning_rate, warmup_ratio=0.1, seed=seed,
        batch_sampler="no_duplicates",  # in-batch negatives that repeat a query's own positive would be false ones
        save_strategy="no", report_to="none", logging_steps=10,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=train,
                                         loss=MultipleNegativesRankingLoss(model))
    trainer.train()
    model.save(f"{output_dir}/final")
    return model


def main(argv: list[str] | None = None) -> int:
    from hn_trainer.data.pairs import pair_columns, read_table, text_column

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", required=True, help="Pairs file or Hub dataset id.")
    parser.add_argument("--corpus", default=None, help="Corpus file or Hub id (default: the positives).")
    parser.add_argument("--query_column", default=None)
    parser.add_argument("--positive_column", default=None)
    parser.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="Bi-encoder to fine-tune.")
    parser.add_argument("--encoders", default="sentence-transformers/all-MiniLM-L6-v2,lsa", help="Mining ensemble.")
    parser.add_argument("--num_negatives", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-5)
    parser.add_argument("--output_dir", default="runs/bi-encoder")
    args = parser.parse_args(argv)

    table = read_table(args.pairs)
    query, positive = pair_columns(table, args.query_column, args.positive_column)
    pairs = table.to_dataset([query, positive])
    corpus = None
    if args.corpus:
        corpus_table = read_table(args.corpus)
        corpus = corpus_table.texts(text_column(corpus_table, None))
    train_bi_encoder(pairs, args.model, args.output_dir, corpus=corpus, encoders=args.encoders.split(","),
                     num_negatives=args.num_negatives, num_train_epochs=args.epochs, batch_size=args.batch_size,
                     learning_rate=args.learning_rate)
    print(f"saved {args.output_dir}/final (loads with SentenceTransformer({args.output_dir + '/final'!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
