"""End-to-end tests of lifecycle events (issue 18), with the real binary, a real
PostgreSQL and the fake Sendry: the built-in events through GoTrue's own statements,
sendry_track in rolled-back and committed transactions, a kill -9 between the request
and its outcome (Sendry's event_id dedupe), an event waiting for its contact, per-user
order over 1,000 events, a 422 on one event, and the events counter on /metrics.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider -s tests/test_events.py
    SENDRY_SYNC_BIN=$PWD/sendry-sync-asan /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_events.py

The event row contract: one row of public.sendry_outbox with op 'event', email the
contact's address (sent as contact_email), payload {"name": ..., "payload": {...}},
deduped set on a sent event; the event_id sent is public.sendry_event_id(id).
Changes to auth.users are made as GoTrue makes them (role supabase_auth_admin, search_path
auth, unqualified `users`). Waiting is polling against a deadline, never a bare sleep.
"""

import json
import os
import re
import signal
import uuid

import pytest

from conftest import API_KEY, INSTANCE_ID, T, import_requests, start_daemon, wait_until
from test_lifecycle import start_listener

EVENTS = "/v1/events"
IMPORT = "/v1/contacts/import"
BUILT_IN = ("user.signed_up", "user.email_confirmed", "user.became_permanent",
            "user.email_changed", "user.deleted")


# --- fixtures and helpers ------------------------------------------------------------

@pytest.fixture
def edb(db):
    """The conftest db with the default contact settings and no built-in events;
    the events setting is put back to empty afterwards."""
    db.query("UPDATE public.sendry_settings SET sync_on = 'signup', on_delete = 'delete_contact',"
             " events = '{}', updated_at = now()")
    yield db
    db.query("UPDATE public.sendry_settings SET sync_on = 'signup', events = '{}', updated_at = now()")


def set_events(db, names):
    db.query("UPDATE public.sendry_settings SET events = %s::text[], updated_at = now()", (list(names),))


def as_gotrue(db, sql, params=None):
    """One statement as GoTrue runs it: role supabase_auth_admin, search_path auth."""
    return db.query(sql, params, user="supabase_auth_admin")


def gotrue_signup(db, email, anonymous=False, provider="email"):
    """A sign-up as GoTrue makes it: INSERT with role '', then role 'authenticated', in one
    transaction (anonymous: no email, raw_app_meta_data {})."""
    uid = str(uuid.uuid4())
    app_meta = {} if anonymous else {"provider": provider, "providers": [provider]}
    with db.connect("supabase_auth_admin") as conn, conn.transaction():
        conn.execute(
            "INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data,"
            " raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)"
            " VALUES (%s, %s, 'authenticated', '', %s, %s, '{}', false, %s, now(), now())",
            (INSTANCE_ID, uid, email, json.dumps(app_meta), anonymous))
        conn.execute("UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = %s", (uid,))
    return uid


def sign_in(db, uid):
    """GoTrue's UpdateLastSignInAt: every sign-in and every refresh-token issue."""
    as_gotrue(db, "UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = %s", (uid,))


def confirm(db, uid):
    as_gotrue(db, "UPDATE users SET email_confirmed_at = now(), confirmation_token = '',"
                  " updated_at = now() WHERE id = %s", (uid,))


def change_email(db, uid, new_email):
    """GoTrue's email change: two transactions; the second replaces email (the first,
    recording the pending change, must emit nothing)."""
    before = len(event_rows(db, uid))
    as_gotrue(db, "UPDATE users SET email_change = %s, email_change_token_new = 'token-new',"
                  " email_change_sent_at = now(), updated_at = now() WHERE id = %s", (new_email, uid))
    assert len(event_rows(db, uid)) == before, "recording a pending email change emitted an event"
    as_gotrue(db, "UPDATE users SET email = %s, email_change = '', email_change_token_new = '',"
                  " email_change_confirm_status = 0, updated_at = now() WHERE id = %s", (new_email, uid))


