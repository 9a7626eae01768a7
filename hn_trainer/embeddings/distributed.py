"""Split encoding work across processes and put the results back in order.

Texts are sorted longest first before they are split, so rank ``r`` takes rows
``r, r + world, r + 2 * world, ...``: every rank gets a similar mix of lengths. After
`accelerate.utils.gather_object`, `merge_shards` restores the original row order, so the
result equals a single-process run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)


def shard_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """Row indices of `n` rows that process `rank` of `world_size` handles (strided)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    return np.arange(rank, n, world_size)


def merge_shards(parts: list[tuple[int, np.ndarray]], n: int, world_size: int) -> np.ndarray:
    """Reassemble rows gathered from every rank into the original order.

    Args:
        parts: ``(rank, rows)`` pairs, in any order, one per rank; ``rows`` are that rank's
            rows for `shard_indices(n, rank, world_size)`.
        n: Total number of rows.
        world_size: Number of processes.

    Returns:
        Array [n, dim] with row ``i`` from the rank that handled it.
    """
    ranks = sorted(rank for rank, _ in parts)
    if ranks != list(range(world_size)):
        raise ValueError(f"expected one part per rank 0..{world_size - 1}, got ranks {ranks}")
    dims = {rows.shape[1] for _, rows in parts if len(rows)}
    dim = dims.pop() if dims else (parts[0][1].shape[1] if parts[0][1].ndim == 2 else 0)
    out = np.empty((n, dim), dtype=np.float32)
    for rank, rows in parts:
        index = shard_indices(n, rank, world_size)
        if len(index) != len(rows):
            raise ValueError(f"rank {rank} returned {len(rows)} rows for {len(index)} texts")
        if len(index):
            out[index] = rows
    return out


def encode_sharded(
    encode: Callable[[list[str]], np.ndarray],
    texts: list[str],
    state=None,
) -> np.ndarray:
    """Encode `texts` with `encode`, split across the processes of an `accelerate.PartialState`.

    With no state or a single process this is ``encode(texts)``. Every process must call it
    with the same `texts` (it is collective) and gets the full result.
    """
    if state is None or state.num_processes <= 1:
        return encode(texts)
    from accelerate.utils import gather_object

    index = shard_indices(len(texts), state.process_index, state.num_processes)
    local = encode([texts[i] for i in index])
    parts = gather_object([(state.process_index, np.asarray(local, dtype=np.float32))])
    return merge_shards(parts, len(texts), state.num_processes)
