"""End-to-end tests of a user's whole lifecycle and of the opt-out path back into the
database, with the real sendry-sync binary, a throwaway Supabase-shaped PostgreSQL
(module-scoped, migration installed) and a fresh fake Sendry per test (conftest.py).

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_lifecycle.py
    SENDRY_SYNC_BIN=$PWD/sendry-sync-asan /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_lifecycle.py

Changes to auth.users are made as GoTrue makes them: role supabase_auth_admin, whose
search_path is `auth` (unqualified `users`). Settings are changed as `postgres`.
Waiting is polling against a deadline, never a bare sleep.
"""

import hashlib
import hmac
import http.client
import json
import socket
import time
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone

import pytest

from conftest import API_KEY, AUDIENCE, T, import_requests, start_daemon, wait_until

SECRET = "whsec_lifecycle_test_0123456789abcdef"
IMPORT = "/v1/contacts/import"
BY_EMAIL = "/v1/contacts/by-email"


# --- fixtures and helpers ------------------------------------------------------------

@pytest.fixture
def ldb(db):
    """The conftest db, plus an empty inbox and state table and default settings."""
    db.query("TRUNCATE public.sendry_inbox RESTART IDENTITY")
    db.query("TRUNCATE public.sendry_sync_state")
    db.query("UPDATE public.sendry_settings SET sync_on = 'signup', on_delete = 'delete_contact',"
             " updated_at = now()")
    return db


def as_gotrue(db, sql, params=None):
    """One statement as GoTrue runs it: role supabase_auth_admin, search_path auth."""
    return db.query(sql, params, user="supabase_auth_admin")


def change_email(db, uid, new_email):
    as_gotrue(db, "UPDATE users SET email = %s, updated_at = now() WHERE id = %s", (new_email, uid))


def delete_user(db, uid):
    as_gotrue(db, "DELETE FROM users WHERE id = %s", (uid,))


def set_settings(db, **kw):
    for k, v in kw.items():
        assert k in ("sync_on", "on_delete")
        db.query(f"UPDATE public.sendry_settings SET {k} = %s, updated_at = now()", (v,))


def outbox(db):
    return db.query("SELECT id, op, user_id::text, email, old_email, status, attempts,"
                    " last_http_status, last_error, sent_at FROM public.sendry_outbox ORDER BY id")


def run_once(workers, *flags):
    w = workers("--once", *flags)
    status = w.wait(T)
    assert status == 0, f"--once exited {status}; log:\n{w.log()}"
    return w


def app_meta(db, email):
    return db.scalar("SELECT raw_app_meta_data FROM auth.users WHERE email = %s", (email,))


def inbox(db):
    return db.query("SELECT id, event_id, type, source, email, status, reason, applied_at"
                    " FROM public.sendry_inbox ORDER BY id")