def make_permanent(db, uid, email):
    """An anonymous user becoming permanent, in one UPDATE (GoTrue's updateUser)."""
    as_gotrue(db, "UPDATE users SET email = %s, is_anonymous = false,"
                  " raw_app_meta_data = '{\"provider\": \"email\", \"providers\": [\"email\"]}',"
                  " updated_at = now() WHERE id = %s", (email, uid))


def delete_user(db, uid):
    as_gotrue(db, "DELETE FROM users WHERE id = %s", (uid,))


def track(db, name, uid, payload=None):
    """sendry_track in a transaction of its own (autocommit); returns its answer."""
    return db.scalar("SELECT public.sendry_track(%s, %s::uuid, %s::jsonb)",
                     (name, uid, json.dumps(payload or {})))


def outbox(db):
    return db.query("SELECT id, op, user_id::text, email, payload, class, status, attempts,"
                    " last_http_status, last_error, deduped FROM public.sendry_outbox ORDER BY id")


def event_rows(db, uid=None):
    return [r for r in outbox(db) if r["op"] == "event" and (uid is None or r["user_id"] == uid)]


def event_id(db, row_id):
    return db.scalar("SELECT public.sendry_event_id(%s)", (row_id,))


def event_requests(fake):
    return fake.requests_matching("POST", EVENTS)


def request_index(fake, pred):
    """Index in the fake's request log of the first request pred(record) accepts, or None."""
    for i, r in enumerate(list(fake.requests)):
        if pred(r):
            return i
    return None


def imported(email):
    """A predicate: an accepted import that carried `email`."""
    def pred(r):
        return (r["method"] == "POST" and r["path"] == IMPORT and r["status"] == 200
                and any(c.get("email") == email for c in (r["json"] or {}).get("contacts", [])))
    return pred


def event_sent(name, email):
    def pred(r):
        body = r["json"] or {}
        return (r["method"] == "POST" and r["path"].rstrip("/") == EVENTS
                and body.get("name") == name and body.get("contact_email") == email)
    return pred


def metric(text, name):
    """The value of one sample of /metrics, 0 when the series is absent."""
    for ln in text.splitlines():
        if ln.startswith(name + " "):
            return float(ln.rsplit(" ", 1)[1])
    return 0.0


def events_metric(text, name, result):
    return metric(text, f'sendry_sync_events_total{{name="{name}",result="{result}"}}')


# --- 1. the built-in events, through GoTrue's own statements -------------------------------

