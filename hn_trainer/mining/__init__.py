"""Hard-negative mining: the dual-condition kernel, baseline samplers, and the `mine` pipeline."""

from __future__ import annotations

from hn_trainer.mining.kernel import MiningResult, dual_condition_mine, streamed_topk
from hn_trainer.mining.samplers import SAMPLERS, MiningInputs, NegativeSampler, get_sampler

__all__ = [
    "SAMPLERS",
    "MiningInputs",
    "MiningResult",
    "NegativeSampler",
    "dual_condition_mine",
    "get_sampler",
    "streamed_topk",
]
