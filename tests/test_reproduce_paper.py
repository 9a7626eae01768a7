"""The paper-reproduction benchmark: row selection, statistics helpers, and a tiny end-to-end run that resumes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce_paper.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("reproduce_paper", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduce_paper"] = module
    spec.loader.exec_module(module)
    return module


def test_rows_resolve_groups_in_table_order(bench):
    assert bench.resolve_rows("ours,random") == ["random", "ours"]
    assert bench.resolve_rows("default") == [r for r in bench.ROWS if r != "random_cold"]
    assert set(bench.resolve_rows("ablations")) == {
        "ours",
        "single_best",
        "concat",
        "pca70",
        "pca80",
        "pca99",
        "cond1",
    }
    with pytest.raises(bench.ConfigError, match="unknown row"):
        bench.resolve_rows("ours,nope")


def test_quick_preset_and_explicit_flags(bench):
    quick, _ = bench.parse_settings(["--quick", "--train_steps", "5"])
    assert quick.train_steps == 5  # the flag wins over the preset
    assert quick.max_test_queries == 60 and quick.encoder_list == list(bench.DEFAULT_ENCODERS)
    assert quick.output_dir.endswith("paper/quick")
    full, _ = bench.parse_settings([])
    assert full.encoder_list == list(bench.DEFAULT_ENCODERS) and full.max_test_queries is None
    assert full.remine_steps == 27 and (full.train_steps % full.remine_steps) != 0  # never on the last step
    with pytest.raises(bench.ConfigError):
        bench.parse_settings(["--fusion_grid", "0,2"])


def test_holm_matches_the_step_down_definition(bench):
    adjusted = bench.holm({"a": 0.01, "b": 0.04, "c": 0.03})
    assert adjusted == pytest.approx({"a": 0.03, "c": 0.06, "b": 0.06})
    assert bench.holm({"a": 0.6, "b": 0.7}) == {"a": 1.0, "b": 1.0}


def test_fusion_weight_is_chosen_on_validation_and_ties_go_to_the_reranker(bench):
    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    reranker = {"q": {"a": 0.0, "b": 0.0, "c": 5.0}}
    weight, grid = bench.choose_fusion_weight(first, reranker, {"q": {"c": 1}}, [0.0, 0.5, 1.0])
    assert weight == 1.0 and grid["0"] == pytest.approx(1 / 3) and grid["1"] == 1.0
    wrong = {"q": {"a": 0.0, "b": 5.0, "c": 5.0}}
    weight, _ = bench.choose_fusion_weight(first, wrong, {"q": {"a": 1}}, [0.0, 0.5, 1.0])
    assert weight == 0.0
    tie, _ = bench.choose_fusion_weight(first, first, {"q": {"a": 1}}, [0.0, 0.5, 1.0])
    assert tie == 1.0


@pytest.mark.slow
def test_claims_follow_the_paired_tests(bench):
    def test(difference, p):
        return {"mean_difference": difference, "p_value": p, "p_holm": p, "n": 300,
                "verdict": bench.verdict(difference, p)}

    methods = {n: test(0.05, 0.001) for n in bench.TABLES["methods"] if n not in ("ours", "base_warm")}
    methods["positives_only"] = test(-0.1, 0.001)  # training without negatives is not a way of choosing them
    methods["bm25"] = test(-0.02, 0.4)  # BM25 as good as ours: the first claim is not shown
    ablations = {"single_best": test(-0.03, 0.01), "concat": test(0.0, 0.9), "pca80": test(0.04, 0.01)}
    agg = {
        "paired_tests": {"alone": {"methods": methods, "ablations": ablations}},
        "length": {"tests": {"alone": {"short": test(0.02, 0.3), "long": test(0.06, 0.01)}}},
    }
    by_claim = {c["claim"].split(" ")[0] + str(i): c for i, c in enumerate(bench.claims(agg))}
    status = [c["alone"]["status"] for c in by_claim.values()]
    assert status[0] == "not shown (no significant difference)"
    assert status[1] == "not held (the opposite is significant)"  # single best encoder wins
    assert status[2] == "held"  # concatenation no better: PCA 95% lost nothing
    assert status[3] == "held; rows not run: pca70"
    assert status[4] == "not run"
    assert status[5] == "not held"  # long documents gained more (significantly)
    assert all(c["fused"]["status"] == "not run" for c in by_claim.values())
    assert "BM25" in by_claim["Dual-condition0"]["alone"]["evidence"]


def test_tiny_end_to_end_run_writes_tables_and_resumes(
    bench, tiny_beir, tiny_bert_dir, tiny_encoder_dir, tmp_path, monkeypatch
):
    rows = "first_stage,base_cold,base_warm,positives_only,random,in_batch,dense_remine,st_mine,ours,pca80"
    argv = [
        "--data",
        str(tiny_beir),
        "--encoders",
        f"{tiny_encoder_dir},lsa:8",
        "--base_model",
        str(tiny_bert_dir),
        "--first_stage_encoder",
        str(tiny_encoder_dir),
        "--k",
        "5",
        "--val_queries",
        "1",
        "--train_steps",
        "2",
        "--warm_start_steps",
        "2",
        "--batch_size",
        "2",
        "--max_length",
        "48",
        "--rows",
        rows,
        "--output_dir",
        str(tmp_path / "out"),
        "--work_dir",
        str(tmp_path / "work"),
        "--cache_dir",
        str(tmp_path / "cache"),
        "--device",
        "cpu",
    ]
    report = bench.main(argv)

    out = tmp_path / "out"
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["aggregate"]["rows"]) == set(rows.split(","))
    assert not saved["failed"]
    assert saved["libraries"]["torch"] and saved["machine"]["cpu_count"] >= 1
    trained = []
    for row in saved["aggregate"]["rows"].values():
        for mode in ("alone", "fused"):
            for metric in ("mrr@3", "mrr@10", "ndcg@10"):
                assert 0.0 <= row["metrics"][mode][metric]["mean"] <= 1.0
        assert all(sec["total"] >= 0 for sec in row["seconds"])
        if row["kind"] != "first_stage":
            assert row["fusion_weights"][0] in saved["settings"]["fusion_grid_values"]
        if row["kind"] == "train":
            trained.append(row["info"][0]["mining"]["pairs"])
    assert trained and set(trained) == {saved["data"]["train_pairs"]}  # every row trains on the same pairs
    assert saved["aggregate"]["rows"]["in_batch"]["info"][0]["training"]["rows_per_step"] == 4
    tests = saved["aggregate"]["paired_tests"]["fused"]["methods"]
    assert "random" in tests and 0.0 < tests["random"]["p_holm"] <= 1.0
    assert (
        saved["aggregate"]["length"]["queries"]["short"] + saved["aggregate"]["length"]["queries"]["long"]
        == 2
    )
    markdown = (out / "results.md").read_text()
    for heading in ("## Negative methods", "## Ablations", "## Warm start", "## Short vs long documents"):
        assert heading in markdown
    for plot in ("mrr10_by_method.png", "mrr10_vs_pca.png"):
        assert (out / plot).read_bytes()[:4] == b"\x89PNG"
    assert len(list((tmp_path / "work" / "warm_start").iterdir())) == 1  # one warm start for the seed

    # a second run finds every row saved and computes nothing
    def refuse(*args, **kwargs):
        raise AssertionError("a saved row was recomputed")

    monkeypatch.setattr(bench.Benchmark, "run_row", refuse)
    again = bench.main(argv)
    ours = report["aggregate"]["rows"]["ours"]["metrics"]["fused"]["mrr@10"]["mean"]
    assert again["aggregate"]["rows"]["ours"]["metrics"]["fused"]["mrr@10"]["mean"] == ours
    assert "## The paper's claims" in markdown and len(saved["claims"]) == 6

    # a second seed: the first seed's rows are reused, only the new seed is computed
    monkeypatch.undo()
    computed = []
    run_row = bench.Benchmark.run_row

    def recording(self, row, seed, key):
        computed.append((row.name, seed))
        return run_row(self, row, seed, key)

    monkeypatch.setattr(bench.Benchmark, "run_row", recording)
    at = argv.index("--rows")
    two = bench.main([*argv[:at], "--rows", "random,ours", *argv[at + 2 :], "--seeds", "2"])
    assert sorted(computed) == [("ours", 43), ("random", 43)]
    fused = two["aggregate"]["rows"]["ours"]["metrics"]["fused"]["mrr@10"]
    assert fused["n"] == 2 and two["seeds"] == [42, 43]
    assert "2 seeds" in (out / "results.md").read_text()
