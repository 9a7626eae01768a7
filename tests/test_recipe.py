"""The training recipe end to end: `hn-trainer train / evaluate`, configs, two processes, faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hn_trainer.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _args(tmp_path, beir, model, encoder, *extra):
    return [
        "--data", str(beir), "--encoders", f"{encoder},lsa:8", "--model_name_or_path", str(model),
        "--first_stage_encoder", str(encoder), "--cache_dir", str(tmp_path / "cache"),
        "--output_dir", str(tmp_path / "run"), "--max_steps", "3", "--per_device_train_batch_size", "2",
        "--pool_size", "4", "--num_negatives", "2", "--keep_pairs_without_negatives", "true",
        "--fill_random_negatives", "true", "--max_length", "64", "--eval_candidates_k", "5",
        "--save_strategy", "no", "--report_to", "none", "--use_cpu", "true", *extra,
    ]


def test_train_saves_a_crossencoder_with_card_and_results(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir):
    rc = main(["train", *_args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, "--loss", "lce")])
    assert rc == 0
    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    rows = results["rows"]
    assert set(rows) == {"first stage (dense, top 5)", "base reranker", "fine-tuned reranker", "fused"}
    assert results["selection"]["validation"].startswith("1 training queries held out")
    assert 0.0 <= results["fusion_weight"] <= 1.0
    mining = results["mining"]  # what the negatives came from, as the model card says
    assert 0 <= mining["pairs_without_negatives"] <= mining["pairs"] and mining["dim_pca"] <= mining["dim_concat"]
    # the validation rows settings are compared on; the weight is the best of a grid holding w = 0 (the first
    # stage's ranking) and w = 1 (the reranker's), so the fused row is at least as good as either
    validation = results["validation_rows"]
    assert set(validation) == {"first stage (dense, top 5)", "fine-tuned reranker", "fused"}
    assert validation["fused"]["mrr@10"] >= max(validation["first stage (dense, top 5)"]["mrr@10"],
                                                validation["fine-tuned reranker"]["mrr@10"]) - 1e-9
    for metrics in rows.values():
        assert set(metrics) >= {"mrr@3", "mrr@10", "ndcg@10"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())

    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(run / "final"))
    scores = model.predict([("what is a vcn", "a virtual cloud network vcn is a private network")])
    assert scores.shape == (1,)
    card = (run / "final" / "README.md").read_text()
    assert f"**Base model:** `{tiny_bert_dir}`" in card and "dual_condition" in card and "mrr@10" in card.lower()
    assert 'CrossEncoder("run")' in card  # the usage snippet names the folder a user loads, not "final"


def test_evaluate_command_scores_a_saved_model(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, capsys):
    rc = main(["evaluate", *_args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir)])
    assert rc == 0
    out = capsys.readouterr().out
    # the row names the evaluated model; results.json is written as for training
    assert f"reranker ({tiny_bert_dir})" in out and "first stage (dense, top 5)" in out
    assert not (tmp_path / "run" / "final").exists()
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    assert set(rows) == {"first stage (dense, top 5)", f"reranker ({tiny_bert_dir})", "fused"}


def test_validation_scores_of_the_last_evaluation_are_reused_and_match_a_new_scoring(
        tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, monkeypatch):
    # training ends on an evaluated step: its validation run gives the fusion weight and the validation rows
    # without scoring again, and `evaluate` on the saved model scores the same validation queries alike
    from hn_trainer.evaluation import RerankingEvaluator

    calls, score = [], RerankingEvaluator.__call__

    def counted(self, model, output_path=None, epoch=-1, steps=-1):
        calls.append((id(self), steps))
        return score(self, model, output_path, epoch, steps)

    monkeypatch.setattr(RerankingEvaluator, "__call__", counted)
    args = _args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, "--eval_strategy", "steps",
                 "--eval_steps", "3")
    assert main(["train", *args]) == 0
    in_training = {evaluator for evaluator, steps in calls if steps == 3}
    assert len(in_training) == 1 and not [1 for e, steps in calls if e in in_training and steps < 0]
    trained = json.loads((tmp_path / "run" / "results.json").read_text())
    final = str(tmp_path / "run" / "final")
    again = [*_args(tmp_path, tiny_beir, final, tiny_encoder_dir), "--output_dir", str(tmp_path / "again")]
    assert main(["evaluate", *again]) == 0
    evaluated = json.loads((tmp_path / "again" / "results.json").read_text())
    assert evaluated["validation_rows"][f"reranker ({final})"] == pytest.approx(
        trained["validation_rows"]["fine-tuned reranker"], abs=1e-6)
    assert evaluated["fusion_weight"] == trained["fusion_weight"]


def test_unknown_config_field(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rat: 1e-5\n")
    assert main(["train", "--config", str(cfg)]) == 1
    assert "unknown config field(s): learning_rat" in capsys.readouterr().err


def test_eval_split_without_qrels(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, capsys):
    rc = main(["train", *_args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, "--eval_split", "dev")])
    assert rc == 1
    assert "no qrels for split 'dev'" in capsys.readouterr().err


def test_empty_training_set(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, capsys):
    # Euclidean distance on one query, positive at distance 0 from itself: nothing can be closer.
    rc = main(["train", *_args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir,
                               "--keep_pairs_without_negatives", "false", "--conditions", "both",
                               "--max_train_queries", "1", "--pool_size", "1")])
    err = capsys.readouterr().err
    if rc == 0:
        pytest.skip("the tiny encoder found a negative for q0; nothing to check")
    assert rc == 1 and "no" in err and "negative" in err


def test_multi_output_base_model_is_refused(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, capsys):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    three = tmp_path / "nli"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=3).save_pretrained(three)
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(three)
    rc = main(["train", *_args(tmp_path, tiny_beir, three, tiny_encoder_dir)])
    assert rc == 1 and "not a single-output reranker" in capsys.readouterr().err


@pytest.mark.slow
def test_two_cpu_processes_through_accelerate_launch(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ROOT / "accelerate_configs/cpu.yaml"),
        "--main_process_port", "29533", str(ROOT / "recipes/train_reranker.py"),
        *_args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, "--logging_steps", "1"),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "on rank 0 of 2" in log and "on rank 1 of 2" in log  # each rank scored a shard
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "fine-tuned reranker" in results["rows"]


@pytest.mark.slow
def test_scifact_slice_end_to_end(tmp_path, scifact_slice_dir, session_cache):
    """Mine, train a few steps and evaluate with the real packaged models on a slice of SciFact."""
    rc = main([
        "train", "--data", str(scifact_slice_dir), "--encoders", "sentence-transformers/all-MiniLM-L6-v2,lsa",
        "--max_train_queries", "24", "--max_eval_queries", "12", "--max_steps", "4",
        "--per_device_train_batch_size", "4", "--max_length", "128", "--eval_candidates_k", "5",
        "--output_dir", str(tmp_path / "run"), "--save_strategy", "no", "--report_to", "none",
        "--keep_pairs_without_negatives", "true", "--fill_random_negatives", "true",
        "--cache_dir", str(session_cache),
    ])
    assert rc == 0
    rows = json.loads((tmp_path / "run" / "results.json").read_text())["rows"]
    first = rows["first stage (dense, top 5)"]
    assert first["mrr@10"] > 0.3  # all-MiniLM-L6-v2 is a real retriever on SciFact
    assert set(rows["fine-tuned reranker"]) >= {"mrr@3", "mrr@10", "ndcg@10"}


def test_demo_command_runs_on_the_packaged_corpus(tmp_path, tiny_bert_dir, tiny_encoder_dir, capsys):
    """`hn-trainer demo` with its own defaults, shrunk to a few steps and tiny models."""
    rc = main([
        "demo", "--model_name_or_path", str(tiny_bert_dir), "--encoders", f"{tiny_encoder_dir},lsa:16",
        "--first_stage_encoder", str(tiny_encoder_dir), "--output_dir", str(tmp_path / "demo"),
        "--cache_dir", str(tmp_path / "cache"), "--max_steps", "2", "--max_eval_queries", "6",
        "--max_train_queries", "16",
    ])
    assert rc == 0
    out = capsys.readouterr().out
    assert "6 test queries" in out and "fine-tuned reranker" in out
    # three mined triples, each with the distances of both conditions, and the conditions hold
    assert out.count("  hard negative:  ") == 3
    import re

    distances = re.findall(r"d\(Q,HN\) ([\d.]+) < d\(Q,PD\) ([\d.]+), d\(Q,HN\) < d\(PD,HN\) ([\d.]+)", out)
    assert len(distances) == 3
    for hn_q, q_pd, pd_hn in distances:
        assert float(hn_q) <= float(q_pd) and float(hn_q) <= float(pd_hn)
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["settings"]["data"]["data"] == "demo"
    assert (tmp_path / "demo" / "final" / "README.md").exists()
