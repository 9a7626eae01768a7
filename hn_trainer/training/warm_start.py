"""An unlabeled domain warm start: distil the mining ensemble into the cross-encoder on pseudo-queries the
corpus provides, before any labelled pair is seen.

Offline there is no pretrained reranker: the base is an encoder with a fresh one-logit head, which ranks below
the dense retriever whose candidates it reorders. The corpus itself provides queries without labels:

* **titles**: a document's title is a query for its body (the body is shown without the title, on every side,
  so the title is not found by string match);
* **spans** (inverse cloze): one sentence taken out of a document is a query for the rest of it, so corpora
  without titles work too. The sentence is drawn per document, seeded, among those of at least
  ``min_span_words`` words, and removed from the document the student sees.

The teacher is the ensemble: each pseudo-query is embedded in the mining space, its ``candidates`` nearest
documents (its own excluded) are retrieved exactly (`hn_trainer.mining.kernel.streamed_topk`), and the
student learns the teacher's distribution over the list [own document, candidates...]: labels are cosine
similarities divided by ``temperature``, with the own document raised to ``margin`` above the best candidate
when the teacher ranks it lower (it is the pseudo-positive). The loss is sentence-transformers' `ListNetLoss`
(cross-entropy between the softmax of the labels and of the logits, i.e. a listwise KL to the teacher), with the
student's logits divided by the same temperature (`student_scale`), the
trainer the host's `CrossEncoderTrainer`: the warm start is a `datasets.Dataset` of
``query``, ``documents``, ``labels`` rows that any sentence-transformers user can train on as it is.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hn_trainer.errors import ConfigError, HNTrainerError

KINDS = ("titles", "spans")


def student_scale(temperature: float):
    """``logits / temperature``: the activation `ListNetLoss` applies to the student's logits, so that the student
    is tempered as the teacher is (a fresh head's logits differ by hundredths; divided, they reach the teacher's
    spread within a few steps). Ranking, and so the saved model, does not depend on it."""
    import torch

    class _Scale(torch.nn.Module):
        def forward(self, x):
            return x / temperature

        def extra_repr(self) -> str:
            return f"temperature={temperature}"

    return _Scale()
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


@dataclass(frozen=True)
class PseudoQuery:
    """A query the corpus provides: ``text`` for document ``row``, which the student sees as ``document``."""

    text: str
    row: int
    kind: str
    document: str


def sentences(text: str) -> list[str]:
    """``text`` split after ``.``, ``!`` or ``?`` followed by whitespace and a capital, digit or bracket."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()]


