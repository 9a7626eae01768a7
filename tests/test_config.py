"""YAML configs and flags through HfArgumentParser."""

from __future__ import annotations

from pathlib import Path

import pytest

from hn_trainer.config import DataArguments, MineOutputArguments, MiningArguments, parse_args
from hn_trainer.errors import ConfigError

TYPES = (DataArguments, MiningArguments, MineOutputArguments)


def test_flags_override_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: some/folder\nencoders: [a, lsa]\npca_variance: 0.9\noutput_dir: out\n")
    data, mining, out = parse_args(TYPES, ["--config", str(cfg), "--pca_variance", "0.8", "--save_embeddings"])
    assert data.data == "some/folder"
    assert mining.encoder_list == ["a", "lsa"] and mining.pca_variance == 0.8
    assert out.output_dir == "out" and out.save_embeddings is True


def test_comma_separated_encoders():
    _, mining, _ = parse_args(TYPES, ["--encoders", "sentence-transformers/all-MiniLM-L6-v2,lsa"])
    assert mining.encoder_list == ["sentence-transformers/all-MiniLM-L6-v2", "lsa"]


def test_unknown_field_in_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pca_varianse: 0.9\n")
    with pytest.raises(ConfigError, match="unknown config field.*pca_varianse"):
        parse_args(TYPES, ["--config", str(cfg)])


def test_unknown_flag():
    with pytest.raises(ConfigError, match="--nope"):
        parse_args(TYPES, ["--nope", "1"])


@pytest.mark.parametrize("value", ["0", "1.5", "-0.1"])
def test_pca_variance_outside_unit_interval(value):
    with pytest.raises(ConfigError, match="pca_variance must be in"):
        parse_args(TYPES, ["--pca_variance", value])


def test_variance_one_is_allowed():
    assert parse_args(TYPES, ["--pca_variance", "1.0"])[1].pca_variance == 1.0


def test_a_value_in_the_file_is_never_overridden_by_a_default_the_code_injects(tmp_path):
    from hn_trainer.recipe import DEMO_DEFAULTS, parse_recipe_args

    cfg = tmp_path / "c.yaml"
    cfg.write_text("output_dir: runs/from-file\nloss: bce\npool_size: 5\neval_candidates_k: 7\n")
    _, mining, train, evaluation, _ = parse_recipe_args(["--config", str(cfg)])
    assert train.output_dir == "runs/from-file" and train.loss == "bce"
    assert mining.pool_size == 5 and evaluation.eval_candidates_k == 7  # each field in its stage's dataclass
    # the demo's own settings sit under the file, and flags on top of both
    _, mining, train, _, _ = parse_recipe_args(["--config", str(cfg), "--pool_size", "6"], defaults=DEMO_DEFAULTS)
    assert train.output_dir == "runs/from-file" and train.loss == "bce" and mining.pool_size == 6
    assert train.num_negatives == DEMO_DEFAULTS["num_negatives"]  # a demo default the file leaves alone


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_shipped_recipe_configs_parse(config):
    from hn_trainer.recipe import parse_recipe_args

    data_args, mining_args, train_args, eval_args, recipe_args = parse_recipe_args(["--config", str(config)])
    assert data_args.data and mining_args.encoder_list and train_args.output_dir
    assert recipe_args.model_name_or_path


@pytest.mark.parametrize("config", sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml")),
                         ids=lambda p: p.name)
def test_mine_reads_a_train_recipe_config_and_skips_its_training_fields(config):
    from hn_trainer.cli import _train_only_arguments
    from hn_trainer.recipe import parse_recipe_args

    data, mining, output = parse_args(TYPES, ["--config", str(config)], file_may_hold=_train_only_arguments)
    recipe_data, recipe_mining, train, _, _ = parse_recipe_args(["--config", str(config)])
    assert data == recipe_data and mining == recipe_mining  # the same mining as `hn-trainer train` runs
    assert output.output_dir == train.output_dir


def test_mine_with_a_train_config_still_refuses_a_field_no_command_knows(tmp_path):
    from hn_trainer.cli import _train_only_arguments

    cfg = tmp_path / "c.yaml"
    cfg.write_text("learning_rate: 1.0e-5\nwarm_start: distill\npca_varianse: 0.9\n")
    with pytest.raises(ConfigError, match=r"unknown config field\(s\): pca_varianse$"):
        parse_args(TYPES, ["--config", str(cfg)], file_may_hold=_train_only_arguments)
    with pytest.raises(ConfigError, match="learning_rate"):  # without it, a training field is unknown to mine
        parse_args(TYPES, ["--config", str(cfg)])


@pytest.mark.parametrize("value", ["false", "None", "off"])
def test_a_cache_dir_of_false_means_no_cache_not_a_folder(value):
    assert MiningArguments(cache_dir=value).cache_dir is False
    assert MiningArguments(cache_dir="runs/cache").cache_dir == "runs/cache"


def test_cpu_training_takes_bf16_exactly_where_the_cpu_has_it_natively(monkeypatch):
    import torch

    from hn_trainer.recipe import parse_recipe_args
    from hn_trainer.training import training_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native in (True, False):
        monkeypatch.setattr(training_args, "cpu_has_native_bf16", lambda native=native: native)
        train = parse_recipe_args(["--data", "demo"])[2]
        assert train.use_cpu and train.bf16 is native
    monkeypatch.setattr(training_args, "cpu_has_native_bf16", lambda: True)
    assert parse_recipe_args(["--data", "demo", "--bf16", "false"])[2].bf16 is False  # the flag wins


def test_without_torch_probes_the_bf16_check_reads_the_cpu_flags_and_agrees(monkeypatch):
    import torch

    from hn_trainer.training.training_args import cpu_has_native_bf16

    probed = cpu_has_native_bf16()
    if not Path("/proc/cpuinfo").exists():
        pytest.skip("no /proc/cpuinfo to read the flags from")
    for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    assert cpu_has_native_bf16() is probed


def test_an_fp16_setting_wins_over_the_cpu_bf16_default(monkeypatch, tmp_path):
    import torch

    from hn_trainer.config import given_fields
    from hn_trainer.recipe import parse_recipe_args
    from hn_trainer.training import training_args

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(training_args, "cpu_has_native_bf16", lambda: True)
    train = parse_recipe_args(["--data", "demo", "--fp16", "true"])[2]
    assert train.fp16 and not train.bf16
    cfg = tmp_path / "fp16.yaml"
    cfg.write_text("data: demo\nfp16: true\n")
    train = parse_recipe_args(["--config", str(cfg)])[2]
    assert train.fp16 and not train.bf16
    assert given_fields(["--config", str(cfg), "--seed=3", "--bf16", "false"]) == {"data", "fp16", "seed", "bf16"}
