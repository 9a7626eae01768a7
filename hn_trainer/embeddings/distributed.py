"""Split encoding work across processes and put the results back in order.

Texts arrive sorted longest first and are cut into blocks of one encoder batch each; rank ``r``
takes blocks ``r, r + world, r + 2 * world, ...``. Every rank gets a similar mix of lengths, and
every batch holds exactly the texts it would hold in a single process, so padding (and hence
each vector) is the same whatever the number of processes. After
`accelerate.utils.gather_object`, `merge_shards` restores the original row order, so the result
equals a single-process run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)


def shard_indices(n: int, rank: int, world_size: int, block_size: int = 1) -> np.ndarray:
    """Row indices of `n` rows that process `rank` of `world_size` handles.

    Rows are grouped in consecutive blocks of `block_size` (the last one may be shorter), dealt
    to ranks in turn: rank ``r`` gets blocks ``r, r + world_size, ...``. With ``block_size=1``
    this is the strided split ``r, r + world_size, ...``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    rows = np.arange(n)
    return rows[(rows // block_size) % world_size == rank]


def merge_shards(
    parts: list[tuple[int, np.ndarray]], n: int, world_size: int, block_size: int = 1
) -> np.ndarray:
    """Reassemble rows gathered from every rank into the original order.

    Args:
        parts: ``(rank, rows)`` pairs, in any order, one per rank; ``rows`` are that rank's
            rows for `shard_indices(n, rank, world_size, block_size)`.
        n: Total number of rows.
        world_size: Number of processes.
        block_size: The block size the rows were sharded with.

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
        index = shard_indices(n, rank, world_size, block_size)
        if len(index) != len(rows):
            raise ValueError(f"rank {rank} returned {len(rows)} rows for {len(index)} texts")
        if len(index):
            out[index] = rows
    return out


def encode_sharded(
    encode: Callable[[list[str]], np.ndarray],
    texts: list[str],
    state=None,
    *,
    block_size: int = 1,
) -> np.ndarray:
    """Encode `texts` with `encode`, split across the processes of an `accelerate.PartialState`.

    With no state or a single process this is ``encode(texts)``. Every process must call it
    with the same `texts` (it is collective) and gets the full result.

    Args:
        encode: Texts -> float32 rows.
        texts: Texts to encode, sorted the way `encode` batches them (longest first).
        state: An `accelerate.PartialState`, or ``None``.
        block_size: Rows dealt to a rank at a time; the encoder's batch size keeps every
            batch, and so every vector, the same as in one process.
    """
    if state is None or state.num_processes <= 1:
        return encode(texts)
    from accelerate.utils import gather_object

    index = shard_indices(len(texts), state.process_index, state.num_processes, block_size)
    local = encode([texts[i] for i in index])
    parts = gather_object([(state.process_index, np.asarray(local, dtype=np.float32))])
    return merge_shards(parts, len(texts), state.num_processes, block_size)