def test_each_transition_emits_one_event_and_sign_in_none(edb, fake, workers):
    db = edb
    set_events(db, BUILT_IN)
    start_daemon(workers, "--reconcile-interval", "0")
    seen = []   # (name, row) in the order the steps made them

    def step(name, uid, email, payload):
        """The statement just made emitted exactly one event row, `name`; the worker sends it
        with the contract's contact_email, payload and event_id, once."""
        rows = event_rows(db, uid)
        new = rows[len([s for s in seen if s[1]["user_id"] == uid]):]
        assert [r["payload"]["name"] for r in new] == [name], (name, rows)
        row = new[0]
        assert row["email"] == email and row["class"] == "live", row
        assert row["payload"] == {"name": name, "payload": payload}, row
        seen.append((name, row))
        wait_until(lambda: fake.events_json(name=name) and db.scalar(
            "SELECT status FROM public.sendry_outbox WHERE id = %s", (row["id"],)) == "sent",
            T, f"{name} sent")
        got = [e for e in fake.events_json(name=name) if e["contact_email"] == email]
        assert len(got) == 1, got
        assert got[0]["payload"] == payload, got[0]
        assert got[0]["contact_id"] is not None, f"{name}: Sendry had no contact at {email} when it came"
        eid = event_id(db, row["id"])
        assert re.fullmatch(r"ss-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}-%d" % row["id"],
                            eid), eid
        assert got[0]["external_id"] == eid, got[0]
        return row

    # Sign-up: the contact row first, then the event; at Sendry the contact before the event.
    uid = gotrue_signup(db, "eve@example.com")
    ev = step("user.signed_up", uid, "eve@example.com", {"user_id": uid, "provider": "email"})
    upsert = [r for r in outbox(db) if r["op"] == "upsert" and r["user_id"] == uid]
    assert len(upsert) == 1 and upsert[0]["id"] < ev["id"], outbox(db)
    assert request_index(fake, imported("eve@example.com")) < \
        request_index(fake, event_sent("user.signed_up", "eve@example.com"))

    # Sign-in and token refresh (GoTrue's UpdateLastSignInAt): nothing.
    sign_in(db, uid)
    sign_in(db, uid)
    assert len(event_rows(db)) == 1

    # The address confirmed (email_confirmed_at from null); confirming again is no transition.
    confirm(db, uid)
    step("user.email_confirmed", uid, "eve@example.com", {"user_id": uid})
    as_gotrue(db, "UPDATE users SET email_confirmed_at = now(), updated_at = now() WHERE id = %s", (uid,))
    sign_in(db, uid)
    assert len(event_rows(db)) == 2, event_rows(db)

    # The email change: GoTrue's two UPDATEs; the move first, then the event with old_email.
    change_email(db, uid, "eve.new@example.com")
    step("user.email_changed", uid, "eve.new@example.com", {"user_id": uid, "old_email": "eve@example.com"})
    assert "eve.new@example.com" in fake.contacts and "eve@example.com" not in fake.contacts
    moved = request_index(fake, lambda r: r["method"] in ("PATCH", "PUT") and r["status"] == 200
                          or imported("eve.new@example.com")(r))
    assert moved is not None and moved < request_index(
        fake, event_sent("user.email_changed", "eve.new@example.com")), "the move before the event"

    # An anonymous user (no address: no event) becoming permanent.
    anon = gotrue_signup(db, None, anonymous=True)
    assert event_rows(db, anon) == []
    sign_in(db, anon)
    make_permanent(db, anon, "perm@example.com")
    step("user.became_permanent", anon, "perm@example.com", {"user_id": anon})
    assert request_index(fake, imported("perm@example.com")) < \
        request_index(fake, event_sent("user.became_permanent", "perm@example.com"))

    # The deletion: the event row before the delete row, and sent before the contact goes.
    mark = len(fake.requests)
    delete_user(db, uid)
    dele = [r for r in outbox(db) if r["op"] == "delete" and r["user_id"] == uid]
    ev = step("user.deleted", uid, "eve.new@example.com", {"user_id": uid})
    assert len(dele) == 1 and ev["id"] < dele[0]["id"], outbox(db)
    wait_until(lambda: "eve.new@example.com" not in fake.contacts, T, "the contact deleted")
    deletions = [i for i, r in enumerate(list(fake.requests)) if r["method"] == "DELETE" and i >= mark]
    assert deletions and request_index(fake, event_sent("user.deleted", "eve.new@example.com")) < deletions[0]

    wait_until(lambda: db.counts() == {"sent": len(outbox(db))}, T, "every row sent")
    names = [e["name"] for e in fake.events_json()]
    assert sorted(names) == sorted(BUILT_IN), names
    assert len(event_requests(fake)) == 5, "one request per event, no retries"
    assert all(r["deduped"] is False for r in event_rows(db)), "sent, not deduped: " + repr(event_rows(db))


def soft_delete(db, uid):
    """GoTrue's soft delete: deleted_at set, the email overwritten by a hash (not an address)."""
    as_gotrue(db, "UPDATE users SET deleted_at = now(), phone = NULL, raw_user_meta_data = '{}',"
                  " email = encode(sha256(convert_to(id::text || email, 'UTF8')), 'hex'), updated_at = now()"
                  " WHERE id = %s", (uid,))


