"""Products, API keys and operator tokens (SPEC §8).

The catalog is a small SQLite database in the data directory, in WAL mode, so
that the CLI can change it while ``tally serve`` runs and every process sees the
change at once. Operator tokens are shown once and stored only as SHA-256
hashes: they are 256 random bits, so a slow password hash would add nothing.
A token is looked up on every API request, so revoking one takes effect at the
next request; its last use is written at most once a minute
(``TOKEN_USE_RESOLUTION_NS``), so that the API does not write SQLite per request.
Each change writes its audit entry (:mod:`tally.audit`) in the transaction that
makes it, so that none is committed without one, with the ``actor`` the caller
names (the API: the operator token; unnamed: this process's unix user, the CLI's).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from tally import accounts, audit, saved
from tally.audit import AuditEntry, local_actor
from tally.errors import Conflict, InvalidInput, NotFound, Unauthorized, Unavailable

log = logging.getLogger("tally.catalog")

DEFAULT_PRODUCT = "default"
DEFAULT_REVENUE_PROPERTY = "Billing Amount"
#: Product and (new) token names: safe in a URL path, a shell and a table.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_TOKEN_PREFIX = "tally_"
#: A token's ``last_used`` is rewritten only when it is older than this.
TOKEN_USE_RESOLUTION_NS = 60 * 10**9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS products (
    name TEXT PRIMARY KEY,
    timezone TEXT NOT NULL,
    revenue_property TEXT NOT NULL,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key TEXT PRIMARY KEY,
    product TEXT NOT NULL REFERENCES products(name),
    created_ns INTEGER NOT NULL,
    revoked_ns INTEGER
);
CREATE TABLE IF NOT EXISTS tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    created_ns INTEGER NOT NULL,
    last_used_ns INTEGER,
    revoked_ns INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    details TEXT NOT NULL
);
"""

#: Columns added since the first catalogs, each with the statement that adds it
#: to an older catalog (DDL takes no parameters, hence whole statements).
_ADDED_COLUMNS = {
    ("tokens", "last_used_ns"): "ALTER TABLE tokens ADD COLUMN last_used_ns INTEGER",
    ("tokens", "revoked_ns"): "ALTER TABLE tokens ADD COLUMN revoked_ns INTEGER",
}


@dataclass(frozen=True, slots=True)
class ApiKey:
    key: str
    product: str
    created_ns: int
    revoked_ns: int | None


@dataclass(frozen=True, slots=True)
class Product:
    name: str
    timezone: str
    revenue_property: str
    created_ns: int
    keys: tuple[ApiKey, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "timezone": self.timezone,
            "revenue_property": self.revenue_property,
            "created": _iso(self.created_ns),
            "keys": [{"key": k.key, "product": k.product, "created": _iso(k.created_ns),
                      "revoked": k.revoked_ns is not None} for k in self.keys],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Token:
    """An operator token as it may be shown: never its secret nor its hash."""

    id: int
    name: str
    created_ns: int
    last_used_ns: int | None
    revoked_ns: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "created": _iso(self.created_ns),
            "last_used": _iso(self.last_used_ns),
            "revoked": self.revoked_ns is not None,
            "revoked_at": _iso(self.revoked_ns),
        }