def pseudo_queries(
    titles: Sequence[str],
    bodies: Sequence[str],
    *,
    kinds: Sequence[str] = KINDS,
    max_queries: int | None = None,
    min_span_words: int = 6,
    seed: int = 42,
) -> list[PseudoQuery]:
    """Title and span pseudo-queries of a corpus, a seeded draw of ``max_queries`` of them when given.

    Args:
        titles, bodies: Per document (titles may be empty).
        kinds: Any of ``"titles"`` and ``"spans"``.
        max_queries: Keep at most this many (a seeded draw over all of them, in corpus order after).
        min_span_words: Shortest sentence taken as a span; a document needs a second sentence to keep.
        seed: Seeds the span chosen in each document and the draw.

    Raises:
        ConfigError: An unknown kind, or none.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"warm-start pseudo-queries: kinds must be among {', '.join(KINDS)}; got {list(kinds)}")
    out: list[PseudoQuery] = []
    for row, (title, body) in enumerate(zip(titles, bodies)):
        title, body = (title or "").strip(), (body or "").strip()
        if "titles" in kinds and title and body:
            out.append(PseudoQuery(title, row, "title", body))
        if "spans" in kinds:
            parts = sentences(body)
            eligible = [i for i, s in enumerate(parts) if len(s.split()) >= min_span_words]
            if len(parts) > 1 and eligible:
                pick = random.Random(f"{seed}:{row}").choice(eligible)
                rest = " ".join(s for i, s in enumerate(parts) if i != pick)
                out.append(PseudoQuery(parts[pick], row, "span", f"{title} {rest}".strip()))
    if max_queries is not None and len(out) > max_queries:
        keep = sorted(random.Random(seed).sample(range(len(out)), max_queries))
        out = [out[i] for i in keep]
    return out


def distillation_dataset(
    pseudo: Sequence[PseudoQuery],
    query_embeddings: np.ndarray,
    corpus_embeddings: np.ndarray,
    titles: Sequence[str],
    bodies: Sequence[str],
    *,
    candidates: int = 7,
    temperature: float = 0.05,
    margin: float = 0.05,
    device=None,
):
    """The listwise distillation rows of the pseudo-queries: ``query``, ``documents`` (own document first, then
    the teacher's ``candidates`` nearest), ``labels`` (teacher cosine similarities / ``temperature``).

    Candidates are shown as the student sees documents: bodies without titles for title queries, title and body
    for span queries.

    Raises:
        HNTrainerError: No pseudo-query, or a corpus too small for one candidate.
    """
    import datasets
    import torch

    from hn_trainer.mining.kernel import streamed_topk

    if not pseudo:
        raise HNTrainerError("warm start: the corpus provides no pseudo-query (no titles, no multi-sentence text)")
    if len(corpus_embeddings) < 2:
        raise HNTrainerError("warm start: the corpus needs at least two documents")
    k = min(candidates, len(corpus_embeddings) - 1)
    q = torch.nn.functional.normalize(torch.as_tensor(np.asarray(query_embeddings, dtype=np.float32)), dim=1)
    c = torch.nn.functional.normalize(torch.as_tensor(np.asarray(corpus_embeddings, dtype=np.float32)), dim=1)
    rows = torch.tensor([p.row for p in pseudo], dtype=torch.long)
    top = streamed_topk(q, c, k, "cosine", exclude=[[p.row] for p in pseudo], device=device)
    own = (q * c[rows]).sum(dim=1)
    columns: dict[str, list] = {"query": [], "documents": [], "labels": []}
    for p, own_sim, idx, dist in zip(pseudo, own.tolist(), top.indices.tolist(), top.distances.tolist()):
        found = [(i, 1.0 - d) for i, d in zip(idx, dist) if i >= 0]
        best_other = max((s for _, s in found), default=own_sim - margin)
        positive = max(own_sim, best_other + margin)

        def shown(i: int) -> str:
            return bodies[i] if p.kind == "title" else f"{titles[i] or ''} {bodies[i]}".strip()

        columns["query"].append(p.text)
        columns["documents"].append([p.document] + [shown(i) for i, _ in found])
        columns["labels"].append([positive / temperature] + [s / temperature for _, s in found])
    return datasets.Dataset.from_dict(columns)


def warm_start_dataset(data, mined, *, kinds=KINDS, max_queries=None, candidates=7, temperature=0.05, margin=0.05,
                       seed=42, batch_size=64, device=None):
    """`distillation_dataset` of `pseudo_queries` for a `RetrievalData` and the `MinedPairs` whose ensemble and
    corpus vectors are the teacher.

    Raises:
        HNTrainerError: Mining produced no ensemble (a text sampler, or ``--mined_dir``).
    """
    if mined is None or mined.ensemble is None:
        raise HNTrainerError("the warm start distils the mining ensemble: mine here (no --mined_dir) with an "
                             "embedding method, or name the teacher with --warm_start_encoders")
    titles, bodies = list(data.corpus["title"]), list(data.corpus["text"])
    pseudo = pseudo_queries(titles, bodies, kinds=kinds, max_queries=max_queries, seed=seed)
    if not pseudo:
        raise HNTrainerError(f"warm start: the documents of {data.name} provide no pseudo-query of kinds {list(kinds)}")
    vectors = mined.ensemble.encode([p.text for p in pseudo], batch_size=batch_size)
    return distillation_dataset(pseudo, vectors, mined.corpus_embeddings, titles, bodies, candidates=candidates,
                                temperature=temperature, margin=margin, device=device)
