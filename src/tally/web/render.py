"""The dashboard's shared state and how a page is rendered (Jinja2 templates)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from tally.accounts import Accounts, Session
from tally.api_core import Core
from tally.reports import KINDS
from tally.views.names import names_view
from tally.web import sessions
from tally.web.tables import cell

HERE = Path(__file__).parent
TEMPLATES = Jinja2Templates(directory=HERE / "templates")
TEMPLATES.env.filters["cell"] = cell

#: What each report kind is called on the page.
KIND_TITLES = {
    "metrics": "Metrics",
    "funnel": "Funnel",
    "cohort": "Cohort",
    "revenue": "Revenue",
    "abtest": "A/B test",
    "path": "Paths",
    "people": "People search",
}
assert set(KIND_TITLES) == set(KINDS)


#: How long the pickers' names of a product are reused before they are read again.
NAMES_SECONDS = 30.0


@dataclass
class Web:
    core: Core
    accounts: Accounts
    throttle: sessions.Throttle = field(default_factory=sessions.Throttle)
    #: Product -> (when read, its names): the pickers of every report page
    #: read them, and on ten million events that costs a quarter second.
    names_read: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    async def names(self, request: Request, product: str) -> dict[str, Any]:
        """The product's event and property names (views.names), at most
        ``NAMES_SECONDS`` old, read in the query pool (tally.query_pool)."""
        read_at, found = self.names_read.get(product, (0.0, {}))
        if time.monotonic() - read_at > NAMES_SECONDS:
            found = await self.core.queries.run(request, lambda con: names_view(con, product))
            self.names_read[product] = (time.monotonic(), found)
        return found

    def session(self, request: Request, *, password_page: bool = False) -> Session:
        idle = self.core.settings.session_idle_minutes * 60
        return sessions.current(request, self.accounts, idle, password_page=password_page)


def web_of(request: Request) -> Web:
    web: Web = request.app.state.web
    return web


def back_url(request: Request) -> str:
    """Where "go back" leads: the page the browser came from, if it is ours."""
    referer = request.headers.get("referer", "")
    parts = urlsplit(referer)
    if referer and parts.netloc == request.headers.get("host", "") and parts.path:
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return "/"


def render(
    request: Request,
    template: str,
    *,
    session: Session | None = None,
    product: str | None = None,
    status: int = 200,
    **context: Any,
) -> Response:
    web = web_of(request)
    products = [p.name for p in web.core.catalog.products()] if session else []
    return TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "session": session,
            "product": product,
            "products": products,
            "kinds": KIND_TITLES,
            "back": back_url(request),
            **context,
        },
        status_code=status,
        headers={"Cache-Control": "no-store"},
    )
