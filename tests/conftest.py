"""Shared fixtures: tiny models built locally (no hub), and the SciFact folder when it is present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCIFACT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "scifact"

TINY_SENTENCES = [
    "deploy a mysql database on cloud infrastructure",
    "install mysql on premises servers in your data center",
    "a virtual cloud network vcn is a private network in a region",
    "a virtual network interface card vnic attaches an instance to a subnet",
    "a web application firewall waf filters http traffic to web applications",
    "a firewall controls network traffic between hosts with security rules",
    "object storage buckets hold unstructured data",
    "block volumes attach to compute instances as disks",
    "the query asks how to scale a kubernetes cluster",
    "load balancers distribute traffic across backend servers",
    "protein folding and gene expression in cells",
    "vaccines reduce the risk of infection in children",
]


def build_tiny_bert(path: Path) -> Path:
    """Save a 2-layer, 32-wide BERT with a WordPiece vocabulary of `TINY_SENTENCES` (the same in every run)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, BertTokenizerFast

    # The vocabulary is built, not trained: WordPieceTrainer picks among tokens of equal frequency differently
    # from run to run, and the seeded weights and every score would change with it. Every word of the
    # sentences is a token; other words split into their characters.
    normalizer, pre_tokenizer = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    words = sorted({word for text in TINY_SENTENCES
                    for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))})
    chars = sorted({c for w in words for c in w})
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens = list(dict.fromkeys(special + chars + [f"##{c}" for c in chars] + words))
    tok = Tokenizer(models.WordPiece(vocab={t: i for i, t in enumerate(tokens)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    tokenizer = BertTokenizerFast(tokenizer_object=tok, model_max_length=128)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A tiny BERT checkpoint folder: loads as `SentenceTransformer(dir)` or `CrossEncoder(dir, num_labels=1)`."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tiny_bert_dir, tmp_path_factory) -> Path:
    """A tiny sentence-transformers bi-encoder folder (mean pooling) built from `tiny_bert_dir`."""
    from sentence_transformers import SentenceTransformer

    path = tmp_path_factory.mktemp("tiny-st")
    SentenceTransformer(str(tiny_bert_dir), device="cpu").save(str(path))
    return path


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    if not (SCIFACT / "corpus.jsonl").exists():
        pytest.skip(f"SciFact not found at {SCIFACT} (expected ../shared/data/scifact beside the checkout)")
    return SCIFACT


SCIFACT_SLICE = {"train_queries": 200, "test_queries": 40, "other_documents": 600, "seed": 0}


@pytest.fixture(scope="session")
def scifact_slice_dir(scifact_dir, tmp_path_factory) -> Path:
    """A seeded slice of SciFact in BEIR layout, for tests that encode with the real packaged models: the first
    `SCIFACT_SLICE` training and test queries, every document judged for them, and a seeded draw of other
    documents (the whole corpus takes minutes to encode on a 2-core CPU). Written to a temporary folder."""
    import random

    from hn_trainer.data import load_beir_folder

    data = load_beir_folder(scifact_dir)
    qrels, keep_docs = {}, set()
    for split, n in (("train", SCIFACT_SLICE["train_queries"]), ("test", SCIFACT_SLICE["test_queries"])):
        rows = list(zip(data.qrels[split]["query-id"], data.qrels[split]["corpus-id"], data.qrels[split]["score"]))
        queries = list(dict.fromkeys(q for q, _, _ in rows))[:n]
        qrels[split] = [r for r in rows if r[0] in set(queries)]
        keep_docs |= {d for _, d, _ in qrels[split]}
    others = sorted(set(data.corpus["_id"]) - keep_docs)
    keep_docs |= set(random.Random(SCIFACT_SLICE["seed"]).sample(others, SCIFACT_SLICE["other_documents"]))
    corpus = [(d, t, x) for d, t, x in zip(data.corpus["_id"], data.corpus["title"], data.corpus["text"])
              if d in keep_docs]
    judged = {q for rows in qrels.values() for q, _, _ in rows}
    queries = [(q, t) for q, t in zip(data.queries["_id"], data.queries["text"]) if q in judged]
    return write_beir(tmp_path_factory.mktemp("scifact-slice"), corpus, queries, qrels)


def write_beir(root: Path, corpus, queries, qrels: dict[str, list[tuple[str, str, int]]]) -> Path:
    """Write a small BEIR folder: corpus [(id, title, text)], queries [(id, text)], qrels {split: [(q, d, s)]}."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    with open(root / "corpus.jsonl", "w") as f:
        for _id, title, text in corpus:
            f.write(json.dumps({"_id": _id, "title": title, "text": text}) + "\n")
    with open(root / "queries.jsonl", "w") as f:
        for _id, text in queries:
            f.write(json.dumps({"_id": _id, "text": text}) + "\n")
    (root / "qrels").mkdir(exist_ok=True)
    for split, rows in qrels.items():
        with open(root / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d, s in rows:
                f.write(f"{q}\t{d}\t{s}\n")
    return root


@pytest.fixture
def tiny_beir(tmp_path) -> Path:
    """A 12-document BEIR folder with train and test qrels."""
    corpus = [(f"d{i}", f"title {i}", s) for i, s in enumerate(TINY_SENTENCES)]
    queries = [
        ("q0", "how do i deploy mysql in the cloud"),
        ("q1", "what is a vcn"),
        ("q2", "what does a waf filter"),
        ("q3", "attach a disk to an instance"),
        ("q4", "spread traffic over servers"),
        ("q5", "do vaccines protect children"),
    ]
    qrels = {
        "train": [("q0", "d0", 1), ("q1", "d2", 1), ("q2", "d4", 1), ("q3", "d7", 1)],
        "test": [("q4", "d9", 1), ("q5", "d11", 1), ("q5", "d10", 1)],
    }
    return write_beir(tmp_path / "beir", corpus, queries, qrels)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """An embedding cache shared by the integration tests, so SciFact is encoded once per session."""
    return tmp_path_factory.mktemp("embedding-cache")


@pytest.fixture
def corpus():
    """A 12-document corpus dataset over `TINY_SENTENCES` (the embedding tests')."""
    from embedding_helpers import make_corpus

    return make_corpus()


@pytest.fixture
def queries():
    """The embedding tests' queries as a dataset."""
    from embedding_helpers import make_queries

    return make_queries()
