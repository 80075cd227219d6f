"""Self-tests for make bench's fake Sendry (build/fastapi) and its load generator
(build/fastload), through the Fake class the bench itself uses. `make check` builds both."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "bench"))

import bench  # noqa: E402

for tool in ("fastapi", "fastload"):
    if not os.access(os.path.join(ROOT, "build", tool), os.X_OK):
        raise RuntimeError(f"build/{tool} is missing: run `make build/{tool}` (make check does)")


@pytest.fixture
def start_fake(tmp_path):
    fakes = []

    def start(**kw):
        fakes.append(bench.Fake(str(tmp_path), f"fake{len(fakes)}", **kw))
        return fakes[-1]

    yield start
    for f in fakes:
        f.stop()


def request(conn, method, path, body=None):
    data = None if body is None else json.dumps(body)
    conn.request(method, path, body=data, headers={"Authorization": "Bearer sn_test_fake"})
    resp = conn.getresponse()
    return resp.status, dict(resp.getheaders()), json.loads(resp.read())


def test_answers_counts_and_logs(start_fake):
    fake = start_fake(email_log=True)
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    status, _, body = request(conn, "GET", "/v1/audiences/aud_test")
    assert status == 200 and body["id"] == "aud_test" and "member_count" in body
    contacts = [{"email": f"u{i}@example.com", "metadata": {"k": "v"}} for i in range(3)]
    status, _, body = request(conn, "POST", "/v1/contacts/import",
                              {"contacts": contacts, "audience_id": "aud_test"})
    assert (status, body) == (200, {"created": 3, "updated": 0, "total": 3})
    status, _, body = request(conn, "POST", "/v1/contacts", {"email": "one@example.com"})
    assert status == 201 and body["email"] == "one@example.com" and body["id"].startswith("ct_")
    assert request(conn, "DELETE", "/v1/contacts/ct_1") == (200, {"Content-Type": "application/json",
                                                                  "Content-Length": "2"}, {})
    assert request(conn, "GET", "/v1/unsubscribes?limit=100")[2]["data"] == []
    status, _, body = request(conn, "POST", "/v1/events", {"name": "user.signed_up", "event_id": "ss-x-1",
                                                          "contact_email": "one@example.com", "payload": {}})
    assert status == 200 and body["id"].startswith("evt_") and body["triggered_runs"] == 0, body
    assert fake.stats() == {"requests": 6, "imports": 1, "creates": 1, "audiences": 1, "other": 2,
                            "contacts": 4, "status_429": 0, "events": 1}
    fake.stop()
    assert [(st, path) for _, st, _, path in fake.requests()] == [
        (200, "/v1/audiences/aud_test"), (200, "/v1/contacts/import"), (201, "/v1/contacts"),
        (200, "/v1/contacts/ct_1"), (200, "/v1/unsubscribes"), (200, "/v1/events")]
    assert [n for _, _, n, _ in fake.requests()][:5] == [0, 3, 1, 0, 0]
    arrivals = fake.arrivals()
    assert sorted(arrivals) == ["event:one@example.com", "one@example.com", "u0@example.com", "u1@example.com",
                                "u2@example.com"]   # an event's arrival is logged as event:<contact_email>
    assert abs(arrivals["u0@example.com"] - time.time()) < 60    # CLOCK_REALTIME


def test_keep_alive_pipelining_and_expect(start_fake):
    fake = start_fake()
    with socket.create_connection(("127.0.0.1", fake.port), timeout=10) as s:
        get = b"GET /v1/audiences/a HTTP/1.1\r\nHost: x\r\n\r\n"
        s.sendall(get + get)                                 # two requests in one write
        got = b""
        while got.count(b"HTTP/1.1 200") < 2:
            got += s.recv(65536)
        body = b'{"contacts":[{"email":"e@example.com"}]}'
        s.sendall(b"POST /v1/contacts/import HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        assert s.recv(65536).startswith(b"HTTP/1.1 100 Continue")
        s.sendall(body[:10])
        time.sleep(0.05)                                     # the body arrives in two pieces
        s.sendall(body[10:])
        got = b""
        while b'"total":1}' not in got:
            got += s.recv(65536)
        s.sendall(b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 411")
    assert fake.stats()["requests"] == 3                    # the refused one is not answered as API


def test_rate_limit_answers_429_with_retry_after(start_fake):
    fake = start_fake(rate_limit="3/60")
    conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=10)
    for _ in range(3):
        assert request(conn, "POST", "/v1/contacts", {"email": "a@example.com"})[0] == 201
    status, headers, body = request(conn, "POST", "/v1/contacts/import",
                                    {"contacts": [{"email": "b@example.com"}]})
    assert status == 429 and body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60 and body["error"]["retry_after"] == int(headers["Retry-After"])
    stats = fake.stats()
    assert stats["status_429"] == 1 and stats["contacts"] == 3   # the refused import delivered nothing


def test_fastload_measures_the_fake(start_fake):
    fake = start_fake()
    r = subprocess.run([os.path.join(ROOT, "build", "fastload"), "--port", str(fake.port),
                        "--connections", "2", "--seconds", "0.3", "--path", "/v1/audiences/a"],
                       stdout=subprocess.PIPE, text=True, check=True, timeout=30)
    fields = dict(kv.split("=") for kv in r.stdout.split())
    assert int(fields["requests"]) > 10 and fields["ok"] == fields["requests"]
    # The fake also counts what was still in flight when the load stopped: one per connection.
    assert 0 <= fake.stats()["audiences"] - int(fields["requests"]) <= 2
