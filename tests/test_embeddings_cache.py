"""The per-text embedding cache: reruns, partial re-encoding, the layout on disk, and damaged shards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SENTENCES
from embedding_helpers import QUERIES, doc_texts

from hn_trainer.embeddings import (
    CachedEncoder,
    EmbeddingCache,
    Encoder,
    SentenceTransformerEncoder,
    build_ensemble_embeddings,
    load_encoder,
    text_key,
)
from hn_trainer.embeddings import cache as cache_module
from hn_trainer.errors import EncoderError




@pytest.fixture
def encoded(monkeypatch):
    """Count the texts each encoder kind actually encodes (cache misses)."""
    counts: Counter = Counter()
    original = Encoder.encode

    def counting(self, texts, **kwargs):
        counts[self.kind] += len(texts)
        return original(self, texts, **kwargs)

    monkeypatch.setattr(Encoder, "encode", counting)
    return counts


def test_cache_rerun_encodes_nothing_and_matches_uncached(
    tiny_encoder_dir, corpus, queries, tmp_path, encoded
):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    n_distinct = len(set(doc_texts(corpus)) | set(QUERIES))
    first = build_ensemble_embeddings(
        corpus, queries, specs, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    assert encoded == {"st": n_distinct, "lsa": n_distinct}
    encoded.clear()
    second = build_ensemble_embeddings(
        corpus, queries, specs, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    assert sum(encoded.values()) == 0
    assert second.cache_stats == {s: {"encoded": 0, "cached": len(corpus) + len(QUERIES)} for s in specs}
    np.testing.assert_array_equal(first.corpus, second.corpus)
    uncached = build_ensemble_embeddings(
        corpus, queries, specs, cache_dir=False, device="cpu", show_progress=False
    )
    np.testing.assert_allclose(uncached.corpus, first.corpus, atol=1e-5)


def test_changing_one_encoder_reencodes_only_it(tiny_encoder_dir, corpus, queries, tmp_path, encoded):
    n_distinct = len(set(doc_texts(corpus)) | set(QUERIES))
    build_ensemble_embeddings(
        corpus,
        queries,
        [str(tiny_encoder_dir), "lsa:8"],
        cache_dir=tmp_path,
        device="cpu",
        show_progress=False,
    )
    encoded.clear()
    build_ensemble_embeddings(
        corpus,
        queries,
        [str(tiny_encoder_dir), "lsa:6"],
        cache_dir=tmp_path,
        device="cpu",
        show_progress=False,
    )
    assert encoded == {"lsa": n_distinct}
    encoded.clear()
    build_ensemble_embeddings(
        corpus,
        queries,
        [f"{tiny_encoder_dir}?max_seq_length=8", "lsa:6"],
        cache_dir=tmp_path,
        device="cpu",
        show_progress=False,
    )
    assert encoded == {"st": n_distinct}


def test_adding_one_text_encodes_only_it(tiny_encoder_dir, corpus, queries, tmp_path, encoded):
    spec = [str(tiny_encoder_dir)]
    build_ensemble_embeddings(corpus, queries, spec, cache_dir=tmp_path, device="cpu", show_progress=False)
    encoded.clear()
    bigger = corpus.add_item({"_id": "d-new", "title": "", "text": "a brand new document about dns zones"})
    result = build_ensemble_embeddings(
        bigger, queries, spec, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    assert encoded == {"st": 1}
    assert result.cache_stats[spec[0]]["encoded"] == 1
    # LSA is refitted on the changed corpus, so its vectors are all new (its fingerprint holds the corpus)
    build_ensemble_embeddings(corpus, queries, ["lsa:8"], cache_dir=tmp_path, show_progress=False)
    encoded.clear()
    build_ensemble_embeddings(bigger, queries, ["lsa:8"], cache_dir=tmp_path, show_progress=False)
    assert encoded == {"lsa": len(set(doc_texts(bigger)) | set(QUERIES))}


def test_cache_layout_on_disk(tiny_encoder_dir, corpus, queries, tmp_path):
    build_ensemble_embeddings(
        corpus,
        queries,
        [str(tiny_encoder_dir), "lsa:8"],
        cache_dir=tmp_path,
        device="cpu",
        show_progress=False,
    )
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 2 and folders[0].startswith("lsa-8-") and folders[1].startswith("st-")
    for folder in tmp_path.iterdir():
        assert (folder / "encoder.json").is_file()
        shards = list((folder / "shards").glob("*.npz"))
        assert len(shards) == 2  # one per map chunk: corpus, queries
        with np.load(shards[0]) as data:
            assert data["keys"].dtype == np.dtype("S20") and data["vectors"].dtype == np.float32
        cache = EmbeddingCache(folder)
        assert len(cache) == len(set(doc_texts(corpus)) | set(QUERIES))
        assert text_key(QUERIES[0]) in cache


def test_nan_embedding_raises_naming_encoder_and_text_id(
    tiny_encoder_dir, corpus, queries, tmp_path, monkeypatch
):
    original = SentenceTransformerEncoder._encode_batch

    def poisoned(self, texts):
        out = original(self, texts)
        out[[i for i, t in enumerate(texts) if "vaccines" in t]] = np.nan
        return out

    monkeypatch.setattr(SentenceTransformerEncoder, "_encode_batch", poisoned)
    spec = str(tiny_encoder_dir)
    with pytest.raises(EncoderError) as info:
        build_ensemble_embeddings(
            corpus, queries, [spec, "lsa:4"], cache_dir=tmp_path, device="cpu", show_progress=False
        )
    message = str(info.value)
    assert repr(spec) in message and "'d11'" in message and "NaN" in message
    # nothing from the failed chunk was cached for that encoder
    assert not list(tmp_path.glob("st-*/shards/*.npz"))


def test_interrupted_shard_write_leaves_no_trusted_shard(tmp_path, monkeypatch, caplog):
    folder = tmp_path / "enc"
    keys = [text_key(t) for t in QUERIES]
    vectors = np.random.default_rng(0).standard_normal((len(keys), 4)).astype(np.float32)

    def crash(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt("killed mid-write")

    with monkeypatch.context() as m:
        m.setattr(cache_module.np, "savez", crash)
        with pytest.raises(KeyboardInterrupt):
            EmbeddingCache(folder).add(keys, vectors)
    shard_dir = folder / "shards"
    assert not list(shard_dir.glob("*.npz")) and not [
        p for p in shard_dir.iterdir() if p.name.startswith(".")
    ]
    assert len(EmbeddingCache(folder)) == 0
    # leftovers of a hard kill (hidden temporaries) and a damaged shard are never trusted
    (shard_dir / ".abc.npz.x1.tmp").mkdir()
    (shard_dir / ".abc.npz.x1.tmp" / "abc.npz").write_bytes(b"PK\x03\x04 partial")
    (shard_dir / "damaged.npz").write_bytes(b"PK\x03\x04 partial")
    assert len(EmbeddingCache(folder)) == 0
    assert "unreadable cache shard" in caplog.text
    # a complete write is trusted
    EmbeddingCache(folder).add(keys, vectors)
    reloaded = EmbeddingCache(folder)
    assert len(reloaded) == len(keys)
    np.testing.assert_array_equal(reloaded.get(keys[::-1]), vectors[::-1])


def test_compaction_merges_many_shards(tmp_path):
    folder = tmp_path / "enc"
    rng = np.random.default_rng(0)
    cache = EmbeddingCache(folder)
    keys = [text_key(f"text {i}") for i in range(10)]
    vectors = rng.standard_normal((10, 3)).astype(np.float32)
    for i in range(10):
        cache.add(keys[i : i + 1], vectors[i : i + 1])
    reloaded = EmbeddingCache(folder)
    assert reloaded.compact(max_shards=4)
    assert len(list((folder / "shards").glob("*.npz"))) == 1
    np.testing.assert_array_equal(EmbeddingCache(folder).get(keys), vectors)


def test_digests_ending_in_zero_bytes_are_found_after_reload(tmp_path):
    # numpy's fixed-width bytes drop trailing NUL bytes, and about 1 digest in 256 ends in one
    texts = [t for t in (f"text {i}" for i in range(5000)) if text_key(t)[-1] == 0][:3]
    texts += ["plain text a", "plain text b"]
    assert len(texts) == 5 and text_key(texts[0]).endswith(b"\0")
    keys = [text_key(t) for t in texts]
    vectors = np.arange(10, dtype=np.float32).reshape(5, 2)
    EmbeddingCache(tmp_path / "enc").add(keys, vectors)
    reloaded = EmbeddingCache(tmp_path / "enc")
    assert reloaded.contains(keys).all()
    np.testing.assert_array_equal(reloaded.get(keys), vectors)


def _plant_shard(shard_dir: Path, name: str, keys, vectors) -> None:
    with open(shard_dir / name, "wb") as f:
        np.savez(f, keys=np.asarray(keys, dtype="S20"), vectors=np.asarray(vectors, dtype=np.float32))


@pytest.mark.parametrize("with_meta", [True, False])
def test_shard_of_another_width_does_not_hide_the_good_ones(tmp_path, caplog, with_meta):
    folder = tmp_path / "enc"
    rng = np.random.default_rng(0)
    keys = [text_key(f"text {i}") for i in range(6)]
    vectors = rng.standard_normal((6, 4)).astype(np.float32)
    cache = EmbeddingCache(folder, meta={"spec": "x"} if with_meta else None)
    for i in range(0, 6, 2):
        cache.add(keys[i : i + 2], vectors[i : i + 2])
    assert (folder / "encoder.json").exists() == with_meta
    shard_dir = folder / "shards"
    # sorts before every hex-named shard; one vector only, so the majority is still width 4
    _plant_shard(shard_dir, "0" * 19 + ".npz", [text_key("text 0")], np.ones((1, 5)))
    # an unreadable one too
    (shard_dir / "00000.npz").write_bytes(b"PK\x03\x04 not a zip")
    with caplog.at_level("WARNING", logger=cache_module.__name__):
        reloaded = EmbeddingCache(folder)
    assert reloaded.dim == 4 and len(reloaded) == 6 and reloaded.shards_loaded == 3
    np.testing.assert_array_equal(reloaded.get(keys), vectors)
    assert f"{'0' * 19}.npz: its vectors are 5 wide, the cache's are 4" in caplog.text
    assert "00000.npz" in caplog.text
    # later writes still work and are found again
    more = [text_key("text 6")]
    reloaded.add(more, np.full((1, 4), 0.5, dtype=np.float32))
    again = EmbeddingCache(folder)
    assert len(again) == 7 and again.dim == 4
    np.testing.assert_array_equal(again.get(more), np.full((1, 4), 0.5, dtype=np.float32))


def test_encoder_json_decides_the_width_over_a_majority(tmp_path, caplog):
    folder = tmp_path / "enc"
    keys = [text_key(f"text {i}") for i in range(2)]
    EmbeddingCache(folder, meta={"spec": "x"}).add(keys, np.ones((2, 3), dtype=np.float32))
    _plant_shard(folder / "shards", "0.npz", [text_key(f"other {i}") for i in range(5)], np.ones((5, 8)))
    reloaded = EmbeddingCache(folder)
    assert reloaded.dim == 3 and len(reloaded) == 2 and "0.npz" in caplog.text


def test_encoder_overrules_a_wrong_majority_and_rewrites_the_metadata(tmp_path, caplog):
    enc = load_encoder("lsa:4", fit_texts=TINY_SENTENCES)
    expected = CachedEncoder(enc, EmbeddingCache(None)).encode(TINY_SENTENCES, show_progress=False)
    first = CachedEncoder.create(enc, tmp_path)
    first.encode(TINY_SENTENCES[:6], show_progress=False)
    folder = first.cache.folder
    (folder / "encoder.json").unlink()  # nothing records the width any more
    # a bigger shard of another width, holding texts 0-2 and 6-7, and more
    wrong = [text_key(t) for t in TINY_SENTENCES[:3] + TINY_SENTENCES[6:8]]
    wrong += [text_key(f"junk {i}") for i in range(10)]
    _plant_shard(folder / "shards", "0.npz", wrong, np.ones((len(wrong), 7)))
    again = CachedEncoder.create(enc, tmp_path)
    assert again.cache.dim == 7  # the majority, until the encoder shows otherwise
    vectors = again.encode(TINY_SENTENCES, show_progress=False)
    assert vectors.shape == (len(TINY_SENTENCES), 4) and again.cache.dim == 4
    np.testing.assert_allclose(vectors, expected, atol=1e-6)
    # texts 0-2 come from the good shards; 3-5 were encoded before the width was set right
    assert again.texts_encoded == len(TINY_SENTENCES) - 3 and again.texts_cached == 3
    assert "the encoder gives 4" in caplog.text
    assert json.loads((folder / "encoder.json").read_text())["dim"] == 4
    third = CachedEncoder.create(enc, tmp_path)
    assert third.cache.dim == 4
    np.testing.assert_array_equal(third.encode(TINY_SENTENCES, show_progress=False), vectors)
    assert third.texts_encoded == 0


def test_cache_sweeps_what_a_killed_shard_writer_left(tmp_path):
    folder = tmp_path / "enc"
    keys = [text_key("a")]
    EmbeddingCache(folder).add(keys, np.ones((1, 2), dtype=np.float32))
    shard_dir = folder / "shards"
    stale = shard_dir / ".abcdef.npz.p999999999-00000000.ab12cd34.tmp"  # another machine's, fresh
    stale.mkdir()
    from hn_trainer import io as io_module

    dead = shard_dir / f".abcdef.npz.p999999999-{io_module._HOST}.ab12cd34.tmp"  # no such process
    dead.mkdir()
    (dead / "abcdef.npz").write_bytes(b"PK\x03\x04 partial")
    assert len(EmbeddingCache(folder)) == 1
    assert not dead.exists() and stale.exists()
