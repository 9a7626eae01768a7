"""First-stage candidates: BM25 ranks lexical matches first; dense top-k equals a brute-force search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_SENTENCES
from hn_trainer.errors import ConfigError, DataError
from hn_trainer.evaluation.first_stage import dense_topk, first_stage_candidates

DOC_IDS = [f"d{i}" for i in range(len(TINY_SENTENCES))]


def test_bm25_ranks_lexical_matches_first():
    run = first_stage_candidates(
        "bm25",
        ["q0", "q1", "q2"],
        ["mysql database", "web application firewall", "zzz unknown words"],
        DOC_IDS,
        TINY_SENTENCES,
        k=5,
        show_progress_bar=False,
    )
    q0 = sorted(run["q0"], key=run["q0"].get, reverse=True)
    assert q0 == ["d0", "d1"]  # both mention mysql; only d0 also says database
    q1 = sorted(run["q1"], key=run["q1"].get, reverse=True)
    assert q1[0] == "d4" and "d5" in q1  # the WAF document first, then the plain firewall one
    assert all(score > 0 for score in run["q1"].values()) and len(run["q1"]) <= 5
    assert run["q2"] == {}  # no shared term: no candidate


def test_dense_topk_matches_brute_force_across_blocks():
    rng = np.random.default_rng(0)
    queries = rng.standard_normal((11, 8)).astype(np.float32) * 3  # not normalised: cosine must normalise
    corpus = rng.standard_normal((50, 8)).astype(np.float32)
    scores, indices = dense_topk(queries, corpus, 6, query_block_size=4, corpus_block_size=7)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    cn = corpus / np.linalg.norm(corpus, axis=1, keepdims=True)
    sims = qn @ cn.T
    expected = np.argsort(-sims, axis=1)[:, :6]
    assert torch.equal(indices, torch.as_tensor(expected))
    np.testing.assert_allclose(
        scores.numpy(), np.take_along_axis(sims, expected, axis=1), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("method", ["dense", "ensemble"])
def test_dense_run_ids_scores_and_k_cap(method):
    rng = np.random.default_rng(1)
    queries, corpus = rng.standard_normal((3, 5)), rng.standard_normal((4, 5))
    run = first_stage_candidates(
        method,
        ["a", "b", "c"],
        None,
        ["w", "x", "y", "z"],
        None,
        k=10,
        query_embeddings=queries,
        corpus_embeddings=torch.as_tensor(corpus),
        show_progress_bar=False,
    )
    assert list(run) == ["a", "b", "c"]
    for row, qid in enumerate(run):
        assert len(run[qid]) == 4  # k capped at the corpus size
        cos = corpus @ queries[row] / (np.linalg.norm(corpus, axis=1) * np.linalg.norm(queries[row]))
        for j, doc in enumerate(["w", "x", "y", "z"]):
            assert run[qid][doc] == pytest.approx(cos[j], abs=1e-5)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="unknown first-stage method"):
        first_stage_candidates("splade", ["q"], ["t"], ["d"], ["t"])
    with pytest.raises(ConfigError, match="needs query_embeddings"):
        first_stage_candidates("dense", ["q"], ["t"], ["d"], ["t"])
    with pytest.raises(DataError, match="2 document ids but 1"):
        first_stage_candidates("bm25", ["q"], ["t"], ["d", "e"], ["t"])
    with pytest.raises(DataError, match="width"):
        first_stage_candidates(
            "dense",
            ["q"],
            None,
            ["d"],
            None,
            query_embeddings=np.ones((1, 3)),
            corpus_embeddings=np.ones((1, 4)),
        )
