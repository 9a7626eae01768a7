"""Fallback negatives for (query, positive) pairs that mining left short.

The paper gives a pair no hard negative when no document satisfies both conditions. A fallback tops such pairs
up to the number asked for, after their dual-condition negatives:

* ``"none"``: the paper; short pairs stay short.
* ``"random"``: uniformly drawn corpus documents that are neither judged for the query nor already chosen,
  seeded per pair (``numpy.random.default_rng([seed, pair index, 1])``).
* ``"condition2"``: the documents closest to Q among those with ``d(Q, D) < d(PD, D)`` alone (closer to the
  query than to the positive: the false-negative guard without the hardness bound), mined exactly by the kernel
  (`CandidateRule(closer_to_query_than_positive=True)`).

Top-ups are ordered closest to Q first. A corpus without enough candidates leaves the pair short.
"""

from __future__ import annotations

import numpy as np
import torch

from hn_trainer.mining.kernel import CandidateRule, decision_distances, mine_negatives

FALLBACKS = ("none", "random", "condition2")


def top_up(
    fallback: str,
    chosen: list[list[int]],
    distances: list[list[float]],
    pair_rows: torch.Tensor,
    excluded: list[list[int]],
    query_embeddings,
    corpus_embeddings,
    num_negatives: int,
    *,
    metric: str,
    seed: int,
    device=None,
) -> list[int]:
    """Append fallback negatives, in place, to each pair with fewer than ``num_negatives``.

    Args:
        fallback: One of `FALLBACKS`.
        chosen: Per pair, the corpus rows of its negatives so far.
        distances: Per pair, their decision distances ``d(Q, D)``.
        pair_rows: ``[n_pairs, 2]`` (query row, positive row).
        excluded: Per query row, corpus rows that may never be its negatives (its judged documents).
        query_embeddings, corpus_embeddings: The mining space.
        num_negatives: Negatives wanted per pair.

    Returns:
        How many negatives were appended to each pair.
    """
    added = [0] * len(chosen)
    short = [i for i, rows in enumerate(chosen) if len(rows) < num_negatives]
    if not short or fallback == "none":
        return added
    if fallback == "random":
        extra = _random_top_up(short, chosen, pair_rows, excluded, len(corpus_embeddings), num_negatives, seed)
    elif fallback == "condition2":
        extra = _condition2_top_up(short, chosen, pair_rows, excluded, query_embeddings, corpus_embeddings,
                                   num_negatives, metric, device)
    else:
        raise ValueError(f"unknown fallback {fallback!r}; expected one of {FALLBACKS}")
    _append_top_ups(short, extra, chosen, distances, pair_rows, query_embeddings, corpus_embeddings, metric, device)
    for i, rows in zip(short, extra):
        added[i] = len(rows)
    return added


def _random_top_up(short, chosen, pair_rows, excluded, n_docs: int, k: int, seed: int) -> list[list[int]]:
    """Uniform corpus rows for each short pair, distinct, not a positive of its query nor already chosen."""
    out = []
    for i in short:
        taken = set(excluded[int(pair_rows[i, 0])]) | set(chosen[i])
        need = k - len(chosen[i])
        rng = np.random.default_rng([seed, i, 1])
        if n_docs - len(taken) <= 4 * need:
            available = np.array([d for d in range(n_docs) if d not in taken], dtype=np.int64)
            picks = rng.permutation(available)[:need].tolist()
        else:  # rejection sampling: most of the corpus is available
            picks, seen = [], set(taken)
            while len(picks) < need:
                for d in rng.integers(n_docs, size=2 * need + 8).tolist():
                    if d not in seen and len(picks) < need:
                        seen.add(d)
                        picks.append(d)
        out.append(picks)
    return out


def _condition2_top_up(short, chosen, pair_rows, excluded, q_emb, c_emb, k: int, metric: str, device):
    """For each short pair, the closest documents with ``d(Q, D) < d(PD, D)`` not already chosen.

    The kernel mines condition 2 alone exactly (``CandidateRule(closer_to_query_than_positive=True)``).
    ``k`` per pair suffice: the negatives of a short pair are all of its qualifying documents, and those
    satisfy condition 2 and are closer to Q than any document that fails condition 1, so they come first.
    """
    result = mine_negatives(
        q_emb,
        c_emb,
        pair_rows[short],
        excluded,
        k + max(len(chosen[i]) for i in short),
        metric,
        rule=CandidateRule(closer_to_query_than_positive=True),
        device=device,
    )
    out = []
    for i, row in zip(short, result.indices.tolist()):
        have = set(chosen[i])
        out.append([d for d in row if d >= 0 and d not in have][: k - len(chosen[i])])
    return out


def _append_top_ups(short, extra_rows, chosen, distances, pair_rows, q_emb, c_emb, metric, device):
    """Append each short pair's top-up rows, closest first, with their decision distances."""
    width = max((len(r) for r in extra_rows), default=0)
    if width == 0:
        return
    candidates = torch.full((len(short), width), -1, dtype=torch.long)
    for j, rows in enumerate(extra_rows):
        candidates[j, : len(rows)] = torch.tensor(rows, dtype=torch.long)
    dist = decision_distances(q_emb, c_emb, pair_rows[short, 0], candidates, metric, device=device)
    for j, i in enumerate(short):
        found = sorted(
            ((float(dist[j, m]), d) for m, d in enumerate(extra_rows[j])), key=lambda x: (x[0], x[1])
        )
        chosen[i].extend(d for _, d in found)
        distances[i].extend(x for x, _ in found)


