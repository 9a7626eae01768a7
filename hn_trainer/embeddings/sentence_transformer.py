"""Encoders backed by any sentence-transformers model (hub id or local folder)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hn_trainer.embeddings.base import Encoder, file_identity, make_fingerprint
from hn_trainer.embeddings.specs import EncoderSpec
from hn_trainer.errors import EncoderError

logger = logging.getLogger(__name__)


def short_reason(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, shortened, for user-facing errors."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SentenceTransformerEncoder(Encoder):
    """A `sentence_transformers.SentenceTransformer` model; half precision on CUDA.

    Args:
        spec: The resolved spec (kind ``"st"``, target the hub id or folder).
        model_ref: What to load: a local folder, or a hub id.
        local_dir: The folder when the model is local (packaged or a path); its content digest
            enters the fingerprint. ``None`` for hub ids, whose fingerprint uses the hub commit.
        device: Torch device.
    """

    kind = "st"

    def __init__(
        self, spec: EncoderSpec, *, model_ref: str, local_dir: Path | None, device: str = "cpu"
    ) -> None:
        super().__init__(spec, device=device)
        self.model_ref = model_ref
        self.local_dir = local_dir
        self._model = None
        self._fingerprint: str | None = None

    @property
    def precision(self) -> str:
        return "fp16" if self.device.startswith("cuda") else "fp32"

    @property
    def model(self):
        """The loaded `SentenceTransformer` (loads on first access)."""
        if self._model is None:
            self.load()
        return self._model

    def load(self) -> None:
        if self._model is not None:
            return
        from sentence_transformers import SentenceTransformer

        options = self.spec.options
        kwargs: dict = {"device": self.device}
        if "revision" in options:
            kwargs["revision"] = options["revision"]
        if options.get("trust_remote_code"):
            kwargs["trust_remote_code"] = True
        logger.info("Loading sentence-transformers encoder %s from %s", self.name, self.model_ref)
        try:
            model = SentenceTransformer(self.model_ref, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any load failure becomes one clear message
            raise EncoderError(
                f"cannot load encoder {self.name!r} (sentence-transformers model {self.model_ref!r}): "
                f"{short_reason(exc)}"
            ) from exc
        if "max_seq_length" in options:
            model.max_seq_length = int(options["max_seq_length"])
        if self.precision == "fp16":
            model.half()
        model.eval()
        self._model = model

    @property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:
            dim = int(
                self.model.encode(["dimension probe"], convert_to_numpy=True, show_progress_bar=False).shape[
                    1
                ]
            )
        return int(dim)

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            if self.local_dir is not None:
                identity = {"files": file_identity(self.local_dir)}
            else:
                identity = {"hub_id": self.spec.target, "commit": self._hub_commit()}
            self._fingerprint = make_fingerprint(
                kind=self.kind,
                **identity,
                max_seq_length=self.spec.options.get("max_seq_length"),
                precision=self.precision,
            )
        return self._fingerprint

    def _hub_commit(self) -> str:
        """The hub revision the loaded model came from (loads the model)."""
        module = self.model[0]
        backbone = getattr(module, "auto_model", None) or getattr(module, "model", None)
        commit = getattr(getattr(backbone, "config", None), "_commit_hash", None)
        return str(commit or self.spec.options.get("revision") or "unknown")

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        return self.model.encode(
            texts,
            batch_size=len(texts),
            convert_to_numpy=True,
            show_progress_bar=False,
            normalize_embeddings=False,
        )
