"""The `hn-trainer` command: help, version, and argument errors before any work starts."""

from __future__ import annotations

import pytest

from hn_trainer import __version__
from hn_trainer.cli import main


def test_version_and_top_level_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hn-trainer {__version__}"
    assert main(["--help"]) == 0
    assert "mine" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["mine", "train"])
def test_command_help_lists_every_field_and_the_config_flag(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--config FILE.yaml" in out and "--pool_size" in out and "--validation_queries" in out


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    assert main(["mine", "--pca_var", "0.5", "--output_dir", str(tmp_path / "out")]) == 1
    assert "--pca_var" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything is created


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--max_train_queries", "-1", "--max_train_queries must be a positive count"),
        ("--pool_size", "0", "--pool_size must be at least 1"),
        ("--embedding_batch_size", "0", "--embedding_batch_size must be at least 1"),
        ("--positive_aware_ratio", "2", "--positive_aware_ratio must be in (0, 1)"),
        ("--num_negatives", "0", "--num_negatives must be at least 1"),
    ],
)
def test_bad_values_name_their_flag_before_any_work(tmp_path, capsys, flag, value, message):
    assert main(["mine", flag, value, "--output_dir", str(tmp_path / "out")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_training_arguments_that_cannot_train_are_refused_when_parsed(tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["train", "--loss", "lce", "--num_negatives", "0", "--output_dir", out]) == 1
    assert "no gradient" in capsys.readouterr().err
    assert main(["train", "--per_device_train_batch_size", "0", "--output_dir", out]) == 1
    assert "--per_device_train_batch_size must be at least 1" in capsys.readouterr().err


def test_output_dir_that_is_a_file_is_refused_before_loading_anything(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["mine", "--data", "demo", "--output_dir", str(blocker / "sub")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err
