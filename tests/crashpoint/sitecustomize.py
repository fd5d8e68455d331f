"""Crash points for tests/test_crash_safety.py: SIGKILL this interpreter at a chosen file event under one folder.

With $RECOMMENDER_TEST_CRASH_DIR set, each of these is an event, in the order it happens:
the middle of the first write to a file under that folder (half its bytes are written and
flushed), the file's close, a rename into, out of or inside the folder (before it and after it),
and the removal of a file or tree there. $RECOMMENDER_TEST_CRASH_AT=N kills the process with SIGKILL
at event N (from 1), after appending the event's name to $RECOMMENDER_TEST_CRASH_LOG; without it,
every event's name is appended there and nothing is killed (a trace of a whole run). Names have
the random and time-stamped parts of file names replaced, so that two runs give the same trace.

It works from outside the code under test (builtins.open, io.open, os.replace, ...), so a
mutant that writes a file another way is still caught in the middle of its write. The network
guard of tests/hermetic is installed first: one sitecustomize runs per interpreter.
"""

from __future__ import annotations

import builtins
import importlib.util
import io
import os
import re
import shutil
import signal
from pathlib import Path

_guard = importlib.util.spec_from_file_location(
    "netguard", Path(__file__).parent.parent / "hermetic" / "sitecustomize.py"
)
netguard = importlib.util.module_from_spec(_guard)
_guard.loader.exec_module(netguard)
if os.environ.get(netguard.LOG_ENV):
    netguard.install()

FOLDER = (
    os.path.abspath(os.environ["RECOMMENDER_TEST_CRASH_DIR"]) if os.environ.get("RECOMMENDER_TEST_CRASH_DIR") else None
)
_count = [0]
_NAMES = [
    (re.compile(r"\.\d+\.[0-9a-f]{6}\.tmp$"), ".tmp"),  # write_atomic's temporaries: pid and random part
    (re.compile(r"\d{8}-\d{6}-\d{6}-[0-9a-f]{8}"), "N"),  # checkpoint shards: time, count, hash
    (re.compile(r"\d{8}-\d{6}-[0-9a-f]{6}"), "T"),  # data files: time and random tag
]


def _watched(path: object) -> str | None:
    """`path` relative to the watched folder with its variable parts named, or None when outside it."""
    if FOLDER is None or isinstance(path, int):
        return None
    try:
        full = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return None
    if not full.startswith(FOLDER + os.sep) or os.path.basename(full) == ".lock":
        return None
    name = os.path.relpath(full, FOLDER)
    for pattern, replacement in _NAMES:
        name = pattern.sub(replacement, name)
    return name


def event(name: str, prepare: object = None) -> None:
    """One event: logged (trace) or, when it is the chosen one, the end of this process."""
    _count[0] += 1
    at = int(os.environ.get("RECOMMENDER_TEST_CRASH_AT", "0"))  # read now: zygote.py sets it per run
    if at and _count[0] != at:
        return
    if at and callable(prepare):
        prepare()
    with open_original(os.environ["RECOMMENDER_TEST_CRASH_LOG"], "a", encoding="utf-8") as fh:
        fh.write(name + "\n")
    if at:
        os.kill(os.getpid(), signal.SIGKILL)


class Watched:
    """A file opened for writing under the folder: its first write and its close are events."""

    def __init__(self, file: io.IOBase, name: str) -> None:
        self._file, self._name, self._started = file, name, False

    def write(self, data: bytes | str) -> int:
        if not self._started:
            self._started = True
            half = data[: len(data) // 2]

            def partial() -> None:
                self._file.write(half)
                self._file.flush()

            event(f"mid-write {self._name}", partial)
        return self._file.write(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()
            event(f"closed {self._name}")

    def __enter__(self) -> Watched:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._file, name)


def _open(file: object, mode: str = "r", *args: object, **kwargs: object) -> object:
    handle = open_original(file, mode, *args, **kwargs)
    name = _watched(file) if any(c in mode for c in "wax+") else None
    return Watched(handle, name) if name else handle


def _renaming(original: object) -> object:
    def rename(src: object, dst: object, *args: object, **kwargs: object) -> None:
        a, b = _watched(src), _watched(dst)
        label = f"{a or '(outside)'} -> {b or '(outside)'}"
        if a or b:
            event(f"before rename {label}")
        original(src, dst, *args, **kwargs)
        if a or b:
            event(f"after rename {label}")

    return rename


def _removing(original: object, what: str) -> object:
    def remove(path: object, *args: object, **kwargs: object) -> None:
        name = _watched(path)
        if name:
            event(f"before {what} {name}")
        return original(path, *args, **kwargs)

    return remove


open_original = builtins.open
if FOLDER:
    builtins.open = io.open = _open  # pathlib opens through io.open
    os.replace, os.rename = _renaming(os.replace), _renaming(os.rename)
    os.unlink, os.remove = _removing(os.unlink, "removal of"), _removing(os.remove, "removal of")
    shutil.rmtree = _removing(shutil.rmtree, "removal of tree")