def post_contact(fake, email):
    """Create a contact through the fake's own API (as another Sendry client would)."""
    req = urllib.request.Request(
        fake.url + "/v1/contacts", method="POST",
        data=json.dumps({"email": email, "audience_id": AUDIENCE}).encode(),
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
        return json.loads(resp.read())


def request_emails(r):
    """The addresses a recorded request is about (body or ?email=)."""
    out = set()
    body = r["json"]
    if isinstance(body, dict):
        for c in body.get("contacts") or []:
            out.add(c.get("email"))
        if r["path"] != IMPORT and "email" in body:
            out.add(body["email"])
    if "email" in r["query"]:
        out.add(r["query"]["email"])
    return out


# --- 1. email change -------------------------------------------------------------------

def test_email_change_moves_the_contact(ldb, fake, workers):
    uid = ldb.signup("alice@example.com", {"first_name": "Alice", "last_name": "Liddell"})
    run_once(workers)
    assert set(fake.contacts) == {"alice@example.com"}
    contact_id = fake.contacts["alice@example.com"]["id"]

    change_email(ldb, uid, "alice.new@example.com")
    rows = outbox(ldb)
    assert len(rows) == 2
    assert rows[1]["op"] == "upsert" and rows[1]["user_id"] == uid
    assert rows[1]["email"] == "alice.new@example.com"
    assert rows[1]["old_email"] == "alice@example.com"

    before = len(fake.requests)
    run_once(workers)
    assert set(fake.contacts) == {"alice.new@example.com"}, fake.contacts
    moved = fake.contacts["alice.new@example.com"]
    assert moved["id"] == contact_id, "the contact must be moved, not re-created"
    assert moved["first_name"] == "Alice"
    assert AUDIENCE in moved["audiences"]
    new = [r for r in fake.requests[before:] if not r["path"].startswith("/v1/audiences/")]
    assert [(r["method"], r["path"], r["query"].get("email"), r["status"]) for r in new] == [
        ("PATCH", BY_EMAIL, "alice@example.com", 200)]
    assert new[0]["json"]["email"] == "alice.new@example.com"
    assert "unsubscribed" not in new[0]["json"]
    assert ldb.counts() == {"sent": 2}


def test_email_change_of_an_address_sendry_never_had_upserts(ldb, fake, workers):
    uid = ldb.signup("bob@example.com")
    run_once(workers)
    fake.reset()  # Sendry lost (or never had) the old address

    change_email(ldb, uid, "bob.new@example.com")
    run_once(workers)
    calls = [(r["method"], r["path"], r["status"]) for r in fake.requests
             if not r["path"].startswith("/v1/audiences/")]
    assert calls == [("PATCH", BY_EMAIL, 404), ("POST", IMPORT, 200)], calls
    assert fake.requests_matching("PATCH")[0]["query"]["email"] == "bob@example.com"
    assert [c["email"] for c in import_requests(fake)[0]["json"]["contacts"]] == ["bob.new@example.com"]
    assert set(fake.contacts) == {"bob.new@example.com"}
    assert AUDIENCE in fake.contacts["bob.new@example.com"]["audiences"]
    assert ldb.counts() == {"sent": 2}
    assert outbox(ldb)[1]["last_error"] is None


def test_email_change_when_both_addresses_exist_leaves_one_contact(ldb, fake, workers):
    uid = ldb.signup("carol@example.com")
    run_once(workers)
    old_id = fake.contacts["carol@example.com"]["id"]
    created = post_contact(fake, "carol.new@example.com")  # already in Sendry
    assert set(fake.contacts) == {"carol@example.com", "carol.new@example.com"}

    change_email(ldb, uid, "carol.new@example.com")
    before = len(fake.requests)
    run_once(workers)
    calls = [(r["method"], r["path"], r["status"]) for r in fake.requests[before:]
             if not r["path"].startswith(f"/v1/audiences/{AUDIENCE}") or r["method"] != "GET"]
    assert calls == [("PATCH", BY_EMAIL, 409), ("POST", IMPORT, 200), ("GET", BY_EMAIL, 200),
                     ("DELETE", f"/v1/contacts/{old_id}", 200)], calls
    assert set(fake.contacts) == {"carol.new@example.com"}, fake.contacts
    assert fake.contacts["carol.new@example.com"]["id"] == created["id"]
    assert AUDIENCE in fake.contacts["carol.new@example.com"]["audiences"]
    assert ldb.counts() == {"sent": 2}


# --- 2. deletion -----------------------------------------------------------------------

def test_delete_user_deletes_the_contact(ldb, fake, workers):
    uid = ldb.signup("dave@example.com")
    run_once(workers)
    cid = fake.contacts["dave@example.com"]["id"]

    delete_user(ldb, uid)
    rows = outbox(ldb)
    assert [(r["op"], r["email"], r["status"]) for r in rows] == [
        ("upsert", "dave@example.com", "sent"), ("delete", "dave@example.com", "pending")]
    before = len(fake.requests)
    run_once(workers)
    calls = [(r["method"], r["path"], r["status"]) for r in fake.requests[before:]
             if not r["path"].startswith("/v1/audiences/")]
    assert calls == [("GET", BY_EMAIL, 200), ("DELETE", f"/v1/contacts/{cid}", 200)], calls
    assert fake.requests_matching("GET", BY_EMAIL)[0]["query"]["email"] == "dave@example.com"
    assert fake.contacts == {}
    assert ldb.counts() == {"sent": 2}


def test_delete_of_a_user_sendry_never_had_is_done(ldb, fake, workers):
    uid = ldb.signup("erin@example.com")
    run_once(workers)
    fake.reset()

    delete_user(ldb, uid)
    run_once(workers)
    calls = [(r["method"], r["path"], r["status"]) for r in fake.requests
             if not r["path"].startswith("/v1/audiences/")]
    assert calls == [("GET", BY_EMAIL, 404)], calls
    assert ldb.counts() == {"sent": 2}, outbox(ldb)
    assert outbox(ldb)[1]["last_error"] is None


def test_signup_and_delete_before_delivery_leave_nothing(ldb, fake, workers):
    """Both changes are pending at once: they go out as one, the newest (the deletion),
    and Sendry never sees the contact at all."""
    uid = ldb.signup("gina@example.com")
    delete_user(ldb, uid)
    assert [r["op"] for r in outbox(ldb)] == ["upsert", "delete"]
    run_once(workers)
    calls = [(r["method"], r["path"], r["status"]) for r in fake.requests
             if not r["path"].startswith("/v1/audiences/")]
    assert calls == [("GET", BY_EMAIL, 404)], calls
    assert fake.contacts == {}
    assert ldb.counts() == {"sent": 2}


def test_delete_with_remove_from_audience_keeps_the_contact(ldb, fake, workers):
    set_settings(ldb, on_delete="remove_from_audience")
    uid = ldb.signup("frank@example.com")
    run_once(workers)
    cid = fake.contacts["frank@example.com"]["id"]
    assert AUDIENCE in fake.contacts["frank@example.com"]["audiences"]

    delete_user(ldb, uid)
    before = len(fake.requests)
    run_once(workers)
    calls = [(r["method"], r["path"], r["status"]) for r in fake.requests[before:]
             if r["method"] != "GET" or r["path"] != f"/v1/audiences/{AUDIENCE}"]
    assert calls == [("GET", BY_EMAIL, 200),
                     ("DELETE", f"/v1/audiences/{AUDIENCE}/contacts/{cid}", 200)], calls
    assert "frank@example.com" in fake.contacts, "the contact itself must stay"
    assert AUDIENCE not in fake.contacts["frank@example.com"]["audiences"]
    assert ldb.counts() == {"sent": 2}


def test_delete_with_keep_sends_nothing(ldb, fake, workers):
    set_settings(ldb, on_delete="keep")
    uid = ldb.signup("grace@example.com")
    run_once(workers)
    delete_user(ldb, uid)
    assert ldb.counts() == {"sent": 1}, "on_delete=keep must enqueue nothing"

    before = len(fake.requests)
    run_once(workers)
    sent = [(r["method"], r["path"]) for r in fake.requests[before:]
            if r["path"] != f"/v1/audiences/{AUDIENCE}"]
    assert sent == []
    assert AUDIENCE in fake.contacts["grace@example.com"]["audiences"]


# --- 3. confirmed-only mode ------------------------------------------------------------

def test_confirmed_only_waits_for_the_confirmation(ldb, fake, workers):
    set_settings(ldb, sync_on="confirmed")
    uid = ldb.signup("heidi@example.com")
    assert outbox(ldb) == []
    run_once(workers)
    assert import_requests(fake) == []
    assert fake.contacts == {}

    as_gotrue(ldb, "UPDATE users SET email_confirmed_at = now(), updated_at = now() WHERE id = %s", (uid,))
    rows = outbox(ldb)
    assert [(r["op"], r["email"], r["old_email"]) for r in rows] == [("upsert", "heidi@example.com", None)]
    run_once(workers)
    assert len(import_requests(fake)) == 1
    assert set(fake.contacts) == {"heidi@example.com"}
    assert ldb.counts() == {"sent": 1}


# --- 4. ordering of the changes to one contact -----------------------------------------

def user_requests(fake, addresses):
    return [r for r in list(fake.requests)
            if not r["path"].startswith("/v1/audiences/") and request_emails(r) & addresses]


def claims(db):
    return db.query("SELECT id, status, attempts, claim_id FROM public.sendry_outbox ORDER BY id")


def test_pending_changes_of_one_user_go_out_as_one(ldb, fake, workers):
    """A burst of changes pending at once costs one request: the newest state, moved
    from the address Sendry knew before the first of them."""
    a, b, c = "ivan@example.com", "ivan.b@example.com", "ivan.c@example.com"
    uid = ldb.signup(a, {"first_name": "Ivan"})
    others = [ldb.signup(f"other{i}@example.com") for i in range(3)]
    change_email(ldb, uid, b)
    as_gotrue(ldb, "UPDATE users SET raw_user_meta_data = %s, updated_at = now() WHERE id = %s",
              (json.dumps({"first_name": "Ivan", "last_name": "Ivanov"}), uid))
    change_email(ldb, uid, c)
    mine = [r for r in outbox(ldb) if r["user_id"] == uid]
    assert [(r["email"], r["old_email"]) for r in mine] == [(a, None), (b, a), (b, None), (c, b)], \
        "the name change (last_name through raw_user_meta_data) enqueues an upsert of its own"
    post_contact(fake, a)     # Sendry already has the first address
    before = len(user_requests(fake, {a, b, c}))

    run_once(workers)
    reqs = user_requests(fake, {a, b, c})[before:]
    assert [(r["method"], r["path"], r["query"].get("email"), r["status"]) for r in reqs] == [
        ("PATCH", BY_EMAIL, a, 200)], reqs
    assert reqs[0]["json"]["email"] == c and reqs[0]["json"]["last_name"] == "Ivanov"
    assert set(fake.contacts) == {c} | {f"other{i}@example.com" for i in range(3)}
    assert fake.contacts[c]["last_name"] == "Ivanov"
    assert ldb.all_sent(len(mine) + len(others))
    assert len({r["claim_id"] for r in claims(ldb) if r["id"] in {m["id"] for m in mine}}) == 1


def test_changes_made_while_one_is_in_flight_wait_for_it(ldb, fake, workers):
    a, b, c = "ivan@example.com", "ivan.b@example.com", "ivan.c@example.com"
    fake.delay_all = 0.5
    w = start_daemon(workers, "--poll-interval", "0.2", "--concurrency", "4")
    uid = ldb.signup(a, {"first_name": "Ivan"})
    wait_until(lambda: user_requests(fake, {a}), T, "the sign-up in flight")
    change_email(ldb, uid, b)
    change_email(ldb, uid, c)
    wait_until(lambda: ldb.all_sent(3), T, "every row sent")
    w.terminate()
    assert w.wait(T) == 0, w.log()

    reqs = user_requests(fake, {a, b, c})
    assert [(r["method"], r["path"], r["query"].get("email"), r["status"]) for r in reqs] == [
        ("POST", IMPORT, None, 200), ("PATCH", BY_EMAIL, a, 200)], reqs
    assert reqs[1]["json"]["email"] == c
    # Never two at once: the first answered (>= its arrival + the delay) before the next.
    assert reqs[1]["time"] >= reqs[0]["time"] + 0.5, (reqs[0]["time"], reqs[1]["time"])
    assert set(fake.contacts) == {c}
    assert fake.contacts[c]["id"] == "ct_1", "a's contact (the first one created) must be moved"


def test_a_retried_row_holds_back_the_later_changes(ldb, fake, workers):
    """Later changes wait while the first row waits for its retry, then go out with it,
    as one; never on their own before it."""
    a, b, c = "judy@example.com", "judy.b@example.com", "judy.c@example.com"
    fake.delay_all = 0.1
    fake.fail_next(503, count=2, path_prefix=IMPORT)
    w = start_daemon(workers, "--poll-interval", "0.2", "--concurrency", "4",
                     "--backoff-base", "0.5", "--backoff-cap", "0.5")
    uid = ldb.signup(a)
    wait_until(lambda: ldb.row(a)["last_http_status"] == 503, T, "the first attempt failed")
    change_email(ldb, uid, b)
    change_email(ldb, uid, c)
    ids = [r["id"] for r in outbox(ldb)]
    assert len(ids) == 3

    def check():
        rows = {r["id"]: r for r in claims(ldb)}
        first = rows[ids[0]]
        if first["status"] != "sent":
            for later in ids[1:]:
                r = rows[later]
                never_claimed = r["status"] == "pending" and r["claim_id"] is None
                together = r["claim_id"] == first["claim_id"]
                assert never_claimed or together, \
                    f"row {later} went out apart from the older row {ids[0]}, still unfinished: {rows}"
        return all(r["status"] == "sent" for r in rows.values())

    wait_until(check, T, "all three rows sent", interval=0.02)
    reqs = user_requests(fake, {a, b, c})
    # The first import fails; what follows depends on timing (the retry may come before
    # or after the email changes are committed), and check() above holds in every case:
    # a later row goes out with the first row's claim, or after the first row is sent.
    assert (reqs[0]["method"], reqs[0]["status"]) == ("POST", 503), reqs
    assert any(r["status"] == 200 for r in reqs), reqs
    assert set(fake.contacts) == {c}
    w.terminate()
    assert w.wait(T) == 0, w.log()


def test_a_new_signup_waits_for_the_move_away_from_its_address(ldb, fake, workers):
    a, b = "kim@example.com", "kim.b@example.com"
    uid = ldb.signup(a)
    run_once(workers)
    change_email(ldb, uid, b)      # row 2: move a -> b
    ldb.signup(a)                  # row 3: another user now has address a
    fake.fail_next(503, count=1, path_prefix=BY_EMAIL)  # the move has to be retried

    w = start_daemon(workers)
    wait_until(lambda: ldb.all_sent(3), T, "every row sent")
    w.terminate()
    assert w.wait(T) == 0, w.log()
    moves = [i for i, r in enumerate(fake.requests) if r["method"] == "PATCH" and r["status"] == 200]
    imports = [i for i, r in enumerate(fake.requests) if r["path"] == IMPORT]
    assert len(moves) == 1 and len(imports) == 2, [(r["method"], r["status"]) for r in fake.requests]
    assert imports[1] > moves[0], "the sign-up with address a went out before a was moved away"
    assert set(fake.contacts) == {a, b}, fake.contacts


# --- 5. webhooks -----------------------------------------------------------------------

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Hook:
    """The daemon's HTTP side: POST /webhooks/sendry, GET /healthz, GET /metrics."""

    def __init__(self, worker, port):
        self.worker = worker
        self.port = port

    def request(self, method, path, body=b"", headers=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=T)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def post(self, body, headers):
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        h = {"Content-Type": "application/json"}
        h.update(headers)
        return self.request("POST", "/webhooks/sendry", body, h)

    def get(self, path):
        return self.request("GET", path)


def start_listener(workers, *flags, secret=SECRET):
    port = free_port()
    w = start_daemon(workers, "--listen", f"127.0.0.1:{port}", "--reconcile-interval", "0", *flags,
                     env={"SENDRY_WEBHOOK_SECRET": secret})
    w.wait_log(r"listening on", T)
    # Webhooks go to the aux connection: until it is up they are answered 503 (Sendry
    # redelivers), which a test of what a webhook does must not race with.
    w.wait_log(r"db: connected \(aux connection", T)
    return Hook(w, port)


def sig_hex(body, secret=SECRET):
    if isinstance(body, str):
        body = body.encode()
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def sig_timestamped(body, t, secret=SECRET):
    if isinstance(body, str):
        body = body.encode()
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


def iso(dt):
    return dt.isoformat().replace("+00:00", "Z")


def contact_event(email, unsubscribed=True, at=None, event_id=None):
    return json.dumps({
        "id": event_id or f"evt_{uuid.uuid4().hex}",
        "type": "contact.updated",
        "created_at": iso(at or datetime.now(timezone.utc)),
        "data": {"id": "ct_1", "email": email, "unsubscribed": unsubscribed},
    })


def assert_opted_out(db, email, reason="unsubscribed"):
    meta = app_meta(db, email)
    assert meta["sendry_unsubscribed"] is True, meta
    assert meta["sendry_unsubscribed_reason"] == reason, meta
    at = datetime.fromisoformat(meta["sendry_unsubscribed_at"])
    assert abs((datetime.now(timezone.utc) - at).total_seconds()) < 600, meta
    assert meta["provider"] == "email", "the rest of raw_app_meta_data must be kept"


@pytest.mark.parametrize("header, scheme", [
    ("X-Sendry-Signature", "hex"),
    ("X-Sendry-Signature", "sha256="),
    ("x-sendry-signature", "hex"),
    ("Sendry-Signature", "hex"),
    ("X-Sendry-Signature", "timestamped"),
    ("Sendry-Signature", "timestamped"),
])
def test_webhook_valid_signature_applies_the_opt_out(ldb, fake, workers, header, scheme):
    email = "leo@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    body = contact_event(email)
    value = {"hex": sig_hex(body), "sha256=": "sha256=" + sig_hex(body),
             "timestamped": sig_timestamped(body, int(time.time()))}[scheme]
    status, text = hook.post(body, {header: value})
    assert status == 200, text
    assert json.loads(text) == {"result": "applied"}
    assert_opted_out(ldb, email)
    rows = inbox(ldb)
    assert len(rows) == 1, rows
    assert rows[0]["event_id"] == json.loads(body)["id"]
    assert (rows[0]["type"], rows[0]["source"], rows[0]["status"], rows[0]["email"]) == (
        "contact.updated", "webhook", "applied", email)
    assert rows[0]["reason"] == "unsubscribe (unsubscribed)"
    assert rows[0]["applied_at"] is not None


@pytest.mark.parametrize("case", ["wrong_secret", "stale_timestamp", "missing_header",
                                  "garbage_header", "tampered_body"])
def test_webhook_bad_signature_is_401(ldb, fake, workers, case):
    email = "mia@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    body = contact_event(email)
    headers = {
        "wrong_secret": {"X-Sendry-Signature": sig_hex(body, "whsec_not_the_right_secret_42")},
        "stale_timestamp": {"X-Sendry-Signature": sig_timestamped(body, int(time.time()) - 600)},
        "missing_header": {},
        "garbage_header": {"X-Sendry-Signature": "not a signature"},
        "tampered_body": {"X-Sendry-Signature": sig_hex(body.replace("mia", "max"))},
    }[case]
    status, text = hook.post(body, headers)
    assert status == 401, text
    assert inbox(ldb) == []
    assert "sendry_unsubscribed" not in app_meta(ldb, email)


def test_webhook_replay_is_a_duplicate(ldb, fake, workers):
    email = "noah@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    body = contact_event(email)
    status, text = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    assert (status, json.loads(text)) == (200, {"result": "applied"}), text
    at = app_meta(ldb, email)["sendry_unsubscribed_at"]
    status, text = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    assert status == 200, text
    assert json.loads(text) == {"result": "duplicate"}
    assert len(inbox(ldb)) == 1
    assert app_meta(ldb, email)["sendry_unsubscribed_at"] == at


def test_webhook_without_id_is_deduplicated_by_body(ldb, fake, workers):
    email = "nora@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    body = json.dumps({"type": "email.complained", "created_at": iso(datetime.now(timezone.utc)),
                       "data": {"to": [email]}})
    s1 = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    s2 = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    assert (s1[0], json.loads(s1[1])) == (200, {"result": "applied"}), s1
    assert (s2[0], json.loads(s2[1])) == (200, {"result": "duplicate"}), s2
    rows = inbox(ldb)
    assert len(rows) == 1 and rows[0]["event_id"].startswith("sha256:")
    assert_opted_out(ldb, email, "complaint")


