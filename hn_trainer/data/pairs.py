"""(query, positive) pairs datasets, read as retrieval data: a local JSONL, CSV, TSV or Parquet file, or a Hub
dataset id, optionally with a separate corpus that negatives are drawn from.

This is how most people hold their data (search logs, FAQ pairs, ``sentence-transformers/natural-questions``):
no ids and no qrels, a query repeated on several rows for several positives. `load_pairs` turns it into the
`RetrievalData` that mining, training and evaluation read, by the rules of
`hn_trainer.mine_hard_negatives`:

* The query column and the positive column are named, or inferred as sentence-transformers infers them: the
  first two columns.
* A query is a distinct query text; its positives are the distinct texts paired with it. The corpus is the
  ``corpus`` documents followed by the positives not among them, deduplicated in first-seen order, so a
  positive that also appears in the corpus is the same document (and never a negative of its query).
* Ids are derived from content: ``"q"`` or ``"d"`` and the first 16 hex digits of the text's sha256 (the whole
  digest if two texts would share a prefix).
* The pairs are the judgements of one split (``split``, default ``"train"``), score 1.

Errors name the file, the line (the row for Parquet and Hub datasets) and the column.
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path

import datasets

from hn_trainer.data.beir import RetrievalData, _read_lines, json_objects
from hn_trainer.errors import ConfigError, DataError

PAIRS_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet"}
"""File suffixes read as pairs (or as a corpus), and how."""


def is_pairs_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a local file that `load_pairs` reads (by its suffix)."""
    path = Path(path)
    return path.suffix.lower() in PAIRS_SUFFIXES and path.is_file()


def content_ids(texts: list[str], prefix: str) -> list[str]:
    """``prefix`` + the first 16 hex digits of each text's sha256; the whole digest if two would collide."""
    digests = [hashlib.sha256(t.encode("utf-8")).hexdigest() for t in texts]
    short = [prefix + d[:16] for d in digests]
    if len(set(short)) == len(short):
        return short
    return [prefix + d for d in digests]


class Table:
    """Rows of a file or Hub dataset, column by column, each row with the number an error message names it by.

    Attributes:
        name: The file, or ``<repo id>/<split>``.
        columns: Column names in order (a JSONL file's: the keys of its first object, then any new ones).
        values: Column name to values, ``None`` where a row lacks the column.
        line_numbers: The line (JSONL, CSV) or row (Parquet, Hub; 1-based) of each row.
        unit: ``"line"`` or ``"row"``.
    """

    def __init__(self, name: str, columns: list[str], values: dict[str, list], line_numbers: list[int], unit: str):
        self.name, self.columns, self.values, self.line_numbers, self.unit = name, columns, values, line_numbers, unit

    def __len__(self) -> int:
        return len(self.line_numbers)

    def error(self, row: int, message: str) -> DataError:
        if self.unit == "line":
            return DataError(message, file=self.name, line=self.line_numbers[row])
        return DataError(f"row {self.line_numbers[row]}: {message}", file=self.name)

    def to_dataset(self, columns: list[str]):
        """These columns as a `datasets.Dataset` (each value checked by `texts`), in the given order."""
        return datasets.Dataset.from_dict({c: self.texts(c) for c in columns})

    def texts(self, column: str) -> list[str]:
        """The column's values, each a non-empty text.

        Raises:
            DataError: A row lacks the column, or its value is not a text or is blank (names file, line, column).
        """
        out = []
        for i, value in enumerate(self.values[column]):
            if value is None:
                raise self.error(i, f"no value in column {column!r}")
            if not isinstance(value, str):
                raise self.error(i, f"column {column!r} is {value!r}, not a text")
            if not value.strip():
                raise self.error(i, f"column {column!r} is empty")
            out.append(value)
        return out


