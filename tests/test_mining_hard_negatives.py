"""`hn_trainer.mine_hard_negatives`: dual-condition negatives for a datasets.Dataset of pairs, laid out as
sentence-transformers' `mine_hard_negatives` lays them out."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import datasets
import numpy as np
import pytest
from conftest import TINY_SENTENCES

from hn_trainer.errors import ConfigError, DataError
from hn_trainer.mining.hard_negatives import (
    OUTPUT_FORMATS,
    PAIR_FEATURES,
    mine_hard_negative_pairs,
    mine_hard_negatives,
)

MYSQL, VCN, WAF, DISK = (
    "how do i deploy mysql in the cloud",
    "what is a vcn",
    "what does a waf filter",
    "attach a disk to an instance",
)
EXTRA = [
    "mysql replication copies a database to another server",
    "a subnet is a range of addresses inside a virtual network",
    "security lists act as a virtual firewall for an instance",
    "kubernetes nodes run containers in pods",
]
ROWS = [
    (MYSQL, TINY_SENTENCES[1]),
    (VCN, TINY_SENTENCES[3]),
    (MYSQL, EXTRA[0]),  # the same query again: a second positive
    (WAF, TINY_SENTENCES[5]),
    (DISK, TINY_SENTENCES[7]),
    (WAF, TINY_SENTENCES[5]),  # a duplicate row
    ("spread traffic over servers", TINY_SENTENCES[1]),  # a weak positive, shared with another query
    ("do vaccines protect children", TINY_SENTENCES[11]),
]
# negatives come from here: every sentence but the last (a positive, added to the corpus by the function)
CORPUS = TINY_SENTENCES[:11] + EXTRA
EPS = 1e-6
# positives far from their queries: most of the corpus is closer, wide pools to draw from
FAR_ROWS = [(VCN, TINY_SENTENCES[10]), (WAF, TINY_SENTENCES[11]), (MYSQL, TINY_SENTENCES[6])]
# more single-positive queries for the comparison with sentence-transformers
CROSS_ROWS = ROWS + [
    ("how does mysql replication work", EXTRA[0]),
    ("what is a subnet", EXTRA[1]),
    ("what are security lists", EXTRA[2]),
    ("where do containers run", EXTRA[3]),
    ("where is unstructured data stored", TINY_SENTENCES[6]),
    ("what controls traffic between hosts", TINY_SENTENCES[5]),
]


def pairs_dataset(rows=ROWS):
    return datasets.Dataset.from_dict({"question": [q for q, _ in rows], "answer": [p for _, p in rows]})


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("hn-cache")


@pytest.fixture(scope="module")
def encoders(tiny_encoder_dir):
    return [str(tiny_encoder_dir), "lsa:8"]


def mine(encoders, cache, rows=ROWS, **kwargs):
    settings = {"corpus": CORPUS, "cache_dir": cache, "verbose": False, **kwargs}
    return mine_hard_negative_pairs(pairs_dataset(rows), encoders, **settings)


@pytest.fixture(scope="module")
def mined(encoders, cache):
    return mine(encoders, cache, num_negatives=3)


def distances(result):
    """Cosine distances [queries, docs] and [docs, docs], float64, in the vectors the kernel used."""
    q = result.query_embeddings.astype(np.float64)
    c = result.corpus_embeddings.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    return 1 - q @ c.T, 1 - c @ c.T


def rows_of(result):
    """Per pair: query row, positive row, negative rows, sources."""
    q_row = {q: i for i, q in enumerate(result.query_ids)}
    d_row = {d: i for i, d in enumerate(result.corpus_ids)}
    return [
        (q_row[r["query_id"]], d_row[r["positive_id"]], [d_row[n] for n in r["negative_ids"]], r["negative_sources"])
        for r in result.pairs
    ]


def positives_by_query(result):
    out: dict[int, set[int]] = {}
    for q, p, _, _ in rows_of(result):
        out.setdefault(q, set()).add(p)
    return out


def test_pairs_without_ids_are_merged_by_query_and_get_content_ids(mined):
    queries = list(dict.fromkeys(q for q, _ in ROWS))
    assert mined.query_texts == queries
    assert mined.corpus_texts == list(dict.fromkeys(CORPUS + [p for _, p in ROWS]))
    assert mined.corpus_texts[-1] == TINY_SENTENCES[11]  # a positive missing from the corpus is added
    assert mined.query_ids == ["q" + hashlib.sha256(q.encode()).hexdigest()[:16] for q in queries]
    assert mined.corpus_ids[0] == "d" + hashlib.sha256(CORPUS[0].encode()).hexdigest()[:16]
    assert list(mined.pairs.column_names) == list(PAIR_FEATURES)
    # pairs grouped by query in first-seen order, duplicate rows merged
    assert [(r["query"], r["positive"]) for r in mined.pairs] == [
        (MYSQL, TINY_SENTENCES[1]),
        (MYSQL, EXTRA[0]),
        (VCN, TINY_SENTENCES[3]),
        (WAF, TINY_SENTENCES[5]),
        (DISK, TINY_SENTENCES[7]),
        ("spread traffic over servers", TINY_SENTENCES[1]),
        ("do vaccines protect children", TINY_SENTENCES[11]),
    ]
    assert mined.pairs["query_id"][0] == mined.pairs["query_id"][1]
    stats = mined.stats
    assert stats["input_rows"] == 8 and stats["pairs"] == 7 and stats["queries"] == 6
    assert stats["documents"] == len(CORPUS) + 1 and stats["corpus_given"] == len(CORPUS)
    assert stats["dim_concat"] == 32 + 8 and stats["dim_pca"] == mined.query_embeddings.shape[1]
    assert stats["dim_pca"] <= stats["dim_concat"] and 0.95 <= stats["variance_kept"] <= 1


def test_every_negative_satisfies_both_conditions_and_none_is_a_positive(mined):
    qd, dd = distances(mined)
    positives = positives_by_query(mined)
    checked = 0
    for (q, p, negs, sources), dists in zip(rows_of(mined), mined.pairs["negative_distances"]):
        assert set(sources) <= {"dual_condition"}
        assert not set(negs) & positives[q]  # neither this pair's positive nor the query's other ones
        assert len(set(negs)) == len(negs) <= 3
        for d, distance in zip(negs, dists):
            assert qd[q, d] < qd[q, p] + EPS and qd[q, d] < dd[p, d] + EPS
            assert distance == pytest.approx(qd[q, d], abs=1e-5)
            checked += 1
        assert negs == sorted(negs, key=lambda d: qd[q, d])
        # nothing is missed: every document that clearly qualifies and is closer than the last one is there
        sure = [
            d for d in range(len(mined.corpus_ids))
            if d not in positives[q] and qd[q, d] < qd[q, p] - EPS and qd[q, d] < dd[p, d] - EPS
        ]
        if len(negs) < 3:
            assert set(sure) <= set(negs)
        else:
            assert {d for d in sure if qd[q, d] < qd[q, negs[-1]] - EPS} <= set(negs)
    assert checked == mined.stats["negatives"] > 0
    # the repeated query's two positives would be candidates for each other were they not positives
    mysql = [r for r in rows_of(mined) if mined.query_texts[r[0]] == MYSQL]
    assert len(mysql) == 2 and mysql[0][1] not in mysql[1][2] and mysql[1][1] not in mysql[0][2]


def test_output_formats_have_sentence_transformers_columns(mined, tiny_encoder_dir, capsys):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    model = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    data = pairs_dataset()
    n_pairs, k = len(mined.pairs), 3
    found = [len(n) for n in mined.pairs["negative_ids"]]
    for output_format in OUTPUT_FORMATS:
        for output_scores in (False, True):
            theirs = st_mine(
                data, model, corpus=list(CORPUS), absolute_margin=0, range_max=len(CORPUS) + 1,
                num_negatives=k, output_format=output_format, output_scores=output_scores, verbose=False,
            )
            ours = mined.to_dataset(output_format, output_scores)
            assert ours.column_names == theirs.column_names, (output_format, output_scores)
            stats = json.loads(ours.info.description)
            assert stats["output_format"] == output_format and stats["rows"] == len(ours)
            if output_format == "triplet":
                assert len(ours) == sum(found) and stats["pairs_dropped"] == found.count(0)
            elif output_format == "n-tuple":
                assert len(ours) == sum(n == k for n in found) and stats["pairs_dropped"] == n_pairs - len(ours)
            elif output_format == "labeled-list":
                assert len(ours) == n_pairs - found.count(0) and stats["pairs_dropped"] == found.count(0)
            else:
                distinct = {}
                for r in mined.pairs:
                    distinct.setdefault(r["query"], set()).update(r["negatives"])
                assert len(ours) == n_pairs + sum(len(v) for v in distinct.values())
    capsys.readouterr()

    # the values: scores are cosine similarities 1 - d, positives first, labels as sentence-transformers'
    first = next(r for r in mined.pairs if r["negatives"])
    sims = [1 - first["positive_distance"]] + [1 - d for d in first["negative_distances"]]
    row = mined.to_dataset("labeled-list", True)[0]
    assert row["answer"] == [first["positive"]] + first["negatives"] and row["scores"] == pytest.approx(sims)
    assert mined.to_dataset("labeled-list")[0]["labels"] == [1] + [0] * len(first["negatives"])
    triplet = mined.to_dataset("triplet", True)[0]
    assert (triplet["question"], triplet["answer"], triplet["negative"]) == (
        first["query"], first["positive"], first["negatives"][0]
    )
    assert triplet["scores"] == pytest.approx(sims[:2])
    pair_rows = mined.to_dataset("labeled-pair")
    assert pair_rows[0] == {"question": MYSQL, "answer": TINY_SENTENCES[1], "label": 1}
    assert pair_rows[1] == {"question": MYSQL, "answer": EXTRA[0], "label": 1}
    assert set(pair_rows["label"]) <= {0, 1}


def test_the_public_function_returns_the_layout_and_prints_the_table(encoders, cache, capsys):
    import hn_trainer

    result = hn_trainer.mine_hard_negatives(
        pairs_dataset(), encoders, corpus=datasets.Dataset.from_dict({"text": CORPUS}), cache_dir=cache,
        num_negatives=2, output_format="n-tuple",
    )
    table = capsys.readouterr().out
    assert result.column_names == ["question", "answer", "negative_1", "negative_2"]
    stats = json.loads(result.info.description)
    assert stats["pairs"] == 7 and stats["rows"] == len(result) and stats["num_negatives"] == 2
    for line in ("pairs: 7 (6 queries, 16 documents)", "input rows: 8", "dims 40 -> ", "variance kept",
                 "d(Q, PD): mean", "dual-condition negatives:", "distinct negatives per query:",
                 f"n-tuple: {len(result)} rows; {stats['pairs_dropped']} pairs dropped"):
        assert line in table, line
    # the column a `datasets` corpus gives, and positional column defaults as sentence-transformers'
    column = datasets.Dataset.from_dict({"x": CORPUS})["x"]
    again = mine_hard_negatives(
        pairs_dataset(), encoders, corpus=column, cache_dir=cache, num_negatives=2, output_format="n-tuple",
        anchor_column_name="question", positive_column_name="answer", verbose=False,
    )
    assert again.to_dict() == result.to_dict()
    assert capsys.readouterr().out == ""


def test_agrees_with_sentence_transformers_on_condition_one_without_pca(tiny_encoder_dir, cache, capsys):
    """One encoder, no PCA, condition 1 only, "top", against the peer on the same model.

    Condition 1 keeps the documents closer to the query than the pair's positive; the peer's margin keeps
    those that score below the positive. So with no margin (the top k non-positives of the query) a pair's
    negatives are those of the peer's list that are closer than its positive, all of the list when k
    documents are; with ``absolute_margin=0`` the peer's negatives and ours never meet. Pairs with a
    near-tie on the way are not compared (the two sides round differently, and tie-break differently).
    """
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine

    k = 3
    ours = mine(
        [str(tiny_encoder_dir)], cache, CROSS_ROWS, num_negatives=k, pca_variance=None, conditions="query",
        sampling_strategy="top",
    )
    assert ours.stats["dim_pca"] == ours.stats["dim_concat"] == 32 and ours.stats["variance_kept"] == 1.0
    model = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    # the same vectors: the model's normalised embeddings
    assert np.allclose(ours.corpus_embeddings, model.encode(ours.corpus_texts, normalize_embeddings=True), atol=1e-5)

    def peer(**kwargs):
        theirs = st_mine(
            pairs_dataset(CROSS_ROWS), model, corpus=list(CORPUS), range_max=len(ours.corpus_texts), num_negatives=k,
            sampling_strategy="top", output_format="n-tuple", verbose=False, **kwargs,
        )
        return {(r["question"], r["answer"]): [r[f"negative_{i}"] for i in range(1, k + 1)] for r in theirs}

    top, margin0 = peer(), peer(absolute_margin=0)
    capsys.readouterr()
    our_rows = {
        (r["question"], r["answer"]): [r[f"negative_{i}"] for i in range(1, k + 1)]
        for r in ours.to_dataset("n-tuple")
    }
    assert len(top) == len(ours.pairs) and set(our_rows) <= set(top)
    sim = 1 - distances(ours)[0]
    d_row = {t: i for i, t in enumerate(ours.corpus_texts)}
    positives = positives_by_query(ours)
    compared = full = 0
    for q, p, negs, _ in rows_of(ours):
        key = (ours.query_texts[q], ours.corpus_texts[p])
        mine_texts = {ours.corpus_texts[d] for d in negs}
        assert not mine_texts & set(margin0.get(key, []))  # complementary selections
        assert all(sim[q, d_row[n]] <= sim[q, p] + EPS for n in margin0.get(key, []))
        # the sets depend on the cut between the k-th and (k+1)-th document and on the positive's score
        ranking = sorted((d for d in d_row.values() if d not in positives[q]), key=lambda d: -sim[q, d])
        if min(sim[q, ranking[k - 1]] - sim[q, ranking[k]], np.abs(sim[q, ranking] - sim[q, p]).min()) < 1e-4:
            continue
        compared += 1
        assert mine_texts == {n for n in top[key] if sim[q, d_row[n]] > sim[q, p]}, key
        if len(negs) == k:
            assert set(our_rows[key]) == set(top[key])
            full += 1
        else:
            assert key not in our_rows
    assert compared >= 6 and full >= 1
    assert any(len(n) < k for n in ours.pairs["negative_ids"])  # and the restriction mattered somewhere


def test_fallback_none_leaves_pairs_short_and_counts_them(encoders, cache):
    k = 6
    none = mine(encoders, cache, num_negatives=k, fallback="none")
    found = [len(n) for n in none.pairs["negative_ids"]]
    assert any(n < k for n in found)
    stats = none.stats
    assert stats["pairs_short_of_dual_negatives"] == stats["pairs_with_fewer_than_k"] == sum(n < k for n in found)
    assert stats["pairs_with_no_negative"] == found.count(0)
    assert stats["fallback_negatives"] == stats["pairs_topped_up"] == 0
    for output_format, dropped in (("triplet", found.count(0)), ("n-tuple", sum(n < k for n in found)),
                                   ("labeled-list", found.count(0)), ("labeled-pair", 0)):
        assert json.loads(none.to_dataset(output_format).info.description)["pairs_dropped"] == dropped


def test_fallback_random_fills_with_non_positives(encoders, cache):
    k = 6
    none = mine(encoders, cache, num_negatives=k, fallback="none")
    filled = mine(encoders, cache, num_negatives=k, fallback="random")
    positives = positives_by_query(filled)
    n_docs = len(filled.corpus_ids)
    topped = 0
    for before, after, (q, _, negs, sources) in zip(none.pairs, filled.pairs, rows_of(filled)):
        kept = len(before["negative_ids"])
        assert after["negative_ids"][:kept] == before["negative_ids"]  # the dual-condition ones first
        assert sources == ["dual_condition"] * kept + ["random"] * (len(negs) - kept)
        assert len(negs) == min(k, n_docs - len(positives[q])) == len(set(negs))
        assert not set(negs) & positives[q]
        topped += len(negs) > kept
    assert filled.stats["pairs_topped_up"] == topped > 0
    assert filled.stats["pairs_with_fewer_than_k"] == 0 and filled.stats["pairs_short_of_dual_negatives"] > 0
    again = mine(encoders, cache, num_negatives=k, fallback="random")
    assert again.pairs["negative_ids"] == filled.pairs["negative_ids"]  # seeded
    other = mine(encoders, cache, num_negatives=k, fallback="random", seed=7)
    assert other.pairs["negative_ids"] != filled.pairs["negative_ids"]


def test_fallback_condition2_fills_with_the_closest_documents_of_condition_two(encoders, cache):
    k = 6
    none = mine(encoders, cache, num_negatives=k, fallback="none")
    filled = mine(encoders, cache, num_negatives=k, fallback="condition2")
    qd, dd = distances(filled)
    positives = positives_by_query(filled)
    topped = 0
    for before, (q, p, negs, sources) in zip(none.pairs, rows_of(filled)):
        kept = len(before["negative_ids"])
        assert [filled.corpus_ids[d] for d in negs[:kept]] == before["negative_ids"]
        assert sources == ["dual_condition"] * kept + ["condition2"] * (len(negs) - kept)
        assert not set(negs) & positives[q] and len(set(negs)) == len(negs) <= k
        extra = negs[kept:]
        for d in extra:
            assert qd[q, d] < dd[p, d] + EPS  # condition 2
        assert extra == sorted(extra, key=lambda d: qd[q, d])
        # the closest such documents: every clear condition-2 document closer than the last is there
        sure = [
            d for d in range(len(filled.corpus_ids))
            if d not in positives[q] and d not in negs[:kept] and qd[q, d] < dd[p, d] - EPS
        ]
        if len(negs) < k:
            assert set(sure) <= set(extra)
        elif extra:
            assert {d for d in sure if qd[q, d] < qd[q, extra[-1]] - EPS} <= set(extra)
        topped += bool(extra)
    assert filled.stats["pairs_topped_up"] == topped > 0
    assert filled.stats["fallback_negatives"] == sum(s.count("condition2") for s in filled.pairs["negative_sources"])


def test_random_sampling_draws_within_the_pool(encoders, cache):
    k = 2
    settings = {"rows": FAR_ROWS}
    pool = mine(encoders, cache, num_negatives=10, **settings)  # the default pool of "random": max(4k, 10)
    drawn = mine(encoders, cache, num_negatives=k, sampling_strategy="random", **settings)
    assert drawn.stats["pool_size"] == 10
    for whole, part in zip(pool.pairs, drawn.pairs):
        negs = part["negative_ids"]
        assert len(negs) == min(k, len(whole["negative_ids"]))
        assert set(negs) <= set(whole["negative_ids"])
        assert negs == [n for n in whole["negative_ids"] if n in negs]  # closest first
    wide = [i for i, n in enumerate(pool.pairs["negative_ids"]) if len(n) > k]
    assert wide
    draws = {
        seed: [mine(encoders, cache, num_negatives=k, sampling_strategy="random", seed=seed, **settings)
               .pairs["negative_ids"][i] for i in wide]
        for seed in (42, 0, 1, 2)
    }
    assert draws[42] == [drawn.pairs["negative_ids"][i] for i in wide]  # seeded
    assert len({json.dumps(d) for d in draws.values()}) > 1  # and a draw, not the top


@pytest.mark.parametrize(
    ("kwargs", "error", "names"),
    [
        ({"num_negatives": 0}, ConfigError, "num_negatives"),
        ({"num_negatives": 2, "pool_size": 1}, ConfigError, "pool_size"),
        ({"output_format": "quadruplet"}, ConfigError, "output_format"),
        ({"fallback": "bm25"}, ConfigError, "fallback"),
        ({"sampling_strategy": "bottom"}, ConfigError, "sampling_strategy"),
        ({"conditions": "positive"}, ConfigError, "conditions"),
        ({"metric": "dot"}, ConfigError, "metric"),
        ({"pca_variance": 1.5}, ConfigError, "pca_variance"),
        ({"seed": -1}, ConfigError, "seed"),
        ({"batch_size": 0}, ConfigError, "batch_size"),
        ({"encoders": []}, ConfigError, "encoders"),
        ({"anchor_column_name": "query"}, DataError, "anchor_column_name='query'"),
        ({"positive_column_name": "positive"}, DataError, "positive_column_name='positive'"),
        ({"anchor_column_name": "answer", "positive_column_name": "answer"}, ConfigError, "positive_column_name"),
        ({"corpus": "one text"}, ConfigError, "corpus"),
        ({"corpus": ["a text", None]}, DataError, "corpus"),
    ],
)
def test_errors_name_the_argument(kwargs, error, names, tmp_path):
    kwargs = {"encoders": ["lsa:8"], "cache_dir": tmp_path, "verbose": False, **kwargs}
    with pytest.raises(error, match=names.replace("(", r"\(")):
        mine_hard_negatives(pairs_dataset(), **kwargs)


def test_data_errors(tmp_path):
    settings = {"encoders": ["lsa:8"], "cache_dir": tmp_path, "verbose": False}
    with pytest.raises(DataError, match="empty"):
        mine_hard_negatives(pairs_dataset([]), **settings)
    with pytest.raises(DataError, match="one column"):
        mine_hard_negatives(datasets.Dataset.from_dict({"question": ["q"]}), **settings)
    with pytest.raises(DataError, match="datasets.Dataset"):
        mine_hard_negatives([("q", "p")], **settings)
    with pytest.raises(DataError, match="column 'answer': row 1"):
        mine_hard_negatives(datasets.Dataset.from_dict({"question": ["a", "b"], "answer": ["x", None]}), **settings)


def test_import_stays_light():
    code = (
        "import sys, hn_trainer\n"
        "assert 'torch' not in sys.modules and 'datasets' not in sys.modules\n"
        "assert 'mine_hard_negatives' in dir(hn_trainer)\n"
        "from hn_trainer.mining.hard_negatives import mine_hard_negatives\n"
        "assert hn_trainer.mine_hard_negatives is mine_hard_negatives\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import hn_trainer

        hn_trainer.nothing  # noqa: B018