def test_webhook_oversized_body_is_413(ldb, fake, workers):
    email = "olga@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    body = json.dumps({"id": "evt_big", "type": "contact.updated",
                       "data": {"email": email, "unsubscribed": True, "pad": "x" * (300 * 1024)}})
    assert len(body) > 256 * 1024
    try:
        status, text = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    except (ConnectionResetError, BrokenPipeError) as exc:  # pragma: no cover - diagnostic
        pytest.fail(f"the server hung up without an answer: {exc!r}")
    assert status == 413, text
    assert inbox(ldb) == []
    # The server still works afterwards.
    assert hook.get("/healthz")[0] == 200


def test_webhook_invalid_json_is_400(ldb, fake, workers):
    hook = start_listener(workers)
    body = '{"id": "evt_bad", "type": "contact.updated", "data": {'
    status, text = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    assert status == 400, text
    assert inbox(ldb) == []


def test_webhook_unknown_email_is_stored_as_ignored(ldb, fake, workers):
    hook = start_listener(workers)
    body = contact_event("nobody@example.com")
    status, text = hook.post(body, {"X-Sendry-Signature": sig_hex(body)})
    assert status == 200, text
    assert json.loads(text) == {"result": "ignored: no user with this email"}
    rows = inbox(ldb)
    assert [(r["status"], r["reason"], r["email"]) for r in rows] == [
        ("ignored", "no user with this email", "nobody@example.com")]


