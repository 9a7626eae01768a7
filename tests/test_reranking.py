"""Reranking: scores equal CrossEncoder.predict's logits; shards concatenate to the one-process run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import TINY_SENTENCES

from hn_trainer.errors import ConfigError, DataError
from hn_trainer.evaluation.reranking import fuse_runs, rerank, score_pairs
from hn_trainer.mining.distributed import pair_slice

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


def _hf_logits(model, tokenizer, pairs):
    """Logits of the plain transformers model, one pair at a time (no padding)."""
    with torch.inference_mode():
        return [model(**tokenizer(q, d, return_tensors="pt")).logits.item() for q, d in pairs]


def test_rerank_equals_cross_encoder_logits(cross_encoder, reranker_dir):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run = rerank(cross_encoder, CANDIDATES, QUERIES, DOCS, batch_size=4, show_progress_bar=False)
    keys, pairs = _pairs(CANDIDATES)
    logits = cross_encoder.predict(pairs, activation_fn=torch.nn.Identity(), show_progress_bar=False)
    ours = np.array([run[q][d] for q, d in keys])
    np.testing.assert_allclose(ours, logits, rtol=1e-5, atol=1e-5)
    assert {q: set(d) for q, d in run.items()} == {q: set(d) for q, d in CANDIDATES.items()}
    assert [list(d) for d in run.values()] == [list(d) for d in CANDIDATES.values()]  # the run's order
    # predict's default activation for one label is a sigmoid over these logits
    probs = cross_encoder.predict(pairs, show_progress_bar=False)
    np.testing.assert_allclose(1 / (1 + np.exp(-ours)), probs, atol=1e-5)
    # a CrossEncoder over a plain transformers checkpoint gives that model's logits
    folder_run = rerank(CrossEncoder(str(reranker_dir), device="cpu"), CANDIDATES, QUERIES, DOCS)
    expected = _hf_logits(
        AutoModelForSequenceClassification.from_pretrained(str(reranker_dir)),
        AutoTokenizer.from_pretrained(str(reranker_dir)),
        pairs,
    )
    for (q, d), logit in zip(keys, expected):
        assert folder_run[q][d] == pytest.approx(logit, rel=1e-5, abs=1e-4)


def test_score_pairs_batching_does_not_change_scores(reranker_dir):
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = CrossEncoder(str(reranker_dir), device="cpu")
    _, pairs = _pairs(CANDIDATES)
    batched = score_pairs(model, pairs, batch_size=5)
    one_by_one = _hf_logits(
        AutoModelForSequenceClassification.from_pretrained(str(reranker_dir)),
        AutoTokenizer.from_pretrained(str(reranker_dir)),
        pairs,
    )
    assert batched.dtype == np.float32 and batched.shape == (len(pairs),)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(score_pairs(model, pairs, batch_size=1), batched, rtol=1e-5, atol=1e-4)
    assert np.std(batched) > 0.01  # distinct pairs get distinct scores
    assert score_pairs(model, []).shape == (0,)


def test_bf16_scoring_is_close_to_fp32_and_returns_float32(reranker_dir):
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(reranker_dir), device="cpu")
    _, pairs = _pairs(CANDIDATES)
    fp32 = score_pairs(model, pairs, batch_size=4)
    bf16 = score_pairs(model, pairs, batch_size=4, bf16=True)
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    assert not np.array_equal(bf16, fp32)  # it did run in bfloat16 (8 bits of mantissa)
    np.testing.assert_allclose(bf16, fp32, atol=0.05 * np.abs(fp32).max())
    run = rerank(model, CANDIDATES, QUERIES, DOCS, batch_size=4, bf16=True)
    assert [run[q][d] for q, docs in CANDIDATES.items() for d in docs] == pytest.approx(bf16.tolist())


@pytest.mark.parametrize("n", range(9))
@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
def test_shard_bounds_partition(n, world_size):
    """The one contiguous-shard rule of the package (mining and anything else sharded by rank)."""
    bounds = [(part.start, part.stop) for part in (pair_slice(n, r, world_size) for r in range(world_size))]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(bounds[r][1] == bounds[r + 1][0] for r in range(world_size - 1))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1


class FakeState(SimpleNamespace):
    """`PartialState`'s shard arithmetic for rank ``process_index`` of ``num_processes``, without a group."""

    def split_between_processes(self, inputs, apply_padding=False):
        from accelerate import PartialState

        return PartialState.split_between_processes(self, inputs, apply_padding)


