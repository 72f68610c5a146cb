"""The CLI's way to the data: through the running server, or straight to disk.

While ``tally serve`` runs it owns the store (DuckDB allows one writing
process), so the CLI asks the core over its Unix socket, with the token the
server left in ``run/cli.token`` (readable only by whoever may read the data
directory). When no server runs, the CLI opens the store itself and calls the
same view functions.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

from tally.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    TallyError,
    Unauthorized,
    Unavailable,
)
from tally.settings import Settings


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


_ERRORS: dict[int, type[TallyError]] = {
    400: InvalidInput, 401: Unauthorized, 404: NotFound, 409: Conflict, 503: Unavailable,
}  # fmt: skip


def server_running(settings: Settings) -> bool:
    if not (settings.core_socket.exists() and settings.local_token_path.exists()):
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(settings.core_socket))
    except OSError:
        return False
    return True


def request(
    settings: Settings,
    method: str,
    path: str,
    params: dict[str, Any] | None = None,
    body: dict[str, Any] | None = None,
    timeout: float = 600,
) -> Any:
    """Call the running server's API; its JSON answer, or its error raised."""
    connection, target, token = _connect(settings, path, params, timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request(method, target, body=payload, headers=headers)
        response = connection.getresponse()
        data = json.loads(response.read() or b"{}")
    except (OSError, ValueError) as exc:
        raise Unavailable(f"cannot talk to tally serve: {exc}") from exc
    finally:
        connection.close()
    if response.status >= 400:
        raise _error(response.status, data)
    return data


def stream(
    settings: Settings, path: str, params: dict[str, Any] | None = None, timeout: float = 600
) -> Iterator[bytes]:
    """A ``GET`` of the running server's API whose answer is read as it comes
    (an export), chunk by chunk; its error raised as :func:`request` does."""
    connection, target, token = _connect(settings, path, params, timeout)
    try:
        connection.request("GET", target, headers={"Authorization": f"Bearer {token}"})
        response = connection.getresponse()
        if response.status >= 400:
            try:
                data = json.loads(response.read() or b"{}")
            except ValueError:
                data = {}
            raise _error(response.status, data)
        while chunk := response.read(64 * 1024):
            yield chunk
    except OSError as exc:
        raise Unavailable(f"cannot talk to tally serve: {exc}") from exc
    finally:
        connection.close()


def _connect(
    settings: Settings, path: str, params: dict[str, Any] | None, timeout: float
) -> tuple[_UnixConnection, str, str]:
    """A connection to the core, the request target, and the CLI's token."""
    try:
        token = settings.local_token_path.read_text().strip()
    except OSError as exc:
        raise Unavailable("tally serve is not running for this data directory") from exc
    query = {k: v for k, v in (params or {}).items() if v is not None}
    target = path + ("?" + urlencode(query) if query else "")
    return _UnixConnection(str(settings.core_socket), timeout), target, token


def _error(status: int, data: Any) -> TallyError:
    """The API's one error shape as the exception of its status."""
    error = data.get("error", {}) if isinstance(data, dict) else {}
    return _ERRORS.get(status, TallyError)(
        str(error.get("message", f"tally serve answered {status}")),
        code=error.get("code"),
        field=error.get("field"),
    )


def product_path(product: str, *rest: str) -> str:
    return (
        "/api/v1/products/"
        + quote(product, safe="")
        + "".join("/" + quote(part, safe="") for part in rest)
    )