def test_webhook_resubscribe_sets_the_flag_back(ldb, fake, workers):
    email = "pia@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    t0 = datetime.now(timezone.utc) - timedelta(minutes=5)
    out = contact_event(email, True, at=t0)
    assert hook.post(out, {"X-Sendry-Signature": sig_hex(out)})[0] == 200
    assert app_meta(ldb, email)["sendry_unsubscribed"] is True

    # An older re-subscribe is ignored; a newer one wins.
    older = contact_event(email, False, at=t0 - timedelta(minutes=1))
    status, text = hook.post(older, {"X-Sendry-Signature": sig_hex(older)})
    assert (status, json.loads(text)["result"]) == (200, "ignored: older than the state already recorded")
    assert app_meta(ldb, email)["sendry_unsubscribed"] is True

    newer = contact_event(email, False, at=t0 + timedelta(minutes=1))
    status, text = hook.post(newer, {"X-Sendry-Signature": sig_hex(newer)})
    assert (status, json.loads(text)) == (200, {"result": "applied"}), text
    meta = app_meta(ldb, email)
    assert meta["sendry_unsubscribed"] is False
    assert meta["sendry_unsubscribed_reason"] == "contact.updated"
    assert [r["status"] for r in inbox(ldb)] == ["applied", "ignored", "applied"]


