"""RerankingEvaluator: metrics are retrieval_metrics of the CrossEncoder's run, alone and in the trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from toy_collection import DOCS, QRELS, QUERIES

from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.evaluation import RerankingEvaluator
from hn_trainer.evaluation.metrics import retrieval_metrics
from hn_trainer.evaluation.reranking import fuse_runs

METRICS = {"mrr@3", "mrr@10", "ndcg@10", "recall@10"}


def _candidates():
    """Every document for every query, with first-stage scores that put the relevant one mid-list."""
    return {q: {d: float((i * 7 + j * 3) % 10) for j, d in enumerate(DOCS)} for i, q in enumerate(QUERIES)}


@pytest.fixture(scope="module")
def model(tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    with torch.no_grad():  # a wide random head: distinct pairs get distinct scores
        model.model.classifier.weight.normal_(0.0, 30.0)
    return model


def _predict_run(model, candidates):
    keys = [(q, d) for q, docs in candidates.items() for d in docs]
    scores = model.predict(
        [(QUERIES[q], DOCS[d]) for q, d in keys], activation_fn=torch.nn.Identity(), show_progress_bar=False
    )
    run = {q: {} for q in candidates}
    for (q, d), s in zip(keys, scores):
        run[q][d] = float(s)
    return run


def _train_dataset():
    from datasets import Dataset

    return Dataset.from_dict(
        {"query": [QUERIES["q0"], QUERIES["q1"]], "response": [DOCS["d0"], DOCS["d5"]], "label": [1.0, 0.0]}
    )


def _args(tmp_path, **kwargs):
    from sentence_transformers.cross_encoder import CrossEncoderTrainingArguments

    defaults = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "report_to": "none",
        "max_steps": 1,
        "disable_tqdm": True,
    }
    defaults.update(kwargs)
    return CrossEncoderTrainingArguments(**defaults)


def test_metrics_are_retrieval_metrics_of_the_predict_run(model):
    evaluator = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS, batch_size=8)
    values = evaluator(model)
    assert set(values) == METRICS
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in values.values())
    expected = retrieval_metrics(_predict_run(model, _candidates()), QRELS)
    assert values == pytest.approx(expected, abs=1e-9)
    assert evaluator.primary_metric == "mrr@10" and evaluator.greater_is_better
    # the reranked run (raw logits) is kept, over every candidate of every query
    assert set(evaluator.last_run) == set(QUERIES)
    assert all(len(v) == len(DOCS) for v in evaluator.last_run.values())
    for q, docs in _predict_run(model, _candidates()).items():
        assert evaluator.last_run[q] == pytest.approx(docs, rel=1e-5, abs=1e-4)
    assert evaluator.last_fused_run is None
    # the model card data lists them
    assert model.model_card_data.eval_results_dict[evaluator] == values
    assert evaluator.description == "Reranking"
    assert evaluator.get_config_dict() == {
        "queries": 4,
        "mrr_at": [3, 10],
        "ndcg_at": [10],
        "recall_at": [10],
    }


def test_name_prefix_and_cut_offs(model):
    evaluator = RerankingEvaluator(
        _candidates(), QUERIES, DOCS, QRELS, name="dev", mrr_at=(10,), ndcg_at=(), recall_at=(5,)
    )
    values = evaluator(model)
    assert set(values) == {"dev_mrr@10", "dev_recall@5"}
    assert evaluator.primary_metric == "dev_mrr@10"
    expected = retrieval_metrics(evaluator.last_run, QRELS, mrr_at=(10,), ndcg_at=(), recall_at=(5,))
    assert values == pytest.approx({f"dev_{k}": v for k, v in expected.items()})
    # a second call keeps the one prefix
    assert (
        set(evaluator(model)) == {"dev_mrr@10", "dev_recall@5"} and evaluator.primary_metric == "dev_mrr@10"
    )


def test_only_judged_queries_with_candidates_are_kept(model):
    candidates = {**_candidates(), "qx": {"d0": 1.0, "d1": 0.5}}  # qx has no judgements
    qrels = {**QRELS, "qy": {"d3": 1}}  # qy has no candidates
    evaluator = RerankingEvaluator(candidates, {**QUERIES, "qx": "unjudged"}, DOCS, qrels)
    assert set(evaluator.candidates) == set(evaluator.qrels) == set(QUERIES)
    values = evaluator(model)
    assert set(evaluator.last_run) == set(QUERIES)
    assert values == pytest.approx(retrieval_metrics(evaluator.last_run, QRELS))
    with pytest.raises(HNTrainerError, match="no evaluation query"):
        RerankingEvaluator({"qx": {"d0": 1.0}}, QUERIES, DOCS, QRELS)
    with pytest.raises(HNTrainerError, match="no evaluation query"):
        RerankingEvaluator(_candidates(), QUERIES, DOCS, {})
    with pytest.raises(ConfigError, match="CrossEncoder"):
        evaluator((model.model, model.tokenizer))


def test_fusion_reports_fused_metrics(model):
    evaluator = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS, fusion_weight=0.6)
    values = evaluator(model)
    assert set(values) == METRICS | {f"fused_{m}" for m in METRICS}
    fused = fuse_runs(_candidates(), evaluator.last_run, 0.6)
    assert list(evaluator.last_fused_run) == list(fused)
    for q, docs in fused.items():
        assert evaluator.last_fused_run[q] == pytest.approx(docs)
    expected = retrieval_metrics(fused, QRELS)
    assert {k: values[f"fused_{k}"] for k in METRICS} == pytest.approx(expected)
    assert evaluator.get_config_dict()["fusion_weight"] == 0.6
    with pytest.raises(HNTrainerError, match="fusion weight"):
        RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS, fusion_weight=1.5)


def test_train_and_eval_mode_are_restored(model, tmp_path):
    evaluator = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS)
    model.train()
    evaluator(model, output_path=str(tmp_path))
    assert model.training and model.model.training
    model.eval()
    evaluator(model, output_path=str(tmp_path))
    assert not model.training
    rows = (tmp_path / evaluator.csv_file).read_text().splitlines()
    assert rows[0].split(",") == ["epoch", "steps", "mrr@3", "mrr@10", "ndcg@10", "recall@10"]
    assert len(rows) == 3


def test_from_data(tiny_beir, model):
    from hn_trainer.data import load_beir_folder

    data = load_beir_folder(tiny_beir)
    candidates = {"q4": {"d8": 1.0, "d9": 0.5}, "q5": {"d10": 1.0, "d11": 0.9}, "q0": {"d0": 1.0}}
    evaluator = RerankingEvaluator.from_data(data, "test", candidates, batch_size=4)
    assert set(evaluator.candidates) == {"q4", "q5"}  # q0 is judged in train, not test
    assert evaluator.query_texts["q4"] == "spread traffic over servers"
    assert "load balancers" in evaluator.doc_texts["d9"]
    assert set(evaluator(model)) == METRICS


def test_evaluate_in_the_cross_encoder_trainer_returns_eval_metrics(tmp_path, model):
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    evaluator = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS, batch_size=8)
    trainer = CrossEncoderTrainer(model, _args(tmp_path), train_dataset=_train_dataset(), evaluator=evaluator)
    metrics = trainer.evaluate()
    for key in ("eval_mrr@3", "eval_mrr@10", "eval_ndcg@10", "eval_recall@10"):
        assert key in metrics and 0.0 <= metrics[key] <= 1.0
    # the values are those of reranking the candidates and scoring the run
    expected = retrieval_metrics(_predict_run(model, _candidates()), QRELS)
    assert metrics["eval_mrr@10"] == pytest.approx(expected["mrr@10"])
    assert metrics["eval_ndcg@10"] == pytest.approx(expected["ndcg@10"])
    assert (tmp_path / "out" / "eval" / evaluator.csv_file).exists()


def test_eval_metrics_drive_best_model_selection(tmp_path, tiny_bert_dir):
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    evaluator = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS, batch_size=8)
    args = _args(
        tmp_path,
        max_steps=2,
        per_device_train_batch_size=1,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="eval_mrr@10",
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        save_total_limit=1,
    )
    trainer = CrossEncoderTrainer(model, args, train_dataset=_train_dataset(), evaluator=evaluator)
    trainer.train()
    logged = [log for log in trainer.state.log_history if "eval_mrr@10" in log]
    assert len(logged) == 2
    assert trainer.state.best_metric == pytest.approx(max(log["eval_mrr@10"] for log in logged))
    # the training logs of the model card carry the primary metric
    assert [log["mrr@10"] for log in model.model_card_data.training_logs if "mrr@10" in log] == pytest.approx(
        [log["eval_mrr@10"] for log in logged]
    )
    # the run kept for the best step is the loaded best model's: scoring it again gives the same run
    kept = evaluator.run_at_step(trainer.state.best_global_step)
    assert kept is not None
    for q, docs in _predict_run(trainer.model, _candidates()).items():
        assert kept[q] == pytest.approx(docs, rel=1e-5, abs=1e-4)


def test_runs_kept_by_step_are_the_latest_and_the_best(model):
    evaluator = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS, batch_size=8)
    evaluator(model)  # outside training: nothing kept
    assert evaluator.runs_by_step == {}
    for step in (1, 2, 3):  # the same model each time: a tie, which keeps the earlier step as the best
        evaluator(model, epoch=0, steps=step)
    assert set(evaluator.runs_by_step) == {1, 3}
    assert evaluator.run_at_step(3) is evaluator.last_run and evaluator.run_at_step(2) is None
    evaluator.forget_runs()
    assert evaluator.run_at_step(1) is None and evaluator.run_at_step(3) is None


def test_evaluation_with_an_eval_dataset_and_a_named_evaluator(tmp_path, model):
    from sentence_transformers.cross_encoder import CrossEncoderTrainer

    evaluator = RerankingEvaluator(
        _candidates(), QUERIES, DOCS, QRELS, name="dev", mrr_at=(10,), ndcg_at=(), recall_at=(5,)
    )
    trainer = CrossEncoderTrainer(
        model,
        _args(tmp_path),
        train_dataset=_train_dataset(),
        eval_dataset=_train_dataset(),
        evaluator=evaluator,
    )
    metrics = trainer.evaluate()
    assert {"eval_loss", "eval_dev_mrr@10", "eval_dev_recall@5"} <= set(metrics)
    assert not any(key.startswith("eval_mrr") for key in metrics)
    assert np.isfinite(metrics["eval_loss"])


DISTRIBUTED_SCRIPT = """
import json, os, sys
import datasets
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from hn_trainer.evaluation import RerankingEvaluator

