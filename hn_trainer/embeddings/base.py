"""The encoder interface shared by sentence-transformers, ONNX and LSA encoders."""

from __future__ import annotations

import hashlib
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hn_trainer.embeddings.specs import EncoderSpec

logger = logging.getLogger(__name__)

_SAMPLE_BYTES = 1 << 20
_IGNORED_FILES = {"desktop.ini", "README.md", ".gitattributes"}


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of `x` scaled to unit L2 norm, as float32 (zero rows stay zero, NaN rows stay NaN)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


def file_identity(path: str | Path) -> str:
    """A digest of a file or folder's content, cheap on large weight files.

    Small files are hashed whole; files over 2 MiB contribute their size and their first and
    last MiB. Names and sizes of every file count, so a changed checkpoint changes the digest,
    while copying the folder elsewhere does not.
    """
    path = Path(path)
    digest = hashlib.sha1()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        rel = file.name if file == path else file.relative_to(path).as_posix()
        if file.name in _IGNORED_FILES or any(part.startswith(".") for part in rel.split("/")):
            continue
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        with open(file, "rb") as f:
            if size <= 2 * _SAMPLE_BYTES:
                digest.update(f.read())
            else:
                digest.update(f.read(_SAMPLE_BYTES))
                f.seek(-_SAMPLE_BYTES, 2)
                digest.update(f.read(_SAMPLE_BYTES))
    return digest.hexdigest()


def make_fingerprint(**parts: object) -> str:
    """A sha1 hex digest of keyword parts (JSON with sorted keys)."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


class Encoder(ABC):
    """Turns texts into L2-normalised float32 vectors.

    Subclasses implement `_encode_batch` (and `load` when they hold a model). `encode`
    encodes each distinct text once, longest first so batches hold texts of similar length,
    and returns rows in input order.

    Attributes:
        spec: The parsed spec this encoder was built from.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (ignored by encoders that do not use one).
    """

    kind: str = ""

    def __init__(self, spec: EncoderSpec, *, device: str = "cpu") -> None:
        self.spec = spec
        self.device = device

    @property
    def name(self) -> str:
        """The spec as the user wrote it."""
        return self.spec.raw

    @property
    @abstractmethod
    def fingerprint(self) -> str:
        """Stable identity of what this encoder computes: spec, resolved files and settings."""

    @property
    @abstractmethod
    def dim(self) -> int:
        """Embedding dimension."""

    def load(self) -> None:  # noqa: B027 - optional hook, a no-op for encoders without a model
        """Load the model now (encoders load lazily on first use)."""

    @abstractmethod
    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        """Encode one batch; returns raw (unnormalised) vectors [len(texts), dim]."""

    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 64,
        show_progress: bool = True,
        desc: str | None = None,
    ) -> np.ndarray:
        """Encode `texts` into L2-normalised float32 rows, in input order.

        Args:
            texts: Texts to encode (duplicates are encoded once).
            batch_size: Texts per forward pass.
            show_progress: Show a tqdm progress bar.
            desc: Progress bar label (defaults to the spec).

        Returns:
            Array [len(texts), dim], float32, rows of unit norm (zero rows for empty inputs stay zero).
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        unique: dict[str, int] = {}
        inverse = np.fromiter(
            (unique.setdefault(t, len(unique)) for t in texts), dtype=np.int64, count=len(texts)
        )
        distinct = list(unique)
        order = sorted(range(len(distinct)), key=lambda i: -len(distinct[i]))
        out: np.ndarray | None = None
        with tqdm(
            total=len(distinct),
            desc=desc or f"Encoding with {self.name}",
            unit="text",
            disable=not show_progress,
            leave=False,
        ) as bar:
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                vectors = l2_normalize(self._encode_batch([distinct[i] for i in idx]))
                if out is None:
                    out = np.empty((len(distinct), vectors.shape[1]), dtype=np.float32)
                out[idx] = vectors
                bar.update(len(idx))
        assert out is not None
        return out[inverse]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec.canonical!r})"