def test_confirmed_mode_signs_up_on_confirmation_and_a_soft_delete_emits_user_deleted(edb, fake, workers):
    """sync_on = 'confirmed': an unconfirmed sign-up emits nothing (its address may not be
    sent yet); the confirmation is the sign-up: the contact, user.signed_up, then
    user.email_confirmed. A soft delete emits user.deleted to the previous address, before
    the contact's deletion; an unconfirmed user's deletion emits nothing."""
    db = edb
    db.query("UPDATE public.sendry_settings SET sync_on = 'confirmed', updated_at = now()")
    set_events(db, BUILT_IN)
    uid = gotrue_signup(db, "later@example.com")
    never = gotrue_signup(db, "never@example.com")
    sign_in(db, uid)
    assert outbox(db) == []
    confirm(db, uid)
    assert [(r["op"], (r["payload"] or {}).get("name")) for r in outbox(db)] == \
        [("upsert", None), ("event", "user.signed_up"), ("event", "user.email_confirmed")], outbox(db)
    assert event_rows(db)[0]["payload"]["payload"] == {"user_id": uid, "provider": "email"}
    w = workers("--once", "--reconcile-interval", "0")
    assert w.wait(T) == 0, w.log()
    assert "later@example.com" in fake.contacts
    soft_delete(db, uid)
    delete_user(db, never)
    tail = [(r["op"], r["email"], (r["payload"] or {}).get("name")) for r in outbox(db)][3:]
    assert tail == [("event", "later@example.com", "user.deleted"), ("delete", "later@example.com", None)], outbox(db)
    w = workers("--once", "--reconcile-interval", "0")
    assert w.wait(T) == 0, w.log()
    assert db.counts() == {"sent": 5}, outbox(db)
    assert [(e["name"], e["contact_email"]) for e in fake.events_json()] == \
        [("user.signed_up", "later@example.com"), ("user.email_confirmed", "later@example.com"),
         ("user.deleted", "later@example.com")]
    assert "later@example.com" not in fake.contacts
    deletion = [i for i, r in enumerate(list(fake.requests)) if r["method"] == "DELETE"]
    assert deletion and request_index(fake, event_sent("user.deleted", "later@example.com")) < deletion[0]
    assert request_index(fake, imported("later@example.com")) < \
        request_index(fake, event_sent("user.signed_up", "later@example.com"))


def test_an_event_enqueued_before_an_email_change_goes_to_the_contacts_new_address(edb, fake, workers):
    """The worker was down across a sign-up and an email change: the claim moves nothing
    (Sendry never had the old address) and creates the contact at the new one; the
    user.signed_up enqueued at the old address goes to the new one, where the contact is,
    so an automation it starts finds it."""
    db = edb
    set_events(db, ["user.signed_up", "user.email_changed"])
    uid = gotrue_signup(db, "before@example.com")
    track(db, "trial_started", uid, {"plan": "pro"})
    change_email(db, uid, "after@example.com")
    assert [r["email"] for r in event_rows(db)] == ["before@example.com", "before@example.com", "after@example.com"]
    w = workers("--once", "--reconcile-interval", "0")
    assert w.wait(T) == 0, w.log()
    assert db.counts() == {"sent": len(outbox(db))}, outbox(db)
    assert sorted(fake.contacts) == ["after@example.com"]
    got = [(e["name"], e["contact_email"], e["contact_id"] is not None) for e in fake.events_json()]
    assert got == [("user.signed_up", "after@example.com", True), ("trial_started", "after@example.com", True),
                   ("user.email_changed", "after@example.com", True)], got


def test_no_event_while_the_setting_is_empty(edb, fake, workers):
    db = edb
    uid = gotrue_signup(db, "quiet@example.com")
    sign_in(db, uid)
    confirm(db, uid)
    change_email(db, uid, "quiet.new@example.com")
    anon = gotrue_signup(db, None, anonymous=True)
    make_permanent(db, anon, "quiet.perm@example.com")
    delete_user(db, uid)
    assert event_rows(db) == [], outbox(db)
    w = workers("--once", "--reconcile-interval", "0")
    assert w.wait(T) == 0, w.log()
    assert db.counts() == {"sent": len(outbox(db))}
    assert event_requests(fake) == [] and fake.events == []


def test_only_the_named_events_are_emitted(edb, fake, workers):
    db = edb
    set_events(db, ["user.email_confirmed"])
    uid = gotrue_signup(db, "picky@example.com")
    confirm(db, uid)
    change_email(db, uid, "picky.new@example.com")
    assert [r["payload"]["name"] for r in event_rows(db)] == ["user.email_confirmed"], outbox(db)


# --- 2. sendry_track inside the application's transaction ----------------------------------

