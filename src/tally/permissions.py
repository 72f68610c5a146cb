"""Who may read the data directory: only the user Tally runs as.

The data directory holds every person's identities and events, API keys and
the CLI's token. Tally creates it 0700 and everything in it 0600 (the core's
socket too), whatever the umask it was started with; a data directory that
already lets other users in is left as it is (its owner may mean it) but named
in a warning at start.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("tally.server")

#: Files and directories Tally creates: for their owner only.
UMASK = 0o077
FILE_MODE = 0o600


def restrict() -> None:
    """Everything this process and its children create is for the owner only."""
    os.umask(UMASK)


def warn_if_shared(data_dir: Path) -> None:
    """Say so when other users may read or enter the data directory."""
    try:
        mode = data_dir.stat().st_mode
    except OSError:
        return
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning(
            "the data directory %s is open to other users (mode %o): anyone on this "
            "machine may read its identities and events; `chmod -R go= %s` closes it",
            data_dir,
            stat.S_IMODE(mode),
            data_dir,
        )
