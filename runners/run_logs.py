"""The run's logs: `train.log` and the TensorBoard events (rank 0).

Both are conveniences beside the checkpoints, so a disk that fills up (or a quota, or a folder removed under a
running job) must not end training with a traceback: the first failed write gives one warning naming the file and
the reason, and training goes on without that log. The checkpoints are not optional; a checkpoint that cannot be
written stops training with its own one-line error (utils/atomic.py).
"""
from __future__ import annotations

import contextlib
import logging
import sys
import threading

from torch.utils.tensorboard import SummaryWriter


class _LogFile(logging.FileHandler):
    """A `FileHandler` that, on its first failed write, says so once (on the other handlers) and falls silent,
    instead of printing a "--- Logging error ---" traceback for every record."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (the logging API's name)
        self.failed = True
        err = _current_error()
        logging.warning("cannot write the log file %s (%s); the log goes on on the console only", self.baseFilename,
                        err)


def _current_error() -> str:
    err = sys.exc_info()[1]
    return (getattr(err, "strerror", None) or str(err)) if err is not None else "unknown error"


@contextlib.contextmanager
def log_file(path: str, enabled: bool):
    """Copy log records to `path` (appending) while the block runs."""
    if not enabled:
        yield
        return
    handler = _LogFile(path)
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s %(filename)s:%(lineno)d] %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        yield
    finally:
        logging.getLogger().removeHandler(handler)
        with contextlib.suppress(OSError):
            handler.close()


class EventLog:
    """The TensorBoard events of a run folder: `scalar`, `image`, `flush`, `close`.

    The first `OSError` (from the writer, or raised again from its background thread) gives one warning naming the
    folder; later calls do nothing. While the log is open, an `OSError` of TensorBoard's writer thread is not
    printed as a thread traceback (the next call in the training loop reports it, once).
    """

    def __init__(self, folder: str, purge_step: int | None = None):
        self.folder = folder
        self._hook = threading.excepthook
        threading.excepthook = self._thread_error
        self.writer: SummaryWriter | None = None
        self._broken: SummaryWriter | None = None
        self._call(lambda: setattr(self, "writer", SummaryWriter(folder, purge_step=purge_step)))

    def _thread_error(self, args) -> None:
        if isinstance(args.exc_value, OSError) and "event_file_writer" in type(args.thread).__module__:
            return
        self._hook(args)

    def _call(self, write) -> None:
        try:
            write()
        except OSError as err:
            self._broken, self.writer = self.writer, None
            logging.warning("cannot write the TensorBoard events in %s (%s); training goes on without them",
                            self.folder, err.strerror or err)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is not None:
            self._call(lambda: self.writer.add_scalar(tag, value, step))

    def image(self, tag: str, image, step: int) -> None:
        if self.writer is not None:
            self._call(lambda: self.writer.add_image(tag, image, step))

    def flush(self) -> None:
        if self.writer is not None:
            self._call(self.writer.flush)

    def close(self) -> None:
        try:
            if self.writer is not None:
                self._call(self.writer.close)
        finally:
            if self._broken is not None:
                with contextlib.suppress(OSError):
                    self._broken.close()
            self.writer = self._broken = None
            threading.excepthook = self._hook
