"""Model card data of a reranker fine-tuned on mined hard negatives, rendered by sentence-transformers.

`HardNegativeModelCardData` is a `CrossEncoderModelCardData`: pass it as
``CrossEncoder(path, model_card_data=...)`` and ``save_pretrained``, ``push_to_hub`` and the trainer write the
card sentence-transformers writes (front matter, usage, evaluation, training hyperparameters and logs), with a
"Hard negatives" section added before "Training Details": how the negatives were mined (encoders, PCA
variance and dimensions, sampler, distance, conditions, pool size, pair counts), what ``predict`` returns, and
an optional results table. The section is spliced into sentence-transformers' own cross-encoder template (the
result is kept as a file in the temporary directory, since the host reads its template from a path).

The card's title and usage snippet name the model id when there is one (``model_id``, ``set_model_id``, the
trainer's ``hub_model_id``, ``push_to_hub``'s repository) and otherwise the folder the model is saved to.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sentence_transformers.cross_encoder.model_card import CrossEncoderModelCardData

logger = logging.getLogger(__name__)

CARD_TAGS = ["hard-negatives", "hn-trainer"]

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
    "pairs_with_negatives": "Pairs with a negative",
    "pairs_without_negatives": "Pairs without a negative",
}

SECTION_VARIABLE = "hard_negatives_section"
_ANCHOR = "\n## Training Details"
# The usage snippet's model id when the host knows none (CrossEncoderModelCardData.generate_usage_snippet).
_HOST_PLACEHOLDER = 'CrossEncoder("cross_encoder_model_id")'
# Folder names that say nothing about the model: generic run folders, checkpoints, temporary folders.
_GENERIC_FOLDER = re.compile(
    r"^(final|best|last|latest|model|models|output|outputs|out|tmp|temp"
    r"|checkpoint-\d+|tmp[a-z0-9_]{8}|\..*)$",
    re.IGNORECASE,
)


@functools.cache
def _card_template_text(host_template: str) -> str:
    text = Path(host_template).read_text(encoding="utf-8")
    block = f"\n{{{{ {SECTION_VARIABLE} }}}}\n"
    if _ANCHOR in text:
        return text.replace(_ANCHOR, block + _ANCHOR, 1)
    logger.warning(
        "No %r heading in %s: the hard-negatives section goes last", _ANCHOR.strip(), host_template
    )
    return text + block


def card_template_path(host_template: str | os.PathLike = CrossEncoderModelCardData.template_path) -> Path:
    """The host's cross-encoder card template with the "Hard negatives" section before "Training Details".

    The file lives under the temporary directory, named after a hash of its text (one per template
    version), and is written again whenever it is missing.
    """
    text = _card_template_text(str(host_template))
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "hn-trainer" / f"model_card_template-{digest}.md"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def folder_model_name(path: str | os.PathLike) -> str:
    """The name a saved folder goes by: its last component, skipping generic and temporary folder names.

    Example:
        >>> folder_model_name("runs/scifact-reranker")
        'scifact-reranker'
        >>> folder_model_name("runs/scifact-reranker/final")
        'scifact-reranker'
        >>> folder_model_name("runs/scifact-reranker/.final.k2j3h4.tmp/final")
        'scifact-reranker'
    """
    absolute = Path(os.path.abspath(path))
    for part in reversed(absolute.parts):
        if part != absolute.anchor and not _GENERIC_FOLDER.match(part):
            return part
    return str(absolute)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(f"`{v}`" for v in value)
    return f"`{value}`" if isinstance(value, str) else str(value)


def settings_table(values: Mapping[str, Any], labels: Mapping[str, str]) -> str:
    """``| Setting | Value |`` rows: the keys of ``labels`` first (in its order), then the others."""
    keys = [k for k in labels if values.get(k) is not None]
    keys += [k for k in values if k not in labels and values[k] is not None]
    if not keys:
        return "Not recorded."
    lines = ["| Setting | Value |", "|:--|:--|"]
    lines += [f"| {labels.get(k, k)} | {_value(values[k])} |" for k in keys]
    return "\n".join(lines)


def metrics_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """``| Model | metric ... |``, one row per entry of ``rows`` (a blank cell where a metric is missing)."""
    names: list[str] = []
    for metrics in rows.values():
        names += [m for m in metrics if m not in names]
    lines = ["| Model | " + " | ".join(names) + " |", "|:--|" + "--:|" * len(names)]
    for row, metrics in rows.items():
        cells = [f"{metrics[m]:.4f}" if m in metrics else "" for m in names]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


@dataclass
class HardNegativeModelCardData(CrossEncoderModelCardData):
    """`CrossEncoderModelCardData` with the hard-negative mining settings and an optional results table.

    Args:
        mining: Mining settings and statistics: the keys of `MINING_LABELS` (listed first, with those labels),
            then any other key as given.
        eval_rows: ``{row name: {metric: value}}``, e.g. ``{"first stage": {...}, "fine-tuned": {...}}``.
        eval_description: What ``eval_rows`` were measured on (split, first stage, candidates per query).
        fusion_weight: Reranker weight of the score fusion with the first stage the results used, if any.
        base_model_name: The base model as given (a hub id or a folder); shown when the host could not verify a
            hub id for its own Base model line (offline, or a local folder).

    The other arguments (``model_id``, ``language``, ``license``, ``train_datasets``, ``tags``, ...) are
    those of `CrossEncoderModelCardData`; the ``hard-negatives`` and ``hn-trainer`` tags are always added.

    Example:
        >>> card = HardNegativeModelCardData(  # doctest: +SKIP
        ...     model_id="acme/minilm-reranker-hn",
        ...     mining={"encoders": ["all-MiniLM-L6-v2", "lsa"], "metric": "cosine", "pool_size": 8},
        ... )
        >>> model = CrossEncoder("base-reranker", model_card_data=card)  # doctest: +SKIP
        >>> model.save_pretrained("minilm-reranker-hn")  # doctest: +SKIP
    """

    tags: list[str] = field(
        default_factory=lambda: ["sentence-transformers", "cross-encoder", "reranker", *CARD_TAGS]
    )
    mining: dict[str, Any] = field(default_factory=dict)
    eval_rows: dict[str, dict[str, float]] = field(default_factory=dict)
    eval_description: str | None = None
    fusion_weight: float | None = None
    base_model_name: str | None = None

    template_path: Path = field(default_factory=card_template_path, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.add_tags(CARD_TAGS)

    def add_mining(self, values: Mapping[str, Any] | None = None, **settings: Any) -> None:
        """Record mining settings: the keys of `MINING_LABELS` found in ``values``, then ``settings``.

        ``values`` can be ``dataclasses.asdict(mining_arguments)`` or the statistics of the ensemble
        embeddings; keys that are not mining settings are left out.
        """
        self.mining.update({k: v for k, v in (values or {}).items() if k in MINING_LABELS})
        self.mining.update(settings)

    def display_name(self) -> str | None:
        """The model id if set, else the name of the folder being saved to (``None`` before a save)."""
        if self.model_id:
            return self.model_id
        if self.save_dir:
            return folder_model_name(self.save_dir)
        return None

    def to_dict(self) -> dict[str, Any]:
        # The host reads the template after this call: write it again if it is gone (a cleaned /tmp).
        if not Path(self.template_path).is_file():
            self.template_path = card_template_path()
        # Title the card after the model (unless a model_name was given), for this save only.
        given = self.model_name
        if not given:
            self.model_name = self.display_name()
        # The host template's "Training Details" needs the columns and loss the trainer adds to each dataset
        # entry; without them it fails and no README is written, so such entries sit out this rendering.
        datasets = self.train_datasets, self.eval_datasets
        self.train_datasets, self.eval_datasets = (self._renderable(d) for d in datasets)
        try:
            return super().to_dict()
        finally:
            self.model_name = given
            self.train_datasets, self.eval_datasets = datasets

    @staticmethod
    def _renderable(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        kept = [entry for entry in entries if "columns" in entry and "loss" in entry]
        if len(kept) < len(entries):
            names = [entry.get("name") or entry.get("id") for entry in entries if entry not in kept]
            logger.warning(
                "Model card: datasets %s left out (no trainer filled in their columns and loss)", names
            )
        return kept

    def generate_usage_snippet(self) -> str:
        snippet = super().generate_usage_snippet()
        name = self.display_name()
        if name and not self.model_id:
            snippet = snippet.replace(_HOST_PLACEHOLDER, f'CrossEncoder("{name}")')
            snippet = snippet.replace("# Download from the \U0001f917 Hub", "# Load the saved model folder")
        return snippet

    def get_model_specific_metadata(self) -> dict[str, Any]:
        metadata = super().get_model_specific_metadata()
        metadata[SECTION_VARIABLE] = self.hard_negatives_section()
        return metadata

    def _scores_line(self) -> str | None:
        activation = getattr(self.model, "activation_fn", None)
        if activation is None:
            return None
        name = type(activation).__name__
        if name == "Identity":
            what = "the raw logit (higher is more relevant; comparable within a query)"
        elif name == "Sigmoid":
            what = "a sigmoid of the logit (a relevance probability in [0, 1])"
        else:
            what = f"`{type(activation).__module__}.{name}` of the logit"
        return f"- **Scores:** `CrossEncoder.predict` returns {what}."

    def hard_negatives_section(self) -> str:
        """The Markdown of the "Hard negatives" section (what the template inserts)."""
        lines = [
            "## Hard negatives",
            "",
            (
                "This reranker was fine-tuned with hard negatives mined by hn-trainer from an ensemble of "
                "embedding models (concatenated embeddings, reduced by PCA): for a (query Q, positive P) "
                "pair, a candidate D is a hard negative under the dual semantic conditions d(Q, D) < d(Q, P) "
                "and d(Q, D) < d(P, D). The settings and counts of this run:"
            ),
            "",
        ]
        if self.base_model_name and not self.base_model:
            lines += [f"**Base model:** `{self.base_model_name}`", ""]
        if scores := self._scores_line():
            lines += [scores, ""]
        lines += ["### Mining", "", settings_table(self.mining, MINING_LABELS), "", "### Results", ""]
        if self.eval_description:
            lines += [self.eval_description, ""]
        if self.fusion_weight is not None:
            lines += [
                (
                    "Fused rows combine per-query z-scores of the reranker and the first stage with reranker "
                    f"weight {self.fusion_weight:g}."
                ),
                "",
            ]
        if self.eval_rows:
            lines.append(metrics_table(self.eval_rows))
        elif self.eval_results_dict:
            lines.append("See the Evaluation section.")
        else:
            lines.append("No evaluation was recorded.")
        return "\n".join(lines) + "\n"
