"""Products, API keys and operator tokens (SPEC §8).

The catalog is a small SQLite database in the data directory, in WAL mode, so
that the CLI can change it while ``tally serve`` runs and every process sees the
change at once. Operator tokens are shown once and stored only as SHA-256
hashes: they are 256 random bits, so a slow password hash would add nothing.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from tally.errors import Conflict, InvalidInput, NotFound, Unavailable

DEFAULT_PRODUCT = "default"
DEFAULT_REVENUE_PROPERTY = "Billing Amount"
_PRODUCT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN_PREFIX = "tally_"

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
    created_ns INTEGER NOT NULL
);
"""


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
        try:
            self._db = sqlite3.connect(path, timeout=10, isolation_level=None,
                                       check_same_thread=False)  # fmt: skip
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:  # e.g. "file is not a database"
            raise Unavailable(
                f"cannot open the catalog {path}: {exc}; if it is damaged, restore it from a "
                "backup (`tally restore`, docs/operations.md)",
                code="catalog_unavailable",
            ) from exc

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- products --------------------------------------------------------------------

    def create_product(
        self, name: str, *, key: str | None = None, timezone: str = "UTC"
    ) -> Product:
        if not _PRODUCT_NAME.fullmatch(name):
            raise InvalidInput(
                "a product name is 1 to 64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit",
                field="name",
            )
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

    def add_key(self, product: str, *, key: str | None = None) -> ApiKey:
        self.product(product)
        key = _check_key(key) if key is not None else new_api_key()
        now = time.time_ns()
        with self._transaction() as db:
            self._ensure_key_free(db, key)
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, NULL)", (key, product, now))
        return ApiKey(key, product, now, None)

    def revoke_key(self, key: str) -> ApiKey:
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
        return ApiKey(row[0], row[1], row[2], now)

    # -- operator tokens ------------------------------------------------------------------

    def create_token(self, name: str = "operator") -> str:
        """A new operator token; only its hash is kept, so it is shown once."""
        token = _TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self._transaction() as db:
            db.execute(
                "INSERT INTO tokens (name, hash, created_ns) VALUES (?, ?, ?)",
                (name, _hash_token(token), time.time_ns()),
            )
        return token

    def verify_token(self, token: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM tokens WHERE hash = ?", (_hash_token(token),)
        ).fetchone()
        return row is not None

    # -- first start ----------------------------------------------------------------------

    def initialise(self) -> tuple[Product, str] | None:
        """On first start: the ``default`` product and an operator token.

        ``None`` when the catalog had products already.
        """
        if self._db.execute("SELECT 1 FROM products LIMIT 1").fetchone():
            return None
        product = self.create_product(DEFAULT_PRODUCT)
        return product, self.create_token("initial")
