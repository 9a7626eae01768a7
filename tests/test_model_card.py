"""HardNegativeModelCardData: the host's card with the mining section; reload and what a push uploads."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from hn_trainer.training.model_card import (
    HardNegativeModelCardData,
    card_template_path,
    folder_model_name,
)

DOCS = [
    "deploy a mysql database on cloud infrastructure",
    "install mysql on premises servers",
    "a virtual cloud network vcn is a private network",
    "a firewall controls network traffic",
]
PAIRS = [("query 0 about mysql", d) for d in DOCS]
BASE = "sentence-transformers/all-MiniLM-L6-v2"


def card_data(**kwargs) -> HardNegativeModelCardData:
    defaults = {
        "model_id": "acme/minilm-reranker-hn",
        "language": ["en"],
        "license": "apache-2.0",
        "local_files_only": True,
        "mining": {
            "encoders": [BASE, "lsa"],
            "pca_variance": 0.95,
            "variance_kept": 0.9512,
            "dim_pca": 212,
            "metric": "cosine",
            "conditions": "both",
            "pool_size": 8,
            "pairs": 10,
            "pairs_without_negatives": 2,
        },
        "eval_rows": {
            "base model": {"mrr@3": 0.42, "mrr@10": 0.45},
            "fine-tuned": {"mrr@3": 0.57, "mrr@10": 0.64},
        },
        "eval_description": "SciFact test queries, BM25 top-100 candidates.",
    }
    defaults.update(kwargs)
    return HardNegativeModelCardData(**defaults)


def make_model(tiny_bert_dir, card=None, **kwargs):
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu", model_card_data=card, **kwargs)
    with torch.no_grad():
        model.model.classifier.weight.normal_(0.0, 30.0)
    return model


def split_card(text: str) -> tuple[dict, str]:
    assert text.startswith("---\n")
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def read_card(folder: Path) -> tuple[dict, str]:
    return split_card((folder / "README.md").read_text(encoding="utf-8"))


def files_of(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_card_front_matter_and_body(tmp_path, tiny_bert_dir):
    model = make_model(tiny_bert_dir, card_data())
    model.model_card_data.base_model = BASE  # what the host sets once it has found the base model on the Hub
    model.save_pretrained(str(tmp_path / "scifact-reranker"))
    meta, body = read_card(tmp_path / "scifact-reranker")
    assert meta["library_name"] == "sentence-transformers"
    assert meta["pipeline_tag"] == "text-ranking"
    assert {"sentence-transformers", "cross-encoder", "reranker", "hard-negatives", "hn-trainer"} <= set(
        meta["tags"]
    )
    assert meta["base_model"] == BASE
    assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
    assert f"[{BASE}](https://huggingface.co/{BASE})" in body
    # title and usage name the model id
    assert body.lstrip().startswith("# acme/minilm-reranker-hn\n")
    assert 'CrossEncoder("acme/minilm-reranker-hn")' in body and "cross_encoder_model_id" not in body
    # the mining section, before the host's training details
    assert body.index("## Hard negatives") < body.index("## Training Details")
    assert "| Encoders (ensemble) | `sentence-transformers/all-MiniLM-L6-v2`, `lsa` |" in body
    assert "| Distance | `cosine` |" in body
    assert "| PCA variance kept (target) | 0.95 |" in body
    assert "| PCA variance kept (actual) | 0.9512 |" in body
    assert "| Dimension after PCA | 212 |" in body
    assert "| Conditions | `both` |" in body
    assert "| Pool size per pair | 8 |" in body
    assert "| Training pairs | 10 |" in body and "| Pairs without a negative | 2 |" in body
    assert "a sigmoid of the logit" in body  # one label: predict's default activation
    # the results table
    assert "| Model | mrr@3 | mrr@10 |" in body
    assert "| fine-tuned | 0.5700 | 0.6400 |" in body
    assert "SciFact test queries" in body


def test_empty_card_and_tags(tmp_path, tiny_bert_dir, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # this test's own copy of the card template
    # a dataset entry the trainer never completed (columns, loss) would break the host's template
    card = HardNegativeModelCardData(
        local_files_only=True, tags=["custom"], fusion_weight=0.7, train_datasets=[{"name": "SciFact"}]
    )
    assert card.tags == ["custom", "hard-negatives", "hn-trainer"]
    model = make_model(tiny_bert_dir, card)
    model.save_pretrained(str(tmp_path / "empty"))
    meta, body = read_card(tmp_path / "empty")
    assert "base_model" not in meta and {"custom", "hard-negatives"} <= set(meta["tags"])
    assert "## Hard negatives" in body and "Not recorded." in body and "No evaluation was recorded." in body
    assert "reranker weight 0.7" in body
    assert card.train_datasets == [{"name": "SciFact"}]  # left out of the rendering only
    template = card_template_path()
    assert template == card.template_path and template.is_relative_to(tmp_path)
    assert "{{ hard_negatives_section }}" in template.read_text()
    template.unlink()  # e.g. a cleaned temporary directory: the next save writes it again
    model.save_pretrained(str(tmp_path / "again"))
    assert "## Hard negatives" in read_card(tmp_path / "again")[1]


def test_card_names_the_folder_when_there_is_no_model_id(tmp_path, tiny_bert_dir):
    model = make_model(tiny_bert_dir, card_data(model_id=None))
    for folder in (tmp_path / "scifact-reranker", tmp_path / "scifact-reranker" / "final"):
        model.save_pretrained(str(folder))
        _, body = read_card(folder)
        assert body.lstrip().startswith("# scifact-reranker\n")
        assert 'CrossEncoder("scifact-reranker")' in body
        assert "cross_encoder_model_id" not in body and 'CrossEncoder("final")' not in body
    # a model id set later (the trainer's hub_model_id, push_to_hub) takes over
    model.model_card_data.set_model_id("acme/scifact-reranker")
    model.save_pretrained(str(tmp_path / "again"))
    _, body = read_card(tmp_path / "again")
    assert body.lstrip().startswith("# acme/scifact-reranker\n")
    assert 'CrossEncoder("acme/scifact-reranker")' in body
    # a name given explicitly stays the title
    named = make_model(tiny_bert_dir, card_data(model_id=None, model_name="SciFact reranker"))
    named.save_pretrained(str(tmp_path / "named"))
    _, body = read_card(tmp_path / "named")
    assert body.lstrip().startswith("# SciFact reranker\n") and 'CrossEncoder("named")' in body


def test_folder_model_name():
    assert folder_model_name("runs/scifact-reranker") == "scifact-reranker"
    assert folder_model_name("runs/scifact-reranker/final") == "scifact-reranker"
    assert folder_model_name("runs/scifact-reranker/checkpoint-500") == "scifact-reranker"
    assert (
        folder_model_name("/tmp/tmpab3_x9qz/model") == "/tmp/tmpab3_x9qz/model"
    )  # nothing better than the path
    assert folder_model_name("out/.final.k2j3h4.tmp/final") == folder_model_name(
        "out"
    )  # an atomic_path temporary


def test_saved_folder_reloads_with_the_same_scores(tmp_path, tiny_bert_dir):
    from sentence_transformers import CrossEncoder

    model = make_model(tiny_bert_dir, card_data(), activation_fn=torch.nn.Identity(), max_length=24)
    out = tmp_path / "hub"
    model.save_pretrained(str(out))
    names = set(files_of(out))
    assert {
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    _, body = read_card(out)
    assert "the raw logit" in body  # identity activation (an LCE-trained reranker)

    reloaded = CrossEncoder(str(out), device="cpu")
    assert isinstance(reloaded.activation_fn, torch.nn.Identity) and reloaded.max_seq_length == 24
    expected = model.predict(PAIRS, convert_to_tensor=True)
    assert torch.allclose(reloaded.predict(PAIRS, convert_to_tensor=True), expected, atol=1e-5)
    assert float(expected.std()) > 1e-4  # the comparison is between distinct scores (atol 1e-5)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """`HfApi.create_repo` / `upload_folder` that copy the uploaded folder aside instead of uploading."""
    import huggingface_hub

    calls = {"uploads": []}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        copy = tmp_path / f"uploaded-{len(calls['uploads'])}"
        shutil.copytree(folder_path, copy)
        calls["uploads"].append({"repo_id": repo_id, "folder": copy, **kwargs})
        return SimpleNamespace(commit_url=f"https://hub/{repo_id}/commit/1", pr_url=None)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return calls


def test_push_to_hub_uploads_the_saved_folder(tmp_path, tiny_bert_dir, fake_hub):
    model = make_model(tiny_bert_dir, card_data(model_id=None))
    url = model.push_to_hub("acme/m", token="t", private=True, replace_model_card=True)
    assert url == "https://hub/acme/m/commit/1"
    assert fake_hub["create"][0] == "acme/m" and fake_hub["create"][1]["private"] is True
    (upload,) = fake_hub["uploads"]
    pushed = upload["folder"]
    # exactly what save_pretrained writes for the same model, README included
    model.save_pretrained(str(tmp_path / "m"))
    assert files_of(pushed) == files_of(tmp_path / "m")
    assert (pushed / "README.md").read_text() == (tmp_path / "m" / "README.md").read_text()
    meta, body = read_card(pushed)
    assert "hard-negatives" in meta["tags"] and "## Hard negatives" in body
    assert 'CrossEncoder("acme/m")' in body  # the repository, not the temporary folder it was saved to
    # a saved folder uploads as it is
    model.push_to_hub("acme/m", local_model_path=str(tmp_path / "m"), exist_ok=True)
    assert files_of(fake_hub["uploads"][-1]["folder"]) == files_of(tmp_path / "m")


def test_card_after_training_lists_mining_training_and_metrics(tmp_path, tiny_bert_dir):
    from datasets import Dataset
    from sentence_transformers import CrossEncoder
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments

    from hn_trainer.evaluation import RerankingEvaluator

    docs = {f"d{i}": text for i, text in enumerate(DOCS)}
    queries = {"q0": "deploy mysql in the cloud", "q1": "what is a vcn"}
    evaluator = RerankingEvaluator(
        {q: {d: 0.0 for d in docs} for q in queries},
        queries,
        docs,
        {"q0": {"d0": 1}, "q1": {"d2": 1}},
        name="dev",
    )
    card = card_data(model_id=None, train_datasets=[{"name": "SciFact", "id": "BeIR/scifact"}])
    model = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu", model_card_data=card)
    train = Dataset.from_dict({"query": ["deploy mysql", "what is a vcn"], "response": [DOCS[0], DOCS[3]],
                               "label": [1.0, 0.0]})  # fmt: skip
    args = CrossEncoderTrainingArguments(
        output_dir=str(tmp_path / "scifact-reranker"), use_cpu=True, report_to="none", max_steps=2,
        per_device_train_batch_size=1, learning_rate=1e-3, eval_strategy="steps", eval_steps=1,
        save_strategy="no", hub_model_id="acme/trained-reranker", disable_tqdm=True,
    )  # fmt: skip
    trainer = CrossEncoderTrainer(model, args, train_dataset=train, evaluator=evaluator)
    trainer.train()
    trainer.create_model_card()  # what the trainer writes in output_dir (and push_to_hub uploads)
    out = tmp_path / "scifact-reranker"
    meta, body = read_card(out)
    assert {"generated_from_trainer", "hard-negatives", "hn-trainer"} <= set(meta["tags"])
    assert "| Distance | `cosine` |" in body and "| Pool size per pair | 8 |" in body  # mining
    assert "BinaryCrossEntropyLoss" in body and "### Training Hyperparameters" in body  # training
    assert "[SciFact](https://huggingface.co/datasets/BeIR/scifact)" in body and "#### SciFact" in body
    assert "- `max_steps`: 2" in body and "- `learning_rate`: 0.001" in body
    evaluation = body.split("## Evaluation", 1)[1].split("## Training Details", 1)[0]  # metrics
    assert "#### Reranking" in evaluation and "**mrr@10**" in evaluation and "`dev`" in evaluation
    assert "| fine-tuned | 0.5700 | 0.6400 |" in body
    assert 'CrossEncoder("acme/trained-reranker")' in body  # the trainer's hub_model_id
    trainer.save_model()
    reloaded = CrossEncoder(str(out), device="cpu")
    np.testing.assert_allclose(reloaded.predict(PAIRS), model.predict(PAIRS), atol=1e-5)
