"""Output folders of training runs and reconstructions: created with one-line errors, written by one process at a
time, and filled atomically.

- `make_folder(path, key)` creates a folder; a path blocked by a file or a folder that cannot be written becomes a
  `FolderError` (a `ValueError`) naming the path, the config key or flag that set it and the fix.
- `lock_folder(path, key)` holds `<path>/.lock` for this process. It is a POSIX record lock (`fcntl.lockf`): the
  kernel drops it the moment its holder dies, and processes forked from the holder (DataLoader workers) never hold
  it. The file records the holder's pid for the message a second process gets; that process waits up to
  `DYING_WAIT_S` seconds for a holder that may be dying (a SIGKILL takes a moment to release a process's files)
  and then raises `FolderBusy` naming the pid. A lock is per process: do not open and close `.lock` elsewhere in
  a process that holds it (closing any descriptor of the file releases the process's lock).
- Files are written through `utils/atomic.atomic_path` (a temporary beside the file, fsynced and renamed over it).
- `check_not_input(out, key, inputs)` refuses an output folder that is, contains or lies inside an input folder
  (data, masks, the checkpoint's folder) before anything is made: inputs are never written.
- `remove_stale_temporaries(folder)` removes the temporaries an interrupted process of ours left (only names of
  `utils/atomic.atomic_path`'s form, `.<name>.<pid>.tmp`; call it while holding the folder's lock, so no live
  writer's file is touched).
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time

try:  # POSIX; elsewhere folders are not locked.
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from utils.atomic import is_own_temporary

LOCK_FILE = ".lock"
DYING_WAIT_S = 10.0
_POLL_S = 0.1


class FolderError(ValueError):
    """An output folder that cannot be created or written; the message names the path, the key and the fix."""


class FolderBusy(ValueError):
    """An output folder locked by another live process; the message names the folder and the holder's pid."""


def _blocking_file(path: str) -> str | None:
    """The first existing component of `path` that is not a folder (None if there is none)."""
    partial = ""
    for part in os.path.abspath(path).split(os.sep)[1:]:
        partial = os.path.join(partial or os.sep, part)
        if not os.path.exists(partial):
            return None
        if not os.path.isdir(partial):
            return partial
    return None


def make_folder(path: str, key: str) -> None:
    """Create folder `path` (and its parents) if needed; `key` is the config key or flag that named it."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        blocker = _blocking_file(path)
        if blocker is not None:
            raise FolderError(f"{key}={path} cannot be a folder: {blocker} is a file; move that file or choose "
                              f"another {key}") from None
        raise FolderError(f"{key}={path} cannot be created ({err.strerror}); choose a writable {key}") from None


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([path, folder]) == folder


def check_not_input(out: str, key: str, inputs: dict[str, str]) -> None:
    """Raise `FolderError` when output folder `out` (set by `key`) is, contains or lies inside one of the `inputs`
    folders (`{folder: what}`, e.g. `{"data/test": "k-space"}`); symbolic links are resolved. The checkpoint's folder
    (`what == "checkpoint"`) is only refused as the output folder itself: a checkpoint beside the working folder
    must not forbid every output below it."""
    real = os.path.realpath(out)
    for folder, what in inputs.items():
        other = os.path.realpath(folder)
        relation = ("is" if real == other else "" if what == "checkpoint" else "lies inside" if _inside(real, other)
                    else "contains" if _inside(other, real) else "")
        if relation:
            raise FolderError(f"{key}={out} {relation} the {what} folder {folder}; inputs are never written: choose "
                              f"another {key}")


def _open_lock_file(folder: str, key: str) -> int:
    path = os.path.join(folder, LOCK_FILE)
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if os.path.islink(path):
            raise FolderError(f"{path} is a symbolic link; a lock file is never followed: remove it, or choose "
                              f"another {key}") from None
        raise FolderError(f"{key}={folder} is not writable ({err.strerror}: {err.filename}); fix its permissions "
                          f"or choose another {key}") from None


class FolderLock:
    """The lock of one folder held by this process; `release()` (or leaving a `with` block) gives it up."""

    def __init__(self, folder: str, fd: int):
        self.folder, self._fd = folder, fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "FolderLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """The pid recorded in a lock file, as text for messages."""
    text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    return f"process {text}" if text.isdigit() else "another process"


def try_lock(folder: str, key: str) -> tuple[FolderLock | None, str]:
    """Take `folder`'s lock without waiting: `(lock, "")`, or `(None, holder)` when another process holds it."""
    fd = _open_lock_file(folder, key)
    if fcntl is not None:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _holder(fd)
            os.close(fd)
            return None, holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return FolderLock(folder, fd), ""


def lock_folder(folder: str, key: str, what: str) -> FolderLock:
    """Create `folder` and hold its lock (module docstring); `what` names the folder's use in the message."""
    make_folder(folder, key)
    wait_s = DYING_WAIT_S
    deadline = time.monotonic() + wait_s
    for attempt in itertools.count():
        lock, holder = try_lock(folder, key)
        if lock is not None:
            return lock
        if attempt == 0:
            logging.info("waiting up to %g s for %s to release %s", wait_s, holder, folder)
        if time.monotonic() >= deadline:
            raise FolderBusy(f"{what} {folder} is being written by {holder} (it holds {LOCK_FILE}); wait for it to "
                             f"end, or choose another {key}")
        time.sleep(_POLL_S)


def remove_stale_temporaries(folder: str, subfolders: tuple[str, ...] = ()) -> None:
    """Delete our temporaries (`utils/atomic.is_own_temporary`) in `folder` and its `subfolders`, left by an
    interrupted write, with a warning; other `*.tmp` files are the user's and are kept."""
    removed = []
    for name in ("",) + subfolders:
        path = os.path.join(folder, name)
        if os.path.isdir(path):
            for entry in os.scandir(path):
                if is_own_temporary(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(entry.path)
                        removed.append(os.path.join(name, entry.name))
    if removed:
        logging.warning("removed %d temporary file(s) of an interrupted write from %s: %s", len(removed), folder,
                        ", ".join(sorted(removed)))
