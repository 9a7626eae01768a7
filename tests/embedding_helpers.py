"""Shared data and helpers for the `test_embeddings_*` modules (imported as a plain module)."""

from __future__ import annotations

from conftest import TINY_SENTENCES

from hn_trainer.embeddings import document_text

QUERIES = [
    "how do i deploy mysql in the cloud",
    "what is a vcn",
    "what does a waf filter",
    "attach a disk to an instance",
    "spread traffic over servers",
    "do vaccines protect children",
]

PARAPHRASE = ["A man is playing a guitar.", "Someone is playing an acoustic guitar."]
UNRELATED = "The central bank raised interest rates again."


def make_corpus():
    """A 12-document corpus over `TINY_SENTENCES`, every other document with a title."""
    import datasets

    titles = [f"title {i}" if i % 2 == 0 else "" for i in range(len(TINY_SENTENCES))]
    return datasets.Dataset.from_dict(
        {"_id": [f"d{i}" for i in range(len(TINY_SENTENCES))], "title": titles, "text": list(TINY_SENTENCES)}
    )


def make_queries():
    """The `QUERIES` as a queries dataset with ids q0, q1, ..."""
    import datasets

    return datasets.Dataset.from_dict({"_id": [f"q{i}" for i in range(len(QUERIES))], "text": QUERIES})


def doc_texts(corpus) -> list[str]:
    return [document_text(row) for row in corpus]


def _cos(a, b) -> float:
    return float(a @ b)
