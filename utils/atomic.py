"""One way to write a file atomically: `atomic_path(path)` gives a temporary name beside `path`
(`.<name>.<pid>.tmp`) to write the whole file to; when the block succeeds the file is fsynced and renamed over
`path`, so a reader sees the old file or the new one, never a part. On an exception the temporary is removed; a
process killed in between leaves a temporary that the owner of the folder removes
(`runners/folders.remove_stale_temporaries`); `is_own_temporary` tells such names from a user's `*.tmp` files."""
from __future__ import annotations

import contextlib
import json
import os
import re

TMP_SUFFIX = ".tmp"
_OWN_TEMPORARY = re.compile(r"\..+\.[0-9]+" + re.escape(TMP_SUFFIX))


def is_own_temporary(name: str) -> bool:
    """Whether file name `name` has the form of `atomic_path`'s temporaries, `.<name>.<pid>.tmp`."""
    return _OWN_TEMPORARY.fullmatch(name) is not None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside `path` to write the whole file to; it replaces `path` when the block ends
    without an exception (after fsync) and is removed otherwise. The folder must exist."""
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
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_json(path: str | os.PathLike, value) -> None:
    """Write `value` as indented JSON to `path`, atomically."""
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(value, f, indent=2)
