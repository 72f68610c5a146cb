"""Dashboard accounts and sessions in the catalog (tally.accounts), the
display rule (tally.display), and `tally users` (docs/dashboard.md)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tally.accounts import WRONG, Accounts
from tally.catalog import Catalog
from tally.cli import main
from tally.display import display_name
from tally.errors import Conflict, InvalidInput, NotFound, Unauthorized
from tally.web.sessions import FREE_FAILURES, Throttle

MINUTE_NS = 60 * 10**9


@pytest.fixture
def accounts(tmp_path: Path) -> Accounts:
    return Accounts(Catalog(tmp_path / "catalog.sqlite"))


def test_a_password_signs_in_and_a_wrong_one_or_an_unknown_name_is_refused_alike(
    accounts: Accounts,
) -> None:
    accounts.create("ann", "a good password", role="admin")
    assert accounts.verify("ann", "a good password").is_admin
    with pytest.raises(Unauthorized) as wrong:
        accounts.verify("ann", "not it at all")
    with pytest.raises(Unauthorized) as unknown:
        accounts.verify("nobody", "a good password")
    assert wrong.value.message == unknown.value.message == WRONG
    stored = accounts.catalog.connection.execute("SELECT hash FROM users").fetchone()[0]
    assert stored.startswith("$argon2")
    assert "a good password" not in stored


def test_names_roles_and_passwords_are_checked(accounts: Accounts) -> None:
    with pytest.raises(InvalidInput, match="at least 8"):
        accounts.create("ann", "short")
    with pytest.raises(InvalidInput, match="admin or viewer"):
        accounts.create("ann", "long enough", role="owner")
    with pytest.raises(InvalidInput, match="account name"):
        accounts.create("no spaces please", "long enough")
    accounts.create("ann", "long enough")
    with pytest.raises(Conflict):
        accounts.create("ann", "long enough")
    with pytest.raises(NotFound):
        accounts.delete("bob")


def test_a_session_ends_when_idle_at_sign_out_and_with_a_new_password(
    accounts: Accounts,
) -> None:
    user = accounts.create("ann", "long enough")
    secret, _ = accounts.start_session(user, now_ns=0)
    idle = 10 * MINUTE_NS
    assert accounts.session(secret, idle, now_ns=9 * MINUTE_NS) is not None
    # Its use was noted at minute 9: ten more idle minutes end it.
    assert accounts.session(secret, idle, now_ns=18 * MINUTE_NS) is not None
    assert accounts.session(secret, idle, now_ns=29 * MINUTE_NS) is None
    assert accounts.session(secret, idle, now_ns=18 * MINUTE_NS) is None  # it is gone
    kept, session = accounts.start_session(user)
    other, _ = accounts.start_session(user)
    accounts.set_password("ann", "another password", keep_session=session.secret_hash)
    assert accounts.session(kept, idle) is not None
    assert accounts.session(other, idle) is None
    accounts.end_session(session.secret_hash)
    assert accounts.session(kept, idle) is None
    assert accounts.session("made up", idle) is None


def test_deleting_an_account_ends_its_sessions_and_every_change_is_audited(
    accounts: Accounts,
) -> None:
    user = accounts.create("ann", "long enough", actor="user root")
    secret, _ = accounts.start_session(user)
    accounts.set_password("ann", "another password", actor="user ann")
    accounts.delete("ann", actor="user root")
    assert accounts.session(secret, MINUTE_NS) is None
    entries = [(e.actor, e.action, e.target) for e in accounts.catalog.audit_entries()]
    assert entries == [("user root", "user.delete", "ann"), ("user ann", "user.password", "ann"),
                       ("user root", "user.create", "ann")]  # fmt: skip


def test_the_first_start_makes_an_admin_who_must_choose_a_password(tmp_path: Path) -> None:
    catalog = Catalog(tmp_path / "catalog.sqlite")
    first = catalog.initialise()
    assert first is not None
    admin = Accounts(catalog).verify(first.admin, first.password)
    assert (admin.name, admin.role, admin.must_change) == ("admin", "admin", True)
    assert catalog.initialise() is None


def test_repeated_failures_are_slowed_down_and_a_success_forgets_them() -> None:
    throttle = Throttle()
    for _ in range(FREE_FAILURES):
        assert throttle.delay("Ann") == 0
        throttle.failed("ann")
    assert throttle.delay("ANN") == 1
    throttle.failed("ann")
    assert throttle.delay("ann") == 2
    for _ in range(10):
        throttle.failed("ann")
    assert throttle.delay("ann") == 8
    throttle.succeeded("ann")
    assert throttle.delay("ann") == 0


@pytest.mark.parametrize(
    ("identities", "shown"),
    [
        pytest.param(["anon-1", "bob@example.com"], "bob@example.com", id="an e-mail first"),
        pytest.param(["Jr2fPsXhFBvI9dpv3ZuyC8i8JJo=", "bob"], "bob", id="else a named one"),
        pytest.param(["3f2b8c1e-9d4a-4b6e-8f0a-1c2d3e4f5a6b", "zoe"], "zoe", id="not a uuid"),
        pytest.param(["a@b.example", "z@b.example", "name"], "a@b.example", id="smallest e-mail"),
        pytest.param(
            ["Jr2fPsXhFBvI9dpv3ZuyC8i8JJo="], "Jr2fPsXhFBvI9dpv3ZuyC8i8JJo=", id="else the person"
        ),
        pytest.param(["bob", "anonymous-visitor-12"], "bob", id="anon prefix"),
    ],
)
def test_a_person_is_shown_by_an_identity_a_human_recognises(
    identities: list[str], shown: str
) -> None:
    assert display_name(min(identities), identities) == shown


def test_users_commands_read_the_password_from_stdin(tmp_path: Path) -> None:
    data_dir = str(tmp_path / "data")
    runner = CliRunner()
    made = runner.invoke(main, ["users", "create", "vic", "--data-dir", data_dir],
                         input="a long password\n")  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "Created viewer account 'vic'" in made.output
    listed = runner.invoke(main, ["users", "list", "--json", "--data-dir", data_dir])
    assert '"role": "viewer"' in listed.output
    empty = runner.invoke(main, ["users", "password", "vic", "--data-dir", data_dir], input="")
    assert empty.exit_code == 1
    assert "no password on standard input" in empty.output
    changed = runner.invoke(main, ["users", "password", "vic", "--data-dir", data_dir],
                            input="another password\n")  # fmt: skip
    assert changed.exit_code == 0
    accounts = Accounts(Catalog(tmp_path / "data" / "catalog.sqlite"))
    assert accounts.verify("vic", "another password").name == "vic"
    gone = runner.invoke(main, ["users", "delete", "vic", "--data-dir", data_dir])
    assert gone.exit_code == 0
    assert accounts.users() == []
