"""One way to write a file atomically: `atomic_path(path)` gives a temporary name beside `path`
(`.<name>.<pid>.tmp`) to write the whole file to; when the block succeeds the file is fsynced and renamed over
`path`, so a reader sees the old file or the new one, never a part. On an exception the temporary is removed, and
a write the system refuses (disk full, a file-size limit, a folder in the way) becomes a `WriteError`, one line
naming `path`; a process killed in between leaves a temporary that the owner of the folder removes
(`runners/folders.remove_stale_temporaries`); `is_own_temporary` tells such names from a user's `*.tmp` files.
`read_csv_rows` reads a table back, dropping the rows that a damaged file no longer holds whole."""
from __future__ import annotations

import contextlib
import csv
import errno
import json
import logging
import os
import re
from typing import Callable

TMP_SUFFIX = ".tmp"
_OWN_TEMPORARY = re.compile(r"\..+\.[0-9]+" + re.escape(TMP_SUFFIX))
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class WriteError(OSError):
    """A file that could not be written; the message is one line naming the file and the fix, and the previous
    version of the file (if any) is kept."""

    def __init__(self, path: str, cause: OSError):
        reason = cause.strerror or str(cause)
        if cause.errno in _NO_SPACE:
            fix = "the disk is full or a file-size limit was reached: free space (or raise the limit) and rerun"
        else:
            fix = "check the path and its permissions, then rerun"
        super().__init__(cause.errno, f"cannot write {path}: {reason}; {fix} (the previous version is kept)")

    def __str__(self) -> str:
        return self.strerror


def is_own_temporary(name: str) -> bool:
    """Whether file name `name` has the form of `atomic_path`'s temporaries, `.<name>.<pid>.tmp`."""
    return _OWN_TEMPORARY.fullmatch(name) is not None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` to write the whole file to; it replaces `path` when the block ends
    without an exception (after fsync) and is removed otherwise. The folder must exist. An `OSError` of the writes
    or the rename is raised as a `WriteError` naming `path`."""
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}{TMP_SUFFIX}")
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except WriteError:
        raise
    except OSError as err:
        raise WriteError(os.fspath(path), err) from err
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, value) -> None:
    """Write `value` as indented JSON to `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=2)


def read_csv_rows(path: str, parse: Callable[[dict], dict | None], redo: str) -> list[dict]:
    """The rows of CSV table `path` as `parse` returns them (empty when there is no file). `parse(row)` gives None
    for a row that is incomplete or does not parse; such rows, a last line without its newline (a write cut short)
    and text that is not UTF-8 are dropped with one warning naming the file and saying `redo` (what happens to
    them)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="", errors="replace") as f:
        text = f.read()
    lines = text.splitlines(keepends=True)
    whole = lines if text.endswith("\n") else lines[:-1]
    try:
        rows = [parse(row) for row in csv.DictReader(whole)]
    except csv.Error:
        rows = [None]
    dropped = len(lines) - len(whole) + sum(row is None for row in rows)
    if dropped:
        logging.warning("%s: dropped %d damaged or incomplete row(s) (an interrupted write?); %s", path, dropped, redo)
    return [row for row in rows if row is not None]
