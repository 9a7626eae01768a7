"""Configuration dataclasses of the data and mining stages, read from YAML files and flags with `HfArgumentParser`.

Every field is a flag (``--pca_variance 0.8``); ``--config FILE.yaml`` sets any of them, and flags given on
the command line win over the file. Each argument lives in the dataclass of the stage that reads it: data and
mining here, training in `hn_trainer.training.HardNegativeTrainingArguments`, evaluation and the recipe's model
choices in `hn_trainer.recipe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from hn_trainer.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_ENCODERS = "sentence-transformers/all-MiniLM-L6-v2,lsa"


@dataclass
class DataArguments:
    """Which retrieval dataset to read and which judgements to train and evaluate on."""

    data: str = field(
        default="demo",
        metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/), a (query, positive) pairs file "
                  "(.jsonl, .csv, .tsv, .parquet), a Hub dataset id (BEIR such as BeIR/scifact, or pairs such as "
                  "sentence-transformers/natural-questions), or 'demo' for the built-in cloud-documentation demo."},
    )
    data_format: Literal["auto", "beir", "pairs"] = field(
        default="auto",
        metadata={"help": "'auto': a folder or 'demo' is BEIR, a file is pairs, a Hub id is BEIR when it has "
                  "'corpus' and 'queries' configs, else pairs."},
    )
    query_column: str | None = field(
        default=None, metadata={"help": "Pairs data: the query column (default: the first column)."}
    )
    positive_column: str | None = field(
        default=None, metadata={"help": "Pairs data: the positive column (default: the second column)."}
    )
    corpus: str | None = field(
        default=None,
        metadata={"help": "Pairs data: a file or Hub id of further documents negatives are drawn from (default: "
                  "the positives alone)."},
    )
    corpus_column: str | None = field(
        default=None, metadata={"help": "The --corpus text column (default: 'text', else the first column)."}
    )
    qrels: str | None = field(
        default=None, metadata={"help": "Hub id of the qrels repository (default: '<data>-qrels')."}
    )
    split: str = field(default="train", metadata={"help": "Qrels split whose (query, positive) pairs are mined."})
    eval_split: str = field(default="test", metadata={"help": "Qrels split used for evaluation."})
    num_train_queries: int | None = field(
        default=None,
        metadata={"help": "The paper's split scheme: pool the judged queries of all splits, take this many "
                  "for training and the rest for testing (seeded by split_seed)."},
    )
    split_seed: int = field(default=42, metadata={"help": "Seed of the query split."})
    max_train_queries: int | None = field(
        default=None, metadata={"help": "Use only the first N training queries (quick runs)."}
    )
    max_eval_queries: int | None = field(
        default=None, metadata={"help": "Evaluate on only the first N evaluation queries (quick runs)."}
    )
    validation_split: str | None = field(
        default="dev",
        metadata={"help": "Qrels split that chooses checkpoints, fusion weights and settings, when the data has "
                  "it; otherwise a seeded slice of the training queries is held out (validation_queries)."},
    )
    validation_queries: int | None = field(
        default=None,
        metadata={"help": "Training queries held out for validation when there is no validation split "
                  "(default: 10%%, at least 1, at most 200; 0: none)."},
    )
    test_queries: int | None = field(
        default=None,
        metadata={"help": "When the data has no eval_split (a pairs dataset, a BEIR folder with one split): "
                  "training queries held out for the test, seeded by split_seed (default: 10%%, at least 1, "
                  "at most 1000)."},
    )

    def __post_init__(self) -> None:
        for name in ("num_train_queries", "max_train_queries", "max_eval_queries"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be a positive count, got {value}")
        if self.test_queries is not None and self.test_queries < 1:
            raise ConfigError(f"--test_queries must be a positive count, got {self.test_queries}")
        if self.validation_queries is not None and self.validation_queries < 0:
            raise ConfigError(f"--validation_queries must not be negative, got {self.validation_queries}")
        if self.split == self.eval_split:
            raise ConfigError(f"--split and --eval_split are both {self.split!r}: train and test must differ")


@dataclass
class MiningArguments:
    """How embeddings are built and hard negatives chosen."""

    encoders: str = field(
        default=DEFAULT_ENCODERS,
        metadata={"help": "Comma-separated encoder specs: sentence-transformers ids or paths, "
                  "'onnx:<path or id>', 'lsa' or 'lsa:<dims>'."},
    )
    pca_variance: float | None = field(
        default=0.95,
        metadata={"help": "Fraction of variance PCA keeps, in (0, 1]; 1.0 keeps every dimension "
                  "(concatenation only)."},
    )
    method: Literal["dual_condition", "random", "bm25", "dense_topk", "positive_aware", "st_mine"] = field(
        default="dual_condition",
        metadata={"help": "How negatives are chosen ('st_mine': sentence-transformers' own mine_hard_negatives on "
                  "one encoder, --st_mine_model)."},
    )
    metric: Literal["cosine", "euclidean"] = field(default="cosine", metadata={"help": "Distance of the conditions."})
    conditions: Literal["both", "query"] = field(
        default="both",
        metadata={"help": "'both': d(Q,D) < d(Q,PD) and d(Q,D) < d(PD,D); 'query': the first condition only."},
    )
    positive_aware_ratio: float = field(
        default=0.95, metadata={"help": "positive_aware: keep candidates scoring below this fraction of the positive."}
    )
    st_mine_model: str | None = field(
        default=None,
        metadata={"help": "st_mine: its sentence-transformers model (default: the first of --encoders that is "
                  "neither LSA nor ONNX)."},
    )
    st_mine_margin: float = field(
        default=0.0,
        metadata={"help": "st_mine: mine_hard_negatives' absolute_margin (0: negatives score below every positive "
                  "of the query)."},
    )
    embedding_batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache (default: $HN_TRAINER_CACHE or ~/.cache/hn_trainer; "
                                        "'false': none, embeddings stay in memory)."}
    )
    mining_device: str | None = field(default=None, metadata={"help": "Device of the kernel (default: cuda if any)."})
    query_block_size: int | None = field(
        default=None, metadata={"help": "Queries per kernel block (default: 1024 on CPU, 4096 on CUDA)."}
    )
    corpus_block_size: int | None = field(
        default=None, metadata={"help": "Documents per kernel block (default: 16384 on CPU, 65536 on CUDA)."}
    )
    mining_seed: int = field(default=42, metadata={"help": "Seed of random choices during mining."})
    pool_size: int = field(
        default=8,
        metadata={"help": "Negatives mined per (query, positive) pair: the pool training picks from."},
    )
    fallback: Literal["none", "random", "condition2"] = field(
        default="none",
        metadata={"help": "Pairs with fewer than pool_size negatives: 'none' (the paper: they stay short), 'random' "
                  "(top up with uniformly drawn unjudged documents), 'condition2' (top up with the documents "
                  "closest to Q among those closer to Q than to the positive, d(Q,D) < d(PD,D))."},
    )
    spread_negatives: bool = field(
        default=True,
        metadata={"help": "A query with several positives: reorder each pair's pool so that its hardest negative "
                  "is not one an earlier pair of the query already leads with, where the pool allows (every "
                  "negative still qualifies for its own pair). false: each pool closest first, as mined."},
    )
    keep_pairs_without_negatives: bool = field(
        default=False,
        metadata={"help": "Keep (query, positive) pairs for which mining found no negative (they train on "
                  "random or in-batch negatives when those are set)."},
    )

    def __post_init__(self) -> None:
        if isinstance(self.encoders, (list, tuple)):
            self.encoders = ",".join(self.encoders)
        if isinstance(self.cache_dir, str) and self.cache_dir.strip().lower() in ("false", "none", "no", "off"):
            self.cache_dir = False  # memory only, not a folder named "false"
        if not self.encoder_list:
            raise ConfigError("--encoders: name at least one encoder")
        if self.pca_variance is not None and not 0 < self.pca_variance <= 1:
            raise ConfigError(f"--pca_variance must be in (0, 1], got {self.pca_variance}")
        if not 0 < self.positive_aware_ratio < 1:
            raise ConfigError(f"--positive_aware_ratio must be in (0, 1), got {self.positive_aware_ratio}")
        for name in ("embedding_batch_size", "pool_size", "query_block_size", "corpus_block_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"--{name} must be at least 1, got {value}")
        if self.method == "st_mine" and self.st_mine_encoder is None:
            raise ConfigError("--method st_mine: name its sentence-transformers model with --st_mine_model (every "
                              "one of --encoders is LSA or ONNX)")
        if self.fallback != "none" and self.method not in ("dual_condition", "dense_topk", "positive_aware"):
            raise ConfigError(f"--fallback {self.fallback}: needs an embedding method, not --method {self.method}")
        if self.fallback == "condition2" and self.method != "dual_condition":
            raise ConfigError(f"--fallback condition2 tops up dual-condition mining, not --method {self.method}")
        if self.mining_device is not None and self.mining_device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError(f"--mining_device {self.mining_device}: this machine has no CUDA device")

    @property
    def encoder_list(self) -> list[str]:
        return [e.strip() for e in str(self.encoders).split(",") if e.strip()]

    @property
    def st_mine_encoder(self) -> str | None:
        """The model of ``--method st_mine``: ``--st_mine_model``, else the first encoder that loads as a
        sentence-transformers model (not LSA, not ONNX, also when an id resolves to a packaged ONNX copy)."""
        from hn_trainer.embeddings.encoders import is_sentence_transformer

        if self.st_mine_model:
            return self.st_mine_model
        return next((e for e in self.encoder_list if is_sentence_transformer(e)), None)


@dataclass
class MineOutputArguments:
    """Where the `mine` command writes."""

    output_dir: str = field(default="runs/mine", metadata={"help": "Folder for triples, stats and embeddings."})
    num_negatives: int | None = field(
        default=None, metadata={"help": "Hard negatives kept per (query, positive) pair (default: pool_size)."}
    )

    save_embeddings: bool = field(
        default=False, metadata={"help": "Also write the vectors the kernel used (.npy) and their row ids."}
    )
    output_format: Literal["triplet", "n-tuple", "labeled-pair", "labeled-list"] | None = field(
        default=None,
        metadata={"help": "Also write dataset/ and dataset.jsonl in this sentence-transformers layout (the columns "
                  "of its mine_hard_negatives), ready for SentenceTransformerTrainer or CrossEncoderTrainer."},
    )
    output_scores: bool = field(
        default=False, metadata={"help": "With --output_format: add similarity scores as sentence-transformers does."}
    )
    push_to_hub: bool = field(
        default=False,
        metadata={"help": "Push the mined dataset (the --output_format one, else the triples) and its dataset card "
                  "to the Hub as --hub_dataset_id."},
    )
    hub_dataset_id: str | None = field(default=None, metadata={"help": "Dataset repository, 'user/name'."})
    hub_private: bool = field(default=False, metadata={"help": "Create the dataset repository as private."})
    hub_token: str | None = field(default=None, metadata={"help": "Hub token (default: the logged-in one)."})

    def __post_init__(self) -> None:
        if self.num_negatives is not None and self.num_negatives < 1:
            raise ConfigError(f"--num_negatives must be at least 1, got {self.num_negatives}")
        if self.push_to_hub and not self.hub_dataset_id:
            raise ConfigError("--push_to_hub needs --hub_dataset_id USER/NAME")
        if self.output_scores and not self.output_format:
            raise ConfigError("--output_scores needs an --output_format")


def read_config_file(path: Path) -> dict:
    """The mapping of field names to values in a YAML config file."""
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the config file as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field names to values")
    return values


def _as_flags(values: dict, source: str, known: set[str]) -> list[str]:
    """``{field: value}`` as command-line flags, so the file goes through the parser exactly like flags do."""
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown config field(s): {', '.join(unknown)}")
    flags = []
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(map(str, value))
        elif isinstance(value, bool):
            value = str(value).lower()
        elif isinstance(value, dict):
            value = json.dumps(value)
        flags += [f"--{key}", str(value)]
    return flags


def _split_config(argv: list[str]) -> tuple[str | None, list[str]]:
    """``(--config FILE or None, the other arguments)``."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--config", default=None)
    config, rest = pre.parse_known_args(argv)
    return config.config, rest


