"""Configuration dataclasses, read from YAML files and command-line flags with `HfArgumentParser`.

Every field is a flag (``--pca_variance 0.8``); ``--config FILE.yaml`` sets any of them first,
and flags given on the command line win over the file.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
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
        metadata={"help": "BEIR folder (corpus.jsonl, queries.jsonl, qrels/), a Hub dataset id such as "
                  "BeIR/scifact, or 'demo' for the built-in cloud-documentation demo."},
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
    method: Literal["dual_condition", "random", "bm25", "dense_topk", "positive_aware"] = field(
        default="dual_condition", metadata={"help": "How negatives are chosen."}
    )
    metric: Literal["cosine", "euclidean"] = field(default="cosine", metadata={"help": "Distance of the conditions."})
    conditions: Literal["both", "query"] = field(
        default="both",
        metadata={"help": "'both': d(Q,D) < d(Q,PD) and d(Q,D) < d(PD,D); 'query': the first condition only."},
    )
    positive_aware_ratio: float = field(
        default=0.95, metadata={"help": "positive_aware: keep candidates scoring below this fraction of the positive."}
    )
    embedding_batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Embedding cache (default: $HN_TRAINER_CACHE or ~/.cache/hn_trainer)."}
    )
    mining_device: str | None = field(default=None, metadata={"help": "Device of the kernel (default: cuda if any)."})
    query_block_size: int | None = field(
        default=None, metadata={"help": "Queries per kernel block (default: 1024 on CPU, 4096 on CUDA)."}
    )
    corpus_block_size: int | None = field(
        default=None, metadata={"help": "Documents per kernel block (default: 16384 on CPU, 65536 on CUDA)."}
    )
    mining_seed: int = field(default=42, metadata={"help": "Seed of random choices during mining."})

    def __post_init__(self) -> None:
        if isinstance(self.encoders, (list, tuple)):
            self.encoders = ",".join(self.encoders)
        if not self.encoder_list:
            raise ConfigError("encoders: name at least one encoder")
        if self.pca_variance is not None and not 0 < self.pca_variance <= 1:
            raise ConfigError(f"pca_variance must be in (0, 1], got {self.pca_variance}")

    @property
    def encoder_list(self) -> list[str]:
        return [e.strip() for e in str(self.encoders).split(",") if e.strip()]


@dataclass
class MineOutputArguments:
    """Where the `mine` command writes."""

    output_dir: str = field(default="runs/mine", metadata={"help": "Folder for triples, stats and embeddings."})
    num_negatives: int = field(default=1, metadata={"help": "Hard negatives kept per (query, positive) pair."})
    save_embeddings: bool = field(
        default=False, metadata={"help": "Also write the vectors the kernel used (.npy) and their row ids."}
    )


def _config_path(argv: list[str]) -> tuple[Path | None, list[str]]:
    rest, path = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file")
            path, i = Path(argv[i + 1]), i + 2
            continue
        if arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            rest.append(arg)
        i += 1
    return path, rest


def read_config_file(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of field names to values")
    return values


def parse_args(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple:
    """Parse ``--config FILE.yaml`` plus flags into instances of `dataclass_types`.

    Raises:
        ConfigError: for a field that no dataclass declares, in the file or on the command line.
    """
    from transformers import HfArgumentParser

    argv = sys.argv[1:] if argv is None else list(argv)
    path, rest = _config_path(argv)
    parser = HfArgumentParser(dataclass_types)
    known = {f.name for t in dataclass_types for f in dataclasses.fields(t) if f.init}
    if path is not None:
        values = read_config_file(path)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{path}: unknown config field(s): {', '.join(unknown)}")
        values = {k: (",".join(map(str, v)) if k == "encoders" and isinstance(v, list) else v) for k, v in values.items()}
        parser.set_defaults(**values)
        # A default supplied for a required field makes it optional.
        for action in parser._actions:
            if action.dest in values:
                action.required = False
    namespace, unknown_args = parser.parse_known_args(rest)
    if unknown_args:
        raise ConfigError(f"unknown argument(s): {' '.join(unknown_args)}")
    outputs = []
    for dtype in dataclass_types:
        names = {f.name for f in dataclasses.fields(dtype) if f.init}
        try:
            outputs.append(dtype(**{k: v for k, v in vars(namespace).items() if k in names}))
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from None
    return tuple(outputs)
