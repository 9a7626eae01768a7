"""Model card and Hub folder of a trained reranker.

`save_for_hub` writes, atomically, a folder that ``sentence_transformers.CrossEncoder(folder)`` loads and that
the Hub renders: model weights and config (with the score activation), tokenizer, and a ``README.md`` whose
YAML front matter tags it as a sentence-transformers ``text-ranking`` model and whose body records the base
model, the data, the mining settings (encoders, PCA variance, distance, pool size), the training settings and
the evaluation metrics. `push_folder_to_hub` uploads such a folder.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hn_trainer.errors import ConfigError
from hn_trainer.io import atomic_path

logger = logging.getLogger(__name__)

CARD_TAGS = [
    "sentence-transformers",
    "cross-encoder",
    "reranker",
    "text-ranking",
    "hard-negatives",
    "hn-trainer",
]

MINING_LABELS = {
    "encoders": "Encoders (ensemble)",
    "pca_variance": "PCA variance kept (target)",
    "variance_kept": "PCA variance kept (actual)",
    "dim_concat": "Concatenated dimension",
    "dim_pca": "Dimension after PCA",
    "method": "Negative sampler",
    "metric": "Distance",
    "conditions": "Conditions",
    "pool_size": "Pool size per pair",
    "pairs": "Training pairs",
    "pairs_without_negatives": "Pairs without a negative",
}

TRAINING_LABELS = {
    "loss": "Loss",
    "num_negatives": "Negatives per pair and step",
    "negative_strategy": "Negative strategy",
    "random_negatives": "Random negatives per pair",
    "in_batch_negatives": "In-batch negatives",
    "remine_steps": "Re-score pools every (steps)",
    "num_train_epochs": "Epochs",
    "max_steps": "Max steps",
    "per_device_train_batch_size": "Pairs per batch (per device)",
    "learning_rate": "Learning rate",
    "warmup_steps": "Warmup steps",
    "max_length": "Max length (tokens)",
    "seed": "Seed",
    "global_step": "Steps trained",
}


@dataclass
class RerankerCardData:
    """What the model card says.

    Attributes:
        model_id: Hub id of the model (used in the usage snippet; the folder name otherwise).
        base_model: Hub id or name of the base model.
        datasets: Hub ids or names of the training data.
        language: Language codes.
        license: License identifier.
        mining: Mining settings and statistics (keys of `MINING_LABELS`, others are listed too).
        training: Training settings (keys of `TRAINING_LABELS`, others are listed too).
        eval_metrics: ``{row name: {metric: value}}``, e.g. ``{"base model": {...}, "fine-tuned": {...}}``.
        eval_description: What the evaluation ran on (split, first stage, candidates per query).
        activation: ``"sigmoid"`` or ``"identity"``: what ``CrossEncoder.predict`` applies to the logit.
    """

    model_id: str | None = None
    base_model: str | None = None
    datasets: list[str] = field(default_factory=list)
    language: list[str] | None = None
    license: str | None = None
    mining: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    eval_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_description: str | None = None
    activation: Literal["sigmoid", "identity"] = "sigmoid"

    def add_mining(self, values: Mapping[str, Any] | None = None, **settings: Any) -> None:
        """Record mining settings: the keys of `MINING_LABELS` in ``values``, then ``settings`` as given.

        ``values`` can be ``asdict(MiningArguments)`` or the statistics of the ensemble embeddings.
        """
        self.mining.update({k: v for k, v in (values or {}).items() if k in MINING_LABELS})
        self.mining.update(settings)

    def add_training_args(self, args: Any, global_step: int | None = None) -> None:
        """Fill `training` from `HardNegativeTrainingArguments` (fields of `TRAINING_LABELS`)."""
        for key in TRAINING_LABELS:
            if hasattr(args, key):
                self.training.setdefault(key, getattr(args, key))
        if global_step is not None:
            self.training["global_step"] = global_step
        if hasattr(args, "resolved_activation"):
            self.activation = args.resolved_activation

    def front_matter(self) -> dict[str, Any]:
        meta: dict[str, Any] = {}
        if self.language:
            meta["language"] = list(self.language)
        if self.license:
            meta["license"] = self.license
        meta["library_name"] = "sentence-transformers"
        meta["pipeline_tag"] = "text-ranking"
        meta["tags"] = list(CARD_TAGS)
        if self.base_model and _is_hub_id(self.base_model):
            meta["base_model"] = self.base_model
        if self.datasets:
            meta["datasets"] = list(self.datasets)
        return meta


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`" if isinstance(value, str) else str(value)


def _settings_table(values: dict[str, Any], labels: dict[str, str]) -> list[str]:
    keys = [k for k in labels if k in values and values[k] is not None]
    keys += [k for k in values if k not in labels and values[k] is not None]
    if not keys:
        return ["Not recorded."]
    lines = ["| Setting | Value |", "|---|---|"]
    lines += [f"| {labels.get(k, k)} | {_value(values[k])} |" for k in keys]
    return lines


def _metrics_table(rows: dict[str, dict[str, float]]) -> list[str]:
    if not rows:
        return ["No evaluation was recorded."]
    names: list[str] = []
    for metrics in rows.values():
        names += [m for m in metrics if m not in names]
    lines = ["| Model | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for row, metrics in rows.items():
        cells = [f"{metrics[m]:.4f}" if m in metrics else "" for m in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def _is_hub_id(name: str) -> bool:
    """``owner/name`` that is not a local path (the Hub accepts only such ids as ``base_model``)."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~")) and not Path(name).exists()