def test_a_rolled_back_track_sends_nothing_and_a_committed_one_waits_for_the_worker(edb, fake, workers):
    db = edb
    uid = db.signup("app@example.com")
    with db.connect() as conn:
        with pytest.raises(RuntimeError):
            with conn.transaction():
                conn.execute("SELECT public.sendry_track('rolled_back', %s::uuid, '{\"plan\": \"free\"}')", (uid,))
                raise RuntimeError("the application's transaction fails")
        with conn.transaction():
            conn.execute("SELECT public.sendry_track('trial_started', %s::uuid, '{\"plan\": \"pro\"}')", (uid,))
    rows = event_rows(db)
    assert [r["payload"] for r in rows] == [{"name": "trial_started", "payload": {"plan": "pro"}}], rows
    assert rows[0]["email"] == "app@example.com" and rows[0]["status"] == "pending", rows
    # The worker was down at commit (no NOTIFY heard): it finds the row when it starts.
    start_daemon(workers, "--reconcile-interval", "0")
    wait_until(lambda: db.all_sent(2), T, "the contact and the committed event sent")
    assert [(e["name"], e["contact_email"], e["payload"]) for e in fake.events_json()] == \
        [("trial_started", "app@example.com", {"plan": "pro"})]
    assert len(event_requests(fake)) == 1


def test_a_bad_event_is_a_failed_row_the_worker_leaves_and_track_email_needs_no_user(edb, fake, workers):
    """A name Sendry would refuse is no error in the caller's transaction: a failed row with
    the reason, never sent. sendry_track_email: an address outside auth.users, its own
    contact (no user, no contact request)."""
    db = edb
    uid = db.signup("careful@example.com")
    track(db, "", uid)
    track(db, "x" * 201, uid)
    db.scalar("SELECT public.sendry_track_email('newsletter_joined', ' Reader@Example.COM ', '{\"list\": \"weekly\"}')")
    rows = event_rows(db)
    assert [r["status"] for r in rows] == ["failed", "failed", "pending"], rows
    assert "empty" in rows[0]["last_error"] and "200" in rows[1]["last_error"], rows
    assert rows[2]["user_id"] is None and rows[2]["email"] == "reader@example.com", rows
    w = workers("--once", "--reconcile-interval", "0")
    w.wait(T)
    assert [(e["name"], e["contact_email"], e["payload"]) for e in fake.events_json()] == \
        [("newsletter_joined", "reader@example.com", {"list": "weekly"})], w.log()
    assert len(event_requests(fake)) == 1
    assert [r["status"] for r in event_rows(db)] == ["failed", "failed", "sent"]
    assert request_index(fake, imported("reader@example.com")) is None, "no contact request for it"


# --- 3. kill -9 between the request and its outcome: Sendry dedupes the event_id -----------

def test_kill9_after_the_request_reached_sendry_sends_it_again_and_sendry_dedupes(edb, fake, workers):
    db = edb
    uid = db.signup("crash@example.com")
    w1 = start_daemon(workers, "--lease", "2", "--reconcile-interval", "0")
    wait_until(lambda: db.all_sent(1), T, "the contact sent")
    killed = []

    def kill_on_event(record):
        if record["method"] == "POST" and record["path"].rstrip("/") == EVENTS and not killed:
            os.kill(w1.pid, signal.SIGKILL)   # the request is at Sendry; its answer goes nowhere
            killed.append(record)
    fake.on_request = kill_on_event
    track(db, "trial_started", uid, {"plan": "pro"})
    wait_until(lambda: killed, T, "the event's request reached the fake")
    fake.on_request = None
    w1.proc.wait(timeout=T)
    wait_until(lambda: len(fake.events) == 1, T, "Sendry ingested the event")
    row = event_rows(db)[0]
    assert row["status"] == "processing" and row["deduped"] is None, row   # no outcome recorded

    hook = start_listener(workers, "--lease", "2")
    wait_until(lambda: db.all_sent(2), T, "the event sent again once the lease ran out")
    eid = event_id(db, row["id"])
    reqs = event_requests(fake)
    assert [r["json"]["event_id"] for r in reqs] == [eid, eid], reqs
    assert len(fake.events) == 1 and fake.events_json()[0]["external_id"] == eid
    assert fake.event_dedupes == {eid: 1}
    row = event_rows(db)[0]
    assert row["status"] == "sent" and row["deduped"] is True, row
    _, text = hook.get("/metrics")
    assert events_metric(text, "trial_started", "deduped") == 1, text
    assert events_metric(text, "trial_started", "failed") == 0
    print(f"\nkill -9 after the request: {len(reqs)} event requests, {len(fake.events)} event at the fake, "
          f"{fake.events_deduped} dedupe(s) {fake.event_dedupes}, row {row['id']} sent deduped={row['deduped']}")


