"""Files that results depend on: every file the project writes goes through one atomic
writer (``atomic_file``), and JSON is read so that a corrupt or truncated file (a disk that
filled up, an editor, a copy cut short) is moved aside with a warning naming it and then
recomputed, instead of stopping a run with a JSONDecodeError. Standard library and numpy
only: the batch runner uses it without importing torch."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import numpy as np


class CorruptFileWarning(UserWarning):
    """A results file could not be read and was moved aside (its results are recomputed)."""


@contextlib.contextmanager
def atomic_file(path):
    """A temporary path beside ``path`` to write to, renamed onto ``path`` when the block ends
    and removed if it fails: a reader, or a run that resumes, never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_json(path, payload) -> Path:
    """Write JSON atomically (``atomic_file``)."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1, default=jsonable))
    return Path(path)


def jsonable(value):
    """``json.dumps``' fallback for numpy scalars, paths, tuples and sets."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (Path, tuple, set)):
        return str(value) if isinstance(value, Path) else list(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def plain(value):
    """As it reads back from JSON, so that saved and new values compare equal."""
    return json.loads(json.dumps(value, default=jsonable))


def move_aside(path, why: str) -> Path:
    """Rename a file that cannot be used to ``<name>.corrupt-<n>`` (kept for a look, never
    read again) and warn, naming both files and why."""
    path = Path(path)
    n = 1
    while (target := path.with_name(f"{path.name}.corrupt-{n}")).exists():
        n += 1
    try:
        os.replace(path, target)
    except FileNotFoundError:  # another process moved it first
        pass
    warnings.warn(f"{path} is unreadable ({why}); moved aside to {target.name}, and what it "
                  "held will be computed again.", CorruptFileWarning, stacklevel=3)
    return target


def read_json(path, expect: type | None = None):
    """The content of a JSON file; None if it does not exist, or if it is corrupt, truncated
    or not of type ``expect`` (then moved aside with a warning, see ``move_aside``)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        move_aside(path, f"{type(error).__name__}: {error}")
        return None
    if expect is not None and not isinstance(value, expect):
        move_aside(path, f"a JSON {type(value).__name__} where a {expect.__name__} belongs")
        return None
    return value


def append_json_line(path, record) -> int:
    """Append ``record`` as one line of JSON and flush it to disk; the bytes written. A crash
    can cut only this last line short, which ``read_json_lines`` then skips."""
    line = json.dumps(record, default=jsonable) + "\n"
    with open(path, "a") as file:
        file.write(line)
        file.flush()
        os.fsync(file.fileno())
    return len(line.encode())


def read_json_lines(path) -> list:
    """The records of a file of JSON lines (``append_json_line``); an unreadable line (a
    crash in the middle of an append) is skipped with a warning naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except ValueError as error:
            warnings.warn(f"{path}: line {number} is unreadable ({type(error).__name__}: "
                          f"{error}); what it held will be computed again.",
                          CorruptFileWarning, stacklevel=2)
    return records
