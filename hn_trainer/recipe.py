"""The training recipe: mine, fine-tune a cross-encoder, evaluate, save (and push).

Shared by ``hn-trainer train``, ``hn-trainer evaluate``, ``hn-trainer demo`` and
``recipes/train_reranker.py`` (which `accelerate launch` runs on one or several processes).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hn_trainer.config import DataArguments, MiningArguments, parse_args
from hn_trainer.data import RetrievalData
from hn_trainer.errors import HNTrainerError
from hn_trainer.io import write_json

logger = logging.getLogger(__name__)

OFFLINE_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@dataclass
class RecipeArguments:
    """The model and evaluation set-up of a training run."""

    model_name_or_path: str = field(
        default=OFFLINE_BASE_MODEL,
        metadata={"help": "Base reranker: any AutoModelForSequenceClassification checkpoint or CrossEncoder "
                  "(one output), or an encoder that gets a fresh one-logit head."},
    )
    mined_dir: str | None = field(
        default=None, metadata={"help": "Train on the triples a `hn-trainer mine` run wrote here instead of mining."}
    )
    first_stage: Literal["bm25", "dense", "ensemble"] = field(
        default="dense", metadata={"help": "First-stage retriever whose top K the reranker reorders at evaluation."}
    )
    first_stage_encoder: str = field(
        default=OFFLINE_BASE_MODEL, metadata={"help": "Encoder of the 'dense' first stage."}
    )
    warm_start: Literal["none", "titles"] = field(
        default="none",
        metadata={"help": "'titles': before the main training, adapt the reranker to the domain on "
                  "(document title, document body) pseudo-queries with mined negatives (no labels needed)."},
    )
    warm_start_negatives: Literal["dense_topk", "dual_condition", "random"] = field(
        default="dense_topk",
        metadata={"help": "Negatives of the warm-start stage, mined in the same vector space. A title sits so close "
                  "to its own document that the dual condition rarely finds a negative for it (those pairs "
                  "then get random negatives); 'dense_topk' takes the documents nearest the title."},
    )
    warm_start_epochs: float = field(default=1.0, metadata={"help": "Epochs of the warm-start stage."})
    warm_start_max_pairs: int | None = field(
        default=None, metadata={"help": "Use at most this many title pseudo-queries (seeded draw)."}
    )
    evaluate_base: bool = field(default=True, metadata={"help": "Evaluate the base reranker before training."})
    results_file: str = field(default="results.json", metadata={"help": "Metrics summary, in output_dir."})


def _ensure_device_flags(argv: list[str]) -> list[str]:
    """Fall back to the CPU when no GPU is visible, so `accelerate launch` runs on gloo with several processes."""
    import torch

    if not torch.cuda.is_available() and not any(a.startswith("--use_cpu") for a in argv):
        argv = [*argv, "--use_cpu", "true"]
    return argv


def parse_recipe_args(argv: list[str] | None = None, defaults: dict | None = None):
    """``(DataArguments, MiningArguments, HardNegativeTrainingArguments, RecipeArguments)`` from flags and
    ``--config``; `defaults` fills fields neither sets (the demo's settings)."""
    from hn_trainer.training import HardNegativeTrainingArguments

    argv = sys.argv[1:] if argv is None else list(argv)
    if defaults:
        pre = [x for k, v in defaults.items() if not any(a == f"--{k}" or a.startswith(f"--{k}=") for a in argv)
               for x in (f"--{k}", str(v))]
        argv = pre + argv
    argv = _ensure_device_flags(argv)
    if not any(a == "--output_dir" or a.startswith("--output_dir=") for a in argv):
        argv = ["--output_dir", "runs/reranker", *argv]
    return parse_args((DataArguments, MiningArguments, HardNegativeTrainingArguments, RecipeArguments), argv)


@dataclass
class Embeddings:
    """Ensemble vectors of the corpus and of every query the run touches."""

    corpus: object
    queries: dict
    result: object


def embed(data: RetrievalData, mining_args: MiningArguments, query_ids: list[str], state=None) -> Embeddings:
    """Build the ensemble + PCA vectors of the corpus and of `query_ids` (sharded over the ranks of `state`)."""
    from hn_trainer.embeddings import build_ensemble_embeddings

    index = data.query_index()
    queries = data.queries.select([index[q] for q in query_ids])
    result = build_ensemble_embeddings(
        data.corpus, queries, mining_args.encoder_list,
        pca_variance=mining_args.pca_variance, cache_dir=mining_args.cache_dir,
        batch_size=mining_args.embedding_batch_size, device=mining_args.mining_device, state=state,
    )
    return Embeddings(result.corpus_embeddings, dict(zip(query_ids, result.query_embeddings)), result)


def training_dataset(data, data_args, mining_args, train_args, recipe_args, embeddings):
    """The `HardNegativeDataset` of the training pairs: mined here, or read from ``mined_dir``."""
    import numpy as np

    from hn_trainer.mining.pipeline import all_positives, configured_sampler, sampler_settings, split_pairs
    from hn_trainer.training import HardNegativeDataset

    if recipe_args.mined_dir:
        path = Path(recipe_args.mined_dir) / "triples"
        if not path.exists():
            raise HNTrainerError(f"{path}: no mined triples (run `hn-trainer mine --output_dir {recipe_args.mined_dir}`)")
        return HardNegativeDataset.from_disk(path, keep_empty=train_args.keep_pairs_without_negatives)
    pairs = split_pairs(data, data_args.split, data_args.max_train_queries)
    query_ids = list(dict.fromkeys(q for q, _ in pairs))
    texts = dict(zip(data.queries["_id"], data.queries["text"]))
    needs_vectors = mining_args.method in {"dual_condition", "dense_topk", "positive_aware"}
    sampler = None
    if mining_args.method != "dual_condition":
        sampler = configured_sampler(mining_args.method, sampler_settings(mining_args))
    return HardNegativeDataset.from_embeddings(
        query_ids, [texts[q] for q in query_ids], list(data.corpus["_id"]), data.document_texts(), pairs,
        np.stack([embeddings.queries[q] for q in query_ids]) if needs_vectors else None,
        embeddings.corpus if needs_vectors else None,
        pool_size=train_args.pool_size, metric=mining_args.metric, sampler=sampler,
        positives=all_positives(data), conditions=mining_args.conditions,
        keep_empty=train_args.keep_pairs_without_negatives, device=mining_args.mining_device,
    )


def title_dataset(data, mining_args, train_args, recipe_args, embeddings):
    """Pseudo-queries the corpus provides: each document's title as a query for its body, with negatives
    mined by the same kernel in the same vector space (bodies shown without titles on both sides)."""
    import random

    from hn_trainer.mining.pipeline import configured_sampler, sampler_settings
    from hn_trainer.training import HardNegativeDataset

    titled = [(d, t.strip()) for d, t in zip(data.corpus["_id"], data.corpus["title"]) if t and t.strip()]
    if not titled:
        raise HNTrainerError(f"warm_start='titles': the documents of {data.name} have no titles")
    if recipe_args.warm_start_max_pairs and len(titled) > recipe_args.warm_start_max_pairs:
        titled = random.Random(train_args.seed).sample(titled, recipe_args.warm_start_max_pairs)
    query_ids = [f"title:{d}" for d, _ in titled]
    title_vectors = embeddings.result.encode([t for _, t in titled], batch_size=mining_args.embedding_batch_size)
    method = recipe_args.warm_start_negatives
    sampler = None if method == "dual_condition" else configured_sampler(method, sampler_settings(mining_args))
    return HardNegativeDataset.from_embeddings(
        query_ids, [t for _, t in titled], list(data.corpus["_id"]), list(data.corpus["text"]),
        [(q, d) for q, (d, _) in zip(query_ids, titled)], title_vectors, embeddings.corpus,
        pool_size=train_args.pool_size, metric=mining_args.metric, sampler=sampler, conditions=mining_args.conditions,
        keep_empty=True, device=mining_args.mining_device,
    )


def first_stage_run(data, split, recipe_args, train_args, mining_args, embeddings, query_ids, state=None):
    """Candidates (top K of the configured first stage) of the evaluation queries."""
    import numpy as np

    from hn_trainer.embeddings import build_ensemble_embeddings
    from hn_trainer.evaluation.first_stage import first_stage_candidates

    texts = dict(zip(data.queries["_id"], data.queries["text"]))
    q_emb = c_emb = None
    if recipe_args.first_stage == "ensemble":
        q_emb, c_emb = np.stack([embeddings.queries[q] for q in query_ids]), embeddings.corpus
    elif recipe_args.first_stage == "dense":
        index = data.query_index()
        dense = build_ensemble_embeddings(
            data.corpus, data.queries.select([index[q] for q in query_ids]), [recipe_args.first_stage_encoder],
            pca_variance=None, cache_dir=mining_args.cache_dir, batch_size=mining_args.embedding_batch_size,
            device=mining_args.mining_device, state=state,
        )
        q_emb, c_emb = dense.query_embeddings, dense.corpus_embeddings
    return first_stage_candidates(
        recipe_args.first_stage, query_ids, [texts[q] for q in query_ids], list(data.corpus["_id"]),
        data.document_texts(), k=train_args.eval_candidates_k, query_embeddings=q_emb, corpus_embeddings=c_emb,
    )


def evaluation_queries(data: RetrievalData, data_args: DataArguments) -> list[str]:
    ids = list(data.relevant(data_args.eval_split))
    return ids[: data_args.max_eval_queries] if data_args.max_eval_queries else ids


def format_table(rows: dict[str, dict[str, float]], keys=("mrr@3", "mrr@10", "ndcg@10")) -> str:
    width = max(len(r) for r in rows) + 2
    lines = [f"{'':<{width}}" + "".join(f"{k:>10}" for k in keys)]
    for name, metrics in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{metrics.get(k, float('nan')):>10.4f}" for k in keys))
    return "\n".join(lines)


def _strip(metrics: dict[str, float], prefix: str = "eval_") -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and "@" in k}


