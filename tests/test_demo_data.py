"""The built-in demo dataset: well-formed BEIR files with the confusable cases it is meant to contain."""

from __future__ import annotations

import csv
import importlib.resources
import io
import json
import re

import pytest

DEMO = importlib.resources.files("hn_trainer") / "data" / "demo"


def _jsonl(name: str) -> list[dict]:
    text = (DEMO / name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _qrels(split: str) -> list[list[str]]:
    text = (DEMO / "qrels" / f"{split}.tsv").read_text(encoding="utf-8")
    return list(csv.reader(io.StringIO(text), delimiter="\t"))


@pytest.fixture(scope="module")
def corpus() -> dict[str, dict]:
    return {row["_id"]: row for row in _jsonl("corpus.jsonl")}


@pytest.fixture(scope="module")
def queries() -> dict[str, str]:
    return {row["_id"]: row["text"] for row in _jsonl("queries.jsonl")}


@pytest.fixture(scope="module")
def qrels() -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("train", "test"):
        rows = _qrels(split)
        assert rows[0] == ["query-id", "corpus-id", "score"]
        judged: dict[str, dict[str, int]] = {}
        for row in rows[1:]:
            assert len(row) == 3, row
            qid, did, score = row
            assert did not in judged.get(qid, {}), f"duplicate judgement {qid} {did}"
            judged.setdefault(qid, {})[did] = int(score)
        out[split] = judged
    return out


def _doc(corpus: dict[str, dict], title: str) -> str:
    """Id of the passage with this exact title."""
    matches = [i for i, row in corpus.items() if row["title"] == title]
    assert len(matches) == 1, f"expected one passage titled {title!r}, found {len(matches)}"
    return matches[0]


def _query(queries: dict[str, str], text: str) -> str:
    matches = [i for i, t in queries.items() if t == text]
    assert len(matches) == 1, f"expected one query {text!r}, found {len(matches)}"
    return matches[0]


def _positives(qrels: dict, qid: str) -> set[str]:
    for judged in qrels.values():
        if qid in judged:
            return {d for d, s in judged[qid].items() if s > 0}
    raise AssertionError(f"query {qid} has no judgement")


def test_corpus_rows_are_complete_and_unique():
    rows = _jsonl("corpus.jsonl")
    ids = [r["_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"doc-\d{3}", i) for i in ids)
    for row in rows:
        assert set(row) == {"_id", "title", "text"}
        assert row["title"].strip() and row["text"].strip()
        assert 30 <= len(row["text"].split()) <= 80, row["_id"]
    assert len({r["text"] for r in rows}) == len(rows)
    assert len({r["title"] for r in rows}) == len(rows)


def test_query_rows_are_complete_and_unique():
    rows = _jsonl("queries.jsonl")
    ids = [r["_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert all(re.fullmatch(r"q-\d{3}", i) for i in ids)
    for row in rows:
        assert set(row) == {"_id", "text"} and row["text"].strip()
    assert len({r["text"].lower() for r in rows}) == len(rows)


def test_counts_in_expected_ranges(corpus, queries, qrels):
    assert 180 <= len(corpus) <= 230
    assert 270 <= len(queries) <= 340
    assert 180 <= len(qrels["train"]) <= 230
    assert 80 <= len(qrels["test"]) <= 120


def test_qrels_name_existing_ids_and_cover_every_query(corpus, queries, qrels):
    for judged in qrels.values():
        for qid, docs in judged.items():
            assert qid in queries
            assert set(docs) <= set(corpus)
            assert all(score == 1 for score in docs.values())
            assert 1 <= len(docs) <= 2
    assert set(qrels["train"]) | set(qrels["test"]) == set(queries)


def test_train_and_test_queries_are_disjoint(qrels, queries):
    assert not set(qrels["train"]) & set(qrels["test"])
    train_texts = {queries[q].lower() for q in qrels["train"]}
    assert not train_texts & {queries[q].lower() for q in qrels["test"]}


def test_test_positives_have_training_coverage(qrels):
    train_docs = {d for docs in qrels["train"].values() for d in docs}
    test_docs = {d for docs in qrels["test"].values() for d in docs}
    assert len(test_docs & train_docs) >= 0.9 * len(test_docs)


def test_files_are_utf8_without_bom():
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/train.tsv", "qrels/test.tsv"):
        raw = (DEMO / name).read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")
        raw.decode("utf-8")
        assert raw.endswith(b"\n")


@pytest.mark.parametrize(
    ("first", "second", "first_terms", "second_terms"),
    [
        ("Deploying MySQL on cloud infrastructure", "Deploying MySQL on premises",
         ("MySQL", "DB system"), ("MySQL", "data center")),
        ("Virtual cloud network (VCN)", "Virtual network interface card (VNIC)", ("VCN",), ("VNIC",)),
        ("Web application firewall (WAF)", "Network Firewall", ("WAF", "HTTP"), ("firewall", "port")),
        ("Object Storage overview", "Block Volume overview", ("buckets",), ("attached",)),
        ("NAT gateway", "Internet gateway", ("outbound",), ("inbound",)),
        ("Block volume backups", "Block volume replication", ("point-in-time",), ("continuously",)),
        ("Public subnets", "Private subnets", ("public IP",), ("prohibits public IP",)),
        ("Security lists", "Network security groups", ("subnets",), ("VNICs",)),
        ("Regions", "Availability domains", ("geographic",), ("data centers",)),
        ("Scaling an instance up (vertical scaling)", "Scaling out with instance pools (horizontal scaling)",
         ("larger shape",), ("instance pool",)),
    ],
)
def test_confusable_pairs_are_present(corpus, first, second, first_terms, second_terms):
    a, b = corpus[_doc(corpus, first)], corpus[_doc(corpus, second)]
    assert all(t.lower() in a["text"].lower() for t in first_terms)
    assert all(t.lower() in b["text"].lower() for t in second_terms)


@pytest.mark.parametrize(
    ("query", "positive", "sibling"),
    [
        ("Steps to deploy a MySQL database on cloud infrastructure",
         "Deploying MySQL on cloud infrastructure", "Deploying MySQL on premises"),
        ("install MySQL server on a machine in our own data center",
         "Deploying MySQL on premises", "Deploying MySQL on cloud infrastructure"),
        ("What is a VCN?", "Virtual cloud network (VCN)", "Virtual network interface card (VNIC)"),
        ("What is a VNIC?", "Virtual network interface card (VNIC)", "Virtual cloud network (VCN)"),
        ("protect my web shop from SQL injection and cross-site scripting attacks",
         "Web application firewall (WAF)", "Network Firewall"),
        ("general network firewall that filters by port and protocol between subnets",
         "Network Firewall", "Web application firewall (WAF)"),
    ],
)
def test_paper_cases_point_at_the_right_sibling(corpus, queries, qrels, query, positive, sibling):
    positives = _positives(qrels, _query(queries, query))
    assert _doc(corpus, positive) in positives
    assert _doc(corpus, sibling) not in positives


def test_comparison_queries_have_both_siblings(corpus, queries, qrels):
    qid = _query(queries, "difference between a VCN and a VNIC")
    assert _positives(qrels, qid) == {
        _doc(corpus, "Virtual cloud network (VCN)"),
        _doc(corpus, "Virtual network interface card (VNIC)"),
    }
