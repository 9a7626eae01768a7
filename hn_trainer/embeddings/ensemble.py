"""The fitted embedding ensemble: several cached encoders, concatenated, then an optional PCA.

`EnsembleEncoder.encode` embeds any text exactly as the corpus was embedded (needed to embed
new queries later); `save`/`load` keep the specs and the PCA across processes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hn_trainer.embeddings.base import make_fingerprint
from hn_trainer.embeddings.cache import CachedEncoder
from hn_trainer.embeddings.encoders import load_encoder
from hn_trainer.embeddings.lsa import corpus_digest
from hn_trainer.embeddings.pca import PcaProjection
from hn_trainer.embeddings.specs import parse_spec
from hn_trainer.errors import ConfigError
from hn_trainer.io import atomic_path

logger = logging.getLogger(__name__)

TextFn = Callable[[Mapping[str, Any]], str]


def document_text(row: Mapping[str, Any]) -> str:
    """``title + " " + text``, or ``text`` alone when the row has no (or an empty) title."""
    title = (row.get("title") or "").strip()
    text = row.get("text") or ""
    return f"{title} {text}" if title else text


class EnsembleEncoder:
    """Several encoders (each behind its cache), concatenated, optionally followed by a fitted PCA.

    Use `encode` to embed new texts (e.g. new queries) exactly as the corpus was embedded.

    Args:
        encoders: Cached encoders, in concatenation order.
        projection: Fitted PCA, or ``None`` for concatenation only.
        lsa_corpus_digest: Digest of the corpus LSA encoders were fitted on (saved with the ensemble).
    """

    def __init__(
        self,
        encoders: Sequence[CachedEncoder],
        projection: PcaProjection | None = None,
        *,
        lsa_corpus_digest: str | None = None,
    ) -> None:
        self.encoders = list(encoders)
        self.projection = projection
        self.lsa_corpus_digest = lsa_corpus_digest

    @classmethod
    def from_specs(
        cls,
        specs: Sequence[str],
        *,
        fit_texts: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
        device: str | None = None,
        state=None,
    ) -> EnsembleEncoder:
        """Resolve specs to cached encoders (fails early, naming the spec, when one cannot load).

        Args:
            specs: Encoder specs in concatenation order.
            fit_texts: Corpus texts for LSA encoders.
            cache_dir: Cache root (``None``: default; ``False``: memory only).
            device: Torch device for neural encoders.
            state: Optional `accelerate.PartialState` for multi-process encoding.
        """
        specs = check_specs(specs)
        if device is None and state is not None and state.num_processes > 1:
            device = str(state.device)  # one device per rank
        encoders = [
            CachedEncoder.create(load_encoder(s, device=device, fit_texts=fit_texts), cache_dir, state=state)
            for s in specs
        ]
        has_lsa = any(e.encoder.kind == "lsa" for e in encoders)
        digest = corpus_digest(fit_texts) if has_lsa and fit_texts is not None else None
        return cls(encoders, lsa_corpus_digest=digest)

    @property
    def specs(self) -> list[str]:
        return [e.name for e in self.encoders]

    @property
    def per_encoder_dims(self) -> dict[str, int]:
        return {e.name: e.dim for e in self.encoders}

    @property
    def dim_concat(self) -> int:
        return sum(self.per_encoder_dims.values())

    @property
    def dim(self) -> int:
        """Output dimension (after PCA when there is one)."""
        return self.projection.dim if self.projection is not None else self.dim_concat

    @property
    def fingerprint(self) -> str:
        return make_fingerprint(encoders=[e.encoder.fingerprint for e in self.encoders])

    def encode_concat(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> np.ndarray:
        """Each encoder's L2-normalised embedding, concatenated in encoder order: [n, dim_concat]."""
        parts = [
            e.encode(texts, ids=ids, batch_size=batch_size, show_progress=show_progress)
            for e in self.encoders
        ]
        return np.concatenate(parts, axis=1)

    def project(self, x: np.ndarray) -> np.ndarray:
        """Apply the PCA (identity when there is none)."""
        x = np.asarray(x, dtype=np.float32)
        return self.projection.transform(x) if self.projection is not None else x

    def encode(
        self,
        texts: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        batch_size: int = 64,
        show_progress: bool = True,
    ) -> np.ndarray:
        """Embed texts as the corpus was embedded: concatenation, then PCA. float32 [n, dim]."""
        return self.project(
            self.encode_concat(texts, ids=ids, batch_size=batch_size, show_progress=show_progress)
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Save specs and PCA to a folder (``ensemble.json``, ``pca.npz``), atomically.

        Model weights and cached vectors are not copied: `load` resolves the specs again.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            tmp.mkdir(parents=True)
            info = {
                "encoders": self.specs,
                "per_encoder_dims": self.per_encoder_dims,
                "fingerprints": [e.encoder.fingerprint for e in self.encoders],
                "lsa_corpus_digest": self.lsa_corpus_digest,
                "pca": None,
            }
            if self.projection is not None:
                p = self.projection
                info["pca"] = {"target": p.target, "dim": p.dim, "variance_kept": p.variance_kept}
                np.savez(
                    tmp / "pca.npz",
                    mean=p.mean,
                    components=p.components,
                    explained_variance_ratio=p.explained_variance_ratio,
                )
            (tmp / "ensemble.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        fit_texts: Sequence[str] | None = None,
        cache_dir: str | os.PathLike | None | bool = None,
        device: str | None = None,
        state=None,
    ) -> EnsembleEncoder:
        """Load an ensemble saved by `save`.

        Args:
            path: The folder.
            fit_texts: The corpus texts, required when the ensemble has LSA encoders (they are
                refitted, deterministically, and must match the saved corpus digest).
            cache_dir: Cache root. device: Torch device. state: Optional `PartialState`.

        Raises:
            ConfigError: The folder is missing pieces, or an encoder now resolves to a different model.
        """
        path = Path(path)
        try:
            info = json.loads((path / "ensemble.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read ensemble from {path}: {exc}") from exc
        if info.get("lsa_corpus_digest") and fit_texts is not None:
            if corpus_digest(fit_texts) != info["lsa_corpus_digest"]:
                raise ConfigError(f"ensemble {path}: its LSA encoders were fitted on a different corpus")
        ensemble = cls.from_specs(
            info["encoders"], fit_texts=fit_texts, cache_dir=cache_dir, device=device, state=state
        )
        now = [e.encoder.fingerprint for e in ensemble.encoders]
        changed = [s for s, a, b in zip(info["encoders"], info["fingerprints"], now, strict=True) if a != b]
        if changed:
            raise ConfigError(
                f"ensemble {path}: encoder(s) {changed} now resolve to different models or settings"
            )
        if info.get("pca"):
            with np.load(path / "pca.npz") as data:
                ensemble.projection = PcaProjection(
                    mean=data["mean"],
                    components=data["components"],
                    explained_variance_ratio=data["explained_variance_ratio"],
                    target=float(info["pca"]["target"]),
                )
        return ensemble


def check_specs(specs: Sequence[str]) -> list[str]:
    """Validate the list of encoder specs: non-empty, each parseable, no duplicates."""
    if isinstance(specs, str):
        specs = [specs]
    specs = list(specs or [])
    if not specs:
        raise ConfigError(
            "no encoders given; name at least one, e.g. 'sentence-transformers/all-MiniLM-L6-v2'"
        )
    seen: dict[str, str] = {}
    for spec in specs:
        canonical = parse_spec(spec).canonical
        if canonical in seen:
            raise ConfigError(f"encoder {spec!r} is listed twice (as {seen[canonical]!r})")
        seen[canonical] = spec
    return specs