def run_training(data_args, mining_args, train_args, recipe_args, *, do_train: bool = True) -> dict:
    """Mine, (warm-start,) train and evaluate; returns the metrics summary written to ``results_file``."""
    from accelerate import PartialState

    from hn_trainer.evaluation.metrics import retrieval_metrics
    from hn_trainer.mining.pipeline import load_data
    from hn_trainer.training import HardNegativeTrainer, RerankingEvaluationCallback, RerankerCardData, save_for_hub

    t_start = time.perf_counter()
    state = PartialState(cpu=train_args.use_cpu)
    data = load_data(data_args)
    eval_ids = evaluation_queries(data, data_args)
    train_ids = [] if not do_train else list(dict.fromkeys(q for q, _ in data.pairs(data_args.split)))
    if data_args.max_train_queries:
        train_ids = train_ids[: data_args.max_train_queries]

    needs_vectors = (do_train and not recipe_args.mined_dir and mining_args.method in
                     {"dual_condition", "dense_topk", "positive_aware"}) or recipe_args.first_stage == "ensemble" \
        or recipe_args.warm_start == "titles"
    # Every rank takes part: texts missing from the cache are encoded in shards and gathered.
    embeddings = embed(data, mining_args, list(dict.fromkeys(train_ids + eval_ids)), state) if needs_vectors else None
    candidates = first_stage_run(data, data_args.eval_split, recipe_args, train_args, mining_args, embeddings,
                                 eval_ids, state)
    qrels = data.relevant(data_args.eval_split)
    rows = {f"first stage ({recipe_args.first_stage}, top {train_args.eval_candidates_k})":
            retrieval_metrics(candidates, {q: qrels[q] for q in eval_ids})}
    evaluator = RerankingEvaluationCallback.from_data(
        data, data_args.eval_split, candidates, batch_size=train_args.eval_batch_pairs,
        show_progress_bar=state.is_main_process,
    )
    card = RerankerCardData(
        model_id=train_args.hub_model_id, base_model=recipe_args.model_name_or_path, datasets=[data_args.data],
        eval_description=f"split {data_args.eval_split!r} ({len(eval_ids)} queries): reranking the top "
                         f"{train_args.eval_candidates_k} of the {recipe_args.first_stage} first stage",
    )
    model = recipe_args.model_name_or_path
    if do_train:
        train_dataset = training_dataset(data, data_args, mining_args, train_args, recipe_args, embeddings)
        card.mining = {
            "encoders": ", ".join(mining_args.encoder_list), "pca_variance": mining_args.pca_variance,
            "method": mining_args.method, "metric": mining_args.metric, "conditions": mining_args.conditions,
            "pool_size": train_args.pool_size, "pairs": len(train_dataset),
        }
        if embeddings is not None:
            card.mining.update(dim_concat=embeddings.result.dim_concat, dim_pca=embeddings.result.dim_pca)
    trainer = HardNegativeTrainer(model, train_args, train_dataset=train_dataset if do_train else None,
                                  evaluator=evaluator)
    if recipe_args.evaluate_base:
        rows["base reranker"] = _strip(trainer.evaluate())
    if do_train and recipe_args.warm_start == "titles" and not train_args.resume_from_checkpoint:
        # (a resumed run restores the weights from its checkpoint, warm start included)
        rows.update(_warm_start(trainer, data, mining_args, train_args, recipe_args, embeddings, evaluator, state))
    if do_train:
        trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
        rows["fine-tuned reranker"] = _strip(trainer.evaluate())
    card.eval_metrics = rows
    summary = {
        "rows": rows, "seconds": time.perf_counter() - t_start, "eval_queries": len(eval_ids),
        "settings": {"data": asdict(data_args), "mining": asdict(mining_args), "recipe": asdict(recipe_args)},
    }
    if do_train:
        final_dir = Path(train_args.output_dir) / "final"
        if state.is_main_process:
            save_for_hub(trainer, output_dir=final_dir, card_data=card)
            write_json(Path(train_args.output_dir) / recipe_args.results_file, summary)
            logger.info("Saved the fine-tuned reranker to %s (loads with CrossEncoder(%r))", final_dir, str(final_dir))
            if train_args.push_to_hub:
                from hn_trainer.training.model_card import push_folder_to_hub

                push_folder_to_hub(final_dir, train_args.hub_model_id, token=train_args.hub_token)
        summary["model_dir"] = str(final_dir)
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"\n{data.name}: {len(eval_ids)} evaluation queries, split {data_args.eval_split!r}")
        print(format_table(rows))
    return summary


