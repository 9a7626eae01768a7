"""`hn-trainer mine`: outputs on disk, statistics, and clean failures on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_recipe import _args

from hn_trainer.cli import main
from hn_trainer.errors import HNTrainerError


def _mine(tmp_path, beir, encoders, *extra, cache=None):
    out = tmp_path / "out"
    argv = ["mine", "--data", str(beir), "--encoders", encoders, "--output_dir", str(out),
            "--cache_dir", str(cache or tmp_path / "cache"), *extra]
    return main(argv), out


def _rows(out):
    return [json.loads(line) for line in (out / "triples.jsonl").read_text().splitlines()]


def test_mine_writes_triples_stats_and_embeddings(tmp_path, tiny_beir, tiny_encoder_dir):
    rc, out = _mine(tmp_path, tiny_beir, f"{tiny_encoder_dir},lsa:8", "--num_negatives", "3", "--save_embeddings")
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pairs"] == 4 and stats["queries"] == 4 and stats["documents"] == 12
    assert stats["dim_concat"] == 32 + 8 and 0 < stats["dim_pca"] <= 40
    assert stats["variance_kept"] >= 0.95
    assert set(stats["seconds"]) >= {"load", "mine", "write"}
    rows = [json.loads(line) for line in (out / "triples.jsonl").read_text().splitlines()]
    assert [(r["query_id"], r["positive_id"]) for r in rows] == [("q0", "d0"), ("q1", "d2"), ("q2", "d4"), ("q3", "d7")]
    assert sum(len(r["negative_ids"]) == 0 for r in rows) == stats["pairs_with_no_negative"]
    for r in rows:
        assert len(r["negative_ids"]) == len(r["negatives"]) <= 3
        assert r["positive_id"] not in r["negative_ids"]

    import datasets

    table = datasets.load_from_disk(str(out / "triples"))
    assert table.column_names == [
        "query_id", "query", "positive_id", "positive", "negative_ids", "negatives", "negative_distances"
    ]
    assert table["negative_ids"] == [r["negative_ids"] for r in rows]
    for r in rows:  # one distance per negative, hardest (closest) first
        assert len(r["negative_distances"]) == len(r["negative_ids"])
        assert r["negative_distances"] == sorted(r["negative_distances"])
    from hn_trainer.io import is_complete, read_marker

    assert is_complete(out) and read_marker(out)["pairs"] == stats["pairs"] == 4

    # The saved vectors are the ones the kernel used: re-mining them gives the same negatives.
    from hn_trainer.mining.kernel import dual_condition_mine

    q = np.load(out / "query_embeddings.npy")
    c = np.load(out / "corpus_embeddings.npy")
    q_ids = json.loads((out / "query_ids.json").read_text())
    c_ids = json.loads((out / "corpus_ids.json").read_text())
    assert q.dtype == np.float32 and q.shape == (4, stats["dim_pca"]) and c.shape == (12, stats["dim_pca"])
    pairs = np.array([[q_ids.index(r["query_id"]), c_ids.index(r["positive_id"])] for r in rows])
    result = dual_condition_mine(q, c, pairs, [[p] for p in pairs[:, 1]], k=3)
    again = [[c_ids[i] for i in row if i >= 0] for row in result.indices.tolist()]
    assert again == [r["negative_ids"] for r in rows]
    pairs_out = zip(result.indices.tolist(), result.distances.tolist())
    distances = [[x for i, x in zip(ir, xr) if i >= 0] for ir, xr in pairs_out]
    assert [pytest.approx(d, abs=1e-5) for d in distances] == [r["negative_distances"] for r in rows]


def test_num_negatives_defaults_to_the_pool_size(tmp_path, tiny_beir):
    rc, out = _mine(tmp_path, tiny_beir, "lsa:8", "--method", "random", "--pool_size", "3")
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["num_negatives"] == 3
    assert [len(r["negative_ids"]) for r in _rows(out)] == [3] * 4
    # an explicit --num_negatives wins over the pool size
    rc, out = _mine(tmp_path, tiny_beir, "lsa:8", "--method", "random", "--pool_size", "3",
                    "--num_negatives", "1")
    assert rc == 0
    assert json.loads((out / "stats.json").read_text())["num_negatives"] == 1
    assert all(len(r["negative_ids"]) == 1 for r in _rows(out))


def test_remining_a_finished_folder_removes_its_marker_first(tmp_path, tiny_beir, monkeypatch):
    from hn_trainer.io import is_complete
    from hn_trainer.mining import pipeline

    rc, out = _mine(tmp_path, tiny_beir, "lsa:8", "--method", "random", "--num_negatives", "2")
    assert rc == 0 and is_complete(out)
    first = (out / "triples.jsonl").read_text()

    def crash(path, obj, **kwargs):
        raise RuntimeError("disk full")

    # a run that dies after writing the triples (while writing stats.json) leaves no COMPLETE marker
    monkeypatch.setattr(pipeline, "write_json", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        _mine(tmp_path, tiny_beir, "lsa:8", "--method", "random", "--num_negatives", "3")
    assert not (out / "COMPLETE").exists() and not is_complete(out)
    assert (out / "triples.jsonl").read_text() != first
    assert all(len(r["negative_ids"]) == 3 for r in _rows(out))  # the new triples were written,
    assert json.loads((out / "stats.json").read_text())["num_negatives"] == 2  # the stats are the old run's




def test_training_refuses_a_mined_folder_without_its_marker(
    tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, capsys
):
    from hn_trainer.config import DataArguments, MiningArguments
    from hn_trainer.mining.pipeline import load_data
    from hn_trainer.recipe import RecipeArguments, training_pool

    rc, out = _mine(tmp_path, tiny_beir, "lsa:8", "--method", "random", "--num_negatives", "2")
    assert rc == 0
    data_args = DataArguments(data=str(tiny_beir))
    mining_args = MiningArguments(encoders="lsa:8", keep_pairs_without_negatives=True)
    data = load_data(data_args)
    pool, mined = training_pool(data, data_args, mining_args, RecipeArguments(mined_dir=str(out)), None, None)
    assert mined is None and len(pool) == 4
    assert [pool[i]["pool_ids"] for i in range(4)] == [r["negative_ids"] for r in _rows(out)]
    assert set(pool.doc_ids) == set(data.corpus["_id"])  # the whole corpus, for random negatives

    (out / "COMPLETE").unlink()
    with pytest.raises(HNTrainerError, match="COMPLETE"):
        training_pool(data, data_args, mining_args, RecipeArguments(mined_dir=str(out)), None, None)
    capsys.readouterr()
    argv = _args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, "--mined_dir", str(out))
    rc = main(["train", *argv])
    assert rc == 1
    err = capsys.readouterr().err
    assert "COMPLETE" in err and str(out) in err and "Traceback" not in err
    assert not (tmp_path / "run" / "final").exists()


@pytest.mark.parametrize("method", ["random", "bm25"])
def test_baseline_methods_need_no_embeddings(tmp_path, tiny_beir, method):
    rc, out = _mine(tmp_path, tiny_beir, "lsa:8", "--method", method, "--num_negatives", "2")
    assert rc == 0
    rows = [json.loads(line) for line in (out / "triples.jsonl").read_text().splitlines()]
    assert all(r["positive_id"] not in r["negative_ids"] for r in rows)
    counts = [len(r["negative_ids"]) for r in rows]
    # BM25 only returns documents sharing a term with the query; random always finds two.
    assert counts == [2] * 4 if method == "random" else 0 < sum(counts) and max(counts) <= 2
    assert not (out / "query_embeddings.npy").exists()


def test_bad_input_exits_nonzero_with_location(tmp_path, tiny_beir, capsys):
    with open(tiny_beir / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d3", "title": "", "text": "duplicate"}\n')
    rc, out = _mine(tmp_path, tiny_beir, "lsa:8")
    assert rc == 1
    err = capsys.readouterr().err
    assert "corpus.jsonl:13" in err and "'d3'" in err and "duplicate id" in err
    assert "Traceback" not in err
    # the output folder is created (and checked writable) before the data is read, and left empty
    assert not out.exists() or not any(out.iterdir())


def test_bad_pca_variance_and_encoder(tmp_path, tiny_beir, capsys):
    rc, _ = _mine(tmp_path, tiny_beir, "lsa:8", "--pca_variance", "1.5")
    assert rc == 1 and "pca_variance must be in (0, 1]" in capsys.readouterr().err
    rc, out = _mine(tmp_path, tiny_beir, "/no/such/model")
    assert rc == 1 and "/no/such/model" in capsys.readouterr().err
    assert not (out / "stats.json").exists()


@pytest.mark.slow
def test_scifact_train_pairs_with_minilm_and_lsa(tmp_path, scifact_slice_dir, session_cache):
    """The real packaged all-MiniLM-L6-v2 plus LSA on the training pairs of a SciFact slice (its first 200
    training queries, their documents and 600 others)."""
    from conftest import SCIFACT_SLICE

    from hn_trainer.data import load_beir_folder

    data = load_beir_folder(scifact_slice_dir)
    rc, out = _mine(tmp_path, scifact_slice_dir, "sentence-transformers/all-MiniLM-L6-v2,lsa", "--num_negatives",
                    "5", "--save_embeddings", cache=session_cache)
    assert rc == 0
    stats = json.loads((out / "stats.json").read_text())
    assert stats["pairs"] == len(data.pairs("train")) and stats["queries"] == SCIFACT_SLICE["train_queries"]
    assert stats["documents"] == len(data.corpus) > SCIFACT_SLICE["other_documents"]
    assert stats["dim_concat"] == 384 + 256 and stats["dim_pca"] < stats["dim_concat"]
    assert stats["variance_kept"] >= 0.95
    # With a decent ensemble many positives already rank first: those pairs find no qualifying negative,
    # but a real share do.
    assert 0 < stats["pairs_with_no_negative"] < stats["pairs"]
    # Every negative satisfies both conditions in the vectors the kernel used.
    q = np.load(out / "query_embeddings.npy").astype(np.float64)
    c = np.load(out / "corpus_embeddings.npy").astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q_row = {x: i for i, x in enumerate(json.loads((out / "query_ids.json").read_text()))}
    c_row = {x: i for i, x in enumerate(json.loads((out / "corpus_ids.json").read_text()))}
    checked = 0
    for line in (out / "triples.jsonl").read_text().splitlines():
        r = json.loads(line)
        qv, pv = q[q_row[r["query_id"]]], c[c_row[r["positive_id"]]]
        for n in r["negative_ids"]:
            nv = c[c_row[n]]
            assert 1 - qv @ nv < 1 - qv @ pv + 1e-6 and 1 - qv @ nv < 1 - pv @ nv + 1e-6
            checked += 1
    assert checked == stats["negatives"] > 0


KILL_DURING_WRITE = """
import os, signal, sys
import hn_trainer.mining.pipeline as pipeline
from hn_trainer.cli import main

