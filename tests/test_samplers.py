"""Baseline negative samplers: shared interface, no positives, padding, references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hn_trainer.errors import ConfigError
from hn_trainer.mining.kernel import MiningResult, dual_condition_mine
from hn_trainer.mining.samplers import SAMPLERS, MiningInputs, NegativeSampler, get_sampler

WORDS = "mysql cloud database deploy firewall network subnet storage bucket volume kernel cluster".split()


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny matmuls: thread wake-ups would dominate, so run them on one thread."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def make_inputs(seed=0, n_q=15, n_d=80, dim=6, levels=(-1.0, 0.0, 1.0), embeddings=True) -> MiningInputs:
    rng = np.random.default_rng(seed)
    documents = [" ".join(rng.choice(WORDS, size=4)) for _ in range(n_d)]
    queries = [" ".join(rng.choice(WORDS, size=2)) for _ in range(n_q)]
    positives = [sorted(rng.choice(n_d, size=rng.integers(1, 4), replace=False).tolist()) for _ in range(n_q)]
    pairs = torch.tensor([(q, p) for q in range(n_q) for p in positives[q]])
    q_emb = d_emb = None
    if embeddings:
        q_emb = torch.from_numpy(rng.choice(levels, size=(n_q, dim)).astype(np.float32))
        d_emb = torch.from_numpy(rng.choice(levels, size=(n_d, dim)).astype(np.float32))
    return MiningInputs(queries, documents, pairs, positives, q_emb, d_emb)


def cosine_distances(inputs: MiningInputs) -> np.ndarray:
    q = F.normalize(torch.as_tensor(inputs.query_embeddings, dtype=torch.float32), dim=1).double().numpy()
    d = F.normalize(torch.as_tensor(inputs.corpus_embeddings, dtype=torch.float32), dim=1).double().numpy()
    return 1.0 - (q[:, None, :] * d[None, :, :]).sum(-1)


def reference(inputs: MiningInputs, k: int, perc: float | None = None) -> np.ndarray:
    """Top-k closest non-positives per pair by (distance, index), optionally positive-aware."""
    dist = cosine_distances(inputs)
    out = np.full((len(inputs.pairs), k), -1)
    for row, (q, p) in enumerate(inputs.pairs.tolist()):
        keep = np.ones(dist.shape[1], dtype=bool)
        keep[inputs.positives[q] + [p]] = False
        if perc is not None:
            keep &= (1.0 - dist[q]) < perc * (1.0 - dist[q, p])
        cand = np.flatnonzero(keep)
        order = cand[np.lexsort((cand, dist[q, cand]))][:k]
        out[row, : len(order)] = order
    return out


def sampler_kwargs(name: str, request) -> dict:
    """``st_mine`` runs on the tiny local bi-encoder, not the packaged default model, and without a margin (an
    untrained encoder ranks many positives below every candidate it considers)."""
    if name != "st_mine":
        return {}
    return {"model": str(request.getfixturevalue("tiny_encoder_dir")), "absolute_margin": None}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
@pytest.mark.parametrize("k", [3, 100])
def test_never_returns_a_positive_and_pads(name, k, request):
    inputs = make_inputs()
    sampler = get_sampler(name, **sampler_kwargs(name, request))
    assert isinstance(sampler, NegativeSampler) and sampler.name == name
    result = sampler.mine(inputs, k)
    assert isinstance(result, MiningResult)
    assert result.indices.shape == result.distances.shape == (len(inputs.pairs), k)
    found = result.num_found()
    assert (found > 0).all()
    for row, (q, _) in enumerate(inputs.pairs.tolist()):
        picked = result.indices[row, : found[row]].tolist()
        assert not set(picked) & set(inputs.positives[q])
        assert len(set(picked)) == len(picked)
        assert (result.indices[row, found[row] :] == -1).all()
        assert torch.isinf(result.distances[row, found[row] :]).all()
        assert torch.isfinite(result.distances[row, : found[row]]).all()  # metric distances
    if k == 100 and name in ("random", "dense_topk"):
        n_free = [80 - len(inputs.positives[q]) for q in inputs.pairs[:, 0].tolist()]
        assert found.tolist() == n_free


def test_dense_topk_and_positive_aware_match_brute_force():
    inputs = make_inputs(1, n_q=25, n_d=120)
    for k in (1, 4):
        dense = get_sampler("dense_topk", corpus_block_size=16).mine(inputs, k)
        np.testing.assert_array_equal(dense.indices.numpy(), reference(inputs, k))
        for perc in (0.95, 0.6):
            aware = get_sampler("positive_aware", perc=perc, query_block_size=4).mine(inputs, k)
            np.testing.assert_array_equal(aware.indices.numpy(), reference(inputs, k, perc))
    # the threshold matters on this data: it removes some of the closest documents
    assert not np.array_equal(reference(inputs, 4), reference(inputs, 4, 0.95))


def test_dual_condition_sampler_is_the_kernel():
    inputs = make_inputs(2)
    for conditions in ("both", "query"):
        mined = get_sampler("dual_condition", conditions=conditions, metric="euclidean").mine(inputs, 3)
        direct = dual_condition_mine(
            inputs.query_embeddings, inputs.corpus_embeddings, inputs.pairs, inputs.positives, 3, "euclidean",
            conditions=conditions,
        )
        assert torch.equal(mined.indices, direct.indices)
        assert torch.equal(mined.distances, direct.distances)


def test_random_is_seeded_and_covers_the_corpus():
    inputs = make_inputs(3, n_q=40, embeddings=False)
    a = get_sampler("random", seed=7).mine(inputs, 5)
    b = get_sampler("random", seed=7).mine(inputs, 5)
    c = get_sampler("random", seed=8).mine(inputs, 5)
    assert torch.equal(a.indices, b.indices)
    assert not torch.equal(a.indices, c.indices)
    assert torch.isnan(a.distances).all()  # no embeddings: nothing to measure
    seen = set(a.indices.flatten().tolist())
    assert len(seen) > 70  # ~400 draws over 80 documents reach nearly all of them
    assert (a.indices >= 0).all() and (a.indices < 80).all()


def test_bm25_ranks_lexical_overlap_first():
    documents = [
        "install mysql on premises servers",  # 0: positive
        "deploy mysql database on cloud infrastructure",  # 1: shares mysql, deploy, cloud
        "protein folding in cells",  # 2: no overlap
        "a cloud network in a region",  # 3: shares cloud
        "vaccines for children",  # 4: no overlap
        "mysql replication on cloud with deploy scripts for mysql",  # 5: shares mysql x2, cloud, deploy
    ]
    inputs = MiningInputs(["deploy mysql on the cloud"], documents, [[0, 0]], [[0]])
    result = get_sampler("bm25").mine(inputs, 5)
    picked = result.indices[0].tolist()
    assert picked[:3] != [-1, -1, -1] and set(picked[:2]) == {1, 5}
    assert picked[2] == 3
    assert picked[3:] == [-1, -1]  # no term in common: not a lexical negative
    scores = -result.distances[0, :3]
    assert (scores > 0).all() and (scores[:-1] >= scores[1:]).all()


def test_bm25_reports_metric_distances_with_embeddings():
    inputs = make_inputs(4)
    result = get_sampler("bm25").mine(inputs, 2)
    rows = inputs.pairs[:, 0]
    dist = cosine_distances(inputs)
    for row in range(len(rows)):
        for j in range(2):
            doc = result.indices[row, j].item()
            if doc >= 0:
                assert result.distances[row, j].item() == pytest.approx(dist[rows[row], doc], abs=1e-6)


def test_registry_and_argument_errors():
    assert set(SAMPLERS) == {"dual_condition", "random", "bm25", "dense_topk", "positive_aware", "st_mine"}
    with pytest.raises(ConfigError, match="unknown sampler"):
        get_sampler("ance")
    with pytest.raises(ConfigError, match="bad arguments"):
        get_sampler("random", perc=0.9)
    with pytest.raises(ConfigError):
        get_sampler("positive_aware", metric="euclidean")
    with pytest.raises(ConfigError):
        get_sampler("dual_condition", conditions="all")
    with pytest.raises(ConfigError, match="sampling_strategy"):
        get_sampler("st_mine", sampling_strategy="hardest")
    with pytest.raises(ConfigError, match="not one"):
        get_sampler("st_mine", model="lsa:4").mine(make_inputs(embeddings=False), 2)
    no_embeddings = make_inputs(embeddings=False)
    for name in ("dual_condition", "dense_topk", "positive_aware"):
        with pytest.raises(ConfigError, match="embeddings"):
            get_sampler(name).mine(no_embeddings, 2)
    with pytest.raises(ValueError, match="positives"):
        MiningInputs(["q"], ["a"], [[0, 0]], [])
    with pytest.raises(ValueError):
        MiningInputs(["q"], ["a"], [[0, 3]], [[0]])
    assert math.isnan(get_sampler("random").mine(no_embeddings, 1).distances[0, 0].item())


@pytest.mark.parametrize("margin", [None, 0.0])
def test_st_mine_is_sentence_transformers_mine_hard_negatives(tiny_encoder_dir, margin):
    """Per pair, the negatives of sentence-transformers' own function (triplet rows, best first), as corpus rows;
    documents judged for the query outside the pairs are dropped and the pool still filled to k; with a margin
    of 0 every negative scores below every positive of its query."""
    import datasets
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives

    rng = np.random.default_rng(3)
    documents = list(dict.fromkeys(" ".join(rng.choice(WORDS, size=5)) for _ in range(120)))[:90]
    queries = list(dict.fromkeys(" ".join(rng.choice(WORDS, size=2)) for _ in range(12)))
    pairs = [(q, int(d)) for q in range(len(queries)) for d in rng.choice(len(documents), 2, replace=False)]
    k = 4
    model = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    mined = mine_hard_negatives(
        datasets.Dataset.from_dict({"query": [queries[q] for q, _ in pairs],
                                    "positive": [documents[d] for _, d in pairs]}),
        model, corpus=documents, absolute_margin=margin, num_negatives=k + 1,  # k + the one judged elsewhere
        output_format="triplet", verbose=False)
    expected: dict[tuple[str, str], list[int]] = {}
    for query, positive, negative in zip(mined["query"], mined["positive"], mined["negative"]):
        expected.setdefault((query, positive), []).append(documents.index(negative))

    # a query with negatives also has a judged document outside the pairs: its first negative
    judged_elsewhere: dict[int, int] = {}
    for q, d in pairs:
        if expected.get((queries[q], documents[d])):
            judged_elsewhere.setdefault(q, expected[(queries[q], documents[d])][0])
    positives = [sorted({d for p, d in pairs if p == q} | ({judged_elsewhere[q]} if q in judged_elsewhere else set()))
                 for q in range(len(queries))]
    inputs = MiningInputs(queries, documents, pairs, positives)
    result = get_sampler("st_mine", model=str(tiny_encoder_dir), absolute_margin=margin).mine(inputs, k)
    for row, (q, d) in enumerate(pairs):
        want = [i for i in expected.get((queries[q], documents[d]), []) if i != judged_elsewhere.get(q)][:k]
        assert result.indices[row].tolist() == want + [-1] * (k - len(want))
    if margin is None:
        assert len(judged_elsewhere) == len(queries) and (result.num_found() == k).all()
    else:
        emb = F.normalize(torch.as_tensor(model.encode(queries + documents)), dim=1)
        distance = 1 - emb[: len(queries)] @ emb[len(queries):].T
        for row, (q, _) in enumerate(pairs):
            found = result.indices[row][result.indices[row] >= 0]
            pair_positives = [p for p_q, p in pairs if p_q == q]
            assert (distance[q, found][:, None] >= distance[q, pair_positives][None, :] - 1e-5).all()
    finite = result.indices >= 0
    assert torch.isfinite(result.distances[finite]).all() and torch.isinf(result.distances[~finite]).all()