def test_healthz_and_metrics_count_the_webhooks(ldb, fake, workers):
    email = "quinn@example.com"
    ldb.signup(email)
    hook = start_listener(workers)
    wait_until(lambda: ldb.all_sent(1), T, "the sign-up sent")

    status, text = hook.get("/healthz")
    assert (status, json.loads(text)) == (200, {"status": "ok"})

    ok = contact_event(email)
    assert hook.post(ok, {"X-Sendry-Signature": sig_hex(ok)})[0] == 200
    assert hook.post(ok, {"X-Sendry-Signature": sig_hex(ok)})[0] == 200          # duplicate
    unknown = contact_event("nobody@example.com")
    assert hook.post(unknown, {"X-Sendry-Signature": sig_hex(unknown)})[0] == 200  # ignored
    assert hook.post(ok, {"X-Sendry-Signature": "0" * 64})[0] == 401
    assert hook.post(ok, {"X-Sendry-Signature": sig_timestamped(ok, int(time.time()) - 600)})[0] == 401
    assert hook.post(ok, {})[0] == 401
    bad = "not json"
    assert hook.post(bad, {"X-Sendry-Signature": sig_hex(bad)})[0] == 400
    big = json.dumps({"id": "evt_big", "type": "contact.updated", "pad": "x" * (257 * 1024)})
    assert hook.post(big, {"X-Sendry-Signature": sig_hex(big)})[0] == 413

    status, text = hook.get("/metrics")
    assert status == 200
    lines = text.splitlines()

    def value(prefix):
        hits = [ln for ln in lines if ln.startswith(prefix + " ")]
        assert len(hits) == 1, (prefix, [ln for ln in lines if "webhook" in ln or "rows" in ln])
        return float(hits[0].rsplit(" ", 1)[1])

    assert value('sendry_sync_webhook_events_total{type="contact.updated",result="applied"}') == 1
    assert value('sendry_sync_webhook_events_total{type="contact.updated",result="duplicate"}') == 1
    assert value('sendry_sync_webhook_events_total{type="contact.updated",result="ignored"}') == 1
    assert value('sendry_sync_webhook_events_total{type="invalid",result="unauthorized"}') == 3
    assert value('sendry_sync_webhook_events_total{type="invalid",result="bad_request"}') == 1
    assert value('sendry_sync_webhook_events_total{type="invalid",result="too_large"}') == 1
    assert value('sendry_sync_rows_total{outcome="sent"}') == 1
    assert value('sendry_sync_rows_total{outcome="failed"}') == 0


