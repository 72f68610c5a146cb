"""How a person is shown: by an identity a human recognises (docs/reports.md).

A person is one or more identities (SPEC §5) and is *named* by the smallest of
them (``person``), which is stable but often an anonymous id. The identity
*shown* (``display``) is, among the person's identities:

1. the smallest that looks like an e-mail address (``x@y.z``);
2. else the smallest that does not look anonymous;
3. else ``person``.

An identity looks anonymous when it is a UUID, starts with ``anon``, or is 16
or more characters of letters, digits and ``+/=_-`` with both a letter and a
digit (KISSmetrics' browser ids, hashes, device ids). The rule is a pure
function of the identities, so the API, the CLI and the dashboard agree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?([0-9a-fA-F]{4}-?){3}[0-9a-fA-F]{12}")
_TOKEN = re.compile(r"[A-Za-z0-9+/=_-]{16,}")


def looks_anonymous(identity: str) -> bool:
    if identity.lower().startswith("anon") or _UUID.fullmatch(identity):
        return True
    return bool(
        _TOKEN.fullmatch(identity)
        and any(c.isdigit() for c in identity)
        and any(c.isalpha() for c in identity)
    )


def display_name(person: str, identities: Iterable[str]) -> str:
    """The identity to show for ``person`` (see the module's rule)."""
    ordered = sorted(set(identities) | {person})
    for identity in ordered:
        if _EMAIL.fullmatch(identity):
            return identity
    for identity in ordered:
        if not looks_anonymous(identity):
            return identity
    return person
