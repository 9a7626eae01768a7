"""Pairs datasets as input: files and Hub ids read as retrieval data, `mine --data pairs.jsonl` with sentence-
transformers layouts and a dataset card, the push to the Hub (offline), and `train` from pairs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
from conftest import TINY_SENTENCES

from hn_trainer.cli import main
from hn_trainer.config import DataArguments
from hn_trainer.data.pairs import content_ids, detect_format, load_pairs
from hn_trainer.errors import ConfigError, DataError
from hn_trainer.mining.pipeline import load_data

ROWS = [
    ("how do i deploy mysql in the cloud", TINY_SENTENCES[1]),
    ("what is a vcn", TINY_SENTENCES[3]),
    ("how do i deploy mysql in the cloud", TINY_SENTENCES[0]),  # a second positive of the same query
    ("what does a waf filter", TINY_SENTENCES[5]),
    ("what does a waf filter", TINY_SENTENCES[5]),  # a duplicate row
    ("attach a disk to an instance", TINY_SENTENCES[7]),
    ("spread traffic over servers", TINY_SENTENCES[9]),
    ("do vaccines protect children", TINY_SENTENCES[11]),
]
CORPUS = TINY_SENTENCES[:11]  # larger than the positives; TINY_SENTENCES[1] is both


def _write(path, rows, kind, columns=("question", "answer")):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(dict(zip(columns, r))) + "\n" for r in rows), encoding="utf-8")
    elif kind in ("csv", "tsv"):
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if kind == "tsv" else ",")
            writer.writerow(columns)
            writer.writerows(rows)
    else:
        datasets.Dataset.from_dict({c: [r[i] for r in rows] for i, c in enumerate(columns)}).to_parquet(str(path))
    return path


@pytest.fixture
def pairs_file(tmp_path):
    return _write(tmp_path / "pairs.jsonl", ROWS, "jsonl")


@pytest.fixture
def corpus_file(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(CORPUS)), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["jsonl", "csv", "tsv", "parquet"])
def test_every_format_reads_to_the_same_retrieval_data(tmp_path, kind):
    data = load_pairs(_write(tmp_path / f"pairs.{kind}", ROWS, kind))
    queries = list(dict.fromkeys(q for q, _ in ROWS))
    positives = list(dict.fromkeys(p for _, p in ROWS))
    assert data.queries["text"] == queries
    assert data.queries["_id"] == content_ids(queries, "q")
    assert data.corpus["text"] == positives
    assert data.splits == ["train"] and data.pair_columns == ("question", "answer")
    # identical query texts are one query; the duplicate row is one judgement
    assert len(data.pairs("train")) == len(set(ROWS)) == 7
    mysql = content_ids(["how do i deploy mysql in the cloud"], "q")[0]
    assert set(data.relevant("train")[mysql]) == set(content_ids([TINY_SENTENCES[1], TINY_SENTENCES[0]], "d"))


def test_named_columns_and_a_corpus_that_shares_documents_with_the_positives(tmp_path, corpus_file):
    path = _write(tmp_path / "pairs.jsonl", [(str(i), a, q) for i, (q, a) in enumerate(ROWS)], "jsonl",
                  columns=("row", "answer", "question"))
    data = load_pairs(path, query_column="question", positive_column="answer", corpus=corpus_file)
    # the corpus first, then the positives not in it: TINY_SENTENCES[1] is one document, not two
    assert data.corpus["text"] == CORPUS + [TINY_SENTENCES[11]]
    assert data.pair_columns == ("question", "answer")
    assert "corpus: " in data.name


def test_inferred_columns_skip_the_named_one(tmp_path):
    path = _write(tmp_path / "p.jsonl", [(a, q) for q, a in ROWS], "jsonl", columns=("answer", "question"))
    assert load_pairs(path, query_column="question").pair_columns == ("question", "answer")


@pytest.mark.parametrize(
    ("text", "kind", "where", "says"),
    [
        ('{"q": "a", "p": "b"}\n{"q": "c"\n', "jsonl", ":2", "malformed JSON"),
        ('{"q": "a", "p": "b"}\n["c", "d"]\n', "jsonl", ":2", "JSON object"),
        ('{"q": "a", "p": "b"}\n\n{"q": "c"}\n', "jsonl", ":3", "no value in column 'p'"),
        ('{"q": "a", "p": "b"}\n{"q": "c", "p": 7}\n', "jsonl", ":2", "column 'p' is 7, not a text"),
        ('{"q": "a", "p": "b"}\n{"q": "  ", "p": "d"}\n', "jsonl", ":2", "column 'q' is empty"),
        ("q,p\na,b\nc,d,e\n", "csv", ":3", "expected 2 fields"),
        ('q,p\na,b\n"c,d\n', "csv", "", "malformed CSV"),
        ("q,q\na,b\n", "csv", ":1", "repeated column names"),
    ],
)
def test_bad_rows_name_the_file_line_and_column(tmp_path, text, kind, where, says):
    path = tmp_path / f"pairs.{kind}"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError) as e:
        load_pairs(path)
    assert f"{path}{where}" in str(e.value) and says in str(e.value)


def test_non_utf8_and_column_errors(tmp_path, pairs_file):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"q": "a", "p": "b"}\n{"q": "caf\xe9", "p": "d"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid UTF-8"):
        load_pairs(bad)
    with pytest.raises(ConfigError, match=r"--query_column 'query'.*columns: question, answer"):
        load_pairs(pairs_file, query_column="query")
    one = tmp_path / "one.jsonl"
    one.write_text('{"q": "a"}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="needs a query column and a positive column"):
        load_pairs(one)
    with pytest.raises(DataError, match="no rows"):
        (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
        load_pairs(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match="unknown file type"):
        (tmp_path / "p.txt").write_text("a b\n", encoding="utf-8")
        load_pairs(tmp_path / "p.txt")


def test_a_hub_id_is_read_with_its_split_and_rows_are_named(monkeypatch):
    seen = {}

    def fake_load_dataset(repo_id, split=None, **kwargs):
        seen["call"] = (repo_id, split)
        return datasets.Dataset.from_dict({"anchor": ["a", "c"], "positive": ["b", ""]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    with pytest.raises(DataError, match=r"user/pairs/train: row 2: column 'positive' is empty"):
        load_pairs("user/pairs")
    assert seen["call"] == ("user/pairs", "train")


def test_auto_format(monkeypatch, tmp_path, tiny_beir, pairs_file):
    assert detect_format("demo") == detect_format(tiny_beir) == "beir"
    assert detect_format(pairs_file) == "pairs"
    assert detect_format("user/anything", pairs_options=True) == "pairs"
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda repo: ["corpus", "queries"])
    assert detect_format("BeIR/scifact") == "beir"
    monkeypatch.setattr(datasets, "get_dataset_config_names", lambda repo: ["default"])
    assert detect_format("sentence-transformers/natural-questions") == "pairs"


def test_pair_options_on_beir_data_are_refused(tiny_beir):
    with pytest.raises(ConfigError, match="--query_column: options of a pairs dataset"):
        load_data(DataArguments(data=str(tiny_beir), query_column="question"))


def _mine(tmp_path, pairs_file, corpus_file, *extra):
    out = tmp_path / "mined"
    args = ["mine", "--data", str(pairs_file), "--corpus", str(corpus_file), "--encoders", "lsa:8",
            "--cache_dir", "false", "--output_dir", str(out), "--pool_size", "3", "--save_embeddings", "true", *extra]
    assert main(args) == 0
    assert not Path("false").exists()  # --cache_dir false: no cache, not a folder named "false"
    return out


def _vectors(out):
    q = np.load(out / "query_embeddings.npy")
    c = np.load(out / "corpus_embeddings.npy")
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q_row = {x: i for i, x in enumerate(json.loads((out / "query_ids.json").read_text()))}
    d_row = {x: i for i, x in enumerate(json.loads((out / "corpus_ids.json").read_text()))}
    return q, c, q_row, d_row


def test_mine_pairs_file_negatives_satisfy_both_conditions_by_brute_force(tmp_path, pairs_file, corpus_file):
    out = _mine(tmp_path, pairs_file, corpus_file, "--output_format", "triplet")
    q, c, q_row, d_row = _vectors(out)
    triples = [json.loads(line) for line in (out / "triples.jsonl").read_text().splitlines()]
    positives: dict[str, set] = {}
    for t in triples:
        positives.setdefault(t["query_id"], set()).add(t["positive_id"])
    assert sum(len(v) for v in positives.values()) == 7
    eps = 1e-5
    found = 0
    for t in triples:
        qv, pv = q[q_row[t["query_id"]]], c[d_row[t["positive_id"]]]
        for n in t["negative_ids"]:
            assert n not in positives[t["query_id"]]
            nv = c[d_row[n]]
            assert 1 - qv @ nv < 1 - qv @ pv + eps  # condition 1
            assert 1 - qv @ nv < 1 - pv @ nv + eps  # condition 2
            found += 1
    assert found > 0
    # the sentence-transformers layout: the input's column names, one row per negative
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert len(rows) == found and set(rows[0]) == {"question", "answer", "negative"}
    loaded = datasets.load_from_disk(str(out / "dataset"))
    assert loaded.column_names == ["question", "answer", "negative"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["output_format"] == "triplet" and stats["rows"] == found
    card = (out / "README.md").read_text()
    for needle in ("lsa:8", "PCA", "d(Q,D) < d(Q,PD) and d(Q,D) < d(PD,D)", "Distinct negatives per query",
                   "`question`, `answer`, `negative`", "load_from_disk"):
        assert needle in card


def test_fallback_condition2_tops_up_with_condition_two_documents(tmp_path, pairs_file, corpus_file):
    out = _mine(tmp_path, pairs_file, corpus_file, "--fallback", "condition2", "--output_format", "n-tuple",
                "--num_negatives", "3", "--output_scores", "true")
    q, c, q_row, d_row = _vectors(out)
    stats = json.loads((out / "stats.json").read_text())
    assert stats["fallback"] == "condition2" and stats["fallback_negatives"] > 0
    assert stats["pairs_topped_up"] <= stats["pairs_short_of_dual_negatives"]
    judged = {}
    for t in map(json.loads, (out / "triples.jsonl").read_text().splitlines()):
        judged.setdefault(t["query_id"], set()).add(t["positive_id"])
    for t in map(json.loads, (out / "triples.jsonl").read_text().splitlines()):
        qv, pv = q[q_row[t["query_id"]]], c[d_row[t["positive_id"]]]
        for n in t["negative_ids"]:
            nv = c[d_row[n]]
            assert n not in judged[t["query_id"]]
            assert 1 - qv @ nv < 1 - pv @ nv + 1e-5  # every negative keeps the false-negative guard
    rows = [json.loads(line) for line in (out / "dataset.jsonl").read_text().splitlines()]
    assert list(rows[0]) == ["question", "answer", "negative_1", "negative_2", "negative_3", "scores"]
    assert all(len(r["scores"]) == 4 for r in rows)
    assert "Fallback negatives added" in (out / "README.md").read_text()


def test_push_to_hub_sends_the_card_then_the_dataset(tmp_path, pairs_file, corpus_file, monkeypatch):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)) or f"https://hf.co/{repo_id}")
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_file",
                        lambda self, **kw: calls.append(("upload", kw["path_in_repo"], kw["path_or_fileobj"])))
    monkeypatch.setattr(datasets.Dataset, "push_to_hub",
                        lambda self, repo_id, **kw: calls.append(("push", repo_id, self.column_names, kw)))
    out = _mine(tmp_path, pairs_file, corpus_file, "--output_format", "n-tuple", "--num_negatives", "1",
                "--push_to_hub", "true", "--hub_dataset_id", "me/mined", "--hub_private", "true")
    assert [c[0] for c in calls] == ["create", "upload", "push"]
    assert calls[0][1] == "me/mined" and calls[0][2]["private"] and calls[0][2]["repo_type"] == "dataset"
    card = calls[1][2].decode()
    assert calls[1][1] == "README.md" and card == (out / "README.md").read_text()
    assert 'load_dataset("me/mined", split="train")' in card and "lsa:8" in card and "hard-negatives" in card
    assert calls[2][1] == "me/mined" and calls[2][2] == ["question", "answer", "negative_1"]
    assert calls[2][3]["private"]
    assert json.loads((out / "stats.json").read_text())["exports"]["hub"] == "https://hf.co/me/mined"


def test_push_needs_a_repository_id(tmp_path, pairs_file, capsys):
    assert main(["mine", "--data", str(pairs_file), "--output_dir", str(tmp_path / "o"), "--push_to_hub", "true"]) == 1
    assert "--push_to_hub needs --hub_dataset_id" in capsys.readouterr().err


def test_training_from_pairs_holds_out_test_queries(tmp_path, pairs_file):
    from hn_trainer.recipe import split_queries_for_run

    data = load_pairs(pairs_file)
    args = DataArguments(data=str(pairs_file), test_queries=2, validation_queries=1)
    splits = split_queries_for_run(data, args, seed=0)
    train_queries = {q for q, _ in splits.train_pairs}
    assert len(splits.test) == 2 and len(splits.validation) == 1
    assert not (set(splits.test) & train_queries) and not (set(splits.validation) & train_queries)
    assert not set(splits.test) & set(splits.validation)
    assert len(train_queries) == 6 - 3
    assert "held out for the test" in splits.test_source and "no 'test' split" in splits.test_source
    # the same seed holds out the same queries, whatever the validation seed
    assert split_queries_for_run(data, args, seed=1).test == splits.test
    with pytest.raises(ConfigError, match="--test_queries 6 leaves no training query"):
        split_queries_for_run(data, DataArguments(data=str(pairs_file), test_queries=6), seed=0)


def test_train_from_a_pairs_file(tmp_path, pairs_file, corpus_file, tiny_bert_dir, tiny_encoder_dir):
    from test_recipe import _args

    args = _args(tmp_path, pairs_file, tiny_bert_dir, tiny_encoder_dir, "--corpus", str(corpus_file),
                 "--test_queries", "2", "--evaluate_base", "false")
    assert main(["train", *args]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["eval_queries"] == 2
    assert "held out for the test" in results["selection"]["test"]
    assert "fine-tuned reranker" in results["rows"]
    assert results["settings"]["data"]["corpus"] == str(corpus_file)


def test_bi_encoder_recipe_trains_a_sentence_transformer_on_n_tuples(tmp_path, pairs_file, corpus_file,
                                                                       tiny_encoder_dir):
    """The README's bi-encoder example: our n-tuple output through SentenceTransformerTrainer with
    MultipleNegativesRankingLoss."""
    import importlib.util

    import torch
    from sentence_transformers import SentenceTransformer

    path = Path(__file__).parents[1] / "recipes" / "train_bi_encoder.py"
    spec = importlib.util.spec_from_file_location("train_bi_encoder", path)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    before = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    table_pairs = datasets.Dataset.from_dict({"question": [q for q, _ in ROWS], "answer": [p for _, p in ROWS]})
    model = recipe.train_bi_encoder(table_pairs, str(tiny_encoder_dir), str(tmp_path / "bi"), corpus=CORPUS,
                                    encoders=["lsa:8"], num_negatives=2, max_steps=3, batch_size=4,
                                    learning_rate=1e-3, cache_dir=False)
    reloaded = SentenceTransformer(str(tmp_path / "bi" / "final"), device="cpu")
    text = ["what is a vcn"]
    assert np.allclose(reloaded.encode(text), model.encode(text), atol=1e-5)
    old, new = dict(before.named_parameters()), dict(model.named_parameters())
    assert any(not torch.equal(old[n].cpu(), p.detach().cpu()) for n, p in new.items())
    # the command line reads the same pairs from files
    assert recipe.main(["--pairs", str(pairs_file), "--corpus", str(corpus_file), "--model", str(tiny_encoder_dir),
                        "--encoders", "lsa:8", "--num_negatives", "1", "--epochs", "1", "--batch_size", "4",
                        "--output_dir", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "final" / "config_sentence_transformers.json").exists()
