"""Mine across processes: each rank mines a contiguous slice of the pairs; results are gathered in order."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from hn_trainer.mining.kernel import MiningResult, dual_condition_mine

logger = logging.getLogger(__name__)


def pair_slice(n_pairs: int, rank: int, world_size: int) -> slice:
    """The contiguous slice of pair rows that process `rank` of `world_size` mines.

    Slices are balanced (sizes differ by at most one) and in rank order, so concatenating the
    ranks' results in rank order gives the pairs' order.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    return slice(n_pairs * rank // world_size, n_pairs * (rank + 1) // world_size)


def mine_sharded(query_embeddings, corpus_embeddings, pairs, positives, k: int = 1, metric: str = "cosine",
                 *, state=None, mine=None, **kwargs: Any) -> MiningResult:
    """`dual_condition_mine` split across the processes of an `accelerate.PartialState`.

    Each rank mines a contiguous slice of the pairs against the whole corpus on its own device,
    then the results are gathered in rank order. The kernel's decisions do not depend on which
    pairs are mined together, so the result is identical to one process. Collective: every
    process must call it with the same arguments; each gets the full result.

    Args:
        query_embeddings, corpus_embeddings, pairs, positives, k, metric: As `dual_condition_mine`.
        state: An `accelerate.PartialState` (or `Accelerator`); ``None`` or one process: a plain call.
        mine: The mining function (default `dual_condition_mine`).
        **kwargs: Passed on; ``device`` defaults to the rank's device.

    Returns:
        `MiningResult` for all pairs, on CPU, in pair order.
    """
    mine = mine or dual_condition_mine
    if state is None or state.num_processes <= 1:
        return mine(query_embeddings, corpus_embeddings, pairs, positives, k, metric, **kwargs)
    from accelerate import utils

    pairs = pairs if isinstance(pairs, torch.Tensor) else torch.as_tensor(np.asarray(pairs, dtype=np.int64))
    part = pair_slice(len(pairs), state.process_index, state.num_processes)
    kwargs.setdefault("device", state.device)
    local = mine(query_embeddings, corpus_embeddings, pairs[part], positives, k, metric, **kwargs)
    gathered = utils.gather_object([(state.process_index, local.indices.cpu().numpy(), local.distances.cpu().numpy())])
    gathered.sort(key=lambda item: item[0])
    return MiningResult(
        torch.from_numpy(np.concatenate([item[1] for item in gathered]).reshape(-1, k)),
        torch.from_numpy(np.concatenate([item[2] for item in gathered]).reshape(-1, k)),
    )
