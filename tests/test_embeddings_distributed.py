"""Sharding texts across processes and gathering the vectors back in single-process order."""

from __future__ import annotations

import numpy as np
import pytest

from hn_trainer.embeddings import merge_shards, shard_indices


@pytest.mark.parametrize("n, world", [(10, 3), (2, 4), (0, 2), (7, 1)])
def test_shard_and_gather_restore_single_process_order(n, world):
    rows = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    shards = [shard_indices(n, rank, world) for rank in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))  # each row to exactly one rank
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1  # balanced
    gathered = [(rank, rows[shards[rank]]) for rank in range(world)][::-1]  # arrival order does not matter
    np.testing.assert_array_equal(merge_shards(gathered, n, world), rows)
    with pytest.raises(ValueError):
        merge_shards(gathered[1:], n, world) if world > 1 else merge_shards([], n, world)


@pytest.mark.parametrize("n, world, block", [(10, 2, 3), (7, 3, 2), (4, 2, 8), (0, 2, 4)])
def test_block_sharding_deals_whole_batches_in_turn(n, world, block):
    shards = [shard_indices(n, rank, world, block) for rank in range(world)]
    assert sorted(np.concatenate(shards).tolist()) == list(range(n))
    for rank, rows in enumerate(shards):  # rank r holds whole blocks r, r + world, ...
        assert all((i // block) % world == rank for i in rows)
        blocks = {i // block for i in rows}
        assert sum(min(block, n - b * block) for b in blocks) == len(rows)
    rows = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    gathered = [(rank, rows[shards[rank]]) for rank in range(world)]
    np.testing.assert_array_equal(merge_shards(gathered, n, world, block), rows)


def test_sharded_encoding_forms_the_same_batches_as_one_process(monkeypatch):
    from hn_trainer.embeddings import encode_sharded

    texts = [f"text {i}" for i in range(11)]
    batches: list[list[str]] = []

    def encode(batch):
        out = []
        for start in range(0, len(batch), 3):  # what an encoder with batch size 3 does
            batches.append(batch[start : start + 3])
            out += [[float(texts.index(t))] for t in batch[start : start + 3]]
        return np.asarray(out, dtype=np.float32).reshape(-1, 1)

    single = encode_sharded(encode, texts)
    single_batches, batches[:] = list(batches), []

    class FakeState:
        num_processes = 2

        def __init__(self, rank):
            self.process_index = rank

    import accelerate.utils

    def other_part(rank):
        rows = shard_indices(len(texts), rank, 2, 3)
        return rank, np.asarray(rows, dtype=np.float32).reshape(-1, 1)

    for rank in range(2):  # each rank's call; the gather adds what the other rank would send
        monkeypatch.setattr(accelerate.utils, "gather_object", lambda obj, r=rank: obj + [other_part(1 - r)])
        np.testing.assert_array_equal(encode_sharded(encode, texts, FakeState(rank), block_size=3), single)
    assert sorted(map(tuple, batches)) == sorted(map(tuple, single_batches))  # same batches, split by rank
    assert len(batches) == len(single_batches) == 4