@pytest.mark.parametrize("world_size", [2, 3])
def test_shards_concatenate_to_single_process(cross_encoder, world_size, monkeypatch):
    import accelerate.utils

    _, pairs = _pairs(CANDIDATES)
    single = score_pairs(cross_encoder, pairs)
    # what each rank scores: its contiguous split_between_processes shard
    shards = []
    for rank in range(world_size):
        with FakeState(num_processes=world_size, process_index=rank).split_between_processes(pairs) as shard:
            shards.append(score_pairs(cross_encoder, shard, batch_size=2))
    assert all(len(s) for s in shards) and sum(len(s) for s in shards) == len(single) == 12
    # other batch compositions pad differently: float32 logits may differ in the last bits (|logit| ~ 40 here)
    np.testing.assert_allclose(np.concatenate(shards), single, rtol=1e-5, atol=1e-5)

    # every rank hands its shard to one gather and gets every score back, in input order
    gathered = []

    def fake_gather(local):
        gathered.append(local)
        return [x for shard in shards for x in shard.tolist()]

    monkeypatch.setattr(accelerate.utils, "gather_object", fake_gather)
    for rank in range(world_size):
        state = FakeState(num_processes=world_size, process_index=rank, is_main_process=rank == 0)
        got = score_pairs(cross_encoder, pairs, batch_size=2, state=state)
        np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-5)
        assert len(gathered) == rank + 1
        np.testing.assert_allclose(gathered[-1], shards[rank], rtol=1e-6, atol=1e-6)


def test_scoring_inside_the_host_distributed_evaluation_issues_no_gather(cross_encoder, monkeypatch):
    """Inside CrossEncoderTrainer.evaluate rank 0 alone runs evaluators; predict shards through the host."""
    import accelerate.utils

    _, pairs = _pairs(CANDIDATES)
    single = score_pairs(cross_encoder, pairs)
    calls = []

    def host_inference(inputs, **kwargs):
        calls.append(len(inputs))
        return cross_encoder._inference(inputs, **kwargs)

    monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj: pytest.fail("gathered twice"))
    monkeypatch.setattr(cross_encoder, "_distributed_inference", host_inference)
    got = score_pairs(
        cross_encoder, pairs, state=FakeState(num_processes=2, process_index=0, is_main_process=True)
    )
    assert calls == [len(pairs)]
    np.testing.assert_allclose(got, single, rtol=1e-5, atol=1e-5)


def test_missing_text_and_multi_label_model(cross_encoder, tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    with pytest.raises(DataError, match="q0/d99"):
        rerank(cross_encoder, {"q0": {"d99": 1.0}}, QUERIES, DOCS, show_progress_bar=False)
    two = CrossEncoder(str(tiny_bert_dir), num_labels=2, device="cpu")
    with pytest.raises(ConfigError, match="one output"):
        rerank(two, CANDIDATES, QUERIES, DOCS, show_progress_bar=False)
    with pytest.raises(ConfigError, match="one output"):
        score_pairs(two, [("q", "d")])
    with pytest.raises(ConfigError, match="CrossEncoder"):
        rerank(object(), CANDIDATES, QUERIES, DOCS)
    with pytest.raises(
        ConfigError, match="pairs are not accepted"
    ):  # (model, tokenizer) is no longer a model
        rerank((cross_encoder.model, cross_encoder.tokenizer), CANDIDATES, QUERIES, DOCS)


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
from sentence_transformers import CrossEncoder
from hn_trainer.evaluation.reranking import rerank

model_dir, out_dir, payload = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
state = PartialState(cpu=True)
model = CrossEncoder(model_dir, device="cpu")
run = rerank(model, payload["candidates"], payload["queries"], payload["docs"], batch_size=1,
             show_progress_bar=False, state=state)
with open(f"{out_dir}/rank{state.process_index}.json", "w") as f:
    json.dump({"world": state.num_processes, "run": run}, f)
state.wait_for_everyone()  # as `hn-trainer` does on leaving: no rank exits while gloo threads of another run
state.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_give_every_rank_the_single_process_run(reranker_dir, tmp_path):
    from sentence_transformers import CrossEncoder

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
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    # one pair per forward pass on both sides: no padding, so the shards compute exactly what one process does
    expected = rerank(CrossEncoder(str(reranker_dir), device="cpu"), CANDIDATES, QUERIES, DOCS, batch_size=1)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world"] == 2
        assert list(got["run"]) == list(expected)
        for q, docs in expected.items():
            assert got["run"][q] == pytest.approx(docs, abs=1e-5)
