"""Retrieval datasets in BEIR layout, from a local folder or the Hugging Face Hub.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl``
(``_id``, ``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``).
On the Hub the same data lives in two repositories, for example ``BeIR/scifact``
(configs ``corpus`` and ``queries``) and ``BeIR/scifact-qrels`` (one split per file).
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets

from hn_trainer.errors import DataError

logger = logging.getLogger(__name__)


@dataclass
class RetrievalData:
    """A corpus, its queries and relevance judgements, as `datasets` objects.

    Args:
        corpus: Columns ``_id``, ``title``, ``text``.
        queries: Columns ``_id``, ``text``.
        qrels: Split name to a dataset with columns ``query-id``, ``corpus-id``, ``score``.
        name: Where the data came from, for logs and model cards.
        pair_columns: For a pairs dataset (`hn_trainer.data.pairs.load_pairs`), its query and positive column
            names, which sentence-transformers layouts of the output reuse; ``None`` for BEIR data.
    """

    corpus: datasets.Dataset
    queries: datasets.Dataset
    qrels: dict[str, datasets.Dataset]
    name: str = ""
    pair_columns: tuple[str, str] | None = None
    _corpus_index: dict[str, int] | None = field(default=None, repr=False)
    _query_index: dict[str, int] | None = field(default=None, repr=False)

    @property
    def splits(self) -> list[str]:
        return sorted(self.qrels)

    def document_texts(self) -> list[str]:
        """Title and text of each document, in corpus order (the title is skipped when empty)."""
        return [document_text(t, x) for t, x in zip(self.corpus["title"], self.corpus["text"])]

    def query_texts(self) -> list[str]:
        return list(self.queries["text"])

    def corpus_index(self) -> dict[str, int]:
        if self._corpus_index is None:
            self._corpus_index = {d: i for i, d in enumerate(self.corpus["_id"])}
        return self._corpus_index

    def query_index(self) -> dict[str, int]:
        if self._query_index is None:
            self._query_index = {q: i for i, q in enumerate(self.queries["_id"])}
        return self._query_index

    def _split(self, split: str) -> datasets.Dataset:
        if split not in self.qrels:
            available = ", ".join(self.splits) or "none"
            raise DataError(f"no qrels for split {split!r} (available: {available})", file=self.name)
        return self.qrels[split]

    def relevant(self, split: str) -> dict[str, dict[str, int | float]]:
        """``{query_id: {doc_id: score}}`` for the judgements with a positive score.

        Scores are ints where integral (graded judgements such as ``0.5`` stay floats).
        """
        out: dict[str, dict[str, int | float]] = {}
        qrels = self._split(split)
        for q, d, s in zip(qrels["query-id"], qrels["corpus-id"], qrels["score"]):
            if s > 0:
                out.setdefault(q, {})[d] = score_value(s)
        return out

    def pairs(self, split: str) -> list[tuple[str, str]]:
        """(query id, positive document id) pairs of a split, in file order."""
        qrels = self._split(split)
        return [(q, d) for q, d, s in zip(qrels["query-id"], qrels["corpus-id"], qrels["score"]) if s > 0]

    def judged(self, split: str | None = None) -> dict[str, set[str]]:
        """``{query_id: doc_ids}``: every document judged for each query, whatever its score.

        Relevant or not (score 0, fractional, negative), a judged document is no unknown:
        mining excludes all of them from a query's negatives.

        Args:
            split: One split, or ``None`` for the judgements of all splits together.
        """
        out: dict[str, set[str]] = {}
        for name in self.splits if split is None else [split]:
            qrels = self._split(name)
            for q, d in zip(qrels["query-id"], qrels["corpus-id"]):
                out.setdefault(q, set()).add(d)
        return out

    def with_qrels(self, qrels: dict[str, datasets.Dataset]) -> RetrievalData:
        return RetrievalData(self.corpus, self.queries, qrels, self.name, self.pair_columns)


def document_text(title: str | None, text: str) -> str:
    """The text an encoder or reranker sees for a document: title, a space, then the body."""
    title = (title or "").strip()
    return f"{title} {text}" if title else text


def score_value(score: int | float) -> int | float:
    """A stored score as callers see it: an int where integral, else the float."""
    return int(score) if float(score).is_integer() else float(score)


_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def parse_score(text: str) -> int | float:
    """Parse a qrels score: an integer, or a decimal (kept as a float unless integral).

    Raises:
        ValueError: `text` is not a finite number (the message quotes it).
    """
    text = text.strip()
    if not _NUMBER.fullmatch(text):
        raise ValueError(f"score {text!r} is not a number")
    if text.lstrip("+-").isdigit():
        return int(text)
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"score {text!r} is not a finite number")
    return score_value(value)


def _coerce_score(value) -> int | float:
    """A score from a `datasets` column (int, float or text) as `parse_score` would read it."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"score {value!r} is not a number")
    if isinstance(value, str):
        return parse_score(value)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"score {value!r} is not a finite number")
    return score_value(value)


