"""A lexical encoder: TF-IDF + truncated SVD (latent semantic analysis) fitted on the corpus."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import numpy as np

from hn_trainer.embeddings.base import Encoder, make_fingerprint
from hn_trainer.embeddings.specs import EncoderSpec
from hn_trainer.errors import EncoderError

logger = logging.getLogger(__name__)

DEFAULT_LSA_DIMS = 256


def corpus_digest(texts: Sequence[str]) -> str:
    """A sha1 over the texts in order: identifies the corpus an LSA model was fitted on."""
    digest = hashlib.sha1(str(len(texts)).encode())
    for text in texts:
        digest.update(hashlib.sha1(text.encode("utf-8")).digest())
    return digest.hexdigest()


class LsaEncoder(Encoder):
    """TF-IDF (sublinear tf) followed by `TruncatedSVD`, fitted on corpus texts, applied to any text.

    Spec ``lsa[:dims][?seed=0&max_features=N&min_df=1&ngrams=1]``. The number of dimensions is
    capped by the corpus (below its vocabulary size and number of documents). The fingerprint
    includes a digest of the fitting corpus, so a different corpus never reuses cached vectors.

    Args:
        spec: The parsed spec.
        fit_texts: Corpus texts to fit on (fitting itself happens on first use).
    """

    kind = "lsa"

    def __init__(
        self, spec: EncoderSpec, *, fit_texts: Sequence[str] | None = None, device: str = "cpu"
    ) -> None:
        super().__init__(spec, device=device)
        self.requested_dims = int(spec.target) if spec.target else DEFAULT_LSA_DIMS
        if self.requested_dims < 1:
            raise EncoderError(f"encoder spec {spec.raw!r}: LSA needs at least 1 dimension")
        self.seed = int(spec.options.get("seed", 0))
        self._fit_texts: list[str] | None = None
        self._corpus_digest: str | None = None
        self._pipeline = None
        if fit_texts is not None:
            self.set_corpus(fit_texts)

    @property
    def settings(self) -> dict[str, object]:
        """TF-IDF/SVD settings with their defaults filled in."""
        options = self.spec.options
        return {
            "seed": self.seed,
            "min_df": int(options.get("min_df", 1)),
            "max_features": options.get("max_features"),
            "ngrams": int(options.get("ngrams", 1)),
        }

    def set_corpus(self, texts: Sequence[str]) -> None:
        """Register the corpus to fit on (drops any previous fit)."""
        self._fit_texts = list(texts)
        self._corpus_digest = corpus_digest(self._fit_texts)
        self._pipeline = None

    def _require_corpus(self) -> None:
        if self._fit_texts is None:
            raise EncoderError(f"encoder {self.name!r}: LSA must be given the corpus texts to fit on")

    @property
    def fingerprint(self) -> str:
        self._require_corpus()
        import sklearn

        return make_fingerprint(
            kind=self.kind,
            dims=self.requested_dims,
            settings=self.settings,
            corpus=self._corpus_digest,
            sklearn=".".join(sklearn.__version__.split(".")[:2]),
        )

    def load(self) -> None:
        """Fit TF-IDF and SVD on the corpus (deterministic for a given seed)."""
        if self._pipeline is not None:
            return
        self._require_corpus()
        from sklearn.decomposition import TruncatedSVD
        from sklearn.feature_extraction.text import TfidfVectorizer

        settings = self.settings
        vectorizer = TfidfVectorizer(
            sublinear_tf=True,
            min_df=settings["min_df"],
            max_features=settings["max_features"],
            ngram_range=(1, settings["ngrams"]),
            dtype=np.float32,
        )
        try:
            tfidf = vectorizer.fit_transform(self._fit_texts)
        except ValueError as exc:
            raise EncoderError(f"encoder {self.name!r}: cannot fit TF-IDF on the corpus: {exc}") from exc
        dims = max(1, min(self.requested_dims, tfidf.shape[1] - 1, tfidf.shape[0] - 1))
        if dims < self.requested_dims:
            logger.warning(
                "%s: corpus of %d texts and %d terms allows %d dimensions, not %d",
                self.name,
                tfidf.shape[0],
                tfidf.shape[1],
                dims,
                self.requested_dims,
            )
        svd = TruncatedSVD(n_components=dims, random_state=self.seed)
        svd.fit(tfidf)
        logger.info(
            "Fitted %s on %d texts: %d terms -> %d dims (%.1f%% of TF-IDF variance)",
            self.name,
            tfidf.shape[0],
            tfidf.shape[1],
            dims,
            100 * float(svd.explained_variance_ratio_.sum()),
        )
        self._pipeline = (vectorizer, svd)

    @property
    def dim(self) -> int:
        self.load()
        return int(self._pipeline[1].n_components)

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        self.load()
        vectorizer, svd = self._pipeline
        return svd.transform(vectorizer.transform(texts)).astype(np.float32)
