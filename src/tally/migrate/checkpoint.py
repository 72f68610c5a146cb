"""An import's name, its log stream and its checkpoint.

Each import writes the log stream ``i-<name>``; beside its segments,
``IMPORT.json`` says what it imports and how far it has come: the source, the
product, the position in the source after the last record made durable, the
records written and the lines rejected, and whether it is complete. It is
rewritten (whole, atomically) only after the records it counts are durable,
so a resumed import never skips a record; at worst it writes again the records
of the last chunk, which de-duplication absorbs (SPEC §4).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tally.errors import InvalidInput
from tally.migrate.sources import Position
from tally.replace import replace_file

STREAM_PREFIX = "i-"
CHECKPOINT = "IMPORT.json"
IMPORTING = "importing"
COMPLETE = "complete"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_SUFFIXES = (".gz", ".json", ".jsonl", ".ndjson", ".csv", ".txt")


@dataclass
class ImportState:
    name: str
    format: str  # km, csv, json, http
    source: str
    product: str
    state: str = IMPORTING
    position: Position = field(default_factory=Position)
    total: int = 0  # bytes of the source on disk, when known
    records: int = 0  # written to the log
    rejected: dict[str, int] = field(default_factory=dict)  # lines not readable, by reason
    log_position: int = 0
    started_ns: int = field(default_factory=time.time_ns)
    updated_ns: int = field(default_factory=time.time_ns)

    @property
    def stream(self) -> str:
        return STREAM_PREFIX + self.name

    @property
    def complete(self) -> bool:
        return self.state == COMPLETE

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["position"] = self.position._asdict()
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ImportState:
        doc = dict(doc)
        doc["position"] = Position(**doc.get("position", {}))
        return cls(**doc)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(f"an import's name is 1 to 64 letters, digits, '.', '_' or '-', "
                           f"beginning with a letter or digit, not {name!r}",
                           field="name")  # fmt: skip
    return name


def default_name(source: Path) -> str:
    """A name from the source: its file or folder name without its suffixes."""
    base = source.resolve().name
    lowered = base.lower()
    for suffix in _SUFFIXES * 2:
        if lowered.endswith(suffix) and len(lowered) > len(suffix):
            base, lowered = base[: -len(suffix)], lowered[: -len(suffix)]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", base).strip("-._")[:64]
    return cleaned or "import"


def read_state(log_dir: Path, name: str) -> ImportState | None:
    path = log_dir / (STREAM_PREFIX + name) / CHECKPOINT
    try:
        return ImportState.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise InvalidInput(f"cannot read the checkpoint {path}: {exc}", field="name") from exc


def write_state(log_dir: Path, state: ImportState) -> None:
    state.updated_ns = time.time_ns()
    stream_dir = log_dir / state.stream
    stream_dir.mkdir(parents=True, exist_ok=True)
    replace_file(stream_dir / CHECKPOINT, json.dumps(state.to_json(), indent=1).encode(), sync=True)


def list_imports(log_dir: Path) -> list[ImportState]:
    """Every import of the data directory, oldest first."""
    found = []
    if log_dir.is_dir():
        for stream_dir in log_dir.iterdir():
            if stream_dir.name.startswith(STREAM_PREFIX):
                state = read_state(log_dir, stream_dir.name[len(STREAM_PREFIX) :])
                if state is not None:
                    found.append(state)
    return sorted(found, key=lambda s: (s.started_ns, s.name))
