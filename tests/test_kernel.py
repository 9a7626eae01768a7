"""The dual-condition kernel against a brute force that evaluates the definition literally."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hn_trainer.errors import ConfigError
from hn_trainer.mining.kernel import (
    CandidateRule,
    MiningResult,
    decision_distances,
    dual_condition_mine,
    mine_negatives,
    streamed_topk,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny matmuls: thread wake-ups would dominate, so run them on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def full_distances(a, b, metric: str) -> np.ndarray:
    """Float64 distance matrix: float32 inputs (normalised in float32 for cosine), float64 maths.

    Each entry is numpy's float64 sum of the element-wise terms of its own two rows, so identical
    rows give identical distances wherever they sit (a BLAS matmul does not promise that).
    """
    a = torch.as_tensor(a, dtype=torch.float32)
    b = torch.as_tensor(b, dtype=torch.float32)
    if metric == "cosine":
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    a, b = a.double().numpy(), b.double().numpy()
    out = np.empty((len(a), len(b)))
    for start in range(0, len(a), 64):
        left = a[start : start + 64, None, :]
        if metric == "cosine":
            out[start : start + 64] = 1.0 - (left * b[None]).sum(-1)
        else:
            out[start : start + 64] = np.sqrt(((left - b[None]) ** 2).sum(-1))
    return out


def brute_force(queries, corpus, pairs, positives, k, metric="cosine", conditions="both", ratio=None):
    """Literal definition: per pair, filter every non-positive document, sort by (d(Q, D), index)."""
    d_qd = full_distances(queries, corpus, metric)
    d_dd = full_distances(corpus, corpus, metric)
    n_docs = d_qd.shape[1]
    indices = np.full((len(pairs), k), -1, dtype=np.int64)
    distances = np.full((len(pairs), k), np.inf)
    for row, (q, p) in enumerate(np.asarray(pairs).tolist()):
        keep = np.ones(n_docs, dtype=bool)
        keep[list(positives[q]) + [p]] = False
        if conditions in ("both", "query"):
            keep &= d_qd[q] < d_qd[q, p]
        if conditions == "both":
            keep &= d_qd[q] < d_dd[p]
        if ratio is not None:
            keep &= (1.0 - d_qd[q]) < ratio * (1.0 - d_qd[q, p])
        candidates = np.flatnonzero(keep)
        order = np.lexsort((candidates, d_qd[q, candidates]))[:k]
        indices[row, : len(order)] = candidates[order]
        distances[row, : len(order)] = d_qd[q, candidates[order]]
    return indices, distances


def make_problem(seed, n_q=30, n_d=200, dim=8, levels=None, duplicates=0, max_pos=3):
    """Queries, corpus, positives (1..max_pos per query) and all (query, positive) pairs."""
    rng = np.random.default_rng(seed)
    if levels is None:
        queries = rng.standard_normal((n_q, dim)).astype(np.float32)
        corpus = rng.standard_normal((n_d, dim)).astype(np.float32)
    else:
        queries = rng.choice(levels, size=(n_q, dim)).astype(np.float32)
        corpus = rng.choice(levels, size=(n_d, dim)).astype(np.float32)
    if duplicates:
        source = rng.choice(n_d, size=duplicates, replace=False)
        target = rng.choice(n_d, size=duplicates, replace=False)
        corpus[target] = corpus[source]
    positives = [
        sorted(rng.choice(n_d, size=rng.integers(1, max_pos + 1), replace=False).tolist()) for _ in range(n_q)
    ]
    pairs = np.array([(q, p) for q in range(n_q) for p in positives[q]], dtype=np.int64)
    return queries, corpus, pairs, positives


def assert_matches(result: MiningResult, expected, k):
    exp_i, exp_d = expected
    assert result.indices.dtype == torch.long and result.distances.dtype == torch.float32
    assert result.indices.shape == result.distances.shape == (len(exp_i), k)
    np.testing.assert_array_equal(result.indices.numpy(), exp_i)
    np.testing.assert_allclose(result.distances.numpy(), exp_d.astype(np.float32), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("conditions", ["both", "query"])
def test_matches_brute_force_on_random_data(metric, conditions):
    # continuous values: sums round, yet duplicated rows must still tie and follow lower index
    queries, corpus, pairs, positives = make_problem(0, n_q=40, n_d=300, dim=16, duplicates=60)
    for k in (1, 5, 9):
        result = dual_condition_mine(
            queries, corpus, pairs, positives, k=k, metric=metric, conditions=conditions,
            query_block_size=7, corpus_block_size=23,
        )
        assert_matches(result, brute_force(queries, corpus, pairs, positives, k, metric, conditions), k)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("levels", [(0.0, 1.0), (-1.0, 0.0, 1.0)])
def test_exact_ties_and_duplicates_follow_lower_index(metric, levels):
    queries, corpus, pairs, positives = make_problem(1, n_q=40, n_d=250, dim=6, levels=levels, duplicates=40)
    for conditions in ("both", "query"):
        expected = brute_force(queries, corpus, pairs, positives, 6, metric, conditions)
        # the problem really has tied distances among the answers
        if conditions == "both":
            picked = expected[1][np.isfinite(expected[1])]
            assert len(np.unique(picked)) < len(picked)
        result = dual_condition_mine(
            torch.from_numpy(queries), torch.from_numpy(corpus), torch.from_numpy(pairs), positives,
            k=6, metric=metric, conditions=conditions, query_block_size=5, corpus_block_size=17,
        )
        assert_matches(result, expected, 6)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_widening_from_tiny_windows_is_exact(metric):
    queries, corpus, pairs, positives = make_problem(2, n_q=25, n_d=180, dim=4, levels=(-1.0, 0.0, 1.0, 2.0))
    expected = brute_force(queries, corpus, pairs, positives, 7, metric)
    for window in (1, 3):
        result = dual_condition_mine(
            queries, corpus, pairs, positives, k=7, metric=metric, initial_window=window,
            query_block_size=4, corpus_block_size=31,
        )
        assert_matches(result, expected, 7)


def test_randomised_configurations_match_brute_force():
    rng = np.random.default_rng(11)
    for seed in range(48):
        levels = [None, (0.0, 1.0), (-1.0, 0.0, 1.0), (-2.0, -0.5, 0.0, 1.0, 3.0)][seed % 4]
        n_d = int(rng.integers(5, 200))
        queries, corpus, pairs, positives = make_problem(
            100 + seed, n_q=int(rng.integers(1, 25)), n_d=n_d, dim=int(rng.integers(2, 20)), levels=levels,
            duplicates=int(rng.integers(0, n_d // 3 + 1)), max_pos=min(4, n_d),
        )
        k = int(rng.integers(1, 12))
        metric = ("cosine", "euclidean")[seed % 2]
        conditions = ("both", "query")[seed // 2 % 2]
        result = dual_condition_mine(
            queries, corpus, pairs, positives, k=k, metric=metric, conditions=conditions,
            precision=("fp32", "bf16")[seed // 4 % 2], initial_window=(None, 1, 2, 5)[seed // 8 % 4],
            query_block_size=int(rng.integers(1, 40)), corpus_block_size=int(rng.integers(1, 100)),
        )
        expected = brute_force(queries, corpus, pairs, positives, k, metric, conditions)
        np.testing.assert_array_equal(result.indices.numpy(), expected[0], err_msg=f"seed {seed}")


def test_window_widens_when_the_closest_candidates_fail_condition_two(caplog):
    # Q at the origin, PD at (10, 0). 50 documents near (6, 0) pass condition 1 but are closer to
    # PD than to Q; 5 documents near (-7, 0) pass both and are the answer.
    rng = np.random.default_rng(3)
    near_pd = np.c_[6 + 0.01 * rng.standard_normal(50), 0.01 * rng.standard_normal(50)]
    behind = np.c_[-7 + 0.01 * rng.standard_normal(5), 0.01 * rng.standard_normal(5)]
    far = np.c_[np.full(20, 30.0), rng.standard_normal(20)]
    corpus = np.vstack([[10.0, 0.0], near_pd, behind, far]).astype(np.float32)
    queries = np.zeros((1, 2), dtype=np.float32)
    pairs = [[0, 0]]
    with caplog.at_level(logging.INFO, logger="hn_trainer.mining.kernel"):
        result = dual_condition_mine(queries, corpus, pairs, [[0]], k=3, metric="euclidean")
    assert "widened" in caplog.text
    assert set(result.indices[0].tolist()) <= set(range(51, 56))
    assert_matches(result, brute_force(queries, corpus, pairs, [[0]], 3, "euclidean"), 3)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_tied_candidates_just_inside_condition_one_are_all_seen(metric):
    # Every candidate is at distance exactly 5 (euclidean) or 1 (cosine, orthogonal) from Q, the
    # positive only 2e-4 further: a window of 2 cuts the tie, condition 1 cannot end the search
    # early, and the answer is the k lowest indices of the tie.
    if metric == "euclidean":
        ring = [[-5, 0], [0, 5], [0, -5], [-3, 4], [-4, 3], [-3, -4], [-4, -3], [3, 4], [3, -4], [-5, 0]]
        corpus = np.array([[5.0002, 0.0]] + ring[::-1], dtype=np.float32)
        queries = np.zeros((1, 2), dtype=np.float32)
        conditions = "both"
    else:
        corpus = np.eye(12, dtype=np.float32)[2:]
        corpus[0] = np.eye(12, dtype=np.float32)[1]
        corpus[0, 0] = -2e-4
        queries = np.eye(12, dtype=np.float32)[:1]
        conditions = "query"
    expected = brute_force(queries, corpus, [[0, 0]], [[0]], 5, metric, conditions)
    assert (expected[0] >= 0).sum() == 5
    result = dual_condition_mine(
        queries, corpus, [[0, 0]], [[0]], k=5, metric=metric, conditions=conditions, initial_window=2
    )
    assert_matches(result, expected, 5)


def test_duplicate_of_the_positive_never_qualifies():
    corpus = np.array([[1.0, 0.2], [1.0, 0.2], [1.0, 0.25], [0.0, 1.0], [1.0, -0.1]], dtype=np.float32)
    queries = np.array([[1.0, 0.0]], dtype=np.float32)
    for metric in ("cosine", "euclidean"):
        for conditions in ("both", "query"):
            result = dual_condition_mine(
                queries, corpus, [[0, 0]], [[0]], k=4, metric=metric, conditions=conditions
            )
            assert 1 not in result.indices[0].tolist()  # identical to the positive: d(Q,D) == d(Q,PD)
            assert result.indices[0, 0].item() == 4


def test_pads_when_fewer_than_k_qualify_and_excludes_all_positives():
    queries, corpus, pairs, positives = make_problem(4, n_q=20, n_d=60, dim=5, max_pos=4)
    result = dual_condition_mine(queries, corpus, pairs, positives, k=60, corpus_block_size=8)
    assert_matches(result, brute_force(queries, corpus, pairs, positives, 60), 60)
    found = result.num_found()
    assert (found < 60).all() and (found > 0).any()
    for row, (q, _) in enumerate(pairs.tolist()):
        picked = result.indices[row, : found[row]].tolist()
        assert not set(picked) & set(positives[q])
        assert (result.indices[row, found[row] :] == -1).all()
        assert torch.isinf(result.distances[row, found[row] :]).all()
        assert result.distances[row, : found[row]].diff().ge(0).all()


def test_numpy_and_torch_inputs_agree_and_pairs_can_be_lists():
    queries, corpus, pairs, positives = make_problem(5, n_q=10, n_d=90, dim=8)
    a = dual_condition_mine(queries, corpus, pairs.tolist(), positives, k=3)
    b = dual_condition_mine(
        torch.from_numpy(queries).double(), torch.from_numpy(corpus), torch.from_numpy(pairs), positives, k=3
    )
    assert torch.equal(a.indices, b.indices)
    assert a.indices.device.type == "cpu"


def test_bf16_screening_gives_the_exact_answer():
    queries, corpus, pairs, positives = make_problem(
        6, n_q=30, n_d=250, dim=12, levels=(-1.0, 0.0, 0.5, 1.0), duplicates=20
    )
    for metric in ("cosine", "euclidean"):
        result = dual_condition_mine(
            queries, corpus, pairs, positives, k=4, metric=metric, precision="bf16", corpus_block_size=64
        )
        assert_matches(result, brute_force(queries, corpus, pairs, positives, 4, metric), 4)


def test_dense_and_positive_aware_rules_match_brute_force():
    queries, corpus, pairs, positives = make_problem(7, n_q=20, n_d=150, dim=6, levels=(-1.0, 0.0, 1.0))
    dense = mine_negatives(queries, corpus, pairs, positives, k=5, rule=CandidateRule(), corpus_block_size=16)
    assert_matches(dense, brute_force(queries, corpus, pairs, positives, 5, conditions="none"), 5)
    aware = mine_negatives(
        queries, corpus, pairs, positives, k=5, rule=CandidateRule(max_similarity_ratio=0.95),
        initial_window=2,
    )
    assert_matches(aware, brute_force(queries, corpus, pairs, positives, 5, conditions="none", ratio=0.95), 5)


def test_streamed_topk_and_decision_distances():
    queries, corpus, _, positives = make_problem(8, n_q=12, n_d=120, dim=10)
    top = streamed_topk(queries, corpus, 4, exclude=positives, query_block_size=5, corpus_block_size=13)
    d = full_distances(queries, corpus, "cosine")
    for q in range(12):
        d[q, positives[q]] = np.inf
    np.testing.assert_array_equal(top.indices.numpy(), np.argsort(d, axis=1)[:, :4])
    again = decision_distances(queries, corpus, torch.arange(12), top.indices)
    assert torch.equal(again, top.distances)
    np.testing.assert_allclose(top.distances.numpy(), np.sort(d, axis=1)[:, :4], rtol=1e-6)


def test_empty_pairs_and_bad_arguments():
    queries, corpus, pairs, positives = make_problem(9, n_q=3, n_d=20, dim=4)
    empty = dual_condition_mine(queries, corpus, np.zeros((0, 2), dtype=np.int64), positives, k=2)
    assert empty.indices.shape == (0, 2)
    with pytest.raises(ConfigError):
        dual_condition_mine(queries, corpus, pairs, positives, metric="dot")
    with pytest.raises(ConfigError):
        dual_condition_mine(queries, corpus, pairs, positives, conditions="neither")
    with pytest.raises(ConfigError):
        dual_condition_mine(queries, corpus, pairs, positives, k=0)
    with pytest.raises(ValueError, match="dimensions"):
        dual_condition_mine(queries, corpus[:, :3], pairs, positives)
    with pytest.raises(ValueError, match="query row"):
        dual_condition_mine(queries, corpus, [[5, 0]], positives)
    with pytest.raises(ValueError, match="one list per query"):
        dual_condition_mine(queries, corpus, pairs, positives[:2])
    bad = corpus.copy()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        dual_condition_mine(queries, bad, pairs, positives)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_cuda_matches_brute_force(precision):
    queries, corpus, pairs, positives = make_problem(
        10, n_q=64, n_d=2000, dim=32, levels=(-1.0, 0.0, 1.0), duplicates=100
    )
    for metric in ("cosine", "euclidean"):
        result = dual_condition_mine(
            queries, corpus, pairs, positives, k=8, metric=metric, precision=precision, device="cuda",
            corpus_block_size=512,
        )
        assert_matches(result, brute_force(queries, corpus, pairs, positives, 8, metric), 8)


def test_streamed_topk_on_an_empty_corpus_pads():
    top = streamed_topk(np.ones((2, 3), dtype=np.float32), np.zeros((0, 3), dtype=np.float32), 2)
    assert top.indices.tolist() == [[-1, -1], [-1, -1]]
    assert torch.isinf(top.distances).all()


def test_cosine_normalisation_is_exactly_functional_normalize():
    from hn_trainer.mining.kernel import _prepare_space

    rng = np.random.default_rng(12)
    scale = rng.uniform(1e-3, 1e3, (300, 1))
    x = torch.from_numpy((rng.standard_normal((300, 33)) * scale).astype(np.float32))
    x[7] = 0.0
    space = _prepare_space(x, x, "cosine", "fp32", "cpu")
    assert torch.equal(space.queries, F.normalize(x, dim=1))
    assert torch.equal(space.corpus, F.normalize(x, dim=1))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_decision_distances_are_the_same_bits_in_numpy_and_torch(metric):
    # CPU re-checks run in numpy, CUDA ones in torch: their float64 sums must be the same bits
    # (the final 1 - x or sqrt is correctly rounded in numpy and on CUDA)
    from hn_trainer.mining.kernel import _decision_sums

    rng = np.random.default_rng(13)
    left = rng.standard_normal((40, 37)).astype(np.float32)
    right = rng.standard_normal((40, 9, 37)).astype(np.float32)
    in_numpy = _decision_sums(metric, left, right.copy())
    in_torch = _decision_sums(metric, torch.from_numpy(left), torch.from_numpy(right))
    assert in_numpy.dtype == np.float64
    np.testing.assert_array_equal(in_numpy, in_torch.numpy())


@pytest.fixture
def grouped_topk_on_cpu(monkeypatch):
    """Use the grouped top-k (normally CUDA only) on CPU, with groups small enough for tiny blocks."""
    from hn_trainer.mining import kernel

    monkeypatch.setattr(kernel, "_GROUPED_TOPK_DEVICES", ("cpu", "cuda"))
    monkeypatch.setattr(kernel, "_TOPK_GROUP", 4)
    return kernel


@pytest.mark.parametrize("n", [64, 67, 130])
def test_grouped_topk_returns_a_valid_top_k(grouped_topk_on_cpu, n):
    rng = np.random.default_rng(n)
    # few distinct values: many ties, including at the k-th value; some rows mostly -inf
    scores = torch.from_numpy(rng.integers(0, 6, (50, n)).astype(np.float32))
    scores[:10, : n - 3] = -math.inf
    for width in (1, 3, 4):
        values, columns = grouped_topk_on_cpu._block_topk(scores, width)
        expected = scores.topk(width, dim=1).values
        assert torch.equal(values.sort(dim=1, descending=True).values, expected)
        assert torch.equal(scores.gather(1, columns), values)  # the columns hold those values
        assert all(len(set(row)) == width for row in columns.tolist())  # no column twice


def test_grouped_topk_mining_matches_brute_force(grouped_topk_on_cpu):
    queries, corpus, pairs, positives = make_problem(
        14, n_q=40, n_d=600, dim=8, levels=(-1.0, 0.0, 1.0), duplicates=60
    )
    for metric in ("cosine", "euclidean"):
        for conditions in ("both", "query"):
            result = dual_condition_mine(
                queries, corpus, pairs, positives, k=3, metric=metric, conditions=conditions,
                corpus_block_size=301,  # two groups-of-4 blocks, the second with a partial group
            )
            expected = brute_force(queries, corpus, pairs, positives, 3, metric, conditions)
            np.testing.assert_array_equal(result.indices.numpy(), expected[0])


def test_block_sizes_default_by_device():
    from hn_trainer.mining.kernel import _block_sizes

    assert _block_sizes(torch.device("cpu"), None, None) == (1024, 16384)
    assert _block_sizes(torch.device("cuda"), None, 100) == (4096, 100)
    with pytest.raises(ConfigError):
        dual_condition_mine(np.ones((1, 2)), np.ones((3, 2)), [[0, 0]], [[0]], query_block_size=0)
