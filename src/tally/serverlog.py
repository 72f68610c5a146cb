"""The server's own log: stderr and ``DATA_DIR/tally.log``, for every process."""

from __future__ import annotations

import logging
import sys

from tally.settings import Settings

_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.StreamHandler(sys.stderr),
        logging.FileHandler(settings.data_dir / "tally.log"),
    ]
    logging.basicConfig(level=level, format=_FORMAT, handlers=handlers, force=True)