def _base_model_ref(base: str | None) -> str:
    if not base:
        return "not recorded"
    return f"[{base}](https://huggingface.co/{base})" if _is_hub_id(base) else f"`{base}`"


def generate_model_card(card: RerankerCardData, *, model_name: str | None = None) -> str:
    """The ``README.md`` text: YAML front matter, then a Markdown body."""
    model_ref = card.model_id or model_name or "path/to/this/folder"
    title = (card.model_id or model_name or "Cross-encoder reranker").split("/")[-1]
    base = _base_model_ref(card.base_model)
    data = ", ".join(card.datasets) if card.datasets else "not recorded"
    activation = (
        "a sigmoid of the logit (a relevance probability in [0, 1])"
        if card.activation == "sigmoid"
        else "the raw logit (higher is more relevant; comparable within a query)"
    )
    lines = [
        "---",
        yaml.safe_dump(card.front_matter(), sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
    ]
    lines += [
        f"# {title}",
        "",
        "A cross-encoder reranker fine-tuned with hard negatives mined by dual semantic conditions from an "
        "ensemble of embedding models (hn-trainer): for each (query Q, positive PD) pair, a candidate D is a "
        "hard negative when d(Q, D) < d(Q, PD) and d(Q, D) < d(PD, D).",
        "",
        f"- **Base model:** {base}",
        f"- **Training data:** {data}",
        f"- **Scores:** `CrossEncoder.predict` returns {activation}.",
        "",
        "## Usage",
        "",
        "```python",
        "from sentence_transformers import CrossEncoder",
        "",
        f'model = CrossEncoder("{model_ref}")',
        'query = "how do I deploy MySQL in the cloud?"',
        "scores = model.predict([",
        '    (query, "Steps to deploy a MySQL database on cloud infrastructure."),',
        '    (query, "Install MySQL on premises servers in your data center."),',
        "])",
        'ranking = model.rank(query, ["doc one", "doc two"])',
        "```",
        "",
        "## Hard-negative mining",
        "",
        *_settings_table(card.mining, MINING_LABELS),
        "",
        "## Training",
        "",
        *_settings_table(card.training, TRAINING_LABELS),
        "",
        "## Evaluation",
        "",
    ]
    if card.eval_description:
        lines += [card.eval_description, ""]
    lines += [*_metrics_table(card.eval_metrics), ""]
    return "\n".join(lines)


def save_for_hub(
    model: Any,
    tokenizer: Any = None,
    output_dir: str | os.PathLike = "model",
    card_data: RerankerCardData | None = None,
    *,
    max_length: int | None = None,
) -> Path:
    """Write a complete model folder (weights, config, tokenizer, ``README.md``) in one atomic rename.

    Args:
        model: A `HardNegativeTrainer` (its model, tokenizer, arguments and step are used) or a one-logit
            ``AutoModelForSequenceClassification``.
        tokenizer: The tokenizer (taken from the trainer when one is given).
        output_dir: The folder; replaced as a whole if it exists.
        card_data: What the card says (default: an empty card; the trainer's arguments fill the training
            part).
        max_length: Truncation length recorded in the tokenizer (default: the trainer's collator's).

    Returns:
        The folder.
    """
    from hn_trainer.training.trainer import HardNegativeTrainer, check_single_output, save_reranker

    card = card_data or RerankerCardData()
    if isinstance(model, HardNegativeTrainer):
        trainer = model
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = tokenizer or trainer.processing_class
        max_length = (
            max_length or getattr(trainer.data_collator, "max_length", None) or trainer.args.max_length
        )
        card.add_training_args(trainer.args, trainer.state.global_step)
    if tokenizer is None:
        raise ConfigError("save_for_hub needs the tokenizer")
    check_single_output(model)
    output_dir = Path(output_dir)
    with atomic_path(output_dir) as tmp:
        save_reranker(model, tokenizer, tmp, activation=card.activation, max_length=max_length)
        (tmp / "README.md").write_text(
            generate_model_card(card, model_name=output_dir.name), encoding="utf-8"
        )
    logger.info("Saved the reranker and its model card to %s", output_dir)
    return output_dir


def files_to_push(folder: str | os.PathLike) -> list[str]:
    """Relative paths `push_folder_to_hub` uploads (checkpoints, run logs and hidden files are left out)."""
    folder = Path(folder)
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_dir() or any(part.startswith((".", "checkpoint-", "runs")) for part in rel.parts):
            continue
        if rel.name == "training_args.bin":
            continue
        out.append(rel.as_posix())
    return out


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str = "Upload hard-negative fine-tuned reranker",
) -> str:
    """Create (if needed) the model repository and upload the `files_to_push` of ``folder``.

    Returns:
        The URL of the commit.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise ConfigError(f"{folder} holds no saved model (config.json missing)")
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        allow_patterns=files_to_push(folder),
        commit_message=commit_message,
        repo_type="model",
    )
    return str(getattr(info, "commit_url", info))