def read_table(source: str | os.PathLike, *, split: str = "train") -> Table:
    """A local JSONL / JSON-lines, CSV, TSV or Parquet file, or a Hub dataset id (its ``split``).

    Raises:
        DataError: Unreadable or malformed input (file and line), an empty table, a missing Hub split.
    """
    path = Path(source)
    if path.is_file():
        kind = PAIRS_SUFFIXES.get(path.suffix.lower())
        if kind is None:
            raise DataError(f"unknown file type {path.suffix!r} (read: {', '.join(PAIRS_SUFFIXES)})", file=path)
        table = {"json": _read_json_lines, "csv": _read_csv, "parquet": _read_parquet}[kind](path)
    elif path.exists():
        raise DataError("a folder, not a pairs file (a BEIR folder is read with --data_format beir)", file=path)
    else:
        table = _read_hub(str(source), split)
    if not len(table):
        raise DataError("no rows", file=table.name)
    return table


def _read_json_lines(path: Path) -> Table:
    columns: dict[str, None] = {}
    rows, lines = [], []
    for line_no, row in json_objects(path):
        columns.update(dict.fromkeys(row))
        rows.append(row)
        lines.append(line_no)
    names = list(columns)
    return Table(str(path), names, {c: [r.get(c) for r in rows] for c in names}, lines, "line")


