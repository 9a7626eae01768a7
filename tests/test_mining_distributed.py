"""Mining sharded over processes gives what one process gives."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from hn_trainer.mining.distributed import mine_sharded, pair_slice
from hn_trainer.mining.kernel import dual_condition_mine


def test_mine_sharded_equals_one_process(monkeypatch):
    import accelerate.utils

    g = torch.Generator().manual_seed(0)
    queries, corpus = torch.randn(37, 8, generator=g), torch.randn(300, 8, generator=g)
    positive = torch.randint(300, (37,), generator=g)
    pairs = torch.stack([torch.arange(37), positive], dim=1)
    positives = [[p] for p in positive.tolist()]
    single = dual_condition_mine(queries, corpus, pairs, positives, k=3)
    for rank in range(3):
        def gather(obj, rank=rank):  # what the other ranks would send, in any order
            others = []
            for r in range(3):
                if r != rank:
                    part = dual_condition_mine(queries, corpus, pairs[pair_slice(37, r, 3)], positives, k=3)
                    others.append((r, part.indices.numpy(), part.distances.numpy()))
            return others[::-1] + obj

        monkeypatch.setattr(accelerate.utils, "gather_object", gather)
        state = SimpleNamespace(num_processes=3, process_index=rank, device=torch.device("cpu"))
        out = mine_sharded(queries, corpus, pairs, positives, k=3, state=state)
        assert torch.equal(out.indices, single.indices) and torch.equal(out.distances, single.distances)


def test_pair_slices_cover_pairs_in_order():
    for n, world in [(10, 3), (2, 4), (0, 2)]:
        assert [i for r in range(world) for i in range(n)[pair_slice(n, r, world)]] == list(range(n))
