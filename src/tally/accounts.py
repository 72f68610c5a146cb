"""Dashboard accounts and their sessions, kept in the catalog (SQLite).

A user has a name, a role (``admin`` changes things, ``viewer`` reads every
page of every product and changes nothing) and an argon2 password hash
(argon2-cffi). A session is a random secret in an HttpOnly cookie; the catalog
keeps only its SHA-256 (256 random bits need no slow hash), with a CSRF token
that every state-changing form carries. A session ends at sign-out, when its
user is deleted or changes password, or after ``session_idle_minutes`` without
a request (tally.settings); its last use is written at most once a minute.

The account that ``tally serve`` makes on its first start has a one-time
password: it signs in once with it and must choose its own.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tally import audit
from tally.errors import Conflict, InvalidInput, NotFound, Unauthorized

if TYPE_CHECKING:
    from tally.catalog import Catalog

ROLES = ("admin", "viewer")
FIRST_ADMIN = "admin"
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
#: The last use of a session is rewritten only when it is older than this.
SEEN_RESOLUTION_NS = 60 * 10**9
#: Said for a wrong password and for an unknown name alike.
WRONG = "that name and password do not match an account"

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    hash TEXT NOT NULL,
    must_change INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    hash TEXT PRIMARY KEY,
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    seen_ns INTEGER NOT NULL
);
"""

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Checked against when the name is unknown, so that both take as long.
    Made on first use: an argon2 hash takes about half a second here, which
    every command and process that imports this module would pay."""
    return _hasher.hash("not a password of anyone's")


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    must_change: bool
    created_ns: int

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role, "must_change_password": self.must_change,
                "created": audit.iso(self.created_ns)}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Session:
    user: User
    csrf: str
    secret_hash: str


def user_actor(name: str) -> str:
    """A change made in the dashboard by the account ``name`` (tally.audit)."""
    return f"user {name}"


def check_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise InvalidInput(f"a password has at least {MIN_PASSWORD} characters", field="password")
    if len(password) > MAX_PASSWORD:
        raise InvalidInput(f"a password has at most {MAX_PASSWORD} characters", field="password")
    return password


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Accounts:
    """Users and sessions over the catalog's connection."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._seen_noted: dict[str, int] = {}

    @staticmethod
    def prepare_sign_in() -> None:
        """Make the hash that an unknown name is checked against now, not at
        the first sign-in (which would then take longer than the others)."""
        _dummy_hash()

    @property
    def _db(self) -> sqlite3.Connection:
        return self.catalog.connection

    # -- users -------------------------------------------------------------------------

    def create(
        self,
        name: str,
        password: str,
        *,
        role: str = "viewer",
        must_change: bool = False,
        actor: str | None = None,
    ) -> User:
        if not _NAME.fullmatch(name):
            raise InvalidInput(
                "an account name is 1 to 64 letters, digits, '.', '_', '@' or '-', starting "
                "with a letter or digit",
                field="name",
            )
        if role not in ROLES:
            raise InvalidInput("a role is admin or viewer", field="role")
        hashed = _hasher.hash(check_password(password))
        now = time.time_ns()
        with self.catalog.changing() as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone():
                raise Conflict(f"an account named {name!r} exists already", field="name")
            db.execute("INSERT INTO users VALUES (?, ?, ?, ?, ?)",
                       (name, role, hashed, int(must_change), now))  # fmt: skip
            self.catalog.write_audit(db, actor, audit.USER_CREATE, name, {"role": role}, now)
        return User(name, role, must_change, now)

    def users(self) -> list[User]:
        rows = self._db.execute(
            "SELECT name, role, must_change, created_ns FROM users ORDER BY created_ns, name"
        ).fetchall()
        return [User(n, r, bool(m), c) for n, r, m, c in rows]

    def user(self, name: str) -> User:
        row = self._db.execute(
            "SELECT name, role, must_change, created_ns FROM users WHERE name = ?", (name,)
        ).fetchone()
        if row is None:
            raise NotFound(f"no account named {name!r}", field="name")
        return User(row[0], row[1], bool(row[2]), row[3])

    def delete(self, name: str, *, actor: str | None = None) -> None:
        now = time.time_ns()
        with self.catalog.changing() as db:
            if db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no account named {name!r}", field="name")
            db.execute("DELETE FROM sessions WHERE user = ?", (name,))
            self.catalog.write_audit(db, actor, audit.USER_DELETE, name, {}, now)

    def set_password(self, name: str, password: str, *, actor: str | None = None,
                     keep_session: str | None = None) -> None:  # fmt: skip
        """A new password; every session of the account ends, except
        ``keep_session`` (the one that changed it)."""
        hashed = _hasher.hash(check_password(password))
        now = time.time_ns()
        with self.catalog.changing() as db:
            changed = db.execute("UPDATE users SET hash = ?, must_change = 0 WHERE name = ?",
                                 (hashed, name)).rowcount  # fmt: skip
            if not changed:
                raise NotFound(f"no account named {name!r}", field="name")
            db.execute("DELETE FROM sessions WHERE user = ? AND hash <> ?",
                       (name, keep_session or ""))  # fmt: skip
            self.catalog.write_audit(db, actor, audit.USER_PASSWORD, name, {}, now)

    def verify(self, name: str, password: str) -> User:
        """The account, if ``password`` is its own; else ``Unauthorized`` with
        the same words whether the name is unknown or the password wrong."""
        row = self._db.execute("SELECT hash FROM users WHERE name = ?", (name,)).fetchone()
        try:
            _hasher.verify(row[0] if row else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            raise Unauthorized(WRONG, code="wrong_password") from None
        if row is None:  # pragma: no cover - the dummy hash matches no password
            raise Unauthorized(WRONG, code="wrong_password")
        return self.user(name)

    # -- sessions ----------------------------------------------------------------------

    def start_session(self, user: User, *, now_ns: int | None = None) -> tuple[str, Session]:
        """A new session: its secret (for the cookie, never stored) and itself."""
        secret = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time_ns() if now_ns is None else now_ns
        with self.catalog.changing() as db:
            db.execute("INSERT INTO sessions VALUES (?, ?, ?, ?, ?)",
                       (_digest(secret), user.name, csrf, now, now))  # fmt: skip
        return secret, Session(user, csrf, _digest(secret))

    def session(self, secret: str, idle_ns: int, *, now_ns: int | None = None) -> Session | None:
        """The live session with this secret (its use noted), or ``None`` when
        there is none or it has been idle longer than ``idle_ns`` (then it ends)."""
        now = time.time_ns() if now_ns is None else now_ns
        digest = _digest(secret)
        row = self._db.execute(
            "SELECT s.csrf, s.seen_ns, u.name, u.role, u.must_change, u.created_ns "
            "FROM sessions s JOIN users u ON u.name = s.user WHERE s.hash = ?",
            (digest,),
        ).fetchone()
        if row is None:
            return None
        csrf, seen, name, role, must_change, created = row
        seen = max(seen, self._seen_noted.get(digest, 0))
        if now - seen > idle_ns:
            self.end_session(digest)
            return None
        if now - seen >= SEEN_RESOLUTION_NS:
            self._seen_noted[digest] = now
            self._db.execute("UPDATE sessions SET seen_ns = ? WHERE hash = ?", (now, digest))
        return Session(User(name, role, bool(must_change), created), csrf, digest)

    def end_session(self, secret_hash: str) -> None:
        self._db.execute("DELETE FROM sessions WHERE hash = ?", (secret_hash,))
        self._seen_noted.pop(secret_hash, None)


def same_token(a: str, b: str) -> bool:
    return bool(a) and hmac.compare_digest(a.encode(), b.encode())