def given_fields(argv: list[str]) -> set[str]:
    """The fields that ``--config FILE`` or a flag of `argv` sets, so that a default the code injects can
    yield to a setting that excludes it (the CPU's bf16 default to ``fp16``)."""
    config, rest = _split_config(list(argv))
    fields = {arg[2:].split("=", 1)[0] for arg in rest if arg.startswith("--")}
    return fields | (set(read_config_file(Path(config))) if config is not None else set())


def build_parser(dataclass_types: tuple[type, ...], prog: str | None = None):
    """`HfArgumentParser` over `dataclass_types`, with ``--config`` and without flag abbreviations."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, prog=prog, allow_abbrev=False)
    parser.add_argument(
        "--config",
        metavar="FILE.yaml",
        default=None,
        help="YAML file of field: value lines; flags given on the command line win over the file.",
    )
    return parser


def parse_args(
    dataclass_types: tuple[type, ...],
    argv: list[str] | None = None,
    *,
    defaults: dict | None = None,
    prog: str | None = None,
    file_may_hold: Callable[[], tuple[type, ...]] | None = None,
) -> tuple:
    """Parse ``--config FILE.yaml`` plus flags into instances of `dataclass_types`.

    Precedence, lowest first: the dataclasses' defaults, then `defaults` (e.g. the demo's settings), then the
    config file, then the command line. Everything goes through the same `HfArgumentParser`: a file value is
    parsed exactly like the same flag.

    Args:
        file_may_hold: Dataclasses (returned by the callable, called only when the file has fields
            `dataclass_types` lack) whose fields the config file may also set and this command skips:
            ``hn-trainer mine`` reads a ``train`` recipe's config and ignores its training fields.

    Raises:
        ConfigError: For a field that no dataclass declares (in the file or on the command line), a value the
            parser or a dataclass refuses.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(dataclass_types, prog=prog)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    config, rest = _split_config(argv)
    flags = _as_flags(defaults or {}, "defaults", known)
    if config is not None:
        values = read_config_file(Path(config))
        if file_may_hold is not None and set(values) - known:
            skipped = {f.name for t in file_may_hold() for f in dataclasses.fields(t) if f.init}
            values = {key: value for key, value in values.items() if key in known or key not in skipped}
        flags += _as_flags(values, config, known)
    try:
        parsed = parser.parse_args_into_dataclasses([*flags, *rest], return_remaining_strings=True)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None
    unknown_args = parsed[-1]
    if unknown_args:
        raise ConfigError(f"unknown argument(s): {' '.join(unknown_args)}")
    return tuple(parsed[: len(dataclass_types)])  # the rest: the namespace holding --config
