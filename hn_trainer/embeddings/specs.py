"""Encoder specs: the strings that name an encoder in a configuration.

Grammar::

    spec    := [kind ":"] target ["?" option ("&" option)*]
    kind    := "st" | "onnx" | "lsa"
    option  := key "=" value

Examples: ``sentence-transformers/all-MiniLM-L6-v2``, ``st:/models/my-encoder?max_seq_length=256``,
``onnx:/models/model.onnx?tokenizer=/models/tokenizer.json``, ``lsa``, ``lsa:256?seed=1``.
A spec without a kind names a sentence-transformers model (hub id or folder), or an ONNX model
when it is a path to a ``.onnx`` file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

from hn_trainer.errors import EncoderError

logger = logging.getLogger(__name__)

KINDS = ("st", "onnx", "lsa")

OPTIONS: dict[str, dict[str, type]] = {
    "st": {"max_seq_length": int, "revision": str, "trust_remote_code": bool},
    "onnx": {"tokenizer": str, "max_length": int, "output": str, "pooling": str},
    "lsa": {"seed": int, "max_features": int, "min_df": int, "ngrams": int},
}

_KIND_PREFIX = re.compile(r"^([A-Za-z][A-Za-z0-9_-]+):(?!//)")


@dataclass(frozen=True)
class EncoderSpec:
    """A parsed encoder spec.

    Attributes:
        raw: The string as written in the configuration (used in messages).
        kind: ``"st"``, ``"onnx"`` or ``"lsa"``; ``None`` when the spec named no kind and the
            resolver decides (folder, hub id, ``.onnx`` file or packaged model).
        target: Hub id, path, or for LSA the number of dimensions as a string (may be empty).
        options: Typed options from the ``?key=value`` suffix.
    """

    raw: str
    kind: str | None
    target: str
    options: dict[str, object] = field(default_factory=dict)

    @property
    def canonical(self) -> str:
        """The spec rewritten with its kind and sorted options: equal for equal meaning."""
        kind = self.kind or "st"
        text = f"{kind}:{self.target}" if self.target else kind
        if self.options:
            text += "?" + "&".join(f"{k}={self.options[k]}" for k in sorted(self.options))
        return text


def _convert(raw: str, key: str, value: str, typ: type) -> object:
    try:
        if typ is bool:
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError(value)
        return typ(value)
    except ValueError:
        raise EncoderError(
            f"encoder spec {raw!r}: option {key}={value!r} is not a valid {typ.__name__}"
        ) from None


def parse_spec(spec: str) -> EncoderSpec:
    """Parse an encoder spec string.

    Args:
        spec: The spec, e.g. ``"st:sentence-transformers/all-MiniLM-L6-v2?max_seq_length=128"``.

    Returns:
        The parsed `EncoderSpec`.

    Raises:
        EncoderError: Empty spec, unknown kind, unknown or ill-typed option.

    Example:
        >>> parse_spec("lsa:128?seed=3").canonical
        'lsa:128?seed=3'
    """
    if not isinstance(spec, str) or not spec.strip():
        raise EncoderError(
            f"encoder spec {spec!r} is empty; name a model, e.g. 'sentence-transformers/all-MiniLM-L6-v2'"
        )
    raw = spec
    body = spec.strip()
    kind: str | None = None
    if body.lower() in KINDS:
        kind, body = body.lower(), ""
    else:
        match = _KIND_PREFIX.match(body)
        if match:
            prefix = match.group(1).lower()
            if prefix not in KINDS:
                raise EncoderError(
                    f"encoder spec {raw!r}: unknown kind {match.group(1)!r}; use one of "
                    + ", ".join(f"'{k}:'" for k in KINDS)
                    + " or a plain hub id / folder"
                )
            kind, body = prefix, body[match.end() :]
    query = ""
    if "?" in body:
        body, query = body.split("?", 1)
    options: dict[str, object] = {}
    allowed = OPTIONS[kind or "st"] if kind else {**OPTIONS["st"], **OPTIONS["onnx"]}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in allowed:
            raise EncoderError(
                f"encoder spec {raw!r}: unknown option {item!r}; allowed: {', '.join(sorted(allowed))}"
            )
        options[key] = _convert(raw, key, value, allowed[key])
    body = body.strip()
    if kind != "lsa" and not body:
        raise EncoderError(f"encoder spec {raw!r} names no model")
    if kind == "lsa" and body and not body.isdigit():
        raise EncoderError(f"encoder spec {raw!r}: LSA takes a number of dimensions, e.g. 'lsa:256'")
    return EncoderSpec(raw=raw, kind=kind, target=body, options=options)
