"""Counting what the log holds, incrementally."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from tally.log.reader import LogReader


@dataclass(frozen=True, slots=True)
class StreamStats:
    name: str
    records: int
    bytes: int


class LogStats:
    """Remembers how far each stream was counted, so a refresh reads only what
    was appended since."""

    def __init__(self, log_dir: Path) -> None:
        self._reader = LogReader(log_dir)
        self._counted: dict[str, tuple[int, int]] = {}  # stream -> (records, position)
        self._lock = threading.Lock()

    def refresh(self) -> list[StreamStats]:
        with self._lock:
            result = []
            for stream in self._reader.streams():
                records, position = self._counted.get(stream, (0, 0))
                more, position = self._reader.count(stream, position)
                self._counted[stream] = (records + more, position)
                result.append(StreamStats(stream, records + more, self._reader.size(stream)))
            return result
