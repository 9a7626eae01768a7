"""BEIR loading, validation errors and the seeded query split."""

from __future__ import annotations


import pytest

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
