"""RemineCallback: pool re-scoring with the model being trained, its checkpoint state, two processes."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import TrainerControl, TrainerState, set_seed

from toy_collection import DOCS, QRELS, QUERIES

from hn_trainer.errors import HNTrainerError
from hn_trainer.evaluation.reranking import score_pairs
from hn_trainer.training import (
    HardNegativeDataset,
    HardNegativeTrainer,
    HardNegativeTrainingArguments,
    RemineCallback,
    load_reranker,
)


def make_dataset() -> HardNegativeDataset:
    ids = list(DOCS)
    rows = []
    for i, (qid, rels) in enumerate(QRELS.items()):
        pos = next(iter(rels))
        negs = [d for d in ids if d != pos][i : i + 4]
        rows.append(
            {
                "query_id": qid,
                "query": QUERIES[qid],
                "positive_id": pos,
                "positive": DOCS[pos],
                "negative_ids": negs,
                "negatives": [DOCS[d] for d in negs],
            }
        )
    return HardNegativeDataset.from_rows(rows)


def make_args(tmp_path, **kwargs):
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=5e-4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        max_length=32,
    )
    defaults.update(kwargs)
    return HardNegativeTrainingArguments(**defaults)


@pytest.fixture(scope="module")
def reranker(tiny_bert_dir):
    set_seed(0)
    return load_reranker(str(tiny_bert_dir), max_length=32).eval()


def test_remine_orders_each_pool_by_model_score(reranker):
    model = reranker
    ds = make_dataset()
    before = [ds[i]["pool_ids"] for i in range(len(ds))]
    callback = RemineCallback(ds, remine_steps=1, batch_size=3)
    callback.remine(model, step=5)
    assert callback.last_step == 5 and callback.history[-1]["step"] == 5
    changed = False
    for i in range(len(ds)):
        item = ds[i]
        assert sorted(item["pool_ids"]) == sorted(before[i])  # same documents, new order
        scores = score_pairs(model, [(item["query"], t) for t in item["pool_texts"]])
        assert np.all(np.diff(scores) <= 1e-6), "pool not sorted hardest (highest score) first"
        changed |= item["pool_ids"] != before[i]
    assert changed


def test_remine_state_round_trips_through_a_checkpoint(tmp_path, tiny_bert_dir):
    args = make_args(
        tmp_path, max_steps=3, remine_steps=2, save_strategy="steps", save_steps=2, num_negatives=2
    )
    trainer = HardNegativeTrainer(str(tiny_bert_dir), args, train_dataset=make_dataset())
    remine = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, RemineCallback))
    trainer.train()
    assert [h["step"] for h in remine.history] == [2.0]  # not again after the last step
    trained = trainer.pool.pools
    assert not np.array_equal(trained, make_dataset().pools)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    assert (checkpoint / RemineCallback.STATE_FILE).exists()
    # the step and history travel in the trainer state (ExportableState)
    import json

    saved = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]["RemineCallback"]
    assert saved["attributes"]["last_step"] == 2 and saved["args"]["remine_steps"] == 2

    # explicit load
    fresh = make_dataset()
    callback = RemineCallback(fresh, remine_steps=2)
    assert callback.load_checkpoint(checkpoint)
    assert np.array_equal(fresh.pools, trained)
    # a restored callback (built from its exported state, without a dataset) finds the collator's pools
    restored = RemineCallback(**saved["args"])
    fresh = make_dataset()
    loader = type("Loader", (), {"collate_fn": type("Collator", (), {"pool": fresh})()})()
    restored.on_train_begin(args, TrainerState(global_step=2), TrainerControl(), train_dataloader=loader)
    assert restored.dataset is fresh and np.array_equal(fresh.pools, trained)
    # a checkpoint of other data is refused; a checkpoint without state leaves the pools alone
    other = HardNegativeDataset.from_rows(
        [
            {
                "query_id": "q",
                "query": "q",
                "positive_id": "d0",
                "positive": "p",
                "negative_ids": ["d1"],
                "negatives": ["n"],
            }
        ]
    )
    with pytest.raises(HNTrainerError, match="does not fit"):
        RemineCallback(other, remine_steps=1).load_checkpoint(checkpoint)
    assert not RemineCallback(make_dataset(), remine_steps=1).load_checkpoint(tmp_path)
    with pytest.raises(HNTrainerError):
        RemineCallback(make_dataset(), remine_steps=0)


DISTRIBUTED_SCRIPT = """
import json, os, sys
import numpy as np
from hn_trainer.evaluation.reranking import score_pairs
from hn_trainer.evaluation.evaluator import RerankingEvaluator
from hn_trainer.training import HardNegativeDataset, HardNegativeTrainer, HardNegativeTrainingArguments

tiny, out = sys.argv[1], sys.argv[2]
docs = {f"d{i}": f"document {i} about cloud network mysql firewall traffic " + "x " * i for i in range(10)}
queries = {f"q{i}": f"query {i} about the cloud" for i in range(5)}
qrels = {f"q{i}": {f"d{i}": 1} for i in range(5)}
rows = [{"query_id": q, "query": queries[q], "positive_id": f"d{i}", "positive": docs[f"d{i}"],
         "negative_ids": [f"d{(i + j) % 10}" for j in range(1, 5)],
         "negatives": [docs[f"d{(i + j) % 10}"] for j in range(1, 5)]} for i, q in enumerate(queries)]
ds = HardNegativeDataset.from_rows(rows)
evaluator = RerankingEvaluator({q: {d: 0.0 for d in docs} for q in queries}, queries, docs, qrels)
args = HardNegativeTrainingArguments(
    output_dir=out, use_cpu=True, per_device_train_batch_size=2, max_steps=2, remine_steps=2, report_to=[],
    save_strategy="no", disable_tqdm=True, seed=0, max_length=32, learning_rate=1e-3, num_negatives=2,
    loss="lce")
trainer = HardNegativeTrainer(tiny, args, train_dataset=ds, evaluator=evaluator)
trainer.train()
metrics = trainer.evaluate()
rank = trainer.accelerator.process_index
result = {"world": trainer.accelerator.num_processes, "pools": ds.pools.tolist(), "metrics": metrics}
if rank == 0:
    model = trainer.model
    result["sorted"] = [
        bool(np.all(np.diff(score_pairs(model, [(ds[i]["query"], t) for t in ds[i]["pool_texts"]])) <= 1e-5))
        for i in range(len(ds))
    ]
if rank == 0:  # the same metrics from one process scoring everything itself
    import torch
    from hn_trainer.evaluation.metrics import retrieval_metrics
    keys = [(q, d) for q in queries for d in docs]
    scores = model.predict([(queries[q], docs[d]) for q, d in keys], activation_fn=torch.nn.Identity())
    run = {q: {} for q in queries}
    for (q, d), score in zip(keys, scores.tolist()):
        run[q][d] = score
    result["single_process"] = retrieval_metrics(run, qrels)
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
"""


@pytest.mark.slow
def test_two_processes_share_pools_and_metrics(tmp_path, tiny_bert_dir):
    """torchrun, 2 CPU processes (gloo): re-scoring and evaluation shard the pairs and agree on every rank."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

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
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(tiny_bert_dir),
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["pools"] == ranks[1]["pools"]
    assert all(ranks[0]["sorted"])  # gathered scores ordered every pool as one process would
    for key, value in ranks[0]["single_process"].items():
        assert ranks[0]["metrics"][f"eval_{key}"] == pytest.approx(value)
        assert ranks[1]["metrics"][f"eval_{key}"] == pytest.approx(value)
