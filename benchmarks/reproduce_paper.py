"""Reproduce the paper's comparison on a public BEIR dataset: negative methods, ablations, warm start, length.

Every row reranks the same candidates (the top ``K`` of one first-stage retriever) of the same test queries,
and every fine-tuned row gets the same training budget: the same number of optimizer steps, the same number
of (query, positive) pairs per step, the same base model, learning rate and truncation length, and one
negative per pair (pairs whose sampler found none get a random one: ``keep_empty=True`` plus
``fill_random_negatives``). Rows differ only in where the negatives come from.

Rows (``--list_rows`` prints them; ``--rows`` picks some):

- ``first_stage``: the retriever's own ranking of its top ``K``.
- ``base_cold``: the base reranker as loaded (offline: all-MiniLM-L6-v2's body with a fresh, seeded head).
- ``base_warm``: the base after the title warm start, no supervised fine-tuning (the paper's "no fine-tuning"
  baseline). The warm start (`hn_trainer.recipe.title_pool`) uses no labels: title -> abstract
  pseudo-queries with negatives mined in the ensemble space; it runs once per seed and every warm row starts
  from the saved model.
- ``positives_only``: the paper's "fine-tuning with positive documents only", read literally: the same pairs,
  steps and loss (BCE) with no negative at all, so every label is 1. LCE is undefined without negatives,
  and random or in-batch negatives are rows of their own.
- ``random``, ``bm25``, ``in_batch`` (the other positives of the batch; ``B - 1`` negatives per pair, so
  more rows per step), ``dense_topk`` (static dense hard negatives, STAR-like), ``dense_remine`` (the same
  pools re-scored by the model being trained every ``--remine_every`` steps, hardest first: ADORE+STAR-like),
  ``positive_aware`` (NV-Retriever TopK-PercPos 95%), ``st_mine`` (sentence-transformers'
  ``mine_hard_negatives`` with ``absolute_margin=0`` on the best single sentence-transformers encoder, its
  triples fed to our trainer), ``ours`` (dual condition, ensemble, PCA 95%). The dense rows search the same
  ensemble + PCA 95% space as ``ours``, so they differ from it by the selection rule alone. On SciFact the
  dual condition finds a negative for only about half of the training pairs (the positive is often the
  nearest document); the rest train with a random one, and each row reports how many.
- Ablations: ``single_best`` (dual condition on the best single encoder, chosen by first-stage MRR@10 on the
  validation queries), ``concat`` (ensemble without PCA), ``pca70``, ``pca80``, ``pca99`` (``ours`` is 95%),
  ``cond1`` (condition 1 only).
- Warm start: ``ours_cold`` (and ``random_cold``, not in the default set) train from the base without the
  warm start.

Protocol: ``--val_queries`` training queries (seeded draw) are held out of training; the fusion weight
``w`` of ``w * z(reranker) + (1 - w) * z(first stage)`` (per-query z-scores, `fuse_runs`) is chosen on their
candidates from ``--fusion_grid`` (highest MRR@10; ties go to the larger ``w``), never on test. Each row is
reported alone and fused. Metrics are means over test queries; with several seeds, mean and standard
deviation over seeds. Ours is compared with each other row by a paired permutation test over test queries
(`paired_test` on per-query MRR@10, averaged over seeds), with Holm's correction over the comparisons of a
table; a difference is called a win or a loss only when the corrected p-value is below 0.05.

Short and long documents: test queries are split at the median length (reranker tokens, no truncation)
of their positives (a query with several positives: their mean length), unless ``--length_threshold`` is
given; MRR@3 of the base and the fine-tuned reranker is reported per group.

Resumable: each finished (row, seed) is written atomically to ``<output_dir>/rows/`` under a key of every
setting it depends on, and the warm-started model of each seed is cached in ``<work_dir>/warm_start/``; a
re-run computes only what is missing (``--force`` recomputes). Embeddings come from hn-trainer's cache
(each encoder encodes each text once, across rows and runs).

Outputs in ``--output_dir``: ``results.json`` (every row and seed, metrics, fusion weights, mining stats,
wall times, settings, machine, library versions, and each of the paper's claims judged from the paired
tests), ``results.md`` (the claims, the tables), ``mrr10_by_method.png`` and ``mrr10_vs_pca.png``. A
hand-written ``findings.md`` in that folder (why a claim held or not) is copied into ``results.md``.

Budget of the default run (one seed, 2-core CPU, 128 tokens per pair), measured on SciFact
(``benchmarks/results/paper``): 92 min for the 19 rows on a warm embedding cache, of which the warm
start took 4 min, a fine-tuned row 4-5 min (training ~100 s; in-batch and the ADORE-like re-scoring
about 5 min more) and each evaluation of 8,000 pairs (300 test + 100 validation queries x 20 candidates)
150-190 s. An empty cache adds the encoding of SciFact's 6,292 texts: at the 6.1 texts/s this ensemble
(MiniLM, paraphrase-MiniLM-L3, LSA) ran at in ``benchmarks/results/embedding_speed.md`` (a loaded 2-core
CPU), about 17 min. all-mpnet-base-v2 took 10 min for the 832 longest abstracts alone (1.4 per second;
texts are encoded longest first), so the CPU default leaves it out. The 128-token pairs (title and the
start of each abstract; SciFact documents have a median of 314 tokens) are what that budget allows; on a
GPU use ``--max_length 256`` or more, more steps and ``--seeds 3``. ``--quick`` is a smoke test (the
default ensemble, 10 rows, 20 steps, 60 test queries).

Example:
    HF_HUB_OFFLINE=1 python benchmarks/reproduce_paper.py                # the default run (SciFact)
    HF_HUB_OFFLINE=1 python benchmarks/reproduce_paper.py --quick        # smoke test
    ENCODERS=sentence-transformers/all-MiniLM-L6-v2,sentence-transformers/paraphrase-MiniLM-L3-v2
    HF_HUB_OFFLINE=1 python benchmarks/reproduce_paper.py --seeds 3 --device cuda --max_length 256 \\
        --train_steps 300 --encoders $ENCODERS,sentence-transformers/all-mpnet-base-v2,lsa
    HF_HUB_OFFLINE=1 python benchmarks/reproduce_paper.py --rows ours,random,pca80 --data BeIR/fiqa
    HF_HUB_OFFLINE=1 python benchmarks/reproduce_paper.py --report_only  # tables and plots from saved rows
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import gzip
import hashlib
import json
import logging
import os
import random
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks._machine import git_commit, git_dirty
from benchmarks._machine import machine_info as base_machine_info
from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.io import atomic_path, write_json

logger = logging.getLogger(__name__)

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
PARAPHRASE_L3 = "sentence-transformers/paraphrase-MiniLM-L3-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"
# all-mpnet-base-v2 is too slow for the 2-hour CPU budget (see the module docstring): GPU runs add it with
# --encoders.
DEFAULT_ENCODERS = (MINILM, PARAPHRASE_L3, "lsa")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "scifact"
METRICS = ("mrr@3", "mrr@10", "ndcg@10", "recall@10")
KEY_METRIC = "mrr@10"
REFERENCE_ROW = "ours"
SIGNIFICANCE = 0.05
SCRIPT_VERSION = 2  # 2: training on sentence-transformers' CrossEncoderTrainer (rows of 1 are not reused)
# Hand-written notes on the results, in the output folder: copied into results.md as its "Findings".
FINDINGS_FILE = "findings.md"

# Throughputs on a 2-core CPU (MiniLM-L6 cross-encoder, batch of 16 pairs; encoders at 250-token texts), used
# only for the time estimate printed before a run.
CPU_SCORE_TOKENS_PER_S = 8000.0
CPU_TRAIN_SECONDS_PER_ROW_TOKEN = 1.5 / (16 * 128)


# ----- rows ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One line of the tables: how its reranker is obtained.

    Attributes:
        name: Key used by ``--rows`` and in file names.
        label: Text of the tables.
        table: ``"methods"``, ``"ablations"`` or ``"warm_start"`` (where it is listed first).
        kind: ``"first_stage"`` (the retriever), ``"base"`` (a reranker without supervised training) or
            ``"train"`` (fine-tuned).
        warm: Start from the warm-started model of the seed (else from the base model).
        negatives: ``"dual_condition"``, ``"dense_topk"``, ``"positive_aware"``, ``"random"``, ``"bm25"``,
            ``"st_mine"``, ``"in_batch"`` or ``"none"`` (positives only).
        space: Vectors of the dense samplers: ``"ensemble"`` or ``"single"`` (the best single encoder).
        pca_variance: PCA of the ensemble space (``None``: concatenation only).
        conditions: ``"both"`` or ``"query"`` (condition 1 only).
        remine: Re-score the pools with the model being trained (``--remine_every``).
    """

    name: str
    label: str
    table: str
    kind: str = "train"
    warm: bool = True
    negatives: str = "dual_condition"
    space: str = "ensemble"
    pca_variance: float | None = 0.95
    conditions: str = "both"
    remine: bool = False

    def identity(self) -> dict:
        """The fields that change what the row computes (the label does not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("label", "table")}


ROWS: dict[str, Row] = {
    r.name: r
    for r in (
        Row(
            "first_stage", "First stage (retriever ranking)", "methods", kind="first_stage", negatives="none"
        ),
        Row("base_cold", "Base reranker, fresh head (no training)", "warm_start", kind="base", warm=False),
        Row("base_warm", "Base + title warm start (no fine-tuning)", "methods", kind="base"),
        Row("positives_only", "Positives only (BCE, no negatives)", "methods", negatives="none"),
        Row("random", "Random negatives", "methods", negatives="random"),
        Row("bm25", "BM25 negatives", "methods", negatives="bm25"),
        Row("in_batch", "In-batch negatives", "methods", negatives="in_batch"),
        Row("dense_topk", "Dense top-k, static (STAR-like)", "methods", negatives="dense_topk"),
        Row(
            "dense_remine",
            "Dense top-k + re-mining (ADORE+STAR-like)",
            "methods",
            negatives="dense_topk",
            remine=True,
        ),
        Row(
            "positive_aware",
            "Positive-aware TopK-PercPos 95% (NV-Retriever)",
            "methods",
            negatives="positive_aware",
        ),
        Row(
            "st_mine",
            "ST mine_hard_negatives, margin 0 (best single ST encoder)",
            "methods",
            negatives="st_mine",
            space="single",
            pca_variance=None,
        ),
        Row("ours", "Ours: dual condition, ensemble, PCA 95%", "methods"),
        Row(
            "single_best",
            "Best single encoder, dual condition",
            "ablations",
            space="single",
            pca_variance=None,
        ),
        Row("concat", "Ensemble concatenation, no PCA", "ablations", pca_variance=None),
        Row("pca70", "Ensemble, PCA 70%", "ablations", pca_variance=0.70),
        Row("pca80", "Ensemble, PCA 80%", "ablations", pca_variance=0.80),
        Row("pca99", "Ensemble, PCA 99%", "ablations", pca_variance=0.99),
        Row("cond1", "Condition 1 only (d(Q,D) < d(Q,PD))", "ablations", conditions="query"),
        Row("ours_cold", "Ours, no warm start", "warm_start", warm=False),
        Row("random_cold", "Random negatives, no warm start", "warm_start", warm=False, negatives="random"),
    )
}
ROW_GROUPS: dict[str, tuple[str, ...]] = {
    "all": tuple(ROWS),
    "default": tuple(r for r in ROWS if r != "random_cold"),
    "quick": (
        "first_stage",
        "base_cold",
        "base_warm",
        "positives_only",
        "random",
        "bm25",
        "dense_topk",
        "ours",
        "single_best",
        "ours_cold",
    ),
    "methods": tuple(r.name for r in ROWS.values() if r.table == "methods"),
    "ablations": ("ours", *(r.name for r in ROWS.values() if r.table == "ablations")),
    "cold": ("base_cold", "base_warm", "ours", "ours_cold", "random", "random_cold"),
}
TABLES = {
    "methods": (
        "first_stage",
        "base_cold",
        "base_warm",
        "positives_only",
        "random",
        "bm25",
        "in_batch",
        "dense_topk",
        "dense_remine",
        "positive_aware",
        "st_mine",
        "ours",
    ),
    "ablations": ("ours", "single_best", "concat", "pca70", "pca80", "pca99", "cond1"),
    "warm_start": ("base_cold", "base_warm", "ours_cold", "ours", "random_cold", "random"),
}
PCA_ROWS = (("pca70", 0.70), ("pca80", 0.80), ("ours", 0.95), ("pca99", 0.99), ("concat", 1.0))


def resolve_rows(spec: str) -> list[str]:
    """Row names from a comma list of names and group names (``all``, ``default``, ``quick``, ...), in table order.

    Raises:
        ConfigError: An unknown name.
    """
    chosen: set[str] = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        if item in ROW_GROUPS:
            chosen.update(ROW_GROUPS[item])
        elif item in ROWS:
            chosen.add(item)
        else:
            raise ConfigError(
                f"unknown row {item!r}; rows: {', '.join(ROWS)}; groups: {', '.join(ROW_GROUPS)}"
            )
    if not chosen:
        raise ConfigError("--rows selects no row")
    return [name for name in ROWS if name in chosen]


# ----- settings -----------------------------------------------------------------------------------------------


@dataclass
class Settings:
    """Everything a run depends on (the command-line flags after the preset is applied)."""

    data: str = str(DEFAULT_DATA)
    qrels: str | None = None
    train_split: str = "train"
    test_split: str = "test"
    num_train_queries: int | None = None
    output_dir: str = str(REPO_ROOT / "benchmarks" / "results" / "paper")
    work_dir: str = str(REPO_ROOT / "runs" / "reproduce_paper")
    cache_dir: str | None = None
    encoders: str = ",".join(DEFAULT_ENCODERS)
    base_model: str = MINILM
    first_stage: str = "dense"
    first_stage_encoder: str = MINILM
    k: int = 20
    max_test_queries: int | None = None
    val_queries: int = 100
    split_seed: int = 42
    seed: int = 42
    seeds: int = 1
    rows: str = "default"
    device: str = "auto"
    train_steps: int = 80
    warm_start_steps: int = 150
    batch_size: int = 8
    num_negatives: int = 1
    pool_size: int = 8
    max_length: int = 128
    learning_rate: float = 5e-5
    warmup_ratio: float = 0.1
    remine_every: int | None = None
    positive_aware_ratio: float = 0.95
    eval_batch_size: int = 64
    embedding_batch_size: int = 64
    fusion_grid: str = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"
    length_threshold: int | None = None
    quick: bool = False

    @property
    def encoder_list(self) -> list[str]:
        return [e.strip() for e in self.encoders.split(",") if e.strip()]

    @property
    def seed_list(self) -> list[int]:
        return [self.seed + i for i in range(self.seeds)]

    @property
    def grid(self) -> list[float]:
        return sorted({float(x) for x in self.fusion_grid.split(",") if x.strip()})

    @property
    def remine_steps(self) -> int:
        """Re-scoring interval of ``dense_remine``: twice in a run by default, never on the last step."""
        return self.remine_every or self.train_steps // 3 + 1


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "quick": {
        "rows": "quick",
        "train_steps": 20,
        "warm_start_steps": 30,
        "max_test_queries": 60,
        "val_queries": 40,
        "output_dir": str(REPO_ROOT / "benchmarks" / "results" / "paper" / "quick"),
        "work_dir": str(REPO_ROOT / "runs" / "reproduce_paper_quick"),
    },
}


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    p = argparse.ArgumentParser(
        description="Reproduce the paper's tables (negative methods, ablations, warm start, short vs long "
        "documents) on a BEIR dataset, with fine-tuned cross-encoder rerankers.",
    )
    add = p.add_argument
    add("--data", help=f"BEIR folder or Hub id (default {defaults.data})")
    add("--qrels", help="Hub id of the qrels repository (Hub datasets; default '<data>-qrels')")
    add("--train_split", help=f"qrels split of the training queries (default {defaults.train_split})")
    add("--test_split", help=f"qrels split of the test queries (default {defaults.test_split})")
    add(
        "--num_train_queries",
        type=int,
        help="the paper's scheme: pool all judged queries, draw this many for training, test on the rest",
    )
    add("--output_dir", help="results folder (default benchmarks/results/paper, --quick: .../paper/quick)")
    add("--work_dir", help="warm-started models, raw scores, trainer folders (default runs/reproduce_paper)")
    add("--cache_dir", help="embedding cache (default $HN_TRAINER_CACHE/embeddings or ~/.cache/hn_trainer)")
    add(
        "--encoders",
        help=f"comma-separated encoder specs of the ensemble (default {defaults.encoders}; add {MPNET} "
        "where encoding time allows: 1.4 SciFact abstracts per second on a 2-core CPU)",
    )
    add("--base_model", help=f"base reranker (default {defaults.base_model})")
    add("--first_stage", choices=("dense", "bm25", "ensemble"), help="first-stage retriever (default dense)")
    add(
        "--first_stage_encoder",
        help=f"encoder of the dense first stage (default {defaults.first_stage_encoder})",
    )
    add("--k", type=int, help=f"first-stage candidates reranked per query (default {defaults.k})")
    add("--max_test_queries", type=int, help="evaluate on the first N test queries (default all; --quick 60)")
    add(
        "--val_queries",
        type=int,
        help=f"training queries held out to choose the fusion weight "
        f"(default {defaults.val_queries}; --quick 40)",
    )
    add("--split_seed", type=int, help=f"seed of the validation draw (default {defaults.split_seed})")
    add("--seed", type=int, help=f"first seed (default {defaults.seed})")
    add("--seeds", type=int, help="number of seeds (seed, seed+1, ...; default 1)")
    add(
        "--rows", help="comma list of rows and groups (default: 'default'; --quick: 'quick'); see --list_rows"
    )
    add("--list_rows", action="store_true", help="print the rows and groups, then exit")
    add("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    add(
        "--train_steps",
        type=int,
        help=f"optimizer steps of every fine-tuned row (default {defaults.train_steps}; --quick 20)",
    )
    add(
        "--warm_start_steps",
        type=int,
        help=f"steps of the title warm start (default {defaults.warm_start_steps}; --quick 30)",
    )
    add("--batch_size", type=int, help=f"(query, positive) pairs per step (default {defaults.batch_size})")
    add("--num_negatives", type=int, help=f"negatives per pair (default {defaults.num_negatives})")
    add("--pool_size", type=int, help=f"negatives mined per pair (default {defaults.pool_size})")
    add("--max_length", type=int, help=f"tokens per (query, document) pair (default {defaults.max_length})")
    add("--learning_rate", type=float, help=f"(default {defaults.learning_rate})")
    add("--warmup_ratio", type=float, help=f"(default {defaults.warmup_ratio})")
    add(
        "--remine_every",
        type=int,
        help="dense_remine: re-score the pools every N steps (default train_steps // 3 + 1)",
    )
    add("--positive_aware_ratio", type=float, help="positive_aware: the TopK-PercPos fraction (default 0.95)")
    add("--eval_batch_size", type=int, help=f"pairs per scoring pass (default {defaults.eval_batch_size})")
    add(
        "--embedding_batch_size",
        type=int,
        help=f"texts per encoder batch (default {defaults.embedding_batch_size})",
    )
    add("--fusion_grid", help=f"comma list of fusion weights to try (default {defaults.fusion_grid})")
    add(
        "--length_threshold",
        type=int,
        help="tokens separating short from long positives (default: the median)",
    )
    add(
        "--quick",
        action="store_true",
        help="smoke-test preset: MiniLM+ONNX+LSA, a subset of rows, 20 steps, "
        "60 test queries (explicit flags still win)",
    )
    add("--force", action="store_true", help="recompute rows that were already saved")
    add("--report_only", action="store_true", help="compute nothing: tables and plots from the saved rows")
    add("--no_plots", action="store_true", help="skip the PNG plots")
    add("--verbose", action="store_true", help="log at DEBUG level")
    return p


def parse_settings(argv: Sequence[str] | None = None) -> tuple[Settings, argparse.Namespace]:
    """Flags over the preset (``--quick`` or default) over `Settings` defaults."""
    args = build_parser().parse_args(argv)
    values = asdict(Settings())
    values.update(PRESETS["quick" if args.quick else "default"])
    for name in values:
        given = getattr(args, name, None)
        if given is not None and given is not False:
            values[name] = given
    values["quick"] = bool(args.quick)
    settings = Settings(**values)
    _check_settings(settings)
    return settings, args


def _check_settings(s: Settings) -> None:
    positive = (
        "k",
        "val_queries",
        "seeds",
        "train_steps",
        "batch_size",
        "pool_size",
        "max_length",
        "eval_batch_size",
        "embedding_batch_size",
    )
    for name in positive:
        if getattr(s, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(s, name)}")
    if s.warm_start_steps < 0 or s.num_negatives < 0:
        raise ConfigError("--warm_start_steps and --num_negatives must not be negative")
    if not s.encoder_list:
        raise ConfigError("--encoders names no encoder")
    if not s.grid or any(not 0 <= w <= 1 for w in s.grid):
        raise ConfigError(f"--fusion_grid must list weights in [0, 1], got {s.fusion_grid!r}")
    resolve_rows(s.rows)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is visible")
    return name


def digest(obj: Any, length: int = 12) -> str:
    """Short sha1 of the JSON of `obj` (keys sorted): the cache key of settings."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:length]


