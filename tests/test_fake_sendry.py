"""Self-tests for tests/fake_sendry.py (run: /usr/bin/python3 -m pytest tests/test_fake_sendry.py -q)."""

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_sendry import FakeSendry  # noqa: E402

KEY = "sn_test_fake"
HERE = os.path.dirname(os.path.abspath(__file__))


def call(base, method, path, body=None, key=KEY, timeout=10):
    """Return (status, headers, parsed JSON body) without raising on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        return err.code, err.headers, json.loads(err.read() or b"null")


@pytest.fixture
def fs():
    fake = FakeSendry(api_key=KEY, audience_id="aud_test", rate_limit=None)
    fake.start()
    yield fake
    fake.stop()


def test_auth_401(fs):
    status, _, body = call(fs.url, "GET", "/v1/audiences/aud_test", key=None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
    status, _, _ = call(fs.url, "GET", "/v1/audiences/aud_test", key="sn_test_wrong")
    assert status == 401
    status, _, body = call(fs.url, "GET", "/v1/audiences/aud_test")
    assert status == 200 and body["id"] == "aud_test" and body["member_count"] == 0
    assert [r["status"] for r in fs.requests] == [401, 401, 200]
    assert fs.requests[0]["headers"].get("authorization") is None


def test_read_only_key_403():
    with FakeSendry(rate_limit=None, read_only_key="sn_test_ro") as fake:
        assert call(fake.url, "GET", "/v1/audiences/aud_test", key="sn_test_ro")[0] == 200
        status, _, body = call(
            fake.url, "POST", "/v1/contacts", {"email": "a@x.io"}, key="sn_test_ro"
        )
        assert status == 403 and body["error"]["message"] == "Insufficient API key scope"


def test_import_upsert_counts(fs):
    batch = [
        {"email": "A@x.io", "first_name": "Ann", "metadata": {"supabase_user_id": "u1"}},
        {"email": "b@x.io"},
    ]
    status, _, body = call(
        fs.url, "POST", "/v1/contacts/import", {"contacts": batch, "audience_id": "aud_test"}
    )
    assert (status, body) == (200, {"created": 2, "updated": 0, "total": 2})
    fs.set_unsubscribed("a@x.io", True)

    # Second import: a updated (unsubscribed untouched since absent), c created.
    batch = [{"email": "a@X.io", "last_name": "Lee"}, {"email": "c@x.io"}]
    status, _, body = call(fs.url, "POST", "/v1/contacts/import", {"contacts": batch})
    assert (status, body) == (200, {"created": 1, "updated": 1, "total": 2})
    a = fs.contacts["a@x.io"]
    assert (a["first_name"], a["last_name"], a["unsubscribed"]) == ("Ann", "Lee", True)
    assert a["metadata"] == {"supabase_user_id": "u1"} and a["audiences"] == {"aud_test"}
    assert fs.contacts["c@x.io"]["audiences"] == set()  # no audience_id given

    status, _, body = call(fs.url, "GET", "/v1/contacts/by-email?email=A%40X.IO&audience_id=aud_test")
    assert status == 200 and body["id"] == a["id"] and body["audiences"] == ["aud_test"]
    assert call(fs.url, "GET", "/v1/contacts/by-email?email=c@x.io&audience_id=aud_test")[0] == 404
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[2]["member_count"] == 2
    assert call(fs.url, "POST", "/v1/contacts/import/", {"contacts": [{"email": "d@x.io"}],
                                                          "audience_id": "nope"})[0] == 404


def test_import_validation_422(fs):
    status, _, body = call(
        fs.url, "POST", "/v1/contacts/import",
        {"contacts": [{"email": "ok@x.io"}, {"email": "not-an-email"}]},
    )
    assert status == 422 and body["error"]["code"] == "validation_error"
    assert "not-an-email" in body["error"]["message"]

    status, _, body = call(
        fs.url, "POST", "/v1/contacts/import",
        {"contacts": [{"email": "ok@x.io", "metadata": {"n": 5}}]},
    )
    assert status == 422 and "metadata.n" in body["error"]["message"]
    assert call(fs.url, "POST", "/v1/contacts/import", {"contacts": []})[0] == 422
    assert fs.contacts == {}  # whole request rejected

    fs.reject_emails(r"@blocked\.io$")
    status, _, body = call(fs.url, "POST", "/v1/contacts", {"email": "x@blocked.io"})
    assert status == 422 and "x@blocked.io" in body["error"]["message"]


def test_bad_json_400(fs):
    req = urllib.request.Request(
        fs.url + "/v1/contacts", data=b"{nope", method="POST",
        headers={"Authorization": f"Bearer {KEY}"},
    )
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    assert info.value.code == 400
    assert json.loads(info.value.read())["error"]["code"] == "bad_request"


def test_rate_limit_429():
    with FakeSendry(rate_limit=(3, 10.0)) as fake:
        for _ in range(3):
            assert call(fake.url, "GET", "/v1/audiences/aud_test")[0] == 200
        status, headers, body = call(fake.url, "GET", "/v1/audiences/aud_test")
        assert status == 429 and body["error"]["code"] == "rate_limited"
        retry = int(headers["Retry-After"])
        assert 1 <= retry <= 10 and body["error"]["retry_after"] == retry
        assert fake.stats["429"] == 1


def test_fail_next_shapes(fs):
    fs.fail_next(503, retry_after=7, retry_after_body=7)
    fs.fail_next(429, shape="flat", path_prefix="/v1/contacts")
    status, headers, body = call(fs.url, "GET", "/v1/audiences/aud_test")
    assert status == 503 and headers["Retry-After"] == "7"
    assert body["error"]["code"] == "internal_error" and body["error"]["retry_after"] == 7
    # The flat fault only matches /v1/contacts, so this one succeeds.
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[0] == 200
    status, _, body = call(fs.url, "POST", "/v1/contacts", {"email": "a@x.io"})
    assert status == 429
    assert body == {"statusCode": 429, "code": "rate_limited", "message": body["message"],
                    "details": {}}
    assert call(fs.url, "POST", "/v1/contacts", {"email": "a@x.io"})[0] == 200
    assert fs.stats["429"] == 1 and fs.stats["503"] == 1


def test_drop_next(fs):
    fs.drop_next()
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        call(fs.url, "POST", "/v1/contacts", {"email": "a@x.io"})
    assert fs.requests[-1]["status"] is None and fs.stats["dropped"] == 1
    assert fs.contacts == {}
    assert call(fs.url, "POST", "/v1/contacts", {"email": "a@x.io"})[0] == 200


def test_fail_fraction_statuses_and_retry_after(fs):
    fs.fail_fraction(1.0, status=[500, 502, 503], seed=3)
    seen = {call(fs.url, "POST", "/v1/contacts", {"email": f"a{i}@x.io"})[0] for i in range(30)}
    assert seen == {500, 502, 503} and fs.contacts == {}
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[0] == 200, "reads are not failed"
    fs.fail_fraction(1.0, status=429, retry_after=2)
    status, headers, _ = call(fs.url, "POST", "/v1/contacts", {"email": "b@x.io"})
    assert status == 429 and headers["Retry-After"] == "2"
    fs.fail_fraction(0)
    assert call(fs.url, "POST", "/v1/contacts", {"email": "b@x.io"})[0] == 200


def refused(url):
    try:
        call(url, "GET", "/v1/audiences/aud_test", timeout=2)
    except urllib.error.URLError as exc:
        return isinstance(exc.reason, ConnectionRefusedError)
    return False


def test_down_refuses_connections_and_up_serves_again_on_the_same_port(fs):
    assert call(fs.url, "POST", "/v1/contacts", {"email": "kept@x.io"})[0] == 200
    port = fs.port
    fs.down()
    assert fs.is_down and refused(fs.url)
    fs.up()
    assert not fs.is_down and fs.port == port
    assert call(fs.url, "GET", "/v1/contacts/by-email?email=kept@x.io")[0] == 200, "state kept"
    fs.down(seconds=0.3)
    assert refused(fs.url)
    fs.wait_for(lambda f: not f.is_down, timeout=5, message="back up after 0.3 s")
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[0] == 200


def test_control_down_answers_then_goes_down(fs):
    assert call(fs.url, "POST", "/_control/down", {}, key=None)[0] == 400, "seconds are required"
    status, _, body = call(fs.url, "POST", "/_control/down", {"seconds": 0.5}, key=None)
    assert (status, body) == (200, {"down_for": 0.5})
    fs.wait_for(lambda f: f.is_down, timeout=5, message="down")
    fs.wait_for(lambda f: not f.is_down, timeout=5, message="up again")
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[0] == 200


def test_unsubscribe_pagination(fs):
    for i in range(5):
        fs.add_unsubscribe(f"u{i}@x.io", reason="link")
    seen, cursor, pages = [], None, 0
    while True:
        path = "/v1/unsubscribes?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, _, body = call(fs.url, "GET", path)
        assert status == 200
        seen += [u["email"] for u in body["data"]]
        pages += 1
        if not body["has_more"]:
            assert body["next_cursor"] is None
            break
        cursor = body["next_cursor"]
    assert pages == 3 and seen == [f"u{i}@x.io" for i in range(5)]
    assert call(fs.url, "GET", "/v1/unsubscribes?cursor=garbage!")[0] == 422
    fs.add_suppression("s@x.io")
    body = call(fs.url, "GET", "/v1/suppression")[2]
    assert body["data"][0]["reason"] == "unsubscribe" and body["has_more"] is False


def test_patch_by_email_rekeys(fs):
    created = call(fs.url, "POST", "/v1/contacts", {"email": "old@x.io", "audience_id": "aud_test"})[2]
    status, _, body = call(
        fs.url, "PATCH", "/v1/contacts/by-email?email=OLD@x.io",
        {"email": "new@x.io", "first_name": "N"},
    )
    assert status == 200 and body["id"] == created["id"] and body["email"] == "new@x.io"
    assert "old@x.io" not in fs.contacts
    assert fs.contacts["new@x.io"]["audiences"] == {"aud_test"}
    assert call(fs.url, "PATCH", "/v1/contacts/by-email?email=old@x.io", {"first_name": "X"})[0] == 404
    assert call(fs.url, "DELETE", f"/v1/contacts/{created['id']}")[2] == {"deleted": True}
    assert call(fs.url, "GET", f"/v1/contacts/{created['id']}")[0] == 404


def test_wait_for_timeout(fs):
    with pytest.raises(AssertionError, match="timed out"):
        fs.wait_for(lambda f: len(f.contacts) > 0, timeout=0.1)


@contextlib.contextmanager
def cli(tmp_path, *args):
    """The fake as a CLI process: yields (process, base URL); SIGTERM must end it with 0."""
    port_file = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "fake_sendry.py"), "--port-file", str(port_file),
         "--no-rate-limit", *args],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while not port_file.exists():
            assert proc.poll() is None, "fake-sendry exited early"
            assert time.monotonic() < deadline, "port file never appeared"
            time.sleep(0.02)
        yield proc, f"http://127.0.0.1:{int(port_file.read_text())}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


def test_cli_mode(tmp_path):
    with cli(tmp_path) as (proc, base):
        assert proc.stdout.readline().strip() == f"fake-sendry listening on {base}"

        assert call(base, "POST", "/_control/fail_next", {"status": 500}, key=None)[0] == 200
        assert call(base, "GET", "/v1/audiences/aud_test")[0] == 500
        status, _, stats = call(base, "GET", "/_control/stats", key=None)
        assert status == 200 and stats["500"] == 1 and stats["requests"] == 1
        summary = call(base, "GET", "/_control/requests?summary=1", key=None)[2]
        assert summary == [{"method": "GET", "path": "/v1/audiences/aud_test", "status": 500,
                            "n_contacts": 0}]


# --- audience membership, as the real API has it (sendry-api.md sections 1 and 2) -----------

@pytest.fixture
def multi():
    fake = FakeSendry(api_key=KEY, audience_id="aud_test", rate_limit=None,
                      audiences={"aud_trial": "Trial", "aud_customers": "Customers"})
    fake.start()
    yield fake
    fake.stop()


def test_several_audiences_exist_at_once(multi):
    status, _, body = call(multi.url, "GET", "/v1/audiences?limit=2")
    assert status == 200 and [a["id"] for a in body["data"]] == ["aud_test", "aud_trial"] and body["has_more"]
    body = call(multi.url, "GET", f"/v1/audiences?limit=2&cursor={body['next_cursor']}")[2]
    assert [(a["id"], a["name"], a["member_count"]) for a in body["data"]] == [("aud_customers", "Customers", 0)]
    assert not body["has_more"] and body["next_cursor"] is None
    assert call(multi.url, "GET", "/v1/audiences/aud_trial")[2]["name"] == "Trial"
    assert call(multi.url, "GET", "/v1/audiences/aud_nope")[0] == 404
    multi.add_audience("aud_new", "Later")
    assert call(multi.url, "GET", "/v1/audiences/aud_new")[2]["name"] == "Later"
    multi.reset()
    assert sorted(multi.audiences) == ["aud_customers", "aud_test", "aud_trial"], "reset keeps the configured ones"


def test_import_adds_membership_of_its_audience_only(multi):
    call(multi.url, "POST", "/v1/contacts/import",
         {"contacts": [{"email": "a@x.io"}, {"email": "b@x.io"}], "audience_id": "aud_trial"})
    call(multi.url, "POST", "/v1/contacts/import", {"contacts": [{"email": "a@x.io"}], "audience_id": "aud_customers"})
    assert multi.members("aud_trial") == ["a@x.io", "b@x.io"]
    assert multi.members("aud_customers") == ["a@x.io"]
    assert multi.members("aud_test") == []
    assert multi.contacts["a@x.io"]["audiences"] == {"aud_trial", "aud_customers"}
    assert call(multi.url, "GET", "/v1/audiences/aud_trial")[2]["member_count"] == 2
    # by-email restricted to an audience finds members only
    assert call(multi.url, "GET", "/v1/contacts/by-email?email=b@x.io&audience_id=aud_trial")[0] == 200
    assert call(multi.url, "GET", "/v1/contacts/by-email?email=b@x.io&audience_id=aud_customers")[0] == 404
    assert call(multi.url, "GET", "/v1/contacts/by-email?email=b@x.io")[0] == 200
    status, _, body = call(multi.url, "POST", "/v1/contacts/import",
                           {"contacts": [{"email": "c@x.io"}], "audience_id": "aud_nope"})
    assert status == 404 and "c@x.io" not in multi.contacts, "an unknown audience fails the whole import"


def test_add_and_remove_members(multi):
    a = call(multi.url, "POST", "/v1/contacts", {"email": "a@x.io", "audience_id": "aud_trial"})[2]
    b = call(multi.url, "POST", "/v1/contacts", {"email": "b@x.io"})[2]
    status, _, body = call(multi.url, "POST", "/v1/audiences/aud_customers/contacts",
                           {"contact_ids": [a["id"], b["id"]]})
    assert (status, body) == (200, {"added": 2})
    status, _, body = call(multi.url, "POST", "/v1/audiences/aud_customers/contacts", {"contact_ids": [a["id"]]})
    assert (status, body) == (200, {"added": 0}), "a member already is not counted again"
    assert multi.members("aud_customers") == ["a@x.io", "b@x.io"]
    assert call(multi.url, "POST", "/v1/audiences/aud_customers/contacts", {"contact_ids": []})[0] == 422
    assert call(multi.url, "POST", "/v1/audiences/aud_customers/contacts",
                {"contact_ids": ["ct_x"] * 101})[0] == 422, "at most 100 ids"
    assert call(multi.url, "POST", "/v1/audiences/aud_customers/contacts", {"contact_ids": ["ct_999"]})[0] == 404

    status, _, body = call(multi.url, "DELETE", f"/v1/audiences/aud_trial/contacts/{a['id']}")
    assert (status, body) == (200, {"deleted": True})
    assert multi.members("aud_trial") == [] and multi.members("aud_customers") == ["a@x.io", "b@x.io"]
    assert "a@x.io" in multi.contacts, "leaving an audience never deletes the contact"
    assert call(multi.url, "DELETE", f"/v1/audiences/aud_trial/contacts/{a['id']}")[0] == 404, "not a member any more"
    assert call(multi.url, "DELETE", f"/v1/audiences/aud_nope/contacts/{a['id']}")[0] == 404
    assert call(multi.url, "GET", f"/v1/contacts/{a['id']}")[2]["audiences"] == ["aud_customers"]


def test_list_members_paginated(multi):
    emails = [f"m{i}@x.io" for i in range(5)]
    call(multi.url, "POST", "/v1/contacts/import",
         {"contacts": [{"email": e} for e in emails], "audience_id": "aud_customers"})
    call(multi.url, "POST", "/v1/contacts", {"email": "other@x.io", "audience_id": "aud_trial"})
    seen, cursor = [], None
    while True:
        path = "/v1/audiences/aud_customers/contacts?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, _, body = call(multi.url, "GET", path)
        assert status == 200
        seen += [c["email"] for c in body["data"]]
        assert all("aud_customers" in c["audiences"] for c in body["data"])
        if not body["has_more"]:
            break
        cursor = body["next_cursor"]
    assert seen == emails, "members only, oldest first, every one once"
    assert call(multi.url, "GET", "/v1/audiences/aud_nope/contacts")[0] == 404
    assert call(multi.url, "GET", "/v1/audiences/aud_customers/contacts?limit=101")[0] == 422


def test_removing_an_audience_keeps_its_contacts(multi):
    call(multi.url, "POST", "/v1/contacts/import", {"contacts": [{"email": "a@x.io"}], "audience_id": "aud_trial"})
    multi.remove_audience("aud_trial")
    assert call(multi.url, "GET", "/v1/audiences/aud_trial")[0] == 404
    assert multi.contacts["a@x.io"]["audiences"] == set()


def test_cli_extra_audiences(tmp_path):
    with cli(tmp_path, "--extra-audience", "aud_trial") as (_, base):
        assert call(base, "GET", "/v1/audiences/aud_trial")[0] == 200
        assert call(base, "POST", "/_control/add_audience", {"audience_id": "aud_more", "name": "More"},
                    key=None)[0] == 200
        call(base, "POST", "/v1/contacts/import", {"contacts": [{"email": "a@x.io"}], "audience_id": "aud_more"})
        assert call(base, "GET", "/_control/audiences", key=None)[2] == {
            "aud_test": [], "aud_trial": [], "aud_more": ["a@x.io"]}
        assert call(base, "POST", "/_control/remove_audience", {"audience_id": "aud_more"}, key=None)[0] == 200
        assert call(base, "GET", "/v1/audiences/aud_more")[0] == 404


# --- POST /v1/events (issue 18 point 8; sendry-api.md section 9) ---------------------------

EVENT_FIELDS = {"id", "external_id", "name", "contact_email", "contact_id", "payload",
                "received_at", "processed_at", "triggered_runs"}


def post_event(base, body, key=KEY, path="/v1/events"):
    return call(base, "POST", path, body, key=key)


def test_event_answer_has_the_spec_fields(fs):
    status, _, ev = post_event(fs.url, {"name": "user.signed_up", "event_id": "db1:42",
                                        "contact_email": "Ann@x.io", "payload": {"plan": "pro", "n": [1]}})
    assert status == 200 and set(ev) == EVENT_FIELDS, "a first answer carries no 'deduped'"
    assert ev["id"].startswith("evt_") and ev["external_id"] == "db1:42"
    assert (ev["name"], ev["contact_email"], ev["contact_id"]) == ("user.signed_up", "Ann@x.io", None)
    assert ev["payload"] == {"plan": "pro", "n": [1]} and ev["triggered_runs"] == 0
    assert ev["received_at"].endswith("Z") and ev["processed_at"] == ev["received_at"]
    assert fs.events_json() == [ev]
    fs.events_json()[0]["payload"]["plan"] = "free"
    assert fs.events_json() == [ev], "a copy: the caller cannot change the fake's events"

    # No event_id, no payload, no contact: only the name is required by the spec's schema.
    status, _, bare = post_event(fs.url, {"name": "x"}, path="/v1/events/")
    assert status == 200 and bare["external_id"] is None and bare["payload"] == {}
    assert (bare["contact_email"], bare["contact_id"]) == (None, None) and bare["id"] != ev["id"]

    assert call(fs.url, "GET", f"/v1/events/{ev['id']}")[2] == ev
    assert call(fs.url, "GET", "/v1/events/evt_999")[0] == 404
    listed = call(fs.url, "GET", "/v1/events?limit=1")[2]
    assert listed["data"] == [ev] and listed["has_more"]
    assert call(fs.url, "GET", "/v1/events?name=x")[2]["data"] == [bare]


def test_event_fills_in_the_contact_it_knows(fs):
    ct = call(fs.url, "POST", "/v1/contacts", {"email": "ann@x.io"})[2]
    by_email = post_event(fs.url, {"name": "a", "contact_email": "ANN@x.io"})[2]
    assert (by_email["contact_email"], by_email["contact_id"]) == ("ANN@x.io", ct["id"])
    by_id = post_event(fs.url, {"name": "a", "contact_id": ct["id"]})[2]
    assert (by_id["contact_email"], by_id["contact_id"]) == ("ann@x.io", ct["id"])
    unknown = post_event(fs.url, {"name": "a", "contact_id": "ct_999"})
    assert unknown[0] == 200 and (unknown[2]["contact_email"], unknown[2]["contact_id"]) == (None, "ct_999")


@pytest.mark.parametrize("body, words", [
    ([{"name": "a"}], "body: must be a JSON object"),
    ({"payload": {}}, "name: is required"),
    ({"name": 7}, "name: must be a string"),
    ({"name": None}, "name: must be a string"),
    ({"name": ""}, "name: must be 1-200 characters, got 0"),
    ({"name": "n" * 201}, "name: must be 1-200 characters, got 201"),
    ({"name": "a", "event_id": 42}, "event_id: must be a string"),
    ({"name": "a", "event_id": "e" * 201}, "event_id: must be at most 200 characters, got 201"),
    ({"name": "a", "contact_email": "not-an-address"}, "contact_email: invalid email address 'not-an-address'"),
    ({"name": "a", "contact_email": None}, "contact_email: invalid email address None"),
    ({"name": "a", "contact_id": 5}, "contact_id: must be a string"),
    ({"name": "a", "payload": [1, 2]}, "payload: must be an object, got list"),
    ({"name": "a", "payload": "{}"}, "payload: must be an object, got str"),
    ({"name": "a", "payload": None}, "payload: must be an object, got NoneType"),
])
def test_event_validation_422(fs, body, words):
    status, _, answer = post_event(fs.url, body)
    assert status == 422 and answer["error"]["code"] == "validation_error"
    assert words in answer["error"]["message"]
    assert fs.events == [] and fs.stats == {"dropped": 0, "422": 1}


def test_event_limits_are_inclusive(fs):
    for body in ({"name": "n"}, {"name": "n" * 200, "event_id": "e" * 200},
                 {"name": "a", "contact_email": "a@x.io", "contact_id": "ct_1", "payload": {}}):
        assert post_event(fs.url, body)[0] == 200, body
    assert len(fs.events) == 3


def test_event_dedupe_answers_the_original(fs):
    first = post_event(fs.url, {"name": "user.signed_up", "event_id": "e-1",
                                "contact_email": "a@x.io", "payload": {"v": 1}})[2]
    status, _, again = post_event(fs.url, {"name": "user.signed_up", "event_id": "e-1",
                                           "contact_email": "a@x.io", "payload": {"v": 1}})
    assert status == 200 and again == dict(first, deduped=True)
    # The original, whatever the repeat carries: the key is event_id alone.
    changed = post_event(fs.url, {"name": "other", "event_id": "e-1", "payload": {"v": 2}})[2]
    assert changed == dict(first, deduped=True)
    assert fs.events_json() == [first], "one event for three requests"
    assert fs.event_dedupes == {"e-1": 2} and fs.events_deduped == 2

    # Without an event_id nothing is deduped; another event_id is another event.
    post_event(fs.url, {"name": "ping"})
    post_event(fs.url, {"name": "ping"})
    other = post_event(fs.url, {"name": "user.signed_up", "event_id": "e-2"})[2]
    assert "deduped" not in other and len(fs.events) == 4 and fs.events_deduped == 2
    # An invalid repeat is refused before the dedupe.
    assert post_event(fs.url, {"name": "", "event_id": "e-1"})[0] == 422
    assert fs.events_deduped == 2


def test_event_auth_before_validation():
    with FakeSendry(rate_limit=None, read_only_key="sn_test_ro") as fake:
        assert post_event(fake.url, {"name": "a"}, key=None)[2]["error"]["code"] == "unauthorized"
        assert post_event(fake.url, {"name": "a"}, key="sn_test_wrong")[0] == 401
        status, _, body = post_event(fake.url, {"name": "a"}, key="sn_test_ro")
        assert (status, body["error"]["code"]) == (403, "forbidden")
        # A read-only key is refused even for a body that would fail validation (a probe
        # with an invalid event finds a key without the scope, and sends nothing).
        assert post_event(fake.url, {"name": ""}, key="sn_test_ro")[0] == 403
        assert post_event(fake.url, {"name": ""})[0] == 422
        assert fake.events == [] and [r["status"] for r in fake.requests] == [401, 401, 403, 403, 422]
        assert call(fake.url, "GET", "/v1/events", key="sn_test_ro")[0] == 200, "reading is allowed"


def test_key_without_the_events_scope():
    """A key that writes contacts but lacks the events scope: every /v1/events request is
    403 forbidden (reads too: the worker's start-up probe is a GET), the rest works."""
    with FakeSendry(rate_limit=None, no_events_key="sn_test_noev") as fake:
        key = "sn_test_noev"
        assert call(fake.url, "POST", "/v1/contacts", {"email": "a@x.io"}, key=key)[0] == 200
        assert call(fake.url, "GET", "/v1/audiences/aud_test", key=key)[0] == 200
        for method, path, body in (("POST", "/v1/events", {"name": "a", "contact_email": "a@x.io"}),
                                   ("POST", "/v1/events/", {"name": "a"}),
                                   ("GET", "/v1/events?limit=1", None),
                                   ("GET", "/v1/events/evt_1", None)):
            status, _, answer = call(fake.url, method, path, body, key=key)
            assert (status, answer["error"]["code"]) == (403, "forbidden"), (method, path)
            assert answer["error"]["message"] == "Insufficient API key scope"
        assert fake.events == [] and "a@x.io" in fake.contacts
        # The full key still has the scope.
        assert post_event(fake.url, {"name": "a"})[0] == 200
        assert call(fake.url, "GET", "/v1/events?limit=1")[0] == 200


def test_cli_no_events_key(tmp_path):
    with cli(tmp_path, "--no-events-key", "sn_test_noev") as (_, base):
        assert call(base, "GET", "/v1/events?limit=1", key="sn_test_noev")[0] == 403
        assert call(base, "GET", "/v1/audiences/aud_test", key="sn_test_noev")[0] == 200


def test_faults_by_method(fs):
    """fail_next / drop_next / lose_answer_next with method="POST" leave a GET of the same
    path alone (the worker's start-up GET /v1/events?limit=1 is not the event)."""
    fs.fail_next(503, path_prefix="/v1/events", method="POST")
    fs.drop_next(path_prefix="/v1/events", method="post")
    assert call(fs.url, "GET", "/v1/events?limit=1")[0] == 200
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        post_event(fs.url, {"name": "a"})         # dropped (drops come before faults)
    assert post_event(fs.url, {"name": "a"})[0] == 503
    assert post_event(fs.url, {"name": "a"})[0] == 200
    fs.lose_answer_next(path_prefix="/v1/events", method="POST")
    assert call(fs.url, "GET", "/v1/events?limit=1")[0] == 200 and fs.stats.get("answers_lost", 0) == 0


def test_event_fail_next(fs):
    fs.fail_next(503, retry_after=3, path_prefix="/v1/events")
    fs.fail_next(422, message="Contact is suppressed", details={"field": "contact_email"},
                 path_prefix="/v1/events")
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[0] == 200, "the events fault waits for an event"
    status, headers, body = post_event(fs.url, {"name": "a", "event_id": "e1"})
    assert (status, headers["Retry-After"], body["error"]["code"]) == (503, "3", "internal_error")
    status, _, body = post_event(fs.url, {"name": "a", "event_id": "e1"})
    assert status == 422 and body["error"] == {"code": "validation_error", "message": "Contact is suppressed",
                                               "details": {"field": "contact_email"}}
    assert fs.events == [], "a failed event is not ingested"
    status, _, body = post_event(fs.url, {"name": "a", "event_id": "e1"})
    assert status == 200 and "deduped" not in body and len(fs.events) == 1


def test_event_fail_fraction(fs):
    fs.fail_fraction(1.0, status=[500, 502], seed=2)
    seen = {post_event(fs.url, {"name": "a", "event_id": f"e{i}"})[0] for i in range(20)}
    assert seen == {500, 502} and fs.events == []
    fs.fail_fraction(0)
    assert post_event(fs.url, {"name": "a", "event_id": "e0"})[0] == 200 and len(fs.events) == 1


def test_event_drop_next_is_not_ingested(fs):
    fs.drop_next(path_prefix="/v1/events")
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        post_event(fs.url, {"name": "a", "event_id": "e1"})
    assert fs.events == [] and fs.stats["dropped"] == 1 and fs.requests[-1]["status"] is None
    assert post_event(fs.url, {"name": "a", "event_id": "e1"})[2].get("deduped") is None


def test_event_applied_while_going_down_is_deduped_on_retry(fs):
    """A delayed event whose answer is lost (the API goes down under it) was ingested: the
    retry with the same event_id gets the original with deduped: true, and one event."""
    fs.delay_next(60)
    outcome = {}

    def send():
        try:
            outcome["answer"] = post_event(fs.url, {"name": "a", "event_id": "lost-1"})
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as exc:
            outcome["error"] = exc

    sender = threading.Thread(target=send)
    sender.start()
    fs.wait_for(lambda f: len(f.requests) == 1, message="the event reached the fake")
    fs.down()
    sender.join(timeout=10)
    assert not sender.is_alive() and "error" in outcome, outcome
    fs.wait_for(lambda f: len(f.events) == 1, message="the delayed event applied")
    fs.up()
    status, _, again = post_event(fs.url, {"name": "a", "event_id": "lost-1"})
    assert status == 200 and again == dict(fs.events_json()[0], deduped=True)
    assert len(fs.events) == 1 and fs.event_dedupes == {"lost-1": 1}


def test_event_down_refused_and_events_kept(fs):
    assert post_event(fs.url, {"name": "a", "event_id": "e1"})[0] == 200
    fs.down()
    with pytest.raises(urllib.error.URLError):
        post_event(fs.url, {"name": "a", "event_id": "e2"})
    fs.up()
    assert post_event(fs.url, {"name": "a", "event_id": "e1"})[2]["deduped"] is True, "state kept"
    assert [e["external_id"] for e in fs.events] == ["e1"]


def test_event_rate_limit_429():
    with FakeSendry(rate_limit=(2, 10.0)) as fake:
        assert call(fake.url, "GET", "/v1/audiences/aud_test")[0] == 200
        assert post_event(fake.url, {"name": "a", "event_id": "e1"})[0] == 200
        status, headers, body = post_event(fake.url, {"name": "a", "event_id": "e2"})
        assert status == 429 and body["error"]["code"] == "rate_limited", "one budget for every endpoint"
        assert body["error"]["retry_after"] == int(headers["Retry-After"]) >= 1
        assert [e["external_id"] for e in fake.events] == ["e1"]


def test_event_fail_emails_and_fail_events(fs):
    fs.fail_emails(r"bad@x", status=503)  # searched in the JSON of the whole body
    assert post_event(fs.url, {"name": "a", "contact_email": "bad@x.io"})[0] == 503
    fs.fail_emails(None)
    fs.fail_events(contact_email=r"@blocked\.io$", status=422)
    status, _, body = post_event(fs.url, {"name": "a", "contact_email": "x@blocked.io"})
    assert (status, body["error"]["code"]) == (422, "validation_error")
    assert post_event(fs.url, {"name": "a", "contact_email": "x@ok.io",
                               "payload": {"old": "x@blocked.io"}})[0] == 200, "the contact only"
    fs.fail_events(name=r"^trial\.", contact_email=r"^t@")
    assert post_event(fs.url, {"name": "trial.ended", "contact_email": "t@x.io"})[0] == 500
    assert post_event(fs.url, {"name": "trial.ended", "contact_email": "t@x.io"}, path="/v1/events/")[0] == 500
    assert post_event(fs.url, {"name": "trial.ended", "contact_email": "u@x.io"})[0] == 200, "both must match"
    assert post_event(fs.url, {"name": "signed_up", "contact_email": "t@x.io"})[0] == 200
    assert post_event(fs.url, {"name": "trial.ended"})[0] == 200, "no address: no match"
    assert call(fs.url, "POST", "/v1/contacts", {"email": "t@x.io", "first_name": "trial.x"})[0] == 200, \
        "events only"
    fs.fail_events()
    assert post_event(fs.url, {"name": "trial.ended", "contact_email": "t@x.io"})[0] == 200
    assert len(fs.events) == 5


def test_event_control_endpoints(fs):
    post_event(fs.url, {"name": "a", "event_id": "e1"})
    post_event(fs.url, {"name": "a", "event_id": "e1"})
    post_event(fs.url, {"name": "a", "event_id": "e1"})
    post_event(fs.url, {"name": "b"})
    status, _, body = call(fs.url, "GET", "/_control/events", key=None)
    assert status == 200 and body["events"] == fs.events_json()
    assert [e["name"] for e in body["events"]] == ["a", "b"]
    assert (body["deduped"], body["dedupes"]) == (2, {"e1": 2})
    assert call(fs.url, "GET", "/_control/events?name=b", key=None)[2]["events"] == fs.events_json("b")
    stats = call(fs.url, "GET", "/_control/stats", key=None)[2]
    assert (stats["events"], stats["events_deduped"], stats["200"]) == (2, 2, 4)

    assert call(fs.url, "POST", "/_control/fail_events", {"name": "^b$", "status": 429}, key=None)[0] == 200
    assert post_event(fs.url, {"name": "b"})[0] == 429
    assert call(fs.url, "POST", "/_control/fail_events", {}, key=None)[0] == 200
    assert post_event(fs.url, {"name": "b"})[0] == 200
    assert call(fs.url, "POST", "/_control/fail_events", {"name": "("}, key=None)[0] == 400

    assert call(fs.url, "POST", "/_control/reset", key=None)[0] == 200
    assert call(fs.url, "GET", "/_control/events", key=None)[2] == {"events": [], "deduped": 0, "dedupes": {}}
    assert post_event(fs.url, {"name": "a", "event_id": "e1"})[2].get("deduped") is None, "reset forgets"


# --- automations with trigger_type "event" (sendry-api.md section 9) ------------------------

AUTOMATION_FIELDS = {"id", "name", "description", "status", "trigger_type", "trigger_config",
                     "entry_segment_id", "reentry_policy", "reentry_cooldown_seconds", "total_runs",
                     "active_runs", "completed_runs", "failed_runs", "created_at", "updated_at"}


def onboarding(base, **extra):
    body = dict({"name": "Onboarding", "trigger_type": "event",
                 "trigger_config": {"event_name": "user.signed_up"}}, **extra)
    status, _, auto = call(base, "POST", "/v1/automations", body)
    assert status == 200, auto
    return auto


def test_event_starts_an_automation_run(fs):
    auto = onboarding(fs.url)
    assert set(auto) == AUTOMATION_FIELDS and auto["id"].startswith("auto_")
    assert (auto["status"], auto["reentry_policy"], auto["total_runs"]) == ("draft", "once_per_contact", 0)
    ct = call(fs.url, "POST", "/v1/contacts", {"email": "ann@x.io", "audience_id": "aud_test"})[2]

    draft = post_event(fs.url, {"name": "user.signed_up", "event_id": "e0", "contact_email": "ann@x.io"})[2]
    assert draft["triggered_runs"] == 0, "a draft starts nothing"
    status, _, active = call(fs.url, "POST", f"/v1/automations/{auto['id']}/activate")
    assert status == 200 and active["status"] == "active"
    assert call(fs.url, "POST", "/v1/automations/auto_999/activate")[0] == 404

    assert post_event(fs.url, {"name": "user.deleted", "event_id": "e1", "contact_email": "ann@x.io"})[2][
        "triggered_runs"] == 0, "another name"
    assert post_event(fs.url, {"name": "user.signed_up", "event_id": "e2", "contact_email": "bob@x.io"})[2][
        "triggered_runs"] == 0, "a contact Sendry does not know yet"
    ev = post_event(fs.url, {"name": "user.signed_up", "event_id": "e3", "contact_email": "ANN@x.io",
                             "payload": {"plan": "pro"}})[2]
    assert ev["triggered_runs"] == 1
    status, _, runs = call(fs.url, "GET", f"/v1/automations/{auto['id']}/runs")
    assert status == 200 and len(runs["data"]) == 1
    run = runs["data"][0]
    assert (run["automation_id"], run["contact_id"], run["contact_email"], run["trigger_event_id"], run["status"]) \
        == (auto["id"], ct["id"], "ann@x.io", ev["id"], "in_progress")
    assert run["context"] == {"event": {"id": ev["id"], "name": "user.signed_up", "payload": {"plan": "pro"}}}
    assert set(run) == {"id", "automation_id", "contact_id", "contact_email", "trigger_event_id", "status",
                        "current_step_id", "context", "started_at", "completed_at", "failed_at",
                        "failure_reason", "created_at", "updated_at"}, "the spec's fields, nothing else"
    assert fs.runs_json() == [run]

    # The repeat is answered with the original (triggered_runs 1) and starts nothing.
    assert post_event(fs.url, {"name": "user.signed_up", "event_id": "e3", "contact_email": "ann@x.io"})[2] \
        == dict(ev, deduped=True)
    # once_per_contact: a new event for the same contact starts nothing either.
    assert post_event(fs.url, {"name": "user.signed_up", "event_id": "e4", "contact_id": ct["id"]})[2][
        "triggered_runs"] == 0
    assert len(fs.runs_json()) == 1
    got = call(fs.url, "GET", f"/v1/automations/{auto['id']}")[2]
    assert (got["total_runs"], got["active_runs"]) == (1, 1)
    assert call(fs.url, "GET", "/v1/automations/auto_999/runs")[0] == 404


def test_reentry_always_and_several_automations(fs):
    always = onboarding(fs.url, reentry_policy="always")
    every = onboarding(fs.url, name="Every event", trigger_config={})
    manual = onboarding(fs.url, name="Manual", trigger_type="manual")
    for auto in (always, every, manual):
        call(fs.url, "POST", f"/v1/automations/{auto['id']}/activate")
    call(fs.url, "POST", "/v1/contacts", {"email": "ann@x.io"})
    assert post_event(fs.url, {"name": "user.signed_up", "contact_email": "ann@x.io"})[2]["triggered_runs"] == 2
    assert post_event(fs.url, {"name": "user.signed_up", "contact_email": "ann@x.io",
                               "event_id": "e1"})[2]["triggered_runs"] == 1
    assert post_event(fs.url, {"name": "trial.ended", "contact_email": "ann@x.io"})[2]["triggered_runs"] == 0
    assert [r["automation_id"] for r in fs.runs_json()] == [always["id"], every["id"], always["id"]]
    again = post_event(fs.url, {"name": "user.signed_up", "contact_email": "ann@x.io", "event_id": "e1"})[2]
    assert again["deduped"] and again["triggered_runs"] == 1
    assert len(fs.runs_json()) == 3, "a deduped repeat starts no run, even where reentry is 'always'"
    assert len(call(fs.url, "GET", f"/v1/automations/{always['id']}/runs")[2]["data"]) == 2
    assert len(call(fs.url, "GET", f"/v1/automations/{every['id']}/runs")[2]["data"]) == 1
    assert fs.runs_json(manual["id"]) == []
    listed = call(fs.url, "GET", "/v1/automations")[2]["data"]
    assert [a["id"] for a in listed] == [always["id"], every["id"], manual["id"]]
    body = call(fs.url, "GET", "/_control/automations", key=None)[2]
    assert [a["total_runs"] for a in body["automations"]] == [2, 1, 0] and body["runs"] == fs.runs_json()


@pytest.mark.parametrize("body, words", [
    ({"trigger_type": "event"}, "name: is required"),
    ({"name": "n" * 201, "trigger_type": "event"}, "name: is required, a string of 1-200"),
    ({"name": "a"}, "trigger_type: is required"),
    ({"name": "a", "trigger_type": "webhook"}, "trigger_type: is required, one of event,"),
    ({"name": "a", "trigger_type": "event", "trigger_config": "user.signed_up"}, "trigger_config: must be an object"),
    ({"name": "a", "trigger_type": "event", "description": "d" * 1001}, "description: must be a string of at most 1000"),
    ({"name": "a", "trigger_type": "event", "entry_segment_id": 3}, "entry_segment_id: must be a string"),
    ({"name": "a", "trigger_type": "event", "reentry_policy": "never"}, "reentry_policy: must be one of"),
    ({"name": "a", "trigger_type": "event", "reentry_cooldown_seconds": 0}, "reentry_cooldown_seconds: must be an integer"),
    ({"name": "a", "trigger_type": "event", "reentry_cooldown_seconds": True}, "reentry_cooldown_seconds: must be an integer"),
])
def test_automation_validation_422(fs, body, words):
    status, _, answer = call(fs.url, "POST", "/v1/automations", body)
    assert status == 422 and answer["error"]["code"] == "validation_error"
    assert words in answer["error"]["message"] and fs.automations == {}


def test_automation_create_needs_a_writing_key():
    with FakeSendry(rate_limit=None, read_only_key="sn_test_ro") as fake:
        body = {"name": "a", "trigger_type": "event"}
        assert call(fake.url, "POST", "/v1/automations", body, key="sn_test_ro")[0] == 403
        assert call(fake.url, "POST", "/v1/automations", body, key=None)[0] == 401
        assert fake.automations == {}


def test_reentry_cooldown(fs):
    auto = onboarding(fs.url, reentry_policy="cooldown", reentry_cooldown_seconds=60)
    call(fs.url, "POST", f"/v1/automations/{auto['id']}/activate")
    call(fs.url, "POST", "/v1/contacts", {"email": "ann@x.io"})
    signed_up = {"name": "user.signed_up", "contact_email": "ann@x.io"}
    assert post_event(fs.url, signed_up)[2]["triggered_runs"] == 1
    assert post_event(fs.url, signed_up)[2]["triggered_runs"] == 0, "within the cooldown"
    with fs._lock:
        fs.runs[0]["_started"] -= 61  # the run started 61 s ago, without waiting for it
    assert post_event(fs.url, signed_up)[2]["triggered_runs"] == 1, "after the cooldown"
    assert len(fs.runs_json(auto["id"])) == 2


def test_event_lose_answer_next_applies_then_hangs_up(fs):
    fs.lose_answer_next(path_prefix="/v1/events")
    assert call(fs.url, "GET", "/v1/audiences/aud_test")[0] == 200, "only a matching request"
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        post_event(fs.url, {"name": "a", "event_id": "e1"})
    first = fs.events_json()
    assert len(first) == 1 and first[0]["external_id"] == "e1", "applied although unanswered"
    assert fs.stats["answers_lost"] == 1 and fs.requests[-1]["status"] == 200
    status, _, again = post_event(fs.url, {"name": "a", "event_id": "e1"})
    assert (status, again) == (200, dict(first[0], deduped=True)), "the retry finds it"
    assert call(fs.url, "POST", "/_control/lose_answer_next", {"count": 1}, key=None)[0] == 200
    with pytest.raises((urllib.error.URLError, http.client.HTTPException, ConnectionError)):
        call(fs.url, "POST", "/v1/contacts", {"email": "a@x.io"})
    assert "a@x.io" in fs.contacts and fs.stats["answers_lost"] == 2
