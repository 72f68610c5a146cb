"""POST /api/v1/products/{product}/import (issue 13, point 4), on a real
server on 127.0.0.1, through the tracking port as a program would send it."""

from __future__ import annotations

import gzip

import httpx

from migrating import lines
from serverproc import wait_until

T = 1_700_000_000


def test_json_lines_and_gzip_csv_bodies_are_imported(server):
    auth = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.base_url}/api/v1/products/default/import"

    def body():  # streamed: httpx sends a generator chunked
        yield lines(*({"_p": f"p{i}", "_t": T + i, "_n": "Posted"} for i in range(40))).encode()
        yield b'{"_p": "p1", "_t": 1700000001, "_n": "Posted"}\n'  # a duplicate
        yield b"not json\n"

    answer = httpx.post(url, content=body(), params={"name": "nightly"},
                        headers={**auth, "Content-Type": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    doc = answer.json()
    assert doc["import"] == "nightly"
    assert doc["stream"] == "i-nightly"
    assert doc["written"] == 42
    assert doc["unreadable"] == {"malformed_record": 1}
    assert "duplicates are absorbed" in doc["note"]
    entry = httpx.get(f"{server.base_url}/api/v1/audit", headers=auth).json()["entries"][0]
    assert entry["action"] == "import.write"
    assert entry["target"] == "default"
    assert entry["details"] == {"import": "nightly", "stream": "i-nightly", "written": 42,
                                "unreadable": {"malformed_record": 1}}  # fmt: skip

    people_csv = "Identity,Timestamp,Event,Prop:Plan\n" + "".join(
        f"q{i},{T + i},Signed Up,pro\n" for i in range(10)
    )
    answer = httpx.post(url, content=gzip.compress(people_csv.encode()),
                        headers={**auth, "Content-Type": "text/csv",
                                 "Content-Encoding": "gzip"})  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["written"] == 10
    assert answer.json()["import"].startswith("http-")

    def total(event: str) -> int:
        found = httpx.get(f"{server.base_url}/api/v1/products/default/events",
                          params={"event": event}, headers=auth)  # fmt: skip
        return int(found.json()["total"])

    wait_until(lambda: total("Posted") == 40 and total("Signed Up") == 10, 10, "applied")
    rejects = httpx.get(f"{server.base_url}/api/v1/products/default/rejects", headers=auth).json()
    assert rejects["by_reason"] == {"malformed_record": 1}
    assert ["_src", "nightly:42"] in rejects["items"][0]["params"]


def test_a_body_that_is_not_an_import_is_refused_before_anything_is_written(server):
    auth = {"Authorization": f"Bearer {server.token}"}
    url = f"{server.base_url}/api/v1/products/default/import"
    bad_header = httpx.post(url, content=b"Who,When\nann,1\n", params={"name": "bad"},
                            headers={**auth, "Content-Type": "text/csv"})  # fmt: skip
    assert bad_header.status_code == 400
    assert "needs Identity, Timestamp" in bad_header.json()["error"]["message"]
    assert not (server.data_dir / "log" / "i-bad").exists()
    wrong_type = httpx.post(url, content=b"{}", headers={**auth, "Content-Type": "text/html"})
    assert wrong_type.status_code == 400
    assert wrong_type.json()["error"]["field"] == "content-type"
    no_token = httpx.post(url, content=b"{}\n", headers={"Content-Type": "application/x-ndjson"})
    assert no_token.status_code == 401
    unknown = httpx.post(f"{server.base_url}/api/v1/products/nope/import", content=b"",
                         headers={**auth, "Content-Type": "text/csv"})  # fmt: skip
    assert unknown.status_code == 404
