"""The audit log: what an operator changed, and who did it.

Every operator action that changes something is one entry: its time, its
actor, a stable action name, its target and what was done (``details``).
The entries live in the catalog (table ``audit``, :mod:`tally.catalog`); a
change to the catalog writes its entry in the same transaction, so that no
change is committed without one. Alias revocations and replays change the
log and the store, not the catalog: they are recorded where they are carried
out (``tally alias revoke``; the replay route and ``tally rejects replay``
without a server).

An entry never holds a token's secret nor its hash. API keys are shown: a
key is no secret (SPEC §8; every page that tracks carries it).
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import Field

from tally.validation import Params

PRODUCT_CREATE = "product.create"
PRODUCT_UPDATE = "product.update"
KEY_ADD = "key.add"
KEY_REVOKE = "key.revoke"
TOKEN_CREATE = "token.create"
TOKEN_REVOKE = "token.revoke"
ALIAS_REVOKE = "alias.revoke"
REJECTS_REPLAY = "rejects.replay"
USER_CREATE = "user.create"
USER_DELETE = "user.delete"
USER_PASSWORD = "user.password"
SAVED_CREATE = "saved.create"
SAVED_DELETE = "saved.delete"
IMPORT_WRITE = "import.write"
#: Every action, as documented (docs/http-api.md); the names are stable.
ACTIONS = (
    PRODUCT_CREATE, PRODUCT_UPDATE, KEY_ADD, KEY_REVOKE, TOKEN_CREATE, TOKEN_REVOKE,
    ALIAS_REVOKE, REJECTS_REPLAY, USER_CREATE, USER_DELETE, USER_PASSWORD, SAVED_CREATE,
    SAVED_DELETE, IMPORT_WRITE,
)  # fmt: skip

#: The CLI through a running server, with the token the server left it
#: (``run/cli.token``, readable only by the data directory's owner).
LOCAL_CLI = "cli"
#: ``tally serve`` creating the product ``default`` and a token on first start.
FIRST_START = "tally serve (first start)"

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


def token_actor(name: str) -> str:
    """An API call made with the operator token ``name``. Prefixed, so that a
    token cannot be named to pass for the CLI (a token may be named "cli")."""
    return f"token {name}"


def local_actor() -> str:
    """This process, writing the catalog itself: the CLI, as its unix user.

    The user is the one the process runs as (its effective uid), not ``$USER``,
    which says whatever the environment says."""
    uid = os.geteuid()
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no name (e.g. in a container)
        user = f"uid {uid}"
    return f"cli (unix user {user})"


class AuditQuery(Params):
    """How many entries to show: the API's query parameter, the CLI's option."""

    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="Newest first.")] = DEFAULT_LIMIT


@dataclass(frozen=True, slots=True)
class AuditEntry:
    id: int
    time_ns: int
    actor: str
    action: str
    target: str
    details: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "time": iso(self.time_ns),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "details": self.details,
        }


def iso(ns: int) -> str:
    when = datetime.fromtimestamp(ns / 1e9, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