def test_lost_answers_are_retried_with_the_same_event_id(edb, fake, workers):
    """Sendry ingests the event and the answer never comes, twice. libcurl itself sends a
    request again once when a reused connection closes without an answer (the worker never
    sees that one), so the worker sees at least one transport error and retries the row:
    every request carries the same event_id and Sendry keeps one event."""
    db = edb
    uid = db.signup("lost@example.com")
    hook = start_listener(workers)
    wait_until(lambda: db.all_sent(1), T, "the contact sent")
    fake.lose_answer_next(count=2, path_prefix=EVENTS, method="POST")
    track(db, "trial_started", uid)
    wait_until(lambda: db.all_sent(2), T, "the event sent after its lost answers")
    eid = event_id(db, event_rows(db)[0]["id"])
    reqs = event_requests(fake)
    assert len(reqs) == 3 and {r["json"]["event_id"] for r in reqs} == {eid}, reqs
    assert len(fake.events) == 1 and fake.event_dedupes == {eid: 2}
    assert event_rows(db)[0]["deduped"] is True
    _, text = hook.get("/metrics")
    assert events_metric(text, "trial_started", "retried") >= 1, text
    assert events_metric(text, "trial_started", "deduped") == 1, text
    assert events_metric(text, "trial_started", "sent") == 0, text
    print(f"\nlost answers: {len(reqs)} event requests, {len(fake.events)} event, "
          f"{fake.events_deduped} dedupes, retried {events_metric(text, 'trial_started', 'retried'):.0f}")


# --- 4. an event waits for its contact ----------------------------------------------------------

def test_an_event_waits_while_its_contact_upsert_fails(edb, fake, workers):
    """The sign-up's contact fails twice (503): its user.signed_up (same statement) and a
    sendry_track made while the contact waits for its retry (a later transaction) go only
    after Sendry accepted the contact. Two failures, not three: three in a row would pause
    all sending for 5 s (the breaker), which is not what this tests."""
    db = edb
    set_events(db, ["user.signed_up"])
    fake.fail_next(503, count=2, path_prefix=IMPORT)
    start_daemon(workers, "--reconcile-interval", "0", "--backoff-base", "0.4", "--backoff-cap", "0.4")
    uid = gotrue_signup(db, "waiting@example.com")
    wait_until(lambda: [r for r in import_requests(fake) if r["status"] == 503], T, "the contact's upsert failed")
    track(db, "trial_started", uid, {"plan": "pro"})
    assert db.scalar("SELECT status FROM public.sendry_outbox WHERE op = 'upsert'") != "sent", \
        "the track was made while the contact still waited for its retry"
    assert event_requests(fake) == [], "no event before its contact is accepted"
    wait_until(lambda: db.all_sent(3), T, "the contact, then both events")
    assert [r["status"] for r in import_requests(fake)] == [503, 503, 200]
    accepted = request_index(fake, imported("waiting@example.com"))
    reqs = [(i, r["json"]["name"]) for i, r in enumerate(list(fake.requests))
            if r["method"] == "POST" and r["path"].rstrip("/") == EVENTS]
    assert [n for _, n in reqs] == ["user.signed_up", "trial_started"], reqs
    assert accepted is not None and all(i > accepted for i, _ in reqs), (accepted, reqs)
    assert all(r["attempts"] <= 1 for r in event_rows(db)), \
        f"waiting for the contact counts no attempt: {event_rows(db)}"


