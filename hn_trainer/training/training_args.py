"""Arguments of `HardNegativeTrainer`: `CrossEncoderTrainingArguments` plus how negatives are picked per step."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

from hn_trainer.errors import ConfigError
from hn_trainer.training.losses import LOSSES, loss_layout

logger = logging.getLogger(__name__)


def cpu_bf16_flags() -> list[str]:
    """The CPU's bfloat16 and AMX flags in ``/proc/cpuinfo`` (e.g. ``avx512_bf16``, ``amx_bf16``); ``[]``
    where there is none or no such file."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(flag for flag in flags if "bf16" in flag or flag.startswith("amx"))


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 matrix products natively (AVX-512 BF16 or AMX), where bf16 autocast
    trains and scores faster than fp32 (``benchmarks/cpu_precision.py``); elsewhere it is emulated and slower."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")]
    if any(check is not None for check in checks):  # torch's own CPU probes (private, hence the fallback)
        return any(check is not None and check() for check in checks)
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_bf16_flags()))


@dataclass
class HardNegativeTrainingArguments(CrossEncoderTrainingArguments):
    """`CrossEncoderTrainingArguments` with the settings of hard-negative reranker training.

    Every field is a command-line flag through `HfArgumentParser`. ``seed`` also seeds the choice of negatives
    unless ``negative_seed`` is set. How the pools are mined (their size included) is a mining setting
    (`hn_trainer.config.MiningArguments`), how the reranker is evaluated an evaluation setting.
    """

    loss: str = field(
        default="bce",
        metadata={
            "help": "Loss by name: 'bce' (pointwise binary cross-entropy), 'lce' (softmax over one positive and "
            "its negatives), or a listwise loss of sentence-transformers: " + ", ".join(list(LOSSES)[2:]) + "."
        },
    )
    num_negatives: int = field(
        default=1, metadata={"help": "Hard negatives per pair and step, taken from its pool."}
    )
    negative_strategy: Literal["hardest", "sample"] = field(
        default="hardest",
        metadata={
            "help": "'hardest': the first num_negatives of the pool (hardest first); 'sample': drawn at "
            "random within the pool, a new draw each epoch."
        },
    )
    random_negatives: int = field(default=0, metadata={"help": "Random corpus negatives added per pair."})
    fill_random_negatives: bool = field(
        default=False,
        metadata={"help": "Top pools shorter than num_negatives up with random corpus negatives."},
    )
    in_batch_negatives: bool = field(
        default=False, metadata={"help": "Add the other pairs' positives of the batch as negatives."}
    )
    negative_seed: int | None = field(
        default=None, metadata={"help": "Seed of the negatives' random choices (default: seed)."}
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Truncation length of a (query, document) pair (default: the model's, at most 512)."},
    )
    remine_steps: int = field(
        default=0,
        metadata={
            "help": "Every N steps, re-score each pool with the model being trained and reorder it hardest "
            "first (0: off)."
        },
    )
    remine_batch_size: int = field(
        default=64, metadata={"help": "Pairs per forward pass when re-scoring pools."}
    )
    score_activation: Literal["auto", "sigmoid", "identity"] = field(
        default="auto",
        metadata={
            "help": "Activation CrossEncoder.predict applies to the saved model's logit: 'sigmoid' (a "
            "probability of relevance), 'identity' (the raw logit), 'auto': sigmoid for bce, identity "
            "for the other losses."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the pair_index column."}
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False,
        metadata={"help": "Passed to DistributedDataParallel. False: every parameter of a cross-encoder gets a "
                  "gradient each step (with the host's default, two CPU processes fail: 'marked ready twice')."},
    )
    restore_callback_states_from_checkpoint: bool = field(
        default=True,
        metadata={"help": "Restore callback state (re-mining step and history) when resuming from a checkpoint."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        loss_layout(self.loss)  # an unknown loss name is an error now, not after mining
        for name in ("num_negatives", "random_negatives", "remine_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name} must not be negative, got {getattr(self, name)}")
        if self.remine_batch_size < 1:
            raise ConfigError(f"--remine_batch_size must be at least 1, got {self.remine_batch_size}")
        if self.max_length is not None and self.max_length < 8:
            raise ConfigError(f"--max_length must be at least 8, got {self.max_length}")
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name} must be at least 1, got {getattr(self, name)}")
        if self.negative_seed is not None and self.negative_seed < 0:
            raise ConfigError(f"--negative_seed must not be negative, got {self.negative_seed}")
        if self.negatives_per_pair == 0:
            raise ConfigError(
                f"--loss {self.loss} with --num_negatives 0 and no random or in-batch negatives compares each "
                "positive with nothing: the loss has no gradient. Set --num_negatives, --random_negatives or "
                "--in_batch_negatives."
            )
        if self.remine_steps and self.dataloader_num_workers:
            raise ConfigError(
                "--remine_steps needs --dataloader_num_workers 0: loader workers hold copies of the pools and "
                "would never see the re-scored order"
            )

    @property
    def negatives_per_pair(self) -> int | None:
        """Negatives a pair can get per step: 0 when nothing can be compared with the positive.

        ``None`` when pointwise (``bce``), where a positive alone still trains.
        """
        if self.loss == "bce" or loss_layout(self.loss) == "pair":
            return None
        return self.num_negatives + self.random_negatives + (1 if self.in_batch_negatives else 0)

    @property
    def resolved_activation(self) -> Literal["sigmoid", "identity"]:
        """The activation written with saved models (``score_activation`` with ``"auto"`` resolved)."""
        if self.score_activation == "auto":
            return "sigmoid" if self.loss == "bce" else "identity"
        return self.score_activation

    @property
    def resolved_negative_seed(self) -> int:
        return self.seed if self.negative_seed is None else self.negative_seed
