"""`benchmarks/power.py`: rows x seeds through the recipe, resumable, with intervals and paired tests."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import power  # noqa: E402


def _fake_result(out, row, seed, scores, fused=None, validation=None):
    per_query = {"fine-tuned reranker": scores, "first stage (dense, top 20)": {q: 0.5 for q in scores}}
    if fused:
        per_query["fused"] = fused
    rows = {name: {"mrr@10": float(np.mean(list(v.values())))} for name, v in per_query.items()}
    path = power.result_path(out, row, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"row": row, "seed": seed, "rows": rows, "per_query_mrr@10": per_query,
              "machine": {"cpu": "test cpu"}, "load_before": [0.1, 0.1, 0.1]}
    if validation is not None:
        result["validation_rows"] = {"fine-tuned reranker": {"mrr@10": validation}}
    path.write_text(json.dumps(result))


def test_statistics_average_seeds_per_query_and_test_against_ours(tmp_path):
    queries = [f"q{i}" for i in range(40)]
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        _fake_result(tmp_path, "ours", seed, {q: 1.0 for q in queries}, fused={q: 1.0 for q in queries})
        _fake_result(tmp_path, "random", seed, {q: float(rng.choice([0.0, 0.5])) for q in queries},
                     validation=0.4 + 0.1 * seed)
    _fake_result(tmp_path, "bm25", 0, {q: 1.0 for q in queries})  # one seed only: compared on that seed
    lines = {line["row"]: line for line in power.summarize(power.collect(tmp_path))}
    assert set(lines) == {"first stage", "ours", "random", "bm25"}
    ours, random_row = lines["ours"], lines["random"]
    assert ours["seeds"] == [0, 1] and ours["mrr"] == 1.0 and ours["mrr_ci"] == (1.0, 1.0)
    low, high = random_row["mrr_ci"]
    assert low < random_row["mrr"] < high
    versus = random_row["mrr_vs_ours"]
    assert versus["ours_minus_row"] == pytest.approx(1.0 - random_row["mrr"]) and versus["p_value"] < 0.01
    assert versus["seeds"] == [0, 1] and versus["queries"] == 40
    assert lines["bm25"]["mrr_vs_ours"]["p_value"] == 1.0 and lines["bm25"]["mrr_vs_ours"]["seeds"] == [0]
    assert "fused_mrr" in ours and "fused_mrr" not in random_row  # random has no fused row
    assert random_row["val_mrr"] == pytest.approx(0.45) and "val_mrr" not in ours  # mean over seeds; or none
    report = power.format_report(list(lines.values()), tmp_path)
    assert "| random | 2 | 0.450 / - |" in report and "p = " in report and "test cpu" in report


def test_compare_tests_any_two_rows_on_their_common_seeds(tmp_path, capsys):
    queries = [f"q{i}" for i in range(30)]
    for seed in (0, 1):
        _fake_result(tmp_path, "bm25", seed, {q: 1.0 for q in queries})
    _fake_result(tmp_path, "random", 1, {q: 0.5 for q in queries})
    found = power.collect(tmp_path)
    test = power.compare(found["bm25"], found["random"], "alone")
    assert test["a_minus_b"] == pytest.approx(0.5) and test["p_value"] < 0.01
    assert test["seeds"] == [1] and test["queries"] == 30
    assert power.compare(found["bm25"], found["random"], "fused") is None  # no fused rows
    assert power.main(["--out", str(tmp_path), "--compare", "bm25", "random"]) == 0
    assert "bm25 - random, alone: +0.500 (p = 0.000, seeds [1], 30 queries)" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        power.main(["--out", str(tmp_path), "--compare", "bm25", "dense top-k"])
    assert "no finished runs of 'dense top-k'" in capsys.readouterr().err


def _tiny_config(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir):
    """A recipe config on the tiny models: a warm start and two training steps."""
    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"data: {tiny_beir}\nencoders: {tiny_encoder_dir},lsa:8\nmodel_name_or_path: {tiny_bert_dir}\n"
        f"first_stage_encoder: {tiny_encoder_dir}\nwarm_start: distill\nwarm_start_candidates: 3\n"
        "max_steps: 2\nper_device_train_batch_size: 2\npool_size: 4\nnum_negatives: 1\n"
        "keep_pairs_without_negatives: true\nfill_random_negatives: true\nmax_length: 64\neval_candidates_k: 5\n"
        f"save_strategy: 'no'\nreport_to: none\nuse_cpu: true\ncache_dir: {tmp_path / 'cache'}\n"
    )
    return config


def test_rows_run_through_the_recipe_share_the_warm_start_and_resume(tmp_path, tiny_beir, tiny_bert_dir,
                                                                      tiny_encoder_dir):
    config = _tiny_config(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir)
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--rows", "ours", "random", "--seeds", "0", "--config", str(config), "--out", str(out),
            "--work", str(work)]
    assert power.main(args) == 0
    random_run = json.loads(power.result_path(out, "random", 0).read_text())
    assert "--model_name_or_path" in random_run["command"] and "warm_start/final" in random_run["command"]
    assert "--method random" in random_run["command"] and random_run["load_before"] is not None
    ours = json.loads(power.result_path(out, "ours", 0).read_text())
    assert "warm-started base" in ours["rows"]
    summary = json.loads((out / "summary.json").read_text())
    assert [line["row"] for line in summary] == ["first stage", "warm-started base", "ours", "random"]
    assert (out / "README.md").read_text().startswith("# Comparison rows with seeds")
    # finished runs are not run again
    stamp = power.result_path(out, "random", 0).stat().st_mtime_ns
    assert power.main(args) == 0
    assert power.result_path(out, "random", 0).stat().st_mtime_ns == stamp
    # a fresh checkout keeps the results, not the models: the warm start is built again, checked against the
    # kept ours result, and the missing row fine-tunes it
    import shutil

    shutil.rmtree(work)
    power.result_path(out, "random", 0).unlink()
    assert power.main(args) == 0
    assert json.loads(power.result_path(out, "ours", 0).read_text()) == ours  # not run again
    assert (work / "ours" / "seed0" / "warm_start" / "final" / "config.json").exists()
    rebuilt = json.loads(power.warm_start_result_path(out, 0).read_text())
    assert rebuilt["warm_start_only"] and "fine-tuned reranker" not in rebuilt["rows"]
    assert rebuilt["per_query_mrr@10"]["warm-started base"] == ours["per_query_mrr@10"]["warm-started base"]
    assert rebuilt["rebuilt_vs_kept"]["queries_differing"] == 0
    assert (work / "ours" / "seed0-warm-start" / power.RECORD).exists()  # a finished rebuild is reused
    assert power.result_path(out, "random", 0).exists()
    lines = {line["row"]: line for line in json.loads((out / "summary.json").read_text())}
    assert list(lines) == ["first stage", "warm-started base", "ours", "random"]  # the rebuild is no ours seed
    assert lines["ours"]["seeds"] == [0] and "fused_mrr" in lines["warm-started base"]


@pytest.mark.parametrize("row", list(power.ROWS))
def test_every_row_is_a_valid_recipe_command_on_the_shipped_config(row, tmp_path):
    from hn_trainer.recipe import parse_recipe_args

    command = power.run_command(row, 0, power.DEFAULT_CONFIG, tmp_path / "out", tmp_path / "work", [])
    assert command[1:5] == ["-m", "hn_trainer.cli", "train", "--config"]
    _, _, train, _, recipe = parse_recipe_args(command[4:])
    assert train.seed == 0 and train.output_dir == str(tmp_path / "work" / power.slug(row) / "seed0")
    if row in power.WARM_START_ROWS:  # builds a warm start of its own, the config's kind, and only that
        assert recipe.warm_start != "none" and recipe.warm_start_only
    elif row != power.OURS:  # every other row fine-tunes ours' (or a warm-start row's) base of the same seed
        assert recipe.warm_start == "none"
        base = power.slug(power.BASE_ROWS.get(row, power.OURS))
        assert recipe.model_name_or_path == str(tmp_path / "work" / base / "seed0" / "warm_start" / "final")


def test_groups_split_methods_from_ablations():
    groups = [set(power.GROUPS[name]) for name in ("methods", "ablations", "warm starts")]
    assert set().union(*groups) == set(power.ROWS) and sum(map(len, groups)) == len(power.ROWS)
    assert power.WARM_START_ROWS and all(r.startswith("warm start, ") for r in power.WARM_START_ROWS)
    assert set(power.BASE_ROWS) <= set(power.ABLATIONS) and set(power.BASE_ROWS.values()) <= set(power.WARM_START_ROWS)
    assert power.OURS in power.GROUPS["methods"] and all(r.startswith("ours, ") for r in power.ABLATIONS)
    assert "sentence-transformers mine_hard_negatives" in power.GROUPS["methods"]


def test_the_kept_warm_start_step_is_read_from_the_selection():
    chosen = ("2500 pseudo-queries (titles, spans): checkpoint of step 237 of 313, best mrr@10 on the validation "
              "queries (0.6080; base 0.1012)")
    assert power.kept_warm_start_step({"selection": {"warm_start": chosen}}) == 237
    base_kept = "1000 pseudo-queries (titles): no warm-start checkpoint beat the base on the validation queries"
    assert power.kept_warm_start_step({"selection": {"warm_start": base_kept}}) is None
    assert power.kept_warm_start_step({}) is None
    # the rebuild's command keeps that step (two validation scores 0.0002 apart chose another on another CPU)
    kept = {"selection": {"warm_start": chosen}}
    command = power.rebuild_command(1, power.DEFAULT_CONFIG, Path("out"), Path("work"), [], kept)
    assert command[command.index("--warm_start_step") + 1] == "237" and "--warm_start_only" in command
    assert command[command.index("--output_dir") + 1] == str(Path("work") / "ours" / "seed1-warm-start")
    assert "--warm_start_step" not in power.rebuild_command(1, power.DEFAULT_CONFIG, Path("out"), Path("work"), [],
                                                            {"selection": {"warm_start": base_kept}})


def test_a_rebuilt_warm_start_may_differ_from_the_kept_one_only_within_tolerance():
    kept = {f"q{i}": 0.5 for i in range(100)}
    flipped = {**kept, "q0": 1.0, "q1": 0.333}  # a couple of near-ties decided the other way
    deviation = power.rebuild_deviation(flipped, kept)
    assert deviation["queries_differing"] == 2 and deviation["max_difference"] == pytest.approx(0.5)
    assert power.rebuild_within_tolerance(deviation)
    other_model = {q: (1.0 if i % 4 == 0 else 0.5) for i, q in enumerate(kept)}  # a quarter of the queries move
    assert not power.rebuild_within_tolerance(power.rebuild_deviation(other_model, kept))
    # each bound on its own: many queries moved with the mean unchanged; few moved far
    balanced = {q: 0.5 + (0.1 if i % 2 else -0.1) for i, q in enumerate(kept)}
    assert power.rebuild_deviation(balanced, kept)["mean_difference"] == pytest.approx(0.0)
    assert not power.rebuild_within_tolerance(power.rebuild_deviation(balanced, kept))
    zeros = {q: 0.0 for q in kept}
    assert not power.rebuild_within_tolerance(power.rebuild_deviation({**zeros, "q0": 1.0, "q1": 1.0}, zeros))
    assert not power.rebuild_within_tolerance(power.rebuild_deviation({"q0": 0.5}, kept))  # other queries


def test_a_seeds_own_ours_run_gives_the_shared_rows_before_its_rebuilt_warm_start(tmp_path):
    queries = [f"q{i}" for i in range(10)]
    _fake_result(tmp_path, "ours", 0, {q: 1.0 for q in queries}, fused={q: 1.0 for q in queries})
    for name, score in (("seed0.json", 0.5), ("seed0-warm-start.json", 0.25)):
        path = tmp_path / "ours" / name
        result = json.loads(path.read_text()) if name == "seed0.json" else {
            "row": "ours", "seed": 0, "warm_start_only": True, "rows": {}, "per_query_mrr@10": {}}
        per_query = {row: {q: score for q in queries} for row in ("warm-started base", "warm-started base, fused")}
        result["per_query_mrr@10"].update(per_query)
        result["rows"].update({k: {"mrr@10": score} for k in per_query})
        path.write_text(json.dumps(result))
    found = power.collect(tmp_path)
    assert found["warm-started base"][0]["mrr"] == 0.5 and found["ours"][0]["mrr"] == 1.0


def test_a_warm_start_row_is_scored_as_a_warm_started_base_against_the_configs(tmp_path):
    queries = [f"q{i}" for i in range(30)]
    row = power.WARM_START_ROWS[0]
    _fake_result(tmp_path, "ours", 0, {q: 1.0 for q in queries}, fused={q: 1.0 for q in queries})
    for name, score in (("ours", 0.25), (row, 0.5)):
        path = power.result_path(tmp_path, name, 0)
        result = json.loads(path.read_text()) if name == "ours" else {
            "row": row, "seed": 0, "warm_start_only": True, "rows": {}, "per_query_mrr@10": {},
            "validation_rows": {power.WARM_START: {"mrr@10": 0.6}}, "machine": {"cpu": "test cpu"}}
        per_query = {key: {q: score for q in queries} for key in (power.WARM_START, f"{power.WARM_START}, fused")}
        result["per_query_mrr@10"].update(per_query)
        result["rows"].update({key: {"mrr@10": score} for key in per_query})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result))
    lines = {line["row"]: line for line in power.summarize(power.collect(tmp_path))}
    assert lines[row]["mrr"] == 0.5 and lines[row]["fused_mrr"] == 0.5 and lines[row]["val_mrr"] == 0.6
    versus = lines[row]["mrr_vs_warm_start"]  # the config's warm-started base minus this one, not ours
    assert versus["warm_start_minus_row"] == pytest.approx(-0.25) and "mrr_vs_ours" not in lines[row]
    assert lines["ours"]["mrr"] == 1.0  # a warm-start-only result is no fine-tuned run
    report = power.format_report(list(lines.values()), tmp_path)
    assert "## Other warm starts" in report and "| warm-started base - row, alone |" in report
    assert f"| {row} | 1 | 0.600 / - | 0.500 [0.500, 0.500] | -0.250 (p = 0.000, 1 seed) |" in report


def test_a_row_fine_tunes_a_warm_start_rows_model_and_rebuilds_it_on_a_fresh_checkout(
        tmp_path, monkeypatch, tiny_beir, tiny_bert_dir, tiny_encoder_dir):
    config = _tiny_config(tmp_path, tiny_beir, tiny_bert_dir, tiny_encoder_dir)
    warm, tuned = "warm start, taught by the tiny encoder", "ours, tiny encoder, on the warm start it teaches"
    monkeypatch.setattr(power, "ROWS", {power.OURS: [], warm: ["--warm_start_encoders", str(tiny_encoder_dir)],
                                        tuned: ["--encoders", str(tiny_encoder_dir)]})
    monkeypatch.setattr(power, "WARM_START_ROWS", (warm,))
    monkeypatch.setattr(power, "BASE_ROWS", {tuned: warm})
    out, work = tmp_path / "out", tmp_path / "work"
    args = ["--rows", tuned, "--seeds", "0", "--config", str(config), "--out", str(out), "--work", str(work)]
    assert power.main(args) == 0  # the warm-start row runs first, for the model the row fine-tunes
    kept = json.loads(power.result_path(out, warm, 0).read_text())
    assert kept["warm_start_only"] and f"--warm_start_encoders {tiny_encoder_dir}" in kept["command"]
    run = json.loads(power.result_path(out, tuned, 0).read_text())
    assert f"{power.slug(warm)}/seed0/warm_start/final" in run["command"] and "--warm_start none" in run["command"]
    assert not power.result_path(out, power.OURS, 0).exists()  # ours' warm start is not needed
    # a fresh checkout: the warm-start row's model is built again, checked against its kept result
    import shutil

    shutil.rmtree(work)
    power.result_path(out, tuned, 0).unlink()
    assert power.main(args) == 0
    assert json.loads(power.result_path(out, warm, 0).read_text()) == kept
    rebuilt = json.loads(power.warm_start_result_path(out, 0, warm).read_text())
    assert rebuilt["rebuilt_vs_kept"]["queries_differing"] == 0 and rebuilt["command"] != kept["command"]
    assert (work / power.slug(warm) / "seed0" / "warm_start" / "final" / "config.json").exists()
    lines = {line["row"]: line for line in json.loads((out / "summary.json").read_text())}
    assert lines[warm]["seeds"] == [0] and lines[tuned]["seeds"] == [0]