def test_a_contact_rejected_for_good_fails_its_events_unsent(edb, fake, workers):
    """A 422 on the contact (its address refused): the events chained after it fail with
    the reason and are never sent (Sendry has no contact for them to start a run for);
    another user's event goes."""
    db = edb
    set_events(db, ["user.signed_up"])
    fake.fail_emails(r"\"refused@example\.com\"", 422)   # any write naming it (the body as JSON text)
    uid = gotrue_signup(db, "refused@example.com")
    track(db, "trial_started", uid)
    gotrue_signup(db, "fine@example.com")
    start_daemon(workers, "--reconcile-interval", "0")
    try:
        wait_until(lambda: db.counts() == {"sent": 2, "failed": 3}, T, "the refused user's rows failed")
    finally:
        print(outbox(db))
    failed = [r for r in outbox(db) if r["status"] == "failed"]
    assert [r["op"] for r in failed] == ["upsert", "event", "event"], failed
    for r in failed[1:]:
        assert r["last_error"].startswith("not sent: the contact before it failed (HTTP 422"), r
        assert r["attempts"] <= 1, r
    assert [e["contact_email"] for e in fake.events_json()] == ["fine@example.com"]
    assert not [r for r in event_requests(fake) if r["json"].get("contact_email") == "refused@example.com"]


# --- 5. per-user order over 1,000 events ---------------------------------------------------------

