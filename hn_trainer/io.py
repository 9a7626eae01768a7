"""Atomic writes: an interrupted run never leaves a file or folder a later run would trust.

`atomic_path` writes into a hidden temporary folder beside the target and renames the result
onto the target in one step. A process killed mid-write (``kill -9``, out of memory) leaves
that temporary behind; the next write in the same folder sweeps it (`sweep_stale_temporaries`).
`run_marker` marks an output folder as finished, so a later run can tell a complete folder
from one a crash left half rewritten (`is_complete`).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Iterator

import numpy as np

logger = logging.getLogger(__name__)

# When this process started writing (a temporary touched earlier is not one of ours).
_STARTED = time.time()
# Filesystem timestamps and process start times are coarse (up to a second or two).
_CLOCK_SLACK = 2.0
# A temporary written by another machine (shared filesystem) is stale only when this old.
_OTHER_HOST_STALE_SECONDS = 24 * 3600
_HOST = hashlib.sha1(socket.gethostname().encode("utf-8")).hexdigest()[:8]
_RANDOM = r"[a-z0-9_]{8}"  # what `tempfile.mkdtemp` puts between prefix and suffix
_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.p(?P<pid>\d+)-(?P<host>[0-9a-f]{{8}})\.{_RANDOM}\.tmp$")
_LEGACY_TEMP_RE = re.compile(rf"^\.(?P<name>.+)\.{_RANDOM}\.tmp$")
_LEGACY_OLD_RE = re.compile(r"^\.(?P<name>.+)\.old-(?P<pid>\d+)$")


def _temp_prefix(name: str) -> str:
    """``.{name}.p{pid}-{host}.``: names the writer, so a later run can tell whether it is gone."""
    return f".{name}.p{os.getpid()}-{_HOST}."


def _old_name(name: str) -> str:
    """Where a folder being replaced waits, inside the temporary, until the new one is in place."""
    return f"{name}.old"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and folders alike: whatever the block writes at the yielded path
    replaces `path` in one rename. On error the temporary is removed. Temporaries that
    killed writers left in the same folder are swept first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(path.parent)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            _swap_folder(path, target, tmp / _old_name(path.name))
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_folder(path: Path, new: Path, old: Path) -> None:
    """Replace folder `path` by `new`, parking the current one at `old` (put back on failure)."""
    os.replace(path, old)
    try:
        os.replace(new, path)
    except BaseException:
        os.replace(old, path)
        raise


def sweep_stale_temporaries(folder: str | os.PathLike, names: Iterable[str] | None = None) -> list[Path]:
    """Remove the temporaries that killed `atomic_path` writers left in `folder`.

    Only entries that `atomic_path` itself creates are considered: hidden folders named
    ``.{name}.p{pid}-{host}.XXXXXXXX.tmp`` holding nothing but ``{name}`` (and
    ``{name}.old``), plus the names earlier versions used (``.{name}.XXXXXXXX.tmp`` and
    ``.{name}.old-{pid}``). One is stale when its writer is gone: the process id is not
    running (or was started after the temporary was last touched, so the id was reused);
    a name without a process id is stale when it predates this process; one from another
    machine when it is a day old. A folder being replaced that a kill caught between the two
    renames is put back when nothing has taken its place.

    Args:
        folder: The folder to sweep (a missing folder has nothing to sweep).
        names: Only sweep the temporaries of these target names (default: all).

    Returns:
        The temporaries removed or put back.
    """
    folder = Path(folder)
    wanted = None if names is None else set(names)
    swept: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return swept
    for entry in entries:
        if not entry.name.startswith("."):
            continue
        found = _parse_temporary(entry.name)
        if found is None or (wanted is not None and found[0] not in wanted):
            continue
        name, pid, host, legacy_old = found
        try:
            if not entry.is_dir(follow_symlinks=False):
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        touched = max(st.st_mtime, st.st_ctime)
        if not _is_stale(pid, host, touched):
            continue
        path = Path(entry.path)
        if legacy_old:
            _restore_or_remove(path, folder / name)
        elif _looks_like_ours(path, name):
            old = path / _old_name(name)
            if old.is_dir() and not old.is_symlink():
                _restore_or_remove(old, folder / name)
            shutil.rmtree(path, ignore_errors=True)
        else:
            continue
        logger.info("Removed a temporary that an interrupted write left behind: %s", path)
        swept.append(path)
    return swept


def _parse_temporary(entry: str) -> tuple[str, int | None, str | None, bool] | None:
    """``(target name, pid, host, is a legacy .old folder)`` of one of our names, else ``None``."""
    m = _TEMP_RE.match(entry)
    if m:
        return m["name"], int(m["pid"]), m["host"], False
    m = _LEGACY_OLD_RE.match(entry)
    if m:
        return m["name"], int(m["pid"]), _HOST, True
    m = _LEGACY_TEMP_RE.match(entry)
    if m:
        return m["name"], None, None, False
    return None


def _looks_like_ours(tmp: Path, name: str) -> bool:
    """An `atomic_path` temporary holds at most the target and the folder it replaces."""
    try:
        with os.scandir(tmp) as it:
            return all(e.name in (name, _old_name(name)) for e in it)
    except OSError:
        return False


def _is_stale(pid: int | None, host: str | None, touched: float) -> bool:
    if pid is None:
        return touched < _STARTED - _CLOCK_SLACK
    if host != _HOST:
        return time.time() - touched > _OTHER_HOST_STALE_SECONDS
    return not _process_owns(pid, touched)


def _process_owns(pid: int, touched: float) -> bool:
    """Whether process `pid` runs and already ran when the temporary was last touched."""
    if pid == os.getpid():
        return touched >= _STARTED - _CLOCK_SLACK
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it runs
    except OSError:
        return True  # cannot tell: keep it
    started = _process_start(pid)
    if started is None:
        return True
    return started != float("inf") and started <= touched + _CLOCK_SLACK


def _process_start(pid: int) -> float | None:
    """Start time of `pid`; ``inf`` for a process that has exited (zombie), ``None`` if unknown."""
    try:
        import psutil
    except ImportError:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return float("inf")
        return proc.create_time()
    except psutil.NoSuchProcess:
        return float("inf")
    except Exception:  # noqa: BLE001 - access denied and the like: unknown
        return None


def _restore_or_remove(old: Path, path: Path) -> None:
    """Put a parked folder back at `path` when nothing took its place; otherwise remove it."""
    if not os.path.lexists(path):
        try:
            os.replace(old, path)
            logger.warning("Put back %s, which an interrupted write had moved aside", path)
            return
        except OSError:
            pass
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> None:
    """Write `obj` as JSON, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=indent, ensure_ascii=False)
            f.write("\n")


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 text, atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """Write an iterable of dicts as JSON lines, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False))
                f.write("\n")


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Save a numpy array, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


# ----------------------------------------------------------------------------- finished-run marker

MARKER = "COMPLETE"


@contextlib.contextmanager
def run_marker(folder: str | os.PathLike, name: str = MARKER) -> Iterator[dict]:
    """Mark `folder` as the output of a finished run only once the block succeeds.

    The marker of an earlier run is removed before the block starts (so a run killed while
    rewriting the folder leaves no marker), and written last, atomically, when the block
    returns without error. Stale temporaries in the folder are swept first.

    Args:
        folder: The output folder (created when missing).
        name: The marker's file name.

    Yields:
        A dict the block may fill; it is saved in the marker (read back by `read_marker`).

    Example:
        >>> with run_marker(out) as info:        # doctest: +SKIP
        ...     write_jsonl(out / "triples.jsonl", rows)
        ...     info["rows"] = len(rows)
        >>> is_complete(out)                      # doctest: +SKIP
        True
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _remove_marker(folder / name)
    sweep_stale_temporaries(folder)
    payload: dict = {}
    yield payload
    finished = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    write_json(folder / name, {**payload, "complete": True, "finished": finished})


def _remove_marker(marker: Path) -> None:
    if marker.is_dir() and not marker.is_symlink():
        shutil.rmtree(marker)
    else:
        marker.unlink(missing_ok=True)
    _fsync_dir(marker.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a removal in `folder` durable before anything else there changes (best effort)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_marker(folder: str | os.PathLike, name: str = MARKER) -> dict | None:
    """The payload of `folder`'s finished-run marker, or ``None`` when there is no valid one."""
    try:
        with open(Path(folder) / name, encoding="utf-8") as f:
            payload = json.load(f)
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) and payload.get("complete") is True else None


def is_complete(folder: str | os.PathLike, name: str = MARKER) -> bool:
    """Whether `folder` holds the marker of a run that finished (see `run_marker`)."""
    return read_marker(folder, name) is not None
