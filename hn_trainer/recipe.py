"""The training recipe, the one place that ties the stages together: data -> mining -> training -> evaluation.

Shared by ``hn-trainer train``, ``hn-trainer evaluate``, ``hn-trainer demo`` and ``recipes/train_reranker.py``
(which `accelerate launch` runs on one or several processes).

Evaluation integrity: checkpoints (``metric_for_best_model``), the fusion weight and early stopping are chosen on
validation queries, the data's validation split when it has one (``validation_split``), else a seeded slice of
the training queries held out of training and mining. The test split is evaluated once, at the end;
``results.json`` says which queries chose what.
"""

from __future__ import annotations

import logging
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from hn_trainer.config import DataArguments, MiningArguments, parse_args
from hn_trainer.data import RetrievalData
from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.io import write_json

logger = logging.getLogger(__name__)

OFFLINE_BASE_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
FUSION_GRID = tuple(i / 10 for i in range(11))


@dataclass
class EvaluationArguments:
    """How the reranker is evaluated: the first stage whose candidates it reorders, and fusion."""

    first_stage: Literal["bm25", "dense", "ensemble"] = field(
        default="dense", metadata={"help": "First-stage retriever whose top K the reranker reorders."}
    )
    first_stage_encoder: str = field(default=OFFLINE_BASE_MODEL, metadata={"help": "Encoder of the 'dense' first stage."})
    eval_candidates_k: int = field(
        default=100, metadata={"help": "First-stage candidates per query that the reranker reorders."}
    )
    eval_batch_pairs: int = field(default=64, metadata={"help": "(query, document) pairs per scoring forward pass."})
    fusion: bool = field(
        default=True,
        metadata={"help": "Also report w * z(reranker) + (1 - w) * z(first stage), w chosen on validation queries."},
    )

    def __post_init__(self) -> None:
        for name in ("eval_candidates_k", "eval_batch_pairs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class RecipeArguments:
    """The base model and the optional stages of a training run."""

    model_name_or_path: str = field(
        default=OFFLINE_BASE_MODEL,
        metadata={"help": "Base reranker: any AutoModelForSequenceClassification checkpoint or CrossEncoder "
                  "(one output), or an encoder that gets a fresh one-logit head."},
    )
    mined_dir: str | None = field(
        default=None, metadata={"help": "Train on the pairs a finished `hn-trainer mine` run wrote here instead of mining."}
    )
    warm_start: Literal["none", "distill", "titles"] = field(
        default="none",
        metadata={"help": "Before the main training, adapt the reranker to the domain without labels. 'distill': "
                  "distil the mining ensemble's (or --warm_start_encoders') similarities over each pseudo-query's nearest documents into the "
                  "reranker (ListNetLoss), pseudo-queries being titles and sentences taken out of documents "
                  "(hn_trainer.training.warm_start); 'titles': (title, body) pairs with mined negatives."},
    )
    warm_start_encoders: str | None = field(
        default=None,
        metadata={"help": "The warm start's teacher: comma-separated encoder specs like --encoders, built into an "
                  "ensemble the same way (PCA at --pca_variance, fitted on the corpus and the training queries). "
                  "Default: the mining ensemble, --encoders. Set it to mine negatives with one ensemble and "
                  "distil another."},
    )
    warm_start_kinds: str = field(
        default="titles,spans",
        metadata={"help": "'distill' pseudo-queries: 'titles', 'spans' (inverse cloze) or both, comma-separated."},
    )
    warm_start_candidates: int = field(
        default=7, metadata={"help": "'distill': the teacher's nearest documents per pseudo-query (besides its own)."}
    )
    warm_start_temperature: float = field(
        default=0.05, metadata={"help": "'distill': teacher labels are cosine similarities divided by this."}
    )
    warm_start_negatives: Literal["dense_topk", "dual_condition", "random"] = field(
        default="dense_topk",
        metadata={"help": "'titles': negatives, mined in the same vector space. A title sits so close "
                  "to its own document that the dual condition rarely finds a negative for it (those pairs "
                  "then get random negatives); 'dense_topk' takes the documents nearest the title."},
    )
    warm_start_epochs: float = field(default=1.0, metadata={"help": "Epochs of the warm-start stage."})
    warm_start_max_pairs: int | None = field(
        default=None, metadata={"help": "Use at most this many pseudo-queries (seeded draw)."}
    )
    warm_start_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the warm start (default: learning_rate)."}
    )
    warm_start_eval_steps: int | None = field(
        default=None,
        metadata={"help": "'distill' with validation queries: evaluate every N warm-start steps (default: 4 times "
                  "in all) and keep the best checkpoint, or the base when no checkpoint beats it."},
    )
    warm_start_step: int | None = field(
        default=None,
        metadata={"help": "'distill' with validation queries: keep the warm-start checkpoint of this step (one of "
                  "the validation steps) instead of the best one, to build again the model a results.json "
                  "records (its selection names the step); validation still runs and is recorded."},
    )
    warm_start_only: bool = field(
        default=False,
        metadata={"help": "Stop after the warm start: save and evaluate the warm-started base (output_dir/final, "
                  "like output_dir/warm_start/final) without the main training, to fine-tune it in later runs."},
    )
    show_triples: int = field(
        default=0, metadata={"help": "Print this many mined (query, positive, hard negative) triples (seeded draw)."}
    )
    evaluate_base: bool = field(default=True, metadata={"help": "Evaluate the base reranker before training."})
    results_file: str = field(default="results.json", metadata={"help": "Metrics summary, in output_dir."})

    def __post_init__(self) -> None:
        from hn_trainer.training.warm_start import KINDS

        if isinstance(self.warm_start_encoders, (list, tuple)):
            self.warm_start_encoders = ",".join(self.warm_start_encoders)
        if self.warm_start_encoders is not None and not self.warm_start_encoder_list:
            self.warm_start_encoders = None  # an empty value: the mining ensemble
        kinds = [k.strip() for k in str(self.warm_start_kinds).split(",") if k.strip()]
        if not kinds or set(kinds) - set(KINDS):
            raise ConfigError(f"--warm_start_kinds must name {' and/or '.join(KINDS)}, got {self.warm_start_kinds!r}")
        for name in ("warm_start_candidates", "warm_start_eval_steps", "warm_start_step"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        for name in ("warm_start_temperature", "warm_start_learning_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"--{name} must be positive, got {value}")
        if self.warm_start_epochs <= 0:
            raise ConfigError(f"--warm_start_epochs must be positive, got {self.warm_start_epochs}")
        if self.warm_start_max_pairs is not None and self.warm_start_max_pairs < 1:
            raise ConfigError(f"--warm_start_max_pairs must be at least 1, got {self.warm_start_max_pairs}")
        if self.warm_start_step is not None and self.warm_start != "distill":
            raise ConfigError("--warm_start_step picks a checkpoint of --warm_start distill")
        if self.warm_start_only and self.warm_start == "none":
            raise ConfigError("--warm_start_only needs a warm start: set --warm_start distill or titles")

    @property
    def warm_start_encoder_list(self) -> list[str]:
        return [e.strip() for e in str(self.warm_start_encoders or "").split(",") if e.strip()]


def parse_recipe_args(argv: list[str] | None = None, defaults: dict | None = None):
    """``(DataArguments, MiningArguments, HardNegativeTrainingArguments, EvaluationArguments, RecipeArguments)``
    from flags and ``--config``; `defaults` sits under both (the demo's settings)."""
    import torch

    from hn_trainer.config import given_fields
    from hn_trainer.training import HardNegativeTrainingArguments
    from hn_trainer.training.training_args import cpu_has_native_bf16

    argv = sys.argv[1:] if argv is None else list(argv)
    base = {"output_dir": "runs/reranker"}
    if not torch.cuda.is_available():  # so that `accelerate launch` runs several CPU processes on gloo
        base["use_cpu"] = True
        # bf16 autocast where the CPU has it natively: 1.3x training, 2.6x scoring, the same validation MRR
        # (benchmarks/results/cpu_precision-*.json); `--bf16 false` keeps fp32, and an fp16 setting wins
        base["bf16"] = cpu_has_native_bf16() and "fp16" not in given_fields(argv)
    types = (DataArguments, MiningArguments, HardNegativeTrainingArguments, EvaluationArguments, RecipeArguments)
    return parse_args(types, argv, defaults={**base, **(defaults or {})})


# ----- queries ----------------------------------------------------------------------------------------------


@dataclass
class QuerySplits:
    """Which queries train, which validate (choose checkpoints and weights), which test (reported once)."""

    train_pairs: list[tuple[str, str]]
    validation: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    validation_source: str
    test_source: str = ""


def split_queries_for_run(data: RetrievalData, data_args: DataArguments, *, seed: int) -> QuerySplits:
    """Training pairs, validation qrels and test qrels, with validation never drawn from the test split.

    The test queries are those of ``eval_split``. Data whose only split is the training one (a pairs dataset, a
    BEIR folder with one qrels file) has a seeded slice of its queries held out for the test instead
    (``test_queries``, seeded by ``split_seed``), drawn before anything else, so neither mining, training nor
    validation sees them.
    """
    from hn_trainer.mining.pipeline import first_queries, split_pairs

    if data_args.eval_split in data.splits or data.splits != [data_args.split]:
        pairs = split_pairs(data, data_args.split, data_args.max_train_queries)
        test = _first(data.relevant(data_args.eval_split), data_args.max_eval_queries)
        test_source = f"split {data_args.eval_split!r}, evaluated once at the end"
    else:
        all_pairs = split_pairs(data, data_args.split)
        queries = sorted(dict.fromkeys(q for q, _ in all_pairs))
        n = data_args.test_queries or min(1000, max(1, len(queries) // 10))
        if n >= len(queries):
            raise ConfigError(f"--test_queries {n} leaves no training query (split {data_args.split!r} of "
                              f"{data.name} has {len(queries)})")
        held = set(random.Random(data_args.split_seed).sample(queries, n))
        relevant = data.relevant(data_args.split)
        test = _first({q: relevant[q] for q in sorted(held)}, data_args.max_eval_queries)
        pairs = first_queries([(q, d) for q, d in all_pairs if q not in held], data_args.max_train_queries)
        test_source = (f"{n} queries of split {data_args.split!r} held out for the test (seed {data_args.split_seed}; "
                       f"the data has no {data_args.eval_split!r} split), evaluated once at the end")
    if data_args.validation_split and data_args.validation_split in data.splits:
        if data_args.validation_split in {data_args.eval_split, data_args.split}:
            raise ConfigError(f"--validation_split {data_args.validation_split!r} must differ from train and test")
        validation = _first(data.relevant(data_args.validation_split), data_args.max_eval_queries)
        return QuerySplits(pairs, validation, test, f"split {data_args.validation_split!r}", test_source)
    train_queries = list(dict.fromkeys(q for q, _ in pairs))
    n = data_args.validation_queries
    if n is None:
        n = min(200, max(1, len(train_queries) // 10)) if len(train_queries) > 1 else 0
    if n >= len(train_queries) and n > 0:
        raise ConfigError(f"--validation_queries {n} leaves no training query (there are {len(train_queries)})")
    held = set(random.Random(seed).sample(sorted(train_queries), n)) if n else set()
    relevant = data.relevant(data_args.split)
    validation = {q: relevant[q] for q in sorted(held) if q in relevant}
    source = f"{n} training queries held out of training (seed {seed})" if n else "none"
    return QuerySplits([(q, d) for q, d in pairs if q not in held], validation, test, source, test_source)


def _first(qrels: dict, n: int | None) -> dict:
    return dict(list(qrels.items())[:n]) if n else qrels


# ----- stages -----------------------------------------------------------------------------------------------


def training_pool(data, data_args, mining_args, recipe_args, splits: QuerySplits, state):
    """The `HardNegativeDataset` of the training pairs (mined here, or read from a finished ``mined_dir``) and
    the `MinedPairs` when mined here."""
    from hn_trainer.io import is_complete
    from hn_trainer.mining.pipeline import all_positives, mine_pairs
    from hn_trainer.training import HardNegativeDataset

    corpus = (list(data.corpus["_id"]), data.document_texts())
    kwargs = dict(keep_empty=mining_args.keep_pairs_without_negatives, positives=all_positives(data), corpus=corpus)
    if recipe_args.mined_dir:
        folder = Path(recipe_args.mined_dir)
        if not is_complete(folder):
            raise HNTrainerError(
                f"--mined_dir {folder}: not the output of a finished `hn-trainer mine` run (no COMPLETE marker); "
                f"run `hn-trainer mine --output_dir {folder}` again"
            )
        return HardNegativeDataset.from_disk(folder / "triples", **kwargs), None
    mined = mine_pairs(data, data_args, mining_args, pairs=splits.train_pairs, state=state)
    return HardNegativeDataset.from_mined(mined.dataset, **kwargs), mined


def title_pool(data, mining_args, train_args, recipe_args, mined):
    """Pseudo-queries the corpus provides: each document's title as a query for its body, with negatives
    mined in the same vector space (bodies shown without titles on both sides)."""
    from hn_trainer.mining.pipeline import configured_sampler, mine_pairs_from_embeddings, sampler_settings
    from hn_trainer.training import HardNegativeDataset

    titled = [(d, t.strip()) for d, t in zip(data.corpus["_id"], data.corpus["title"]) if t and t.strip()]
    if not titled:
        raise HNTrainerError(f"warm_start='titles': the documents of {data.name} have no titles")
    if mined is None or mined.ensemble is None:
        raise HNTrainerError("warm_start='titles' needs the ensemble vectors: mine here (no --mined_dir) with an "
                             "embedding method, or name the teacher with --warm_start_encoders")
    if recipe_args.warm_start_max_pairs and len(titled) > recipe_args.warm_start_max_pairs:
        titled = random.Random(train_args.seed).sample(titled, recipe_args.warm_start_max_pairs)
    query_ids = [f"title:{d}" for d, _ in titled]
    title_vectors = mined.ensemble.encode([t for _, t in titled], batch_size=mining_args.embedding_batch_size)
    sampler = configured_sampler(recipe_args.warm_start_negatives, sampler_settings(mining_args))
    dataset = mine_pairs_from_embeddings(
        query_ids, [t for _, t in titled], list(data.corpus["_id"]), list(data.corpus["text"]),
        [(q, d) for q, (d, _) in zip(query_ids, titled)], title_vectors, mined.corpus_embeddings,
        num_negatives=mining_args.pool_size, sampler=sampler,
    )
    return HardNegativeDataset.from_mined(dataset, keep_empty=True, corpus=(list(data.corpus["_id"]), list(data.corpus["text"])))


def warm_start_teacher(data, mining_args, recipe_args, splits: QuerySplits, mined, state=None):
    """The `MinedPairs` whose ensemble and corpus vectors the warm start learns from: mining's, or with
    ``--warm_start_encoders`` an ensemble of those encoders built as mining builds its own (the same PCA level,
    fitted on the corpus and the training queries), so that a teacher named there is the teacher it would be as
    ``--encoders``."""
    from hn_trainer.embeddings import build_ensemble_embeddings
    from hn_trainer.mining.pipeline import MinedPairs

    encoders = recipe_args.warm_start_encoder_list
    if not encoders or (mined is not None and mined.ensemble is not None and encoders == mining_args.encoder_list):
        return mined
    query_ids = list(dict.fromkeys(q for q, _ in splits.train_pairs))
    index = data.query_index()
    logger.info("Warm-start teacher: %s", ", ".join(encoders))
    ensemble = build_ensemble_embeddings(
        data.corpus, data.queries.select([index[q] for q in query_ids]), encoders,
        pca_variance=mining_args.pca_variance, cache_dir=mining_args.cache_dir,
        batch_size=mining_args.embedding_batch_size, device=mining_args.mining_device, state=state,
    )
    return MinedPairs(dataset=None, stats={}, query_ids=query_ids, query_embeddings=ensemble.query_embeddings,
                      corpus_embeddings=ensemble.corpus_embeddings, ensemble=ensemble,
                      corpus_ids=list(data.corpus["_id"]))


def first_stage_run(data, eval_args, mining_args, mined, qrels: dict, state=None) -> dict:
    """Top-K candidates of the configured first stage for the queries of `qrels`."""
    from hn_trainer.embeddings import build_ensemble_embeddings
    from hn_trainer.evaluation.first_stage import first_stage_candidates

    query_ids = list(qrels)
    texts = dict(zip(data.queries["_id"], data.queries["text"]))
    q_emb = c_emb = None
    if eval_args.first_stage == "ensemble":
        if mined is None or mined.ensemble is None:
            raise ConfigError("--first_stage ensemble needs the mining ensemble: train with an embedding method")
        q_emb = mined.ensemble.encode([texts[q] for q in query_ids], batch_size=mining_args.embedding_batch_size)
        c_emb = mined.corpus_embeddings
    elif eval_args.first_stage == "dense":
        index = data.query_index()
        dense = build_ensemble_embeddings(
            data.corpus, data.queries.select([index[q] for q in query_ids]), [eval_args.first_stage_encoder],
            pca_variance=None, cache_dir=mining_args.cache_dir, batch_size=mining_args.embedding_batch_size,
            device=mining_args.mining_device, state=state,
        )
        q_emb, c_emb = dense.query_embeddings, dense.corpus_embeddings
    return first_stage_candidates(
        eval_args.first_stage, query_ids, [texts[q] for q in query_ids], list(data.corpus["_id"]),
        data.document_texts(), k=eval_args.eval_candidates_k, query_embeddings=q_emb, corpus_embeddings=c_emb,
    )


def choose_fusion_weight(first_stage: dict, reranked: dict, qrels: dict, grid=FUSION_GRID) -> float:
    """The weight of ``w * z(reranker) + (1 - w) * z(first stage)`` with the best MRR@10 on these (validation)
    queries; ties go to the larger weight (the reranker)."""
    from hn_trainer.evaluation.metrics import retrieval_metrics
    from hn_trainer.evaluation.reranking import fuse_runs

    scored = [(retrieval_metrics(fuse_runs(first_stage, reranked, w), qrels)["mrr@10"], w) for w in grid]
    return max(scored)[1]


def format_triples(mined, n: int, *, seed: int = 42, width: int = 110) -> str:
    """``n`` of the pairs of a `MinedPairs` with a hard negative (a seeded draw), each with its hardest negative
    and, when mining used vectors, the three distances of the conditions: d(Q,HN) < d(Q,PD) and
    d(Q,HN) < d(PD,HN)."""
    import numpy as np

    pairs = mined.dataset
    have = [i for i, negs in enumerate(pairs["negative_ids"]) if negs]
    picks = sorted(random.Random(seed).sample(have, min(n, len(have))))
    vectors = mined.query_embeddings is not None and mined.corpus_ids and mined.stats.get("metric") == "cosine"

    def cut(text: str) -> str:
        return text if len(text) <= width else text[: width - 3] + "..."

    def unit(x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x / np.linalg.norm(x)

    q_row = {q: i for i, q in enumerate(mined.query_ids)}
    d_row = {d: i for i, d in enumerate(mined.corpus_ids)}
    lines = [f"{len(picks)} of the {len(have)} mined pairs with a hard negative:"]
    for i in picks:
        row = pairs[i]
        lines += [f"  query:          {cut(row['query'])}", f"  positive:       {cut(row['positive'])}",
                  f"  hard negative:  {cut(row['negatives'][0])}"]
        if vectors:
            q = unit(mined.query_embeddings[q_row[row["query_id"]]])
            p = unit(mined.corpus_embeddings[d_row[row["positive_id"]]])
            h = unit(mined.corpus_embeddings[d_row[row["negative_ids"][0]]])
            lines.append(f"  cosine distances: d(Q,HN) {1 - q @ h:.3f} < d(Q,PD) {1 - q @ p:.3f}, "
                         f"d(Q,HN) < d(PD,HN) {1 - p @ h:.3f}")
        lines.append("")
    return "\n".join(lines).rstrip()


def format_table(rows: dict[str, dict[str, float]], keys=("mrr@3", "mrr@10", "ndcg@10")) -> str:
    width = max(len(r) for r in rows) + 2
    lines = [f"{'':<{width}}" + "".join(f"{k:>10}" for k in keys)]
    for name, metrics in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{metrics.get(k, float('nan')):>10.4f}" for k in keys))
    return "\n".join(lines)


# ----- the run ----------------------------------------------------------------------------------------------


def run_training(data_args, mining_args, train_args, eval_args, recipe_args, *, do_train: bool = True) -> dict:
    """Mine, (warm-start,) train and evaluate; returns the summary written to ``results_file``."""
    from accelerate import PartialState

    from hn_trainer.evaluation.evaluator import RerankingEvaluator
    from hn_trainer.evaluation.metrics import retrieval_metrics
    from hn_trainer.mining.pipeline import load_data, prepare_output_dir
    from hn_trainer.training import HardNegativeModelCardData, HardNegativeTrainer, load_reranker

    t_start = time.perf_counter()
    if recipe_args.warm_start_only and (train_args.resume_from_checkpoint or not do_train):
        raise ConfigError("--warm_start_only trains the warm start from the base: it neither resumes nor evaluates "
                          "only")
    prepare_output_dir(train_args.output_dir)  # before any model is loaded
    if not do_train and train_args.load_best_model_at_end:
        train_args.load_best_model_at_end = False
    state = PartialState(cpu=train_args.use_cpu)
    data = load_data(data_args)
    splits = split_queries_for_run(data, data_args, seed=train_args.seed)
    if not splits.validation and (train_args.load_best_model_at_end or train_args.eval_strategy != "no"):
        raise ConfigError("checkpoint selection and evaluation during training need validation queries: "
                          "set --validation_queries or a --validation_split")
    pool = mined = None
    if do_train:
        pool, mined = training_pool(data, data_args, mining_args, recipe_args, splits, state)
        if recipe_args.show_triples and mined is not None and state.is_main_process:
            print(format_triples(mined, recipe_args.show_triples, seed=train_args.seed))
    candidates = {
        name: first_stage_run(data, eval_args, mining_args, mined, qrels, state)
        for name, qrels in (("validation", splits.validation), ("test", splits.test)) if qrels
    }
    first_name = f"first stage ({eval_args.first_stage}, top {eval_args.eval_candidates_k})"
    rows = {first_name: retrieval_metrics(candidates["test"], splits.test)}
    per_query = {first_name: _per_query_mrr(candidates["test"], splits.test)}
    query_texts = dict(zip(data.queries["_id"], data.queries["text"]))
    doc_texts = dict(zip(data.corpus["_id"], data.document_texts()))

    def evaluator(name: str, **kwargs) -> RerankingEvaluator:
        qrels = splits.validation if name == "validation" else splits.test
        return RerankingEvaluator(candidates[name], query_texts, doc_texts, qrels,
                                  batch_size=eval_args.eval_batch_pairs, show_progress_bar=state.is_main_process,
                                  bf16=train_args.bf16, **kwargs)

    validation = evaluator("validation") if splits.validation else None
    test = evaluator("test")
    card = HardNegativeModelCardData(model_id=train_args.hub_model_id, train_datasets=[{"name": data.name}],
                                     base_model_name=recipe_args.model_name_or_path)
    fine_tune = do_train and not recipe_args.warm_start_only
    label = ("fine-tuned reranker" if fine_tune else "warm-started base" if do_train
             else f"reranker ({recipe_args.model_name_or_path})")
    selection = {"validation": splits.validation_source, "test": splits.test_source}
    validation_rows = {first_name: retrieval_metrics(candidates["validation"], splits.validation)} \
        if splits.validation else {}
    warm_fusion_weight = None
    if do_train:
        trainer = HardNegativeTrainer(recipe_args.model_name_or_path, train_args, train_dataset=pool,
                                      evaluator=validation, model_card_data=card)
        model = trainer.model
        if fine_tune:  # a --warm_start_only model saw no mined negative
            card.mining = _mining_card(mining_args, pool, mined)
    else:
        model = load_reranker(recipe_args.model_name_or_path, max_length=train_args.max_length)
    if recipe_args.evaluate_base or not do_train:
        rows["base reranker" if do_train else label] = test(model)
        per_query["base reranker" if do_train else label] = _per_query_mrr(test.last_run, splits.test)
    if do_train and recipe_args.warm_start != "none" and not train_args.resume_from_checkpoint:
        # (a resumed run restores the weights from its checkpoint, warm start included)
        changed, warm_run = True, None
        teacher = warm_start_teacher(data, mining_args, recipe_args, splits, mined, state)
        if recipe_args.warm_start == "distill":
            selection["warm_start"], changed, warm_run = _distill_warm_start(
                trainer, data, mining_args, train_args, recipe_args, teacher, validation)
        else:
            _warm_start(trainer, data, mining_args, train_args, recipe_args, teacher)
        if changed or "base reranker" not in rows:
            rows["warm-started base"] = test(model)
            per_query["warm-started base"] = _per_query_mrr(test.last_run, splits.test)
        else:  # the base was kept: the same weights, already evaluated
            rows["warm-started base"] = rows["base reranker"]
            per_query["warm-started base"] = per_query["base reranker"]
        if eval_args.fusion and validation is not None:  # does fine-tuning add to what fusion gets already?
            if warm_run is None or state.num_processes != 1:  # (see _final_validation_run)
                validation(model)
                warm_run = validation.last_run
            (warm_fusion_weight, validation_rows["warm-started base"], validation_rows["warm-started base, fused"],
             rows["warm-started base, fused"], per_query["warm-started base, fused"]) = \
                _fusion(candidates, splits, warm_run, test.last_run)
            selection["warm_start_fusion_weight"] = "MRR@10 on the validation queries"
        if state.is_main_process:
            trainer.model.save_pretrained(str(Path(train_args.output_dir) / "warm_start" / "final"))
    if fine_tune:
        if validation is not None:
            validation.forget_runs()  # those of the warm start's steps
        trainer.train(resume_from_checkpoint=train_args.resume_from_checkpoint)
        model = trainer.model
        rows[label] = test(model)
        per_query[label] = _per_query_mrr(test.last_run, splits.test)
    if fine_tune and train_args.load_best_model_at_end:
        selection["checkpoint"] = f"{train_args.metric_for_best_model} on the validation queries"
    fusion_weight = None if fine_tune or not do_train else warm_fusion_weight  # --warm_start_only: that model's
    if eval_args.fusion and validation is not None and (fine_tune or not do_train):
        run = _final_validation_run(trainer, train_args, validation, state) if fine_tune else None
        if run is None:
            validation(model)
            run = validation.last_run
        # test.last_run holds the final model's scores: its row above was the last test evaluation
        fusion_weight, validation_rows[label], validation_rows["fused"], rows["fused"], per_query["fused"] = \
            _fusion(candidates, splits, run, test.last_run)
        selection["fusion_weight"] = "MRR@10 on the validation queries"
    summary = {
        "rows": rows, "seconds": time.perf_counter() - t_start, "eval_queries": len(splits.test),
        "validation_queries": len(splits.validation), "fusion_weight": fusion_weight, "selection": selection,
        "validation_rows": validation_rows,  # what settings are compared on, never the test rows
        "per_query_mrr@10": per_query,
        "settings": {"data": asdict(data_args), "mining": asdict(mining_args), "evaluation": asdict(eval_args),
                     "recipe": asdict(recipe_args)},
    }
    if fine_tune:  # how many pairs mining gave a negative, and the ensemble's dimensions
        summary["mining"] = card.mining
    if warm_fusion_weight is not None:
        summary["warm_start_fusion_weight"] = warm_fusion_weight
    if do_train:
        final_dir = Path(train_args.output_dir) / "final"
        card.eval_rows, card.fusion_weight = rows, fusion_weight
        card.eval_description = (f"{len(splits.test)} test queries ({splits.test_source}): reranking the top "
                                 f"{eval_args.eval_candidates_k} of the {eval_args.first_stage} first stage")
        if state.is_main_process:
            trainer.save_model(str(final_dir))
            logger.info("Saved the %s to %s (loads with CrossEncoder(%r))", label, final_dir, str(final_dir))
            if train_args.push_to_hub:
                model.push_to_hub(train_args.hub_model_id, token=train_args.hub_token, local_model_path=str(final_dir))
        summary["model_dir"] = str(final_dir)
    if state.is_main_process:
        write_json(Path(train_args.output_dir) / recipe_args.results_file, summary)
    state.wait_for_everyone()
    if state.is_main_process:
        print(f"\n{data.name}: {len(splits.test)} test queries ({splits.test_source}); "
              f"validation: {splits.validation_source}")
        print(format_table(rows))
        if fusion_weight is not None:
            print(f"fused: w * z(reranker) + (1 - w) * z(first stage), w = {fusion_weight:.1f} chosen on the validation queries")
    return summary


def _final_validation_run(trainer, train_args, validation, state) -> dict | None:
    """The validation run the trainer's evaluator already made of the model training ended with (the best
    checkpoint's, or the last step's), or ``None`` when it must be scored again. Only in one process: there
    the evaluator ran on the main process alone, and scoring again is a collective call every process makes."""
    if state.num_processes != 1:
        return None
    step = trainer.state.global_step
    if train_args.load_best_model_at_end and trainer.state.best_global_step:
        step = trainer.state.best_global_step
    return validation.run_at_step(step)


def _fusion(candidates: dict, splits: QuerySplits, validation_run: dict, test_run: dict):
    """Fuse a reranker's runs with the first stage's, the weight chosen on the validation queries: the weight, the
    reranker's and the fused validation metrics, the fused test metrics and per-query test MRR@10."""
    from hn_trainer.evaluation.metrics import retrieval_metrics
    from hn_trainer.evaluation.reranking import fuse_runs

    weight = choose_fusion_weight(candidates["validation"], validation_run, splits.validation)
    fused_validation = fuse_runs(candidates["validation"], validation_run, weight)
    fused = fuse_runs(candidates["test"], test_run, weight)
    return (weight, retrieval_metrics(validation_run, splits.validation),
            retrieval_metrics(fused_validation, splits.validation), retrieval_metrics(fused, splits.test),
            _per_query_mrr(fused, splits.test))


def _per_query_mrr(run: dict, qrels: dict) -> dict[str, float]:
    """MRR@10 of each test query: what paired tests across runs and seeds compare."""
    from hn_trainer.evaluation.metrics import per_query_metrics

    return per_query_metrics(run, qrels, mrr_at=(10,), ndcg_at=(), recall_at=())["mrr@10"]


def _mining_card(mining_args, pool, mined) -> dict:
    info = {
        "encoders": ", ".join(mining_args.encoder_list), "pca_variance": mining_args.pca_variance,
        "method": mining_args.method, "metric": mining_args.metric, "conditions": mining_args.conditions,
        "pool_size": mining_args.pool_size, "pairs": pool.stats["pairs"],
        "pairs_without_negatives": pool.stats["pairs_without_negatives"],
    }
    if mined is not None and mined.ensemble is not None:
        info.update(dim_concat=mined.stats["dim_concat"], dim_pca=mined.stats["dim_pca"],
                    variance_kept=mined.stats["variance_kept"])
    return info


def _warm_start(trainer, data, mining_args, train_args, recipe_args, mined) -> None:
    """Train the reranker on title pseudo-queries first; the main trainer then continues from that model."""
    from dataclasses import replace

    from hn_trainer.training import HardNegativeTrainer

    titles = title_pool(data, mining_args, train_args, recipe_args, mined)
    args = replace(train_args, output_dir=str(Path(train_args.output_dir) / "warm_start"),
                   num_train_epochs=recipe_args.warm_start_epochs, max_steps=-1, resume_from_checkpoint=None,
                   push_to_hub=False, eval_strategy="no", load_best_model_at_end=False, fill_random_negatives=True,
                   save_strategy="no", remine_steps=0)
    HardNegativeTrainer(trainer.model, args, train_dataset=titles).train()


def _distill_warm_start(trainer, data, mining_args, train_args, recipe_args, mined, validation
                        ) -> tuple[str, bool, dict | None]:
    """Distil the ensemble into the reranker on pseudo-queries (`hn_trainer.training.warm_start`) with the host's
    `CrossEncoderTrainer` and `ListNetLoss`. With validation queries the checkpoint with the best validation
    metric is kept, or the base when none beats it. Returns what chose the result, for ``results.json``,
    whether the weights changed (``False`` when the base was kept), and the validation run of the weights kept
    (``None`` without validation queries; on the main process only)."""
    import copy
    import math
    from dataclasses import replace

    from sentence_transformers.cross_encoder import CrossEncoderTrainer
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    from hn_trainer.training.callbacks import KeepStepCallback
    from hn_trainer.training.warm_start import student_scale, warm_start_dataset

    model = trainer.model
    kinds = [k.strip() for k in recipe_args.warm_start_kinds.split(",") if k.strip()]
    dataset = warm_start_dataset(
        data, mined, kinds=kinds, max_queries=recipe_args.warm_start_max_pairs,
        candidates=recipe_args.warm_start_candidates, temperature=recipe_args.warm_start_temperature,
        seed=train_args.seed, batch_size=mining_args.embedding_batch_size, device=mining_args.mining_device,
    )
    steps = max(1, math.ceil(len(dataset) / train_args.per_device_train_batch_size / max(1, train_args.world_size)
                             * recipe_args.warm_start_epochs / train_args.gradient_accumulation_steps))
    select = validation is not None
    every = recipe_args.warm_start_eval_steps or max(1, math.ceil(steps / 4))
    metric = train_args.metric_for_best_model or "eval_mrr@10"
    key = metric.removeprefix("eval_")
    args = replace(
        train_args, output_dir=str(Path(train_args.output_dir) / "warm_start"),
        num_train_epochs=recipe_args.warm_start_epochs, max_steps=-1, resume_from_checkpoint=None, push_to_hub=False,
        learning_rate=recipe_args.warm_start_learning_rate or train_args.learning_rate,
        eval_strategy="steps" if select else "no", eval_steps=every, save_strategy="steps" if select else "no",
        save_steps=every, save_total_limit=1 if select else None, load_best_model_at_end=select,
        metric_for_best_model=metric if select else None, greater_is_better=True, remine_steps=0,
    )
    pinned = recipe_args.warm_start_step
    if pinned is not None:
        validation_steps = sorted({*range(every, steps + 1, every), steps}) if select else []
        if pinned not in validation_steps:
            raise ConfigError(f"--warm_start_step {pinned}: the warm start validates at steps {validation_steps} "
                              f"of {steps}" if select else "--warm_start_step needs validation queries")
    base_score = validation(model)[key] if select else None
    base_run = validation.last_run if select else None
    base_state = copy.deepcopy(model.state_dict()) if select else None
    keeper = KeepStepCallback(pinned, validation, metric) if pinned is not None else None
    host = CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, evaluator=validation,
                               loss=ListNetLoss(model, activation_fn=student_scale(recipe_args.warm_start_temperature)),
                               callbacks=[keeper] if keeper else None)
    host.train()
    n = len(dataset)
    if not select:
        return f"{n} pseudo-queries ({', '.join(kinds)}), {recipe_args.warm_start_epochs:g} epoch(s); no validation", \
            True, None
    best, best_step = host.state.best_metric, host.state.best_global_step
    if keeper is not None:
        if keeper.weights is None or keeper.score is None:
            raise HNTrainerError(f"--warm_start_step {pinned}: the warm start ended at step {host.state.global_step} "
                                 "without validating that step")
        model.load_state_dict(keeper.weights)
        return (f"{n} pseudo-queries ({', '.join(kinds)}): checkpoint of step {pinned} of {host.state.global_step}, "
                f"set by --warm_start_step ({key} {keeper.score:.4f} on the validation queries; best {best:.4f} at "
                f"step {best_step}; base {base_score:.4f})"), True, keeper.run
    if best is None or best <= base_score:
        model.load_state_dict(base_state)
        return (f"{n} pseudo-queries ({', '.join(kinds)}): no warm-start checkpoint beat the base on the validation "
                f"queries ({key} {base_score:.4f}); the base was kept"), False, base_run
    return (f"{n} pseudo-queries ({', '.join(kinds)}): checkpoint of step {best_step} of {host.state.global_step}, "
            f"best {key} on the validation queries ({best:.4f}; base {base_score:.4f})"), True, \
        validation.run_at_step(best_step)


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
    "keep_pairs_without_negatives": True,
    "fill_random_negatives": True,
    "num_train_epochs": 2,
    "learning_rate": 1e-4,
    "warmup_steps": 5,
    "per_device_train_batch_size": 8,
    "max_length": 128,
    "eval_candidates_k": 10,
    "logging_steps": 10,
    "save_strategy": "no",
    "eval_strategy": "no",
    "report_to": "none",
    "show_triples": 3,
}


def demo_main(argv: list[str] | None = None) -> dict:
    """``hn-trainer demo``: the recipe on the built-in cloud-documentation corpus, offline, on a CPU."""
    return run_training(*parse_recipe_args(argv, defaults=DEMO_DEFAULTS))
