"""Recurring imports (``tally serve --import-dir DIR``), as KISSmetrics' recurring
import worked: files dropped in a folder are imported in alphanumeric order.

Every couple of seconds the folder is looked at. A file is taken only once its
size and modification time are the same at two looks in a row, so a file
still being written (or copied) is not. Its format is its name's: ``.csv`` is
the CSV import format, ``.json``/``.jsonl``/``.ndjson`` JSON lines, each also
``.gz``. It is imported like ``tally import`` does, into an import named after
the file and its size and time (so a server stopped half-way through a file
continues it at its next start), and once every record is in the log it is
moved to ``DIR/completed_imports/YEAR/MONTH/DAY/``. A file that cannot be
imported at all (a CSV header without the columns needed, a name of no known
format) is moved to ``DIR/failed_imports/YEAR/MONTH/DAY/`` with a ``.error``
file beside it that says why.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

from tally.catalog import Catalog
from tally.errors import TallyError
from tally.migrate.checkpoint import ImportState, check_name, default_name, read_state
from tally.migrate.formats import open_source
from tally.migrate.importer import check_resumable, product_key, write_chunks
from tally.settings import Settings

log = logging.getLogger("tally.imports")

COMPLETED = "completed_imports"
FAILED = "failed_imports"
LOOK_SECONDS = 2.0
_FORMATS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".ndjson": "json"}


def format_of(path: Path) -> str | None:
    name = path.name.lower().removesuffix(".gz")
    return next((fmt for suffix, fmt in _FORMATS.items() if name.endswith(suffix)), None)


class ImportDir:
    """Watches ``settings.import_dir`` from a thread of its own."""

    def __init__(self, settings: Settings, *, look_seconds: float = LOOK_SECONDS) -> None:
        assert settings.import_dir is not None
        self.settings = settings
        self.folder = settings.import_dir
        self.look_seconds = look_seconds
        self._seen: dict[str, tuple[int, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread = threading.Thread(target=self._run, name="tally-import-dir", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.look()
            except Exception:  # a bug, or the folder gone: say so, look again later
                log.exception("looking for files to import in %s failed", self.folder)
            self._stop.wait(self.look_seconds)

    def look(self) -> list[Path]:
        """Import every file that has stopped changing since the last look, in
        alphanumeric order; the files moved to ``completed_imports``."""
        sizes: dict[str, tuple[int, int]] = {}
        for path in self.folder.iterdir():
            if path.name.startswith(".") or not path.is_file():
                continue
            with_time = path.stat()
            sizes[path.name] = (with_time.st_size, with_time.st_mtime_ns)
        ready = sorted(n for n, look in sizes.items() if self._seen.get(n) == look)
        self._seen = sizes
        done = []
        for name in ready:
            if self._stop.is_set():
                break
            moved = self._take(self.folder / name, sizes.pop(name))
            self._seen.pop(name, None)
            if moved is not None:
                done.append(moved)
        return done

    def _take(self, path: Path, look: tuple[int, int]) -> Path | None:
        fmt = format_of(path)
        if fmt is None:
            self._fail(path, "not a file to import: its name ends in none of .csv, .json, "
                       ".jsonl, .ndjson (each also .gz)")  # fmt: skip
            return None
        digest = hashlib.blake2b(f"{look[0]}:{look[1]}".encode(), digest_size=4).hexdigest()
        name = check_name(f"{default_name(path)[:48]}-{digest}")
        product = self.settings.import_product
        log_dir = self.settings.log_dir
        try:
            source = open_source(fmt, path)
            fresh = ImportState(name, fmt, str(path.resolve()), product, total=source.total)
            state = check_resumable(read_state(log_dir, name), fresh)
            if not state.complete:
                catalog = Catalog(self.settings.catalog_path)
                try:
                    key = product_key(catalog, product)
                finally:
                    catalog.close()
                state = write_chunks(log_dir, state, source.chunks(state.position, key),
                                     stop=self._stop.is_set)  # fmt: skip
        except TallyError as exc:
            self._fail(path, exc.message)
            return None
        if not state.complete:  # the server is stopping: the next start goes on
            return None
        moved = _move(path, self.folder / COMPLETED)
        log.info("imported %s into %s: %d records (import %s); moved to %s", path.name, product,
                 state.records, name, moved)  # fmt: skip
        return moved

    def _fail(self, path: Path, why: str) -> None:
        moved = _move(path, self.folder / FAILED)
        moved.with_name(moved.name + ".error").write_text(why + "\n")
        log.error("not imported: %s: %s; moved to %s", path.name, why, moved)


def _move(path: Path, into: Path) -> Path:
    """``path`` moved into ``into/YEAR/MONTH/DAY/`` (UTC), under a name not taken."""
    day = into / time.strftime("%Y/%m/%d", time.gmtime())
    day.mkdir(parents=True, exist_ok=True)
    target = day / path.name
    n = 1
    while target.exists():
        n += 1
        target = day / f"{path.stem}.{n}{path.suffix}"
    os.replace(path, target)
    return target
