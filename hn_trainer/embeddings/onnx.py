"""Sentence-embedding models exported to ONNX, run with onnxruntime and a `tokenizers` tokenizer."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from hn_trainer.embeddings.base import Encoder, file_identity, make_fingerprint
from hn_trainer.embeddings.sentence_transformer import short_reason
from hn_trainer.embeddings.specs import EncoderSpec
from hn_trainer.errors import EncoderError

logger = logging.getLogger(__name__)

POOLINGS = ("auto", "mean", "cls", "output")
_POOLED_NAMES = ("sentence_embedding", "sentence_embeddings", "embeddings")
_TOKEN_NAMES = ("last_hidden_state", "token_embeddings")


def find_onnx_file(target: Path) -> Path | None:
    """The model file for `target`: the file itself, or in a folder ``model.onnx``, ``onnx/model.onnx``
    or its only ``*.onnx``."""
    if target.is_file():
        return target
    if target.is_dir():
        for candidate in (target / "model.onnx", target / "onnx" / "model.onnx"):
            if candidate.is_file():
                return candidate
        found = sorted(target.glob("*.onnx"))
        if len(found) == 1:
            return found[0]
    return None


def find_tokenizer(model_file: Path) -> Path | None:
    """A ``tokenizer.json`` beside the model file or in its parent folder (hub layout ``onnx/model.onnx``)."""
    for folder in (model_file.parent, model_file.parent.parent):
        if (folder / "tokenizer.json").is_file():
            return folder / "tokenizer.json"
    return None


class OnnxEncoder(Encoder):
    """An ONNX sentence encoder.

    Pooling (option ``pooling``): ``auto`` uses an output that is already a sentence embedding
    (rank 2, e.g. ``sentence_embedding``; ``pooler_output`` is not one) and otherwise mean-pools
    the token embeddings over the attention mask; ``mean``/``cls`` pool the token output;
    ``output`` takes the output named or indexed by option ``output``.

    Args:
        spec: The resolved spec (kind ``"onnx"``).
        model_file: The ``.onnx`` file.
        tokenizer_file: A ``tokenizer.json`` (its fixed padding/truncation are replaced:
            pad to the longest text of a batch, truncate at ``max_length``).
        max_length: Truncation length in tokens.
        device: ``"cuda..."`` uses the CUDA execution provider when onnxruntime has it.
    """

    kind = "onnx"

    def __init__(
        self,
        spec: EncoderSpec,
        *,
        model_file: Path,
        tokenizer_file: Path,
        max_length: int = 512,
        device: str = "cpu",
    ) -> None:
        super().__init__(spec, device=device)
        self.model_file = Path(model_file)
        self.tokenizer_file = Path(tokenizer_file)
        self.max_length = int(max_length)
        self.pooling = str(spec.options.get("pooling", "auto"))
        if self.pooling not in POOLINGS:
            raise EncoderError(f"encoder spec {spec.raw!r}: pooling must be one of {', '.join(POOLINGS)}")
        self._session = None
        self._tokenizer = None
        self._fingerprint: str | None = None
        self._dim: int | None = None

    @property
    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = make_fingerprint(
                kind=self.kind,
                model=file_identity(self.model_file),
                tokenizer=file_identity(self.tokenizer_file),
                max_length=self.max_length,
                pooling=self.pooling,
                output=self.spec.options.get("output"),
            )
        return self._fingerprint

    def load(self) -> None:
        if self._session is not None:
            return
        import onnxruntime as ort
        from tokenizers import Tokenizer

        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(self.model_file), providers=providers)
            tokenizer = Tokenizer.from_file(str(self.tokenizer_file))
        except Exception as exc:  # noqa: BLE001
            raise EncoderError(
                f"cannot load encoder {self.name!r} ({self.model_file}): {short_reason(exc)}"
            ) from exc
        padding = tokenizer.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = padding.get("pad_id", tokenizer.token_to_id(pad_token) or 0)
        tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        tokenizer.enable_truncation(max_length=self.max_length)
        self._input_names = {i.name for i in session.get_inputs()}
        if not {"input_ids", "attention_mask"} <= self._input_names:
            raise EncoderError(
                f"cannot load encoder {self.name!r}: the ONNX model's inputs are "
                f"{sorted(self._input_names)}, "
                "expected input_ids and attention_mask"
            )
        self._output_index, self._pool = self._choose_output(session)
        self._session, self._tokenizer = session, tokenizer
        logger.info(
            "Loaded ONNX encoder %s (%s, output %r, pooling %s)",
            self.name,
            self.model_file.name,
            session.get_outputs()[self._output_index].name,
            self._pool,
        )

    def _choose_output(self, session) -> tuple[int, str]:
        """Pick (output index, pooling to apply: 'none', 'mean' or 'cls')."""
        outputs = session.get_outputs()
        floats = [(i, o) for i, o in enumerate(outputs) if "float" in o.type]
        choice = self.spec.options.get("output")
        if choice is not None:
            matches = [i for i, o in enumerate(outputs) if o.name == choice or str(i) == str(choice)]
            if not matches:
                raise EncoderError(
                    f"encoder spec {self.spec.raw!r}: no output {choice!r}; outputs are "
                    + ", ".join(f"{i}:{o.name}" for i, o in enumerate(outputs))
                )
            index = matches[0]
            rank = len(outputs[index].shape)
            return index, ("none" if rank == 2 else ("cls" if self.pooling == "cls" else "mean"))
        tokens = [i for i, o in floats if len(o.shape) == 3]
        pooled = [i for i, o in floats if len(o.shape) == 2 and o.name != "pooler_output"]
        named_tokens = [i for i in tokens if outputs[i].name in _TOKEN_NAMES]
        named_pooled = [i for i in pooled if outputs[i].name in _POOLED_NAMES]
        if self.pooling in ("mean", "cls"):
            if not tokens:
                raise EncoderError(
                    f"encoder {self.name!r}: the ONNX model has no token-embedding output to pool"
                )
            return (named_tokens or tokens)[0], self.pooling
        if named_pooled:
            return named_pooled[0], "none"
        if named_tokens:
            return named_tokens[0], "mean"
        if len(pooled) == 1:
            return pooled[0], "none"
        if tokens:
            return tokens[0], "mean"
        raise EncoderError(
            f"encoder {self.name!r}: cannot tell which ONNX output is the embedding; name it with ?output=..."
        )

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.load()
            size = self._session.get_outputs()[self._output_index].shape[-1]
            self._dim = (
                int(size) if isinstance(size, int) else int(self._encode_batch(["dimension probe"]).shape[1])
            )
        return self._dim

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        self.load()
        encodings = self._tokenizer.encode_batch(texts)
        input_ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        mask = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._input_names:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        name = self._session.get_outputs()[self._output_index].name
        out = np.asarray(self._session.run([name], feed)[0], dtype=np.float32)
        if self._pool == "none":
            return out
        if self._pool == "cls":
            return out[:, 0]
        weights = mask[..., None].astype(np.float32)
        return (out * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
