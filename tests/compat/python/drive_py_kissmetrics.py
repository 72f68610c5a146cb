"""Make each kind of call that py-KISSmetrics 1.1.0 offers, against a tracking server.

Runs in the library's own venv: drive_py_kissmetrics.py HOST:PORT API_KEY TAG
Prints one JSON line per HTTP response. The calls expected on the wire are
listed in tests/test_compat_clients.py.
"""

import base64
import json
import sys

import KISSmetrics

host, key, tag = sys.argv[1:]
alice, bob = f"{tag}-alice", f"{tag}-bob"

# Client's trk_host is the URL's netloc, so it may carry a port.
client = KISSmetrics.Client(key=key, trk_host=host, trk_scheme="http")
# The compatibility client (KM) accepts only ports 80 and 443 in host=;
# aim the Client it wraps at our server instead.
km = KISSmetrics.KM(key)
km.client.trk_host = host
km.identify(bob)

responses = [
    client.record(alice, "Signed Up", {"Plan": "Pro"}),
    client.record(alice, "Viewed Page", {"Page Name": "Q&A ✓"}, timestamp=1700000000),
    client.set(alice, {"Gender": "F", "Age": 31}),
    client.set(alice, {"Country": "NZ"}, timestamp=1700000000),
    client.alias(alice, f"{tag}-alice@example.com"),
    km.record("Logged In", {"Via": "SSO"}, resp=True),
    km.set({"Tier": "gold"}, resp=True),
    km.alias(bob, f"{tag}-bob@example.com", resp=True),
]
for response in responses:
    answer = {
        "status": response.status,
        "content_type": response.headers.get("Content-Type"),
        "body": base64.b64encode(response.data).decode(),
    }
    print(json.dumps(answer))
