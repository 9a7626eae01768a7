"""Atomic writes, the sweep of temporaries that killed writers leave, and the finished-run marker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from hn_trainer import io
from hn_trainer.io import (
    atomic_path,
    is_complete,
    read_marker,
    run_marker,
    sweep_stale_temporaries,
    write_json,
    write_jsonl,
    write_npy,
)

REPO = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from hn_trainer.io import atomic_path

    target = Path(sys.argv[1])
    as_folder = sys.argv[2] == "folder"
    with atomic_path(target) as tmp:
        if as_folder:
            tmp.mkdir()
            (tmp / "part-0").write_text("half")
        else:
            tmp.write_text("half a file")
        print("ready", flush=True)
        time.sleep(60)
    """
)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def _kill_inside_atomic_path(target: Path, kind: str = "file") -> None:
    """Start a writer, wait until it is inside `atomic_path`, then SIGKILL it (and reap it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(target), kind], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_writes_replace_files_and_folders_whole(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    write_jsonl(tmp_path / "rows.jsonl", [{"a": 1}, {"a": 2}])
    write_npy(tmp_path / "v.npy", np.arange(3, dtype=np.float32))
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert (tmp_path / "rows.jsonl").read_text().splitlines() == ['{"a": 1}', '{"a": 2}']
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), np.arange(3, dtype=np.float32))
    for content in ("first", "second"):
        with atomic_path(tmp_path / "out") as tmp:
            tmp.mkdir()
            (tmp / "part").write_text(content)
    assert (tmp_path / "out" / "part").read_text() == "second"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.json") as tmp:
            tmp.write_text("broken")
            raise RuntimeError("fails mid-write")
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert _hidden(tmp_path) == []


def test_temporaries_name_their_writer(tmp_path):
    with atomic_path(tmp_path / "stats.json") as tmp:
        name = tmp.parent.name
        assert name.startswith(f".stats.json.p{os.getpid()}-") and name.endswith(".tmp")
        # a live writer's temporary is never swept, not even by the same process
        assert sweep_stale_temporaries(tmp_path) == [] and tmp.parent.is_dir()
        tmp.write_text("{}")
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_next_write_sweeps_what_a_killed_writer_left(tmp_path, kind):
    name = "triples.jsonl" if kind == "file" else "triples"
    _kill_inside_atomic_path(tmp_path / name, kind)
    left = _hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".{name}.p") and not (tmp_path / name).exists()
    write_json(tmp_path / "stats.json", {"ok": True})  # any later write in that folder
    assert _hidden(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.json"]


def test_a_folder_caught_between_the_two_renames_is_put_back(tmp_path):
    with atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_text("v1")
    _kill_inside_atomic_path(tmp_path / "model", "folder")
    # simulate the kill landing after the old folder was parked inside the temporary
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    os.replace(tmp_path / "model", leftover / "model.old")
    assert not (tmp_path / "model").exists()
    sweep_stale_temporaries(tmp_path)
    assert (tmp_path / "model" / "weights").read_text() == "v1" and _hidden(tmp_path) == []


def test_legacy_leftovers_are_swept_and_foreign_files_are_kept(tmp_path, monkeypatch):
    legacy = tmp_path / ".stats.json.ab12cd_3.tmp"
    legacy.mkdir()
    (legacy / "stats.json").write_text("{")
    old = tmp_path / ".corpus_embeddings.npy.old-999999999"  # no such process
    old.mkdir()
    (old / "x").write_text("old")
    # look alike but are not ours: a file, a folder with other content, another machine's
    (tmp_path / ".notes.ab12cd34.tmp").write_text("mine")
    other = tmp_path / ".notes.abcdefgh.tmp"
    other.mkdir()
    (other / "something-else").write_text("keep")
    remote = tmp_path / ".stats.json.p999999999-00000000.ab12cd34.tmp"
    remote.mkdir()
    monkeypatch.setattr(io, "_STARTED", time.time() + 10)  # this run started after they were left
    (tmp_path / "corpus_embeddings.npy").write_bytes(b"new")
    removed = sweep_stale_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == sorted([legacy.name, old.name])
    assert _hidden(tmp_path) == sorted([".notes.ab12cd34.tmp", other.name, remote.name])
    assert (tmp_path / "corpus_embeddings.npy").read_bytes() == b"new"


def test_sweep_can_be_limited_to_some_names(tmp_path):
    for name in ("a.json", "b.json"):
        _kill_inside_atomic_path(tmp_path / name)
    sweep_stale_temporaries(tmp_path, names=["a.json"])
    (left,) = _hidden(tmp_path)
    assert left.startswith(".b.json.p")


def test_a_reused_process_id_does_not_keep_a_temporary_alive(tmp_path, monkeypatch):
    # the temporary carries this process's id but predates it (a restarted container)
    stale = tmp_path / f".stats.json.p{os.getpid()}-{io._HOST}.ab12cd34.tmp"
    stale.mkdir()
    monkeypatch.setattr(io, "_STARTED", time.time() + 10)
    write_json(tmp_path / "stats.json", {})
    assert _hidden(tmp_path) == []


def test_marker_is_written_last_and_only_on_success(tmp_path):
    out = tmp_path / "mined"
    assert not is_complete(out)
    with run_marker(out) as info:
        assert not is_complete(out)
        write_jsonl(out / "triples.jsonl", [{"q": 1}])
        info["rows"] = 1
    assert is_complete(out)
    marker = read_marker(out)
    assert marker["rows"] == 1 and marker["complete"] is True and "finished" in marker
    # a rerun removes the old marker before anything is rewritten
    with pytest.raises(RuntimeError):
        with run_marker(out):
            assert not (out / "COMPLETE").exists() and not is_complete(out)
            write_jsonl(out / "triples.jsonl", [{"q": 2}])
            raise RuntimeError("killed half way")
    assert not is_complete(out) and not (out / "COMPLETE").exists()
    assert _hidden(out) == []


def test_marker_that_is_not_ours_does_not_count(tmp_path):
    (tmp_path / "COMPLETE").write_text("not json")
    assert not is_complete(tmp_path)
    (tmp_path / "COMPLETE").write_text('{"complete": false}')
    assert not is_complete(tmp_path)
    with run_marker(tmp_path, name="DONE"):
        pass
    assert is_complete(tmp_path, name="DONE") and not is_complete(tmp_path)