# ----- the benchmark ------------------------------------------------------------------------------------------


@dataclass
class Space:
    """Vectors of one embedding space and how it was built.

    Attributes:
        result: The `EnsembleEmbeddings` of the corpus and of ``query_ids`` (a PCA is fitted on both).
        query_ids: The embedded queries, the rows of ``result.query_embeddings``.
        encoders: Encoder specs, in concatenation order.
        pca_variance: Variance the PCA keeps (``None``: concatenation only).
    """

    result: Any
    query_ids: list[str]
    encoders: tuple[str, ...]
    pca_variance: float | None
    queries: dict[str, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.queries = dict(zip(self.query_ids, self.result.query_embeddings))

    @property
    def corpus(self) -> np.ndarray:
        """``[n_documents, d]``, in corpus order."""
        return self.result.corpus_embeddings

    def query_vectors(self, ids: Sequence[str]) -> np.ndarray:
        """``[len(ids), d]``: the vectors of `ids` (all embedded), in that order."""
        return np.stack([self.queries[q] for q in ids])

    def as_mined(self):
        """The space as the recipe's stages read a mining run's vectors: a
        `hn_trainer.mining.pipeline.MinedPairs` whose ``ensemble`` encodes new texts with the same PCA, with
        ``corpus_embeddings``, and no mined pairs."""
        from hn_trainer.mining.pipeline import MinedPairs

        return MinedPairs(
            dataset=None,
            stats={},
            query_ids=list(self.query_ids),
            query_embeddings=self.result.query_embeddings,
            corpus_embeddings=self.result.corpus_embeddings,
            ensemble=self.result,
        )

    @property
    def info(self) -> dict:
        r = self.result
        return {
            "encoders": list(self.encoders),
            "pca_variance": self.pca_variance,
            "dim_concat": r.dim_concat,
            "dim": r.dim_pca,
            "variance_kept": r.variance_kept,
        }


@dataclass
class RowResult:
    """A finished (row, seed): saved as one JSON file."""

    row: str
    seed: int | None
    key: str
    metrics: dict  # {"alone": {metric: mean}, "fused": {...}}
    per_query: dict  # {"alone": {metric: {qid: value}}, "fused": {...}}
    fusion_weight: float | None
    validation: dict
    info: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


class Benchmark:
    """Data, splits, embedding spaces, candidates and warm-started models shared by every row."""

    def __init__(self, settings: Settings) -> None:
        from hn_trainer.data import load_beir, split_queries
        from hn_trainer.mining.pipeline import all_positives

        self.s = settings
        self.device = resolve_device(settings.device)
        self.output_dir = Path(settings.output_dir)
        self.work_dir = Path(settings.work_dir)
        self.rows_dir = self.output_dir / "rows"
        self.seconds: dict[str, float] = {}

        t0 = time.perf_counter()
        data = load_beir(settings.data, qrels=settings.qrels)
        if settings.num_train_queries is not None:
            data = split_queries(
                data,
                settings.num_train_queries,
                seed=settings.split_seed,
                train_name=settings.train_split,
                test_name=settings.test_split,
            )
        for split in (settings.train_split, settings.test_split):
            if split not in data.splits:
                raise HNTrainerError(
                    f"{settings.data} has no qrels split {split!r} (splits: {data.splits}); "
                    "use --num_train_queries for the paper's split scheme"
                )
        self.data = data
        self.doc_ids = list(data.corpus["_id"])
        self.doc_texts = data.document_texts()
        self.doc_text = dict(zip(self.doc_ids, self.doc_texts))
        self.query_text = dict(zip(data.queries["_id"], data.query_texts()))
        self.positives = all_positives(data)

        test_rel = data.relevant(settings.test_split)
        self.test_ids = (
            list(test_rel)[: settings.max_test_queries] if settings.max_test_queries else list(test_rel)
        )
        self.test_qrels = {q: test_rel[q] for q in self.test_ids}
        train_rel = data.relevant(settings.train_split)
        train_queries = list(train_rel)
        if settings.val_queries >= len(train_queries):
            raise ConfigError(
                f"--val_queries {settings.val_queries} leaves no training query "
                f"({len(train_queries)} in split {settings.train_split!r})"
            )
        val = set(random.Random(settings.split_seed).sample(sorted(train_queries), settings.val_queries))
        self.val_ids = [q for q in train_queries if q in val]
        self.val_qrels = {q: train_rel[q] for q in self.val_ids}
        self.train_pairs = [(q, d) for q, d in data.pairs(settings.train_split) if q not in val]
        self.train_ids = list(dict.fromkeys(q for q, _ in self.train_pairs))
        self.embed_ids = list(
            dict.fromkeys(
                self.train_ids + self.val_ids + (self.test_ids if settings.first_stage == "ensemble" else [])
            )
        )
        self.seconds["load"] = time.perf_counter() - t0

        self._spaces: dict[tuple, Space] = {}
        self.candidates: dict[str, dict] = {}
        self.encoder_report: dict[str, dict] = {}
        self.best_single: str | None = None
        self.best_st: str | None = None
        self.warm_info: dict[int, dict] = {}
        self._tokenizer = None

    # ----- keys ------------------------------------------------------------------------------------------------

    def data_identity(self) -> dict:
        s = self.s
        return {
            "data": s.data,
            "qrels": s.qrels,
            "train_split": s.train_split,
            "test_split": s.test_split,
            "num_train_queries": s.num_train_queries,
            "split_seed": s.split_seed,
            "documents": len(self.doc_ids),
            "test": digest(self.test_ids),
            "val": digest(self.val_ids),
            "train": digest(self.train_pairs),
            "k": s.k,
            "first_stage": s.first_stage,
            "first_stage_encoder": s.first_stage_encoder if s.first_stage == "dense" else None,
            "first_stage_space": s.encoders if s.first_stage == "ensemble" else None,
            "version": SCRIPT_VERSION,
        }

    def model_identity(self) -> dict:
        s = self.s
        return {
            "base_model": s.base_model,
            "max_length": s.max_length,
            "eval_batch_size": s.eval_batch_size,
            "fusion_grid": s.grid,
        }

    def training_identity(self) -> dict:
        s = self.s
        return {
            "train_steps": s.train_steps,
            "batch_size": s.batch_size,
            "num_negatives": s.num_negatives,
            "pool_size": s.pool_size,
            "learning_rate": s.learning_rate,
            "warmup_ratio": s.warmup_ratio,
            "encoders": s.encoder_list,
        }

    def warm_identity(self, seed: int) -> dict:
        from hn_trainer.recipe import RecipeArguments

        s = self.s
        return {
            "negatives": RecipeArguments().warm_start_negatives,
            "base_model": s.base_model,
            "max_length": s.max_length,
            "steps": s.warm_start_steps,
            "batch_size": s.batch_size,
            "pool_size": s.pool_size,
            "learning_rate": s.learning_rate,
            "warmup_ratio": s.warmup_ratio,
            "encoders": s.encoder_list,
            "documents": len(self.doc_ids),
            "data": s.data,
            "seed": seed,
            "version": SCRIPT_VERSION,
        }

    def row_key(self, row: Row, seed: int | None) -> str:
        ident: dict[str, Any] = {"row": row.identity(), "data": self.data_identity()}
        if row.kind != "first_stage":
            ident.update(model=self.model_identity(), seed=seed)
            if row.warm:
                ident["warm"] = self.warm_identity(seed)
        if row.kind == "train":
            ident["training"] = self.training_identity()
            if row.remine:
                ident["remine_every"] = self.s.remine_steps
            if row.negatives == "positive_aware":
                ident["ratio"] = self.s.positive_aware_ratio
            if row.space == "single":
                ident["single"] = self.best_st if row.negatives == "st_mine" else self.best_single
        return digest(ident, 16)

    def row_path(self, row: Row, seed: int | None, key: str) -> Path:
        return self.rows_dir / f"{row.name}__seed{'-' if seed is None else seed}__{key[:12]}.json"

    # ----- embeddings and candidates ---------------------------------------------------------------------------

    def mining_arguments(self, encoders: Sequence[str], pca_variance: float | None, conditions: str = "both"):
        from hn_trainer.config import MiningArguments

        return MiningArguments(
            encoders=",".join(encoders),
            pca_variance=pca_variance,
            conditions=conditions,
            cache_dir=self.s.cache_dir,
            embedding_batch_size=self.s.embedding_batch_size,
            mining_device=self.device,
            positive_aware_ratio=self.s.positive_aware_ratio,
            pool_size=self.s.pool_size,
            keep_pairs_without_negatives=True,
        )

    def space(self, encoders: Sequence[str], pca_variance: float | None) -> Space:
        """Vectors of the corpus and the training + validation queries (memoised; encoders cache per text).

        One space serves mining, the encoder selection on the validation queries and the warm start, so
        its PCA is fitted on the corpus and the queries of ``embed_ids`` (the training and validation
        queries, plus the test queries for the ensemble first stage).
        """
        from hn_trainer.embeddings import build_ensemble_embeddings

        key = (tuple(encoders), pca_variance)
        if key not in self._spaces:
            t0 = time.perf_counter()
            args = self.mining_arguments(encoders, pca_variance)
            index = self.data.query_index()
            result = build_ensemble_embeddings(
                self.data.corpus,
                self.data.queries.select([index[q] for q in self.embed_ids]),
                args.encoder_list,
                pca_variance=args.pca_variance,
                cache_dir=args.cache_dir,
                batch_size=args.embedding_batch_size,
                device=args.mining_device,
            )
            self._spaces[key] = Space(result, list(self.embed_ids), tuple(encoders), pca_variance)
            name = f"embed[{'+'.join(encoders)}|pca={pca_variance}]"
            self.seconds[name] = time.perf_counter() - t0
        return self._spaces[key]

    def row_space(self, row: Row) -> Space:
        if row.space == "single":
            return self.space([self.best_st if row.negatives == "st_mine" else self.best_single], None)
        return self.space(self.s.encoder_list, row.pca_variance)

    def prepare(self) -> None:
        """Ensemble embeddings, first-stage candidates of test and validation queries, the best single encoder."""
        from hn_trainer import recipe
        from hn_trainer.evaluation import first_stage_candidates, retrieval_metrics

        s = self.s
        logger.info(
            "Embedding %d documents and %d queries with %s",
            len(self.doc_ids),
            len(self.embed_ids),
            ", ".join(s.encoder_list),
        )
        ours = self.space(s.encoder_list, 0.95)
        eval_args = recipe.EvaluationArguments(
            first_stage=s.first_stage,
            first_stage_encoder=s.first_stage_encoder,
            eval_candidates_k=s.k,
            eval_batch_pairs=s.eval_batch_size,
        )
        t0 = time.perf_counter()
        for split, qrels in (("test", self.test_qrels), ("val", self.val_qrels)):
            self.candidates[split] = recipe.first_stage_run(
                self.data, eval_args, self.mining_arguments(s.encoder_list, 0.95), ours.as_mined(), qrels
            )
        self.seconds["first_stage"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        def validation_retrieval(space: Space, kind: str) -> dict:
            """Dense retrieval of the validation queries over the whole corpus in one space."""
            run = first_stage_candidates(
                "dense",
                self.val_ids,
                None,
                self.doc_ids,
                None,
                k=s.k,
                query_embeddings=space.query_vectors(self.val_ids),
                corpus_embeddings=space.corpus,
                show_progress_bar=False,
            )
            return {"kind": kind, "dim": space.result.dim_pca, **retrieval_metrics(run, self.val_qrels)}

        for spec in s.encoder_list:
            self.encoder_report[spec] = validation_retrieval(self.space([spec], None), encoder_kind(spec))
        self.encoder_report["ensemble (PCA 95%)"] = validation_retrieval(ours, "ensemble")
        ranked = sorted(s.encoder_list, key=lambda e: -self.encoder_report[e][KEY_METRIC])
        self.best_single = ranked[0]
        st_ranked = [e for e in ranked if self.encoder_report[e]["kind"] == "st"]
        self.best_st = st_ranked[0] if st_ranked else None
        self.seconds["encoder_selection"] = time.perf_counter() - t0
        logger.info(
            "Best single encoder on the validation queries: %s (MRR@10 %.4f); best sentence-transformers "
            "encoder: %s",
            self.best_single,
            self.encoder_report[self.best_single][KEY_METRIC],
            self.best_st,
        )

    # ----- models ---------------------------------------------------------------------------------------------

    def training_arguments(self, output_dir: Path, seed: int, *, steps: int, row: Row | None = None):
        from hn_trainer.training import HardNegativeTrainingArguments

        s = self.s
        negatives = row.negatives if row is not None else "dual_condition"
        no_hard = negatives in ("none", "in_batch")
        return HardNegativeTrainingArguments(
            output_dir=str(output_dir),
            max_steps=steps,
            per_device_train_batch_size=s.batch_size,
            learning_rate=s.learning_rate,
            warmup_steps=s.warmup_ratio,
            lr_scheduler_type="linear",
            weight_decay=0.01,
            seed=seed,
            loss="bce",
            num_negatives=0 if no_hard else s.num_negatives,
            negative_strategy="hardest",
            fill_random_negatives=not no_hard,
            in_batch_negatives=negatives == "in_batch",
            max_length=s.max_length,
            remine_steps=s.remine_steps if row is not None and row.remine else 0,
            remine_batch_size=s.eval_batch_size,
            save_strategy="no",
            eval_strategy="no",
            report_to="none",
            logging_steps=max(1, steps // 8),
            use_cpu=self.device == "cpu",
            dataloader_pin_memory=False,
            disable_tqdm=False,
        )

    def warm_path(self, seed: int) -> Path:
        """Folder of the warm-started model of `seed` (named by the settings it depends on)."""
        return self.work_dir / "warm_start" / f"seed{seed}-{digest(self.warm_identity(seed))}"

    def warm_model(self, seed: int) -> Path:
        """The base model after the title warm start of `seed`, trained once and cached on disk."""
        from hn_trainer.recipe import RecipeArguments
        from hn_trainer.training import HardNegativeTrainer

        s = self.s
        ident = self.warm_identity(seed)
        path = self.warm_path(seed)
        meta_path = path / "warm_start.json"
        if meta_path.exists():
            if seed not in self.warm_info:  # trained by an earlier run
                self.warm_info[seed] = {**json.loads(meta_path.read_text()), "cached": True}
            return path
        if s.warm_start_steps == 0:
            raise ConfigError("a warm row was selected but --warm_start_steps is 0")
        logger.info("Warm start, seed %d: %d steps on title pseudo-queries", seed, s.warm_start_steps)
        t0 = time.perf_counter()
        ours = self.space(s.encoder_list, 0.95)
        args = self.training_arguments(
            self.work_dir / "trainer" / f"warm_start-seed{seed}", seed, steps=s.warm_start_steps
        )
        recipe_args = RecipeArguments(
            model_name_or_path=s.base_model,
            warm_start="titles",
            warm_start_max_pairs=s.warm_start_steps * s.batch_size,
        )
        titles = self.title_dataset(args, recipe_args, ours)
        mined = time.perf_counter() - t0
        trainer = HardNegativeTrainer(s.base_model, args, train_dataset=titles)
        output = trainer.train()
        with atomic_path(path) as tmp:
            trainer.model.save_pretrained(str(tmp))  # BCE: CrossEncoder(tmp) scores with a sigmoid
            info = {
                "seed": seed,
                "steps": s.warm_start_steps,
                "pairs": len(titles),
                "stats": titles.stats,
                "negatives": recipe_args.warm_start_negatives,
                "training_loss": output.training_loss,
                "seconds": time.perf_counter() - t0,
                "mining_seconds": mined,
                "settings": ident,
            }
            write_json(tmp / "warm_start.json", info)
        self.warm_info[seed] = {**info, "cached": False}
        del trainer
        gc.collect()
        return path

    def title_dataset(self, args, recipe_args, space: Space):
        """The recipe's title pseudo-queries (`hn_trainer.recipe.title_pool`): each title a query for its
        abstract, ``pool_size`` negatives mined in the ensemble space
        (``RecipeArguments.warm_start_negatives``)."""
        from hn_trainer import recipe

        mining_args = self.mining_arguments(self.s.encoder_list, 0.95)
        titles = recipe.title_pool(self.data, mining_args, args, recipe_args, space.as_mined())
        if titles.stats.get("pairs_dropped"):
            logger.warning(
                "the warm start dropped %d title pairs without a negative", titles.stats["pairs_dropped"]
            )
        return titles

    def load_model(self, row: Row, seed: int):
        """The `CrossEncoder` of a base row, on the device; a cold head is seeded like the trainer's."""
        from transformers import set_seed

        from hn_trainer.training import load_reranker

        set_seed(seed)
        source = str(self.warm_model(seed)) if row.warm else self.s.base_model
        return load_reranker(source, max_length=self.s.max_length, device=self.device)

    # ----- training data --------------------------------------------------------------------------------------

    def row_dataset(self, row: Row, seed: int):
        """The `HardNegativeDataset` of the training pairs with this row's negatives (pools of ``pool_size``).

        Mined by `hn_trainer.mining.pipeline.mine_pairs_from_embeddings` in the row's space (dense samplers)
        or on the texts (random, BM25), every judged document excluded; pairs without a negative are kept.
        """
        from hn_trainer.mining.pipeline import (
            configured_sampler,
            mine_pairs_from_embeddings,
            sampler_settings,
        )
        from hn_trainer.training import HardNegativeDataset

        if row.negatives == "st_mine":
            return self.st_dataset(seed)
        dense = row.negatives in ("dual_condition", "dense_topk", "positive_aware")
        # random / bm25; positives_only and in_batch use no pool, a random one keeps the dataset's shape
        name = row.negatives if dense else "bm25" if row.negatives == "bm25" else "random"
        mining_args = self.mining_arguments(self.s.encoder_list, row.pca_variance, row.conditions)
        sampler = configured_sampler(name, {**sampler_settings(mining_args), "seed": seed})
        space = self.row_space(row) if dense else None
        mined = mine_pairs_from_embeddings(
            self.train_ids,
            [self.query_text[q] for q in self.train_ids],
            self.doc_ids,
            self.doc_texts,
            self.train_pairs,
            None if space is None else space.query_vectors(self.train_ids),
            None if space is None else space.corpus,
            num_negatives=self.s.pool_size,
            sampler=sampler,
            positives=self.positives,
        )
        return HardNegativeDataset.from_mined(
            mined, keep_empty=True, positives=self.positives, corpus=(self.doc_ids, self.doc_texts)
        )

    def st_dataset(self, seed: int):
        """Negatives from sentence-transformers' ``mine_hard_negatives`` (``absolute_margin=0``, top ranks) on
        the best single sentence-transformers encoder, its triples regrouped per (query, positive) pair."""
        import datasets
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.util import mine_hard_negatives

        from hn_trainer.embeddings import load_encoder
        from hn_trainer.training import HardNegativeDataset

        s = self.s
        if self.best_st is None:
            raise HNTrainerError("st_mine needs a sentence-transformers encoder in --encoders")
        encoder = load_encoder(self.best_st, device=self.device)
        model = SentenceTransformer(encoder.model_ref, device=self.device)
        if "max_seq_length" in encoder.spec.options:
            model.max_seq_length = int(encoder.spec.options["max_seq_length"])
        queries = [self.query_text[q] for q, _ in self.train_pairs]
        positives = [self.doc_text[d] for _, d in self.train_pairs]
        table = datasets.Dataset.from_dict({"query": queries, "positive": positives})
        cache = self.work_dir / "st_cache"
        prefilled = self._prefill_st_cache(model, queries, positives, cache)
        triples = mine_hard_negatives(
            table,
            model,
            corpus=list(self.doc_texts),
            absolute_margin=0.0,
            num_negatives=s.pool_size,
            sampling_strategy="top",
            output_format="triplet",
            batch_size=s.embedding_batch_size,
            cache_folder=str(cache),
            verbose=True,
        )
        doc_row: dict[str, int] = {}
        for i, text in enumerate(self.doc_texts):
            doc_row.setdefault(text, i)
        found: dict[tuple[str, str], list[int]] = {}
        for q, p, n in zip(triples["query"], triples["positive"], triples["negative"]):
            found.setdefault((q, p), []).append(doc_row[n])
        q_row = {q: i for i, q in enumerate(self.train_ids)}
        d_row = {d: i for i, d in enumerate(self.doc_ids)}
        query_positives = [
            sorted(d_row[d] for d in self.positives.get(q, ()) if d in d_row) for q in self.train_ids
        ]
        pools = np.full((len(self.train_pairs), s.pool_size), -1, dtype=np.int64)
        for i, (q, d) in enumerate(self.train_pairs):
            banned = set(query_positives[q_row[q]])
            negs = [n for n in found.get((self.query_text[q], self.doc_text[d]), []) if n not in banned]
            pools[i, : len(negs[: s.pool_size])] = negs[: s.pool_size]
        dataset = HardNegativeDataset(
            self.train_ids,
            [self.query_text[q] for q in self.train_ids],
            self.doc_ids,
            self.doc_texts,
            [q_row[q] for q, _ in self.train_pairs],
            [d_row[d] for _, d in self.train_pairs],
            pools,
            query_positives,
            keep_empty=True,
        )
        dataset.stats["st_encoder"] = self.best_st
        dataset.stats["st_cache_prefilled"] = prefilled
        return dataset

    def _prefill_st_cache(self, model, queries: list[str], positives: list[str], cache: Path) -> bool:
        """Give ``mine_hard_negatives`` the vectors hn-trainer's cache already holds for its model, in the files
        and order its ``cache_folder`` reads, so the corpus is not encoded twice. Returns whether it did; if
        the naming ever differs, sentence-transformers simply encodes the texts itself."""
        try:
            space = self.space([self.best_st], None)
            name = model.model_card_data.base_model or ""
            unique_queries = list(dict.fromkeys(queries))
            corpus = list(dict.fromkeys(list(self.doc_texts) + positives))

            def file_for(kind: str, texts: list[str]) -> Path:
                h = hashlib.sha256(repr((name, None, None, texts)).encode()).hexdigest()
                return cache / f"{kind}_embeddings_{h}.npy"

            doc_vector: dict[str, np.ndarray] = {}
            for i, text in enumerate(self.doc_texts):
                doc_vector.setdefault(text, space.corpus[i])
            query_vector: dict[str, np.ndarray] = {}
            for q in self.embed_ids:
                query_vector.setdefault(self.query_text[q], space.queries[q])
            cache.mkdir(parents=True, exist_ok=True)
            for kind, texts, lookup in (
                ("query", unique_queries, query_vector),
                ("corpus", corpus, doc_vector),
            ):
                path = file_for(kind, texts)
                if not path.exists():
                    with atomic_path(path) as tmp, open(tmp, "wb") as f:
                        np.save(f, np.stack([lookup[t] for t in texts]).astype(np.float32))
            return True
        except (OSError, KeyError, ValueError, RuntimeError) as e:  # an optimisation: never fail the row
            logger.warning(
                "could not pre-fill the sentence-transformers embedding cache (%s); it encodes itself", e
            )
            return False

    # ----- running rows ---------------------------------------------------------------------------------------

    def evaluate(self, model) -> tuple[dict, dict]:
        """Reranker logits (a `CrossEncoder`, truncating at its ``max_seq_length``) of the validation and test
        candidates, in one scoring pass."""
        from hn_trainer.evaluation import rerank

        merged = {**self.candidates["val"], **self.candidates["test"]}
        run = rerank(
            model,
            merged,
            self.query_text,
            self.doc_text,
            batch_size=self.s.eval_batch_size,
            show_progress_bar=True,
        )
        return ({q: run[q] for q in self.candidates["val"]}, {q: run[q] for q in self.candidates["test"]})

    def score(self, val_run: dict | None, test_run: dict) -> tuple[dict, dict, float | None, dict]:
        """Metrics alone and fused (weight chosen on the validation queries); first-stage rows pass no val run."""
        from hn_trainer.evaluation import fuse_runs, per_query_metrics, retrieval_metrics

        if val_run is None:
            per_query = per_query_metrics(test_run, self.test_qrels)
            values = {m: per_query[m] for m in METRICS}
            means = {m: float(np.mean(list(v.values()))) for m, v in values.items()}
            val = retrieval_metrics(self.candidates["val"], self.val_qrels)
            return (
                {"alone": means, "fused": means},
                {"alone": values, "fused": values},
                None,
                {"alone": {m: val[m] for m in METRICS}},
            )
        weight, grid = choose_fusion_weight(self.candidates["val"], val_run, self.val_qrels, self.s.grid)
        out_values, out_means = {}, {}
        for mode, run in (
            ("alone", test_run),
            ("fused", fuse_runs(self.candidates["test"], test_run, weight)),
        ):
            per_query = per_query_metrics(run, self.test_qrels)
            out_values[mode] = {m: per_query[m] for m in METRICS}
            out_means[mode] = {m: float(np.mean(list(per_query[m].values()))) for m in METRICS}
        val_alone = retrieval_metrics(val_run, self.val_qrels)
        return out_means, out_values, weight, {"alone": {m: val_alone[m] for m in METRICS}, "grid": grid}

    def run_row(self, row: Row, seed: int | None, key: str) -> RowResult:
        """Compute one (row, seed)."""
        from hn_trainer.training import HardNegativeTrainer

        t0 = time.perf_counter()
        seconds: dict[str, float] = {}
        info: dict[str, Any] = {}
        if row.kind == "first_stage":
            metrics, per_query, weight, val = self.score(None, self.candidates["test"])
            seconds["total"] = time.perf_counter() - t0
            info["first_stage"] = self.s.first_stage
            return RowResult(row.name, None, key, metrics, per_query, weight, val, info, seconds)
        if row.warm:
            self.warm_model(seed)  # outside the row's timing: shared by every warm row of the seed
            t0 = time.perf_counter()
        if row.kind == "base":
            model = self.load_model(row, seed)
        else:
            t = time.perf_counter()
            dataset = self.row_dataset(row, seed)
            seconds["mining"] = time.perf_counter() - t
            info["mining"] = {**dataset.stats, "sampler": row.negatives}
            if row.negatives in ("none", "in_batch"):  # the dataset's pools are never read
                info["mining"] = {"pairs": dataset.stats["pairs"], "sampler": row.negatives}
            if row.space == "single" or row.negatives in ("dual_condition", "dense_topk", "positive_aware"):
                info["space"] = self.row_space(row).info
            args = self.training_arguments(
                self.work_dir / "trainer" / f"{row.name}-seed{seed}", seed, steps=self.s.train_steps, row=row
            )
            source = str(self.warm_model(seed)) if row.warm else self.s.base_model
            t = time.perf_counter()
            trainer = HardNegativeTrainer(source, args, train_dataset=dataset)
            output = trainer.train()
            seconds["training"] = time.perf_counter() - t
            info["training"] = {
                "steps": self.s.train_steps,
                "pairs_per_step": self.s.batch_size,
                "rows_per_step": rows_per_step(row, self.s),
                "loss": "bce",
                "training_loss": output.training_loss,
                "start": "warm" if row.warm else "base",
                "remine_steps": args.remine_steps,
            }
            model = trainer.model
            del trainer
        t = time.perf_counter()
        val_run, test_run = self.evaluate(model)
        seconds["evaluation"] = time.perf_counter() - t
        metrics, per_query, weight, val = self.score(val_run, test_run)
        self.save_scores(row, seed, key, val_run, test_run)
        del model
        gc.collect()
        seconds["total"] = time.perf_counter() - t0
        return RowResult(row.name, seed, key, metrics, per_query, weight, val, info, seconds)

    def save_scores(self, row: Row, seed: int, key: str, val_run: dict, test_run: dict) -> None:
        """Raw reranker scores (gzip JSON in the work folder) for later re-analysis."""
        path = self.work_dir / "scores" / f"{row.name}__seed{seed}__{key[:12]}.json.gz"
        with atomic_path(path) as tmp, gzip.open(tmp, "wt", encoding="utf-8") as f:
            json.dump({"val": val_run, "test": test_run}, f)

    def positive_lengths(self) -> dict[str, float]:
        """Mean reranker-token length (no truncation) of each test query's positives."""
        from transformers import AutoTokenizer

        from hn_trainer.training import resolve_model_path

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(self.s.base_model))
        docs = sorted(
            {d for rels in self.test_qrels.values() for d, r in rels.items() if r > 0 and d in self.doc_text}
        )
        lengths = dict(
            zip(
                docs,
                (
                    len(ids)
                    for ids in tokenizer(
                        [self.doc_text[d] for d in docs], add_special_tokens=False, verbose=False
                    )["input_ids"]
                ),
            )
        )
        return {
            q: float(np.mean([lengths[d] for d, r in rels.items() if r > 0 and d in lengths]))
            for q, rels in self.test_qrels.items()
            if any(r > 0 and d in lengths for d, r in rels.items())
        }


def encoder_kind(spec: str) -> str:
    """``"st"``, ``"onnx"`` or ``"lsa"``: what an encoder spec resolves to (no model is loaded)."""
    from hn_trainer.embeddings import load_encoder, parse_spec

    if parse_spec(spec).kind == "lsa":
        return "lsa"
    return load_encoder(spec).kind


def rows_per_step(row: Row, s: Settings) -> int:
    """(query, document) rows the model scores per step (in-batch: the other positives of the batch)."""
    if row.negatives == "none":
        return s.batch_size
    if row.negatives == "in_batch":
        return s.batch_size * s.batch_size
    return s.batch_size * (1 + s.num_negatives)


def choose_fusion_weight(
    first_stage: Mapping, reranker: Mapping, qrels: Mapping, grid: Sequence[float]
) -> tuple[float, dict[str, float]]:
    """The weight of `grid` with the highest MRR@10 of the fused run on `qrels`, ties to the larger weight
    (`hn_trainer.recipe.choose_fusion_weight`), and the MRR@10 of every weight of `grid` (for the report)."""
    from hn_trainer.evaluation import fuse_runs, retrieval_metrics
    from hn_trainer.recipe import choose_fusion_weight as best_weight

    scores = {
        f"{w:g}": retrieval_metrics(fuse_runs(first_stage, reranker, w), qrels)[KEY_METRIC] for w in grid
    }
    return best_weight(first_stage, reranker, qrels, grid), scores


# ----- statistics ---------------------------------------------------------------------------------------------


def holm(p_values: Mapping[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1)."""
    order = sorted(p_values, key=lambda k: p_values[k])
    m, running, out = len(order), 0.0, {}
    for i, key in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_values[key]))
        out[key] = running
    return out


def summarize(values: Sequence[float]) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
        "n": len(arr),
        "values": [float(v) for v in arr],
    }


def average_per_query(results: Sequence[RowResult], mode: str, metric: str) -> dict[str, float]:
    """Per-query values averaged over seeds."""
    queries = results[0].per_query[mode][metric].keys()
    return {q: float(np.mean([r.per_query[mode][metric][q] for r in results])) for q in queries}


def bootstrap_ci(values: Sequence[float], n: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% bootstrap interval of the mean over queries."""
    arr = np.asarray(list(values), dtype=np.float64)
    if len(arr) == 0:
        return 0.0, 0.0
    means = arr[np.random.default_rng(seed).integers(0, len(arr), size=(n, len(arr)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def aggregate(bench: Benchmark, results: dict[str, list[RowResult]]) -> dict:
    """Per-row means and spreads over seeds, paired tests of ours against every row, short vs long documents."""
    from hn_trainer.evaluation import paired_test

    rows: dict[str, dict] = {}
    for name, rs in results.items():
        row = ROWS[name]
        entry: dict[str, Any] = {
            "label": row.label,
            "table": row.table,
            "kind": row.kind,
            "spec": row.identity(),
            "seeds": [r.seed for r in rs],
            "keys": [r.key for r in rs],
            "metrics": {
                mode: {
                    m: summarize([r.metrics[mode][m] for r in rs])
                    for m in METRICS
                    if all(m in r.metrics[mode] for r in rs)  # rows saved before a metric was added lack it
                }
                for mode in ("alone", "fused")
            },
            "fusion_weights": [r.fusion_weight for r in rs],
            "validation": [r.validation for r in rs],
            "info": [r.info for r in rs],
            "seconds": [r.seconds for r in rs],
        }
        if len(rs) == 1:
            entry["ci95_mrr@10"] = {
                mode: bootstrap_ci(rs[0].per_query[mode][KEY_METRIC].values()) for mode in ("alone", "fused")
            }
        rows[name] = entry

    tests: dict[str, dict] = {}
    if REFERENCE_ROW in results:
        ref = results[REFERENCE_ROW]
        for mode in ("alone", "fused"):
            ours = average_per_query(ref, mode, KEY_METRIC)
            raw = {}
            for name, rs in results.items():
                if name == REFERENCE_ROW:
                    continue
                other = average_per_query(
                    rs, "alone" if rows[name]["kind"] == "first_stage" else mode, KEY_METRIC
                )
                t = paired_test(ours, other, n_resamples=10_000, seed=0)
                raw[name] = {"mean_difference": t.mean_difference, "p_value": t.p_value, "n": t.n}
            for table, names in TABLES.items():
                members = [n for n in names if n in raw]
                adjusted = holm({n: raw[n]["p_value"] for n in members})
                for n in members:
                    tests.setdefault(mode, {}).setdefault(table, {})[n] = {
                        **raw[n],
                        "p_holm": adjusted[n],
                        "verdict": verdict(raw[n]["mean_difference"], adjusted[n]),
                    }
    return {"rows": rows, "paired_tests": tests, "length": length_analysis(bench, results)}


def verdict(difference: float, p: float) -> str:
    if p >= SIGNIFICANCE or difference == 0:
        return "n.s."
    return "ours better" if difference > 0 else "ours worse"


def length_analysis(bench: Benchmark, results: dict[str, list[RowResult]]) -> dict:
    """MRR@3 on test queries with short and with long positives (threshold: median length unless given)."""
    from hn_trainer.evaluation import paired_test

    lengths = bench.positive_lengths()
    if not lengths:
        return {}
    threshold = bench.s.length_threshold or float(np.median(list(lengths.values())))
    groups = {
        "short": [q for q, n in lengths.items() if n <= threshold],
        "long": [q for q, n in lengths.items() if n > threshold],
    }
    out: dict[str, Any] = {
        "threshold_tokens": threshold,
        "threshold_rule": "given" if bench.s.length_threshold else "median",
        "queries": {g: len(v) for g, v in groups.items()},
        "median_tokens": float(np.median(list(lengths.values()))),
        "truncated_fraction": float(np.mean([n > bench.s.max_length for n in lengths.values()])),
        "rows": {},
    }
    for name in ("first_stage", "base_cold", "base_warm", "ours_cold", REFERENCE_ROW):
        if name not in results:
            continue
        out["rows"][name] = {}
        for mode in ("alone", "fused"):
            values = average_per_query(results[name], mode, "mrr@3")
            out["rows"][name][mode] = {
                g: float(np.mean([values[q] for q in qs])) if qs else None for g, qs in groups.items()
            }
    if "base_warm" in results and REFERENCE_ROW in results:
        out["tests"] = {}
        for mode in ("alone", "fused"):
            base = average_per_query(results["base_warm"], mode, "mrr@3")
            ours = average_per_query(results[REFERENCE_ROW], mode, "mrr@3")
            for g, qs in groups.items():
                if qs:
                    t = paired_test({q: ours[q] for q in qs}, {q: base[q] for q in qs}, seed=0)
                    out["tests"].setdefault(mode, {})[g] = {
                        "mean_difference": t.mean_difference,
                        "p_value": t.p_value,
                        "n": t.n,
                    }
    return out


def _test_of(agg: dict, mode: str, name: str) -> dict | None:
    tests = agg["paired_tests"].get(mode, {})
    return next((table[name] for table in tests.values() if name in table), None)


def _claim_status(agg: dict, mode: str, names: Sequence[str], want: str) -> tuple[str, str]:
    """Status of "ours vs each of ``names``" in ``mode``: ``want`` is the verdict the paper predicts
    (``"ours better"``, or ``"not worse"`` for a claim that nothing is lost)."""
    found = {n: _test_of(agg, mode, n) for n in names}
    found = {n: t for n, t in found.items() if t is not None}
    if not found:
        return "not run", ""
    evidence = ", ".join(
        f"{ROWS[n].label}: Δ {0.0 - t['mean_difference']:+.3f}, p (Holm) {fmt_p(t['p_holm'])}" for n, t in found.items()
    )
    verdicts = [t["verdict"] for t in found.values()]
    if want == "not worse":
        status = "not held" if "ours worse" in verdicts else "held"
    elif all(v == "ours better" for v in verdicts):
        status = "held"
    elif "ours worse" in verdicts:
        status = "not held (the opposite is significant)"
    else:
        status = "not shown (no significant difference)"
    missing = [n for n in names if n not in found]
    if missing:
        status += f"; rows not run: {', '.join(missing)}"
    return status, evidence


def claims(agg: dict) -> list[dict]:
    """The paper's claims, each judged from the paired tests (alone and fused) of ``aggregate``."""
    # ways of choosing negatives: not the untrained bases, nor training without negatives
    others = [
        n for n in TABLES["methods"] if n not in (REFERENCE_ROW, "first_stage", "base_cold", "base_warm", "positives_only")
    ]
    specs = [
        ("Dual-condition negatives (ensemble, PCA 95%) beat every other way of choosing negatives", others,
         "ours better"),
        ("The ensemble beats the best single encoder (same dual condition)", ["single_best"], "ours better"),
        ("PCA at 95% loses nothing against the plain concatenation", ["concat"], "not worse"),
        ("PCA at 80% and 70% hurt", ["pca80", "pca70"], "ours better"),
        ("Both conditions beat condition 1 alone", ["cond1"], "ours better"),
    ]
    out = []
    for text, names, want in specs:
        entry = {"claim": text, "rows": names}
        for mode in ("alone", "fused"):
            status, evidence = _claim_status(agg, mode, names, want)
            entry[mode] = {"status": status, "evidence": evidence}
        out.append(entry)
    length = agg.get("length") or {}
    tests = length.get("tests") or {}
    entry = {"claim": "Short documents gain more than long ones (MRR@3, ours vs base + warm start)", "rows": []}
    for mode in ("alone", "fused"):
        groups = tests.get(mode)
        if not groups or set(groups) != {"short", "long"}:
            entry[mode] = {"status": "not run", "evidence": ""}
            continue
        gain = {g: groups[g]["mean_difference"] for g in groups}
        significant = any(groups[g]["p_value"] < SIGNIFICANCE for g in groups)
        entry[mode] = {
            "status": ("held" if gain["short"] > gain["long"] else "not held")
            + ("" if significant else " (neither gain is significant)"),
            "evidence": ", ".join(
                f"{g}: {gain[g]:+.3f} (p {fmt_p(groups[g]['p_value'])})" for g in ("short", "long")
            ),
        }
    out.append(entry)
    return out


# ----- environment ----------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    """The machine (see ``benchmarks._machine``), the device used and whether the checkout was modified."""
    return {**base_machine_info(), "device": device, "git_commit": git_commit(short=False), "git_dirty": git_dirty()}


def library_versions() -> dict:
    import importlib.metadata

    names = (
        "hn-trainer",
        "torch",
        "transformers",
        "sentence-transformers",
        "datasets",
        "accelerate",
        "numpy",
        "scikit-learn",
        "bm25s",
        "onnxruntime",
        "tokenizers",
        "matplotlib",
        "scipy",
    )
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def estimate_seconds(bench: Benchmark, todo: Sequence[tuple[Row, int | None]], warm_seeds: int) -> float:
    """Rough CPU time of the rows still to compute (2-core CPU rates; GPUs are far faster)."""
    s = bench.s
    pair_tokens = s.max_length
    eval_pairs = s.k * (len(bench.test_ids) + len(bench.val_ids))
    eval_s = eval_pairs * pair_tokens / CPU_SCORE_TOKENS_PER_S
    total = 0.0
    for row, _ in todo:
        if row.kind == "first_stage":
            continue
        total += eval_s
        if row.kind == "train":
            total += s.train_steps * rows_per_step(row, s) * pair_tokens * CPU_TRAIN_SECONDS_PER_ROW_TOKEN
            if row.remine:
                n_remine = (s.train_steps - 1) // s.remine_steps
                total += (
                    n_remine * len(bench.train_pairs) * s.pool_size * pair_tokens / CPU_SCORE_TOKENS_PER_S
                )
    total += (
        warm_seeds
        * s.warm_start_steps
        * s.batch_size
        * (1 + s.num_negatives)
        * pair_tokens
        * CPU_TRAIN_SECONDS_PER_ROW_TOKEN
    )
    return total


# ----- report ---------------------------------------------------------------------------------------------------


def fmt(summary: Mapping | None, n_seeds: int) -> str:
    if not summary:
        return "-"
    if n_seeds > 1 and summary.get("n", 1) > 1:
        return f"{summary['mean']:.3f} ± {summary['std']:.3f}"
    return f"{summary['mean']:.3f}"


def fmt_p(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def metric_table(agg: dict, names: Sequence[str], mode: str, n_seeds: int) -> list[str]:
    rows = agg["rows"]
    tests = agg["paired_tests"].get(mode, {})
    flat = {n: t for table in tests.values() for n, t in table.items()}
    lines = [
        "| Row | MRR@3 | MRR@10 | nDCG@10 | Δ MRR@10 vs ours | p (Holm) | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        if name not in rows:
            continue
        m = rows[name]["metrics"][mode]
        t = flat.get(name)
        diff = (
            f"{0.0 - t['mean_difference']:+.3f}" if t else ("(reference)" if name == REFERENCE_ROW else "-")
        )
        p = f"{fmt_p(t['p_value'])} ({fmt_p(t['p_holm'])})" if t else "-"
        lines.append(
            f"| {rows[name]['label']} | {fmt(m['mrr@3'], n_seeds)} | {fmt(m['mrr@10'], n_seeds)} | "
            f"{fmt(m['ndcg@10'], n_seeds)} | {diff} | {p} | {t['verdict'] if t else '-'} |"
        )
    return lines


def details_table(agg: dict, names: Sequence[str]) -> list[str]:
    lines = [
        (
            "| Row | fusion w | pairs w/o own negative | rows/step | train loss | mining s | training s | "
            "evaluation s | wall s |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        if name not in agg["rows"]:
            continue
        r = agg["rows"][name]
        weights = [w for w in r["fusion_weights"] if w is not None]
        mining = [i.get("mining", {}) for i in r["info"]]
        missing = [
            m["pairs_without_negatives"] for m in mining if m.get("pairs_without_negatives") is not None
        ]
        pairs = [m.get("pairs") for m in mining if m]
        training = [i.get("training", {}) for i in r["info"]]
        loss = [t.get("training_loss") for t in training if t.get("training_loss") is not None]

        def mean_of(key, seconds=r["seconds"]):
            vals = [sec[key] for sec in seconds if sec.get(key) is not None]
            return f"{np.mean(vals):.0f}" if vals else "-"

        lines.append(
            f"| {r['label']} | {', '.join(f'{w:g}' for w in weights) or '-'} | "
            f"{f'{np.mean(missing):.0f} / {pairs[0]}' if missing else '-'} | "
            f"{training[0].get('rows_per_step', '-') if training and training[0] else '-'} | "
            f"{f'{np.mean(loss):.3f}' if loss else '-'} | {mean_of('mining')} | {mean_of('training')} | "
            f"{mean_of('evaluation')} | {mean_of('total')} |"
        )
    return lines


def write_markdown(path: Path, report: dict) -> None:
    s = report["settings"]
    agg = report["aggregate"]
    n_seeds = len(report["seeds"])
    spread = f"mean ± standard deviation over {n_seeds} seeds" if n_seeds > 1 else "one seed"
    d = report["data"]
    lines = [
        "# Reproducing the paper's tables",
        "",
        (
            f"Data: `{s['data']}` ({d['documents']} documents; {d['train_queries']} training queries with "
            f"{d['train_pairs']} (query, positive) pairs, {d['val_queries']} more held out for validation; "
            f"{d['test_queries']} test queries). Reranking the top {s['k']} of the {s['first_stage']} first stage"
            f"{' (' + s['first_stage_encoder'] + ')' if s['first_stage'] == 'dense' else ''}. Metrics on the test "
            f"split, {spread}. Generated {report['date']} by `{report['command']}`."
        ),
        "",
        (
            f"Every fine-tuned row: {s['train_steps']} steps of {s['batch_size']} (query, positive) pairs, "
            f"{s['num_negatives']} negative per pair (BCE), max {s['max_length']} tokens per pair, learning rate "
            f"{s['learning_rate']:g}, from the warm-started base unless marked otherwise. Base model "
            f"`{s['base_model']}`; ensemble: {', '.join(f'`{e}`' for e in s['encoder_list'])}. "
            f"Warm start: {s['warm_start_steps']} steps on title -> abstract pseudo-queries (no labels; "
            f"{report.get('warm_start_negatives')} negatives in the ensemble space, once per seed)."
        ),
        "",
        (
            "**Alone**: the reranker's order of the candidates. **Fused**: `w * z(reranker) + (1 - w) * z(first "
            "stage)` per query, `w` chosen on the validation queries (never on test). Δ is the row minus ours "
            "(negative: ours is better); p: two-sided paired permutation test over test queries on per-query "
            "MRR@10 (averaged over seeds), Holm-corrected within the table; a verdict needs p (Holm) < 0.05."
        ),
        "",
    ]
    judged = report.get("claims") or []
    if judged:
        lines += [
            "## The paper's claims",
            "",
            "Judged from the paired tests below (p (Holm) < 0.05 for a difference); \"not shown\" means no "
            "significant difference either way.",
            "",
            "| Claim | reranker alone | fused with the first stage |",
            "|---|---|---|",
        ]
        for c in judged:
            cells = [
                f"{c[m]['status']}" + (f" ({c[m]['evidence']})" if c[m]["evidence"] else "") for m in ("alone", "fused")
            ]
            lines.append(f"| {c['claim']} | {cells[0]} | {cells[1]} |")
        lines.append("")
    findings = report.get("findings")
    if findings:
        lines += ["## Findings", "", findings.strip(), ""]
    sections = (("Negative methods", "methods"), ("Ablations", "ablations"), ("Warm start", "warm_start"))
    for title, table in sections:
        names = [n for n in TABLES[table] if n in agg["rows"]]
        if not names:
            continue
        lines += [f"## {title}", ""]
        for mode in ("alone", "fused"):
            lines += [f"**{'Reranker alone' if mode == 'alone' else 'Fused with the first stage'}**", ""]
            lines += metric_table(agg, names, mode, n_seeds) + [""]
        lines += ["Run details (per seed: fusion weights; means of the rest):", ""]
        lines += details_table(agg, names) + [""]
    length = agg.get("length")
    if length and length.get("rows"):
        lines += [
            "## Short vs long documents (MRR@3)",
            "",
            (
                f"Test queries split at {length['threshold_tokens']:.0f} tokens ({length['threshold_rule']} mean "
                f"length of a query's positives in reranker tokens, no truncation; {length['queries']['short']} short, "
                f"{length['queries']['long']} long). The paper's 1,024-token threshold exceeds every document here. "
                f"{100 * length['truncated_fraction']:.0f}% of these positives are longer than the "
                f"{s['max_length']}-token pairs the reranker reads."
            ),
            "",
            "| Row | short, alone | long, alone | short, fused | long, fused |",
            "|---|---|---|---|---|",
        ]
        for name, modes in length["rows"].items():
            cells = [modes[m][g] for m in ("alone", "fused") for g in ("short", "long")]
            lines.append(
                f"| {ROWS[name].label} | "
                + " | ".join("-" if c is None else f"{c:.3f}" for c in cells)
                + " |"
            )
        if length.get("tests"):
            lines += ["", "Ours vs base + warm start: "]
            parts = []
            for mode, groups in length["tests"].items():
                for g, t in groups.items():
                    base = length["rows"]["base_warm"][mode][g]
                    gain = f"{100 * t['mean_difference'] / base:+.1f}%" if base else "n/a"
                    parts.append(
                        f"{g}, {mode}: {t['mean_difference']:+.3f} ({gain}, p={fmt_p(t['p_value'])})"
                    )
            lines[-1] += "; ".join(parts) + "."
        lines.append("")
    lines += [
        "## First stage and encoders (validation queries)",
        "",
        (
            "Dense retrieval over the whole corpus with each encoder alone and with the ensemble; the best "
            "single encoder (by MRR@10) is the `single_best` ablation, the best sentence-transformers one feeds "
            "`st_mine`."
        ),
        "",
        "| Encoder | kind | dim | MRR@3 | MRR@10 | nDCG@10 | Recall@10 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["encoders"].items():
        lines.append(
            f"| `{name}` | {r['kind']} | {r['dim']} | {r['mrr@3']:.3f} | {r['mrr@10']:.3f} | "
            f"{r['ndcg@10']:.3f} | {r['recall@10']:.3f} |"
        )
    lines += [
        "",
        (
            f"Best single encoder: `{report['best_single']}`; sentence-transformers encoder of `st_mine`: "
            f"`{report['best_st']}`."
        ),
        "",
    ]
    spaces = report.get("spaces") or {}
    if spaces:
        lines += [
            "Embedding spaces of the rows: "
            + "; ".join(
                f"{name}: {sp['dim_concat']} -> {sp['dim']} dims ({100 * sp['variance_kept']:.1f}% variance)"
                for name, sp in spaces.items()
            )
            + ".",
            "",
        ]
    warm = report.get("warm_start") or {}
    setup = report.get("setup_seconds") or {}
    embed_s = sum(v for k, v in setup.items() if k.startswith("embed["))
    lines += [
        "## Time",
        "",
        f"Setup in this invocation: data {setup.get('load', 0):.0f} s, embeddings {embed_s:.0f} s (all spaces; cached vectors are "
        f"read, not encoded), first stage {setup.get('first_stage', 0):.0f} s, encoder selection "
        f"{setup.get('encoder_selection', 0):.0f} s. Warm start per seed: "
        + (
            ", ".join(
                f"seed {k}: {v.get('seconds', 0):.0f} s{' (cached)' if v.get('cached') else ''}"
                for k, v in warm.items()
            )
            or "none"
        )
        + ". Wall time of each row: the run details above.",
        "",
        "## Choices",
        "",
        (
            "- *Positives only*: the same pairs, steps and BCE loss without any negative (every label is 1). "
            "LCE is undefined without negatives; random and in-batch negatives are rows of their own."
        ),
        (
            "- *In-batch*: each pair's negatives are the other positives of its batch, so it scores "
            f"{s['batch_size'] / (1 + s['num_negatives']):g}x more (query, document) rows per step than the other "
            "rows."
        ),
        (
            "- *Dense rows* (`dense_topk`, `dense_remine`, `positive_aware`, `cond1`) search the ensemble + PCA 95% "
            "space of ours: they differ from ours by the selection rule only. `dense_remine` re-scores each "
            f"pair's {s['pool_size']}-document pool with the model being trained every {report['remine_steps']} steps "
            "and takes the highest-scored (ADORE-like without re-indexing)."
        ),
        (
            "- *ST*: `sentence_transformers.util.mine_hard_negatives(..., absolute_margin=0, sampling_strategy='top')`"
            " on the real model; its cache is pre-filled with the vectors hn-trainer's cache holds for that model."
        ),
        (
            "- Pairs for which a sampler finds no negative keep training with a random one, so every row trains on "
            "the same pairs (the count is in the run details)."
        ),
        (
            "- The base reranker has no pretrained head offline (all-MiniLM-L6-v2 body + fresh head): its cold "
            "ranking is near random, hence the warm start and the fused numbers."
        ),
        "",
        (
            f"Machine: {report['machine'].get('cpu')} ({report['machine'].get('cpu_count')} cores"
            f"{', ' + report['machine']['gpu'] if report['machine'].get('gpu') else ''}), device "
            f"{report['machine']['device']}. Wall time of this invocation {report['wall_seconds'] / 60:.1f} min; "
            f"sum over rows {report['row_seconds'] / 60:.1f} min."
        ),
        "",
    ]
    if report.get("failed"):
        lines += ["## Failed rows", ""] + [
            f"- {f['row']} (seed {f['seed']}): {f['error']}" for f in report["failed"]
        ]
        lines.append("")
    if report.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]] + [""]
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(lines), encoding="utf-8")


def write_plots(output_dir: Path, report: dict) -> list[str]:
    """``mrr10_by_method.png`` and ``mrr10_vs_pca.png`` (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["aggregate"]["rows"]
    n_seeds = len(report["seeds"])
    written = []

    def value_and_error(name: str, mode: str) -> tuple[float, tuple[float, float]]:
        m = rows[name]["metrics"][mode][KEY_METRIC]
        if n_seeds > 1:
            return m["mean"], (m["std"], m["std"])
        low, high = rows[name].get("ci95_mrr@10", {}).get(mode, (m["mean"], m["mean"]))
        return m["mean"], (m["mean"] - low, high - m["mean"])

    error_text = "error bars: std over seeds" if n_seeds > 1 else "error bars: 95% bootstrap CI over queries"
    names = [n for n in TABLES["methods"] if n in rows]
    if names:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
        x = np.arange(len(names))
        for offset, mode, color in ((-0.2, "alone", "#4C72B0"), (0.2, "fused", "#DD8452")):
            vals = [value_and_error(n, mode) for n in names]
            ax.bar(
                x + offset,
                [v for v, _ in vals],
                0.4,
                yerr=np.array([e for _, e in vals]).T,
                capsize=3,
                label=f"reranker {mode}" if mode == "alone" else "fused with first stage",
                color=color,
            )
        ax.set_xticks(x)
        ax.set_xticklabels([n.replace("_", "\n") for n in names], fontsize=8)
        ax.set_ylabel("MRR@10 (test)")
        ax.set_title(f"MRR@10 by negative method ({error_text})", fontsize=10)
        top = max(
            v + e[1] for mode in ("alone", "fused") for v, e in (value_and_error(n, mode) for n in names)
        )
        ax.set_ylim(0, min(1.0, top) + 0.12)
        ax.legend(fontsize=8, ncol=2, loc="upper center")
        fig.tight_layout()
        fig.savefig(output_dir / "mrr10_by_method.png", dpi=120)
        plt.close(fig)
        written.append("mrr10_by_method.png")
    pca = [(n, v) for n, v in PCA_ROWS if n in rows]
    if len(pca) >= 2:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        x = np.arange(len(pca))
        spaces = report.get("spaces", {})
        for shift, mode, color in ((-0.05, "alone", "#4C72B0"), (0.05, "fused", "#DD8452")):
            vals = [value_and_error(n, mode) for n, _ in pca]
            ax.errorbar(
                x + shift,
                [v for v, _ in vals],
                yerr=np.array([e for _, e in vals]).T,
                marker="o",
                capsize=3,
                color=color,
                label=f"reranker {mode}" if mode == "alone" else "fused",
            )
            if "single_best" in rows:
                ax.axhline(
                    rows["single_best"]["metrics"][mode][KEY_METRIC]["mean"],
                    color=color,
                    ls="--",
                    lw=1,
                    label=f"best single encoder ({mode})",
                )
        labels = []
        for n, v in pca:
            dim = spaces.get(n, {}).get("dim")
            labels.append(f"{'no PCA' if v >= 1 else f'{100 * v:.0f}%'}" + (f"\n{dim} dims" if dim else ""))
        ax.set_xticks(x)
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_xlabel("PCA variance kept (ensemble)")
        ax.set_ylabel("MRR@10 (test)")
        ax.set_title(f"MRR@10 against PCA variance ({error_text})", fontsize=10)
        ax.legend(fontsize=7, loc="center")
        fig.tight_layout()
        fig.savefig(output_dir / "mrr10_vs_pca.png", dpi=120)
        plt.close(fig)
        written.append("mrr10_vs_pca.png")
    return written


# ----- main -----------------------------------------------------------------------------------------------------


def load_row(path: Path) -> RowResult:
    return RowResult(**json.loads(path.read_text(encoding="utf-8")))


def save_row(path: Path, result: RowResult) -> None:
    write_json(path, asdict(result), indent=1)


def main(argv: Sequence[str] | None = None) -> dict:
    settings, args = parse_settings(argv)
    if args.list_rows:
        for row in ROWS.values():
            print(f"{row.name:<16} {row.table:<11} {row.label}")
        print("\ngroups:")
        for group, members in ROW_GROUPS.items():
            print(f"  {group:<10} {', '.join(members)}")
        return {}
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()  # model-loading reports, once per row
    try:
        return run(settings, args, argv)
    finally:
        transformers.logging.set_verbosity(verbosity)


def run(settings: Settings, args: argparse.Namespace, argv: Sequence[str] | None) -> dict:
    """Compute the missing (row, seed) results, then write ``results.json``, ``results.md`` and the plots."""
    started = time.perf_counter()
    bench = Benchmark(settings)
    bench.output_dir.mkdir(parents=True, exist_ok=True)
    names = resolve_rows(settings.rows)
    bench.prepare()

    plan = [
        (ROWS[n], None if ROWS[n].kind == "first_stage" else seed)
        for seed in settings.seed_list
        for n in names
    ]
    plan = list(dict.fromkeys(plan))
    results: dict[str, list[RowResult]] = {}
    todo = []
    for row, seed in plan:
        key = bench.row_key(row, seed)
        path = bench.row_path(row, seed, key)
        if path.exists() and not args.force:
            results.setdefault(row.name, []).append(load_row(path))
        elif not args.report_only:
            todo.append((row, seed, key, path))
    warm_seeds = len(
        {
            seed
            for row, seed, *_ in todo
            if row.warm and row.kind != "first_stage" and not bench.warm_path(seed).exists()
        }
    )
    estimate = estimate_seconds(bench, [(r, s) for r, s, *_ in todo], warm_seeds)
    logger.info(
        "%d (row, seed) results saved, %d to compute; rough CPU estimate %.0f min%s",
        len(plan) - len(todo),
        len(todo),
        estimate / 60,
        " (plus embedding any uncached encoder)" if todo else "",
    )
    failed = []
    for i, (row, seed, key, path) in enumerate(todo, 1):
        logger.info("[%d/%d] %s, seed %s", i, len(todo), row.name, seed)
        try:
            result = bench.run_row(row, seed, key)
        except HNTrainerError as e:
            logger.error("%s, seed %s failed: %s", row.name, seed, e)
            failed.append({"row": row.name, "seed": seed, "error": str(e)})
            continue
        save_row(path, result)
        results.setdefault(row.name, []).append(result)
        m = result.metrics
        logger.info(
            "[%d/%d] %s, seed %s: MRR@10 %.4f alone, %.4f fused (w=%s) in %.0f s; %.1f min elapsed",
            i,
            len(todo),
            row.name,
            seed,
            m["alone"][KEY_METRIC],
            m["fused"][KEY_METRIC],
            result.fusion_weight,
            result.seconds.get("total", 0.0),
            (time.perf_counter() - started) / 60,
        )
    results = {
        n: sorted(results[n], key=lambda r: -1 if r.seed is None else r.seed) for n in names if n in results
    }
    return build_report(bench, settings, args, results, failed, started, argv)


def build_report(bench: Benchmark, settings: Settings, args, results, failed, started, argv) -> dict:
    agg = aggregate(bench, results)
    for seed in settings.seed_list:  # warm starts trained by earlier runs: report their time too
        meta = bench.warm_path(seed) / "warm_start.json"
        if seed not in bench.warm_info and meta.exists():
            bench.warm_info[seed] = {**json.loads(meta.read_text()), "cached": True}
    spaces = {}
    for name in results:
        for info in (r.info for r in results[name]):
            if "space" in info:
                spaces[name] = info["space"]
    command = "python benchmarks/reproduce_paper.py " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)
    )
    report = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command.strip(),
        "settings": {
            **asdict(settings),
            "encoder_list": settings.encoder_list,
            "seeds_used": settings.seed_list,
            "remine_steps": settings.remine_steps,
            "fusion_grid_values": settings.grid,
        },
        "seeds": settings.seed_list,
        "remine_steps": settings.remine_steps,
        "data": {
            "name": bench.data.name,
            "documents": len(bench.doc_ids),
            "train_queries": len(bench.train_ids),
            "train_pairs": len(bench.train_pairs),
            "val_queries": len(bench.val_ids),
            "test_queries": len(bench.test_ids),
            "val_ids": bench.val_ids,
        },
        "machine": machine_info(bench.device),
        "libraries": library_versions(),
        "encoders": bench.encoder_report,
        "best_single": bench.best_single,
        "best_st": bench.best_st,
        "warm_start_negatives": bench.warm_identity(settings.seed)["negatives"],
        "spaces": spaces,
        "warm_start": {str(k): v for k, v in bench.warm_info.items()},
        "setup_seconds": bench.seconds,
        "wall_seconds": time.perf_counter() - started,
        "row_seconds": float(sum(r.seconds.get("total", 0.0) for rs in results.values() for r in rs)),
        "failed": failed,
        "aggregate": agg,
        "claims": claims(agg),
        "plots": [],
    }
    out = bench.output_dir
    findings = out / FINDINGS_FILE
    if findings.exists():  # hand-written analysis of the numbers, kept across regenerations
        report["findings"] = findings.read_text(encoding="utf-8")
    if not args.no_plots and results:
        report["plots"] = write_plots(out, report)
    write_json(out / "results.json", report)
    write_markdown(out / "results.md", report)
    logger.info(
        "Wrote %s, %s%s",
        out / "results.json",
        out / "results.md",
        "".join(f", {out / p}" for p in report["plots"]),
    )
    return report


if __name__ == "__main__":
    try:
        main()
    except HNTrainerError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