model_dir, out, payload = sys.argv[1], sys.argv[2], json.load(open(sys.argv[3]))
evaluator = RerankingEvaluator(payload["candidates"], payload["queries"], payload["docs"], payload["qrels"],
                               batch_size=4)
model = CrossEncoder(model_dir, device="cpu")
train = datasets.Dataset.from_dict({"query": ["q a", "q b", "q c", "q d"],
                                    "response": ["d a", "d b", "d c", "d d"],
                                    "label": [1.0, 0.0, 1.0, 0.0]})
args = CrossEncoderTrainingArguments(output_dir=out, use_cpu=True, report_to="none", max_steps=1,
                                     per_device_train_batch_size=2, learning_rate=1e-3, disable_tqdm=True,
                                     save_strategy="no", seed=0)
trainer = CrossEncoderTrainer(model, args, train_dataset=train, evaluator=evaluator)
before = trainer.evaluate()          # rank 0 runs the evaluator, the other rank serves its predict calls
trainer.train()
after = trainer.evaluate()
direct = evaluator(trainer.model)    # every rank calls it: one shard each, gathered once
rank = trainer.accelerator.process_index
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump({"world": trainer.accelerator.num_processes, "before": before, "after": after,
               "direct": direct}, f)
"""


@pytest.mark.slow
def test_two_processes_share_the_metrics(tmp_path, tiny_bert_dir):
    """torchrun, 2 CPU processes (gloo): trainer and direct evaluation agree with one process, every rank."""
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    reranker = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    with torch.no_grad():
        reranker.model.classifier.weight.normal_(0.0, 30.0)
    model_dir = tmp_path / "reranker"
    reranker.save_pretrained(str(model_dir))
    payload = tmp_path / "payload.json"
    payload.write_text(
        json.dumps({"candidates": _candidates(), "queries": QUERIES, "docs": DOCS, "qrels": QRELS})
    )
    script = tmp_path / "run.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(script), str(model_dir), str(out), str(payload),
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    single = RerankingEvaluator(_candidates(), QUERIES, DOCS, QRELS)(
        CrossEncoder(str(model_dir), device="cpu")
    )
    assert set(single) == METRICS
    for result in ranks:
        for key, value in single.items():
            assert result["before"][f"eval_{key}"] == pytest.approx(value)
        for key, value in result["direct"].items():  # the trained model, scored in shards
            assert result["after"][f"eval_{key}"] == pytest.approx(value)
        assert result["direct"] == pytest.approx(ranks[0]["direct"])
