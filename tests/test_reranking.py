"""Reranking: scores equal CrossEncoder.predict's logits; shards concatenate to the one-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_SENTENCES
from hn_trainer.errors import ConfigError, DataError
from hn_trainer.evaluation.reranking import fuse_runs, rerank, rerank_shard, score_pairs, shard_bounds

QUERIES = {"q0": "how do i deploy mysql in the cloud", "q1": "what is a vcn", "q2": "what does a waf filter"}
DOCS = {f"d{i}": text for i, text in enumerate(TINY_SENTENCES)}
CANDIDATES = {
    "q0": {"d0": 3.0, "d1": 2.0, "d5": 1.0, "d9": 0.5},
    "q1": {"d2": 2.0, "d3": 1.0, "d11": 0.1},
    "q2": {"d4": 1.0, "d5": 0.9, "d0": 0.8, "d7": 0.7, "d10": 0.6},
}


@pytest.fixture(scope="module")
def cross_encoder(tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    with torch.no_grad():  # a wide random head, so that distinct pairs get clearly distinct scores
        model.model.classifier.weight.normal_(0.0, 30.0)
    return model


@pytest.fixture(scope="module")
def reranker_dir(tiny_bert_dir, tmp_path_factory):
    """A sequence-classification checkpoint with a fixed (saved) head, loadable in other processes."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-reranker")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=1)
    with torch.no_grad():
        model.classifier.weight.normal_(0.0, 30.0)
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(path)
    return path


def _pairs(run):
    keys = [(q, d) for q, docs in run.items() for d in docs]
    return keys, [(QUERIES[q], DOCS[d]) for q, d in keys]


def test_rerank_equals_cross_encoder_logits(cross_encoder):
    run = rerank(cross_encoder, CANDIDATES, QUERIES, DOCS, batch_size=4, show_progress_bar=False)
    keys, pairs = _pairs(CANDIDATES)
    logits = cross_encoder.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    ours = np.array([run[q][d] for q, d in keys])
    np.testing.assert_allclose(ours, logits, rtol=1e-5, atol=1e-5)
    assert {q: set(d) for q, d in run.items()} == {q: set(d) for q, d in CANDIDATES.items()}
    # predict's default activation for one label is a sigmoid over these logits
    probs = cross_encoder.predict(pairs, show_progress_bar=False)
    np.testing.assert_allclose(1 / (1 + np.exp(-ours)), probs, atol=1e-5)
    # the plain (model, tokenizer) pair gives the same run
    pair_run = rerank(
        (cross_encoder.model, cross_encoder.tokenizer),
        CANDIDATES,
        QUERIES,
        DOCS,
        max_length=cross_encoder.max_seq_length,
        show_progress_bar=False,
    )
    for q, d in keys:
        assert pair_run[q][d] == pytest.approx(run[q][d], abs=1e-5)


def test_score_pairs_batching_does_not_change_scores(reranker_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(reranker_dir))
    tokenizer = AutoTokenizer.from_pretrained(str(reranker_dir))
    _, pairs = _pairs(CANDIDATES)
    batched = score_pairs(model, tokenizer, pairs, batch_size=5)
    with torch.inference_mode():
        one_by_one = [model(**tokenizer(q, d, return_tensors="pt")).logits.item() for q, d in pairs]
    assert batched.dtype == np.float32 and batched.shape == (len(pairs),)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    assert np.std(batched) > 0.01  # distinct pairs get distinct scores


@pytest.mark.parametrize("n", range(0, 9))
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_bounds_partition(n, world_size):
    bounds = [shard_bounds(n, r, world_size) for r in range(world_size)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world_size - 1))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_concatenate_to_single_process(cross_encoder, world_size):
    single = rerank_shard(cross_encoder, CANDIDATES, QUERIES, DOCS, rank=0, world_size=1)
    shards = [
        rerank_shard(cross_encoder, CANDIDATES, QUERIES, DOCS, rank=r, world_size=world_size, batch_size=2)
        for r in range(world_size)
    ]
    assert all(shards) and sum(len(s) for s in shards) == len(single) == 12
    # other batch compositions pad differently: float32 logits may differ in the last bits (|logit| ~ 40 here)
    np.testing.assert_allclose(np.concatenate(shards), single, rtol=1e-5, atol=1e-5)


def test_missing_text_and_multi_label_model(cross_encoder, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with pytest.raises(DataError, match="q0/d99"):
        rerank(cross_encoder, {"q0": {"d99": 1.0}}, QUERIES, DOCS, show_progress_bar=False)
    two = AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=2)
    with pytest.raises(ConfigError, match="one output"):
        rerank(
            (two, AutoTokenizer.from_pretrained(str(tiny_bert_dir))),
            CANDIDATES,
            QUERIES,
            DOCS,
            show_progress_bar=False,
        )
    with pytest.raises(ConfigError):
        rerank(object(), CANDIDATES, QUERIES, DOCS)


def test_fuse_runs_hand_example():
    first = {"q": {"a": 1.0, "b": 2.0, "c": 3.0}, "r": {"x": 5.0}}
    reranked = {"q": {"a": 30.0, "b": 20.0, "c": 10.0}, "r": {"x": 1.0, "y": 0.0}}
    z = np.sqrt(1.5)  # z-scores of (1, 2, 3) are (-1, 0, 1) * sqrt(3/2)
    assert fuse_runs(first, reranked, 0.5)["q"] == pytest.approx({"a": 0.0, "b": 0.0, "c": 0.0})
    assert fuse_runs(first, reranked, 1.0)["q"] == pytest.approx({"a": z, "b": 0.0, "c": -z})
    assert fuse_runs(first, reranked, 0.0)["q"] == pytest.approx({"a": -z, "b": 0.0, "c": z})
    assert fuse_runs(first, reranked, 0.75)["q"] == pytest.approx({"a": 0.5 * z, "b": 0.0, "c": -0.5 * z})
    # "y" is missing from the first stage: it takes the floor (5.0), so only the reranker separates x and y
    assert fuse_runs(first, reranked, 0.5)["r"] == pytest.approx({"x": 0.5, "y": -0.5})
    with pytest.raises(ConfigError):
        fuse_runs(first, reranked, 1.5)


WORKER = """
import json, sys
from accelerate import PartialState
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from hn_trainer.evaluation.reranking import rerank

model_dir, out_dir, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
state = PartialState(cpu=True)
model = AutoModelForSequenceClassification.from_pretrained(model_dir)
run = rerank((model, AutoTokenizer.from_pretrained(model_dir)), payload["candidates"], payload["queries"],
             payload["docs"], batch_size=2, show_progress_bar=False, accelerator_state=state)
with open(f"{out_dir}/rank{state.process_index}.json", "w") as f:
    json.dump({"world": state.num_processes, "run": run}, f)
"""


@pytest.mark.slow
def test_two_processes_give_every_rank_the_single_process_run(reranker_dir, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(WORKER))
    payload = json.dumps({"candidates": CANDIDATES, "queries": QUERIES, "docs": DOCS})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
        str(reranker_dir),
        str(tmp_path),
        payload,
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    model = AutoModelForSequenceClassification.from_pretrained(str(reranker_dir))
    expected = rerank(
        (model, AutoTokenizer.from_pretrained(str(reranker_dir))),
        CANDIDATES,
        QUERIES,
        DOCS,
        show_progress_bar=False,
    )
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world"] == 2
        assert list(got["run"]) == list(expected)
        for q, docs in expected.items():
            assert got["run"][q] == pytest.approx(docs, abs=1e-5)