def _iso(ns: int | None) -> str | None:
    if ns is None:
        return None
    return datetime.fromtimestamp(ns // 10**9, UTC).isoformat().replace("+00:00", "Z")


def new_api_key() -> str:
    """40 lowercase hex characters, like a KISSmetrics key (SPEC §8)."""
    return secrets.token_hex(20)


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _check_key(key: str) -> str:
    key = key.strip()  # SPEC §11: `_k` is matched exactly after trimming
    if not key or len(key) > 255 or any(c.isspace() or not c.isprintable() for c in key):
        raise InvalidInput(
            "an API key is 1 to 255 printable characters without spaces", field="key"
        )
    return key


def check_timezone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        close = sorted(tz for tz in available_timezones() if name.lower() in tz.lower())[:3]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise InvalidInput(f"unknown time zone {name!r}{hint}", field="timezone") from exc
    return name


class Catalog:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        #: Token id -> when this process last tried to note its use.
        self._use_noted: dict[int, int] = {}
        try:
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None,
                                       check_same_thread=False)  # fmt: skip
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA + accounts.SCHEMA + saved.SCHEMA)
            self._add_missing_columns()
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
            raise Unavailable(
                f"cannot open the catalog {path}: {exc}; if it is damaged, restore it from a "
                "backup (`tally restore`, docs/operations.md)",
                code="catalog_unavailable",
            ) from exc

    def close(self) -> None:
        self._db.close()

    @property
    def connection(self) -> sqlite3.Connection:
        """For the catalog's other tables (tally.accounts, tally.saved)."""
        return self._db

    def changing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A write transaction, for the catalog's other tables."""
        return self._transaction()

    def write_audit(self, db: sqlite3.Connection, actor: str | None, action: str, target: str,
                    details: dict[str, Any], now_ns: int) -> None:  # fmt: skip
        """An audit entry inside the transaction ``db`` of ``changing``."""
        self._audit(db, actor, action, target, details, now_ns)

    def _missing_columns(self) -> list[str]:
        return [
            alter
            for (table, column), alter in _ADDED_COLUMNS.items()
            if not self._db.execute(
                "SELECT 1 FROM pragma_table_info(?) WHERE name = ?", (table, column)
            ).fetchone()
        ]

    def _add_missing_columns(self) -> None:
        """Bring a catalog made by an older Tally up to date. Checked first
        without a write lock, so that opening a current catalog writes nothing;
        checked again under the lock, as another process may be doing the same."""
        if not self._missing_columns():
            return
        with self._transaction() as db:
            for alter in self._missing_columns():
                db.execute(alter)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- the audit log ----------------------------------------------------------------------

    @staticmethod
    def _audit(
        db: sqlite3.Connection,
        actor: str | None,
        action: str,
        target: str,
        details: dict[str, Any],
        now_ns: int,
    ) -> None:
        """One entry, inside the transaction of the change it records. With no
        actor named, the change is this process's own: the CLI's, as its user."""
        db.execute(
            "INSERT INTO audit (time_ns, actor, action, target, details) VALUES (?, ?, ?, ?, ?)",
            (now_ns, actor or local_actor(), action, target,
             json.dumps(details, ensure_ascii=False, sort_keys=True)),
        )  # fmt: skip

    def record(
        self,
        actor: str,
        action: str,
        target: str,
        details: dict[str, Any],
        *,
        now_ns: int | None = None,
    ) -> None:
        """Note an operator action that changes something outside the catalog
        (an alias revocation, a replay of rejects)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._transaction() as db:
            self._audit(db, actor, action, target, details, now_ns)

    def audit_entries(self, limit: int = audit.DEFAULT_LIMIT) -> list[AuditEntry]:
        """The newest ``limit`` entries, newest first (in the order written)."""
        rows = self._db.execute(
            "SELECT id, time_ns, actor, action, target, details FROM audit "
            "ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            AuditEntry(entry_id, time_ns, actor, action, target, json.loads(details))
            for entry_id, time_ns, actor, action, target, details in rows
        ]

    # -- products --------------------------------------------------------------------

    def create_product(
        self,
        name: str,
        *,
        key: str | None = None,
        timezone: str = "UTC",
        actor: str | None = None,
    ) -> Product:
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"a product name is {_NAME_RULE}", field="name")
        check_timezone(timezone)
        key = _check_key(key) if key is not None else new_api_key()
        now = time.time_ns()
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM products WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"product {name!r} exists already", field="name")
            self._ensure_key_free(db, key)
            db.execute(
                "INSERT INTO products VALUES (?, ?, ?, ?)",
                (name, timezone, DEFAULT_REVENUE_PROPERTY, now),
            )
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, NULL)", (key, name, now))
            details = {"key": key, "timezone": timezone}
            self._audit(db, actor, audit.PRODUCT_CREATE, name, details, now)
        return self.product(name)

    def update_product(
        self,
        name: str,
        *,
        timezone: str | None = None,
        revenue_property: str | None = None,
        actor: str | None = None,
    ) -> Product:
        """Change a product's time zone or revenue property (SPEC §8); every
        report reads them when it runs, so the change applies to the past too."""
        found = self.product(name)
        changes: dict[str, str] = {}
        if timezone is not None and timezone != found.timezone:
            changes["timezone"] = check_timezone(timezone)
        if revenue_property is not None:
            revenue_property = revenue_property.strip()
            if not revenue_property or len(revenue_property) > 255:
                raise InvalidInput("a revenue property is 1 to 255 characters",
                                   field="revenue_property")  # fmt: skip
            if revenue_property != found.revenue_property:
                changes["revenue_property"] = revenue_property
        if not changes:
            return found
        now = time.time_ns()
        with self._transaction() as db:
            for column, value in changes.items():  # column: one of two fixed names above
                db.execute(f"UPDATE products SET {column} = ? WHERE name = ?", (value, name))
            self._audit(db, actor, audit.PRODUCT_UPDATE, name, changes, now)
        return self.product(name)

    def products(self) -> list[Product]:
        rows = self._db.execute("SELECT name FROM products ORDER BY created_ns, name").fetchall()
        return [self.product(name) for (name,) in rows]

    def product(self, name: str) -> Product:
        row = self._db.execute(
            "SELECT name, timezone, revenue_property, created_ns FROM products WHERE name = ?",
            (name,),
        ).fetchone()
        if row is None:
            raise NotFound(f"no product named {name!r}", field="product")
        keys = tuple(
            ApiKey(*k)
            for k in self._db.execute(
                "SELECT key, product, created_ns, revoked_ns FROM api_keys "
                "WHERE product = ? ORDER BY created_ns, key",
                (name,),
            )
        )
        name, timezone, revenue_property, created_ns = row
        return Product(name, timezone, revenue_property, created_ns, keys)

    # -- keys --------------------------------------------------------------------------

    @staticmethod
    def _ensure_key_free(db: sqlite3.Connection, key: str) -> None:
        row = db.execute("SELECT product FROM api_keys WHERE key = ?", (key,)).fetchone()
        if row:
            raise Conflict(f"that key belongs to product {row[0]!r} already", field="key")

    def add_key(self, product: str, *, key: str | None = None, actor: str | None = None) -> ApiKey:
        self.product(product)
        key = _check_key(key) if key is not None else new_api_key()
        now = time.time_ns()
        with self._transaction() as db:
            self._ensure_key_free(db, key)
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, NULL)", (key, product, now))
            self._audit(db, actor, audit.KEY_ADD, key, {"product": product}, now)
        return ApiKey(key, product, now, None)

    def revoke_key(self, key: str, *, actor: str | None = None) -> ApiKey:
        """Revoke a key; records received after this are rejected (SPEC §11)."""
        key = key.strip()
        now = time.time_ns()
        with self._transaction() as db:
            row = db.execute(
                "SELECT key, product, created_ns, revoked_ns FROM api_keys WHERE key = ?", (key,)
            ).fetchone()
            if row is None:
                raise NotFound("no such API key", field="key")
            if row[3] is not None:
                return ApiKey(*row)
            db.execute("UPDATE api_keys SET revoked_ns = ? WHERE key = ?", (now, key))
            self._audit(db, actor, audit.KEY_REVOKE, key, {"product": row[1]}, now)
        return ApiKey(row[0], row[1], row[2], now)

    # -- operator tokens ------------------------------------------------------------------

    def create_token(self, name: str = "operator", *, actor: str | None = None) -> str:
        """A new operator token; only its hash is kept, so it is shown once.

        No two active tokens share a name, so that a name says which to revoke
        (a revoked token's name may be used again, to rotate a token)."""
        if not _NAME.fullmatch(name):
            raise InvalidInput(f"a token name is {_NAME_RULE}", field="name")
        token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = time.time_ns()
        with self._transaction() as db:
            if db.execute(
                "SELECT 1 FROM tokens WHERE name = ? AND revoked_ns IS NULL", (name,)
            ).fetchone():
                raise Conflict(
                    f"an active token named {name!r} exists already: choose another name, "
                    f"or revoke that one first (tally tokens revoke {name})",
                    field="name",
                )
            db.execute(
                "INSERT INTO tokens (name, hash, created_ns) VALUES (?, ?, ?)",
                (name, _hash_token(token), now),
            )
            self._audit(db, actor, audit.TOKEN_CREATE, name, {}, now)  # never the secret
        return token

    def tokens(self) -> list[Token]:
        rows = self._db.execute(
            "SELECT id, name, created_ns, last_used_ns, revoked_ns FROM tokens "
            "ORDER BY created_ns, id"
        ).fetchall()
        return [Token(*row) for row in rows]

    def revoke_token(
        self,
        name: str,
        *,
        every: bool = False,
        now_ns: int | None = None,
        actor: str | None = None,
    ) -> list[Token]:
        """Revoke the active token named ``name`` (``every``: all active tokens of
        that name, which catalogs made before names were unique may hold).

        Revoking again is no error: with no active token of that name, the
        revoked ones are returned as they are. Revoking the last active token
        is allowed: ``tally tokens create`` on the server's machine makes another.
        """
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._transaction() as db:
            named = [
                Token(*row)
                for row in db.execute(
                    "SELECT id, name, created_ns, last_used_ns, revoked_ns FROM tokens "
                    "WHERE name = ? ORDER BY created_ns, id",
                    (name,),
                )
            ]
            if not named:
                raise NotFound(f"no operator token named {name!r}", field="name")
            active = [t for t in named if t.revoked_ns is None]
            if not active:
                return named
            if len(active) > 1 and not every:
                created = ", ".join(_iso(t.created_ns) or "" for t in active)
                raise Conflict(
                    f"{len(active)} active tokens are named {name!r} (created {created}): "
                    'revoke them all with --all (API: body {"all": true})',
                    code="ambiguous_name",
                    field="name",
                )
            db.executemany(
                "UPDATE tokens SET revoked_ns = ? WHERE id = ?", [(now_ns, t.id) for t in active]
            )
            # Which of the tokens once named so: by when each was made.
            details = {"created": [_iso(t.created_ns) for t in active]}
            self._audit(db, actor, audit.TOKEN_REVOKE, name, details, now_ns)
        return [Token(t.id, t.name, t.created_ns, t.last_used_ns, now_ns) for t in active]

    def authorise_token(self, token: str, *, now_ns: int | None = None) -> Token:
        """The active token with this secret, its use noted; ``Unauthorized``
        (``invalid_token`` or ``revoked_token``) otherwise.

        Read on every API request (a read in WAL mode waits for no writer);
        written only when the last use noted is a minute old or more."""
        row = self._db.execute(
            "SELECT id, name, created_ns, last_used_ns, revoked_ns FROM tokens WHERE hash = ?",
            (_hash_token(token),),
        ).fetchone()
        if row is None:
            raise Unauthorized("that operator token is not valid", code="invalid_token")
        found = Token(*row)
        if found.revoked_ns is not None:
            raise Unauthorized(
                f"that operator token ({found.name!r}) was revoked at {_iso(found.revoked_ns)}",
                code="revoked_token",
            )
        now_ns = time.time_ns() if now_ns is None else now_ns
        # The process's own last try counts too, so that a write that fails is
        # not tried again on every request.
        last = max(found.last_used_ns or 0, self._use_noted.get(found.id, 0))
        if now_ns - last >= TOKEN_USE_RESOLUTION_NS:
            self._use_noted[found.id] = now_ns
            self._note_use(found.id, now_ns)
        return found

    def _note_use(self, token_id: int, now_ns: int) -> None:
        # The last use is a hint for the operator: a catalog that cannot be
        # written right now (locked, disk full) must not turn a valid token away.
        try:
            self._db.execute(
                "UPDATE tokens SET last_used_ns = max(coalesce(last_used_ns, 0), ?) WHERE id = ?",
                (now_ns, token_id),
            )
        except sqlite3.Error as exc:
            log.warning("could not note the use of operator token %d: %s", token_id, exc)

    def verify_token(self, token: str) -> bool:
        """Whether ``token`` is an active operator token (its use is not noted)."""
        row = self._db.execute(
            "SELECT 1 FROM tokens WHERE hash = ? AND revoked_ns IS NULL", (_hash_token(token),)
        ).fetchone()
        return row is not None

    # -- first start ----------------------------------------------------------------------

    def initialise(self) -> FirstStart | None:
        """On first start: the ``default`` product, an operator token and an
        admin account with a one-time password (tally.accounts).

        ``None`` when the catalog had products already.
        """
        if self._db.execute("SELECT 1 FROM products LIMIT 1").fetchone():
            return None
        product = self.create_product(DEFAULT_PRODUCT, actor=audit.FIRST_START)
        token = self.create_token("initial", actor=audit.FIRST_START)
        password = secrets.token_urlsafe(12)
        admin = accounts.Accounts(self).create(
            accounts.FIRST_ADMIN, password, role="admin", must_change=True,
            actor=audit.FIRST_START,
        )  # fmt: skip
        return FirstStart(product, token, admin.name, password)


@dataclass(frozen=True, slots=True)
class FirstStart:
    """What the first start made, to be shown once."""

    product: Product
    token: str
    admin: str
    password: str