target = sys.argv[1]
real = pipeline.write_jsonl


def write_then_die(path, rows):
    if os.path.basename(path) == target:
        with pipeline.atomic_path(path) as tmp:
            with open(tmp, "w") as f:
                f.write('{"half": ')  # a partial record
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    return real(path, rows)


pipeline.write_jsonl = write_then_die
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("first_run", ["fresh", "over a finished run"])
def test_mine_killed_while_writing_reruns_to_the_same_clean_folder(tmp_path, tiny_beir, first_run):
    import os
    import subprocess
    import sys

    from hn_trainer.io import is_complete

    argv = ["mine", "--data", str(tiny_beir), "--encoders", "lsa:8", "--cache_dir", str(tmp_path / "cache")]
    reference = tmp_path / "reference"
    assert main([*argv, "--output_dir", str(reference)]) == 0
    out = tmp_path / "out"
    if first_run != "fresh":
        assert main([*argv, "--output_dir", str(out), "--pool_size", "2"]) == 0
    script = tmp_path / "kill.py"
    script.write_text(KILL_DURING_WRITE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(script), "triples.jsonl", *argv, "--output_dir", str(out)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed mid-write
    assert not is_complete(out)  # a killed run never looks finished
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # and it did leave a temporary behind
    assert main([*argv, "--output_dir", str(out)]) == 0
    assert is_complete(out)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # the rerun swept every temporary
    assert (out / "triples.jsonl").read_bytes() == (reference / "triples.jsonl").read_bytes()
    stats, expected = (json.loads((d / "stats.json").read_text()) for d in (out, reference))
    assert stats["num_negatives"] == expected["num_negatives"] and stats["pairs"] == expected["pairs"]
