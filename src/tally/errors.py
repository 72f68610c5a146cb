"""Tally's errors, drawn once.

    TallyError                  base; ``code`` is stable, ``message`` is one line
    ├── InvalidInput            400  a value the caller sent is wrong (``field`` names it)
    ├── Unauthorized            401  missing or wrong operator token (or password)
    ├── Forbidden               403  not allowed: a viewer's change, a form without its CSRF token
    ├── NotFound                404  no such product, key, person, …
    ├── Conflict                409  it exists already
    ├── ClientGone              499  the client left before its answer: its query was
    │                                stopped, and nothing is sent (nginx's code)
    ├── Unavailable             503  Tally cannot do it right now (retry)
    │   └── Busy                503  every query slot stayed taken (Retry-After)
    ├── TimedOut                504  a query ran past --query-timeout and was stopped
    └── QueryTooLarge           507  a query needed more than --query-memory and
                                     --query-spill allow

Domain code raises these; :mod:`tally.api` maps them to HTTP statuses and the one
JSON error shape, ``{"error": {"code", "message", "field"?}}``; the CLI prints
the message on one line and exits non-zero.
"""

from __future__ import annotations

from typing import Any, ClassVar


class TallyError(Exception):
    status: ClassVar[int] = 500
    default_code: ClassVar[str] = "internal_error"
    #: Seconds for the answer's ``Retry-After``, when there is one.
    retry_after: ClassVar[int | None] = None

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.default_code
        self.field = field

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        return {"error": error}


class InvalidInput(TallyError):
    status = 400
    default_code = "invalid_input"


class Unauthorized(TallyError):
    status = 401
    default_code = "unauthorized"


class Forbidden(TallyError):
    status = 403
    default_code = "forbidden"


class NotFound(TallyError):
    status = 404
    default_code = "not_found"


class Conflict(TallyError):
    status = 409
    default_code = "conflict"


class ClientGone(TallyError):
    status = 499
    default_code = "client_gone"


class Unavailable(TallyError):
    status = 503
    default_code = "unavailable"


class Busy(Unavailable):
    default_code = "busy"
    retry_after = 5


class TimedOut(TallyError):
    status = 504
    default_code = "query_timeout"


class QueryTooLarge(TallyError):
    status = 507
    default_code = "query_memory"
