"""`make screenshots`: every page of the dashboard on the browser tests' demo
shop (tests/dashboard_site.py), as docs/screenshots/*.png.

Starts its own server on 127.0.0.1 in a temporary directory and stops it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dashboard_site import BODIES, PRODUCT, chromium, sign_in, start_site  # noqa: E402

OUT = HERE / "screenshots"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        server = start_site(Path(tmp) / "data")
        try:
            with chromium() as browser:
                context = browser.new_context(viewport={"width": 1440, "height": 900})
                page = context.new_page()
                page.goto(server.base_url + "/sign-in")
                page.screenshot(path=OUT / "sign-in.png")
                sign_in(page, server)
                product = f"{server.base_url}/products/{PRODUCT}"
                pages = {
                    "overview": f"{product}/",
                    **{f"report-{kind}": f"{product}/reports/{kind}?q={quote(json.dumps(body))}"
                       for kind, body in BODIES.items()},
                    "person": f"{product}/people/ann%40shop.example",
                    "events": f"{product}/events",
                    "rejects": f"{product}/rejects",
                    "saved": f"{product}/saved",
                    "admin-products": f"{server.base_url}/admin/products",
                    "admin-tokens": f"{server.base_url}/admin/tokens",
                    "admin-accounts": f"{server.base_url}/admin/accounts",
                }  # fmt: skip
                for name, url in pages.items():
                    page.goto(url)
                    if page.locator("#chart").count():
                        page.wait_for_selector("#chart .main-svg")
                    if page.locator("#result").count():  # the chart and its table
                        page.locator("#result").evaluate("e => e.scrollIntoView()")
                    page.screenshot(path=OUT / f"{name}.png")
                    print(f"wrote docs/screenshots/{name}.png")
                phone = browser.new_context(viewport={"width": 375, "height": 740})
                small = phone.new_page()
                sign_in(small, server)
                small.goto(f"{product}/reports/funnel?q={quote(json.dumps(BODIES['funnel']))}")
                small.wait_for_selector("#chart .main-svg")
                small.locator("#result").evaluate("e => e.scrollIntoView()")
                small.screenshot(path=OUT / "report-funnel-375px.png")
                print("wrote docs/screenshots/report-funnel-375px.png")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
