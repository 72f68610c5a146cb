"""Event and property names: their display form and their key (SPEC §2, §11).

A name is NFC-normalised, ``,`` and ``:`` become spaces, runs of white space
collapse to one space and the ends are trimmed: that is its *display* form, to
which the 255-character limit applies. Its *key*, under which names are equal
(``Signed Up``, ``signed up`` and ``Signed,Up`` are one event), is the
case-fold of the display form.

White space is what :meth:`str.split` splits on (Unicode white space, plus the
ASCII separators U+001C to U+001F), and it collapses to one ASCII space.

Names repeat across records far more than they vary, so :func:`normalise` keeps
the answers in a bounded cache; the processor calls it on its hot path.
"""

from __future__ import annotations

import unicodedata

#: The longest display name, in characters (SPEC §2).
MAX_NAME = 255

_CACHE_SIZE = 65_536
#: Longer raw names are not cached: they are rare, and would make the cache big.
_CACHE_NAME_LENGTH = 4 * MAX_NAME
_cache: dict[str, tuple[str, str] | None] = {}
#: ``(display, key)`` of a raw name seen before, else ``None``: the processor's
#: shortcut past a call of :func:`normalise` (which it makes on a miss).
cached = _cache.get


def normalise(raw: str) -> tuple[str, str] | None:
    """``(display, key)`` of a raw name, or ``None`` when it is empty."""
    try:
        return _cache[raw]
    except KeyError:
        pass
    text = raw if raw.isascii() else unicodedata.normalize("NFC", raw)
    if "," in text or ":" in text:
        text = text.replace(",", " ").replace(":", " ")
    display = " ".join(text.split())
    names = (display, display.casefold()) if display else None
    if len(raw) <= _CACHE_NAME_LENGTH:
        if len(_cache) >= _CACHE_SIZE:
            _cache.clear()  # cheaper than LRU bookkeeping; a refill is one pass
        _cache[raw] = names
    return names


def normalise_name(raw: str) -> str | None:
    """The display form of a name, or ``None`` when nothing is left of it."""
    names = normalise(raw)
    return None if names is None else names[0]


def name_key(name: str) -> str:
    """The key of a name, raw or displayed (``""`` for a name that is empty).

    It normalises first, so a report asking for ``"signed,up"`` finds the
    events sent as ``Signed Up``.
    """
    names = normalise(name)
    return "" if names is None else names[1]
