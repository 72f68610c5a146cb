"""Make each kind of call that pyKISSmetrics 1.0.2 offers, against a tracking server.

Runs in the library's own venv: drive_pykissmetrics.py HOST:PORT API_KEY TAG
Prints one JSON line per HTTP response. The calls expected on the wire are
listed in tests/test_compat_clients.py.
"""

import base64
import json
import sys

from KISSmetrics import KM

host, key, tag = sys.argv[1:]
carol = f"{tag}-carol"

km = KM(key, host=host)  # host is "name:port"
km.identify(carol)

# The library answers only True/False (status == 200); watch the responses
# on its connection pool to check what the server sent. KM keeps its API
# object (and pool) only by weak reference: hold it, or each call makes anew.
api = km.api
responses = []
pool = api._http
send = pool.request


def watched_request(*args, **kwargs):
    response = send(*args, **kwargs)
    responses.append(response)
    return response


pool.request = watched_request

results = [
    km.record("Signed Up", {"Plan": "Pro"}),
    km.record("Purchased", {"Item Name": "Mug ✓", "_t": 1700000000}),
    km.set({"Gender": "F", "Age": 31}),
    km.set({"Country": "NZ", "_t": 1700000000}),
    km.alias(carol, f"{tag}-carol@example.com"),
]
for response in responses:
    answer = {
        "status": response.status,
        "content_type": response.headers.get("Content-Type"),
        "body": base64.b64encode(response.data).decode(),
    }
    print(json.dumps(answer))
if not all(results):
    sys.exit(f"pyKISSmetrics reported a failed call: {results}")
