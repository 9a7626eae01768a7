"""YAML configs and flags through HfArgumentParser."""

from __future__ import annotations

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
