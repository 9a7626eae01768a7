"""The unlabeled warm start: pseudo-queries from titles and spans, listwise distillation rows from the ensemble,
and the recipe stage that keeps the best warm-start checkpoint on validation queries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hn_trainer.errors import ConfigError, HNTrainerError
from hn_trainer.training.warm_start import distillation_dataset, pseudo_queries, sentences, student_scale

TITLES = ["Vaccines", "", "Networks"]
BODIES = [
    "Vaccines reduce infection in young children. Trials enrolled five thousand children in ten countries. "
    "Side effects were mild.",
    "Object storage keeps unstructured data in buckets. Buckets can be public or private to a tenancy.",
    "A virtual cloud network is private.",
]


def test_sentences_split_after_end_marks_before_capitals():
    assert sentences("A b c. D e! 3 f? g h. ") == ["A b c.", "D e!", "3 f? g h."]


def test_titles_and_spans_with_the_span_taken_out_of_the_document():
    pseudo = pseudo_queries(TITLES, BODIES, min_span_words=4, seed=1)
    titles = [p for p in pseudo if p.kind == "title"]
    spans = [p for p in pseudo if p.kind == "span"]
    # a title for every titled document, shown its body alone
    assert [(p.text, p.row, p.document) for p in titles] == [("Vaccines", 0, BODIES[0]), ("Networks", 2, BODIES[2])]
    # a span for every document with a second sentence; the one-sentence document has none
    assert [p.row for p in spans] == [0, 1]
    for p in spans:
        assert p.text in BODIES[p.row] and p.text not in p.document
        assert len(p.text.split()) >= 4
        assert p.document.startswith(TITLES[p.row])  # the title stays with the rest of the body
    # seeded: the same spans again, and a different seed may choose others but always a real sentence
    assert pseudo_queries(TITLES, BODIES, min_span_words=4, seed=1) == pseudo
    assert len(pseudo_queries(TITLES, BODIES, kinds=["spans"], max_queries=1, seed=3)) == 1
    with pytest.raises(ConfigError, match="kinds must be among"):
        pseudo_queries(TITLES, BODIES, kinds=["questions"])


def test_distillation_rows_follow_the_teacher_with_the_own_document_first():
    rng = np.random.default_rng(0)
    corpus = rng.normal(size=(6, 4)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    titles = [f"t{i}" for i in range(6)]
    bodies = [f"body {i}" for i in range(6)]
    pseudo = pseudo_queries(titles, bodies, kinds=["titles"])
    queries = corpus + 0.3 * rng.normal(size=corpus.shape).astype(np.float32)
    ds = distillation_dataset(pseudo, queries, corpus, titles, bodies, candidates=3, temperature=0.1, margin=0.05)
    assert ds.column_names == ["query", "documents", "labels"] and len(ds) == 6
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for p, row in zip(pseudo, ds):
        sims = corpus @ qn[p.row]
        others = [i for i in np.argsort(-sims) if i != p.row][:3]
        assert row["documents"] == [bodies[p.row]] + [bodies[i] for i in others]
        assert np.allclose(row["labels"][1:], sims[others] / 0.1, atol=1e-4)
        # the pseudo-positive is at least `margin` above the best candidate, never below its own similarity
        assert row["labels"][0] >= max(row["labels"][1:]) + 0.05 / 0.1 - 1e-4
        assert row["labels"][0] >= sims[p.row] / 0.1 - 1e-4
    with pytest.raises(HNTrainerError, match="no pseudo-query"):
        distillation_dataset([], queries, corpus, titles, bodies)


def test_recipe_distills_and_keeps_the_better_of_base_and_checkpoints(tmp_path, tiny_beir, tiny_bert_dir,
                                                                      tiny_encoder_dir):
    from test_recipe import _args

    from hn_trainer.cli import main

    args = _args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, "--warm_start", "distill",
                 "--warm_start_candidates", "3", "--warm_start_eval_steps", "2", "--validation_queries", "1")
    assert main(["train", *args]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "warm-started base" in results["rows"]
    chosen = results["selection"]["warm_start"]
    assert "pseudo-queries (titles, spans)" in chosen and "validation queries" in chosen
    assert results["settings"]["recipe"]["warm_start"] == "distill"
    # the warm-started base is fused with the first stage too, with a weight of its own, on the validation run of
    # the weights kept (the score the choice above names, not a new scoring)
    import re

    assert "warm-started base, fused" in results["rows"] and 0.0 <= results["warm_start_fusion_weight"] <= 1.0
    validation = results["validation_rows"]
    kept = float(re.search(r"(?:best mrr@10 on the validation queries|mrr@10) \(?([0-9.]+)", chosen).group(1))
    assert validation["warm-started base"]["mrr@10"] == pytest.approx(kept, abs=1e-4)
    assert validation["warm-started base, fused"]["mrr@10"] >= validation["warm-started base"]["mrr@10"] - 1e-9
    # the warm-started base is saved for reuse as a base model, and every row has its per-query scores
    from sentence_transformers import CrossEncoder

    assert CrossEncoder(str(tmp_path / "run" / "warm_start" / "final")).predict([("a", "b")]).shape == (1,)
    per_query = results["per_query_mrr@10"]
    assert set(per_query) == set(results["rows"])
    for name, scores in per_query.items():
        assert len(scores) == results["eval_queries"]
        assert sum(scores.values()) / len(scores) == pytest.approx(results["rows"][name]["mrr@10"])


def test_a_set_warm_start_step_is_kept_instead_of_the_best(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir,
                                                             capsys):
    import re

    from test_recipe import _args

    from hn_trainer.cli import main

    common = ("--warm_start", "distill", "--warm_start_candidates", "3", "--warm_start_eval_steps", "1",
              "--validation_queries", "1", "--warm_start_only", "true", "--evaluate_base", "false")
    args = _args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, *common, "--warm_start_step", "1")
    assert main(["train", *args]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    chosen = results["selection"]["warm_start"]
    assert re.search(r"checkpoint of step 1 of \d+, set by --warm_start_step \(mrr@10 ([0-9.]+)", chosen), chosen
    kept = float(re.search(r"mrr@10 ([0-9.]+) on the validation queries", chosen).group(1))
    # the validation row is the run made at step 1, which the trainer's log records too
    assert results["validation_rows"]["warm-started base"]["mrr@10"] == pytest.approx(kept, abs=1e-4)
    state = json.loads(next((tmp_path / "run" / "warm_start").glob("checkpoint-*/trainer_state.json")).read_text())
    at_step = [e["eval_mrr@10"] for e in state["log_history"] if e.get("step") == 1 and "eval_mrr@10" in e]
    assert at_step and at_step[0] == pytest.approx(kept, abs=1e-4)
    # a step the warm start does not validate is refused before it trains
    (tmp_path / "run").rename(tmp_path / "first")
    every_two = [("2" if a == "1" and common[i - 1] == "--warm_start_eval_steps" else a) for i, a in enumerate(common)]
    args = _args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, *every_two, "--warm_start_step", "1")
    assert main(["train", *args]) == 1
    assert "--warm_start_step 1: the warm start validates at steps [2" in capsys.readouterr().err
    assert not (tmp_path / "run" / "warm_start").exists()


def test_a_teacher_named_apart_from_the_miners_is_the_teacher_it_is_as_the_mining_ensemble(
        tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, monkeypatch):
    from test_recipe import _args

    from hn_trainer.cli import main
    from hn_trainer.training import warm_start

    taught = []  # the teacher's encoders and its distillation targets, per run

    def recording(data, mined, **kwargs):
        dataset = build(data, mined, **kwargs)
        taught.append((list(mined.ensemble.per_encoder_dims), dataset["labels"]))
        return dataset

    build = warm_start.warm_start_dataset
    monkeypatch.setattr(warm_start, "warm_start_dataset", recording)
    common = ("--warm_start", "distill", "--warm_start_candidates", "3", "--warm_start_eval_steps", "1",
              "--validation_queries", "1", "--warm_start_only", "true", "--evaluate_base", "false")
    runs = {"mining ensemble": (), "lsa named apart": ("--warm_start_encoders", "lsa:8"),
            "lsa mining": ("--encoders", "lsa:8")}
    results = {}
    for name, extra in runs.items():  # the mining ensemble of `_args`: the tiny encoder and LSA
        assert main(["train", *_args(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir, *common, *extra)]) == 0
        results[name] = json.loads((tmp_path / "run" / "results.json").read_text())
        (tmp_path / "run").rename(tmp_path / name.replace(" ", "-"))
    (default, default_labels), (apart, apart_labels), (alone, alone_labels) = taught
    assert default == [str(tiny_encoder_dir), "lsa:8"] and apart == alone == ["lsa:8"]
    # named apart, LSA teaches what it teaches as the mining ensemble (the same PCA fit), not what mining's does
    assert apart_labels == alone_labels and apart_labels != default_labels
    assert results["lsa named apart"]["settings"]["recipe"]["warm_start_encoders"] == "lsa:8"


def test_warm_start_encoders_read_from_a_list_and_empty_means_the_mining_ensemble():
    from hn_trainer.recipe import RecipeArguments

    assert RecipeArguments(warm_start_encoders=["a", "lsa:8"]).warm_start_encoder_list == ["a", "lsa:8"]
    assert RecipeArguments(warm_start_encoders=" , ").warm_start_encoders is None
    assert RecipeArguments().warm_start_encoder_list == []


def test_keep_step_callback_copies_the_weights_and_the_run_of_its_step():
    from types import SimpleNamespace

    import torch
    from transformers import TrainerControl, TrainerState

    from hn_trainer.training.callbacks import KeepStepCallback

    validation = SimpleNamespace(last_run={"q": {"d": 1.0}})
    model = torch.nn.Linear(2, 1)
    keeper = KeepStepCallback(2, validation, "eval_mrr@10")
    state, control = TrainerState(), TrainerControl()
    for step in (1, 2, 3):
        state.global_step = step
        keeper.on_step_end(None, state, control, model=model)
        keeper.on_evaluate(None, state, control, metrics={"eval_mrr@10": step / 10})
        validation.last_run = {"q": {"d": float(step + 1)}}
        if step == 2:
            expected = model.weight.detach().clone()
        with torch.no_grad():
            model.weight.add_(1.0)  # the next step's update
    assert torch.equal(keeper.weights["weight"], expected) and not torch.equal(model.weight, expected)
    assert keeper.score == 0.2 and keeper.run == {"q": {"d": 2.0}}


def test_warm_start_arguments_are_checked(capsys):
    from hn_trainer.cli import main

    assert main(["train", "--warm_start_kinds", "questions"]) == 1
    assert "--warm_start_kinds must name titles and/or spans" in capsys.readouterr().err
    assert main(["train", "--warm_start_temperature", "0"]) == 1
    assert "--warm_start_temperature must be positive" in capsys.readouterr().err
    assert main(["train", "--warm_start_only", "true"]) == 1  # the default warm start is none
    assert "--warm_start_only needs a warm start" in capsys.readouterr().err
    assert main(["train", "--warm_start_step", "3"]) == 1
    assert "--warm_start_step picks a checkpoint of --warm_start distill" in capsys.readouterr().err
    assert main(["train", "--warm_start", "distill", "--warm_start_step", "0"]) == 1
    assert "--warm_start_step must be at least 1" in capsys.readouterr().err


def test_the_student_is_tempered_like_the_teacher():
    import torch

    scale = student_scale(0.05)
    logits = torch.tensor([0.01, 0.02, -0.01])
    assert torch.allclose(scale(logits), logits / 0.05)
    assert "temperature=0.05" in repr(scale)
