"""The server's own log: stderr and ``DATA_DIR/tally.log``, for every process.

Every process of ``tally serve`` (the supervisor with the core, and each
collector) appends to the same ``tally.log``. It is rotated by the supervisor
alone, once it passes ``--log-max-mib``: ``tally.log`` becomes ``tally.log.1``
(the one before becomes ``.2``, and so on; at most :data:`KEPT` old files are
kept), and every process reopens ``tally.log`` at its next line because its
handler watches the file (:class:`logging.handlers.WatchedFileHandler`), which
also lets an operator's ``logrotate`` move it away.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
from pathlib import Path

from tally.settings import Settings

_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"

#: Rotated files kept beside ``tally.log``: ``tally.log.1`` (newest) to ``tally.log.KEPT``.
KEPT = 3

log = logging.getLogger("tally.server")


def log_path(settings: Settings) -> Path:
    return settings.data_dir / "tally.log"


class _LogFile(logging.handlers.WatchedFileHandler):
    """``tally.log``, reopened when it was moved (rotated). A line it cannot
    take (its directory is gone) is on stderr all the same: never an error."""

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(OSError):
            super().emit(record)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        _LogFile(log_path(settings)),
    ]
    logging.basicConfig(level=level, format=_FORMAT, handlers=handlers, force=True)


class Rotation:
    """Rotates ``tally.log`` once it has passed ``settings.log_max_mib``.

    Only the supervisor holds one (two processes rotating at once would lose a
    file); the others notice the rename at their next line and reopen."""

    def __init__(self, settings: Settings) -> None:
        self.path = log_path(settings)
        self.limit = settings.log_max_mib * 1024 * 1024
        self.failing = False  # the last attempt failed, and said so

    def check(self) -> bool:
        """Rotate if the log is large enough; whether it did."""
        path = self.path
        try:
            size = path.stat().st_size
            if size < self.limit:
                return False
            with contextlib.suppress(FileNotFoundError):
                path.with_name(f"{path.name}.{KEPT}").unlink()
            for index in range(KEPT - 1, 0, -1):
                with contextlib.suppress(FileNotFoundError):
                    older = path.with_name(f"{path.name}.{index + 1}")
                    path.with_name(f"{path.name}.{index}").rename(older)
            path.rename(path.with_name(f"{path.name}.1"))
        except FileNotFoundError:
            return False
        except OSError as exc:  # said once, not every half second while it lasts
            if not self.failing:
                log.warning("cannot rotate %s: %s", path, exc)
            self.failing = True
            return False
        self.failing = False
        log.info("rotated tally.log at %.1f MiB (the previous one is tally.log.1)", size / 1024**2)
        return True
