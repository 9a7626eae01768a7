"""Model card text, the Hub folder save_for_hub writes (contents, reload), and what a push would upload."""

from __future__ import annotations

import pytest
import torch
import yaml

from hn_trainer.errors import ConfigError
from hn_trainer.training import (
    HardNegativeDataset,
    HardNegativeTrainer,
    HardNegativeTrainingArguments,
    RerankerCardData,
    files_to_push,
    generate_model_card,
    push_folder_to_hub,
    save_for_hub,
)

DOCS = [
    "deploy a mysql database on cloud infrastructure",
    "install mysql on premises servers",
    "a virtual cloud network vcn is a private network",
    "a firewall controls network traffic",
]


def card_data() -> RerankerCardData:
    return RerankerCardData(
        model_id="acme/minilm-reranker-hn",
        base_model="sentence-transformers/all-MiniLM-L6-v2",
        datasets=["BeIR/scifact"],
        language=["en"],
        license="apache-2.0",
        mining={
            "encoders": ["sentence-transformers/all-MiniLM-L6-v2", "lsa"],
            "pca_variance": 0.95,
            "variance_kept": 0.9512,
            "dim_pca": 212,
            "metric": "cosine",
            "conditions": "both",
            "pool_size": 8,
        },
        eval_metrics={
            "base model": {"mrr@3": 0.42, "mrr@10": 0.45},
            "fine-tuned": {"mrr@3": 0.57, "mrr@10": 0.64},
        },
        eval_description="SciFact test queries, BM25 top-100 candidates.",
    )


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_card_front_matter_and_body():
    card = card_data()
    card.training = {"loss": "lce", "num_negatives": 4, "negative_strategy": "hardest", "learning_rate": 2e-5}
    meta, body = split_card(generate_model_card(card))
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "text-ranking"
    assert {"cross-encoder", "reranker", "hard-negatives"} <= set(meta["tags"])
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["datasets"] == ["BeIR/scifact"] and meta["license"] == "apache-2.0"
    assert (
        "[sentence-transformers/all-MiniLM-L6-v2](https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)"
        in body
    )
    assert 'CrossEncoder("acme/minilm-reranker-hn")' in body
    assert "| Distance | `cosine` |" in body
    assert "| PCA variance kept (target) | 0.95 |" in body
    assert "| Pool size per pair | 8 |" in body
    assert "| Negatives per pair and step | 4 |" in body
    assert "| Model | mrr@3 | mrr@10 |" in body
    assert "| fine-tuned | 0.5700 | 0.6400 |" in body
    assert "SciFact test queries" in body
    empty = generate_model_card(RerankerCardData())
    assert "No evaluation was recorded." in empty and "base_model" not in split_card(empty)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_bert_dir):
    tmp_path = tmp_path_factory.mktemp("card-train")
    rows = [
        {
            "query_id": f"q{i}",
            "query": f"query {i} about mysql",
            "positive_id": f"d{i}",
            "positive": DOCS[i],
            "negative_ids": [f"d{(i + 1) % 4}"],
            "negatives": [DOCS[(i + 1) % 4]],
        }
        for i in range(4)
    ]
    args = HardNegativeTrainingArguments(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=2,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        loss="lce",
        max_length=24,
        learning_rate=1e-3,
    )
    trainer = HardNegativeTrainer(str(tiny_bert_dir), args, train_dataset=HardNegativeDataset.from_rows(rows))
    trainer.train()
    return trainer


def test_save_for_hub_writes_a_loadable_folder(tmp_path, trained):
    from sentence_transformers import CrossEncoder

    out = tmp_path / "hub"
    (out / "stale").mkdir(parents=True)  # an existing folder is replaced as a whole
    save_for_hub(trained, output_dir=out, card_data=card_data())
    names = {p.name for p in out.iterdir()}
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    assert "stale" not in names and not any(n.startswith(".") for n in names)
    meta, body = split_card((out / "README.md").read_text())
    assert meta["pipeline_tag"] == "text-ranking"
    assert "| Loss | `lce` |" in body and "| Steps trained | 2 |" in body
    assert "the raw logit" in body  # lce -> identity activation

    model = CrossEncoder(str(out), device="cpu")
    assert isinstance(model.activation_fn, torch.nn.Identity) and model.max_seq_length == 24
    pairs = [("query 0 about mysql", d) for d in DOCS]
    tok = trained.processing_class
    features = tok(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        padding=True,
        truncation=True,
        max_length=24,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = trained.model.eval()(**features).logits.reshape(-1)
    assert torch.allclose(model.predict(pairs, convert_to_tensor=True).cpu(), expected, atol=1e-5)

    # what a push uploads: the model folder, not checkpoints or training state
    (out / "checkpoint-2").mkdir()
    (out / "checkpoint-2" / "optimizer.pt").write_bytes(b"x")
    (out / "training_args.bin").write_bytes(b"x")
    pushed = files_to_push(out)
    assert "README.md" in pushed and "model.safetensors" in pushed and "config.json" in pushed
    assert not any(p.startswith("checkpoint-") for p in pushed) and "training_args.bin" not in pushed


def test_push_folder_to_hub_uploads_the_folder(tmp_path, trained, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)

        def upload_folder(self, **kwargs):
            calls["upload"] = kwargs
            return type("Info", (), {"commit_url": "https://hub/acme/m/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = save_for_hub(trained.model, trained.processing_class, tmp_path / "m", card_data(), max_length=24)
    url = push_folder_to_hub(out, "acme/m", token="t", private=True)
    assert url == "https://hub/acme/m/commit/1"
    assert calls["create"] == ("acme/m", {"private": True, "exist_ok": True, "repo_type": "model"})
    assert calls["upload"]["folder_path"] == str(out)
    assert set(calls["upload"]["allow_patterns"]) == set(files_to_push(out))
    with pytest.raises(ConfigError, match="config.json"):
        push_folder_to_hub(tmp_path, "acme/m")
    with pytest.raises(ConfigError, match="tokenizer"):
        save_for_hub(trained.model, None, tmp_path / "x")


def test_trainer_card_is_what_push_to_hub_uploads(trained):
    from pathlib import Path

    from sentence_transformers import CrossEncoder

    trained.card_data = card_data()
    trained.save_model()
    trained.create_model_card()  # what Trainer.push_to_hub writes before uploading output_dir
    out = Path(trained.args.output_dir)
    meta, body = split_card((out / "README.md").read_text())
    assert meta["library_name"] == "sentence-transformers" and meta["pipeline_tag"] == "text-ranking"
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert "| Loss | `lce` |" in body
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json"} <= set(files_to_push(out))
    assert isinstance(CrossEncoder(str(out), device="cpu").activation_fn, torch.nn.Identity)
    # without card data the base model is the name the trainer was given (a local folder: body only,
    # the Hub accepts only model ids as base_model)
    trained.card_data = None
    trained.create_model_card()
    meta, body = split_card((out / "README.md").read_text())
    assert "base_model" not in meta and f"`{trained.base_model_name}`" in body