def test_listen_without_a_webhook_secret_exits_2(ldb, fake, workers):
    w = workers("--listen", f"127.0.0.1:{free_port()}", env={"SENDRY_WEBHOOK_SECRET": None})
    assert w.wait(T) == 2, w.log()
    lines = [ln for ln in w.lines() if ln.strip()]
    assert any("SENDRY_WEBHOOK_SECRET" in ln for ln in lines), lines
    assert len(lines) == 1, lines


def test_healthz_is_503_while_sending_is_stopped(ldb, fake, workers):
    hook = start_listener(workers)
    assert hook.get("/healthz")[0] == 200
    fake.fail_next(401, count=100)
    ldb.signup("rita@example.com")
    hook.worker.wait_log(r"sending stopped", T)
    status, text = hook.get("/healthz")
    assert status == 503, text
    body = json.loads(text)
    assert body["status"] == "unhealthy"
    assert "401" in body["reason"], body
    assert API_KEY not in text
    assert ldb.counts() == {"pending": 1}


# --- 6. reconciliation -----------------------------------------------------------------

def test_reconciliation_pages_unsubscribes_and_suppressions(ldb, fake, workers):
    u1, u2, u3 = "sam@example.com", "tess@example.com", "uma@example.com"
    for e in (u1, u2, u3):
        ldb.signup(e)
    for i in range(75):
        fake.add_unsubscribe(f"unknown{i:03d}@example.org")
    fake.add_unsubscribe(u1, reason="clicked")
    for i in range(75, 150):
        fake.add_unsubscribe(f"unknown{i:03d}@example.org")
    fake.add_suppression(u2, reason="hard_bounce")

    w = start_daemon(workers, "--reconcile-interval", "1")
    wait_until(lambda: (app_meta(ldb, u1) or {}).get("sendry_unsubscribed") is True
               and (app_meta(ldb, u2) or {}).get("sendry_unsubscribed") is True,
               T, "both opt-outs applied")
    w.wait_log(r"reconcile: \d+ entries read", T)
    assert_opted_out(ldb, u1, "clicked")
    assert_opted_out(ldb, u2, "hard_bounce")
    assert "sendry_unsubscribed" not in app_meta(ldb, u3)

    pages = fake.requests_matching("GET", "/v1/unsubscribes")
    assert len(pages) >= 2 and pages[0]["query"].get("limit") == "100"
    assert "cursor" in pages[1]["query"], "the second page must be fetched with the cursor"

    rows = inbox(ldb)
    assert len(rows) == 152, len(rows)
    assert len({r["event_id"] for r in rows}) == 152
    assert {r["source"] for r in rows} == {"reconcile"}
    mine = {r["email"]: r for r in rows if r["status"] == "applied"}
    assert set(mine) == {u1, u2}
    assert (mine[u1]["type"], mine[u1]["reason"]) == ("unsubscribe", "unsubscribe (clicked)")
    assert (mine[u2]["type"], mine[u2]["reason"]) == ("suppression", "unsubscribe (hard_bounce)")
    assert {r["status"] for r in rows if r["email"] not in (u1, u2)} == {"ignored"}
    state = {r["key"]: r["value"] for r in ldb.query("SELECT key, value FROM public.sendry_sync_state")}
    assert state.get("reconcile.unsubscribes.cursor"), state
    first_at = app_meta(ldb, u1)["sendry_unsubscribed_at"]

    # A later opt-out: the next run picks it up, and nothing old is stored again.
    fake.add_unsubscribe(u3, reason="clicked")
    wait_until(lambda: (app_meta(ldb, u3) or {}).get("sendry_unsubscribed") is True,
               T, "the later opt-out applied")
    runs = len(w.wait_log(r"reconcile: \d+ entries read", T))
    w.wait_log(r"reconcile: \d+ entries read", T, count=runs + 1)  # one more full run
    assert len(inbox(ldb)) == 153
    assert app_meta(ldb, u1)["sendry_unsubscribed_at"] == first_at
    again = fake.requests_matching("GET", "/v1/unsubscribes")[len(pages):]
    assert again and all(r["query"].get("cursor") for r in again), \
        "later runs must start from the stored cursor, not from the first page"
    w.terminate()
    assert w.wait(T) == 0, w.log()
