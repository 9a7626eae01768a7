"""`benchmarks/negative_ranks.py`: where mined negatives fall in the first stage's ranking."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.negative_ranks import negative_ranks


def test_ranks_of_first_negatives_against_a_hand_ranking():
    # One query along the first axis; documents at decreasing cosine: a (1.0), b (0.8), c (0.6), d (0.0).
    corpus = np.array([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    ids = ["a", "b", "c", "d"]
    query = np.array([[2.0, 0.0]])  # not unit length: the ranking is by cosine
    triples = [
        {"query": "q", "positive_id": "b", "negative_ids": ["a", "d"]},  # negative above the positive, rank 1
        {"query": "q", "positive_id": "a", "negative_ids": ["d"]},       # positive first, negative rank 4
        {"query": "q", "positive_id": "c", "negative_ids": []},          # no negative
    ]
    stats = negative_ranks(triples, ids, np.repeat(query, 3, axis=0), corpus, top_k=2)
    assert stats["pairs"] == 3
    assert stats["pairs_with_a_negative"] == 2
    assert stats["positive_ranked_first"] == pytest.approx(1 / 3)
    assert stats["negative_rank_median"] == pytest.approx(2.5)  # ranks 1 and 4
    assert stats["negative_in_top_2"] == pytest.approx(0.5)
    assert stats["negative_above_positive"] == pytest.approx(0.5)


def test_no_negatives_gives_no_negative_statistics():
    corpus = np.eye(2)
    stats = negative_ranks([{"query": "q", "positive_id": "x", "negative_ids": []}], ["x", "y"],
                           np.array([[1.0, 0.0]]), corpus)
    assert stats["pairs_with_a_negative"] == 0
    assert stats["positive_ranked_first"] == 1.0
    assert stats["negative_rank_median"] is None and stats["negative_above_positive"] is None
