"""BEIR loading, validation errors and the seeded query split."""

from __future__ import annotations

import pytest
from conftest import write_beir

from hn_trainer.data import load_beir, split_queries
from hn_trainer.errors import DataError


def test_load_tiny_beir(tiny_beir):
    data = load_beir(tiny_beir)
    assert data.corpus.num_rows == 12 and data.queries.num_rows == 6
    assert data.splits == ["test", "train"]
    assert data.pairs("train") == [("q0", "d0"), ("q1", "d2"), ("q2", "d4"), ("q3", "d7")]
    assert data.relevant("test") == {"q4": {"d9": 1}, "q5": {"d11": 1, "d10": 1}}
    assert data.document_texts()[0] == "title 0 deploy a mysql database on cloud infrastructure"
    assert data.corpus_index()["d3"] == 3


def test_missing_split_names_available(tiny_beir):
    data = load_beir(tiny_beir)
    with pytest.raises(DataError, match="no qrels for split 'dev'.*test, train"):
        data.pairs("dev")


def _append(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


@pytest.mark.parametrize(
    "file, line, pattern",
    [
        ("corpus.jsonl", '{"_id": "d0", "title": "", "text": "again"}', r"corpus.jsonl:13: id 'd0': duplicate id"),
        ("corpus.jsonl", '{"_id": "d99", "title": "t", "text": ', r"corpus.jsonl:13: malformed JSON"),
        ("corpus.jsonl", '{"_id": "d99", "title": "", "text": "  "}', r"corpus.jsonl:13: id 'd99': empty text"),
        ("queries.jsonl", '{"text": "no id"}', r"queries.jsonl:7: missing '_id'"),
        ("qrels/train.tsv", "q0\tnope\t1", r"train.tsv:6: id 'nope': unknown document id"),
        ("qrels/train.tsv", "qx\td1\t1", r"train.tsv:6: id 'qx': unknown query id"),
        ("qrels/train.tsv", "q0\td0\t1", r"train.tsv:6: id 'q0': duplicate judgement"),
    ],
)
def test_bad_input_names_file_line_and_id(tiny_beir, file, line, pattern):
    _append(tiny_beir / file, line)
    with pytest.raises(DataError, match=pattern):
        load_beir(tiny_beir)


@pytest.fixture
def graded_beir(tmp_path):
    """Three queries with graded judgements: 2, 1, 0.5 and 0 (judged, not relevant)."""
    corpus = [(f"d{i}", "", f"document number {i}") for i in range(6)]
    queries = [("q0", "first"), ("q1", "second"), ("q2", "third")]
    qrels = {
        "train": [("q0", "d0", 2), ("q0", "d1", 0.5), ("q0", "d2", 0), ("q1", "d3", "1.0")],
        "test": [("q2", "d4", 1), ("q2", "d5", 0.0), ("q0", "d5", 0)],
    }
    return write_beir(tmp_path / "graded", corpus, queries, qrels)


def test_graded_scores_are_kept_not_truncated(graded_beir):
    data = load_beir(graded_beir)
    relevant = data.relevant("train")
    assert relevant == {"q0": {"d0": 2, "d1": 0.5}, "q1": {"d3": 1}}
    assert type(relevant["q0"]["d0"]) is int and type(relevant["q1"]["d3"]) is int
    assert data.pairs("train") == [("q0", "d0"), ("q0", "d1"), ("q1", "d3")]
    assert data.relevant("test") == {"q2": {"d4": 1}}
    # the seeded split carries the grades over
    split = split_queries(data, 1, seed=0)
    pooled = {**split.relevant("train"), **split.relevant("test")}
    assert pooled["q0"] == {"d0": 2, "d1": 0.5}


def test_integer_scores_stay_an_integer_column(tiny_beir):
    data = load_beir(tiny_beir)
    assert data.qrels["train"].features["score"].dtype == "int64"


def test_judged_lists_every_judged_document_whatever_its_score(graded_beir):
    data = load_beir(graded_beir)
    assert data.judged("train") == {"q0": {"d0", "d1", "d2"}, "q1": {"d3"}}
    assert data.judged("test") == {"q2": {"d4", "d5"}, "q0": {"d5"}}
    assert data.judged() == {"q0": {"d0", "d1", "d2", "d5"}, "q1": {"d3"}, "q2": {"d4", "d5"}}
    with pytest.raises(DataError, match="no qrels for split 'dev'"):
        data.judged("dev")


@pytest.mark.parametrize(
    "score, message",
    [
        ("abc", "score 'abc' is not a number"),
        ("", "score '' is not a number"),
        ("nan", "score 'nan' is not a number"),
        ("1_0", "score '1_0' is not a number"),
        ("1e999", "score '1e999' is not a finite number"),
    ],
)
def test_bad_score_names_file_and_line(tiny_beir, score, message):
    _append(tiny_beir / "qrels/train.tsv", f"q0\td1\t{score}")
    with pytest.raises(DataError, match=rf"train.tsv:6: id 'q0': {message}"):
        load_beir(tiny_beir)


def test_qrels_fields_are_split_on_tabs_only(tiny_beir):
    """A stray quote is part of an id: it neither swallows the lines after it nor shifts line numbers."""
    _append(tiny_beir / "qrels/train.tsv", 'q0\t"d1\t1')
    _append(tiny_beir / "qrels/train.tsv", "q1\td3\t1")
    with pytest.raises(DataError, match=r"train.tsv:6: id '\"d1': unknown document id"):
        load_beir(tiny_beir)


@pytest.mark.parametrize(
    "file, line_no",
    [("corpus.jsonl", 13), ("queries.jsonl", 7), ("qrels/test.tsv", 5)],
)
def test_non_utf8_bytes_name_file_line_and_column(tiny_beir, file, line_no):
    line = '{"_id": "x\xff", "text": "t"}' if file.endswith("jsonl") else "q\xe9\td0\t1"
    with open(tiny_beir / file, "ab") as f:
        f.write(line.encode("latin-1") + b"\n")
    column = 11 if file.endswith("jsonl") else 2
    byte = "0xff" if file.endswith("jsonl") else "0xe9"
    name = file.split("/")[-1]
    pattern = rf"{name}:{line_no}: not valid UTF-8 \(byte {byte} at column {column}\); save the file as UTF-8"
    with pytest.raises(DataError, match=pattern):
        load_beir(tiny_beir)


def test_non_utf8_column_counts_characters_before_the_bad_byte(tiny_beir):
    with open(tiny_beir / "queries.jsonl", "ab") as f:
        f.write('{"_id": "é", "text": "'.encode() + b"\x80\"}\n")
    with pytest.raises(DataError, match=r"queries.jsonl:7: not valid UTF-8 \(byte 0x80 at column 23\)"):
        load_beir(tiny_beir)


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"])
def test_byte_order_mark_is_accepted(tiny_beir, file):
    expected = load_beir(tiny_beir)
    path = tiny_beir / file
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    data = load_beir(tiny_beir)
    assert data.corpus["_id"] == expected.corpus["_id"] and data.queries["_id"] == expected.queries["_id"]
    assert data.pairs("train") == expected.pairs("train") and data.pairs("test") == expected.pairs("test")


def test_header_after_blank_lines_is_still_a_header(tiny_beir):
    path = tiny_beir / "qrels/train.tsv"
    path.write_text("\n" + path.read_text())
    assert load_beir(tiny_beir).pairs("train")[0] == ("q0", "d0")


def test_missing_folder():
    with pytest.raises(DataError, match="no such folder"):
        load_beir("./definitely/not/here")


def test_split_queries_is_seeded_and_disjoint(tiny_beir):
    data = load_beir(tiny_beir)
    a = split_queries(data, 3, seed=1)
    b = split_queries(data, 3, seed=1)
    train, test = set(a.qrels["train"]["query-id"]), set(a.qrels["test"]["query-id"])
    assert len(train) == 3 and len(test) == 3 and not train & test
    assert a.qrels["train"]["query-id"] == b.qrels["train"]["query-id"]
    # A query's positives stay together: q5 has two.
    side = "train" if "q5" in train else "test"
    assert sorted(d for q, d in a.pairs(side) if q == "q5") == ["d10", "d11"]
    assert {frozenset(split_queries(data, 3, seed=s).qrels["train"]["query-id"]) for s in range(8)} != {frozenset(train)}


def test_scifact_counts(scifact_dir):
    data = load_beir(scifact_dir)
    assert data.corpus.num_rows == 5183
    assert len(data.relevant("train")) == 809 and len(data.pairs("train")) == 919
    assert len(data.relevant("test")) == 300 and len(data.pairs("test")) == 339
    paper = split_queries(data, 1000, seed=0)
    assert len(paper.relevant("train")) == 1000 and len(paper.relevant("test")) == 109


def test_demo_loads():
    data = load_beir("demo")
    assert data.corpus.num_rows > 0 and "train" in data.splits and "test" in data.splits


def test_hub_layout_is_converted_and_checked(monkeypatch):
    """`BeIR/<name>` + `BeIR/<name>-qrels` (no network: `load_dataset` answers from memory)."""
    import datasets

    tables = {
        ("BeIR/tiny", "corpus"): datasets.Dataset.from_dict(
            {"_id": ["d1", "d2"], "title": ["t", None], "text": ["one", "two"], "extra": [1, 2]}),
        ("BeIR/tiny", "queries"): datasets.Dataset.from_dict({"_id": ["q1"], "text": ["which one"], "meta": ["x"]}),
    }

    def fake_load(repo, config=None, split=None):
        if repo == "BeIR/tiny-qrels":
            return datasets.DatasetDict({"test": datasets.Dataset.from_dict(
                {"query-id": ["q1"], "corpus-id": ["d2"], "score": [1]})})
        return tables[repo, config]

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    data = load_beir("BeIR/tiny")
    assert data.corpus.column_names == ["_id", "title", "text"] and data.corpus["title"] == ["t", ""]
    assert data.pairs("test") == [("q1", "d2")] and data.name == "BeIR/tiny"

    def bad_qrels(repo, config=None, split=None):
        if repo == "BeIR/tiny-qrels":
            return datasets.DatasetDict({"test": datasets.Dataset.from_dict(
                {"query-id": ["q1"], "corpus-id": ["d9"], "score": [1]})})
        return tables[repo, config]

    monkeypatch.setattr(datasets, "load_dataset", bad_qrels)
    with pytest.raises(DataError, match=r"BeIR/tiny-qrels/test:1: id 'd9': unknown document id"):
        load_beir("BeIR/tiny")

    def graded_qrels(repo, config=None, split=None):
        if repo == "BeIR/tiny-qrels":
            return datasets.DatasetDict({"test": datasets.Dataset.from_dict(
                {"query-id": ["q1", "q1"], "corpus-id": ["d1", "d2"], "score": [0.5, 0.0]})})
        return tables[repo, config]

    monkeypatch.setattr(datasets, "load_dataset", graded_qrels)
    data = load_beir("BeIR/tiny")
    assert data.relevant("test") == {"q1": {"d1": 0.5}} and data.judged() == {"q1": {"d1", "d2"}}