def _read_csv(path: Path) -> Table:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines = _read_lines(path)
    reader = csv.reader((text for _, text in lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise DataError("empty file: expected a header row of column names", file=path)
        header = [h.strip() for h in header]
        dupes = sorted({h for h in header if header.count(h) > 1})
        if dupes or not all(header):
            raise DataError(f"header row: empty or repeated column names {dupes}", file=path, line=1)
        values: dict[str, list] = {h: [] for h in header}
        line_numbers = []
        for row in reader:
            if not any(field.strip() for field in row):
                continue
            if len(row) != len(header):
                raise DataError(f"expected {len(header)} fields (the header's), got {len(row)}", file=path,
                                line=reader.line_num)
            for h, v in zip(header, row):
                values[h].append(v)
            line_numbers.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"malformed CSV: {e}", file=path, line=reader.line_num) from None
    return Table(str(path), header, values, line_numbers, "line")


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several kinds for a damaged file
        raise DataError(f"not a readable Parquet file: {e}", file=path) from None
    return Table(str(path), table.column_names, table.to_pydict(), list(range(1, table.num_rows + 1)), "row")


def _read_hub(repo_id: str, split: str) -> Table:
    if repo_id.count("/") != 1 or repo_id.startswith((".", "/")):
        raise DataError("no such file (and not a Hub dataset id)", file=repo_id)
    try:
        dataset = datasets.load_dataset(repo_id, split=split)
    except ValueError as e:  # an unknown split
        raise DataError(f"could not load split {split!r}: {e}", file=repo_id) from None
    except Exception as e:  # the Hub raises many kinds; the user needs one line
        raise DataError(f"could not load it from the Hugging Face Hub: {e}", file=repo_id) from e
    return Table(f"{repo_id}/{split}", list(dataset.column_names), dataset.to_dict(),
                 list(range(1, len(dataset) + 1)), "row")


def pair_columns(table: Table, query_column: str | None, positive_column: str | None) -> tuple[str, str]:
    """The query and positive columns: the named ones, else the first two, as sentence-transformers infers them.

    Raises:
        ConfigError: A named column the table lacks (the flag and the columns it has are named), fewer than two
            columns, the same column twice.
    """
    for flag, name in (("--query_column", query_column), ("--positive_column", positive_column)):
        if name is not None and name not in table.columns:
            raise ConfigError(f"{flag} {name!r}: {table.name} has no such column (columns: {', '.join(table.columns)})")
    rest = [c for c in table.columns if c != query_column and c != positive_column]
    query = query_column or (rest.pop(0) if rest else None)
    positive = positive_column or (rest.pop(0) if rest else None)
    if query is None or positive is None:
        raise ConfigError(f"{table.name} has {len(table.columns)} column(s) ({', '.join(table.columns)}); a pairs "
                          "dataset needs a query column and a positive column")
    if query == positive:
        raise ConfigError(f"--query_column and --positive_column are both {query!r}")
    return query, positive


def text_column(table: Table, column: str | None) -> str:
    """The named corpus column, else ``text`` where there is one, else the first column."""
    if column is not None:
        if column not in table.columns:
            raise ConfigError(f"--corpus_column {column!r}: {table.name} has no such column "
                              f"(columns: {', '.join(table.columns)})")
        return column
    return "text" if "text" in table.columns else table.columns[0]


def load_pairs(
    source: str | os.PathLike,
    *,
    query_column: str | None = None,
    positive_column: str | None = None,
    corpus: str | os.PathLike | None = None,
    corpus_column: str | None = None,
    split: str = "train",
) -> RetrievalData:
    """Read a pairs dataset (and an optional corpus) as `RetrievalData` with one qrels split, ``split``.

    Args:
        source: A ``.jsonl`` / ``.json`` (one object per line), ``.csv``, ``.tsv`` or ``.parquet`` file, or a Hub
            dataset id (its split ``split``).
        query_column, positive_column: Column names (default: the first two columns).
        corpus: A file or Hub id (split ``train``) of further documents negatives may be drawn from.
        corpus_column: The corpus' text column (default ``text``, else its first column).
        split: The Hub split read, and the name of the qrels split the pairs become.

    Raises:
        DataError: Malformed input, or a row whose query or positive is missing, not a text or blank (names the
            file, the line or row, and the column).
        ConfigError: A named column that does not exist.
    """
    table = read_table(source, split=split)
    query, positive = pair_columns(table, query_column, positive_column)
    queries, positives = table.texts(query), table.texts(positive)
    extra: list[str] = []
    if corpus is not None:
        corpus_table = read_table(corpus)
        extra = corpus_table.texts(text_column(corpus_table, corpus_column))
    pairs = list(dict.fromkeys(zip(queries, positives)))
    query_texts = list(dict.fromkeys(q for q, _ in pairs))
    doc_texts = list(dict.fromkeys(extra + [p for _, p in pairs]))
    query_ids, doc_ids = content_ids(query_texts, "q"), content_ids(doc_texts, "d")
    q_id, d_id = dict(zip(query_texts, query_ids)), dict(zip(doc_texts, doc_ids))
    qrels = {"query-id": [q_id[q] for q, _ in pairs], "corpus-id": [d_id[p] for _, p in pairs],
             "score": [1] * len(pairs)}
    name = table.name if corpus is None else f"{table.name} (corpus: {corpus})"
    return RetrievalData(
        corpus=datasets.Dataset.from_dict({"_id": doc_ids, "title": [""] * len(doc_ids), "text": doc_texts}),
        queries=datasets.Dataset.from_dict({"_id": query_ids, "text": query_texts}),
        qrels={split: datasets.Dataset.from_dict(qrels)},
        name=name,
        pair_columns=(query, positive),
    )


def detect_format(source: str | os.PathLike, *, pairs_options: bool = False) -> str:
    """``"beir"`` or ``"pairs"`` for ``--data_format auto``.

    ``demo`` and a folder are BEIR, a file is pairs. A Hub id is pairs when pair options (``--query_column``,
    ``--positive_column``, ``--corpus``) are given; otherwise it is BEIR when it has ``corpus`` and ``queries``
    configs (as ``BeIR/scifact`` does), else pairs.
    """
    path = Path(source)
    if str(source) == "demo" or path.is_dir():
        return "beir"
    if path.is_file() or pairs_options:
        return "pairs"
    try:
        configs = set(datasets.get_dataset_config_names(str(source)))
    except Exception:  # unreachable or unknown: let the BEIR loader report it as it always has
        return "beir"
    return "beir" if {"corpus", "queries"} <= configs else "pairs"