def test_a_thousand_events_of_a_hundred_users_keep_each_users_order(edb, fake, workers):
    db = edb
    emails = db.signup_many(100, prefix="ordered")
    uids = [r["id"] for r in db.query(
        "SELECT id::text FROM auth.users WHERE email LIKE 'ordered%' ORDER BY email")]
    rounds = 10

    def enqueue(k):
        db.query("SELECT public.sendry_track('step', u, jsonb_build_object('seq', %s::int))"
                 " FROM unnest(%s::uuid[]) AS u", (k, uids))
    for k in range(rounds // 2):       # half before the worker starts, with the sign-ups
        enqueue(k)
    start_daemon(workers, "--rate", "0", "--reconcile-interval", "0")
    for k in range(rounds // 2, rounds):
        enqueue(k)
    wait_until(lambda: len(fake.events) >= 1000, 3 * T, "1,000 events at the fake")
    wait_until(lambda: db.all_sent(1100), T, "every row sent")
    per_user = {}
    for e in fake.events_json():
        per_user.setdefault(e["contact_email"], []).append(e["payload"]["seq"])
    assert sorted(per_user) == sorted(emails)
    wrong = {e: s for e, s in per_user.items() if s != list(range(rounds))}
    assert not wrong, f"{len(wrong)} users' events out of order, e.g. {next(iter(wrong.items()))}"
    assert len(event_requests(fake)) == 1000 and not fake.event_dedupes
    for email in emails[:10]:
        assert request_index(fake, imported(email)) < request_index(fake, event_sent("step", email))


# --- 6. a 422 fails only its own row; 7. the counter on /metrics ---------------------------------

def test_a_422_fails_only_that_event_and_the_users_next_ones_go(edb, fake, workers):
    db = edb
    uid = db.signup("mixed@example.com")
    other = db.signup("other@example.com")
    fake.fail_events(name="^rejected$", status=422)
    fake.fail_next(503, path_prefix=EVENTS, method="POST")   # the first event is retried once
    track(db, "first", uid, {"n": 1})
    track(db, "rejected", uid, {"n": 2})
    track(db, "third", uid, {"n": 3})
    track(db, "first", other, {"n": 1})
    hook = start_listener(workers)
    wait_until(lambda: db.counts() == {"sent": 5, "failed": 1}, T, "all sent but the rejected event")
    rows = {(r["user_id"], r["payload"]["name"]): r for r in event_rows(db)}
    bad = rows[(uid, "rejected")]
    assert bad["status"] == "failed" and bad["last_http_status"] == 422, bad
    assert "Injected fault for this event" in (bad["last_error"] or ""), bad
    assert bad["deduped"] is None, bad
    assert [e["name"] for e in fake.events_json() if e["contact_email"] == "mixed@example.com"] == \
        ["first", "third"]
    assert rows[(uid, "third")]["status"] == "sent" and rows[(uid, "third")]["deduped"] is False
    _, text = hook.get("/metrics")
    assert events_metric(text, "first", "sent") == 2, text
    assert events_metric(text, "first", "retried") == 1, text
    assert events_metric(text, "rejected", "failed") == 1, text
    assert events_metric(text, "third", "sent") == 1, text
    assert events_metric(text, "rejected", "sent") == 0 and events_metric(text, "third", "deduped") == 0


def test_a_deleted_database_id_makes_once_exit_1_with_the_fix(edb, fake, workers):
    """sendry_event_id needs the database_id row (a new one would give events already sent
    new ids): without it the claim fails loudly, naming the row and the fix, instead of
    sending events Sendry could not dedupe."""
    db = edb
    uid = db.signup("noid@example.com")
    track(db, "trial_started", uid)
    kept = db.scalar("SELECT value FROM public.sendry_sync_state WHERE key = 'database_id'")
    db.query("DELETE FROM public.sendry_sync_state WHERE key = 'database_id'")
    try:
        w = workers("--once", "--reconcile-interval", "0")
        assert w.wait(T) == 1, w.log()
        assert re.search(r"claiming rows failed: .*no database_id row.*\(SQLSTATE 55000\); fix: Restore the row",
                         w.log()), w.log()
        assert event_requests(fake) == []
    finally:
        db.query("INSERT INTO public.sendry_sync_state (key, value) VALUES ('database_id', %s)", (kept,))


# --- the budget and the stop rule ---------------------------------------------------------------

def test_a_live_event_goes_before_a_backlog_of_bulk_events(edb, fake, workers):
    """200 bulk event rows (as backfill --events writes them) drain at --rate 5 (about
    40 s); a sign-up made once they are going has its contact and user.signed_up sent
    next, ahead of the bulk events still waiting (each event is one request of the key's
    budget)."""
    db = edb
    emails = db.signup_many(200, prefix="bulkev")
    db.query("INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)"
             " SELECT 'bulk', 'event', id, lower(email), jsonb_build_object('name', 'user.signed_up',"
             "        'payload', jsonb_build_object('user_id', id::text))"
             " FROM auth.users WHERE email LIKE 'bulkev%' ORDER BY email")
    db.query("DELETE FROM public.sendry_outbox WHERE op <> 'event'")   # the contacts are there already
    set_events(db, ["user.signed_up"])
    start_daemon(workers, "--rate", "5", "--reconcile-interval", "0")
    wait_until(lambda: len(event_requests(fake)) >= 3, T, "the bulk events going out")
    gotrue_signup(db, "live-one@example.com")
    wait_until(lambda: request_index(fake, event_sent("user.signed_up", "live-one@example.com")) is not None,
               T, "the live event sent")
    names = [r["json"].get("contact_email") for r in event_requests(fake)]
    at = names.index("live-one@example.com")
    assert at < 40, f"the live event was request {at} of the events, behind {at} bulk ones"
    assert db.scalar("SELECT count(*) FROM public.sendry_outbox WHERE class = 'bulk'"
                     " AND status IN ('pending', 'processing')") > 100, "most bulk events still to go"


def test_a_403_on_an_event_stops_sending_and_keeps_the_row(edb, fake, workers):
    """The key lacks the scope for events: the event's 403 stops all sending (as for
    contacts: retrying cannot help), the row stays pending with its attempt not counted,
    and the cause names the events scope."""
    db = edb
    fake.api_key, fake.no_events_key = "sn_test_another_key", API_KEY
    uid = db.signup("scoped@example.com")
    track(db, "trial_started", uid)
    hook = start_listener(workers)
    w = hook.worker
    w.wait_log(r"sending stopped: the API key lacks the scope for events", T)
    row = [r for r in event_rows(db)][0]
    assert row["status"] == "pending" and row["attempts"] == 0, row
    assert fake.events_json() == []
    _, text = hook.get("/metrics")
    assert metric(text, "sendry_sync_sending_stopped") == 1, text