def _warm_start(trainer, data, mining_args, train_args, recipe_args, embeddings, evaluator, state) -> dict:
    """Train the reranker on title pseudo-queries first; the main trainer then continues from that model."""
    from dataclasses import replace

    from hn_trainer.training import HardNegativeTrainer

    titles = title_dataset(data, mining_args, train_args, recipe_args, embeddings)
    args = replace(train_args, output_dir=str(Path(train_args.output_dir) / "warm_start"),
                   num_train_epochs=recipe_args.warm_start_epochs, max_steps=-1, resume_from_checkpoint=None,
                   push_to_hub=False, eval_strategy="no", load_best_model_at_end=False, fill_random_negatives=True)
    warm = HardNegativeTrainer(trainer.model, args, train_dataset=titles, processing_class=trainer.processing_class,
                               evaluator=evaluator)
    warm.train()
    return {"after warm start": _strip(warm.evaluate())}


def main(argv: list[str] | None = None) -> dict:
    """``hn-trainer train``."""
    return run_training(*parse_recipe_args(argv))


def evaluate_main(argv: list[str] | None = None) -> dict:
    """``hn-trainer evaluate``: the first stage and the reranker named by ``--model_name_or_path``."""
    return run_training(*parse_recipe_args(argv), do_train=False)


DEMO_DEFAULTS = {
    "data": "demo",
    "encoders": "sentence-transformers/all-MiniLM-L6-v2,sentence-transformers/paraphrase-MiniLM-L3-v2,lsa:128",
    "output_dir": "runs/demo",
    "loss": "lce",
    "pool_size": 8,
    "num_negatives": 3,
    "negative_strategy": "sample",
    "keep_pairs_without_negatives": "true",
    "fill_random_negatives": "true",
    "num_train_epochs": 3,
    "learning_rate": 1e-4,
    "warmup_steps": 5,
    "per_device_train_batch_size": 8,
    "max_length": 128,
    "eval_candidates_k": 10,
    "logging_steps": 10,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
}


def demo_main(argv: list[str] | None = None) -> dict:
    """``hn-trainer demo``: the recipe on the built-in cloud-documentation corpus, offline, on a CPU."""
    return run_training(*parse_recipe_args(argv, defaults=DEMO_DEFAULTS))