def score_column(scores: list[int | float]) -> list[int] | list[float]:
    """One type for the column: ints, or floats as soon as one score is fractional."""
    if all(isinstance(s, int) for s in scores):
        return scores
    return [float(s) for s in scores]


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 file; a byte-order mark at the start is dropped.

    Raises:
        DataError: A line is not valid UTF-8 (names the line, the byte and its column).
    """
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            if line_no == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                yield line_no, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                column = len(raw[: e.start].decode("utf-8")) + 1
                raise DataError(
                    f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {column}); save the file as UTF-8",
                    file=path,
                    line=line_no,
                ) from None


def json_objects(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` of each non-blank line of a JSON-lines file.

    Raises:
        DataError: A line that is not UTF-8, not JSON, or not a JSON object (names the file and line).
    """
    for line_no, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"malformed JSON: {e.msg} (column {e.colno})", file=path, line=line_no) from None
        if not isinstance(row, dict):
            raise DataError("expected a JSON object", file=path, line=line_no)
        yield line_no, row


def _read_jsonl(path: Path, columns: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {c: [] for c in columns}
    seen: dict[str, int] = {}
    for line_no, row in json_objects(path):
        _id = row.get("_id")
        if _id is None or str(_id).strip() == "":
            raise DataError("missing '_id'", file=path, line=line_no)
        _id = str(_id)
        if _id in seen:
            raise DataError(f"duplicate id (first seen on line {seen[_id]})", file=path, line=line_no, id=_id)
        seen[_id] = line_no
        text = row.get("text")
        if not isinstance(text, str) or not (text.strip() or str(row.get("title") or "").strip()):
            raise DataError("empty text", file=path, line=line_no, id=_id)
        out["_id"].append(_id)
        for c in columns[1:]:
            value = row.get(c)
            out[c].append("" if value is None else str(value))
    if not out["_id"]:
        raise DataError("no rows", file=path)
    return out


def _read_qrels(path: Path, query_ids: set[str], doc_ids: set[str]) -> dict[str, list]:
    """Read one qrels TSV (fields are split on tabs as they are: no quoting)."""
    out: dict[str, list] = {"query-id": [], "corpus-id": [], "score": []}
    seen: dict[tuple[str, str], int] = {}
    first = True
    for line_no, line in _read_lines(path):
        row = line.rstrip("\r\n").split("\t")
        if not "".join(row).strip():
            continue
        if first and row[0].strip().lower() in {"query-id", "query_id", "qid"}:
            first = False
            continue
        first = False
        if len(row) < 3:
            raise DataError(f"expected 3 tab-separated columns, got {len(row)}", file=path, line=line_no)
        q, d, s = row[0].strip(), row[1].strip(), row[2].strip()
        try:
            score = parse_score(s)
        except ValueError as e:
            raise DataError(str(e), file=path, line=line_no, id=q) from None
        if q not in query_ids:
            raise DataError("unknown query id (not in queries.jsonl)", file=path, line=line_no, id=q)
        if d not in doc_ids:
            raise DataError("unknown document id (not in corpus.jsonl)", file=path, line=line_no, id=d)
        if (q, d) in seen:
            raise DataError(
                f"duplicate judgement for document {d!r} (first on line {seen[q, d]})",
                file=path, line=line_no, id=q,
            )
        seen[q, d] = line_no
        out["query-id"].append(q)
        out["corpus-id"].append(d)
        out["score"].append(score)
    out["score"] = score_column(out["score"])
    return out


def load_beir_folder(path: str | os.PathLike) -> RetrievalData:
    """Load and validate a local BEIR folder; every split under ``qrels/`` is read."""
    root = Path(path)
    for name in ("corpus.jsonl", "queries.jsonl"):
        if not (root / name).is_file():
            raise DataError(f"missing {name}", file=root)
    corpus = _read_jsonl(root / "corpus.jsonl", ("_id", "title", "text"))
    queries = _read_jsonl(root / "queries.jsonl", ("_id", "text"))
    query_ids, doc_ids = set(queries["_id"]), set(corpus["_id"])
    qrels = {}
    if (root / "qrels").is_dir():
        for tsv in sorted((root / "qrels").glob("*.tsv")):
            qrels[tsv.stem] = datasets.Dataset.from_dict(_read_qrels(tsv, query_ids, doc_ids))
    return RetrievalData(
        corpus=datasets.Dataset.from_dict(corpus),
        queries=datasets.Dataset.from_dict(queries),
        qrels=qrels,
        name=str(root),
    )


def load_beir_hub(repo_id: str, *, qrels: str | None = None) -> RetrievalData:
    """Load a BEIR dataset from the Hub: ``repo_id`` with configs ``corpus`` and ``queries``, and
    ``qrels`` (default ``<repo_id>-qrels``) whose splits are the qrels splits."""
    corpus = datasets.load_dataset(repo_id, "corpus", split="corpus")
    queries = datasets.load_dataset(repo_id, "queries", split="queries")
    qrels_repo = qrels or f"{repo_id}-qrels"
    qrels_dict = datasets.load_dataset(qrels_repo)
    cols = {"_id": str, "title": str, "text": str}
    corpus = corpus.map(lambda r: {k: str(r.get(k) or "") for k in cols}, remove_columns=[
        c for c in corpus.column_names if c not in cols])
    queries = queries.map(lambda r: {"_id": str(r["_id"]), "text": r["text"]}, remove_columns=[
        c for c in queries.column_names if c not in ("_id", "text")])
    query_ids, doc_ids = set(queries["_id"]), set(corpus["_id"])
    splits = {}
    for split, ds in qrels_dict.items():
        rows = {"query-id": [str(x) for x in ds["query-id"]], "corpus-id": [str(x) for x in ds["corpus-id"]],
                "score": []}
        for i, (q, d, s) in enumerate(zip(rows["query-id"], rows["corpus-id"], ds["score"]), start=1):
            if q not in query_ids:
                raise DataError("unknown query id", file=f"{qrels_repo}/{split}", line=i, id=q)
            if d not in doc_ids:
                raise DataError("unknown document id", file=f"{qrels_repo}/{split}", line=i, id=d)
            try:
                rows["score"].append(_coerce_score(s))
            except ValueError as e:
                raise DataError(str(e), file=f"{qrels_repo}/{split}", line=i, id=q) from None
        rows["score"] = score_column(rows["score"])
        splits[split] = datasets.Dataset.from_dict(rows)
    return RetrievalData(corpus=corpus, queries=queries, qrels=splits, name=repo_id)


def load_beir(path_or_id: str | os.PathLike, *, qrels: str | None = None) -> RetrievalData:
    """Load a BEIR dataset from a local folder, or from the Hub when no such folder exists.

    Example:
        >>> data = load_beir("../shared/data/scifact")          # doctest: +SKIP
        >>> data = load_beir("BeIR/scifact", qrels="BeIR/scifact-qrels")  # doctest: +SKIP
    """
    if str(path_or_id) == "demo":
        from hn_trainer.data.demo import demo_path

        return load_beir_folder(demo_path())
    path = Path(path_or_id)
    if path.exists():
        return load_beir_folder(path)
    if str(path_or_id).count("/") == 1 and not str(path_or_id).startswith((".", "/")):
        try:
            return load_beir_hub(str(path_or_id), qrels=qrels)
        except DataError:
            raise
        except Exception as e:  # the Hub raises many kinds; the user needs one line
            raise DataError(f"could not load {path_or_id!r} from the Hugging Face Hub: {e}") from e
    raise DataError("no such folder (and not a Hub dataset id)", file=path)
