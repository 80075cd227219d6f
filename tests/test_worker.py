"""End-to-end tests of the real sendry-sync binary against a throwaway PostgreSQL and the
fake Sendry (fixtures in conftest.py).

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_worker.py
    SENDRY_SYNC_BIN=$PWD/sendry-sync-asan /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_worker.py
    SENDRY_SYNC_VALGRIND=1 ... -k once_valgrind

Waiting is always polling against a deadline; the few fixed windows (holding) check that
something does NOT happen for a while.
"""

import json
import math
import os
import re
import shutil
import signal
import threading
import time

import pytest

from conftest import (API_KEY, AUDIENCE, BIN, ROOT, T, import_requests, pgharness, start_daemon,
                      wait_until)
from test_lifecycle import SECRET, Hook, free_port, start_listener

# Timeouts generous enough for the ASan build on a small machine.
SECRET_KEY = "sn_test_Zq7SecretKeyNeverLogged4242"
BACKFILL_SQL = ("INSERT INTO public.sendry_outbox (user_id, email, payload)"
                " SELECT id, email, public.sendry_contact_payload(u) FROM auth.users u"
                " WHERE email IS NOT NULL")
REQUEUE_SQL = ("UPDATE public.sendry_outbox SET status='pending', next_attempt_at=now()"
               " WHERE status='failed'")
IMPORT = "/v1/contacts/import"


def holding(fn, duration, msg, interval=0.05):
    """Assert that fn() stays truthy for `duration` seconds (for things that must NOT happen)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert fn(), msg
        time.sleep(interval)
    assert fn(), msg


def emails_in(request):
    return [c["email"] for c in request["json"]["contacts"]]


def find_key(obj, key):
    """True if `key` is a key anywhere in a JSON value."""
    if isinstance(obj, dict):
        return key in obj or any(find_key(v, key) for v in obj.values())
    if isinstance(obj, list):
        return any(find_key(v, key) for v in obj)
    return False


# --- 1. the happy path -------------------------------------------------------------------

def test_once_happy_path(db, fake, workers):
    grace = db.signup("  Grace.Hopper@Example.COM ", {"first_name": "Grace", "last_name": "Hopper"})
    ada = db.signup("ada@example.com", {"full_name": "Ada Lovelace", "avatar_url": "https://x/a.png",
                                        "provider_id": "1234", "email_verified": True})
    db.signup(None, anonymous=True)
    assert len(db.rows()) == 2, "the anonymous user (no email) must not be enqueued"

    w = workers("--once")
    assert w.wait(T) == 0, w.log()

    imports = import_requests(fake)
    assert len(imports) == 1, [r["path"] for r in fake.requests]
    req = imports[0]
    assert req["status"] == 200
    assert req["headers"]["authorization"] == f"Bearer {API_KEY}"
    assert req["headers"]["user-agent"].startswith("sendry-sync/")
    body = req["json"]
    assert body["audience_id"] == AUDIENCE
    assert not find_key(body, "unsubscribed"), body
    expected = [
        {"email": "grace.hopper@example.com", "first_name": "Grace", "last_name": "Hopper",
         "metadata": {"supabase_user_id": grace, "signup_source": "supabase"}},
        {"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
         "metadata": {"supabase_user_id": ada, "signup_source": "supabase"}},
    ]
    assert sorted(body["contacts"], key=lambda c: c["email"]) == \
        sorted(expected, key=lambda c: c["email"])
    for c in body["contacts"]:
        assert all(isinstance(v, str) for v in c["metadata"].values()), c

    for row in db.rows():
        assert row["status"] == "sent", row
        assert row["sent_at"] is not None
        assert row["attempts"] == 1
        assert row["last_http_status"] == 200
        assert row["last_error"] is None
        assert row["locked_by"] is None
    assert AUDIENCE in fake.contacts["ada@example.com"]["audiences"]


# --- 2. daemon mode: NOTIFY wakes it ---------------------------------------------------------

def test_daemon_wakes_on_notify(db, fake, workers):
    # The safety poll is 30 s: anything delivered sooner was woken by NOTIFY (or the sweep
    # after connecting, which the first user may catch; the second one comes when idle).
    w = start_daemon(workers, "--poll-interval", "30")
    for i, email in enumerate(["first@example.com", "second@example.com"], 1):
        t0 = time.monotonic()
        db.signup(email, {"first_name": "N"})
        wait_until(lambda: db.counts() == {"sent": i}, 10, f"{email} sent")
        assert time.monotonic() - t0 < 10
        # A single sign-up goes out as a batch of one, without waiting to fill a batch.
        last = import_requests(fake)[-1]
        assert emails_in(last) == [email]
    assert len(import_requests(fake)) == 2
    assert time.monotonic() - w.started_at < 25, "the 30 s poll cannot have fired"
    assert "notifications are not reaching" not in w.log()
    assert w.poll() is None


# --- 3. every outcome class ------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["503", "drop", "408"])
def test_transient_failure_is_retried(db, fake, workers, fault):
    flags = []
    if fault == "drop":
        # libcurl itself resends a request once when a *reused* keep-alive connection dies
        # without an answer; with no audience check first, the import opens a fresh
        # connection and the drop reaches the worker as a network error.
        fake.drop_next(path_prefix=IMPORT)
        flags = ["--no-verify"]
    else:
        fake.fail_next(int(fault), path_prefix=IMPORT)
    w = workers(*flags)
    w.wait_log(r"db: connected", T)
    db.signup("retry@example.com")
    wait_until(lambda: db.counts() == {"sent": 1}, T, "row sent after a retry")
    row = db.row("retry@example.com")
    assert row["attempts"] == 2
    assert row["last_http_status"] == 200
    assert row["last_error"] is None
    statuses = [r["status"] for r in import_requests(fake)]
    assert statuses == [None if fault == "drop" else int(fault), 200]


class Trickle:
    """Sign-ups one by one every `every` seconds from a thread, until stopped: requests
    that go through while one row fails on its own."""

    def __init__(self, db, prefix, every=0.03):
        self.db, self.prefix, self.every = db, prefix, every
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        i = 0
        while not self.stop_flag.wait(self.every):
            i += 1
            self.db.signup(f"{self.prefix}{i:05d}@example.com")

    def stop(self):
        self.stop_flag.set()
        self.thread.join(10)


def test_max_attempts_marks_failed(db, fake, workers):
    """A row's own transient failures (the others go through meanwhile) fail it after
    --max-attempts attempts once --retry-for has passed since it was enqueued."""
    fake.fail_emails(r"doomed@example\.com", 500)
    start_daemon(workers, "--max-attempts", "3", "--retry-for", "0", "--batch-size", "1")
    trickle = Trickle(db, "fine")
    try:
        db.signup("doomed@example.com")
        wait_until(lambda: db.row("doomed@example.com")["status"] == "failed", T, "row failed")
    finally:
        trickle.stop()
    row = db.row("doomed@example.com")
    assert row["attempts"] == 3
    assert row["last_http_status"] == 500
    assert "500" in row["last_error"]
    assert row["sent_at"] is None
    doomed = lambda: [r for r in import_requests(fake) if "doomed@" in json.dumps(r["json"])]  # noqa: E731
    holding(lambda: len(doomed()) == 3, 0.6, "no request after the last attempt")


def test_a_row_retries_for_retry_for_before_it_fails(db, fake, workers):
    """--max-attempts alone does not fail a row: its own transient failures go on until
    --retry-for has passed since it was enqueued (72 h by default)."""
    fake.fail_emails(r"patient@example\.com", 500)
    start_daemon(workers, "--max-attempts", "2", "--retry-for", "4", "--batch-size", "1")
    trickle = Trickle(db, "fine")
    try:
        db.signup("patient@example.com")
        t0 = time.monotonic()
        wait_until(lambda: db.row("patient@example.com")["attempts"] >= 3, T,
                   "more attempts than --max-attempts")
        assert db.row("patient@example.com")["status"] != "failed" and time.monotonic() - t0 < 4
        wait_until(lambda: db.row("patient@example.com")["status"] == "failed", T,
                   "failed once --retry-for has passed")
        assert time.monotonic() - t0 > 3.9
    finally:
        trickle.stop()
    assert not [r for r in db.rows() if r["status"] == "failed" and r["email"] != "patient@example.com"]


@pytest.mark.parametrize("where", ["header", "body"])
def test_429_pauses_all_requests(db, fake, workers, where):
    if where == "header":
        fake.fail_next(429, retry_after=1, path_prefix=IMPORT)
    else:
        fake.fail_next(429, retry_after_body=1, path_prefix=IMPORT)
    w = start_daemon(workers)
    db.signup("first@example.com")
    w.wait_log(r"rate limited by Sendry \(429\): pausing all requests for 1\.0 s", T)
    # A second row, due at once, during the pause: it must wait too.
    db.signup("second@example.com")
    wait_until(lambda: db.counts() == {"sent": 2}, T, "both rows sent")
    limited = [r for r in fake.requests if r["status"] == 429]
    assert len(limited) == 1
    after = [r for r in fake.requests if r["time"] > limited[0]["time"]]
    assert after, "nothing sent after the 429"
    gap = min(r["time"] for r in after) - limited[0]["time"]
    assert gap >= 0.9, f"a request came {gap:.3f} s after the 429 (Retry-After: 1)"
    for email in ("first@example.com", "second@example.com"):
        row = db.row(email)
        assert row["attempts"] == 1, "a 429 must not count as an attempt"
        assert row["last_http_status"] == 200


def test_422_single_row_fails_at_once(db, fake, workers):
    fake.reject_emails(r"^bad@example\.com$")
    start_daemon(workers)
    db.signup("bad@example.com")
    wait_until(lambda: db.counts() == {"failed": 1}, T, "row failed")
    row = db.row("bad@example.com")
    assert row["attempts"] == 1
    assert row["last_http_status"] == 422
    assert "validation_error" in row["last_error"]
    assert "was rejected" in row["last_error"], row["last_error"]
    assert len(import_requests(fake)) == 1


def test_422_flat_error_shape_message_is_stored(db, fake, workers):
    fake.fail_next(422, shape="flat", message="Flat shape: address not allowed here",
                   path_prefix=IMPORT)
    start_daemon(workers)
    db.signup("flat@example.com")
    wait_until(lambda: db.counts() == {"failed": 1}, T, "row failed")
    row = db.row("flat@example.com")
    assert row["last_http_status"] == 422
    assert "Flat shape: address not allowed here" in row["last_error"]
    assert "validation_error" in row["last_error"]


@pytest.mark.parametrize("status", [400, 409])
def test_permanent_4xx_fails_at_once(db, fake, workers, status):
    fake.fail_next(status, path_prefix=IMPORT)
    start_daemon(workers)
    db.signup("perm@example.com")
    wait_until(lambda: db.counts() == {"failed": 1}, T, "row failed")
    row = db.row("perm@example.com")
    assert row["attempts"] == 1
    assert row["last_http_status"] == status
    assert str(status) in row["last_error"]
    assert len(import_requests(fake)) == 1


@pytest.mark.parametrize("status,hint", [(401, r"API key"), (402, r"payment"),
                                         (403, r"full_access")])
def test_stop_classes_keep_rows_pending(db, fake, workers, status, hint):
    fake.fail_next(status, path_prefix=IMPORT)
    w = start_daemon(workers)
    db.signup("first@example.com")
    w.wait_log(rf"\berror\s+sending stopped: .*{hint}", T)
    wait_until(lambda: db.row("first@example.com")["status"] == "pending", T, "row back to pending")
    row = db.row("first@example.com")
    assert row["attempts"] == 0, "a stop must not count as an attempt"
    assert row["sent_at"] is None
    # Due again at once (a worker restarted with the right key sends it right away);
    # this worker's own probe timer paces its retries.
    assert row["due_in"] <= 1, "the row must be due again at once"
    assert row["last_http_status"] == status

    # Stopped: a new due row (NOTIFY and polls every 0.2 s) must not be sent.
    n = len(fake.requests)
    db.signup("second@example.com")
    holding(lambda: len(fake.requests) == n, 1.5, "a request was sent while stopped")
    second = db.row("second@example.com")
    assert second["status"] == "pending" and second["attempts"] == 0, second
    assert w.poll() is None


def test_once_exits_1_on_401_mid_run(db, fake, workers):
    fake.fail_next(401, path_prefix=IMPORT)
    db.signup("once401@example.com")
    w = workers("--once")
    assert w.wait(T) == 1, w.log()
    assert re.search(r"\berror\s+sending stopped", w.log()), w.log()
    row = db.row("once401@example.com")
    assert row["status"] == "pending" and row["attempts"] == 0, row


def test_retry_runs_after_its_backoff_not_the_poll(db, fake, workers):
    # Backoff is under 2 s; the safety poll is 30 s. DESIGN: the worker also wakes "on a
    # timer set to the earliest next_attempt_at". (Not a shorter backoff: a jittered delay
    # under 1 ms is written as next_attempt_at = now(), whose UPDATE sends a NOTIFY.)
    fake.fail_next(503, path_prefix=IMPORT)
    start_daemon(workers, "--poll-interval", "30", "--backoff-base", "2", "--backoff-cap", "2")
    db.signup("backoff@example.com")
    wait_until(lambda: import_requests(fake), T, "the first attempt")
    wait_until(lambda: db.counts() == {"sent": 1}, 8, "the retry after its 0-2 s backoff")
    assert db.row("backoff@example.com")["attempts"] == 2


def test_long_non_ascii_error_message_is_recorded(db, fake, workers):
    fake.fail_next(422, message="Adresse refusée: " + "é" * 400, path_prefix=IMPORT)
    w = start_daemon(workers)
    db.signup("accent@example.com")

    def recorded(email, status):
        if re.search(r"db: recording \d+ outcomes failed", w.log()):
            raise AssertionError("the worker could not record outcomes:\n" + w.log()[-2000:])
        return db.row(email)["status"] == status

    wait_until(lambda: recorded("accent@example.com", "failed"), T, "the 422 recorded")
    row = db.row("accent@example.com")
    assert row["last_http_status"] == 422
    assert row["last_error"].startswith("HTTP 422 validation_error: Adresse refusée: éé")
    # ... and the worker still records what comes next.
    db.signup("next@example.com")
    wait_until(lambda: recorded("next@example.com", "sent"), T, "the next row recorded")


def test_single_mode(db, fake, workers):
    fake.reject_emails(r"^single2@")
    uids = [db.signup(f"single{i}@example.com", {"first_name": f"S{i}"}) for i in (1, 2, 3)]
    w = workers("--once", "--mode", "single")
    assert w.wait(T) == 1, w.log()  # one row failed
    creates = fake.requests_matching("POST", "/v1/contacts")
    assert sorted(r["path"] for r in creates) == ["/v1/contacts"] * 3
    for r in creates:
        body = r["json"]
        assert body["audience_id"] == AUDIENCE and "unsubscribed" not in body
        assert body["metadata"]["supabase_user_id"] in uids
    assert db.counts() == {"sent": 2, "failed": 1}
    assert db.row("single2@example.com")["last_http_status"] == 422


# --- 4. the 422 split -----------------------------------------------------------------------

def test_422_split_isolates_the_bad_row(db, fake, workers):
    emails = db.signup_many(1000)
    bad = emails[499]
    fake.reject_emails("^" + re.escape(bad) + "$")
    w = workers("--once")
    assert w.wait(T) == 1, w.log()  # 1: a row failed
    assert db.counts() == {"sent": 999, "failed": 1}
    row = db.row(bad)
    assert row["status"] == "failed" and row["last_http_status"] == 422
    assert "validation_error" in row["last_error"]
    n = len(import_requests(fake))
    assert n <= 1 + 2 * math.ceil(math.log2(1000)), f"{n} import requests"
    assert set(fake.contacts) == set(emails) - {bad}


# --- 5. requeue ----------------------------------------------------------------------------

def test_requeue_wakes_the_daemon(db, fake, workers):
    fake.reject_emails(r"^requeue")
    w = start_daemon(workers, "--poll-interval", "30")
    emails = db.signup_many(3, prefix="requeue")
    wait_until(lambda: db.counts() == {"failed": 3}, T, "rows failed")
    fake.reject_emails(None)
    db.query(REQUEUE_SQL)
    wait_until(lambda: db.counts() == {"sent": 3}, 10, "requeued rows sent")
    assert time.monotonic() - w.started_at < 25, "the 30 s poll cannot have fired"
    assert set(fake.contacts) == set(emails)


# --- 6. backfill ----------------------------------------------------------------------------

def test_backfill_5000(db, fake, workers):
    emails = db.signup_many(5000)
    db.query("TRUNCATE public.sendry_outbox RESTART IDENTITY")
    db.query(BACKFILL_SQL)
    assert db.counts() == {"pending": 5000}
    w = workers("--once")
    assert w.wait(60) == 0, w.log()
    assert db.counts() == {"sent": 5000}
    imports = import_requests(fake)
    assert len(imports) <= 10
    seen = [e for r in imports for e in emails_in(r)]
    assert sorted(seen) == sorted(emails), "each contact exactly once"


# --- 7. kill -9 mid-batch ----------------------------------------------------------------------

def test_kill9_mid_batch_then_restart(db, fake, workers):
    w1 = start_daemon(workers, "--lease", "2", "--http-timeout", "0.5", "--batch-size", "100",
                      "--concurrency", "2")
    fake.delay_all = 0.4
    emails = db.signup_many(600)
    wait_until(lambda: db.counts().get("processing", 0) > 0 and import_requests(fake),
               T, "rows in flight")
    w1.kill9()
    fake.delay_all = 0
    # The new worker can only take the killed worker's rows once their lease is over.
    wait_until(lambda: db.scalar("SELECT count(*) FROM public.sendry_outbox"
                                 " WHERE status = 'processing' AND next_attempt_at > now()") == 0,
               T, "leases expired")
    w2 = workers("--once")
    assert w2.wait(T) == 0, w2.log()
    assert db.counts() == {"sent": 600}
    assert set(fake.contacts) == set(emails)


# --- 8. PostgreSQL restarted under the worker ------------------------------------------------------

def test_postgres_restart_reconnects(cluster, db, fake, workers):
    w = start_daemon(workers, "--poll-interval", "30")
    db.signup("before@example.com")
    wait_until(lambda: db.counts() == {"sent": 1}, T, "first row sent")
    cluster.restart()
    w.wait_log(r"db: connected \(relay connection", T, count=2)
    assert re.search(r"db: .*reconnecting in", w.log()), w.log()
    db.signup("after@example.com")
    wait_until(lambda: db.counts() == {"sent": 2}, T, "row sent after the restart")
    assert w.poll() is None


def test_postgres_restart_while_a_request_is_in_flight(cluster, db, fake, workers):
    """The outcome arrives while the connection is gone: it is kept and written after the
    reconnect (the rows are still ours: their lease has not run out)."""
    w = start_daemon(workers, "--poll-interval", "30")
    fake.delay_next(2.0)
    db.signup_many(5)
    wait_until(lambda: import_requests(fake), T, "request in flight")
    cluster.restart()
    wait_until(lambda: db.counts() == {"sent": 5}, T, "rows recorded as sent after the restart")
    assert all(r["attempts"] == 1 and r["last_http_status"] == 200 for r in db.rows())
    assert len(import_requests(fake)) == 1
    assert w.poll() is None


# --- 9. SIGTERM drains ---------------------------------------------------------------------

def test_sigterm_waits_for_the_request_in_flight(db, fake, workers):
    w = start_daemon(workers)
    fake.delay_next(1.5)
    db.signup_many(5)
    wait_until(lambda: import_requests(fake) and db.counts().get("processing") == 5,
               T, "request in flight")
    w.terminate()
    assert w.wait(10) == 0, w.log()
    assert re.search(r"stopping: no more claims; waiting up to \S+ s for 1 requests in flight",
                     w.log()), w.log()
    assert db.counts() == {"sent": 5}, "the request in flight must complete and be recorded"
    assert len(fake.contacts) == 5
    assert len(import_requests(fake)) == 1


def test_sigterm_when_idle_exits_at_once(db, fake, workers):
    w = start_daemon(workers)
    w.terminate()
    assert w.wait(10) == 0, w.log()
    assert "stopped: 0 sent" in w.log()


def test_sigterm_during_a_422_split_releases_the_halves(db, fake, workers):
    w = start_daemon(workers, "--drain-timeout", "2")
    fake.reject_emails(r"^user00002@")
    fake.delay_next(1.0)
    db.signup_many(4)
    wait_until(lambda: import_requests(fake) and db.counts().get("processing") == 4,
               T, "request in flight")
    t0 = time.monotonic()
    w.terminate()
    assert w.wait(15) == 0, w.log()
    elapsed = time.monotonic() - t0
    assert "processing" not in db.counts(), (db.counts(), w.log())
    assert elapsed < 3.5, f"took {elapsed:.1f} s to stop"


def test_sigterm_drain_timeout_releases_rows(db, fake, workers):
    w = start_daemon(workers, "--drain-timeout", "0.5")
    fake.delay_all = 5
    db.signup_many(5)
    wait_until(lambda: import_requests(fake) and db.counts().get("processing") == 5,
               T, "request in flight")
    t0 = time.monotonic()
    w.terminate()
    assert w.wait(10) == 0, w.log()
    assert time.monotonic() - t0 < 4.5, "it waited for the slow answer"
    rows = db.rows()
    assert len(rows) == 5
    for row in rows:
        assert row["status"] == "pending" and row["attempts"] == 0, row
        assert row["locked_by"] is None
        assert row["due_in"] <= 0.5, "released rows are due at once"


# --- 10. bad configuration ---------------------------------------------------------------------

CONFIG_CASES = {
    "no-database-url": ([], {"DATABASE_URL": None}, r"DATABASE_URL"),
    "no-api-key": ([], {"SENDRY_API_KEY": None}, r"SENDRY_API_KEY"),
    "no-audience": ([], {"SENDRY_AUDIENCE_ID": None}, r"SENDRY_AUDIENCE_ID"),
    "batch-size": (["--batch-size", "5000"], {}, r"--batch-size.*5000"),
    "mode": (["--mode", "foo"], {}, r"--mode.*foo"),
    "unknown-flag": (["--frobnicate"], {}, r"--frobnicate"),
    "key-file-missing": ([], {"SENDRY_API_KEY": None,
                              "SENDRY_API_KEY_FILE": "/nonexistent/sendry.key"},
                         r"SENDRY_API_KEY_FILE.*/nonexistent/sendry\.key"),
}


@pytest.mark.parametrize("case", list(CONFIG_CASES))
def test_bad_configuration_exits_2(fake, workers, case):
    flags, env, pattern = CONFIG_CASES[case]
    env = {"SENDRY_API_KEY": SECRET_KEY, **env}
    w = workers(*flags, env=env, fast=False)
    assert w.wait(T) == 2, w.log()
    lines = [line for line in w.lines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{w.log()}"
    assert re.search(pattern, lines[0]), lines[0]
    assert SECRET_KEY not in w.log()
    assert not fake.requests


def test_unknown_audience_exits_2(fake, workers):
    fake.api_key = SECRET_KEY
    w = workers("--once", env={"SENDRY_API_KEY": SECRET_KEY, "SENDRY_AUDIENCE_ID": "aud_nope"})
    assert w.wait(T) == 2, w.log()
    assert any("aud_nope" in line and "404" in line and re.search(r"\berror\b", line)
               for line in w.lines()), w.log()
    assert SECRET_KEY not in w.log()


def test_rejected_key_exits_2(db, fake, workers):
    db.signup("nokey@example.com")
    w = workers("--once", env={"SENDRY_API_KEY": SECRET_KEY})
    assert w.wait(T) == 2, w.log()
    assert any("401" in line and re.search(r"\berror\b", line) for line in w.lines()), w.log()
    assert SECRET_KEY not in w.log()
    assert not import_requests(fake)
    assert db.row("nokey@example.com")["status"] == "pending"


EVENTS_SCOPE_LINE = r"\berror\s+the API key lacks the scope for events"


def events_scope_gauge(hook):
    status, text = hook.get("/metrics")
    assert status == 200, text
    return re.search(r"^sendry_sync_events_scope_missing (\d)$", text, re.M).group(1)


def test_key_without_the_events_scope_is_found_at_start(db, fake, workers):
    """A key that writes contacts but may not send events: the start-up probe (GET
    /v1/events?limit=1) logs one error line with the fix, the gauge says so, and contacts
    keep syncing."""
    fake.api_key, fake.no_events_key = "sn_test_another_key", API_KEY
    hook = start_listener(workers)
    w = hook.worker
    w.wait_log(EVENTS_SCOPE_LINE, T)
    line = next(x for x in w.lines() if re.search(EVENTS_SCOPE_LINE, x))
    assert "full_access" in line and "SENDRY_API_KEY" in line and "contacts keep syncing" in line, line
    assert fake.requests_matching("GET", "/v1/events"), "the probe is a GET"
    assert events_scope_gauge(hook) == "1"
    db.signup("scope@example.com")
    wait_until(lambda: db.all_sent(1), T, "the contact sent all the same")
    assert w.poll() is None
    assert len([x for x in w.lines() if re.search(r"scope for events", x)]) == 1, w.log()


def test_key_with_the_events_scope_logs_nothing(db, fake, workers):
    hook = start_listener(workers, "--verbose")
    hook.worker.wait_log(r"debug\s+the API key may send events \(GET /v1/events: HTTP 200\)", T)
    assert events_scope_gauge(hook) == "0"
    assert "scope for events" not in hook.worker.log()


def test_the_events_scope_is_asked_again_after_the_key_changes(db, fake, workers, tmp_path):
    """SIGHUP with a new key in SENDRY_API_KEY_FILE: the probe runs again, and the gauge
    follows the new key."""
    fake.no_events_key = "sn_test_no_events_0001"
    key_file = tmp_path / "sendry.key"
    key_file.write_text("sn_test_no_events_0001\n")
    port = free_port()
    w = start_daemon(workers, "--listen", f"127.0.0.1:{port}", "--reconcile-interval", "0",
                     env={"SENDRY_API_KEY": None, "SENDRY_API_KEY_FILE": str(key_file),
                          "SENDRY_WEBHOOK_SECRET": SECRET})
    hook = Hook(w, port)
    w.wait_log(EVENTS_SCOPE_LINE, T)
    assert events_scope_gauge(hook) == "1"
    key_file.write_text(API_KEY + "\n")
    w.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: events_scope_gauge(hook) == "0", T, "the gauge after the new key's probe")
    assert len(fake.requests_matching("GET", "/v1/events")) == 2
    assert len([x for x in w.lines() if re.search(EVENTS_SCOPE_LINE, x)]) == 1


def test_an_event_refused_for_its_scope_says_so(db, fake, workers):
    """The first event due with a key that lacks the scope: sending stops, and the cause
    names the events scope (not the scope to write contacts)."""
    fake.api_key, fake.no_events_key = "sn_test_another_key", API_KEY
    db.query("UPDATE public.sendry_settings SET events = '{user.signed_up}'")
    try:
        w = start_daemon(workers)
        db.signup("scoped@example.com")
        w.wait_log(r"\berror\s+sending stopped: the API key lacks the scope for events: it needs "
                   r"full_access \(403\)", T)
        assert "scope to write contacts" not in w.log()
        wait_until(lambda: db.query("SELECT status FROM public.sendry_outbox WHERE op = 'event'")
                   == [{"status": "pending"}], T, "the event back to pending")
        assert fake.contacts and not fake.events
    finally:
        db.query("UPDATE public.sendry_settings SET events = '{}'")


# --- 11. two workers on one database -----------------------------------------------------------------

def test_two_workers_send_each_row_once(db, fake, workers):
    flags = ("--batch-size", "100", "--concurrency", "2")
    w1, w2 = workers(*flags), workers(*flags)
    w1.wait_ready(T)
    w2.wait_ready(T)
    fake.delay_all = 0.05
    emails = db.signup_many(3000)
    wait_until(lambda: db.counts() == {"sent": 3000}, 60, "3000 rows sent")
    seen = [e for r in import_requests(fake) for e in emails_in(r)]
    assert len(seen) == len(set(seen)) == 3000, "an email was sent twice"
    assert set(seen) == set(emails)
    assert w1.poll() is None and w2.poll() is None


# --- 12. emails masked in logs -------------------------------------------------------------------

def test_emails_masked_at_info_level(db, fake, workers):
    fake.fail_next(422, message="contacts[0].email: not deliverable", path_prefix=IMPORT)
    db.signup("ursula@example.com")
    w = workers("--once")
    assert w.wait(T) == 1, w.log()
    log = w.log()
    assert "u***@example.com" in log, log
    assert "ursula@example.com" not in log, log


def test_emails_in_full_with_verbose(db, fake, workers):
    fake.fail_next(422, message="contacts[0].email: not deliverable", path_prefix=IMPORT)
    db.signup("victor@example.com")
    w = workers("--once", "--verbose")
    assert w.wait(T) == 1, w.log()
    assert re.search(r"row \d+ \(victor@example\.com\)", w.log()), w.log()


def test_emails_masked_when_sendry_echoes_the_address(db, fake, workers):
    fake.reject_emails(r"^wendy@example\.com$")  # the fake's 422 message names the address
    db.signup_many(3, prefix="ok")
    db.signup("wendy@example.com")
    w = workers("--once")
    assert w.wait(T) == 1, w.log()
    assert db.row("wendy@example.com")["status"] == "failed"
    assert "wendy@example.com" not in w.log(), w.log()


# --- 13. JSON logs ---------------------------------------------------------------------------

def test_log_format_json(db, fake, workers):
    fake.fail_next(503, path_prefix=IMPORT)
    db.signup_many(3)
    w = workers("--once", "--log-format", "json", "--backoff-base", "60", "--backoff-cap", "60")
    assert w.wait(T) == 3, w.log()   # the rows wait for their retry, not due in this run
    lines = w.lines()
    assert len(lines) >= 3, lines
    levels = set()
    for line in lines:
        obj = json.loads(line)
        assert isinstance(obj, dict), line
        assert {"ts", "level", "msg"} <= set(obj), line
        assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", obj["ts"]), line
        assert obj["level"] in ("debug", "info", "warn", "error"), line
        levels.add(obj["level"])
    assert {"info", "warn"} <= levels


def test_migrate_log_format_json(cluster, workers):
    with pgharness.Cluster(supabase=False, port=cluster.port + 2) as plain:
        w = workers("migrate", "--log-format", "json", fast=False,
                    env={"DATABASE_URL": plain.dsn, "SENDRY_API_KEY": None,
                         "SENDRY_AUDIENCE_ID": None})
        assert w.wait(T) == 0, w.log()
        assert "no table auth.users" in w.log()  # the install's NOTICE on a plain PostgreSQL
        for line in w.lines():
            obj = json.loads(line)
            assert {"ts", "level", "msg"} <= set(obj), line


# --- 14. sendry-sync migrate ---------------------------------------------------------------------

def test_migrate_applies_the_embedded_sql(cluster, workers):
    with pgharness.Cluster(supabase=True, port=cluster.port + 1) as fresh:
        assert fresh.query("SELECT to_regclass('public.sendry_outbox') IS NULL") == [["t"]]
        for run in (1, 2):
            w = workers("migrate", env={"DATABASE_URL": fresh.dsn, "SENDRY_API_KEY": None,
                                        "SENDRY_AUDIENCE_ID": None}, fast=False)
            assert w.wait(T) == 0, f"run {run}:\n{w.log()}"
        assert fresh.query("SELECT to_regclass('public.sendry_outbox') IS NOT NULL,"
                           " count(*) FROM pg_trigger WHERE tgname = 'sendry_sync_users_insert'") \
            == [["t", "1"]]


# --- 15. no NOTIFY reaching the worker ---------------------------------------------------------------

def test_warns_when_no_notify_arrives(cluster, db, fake, workers):
    """A transaction-mode pooler delivers no notifications. Simulated by disabling the
    outbox's NOTIFY trigger: rows are then found by the poll only."""
    w = start_daemon(workers, "--poll-interval", "0.2")
    db.query("ALTER TABLE public.sendry_outbox DISABLE TRIGGER sendry_outbox_notify_insert")
    try:
        # The worker tells a fresh row from a backlog by its age: created > 1 s after connecting.
        holding(lambda: w.poll() is None, 1.2, "worker exited")
        db.signup("quiet@example.com")
        wait_until(lambda: db.counts() == {"sent": 1}, T, "row sent by polling")
        w.wait_log(r"\bwarn\s+found new due rows by polling but no NOTIFY arrived", T)
        db.signup("quiet2@example.com")
        wait_until(lambda: db.counts() == {"sent": 2}, T, "second row sent by polling")
        assert len(re.findall(r"no NOTIFY arrived", w.log())) == 1, "warn once"
    finally:
        db.query("ALTER TABLE public.sendry_outbox ENABLE TRIGGER sendry_outbox_notify_insert")


# --- valgrind -------------------------------------------------------------------------------

@pytest.mark.skipif(os.environ.get("SENDRY_SYNC_VALGRIND") != "1",
                    reason="set SENDRY_SYNC_VALGRIND=1 (make valgrind)")
def test_once_valgrind(db, fake, workers):
    if not shutil.which("valgrind"):
        pytest.skip("valgrind is not installed")
    binary = BIN
    if "asan" in os.path.basename(binary):
        binary = os.path.join(ROOT, "sendry-sync")  # valgrind and ASan do not mix
    db.signup("val@example.com", {"first_name": "Val", "last_name": "Grind"})
    db.signup_many(20)
    fake.fail_next(503, path_prefix=IMPORT)  # the first batch is retried later, the rest sent
    w = workers("--once", "--batch-size", "10", binary=binary,
                prefix=["valgrind", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect",
                        "--error-exitcode=99"])
    rc = w.wait(180)
    log = w.log()
    # 0 if the retried batch fell due and went out before the run ended, else 3 (it waits)
    assert rc == (0 if db.all_sent(21) else 3), log
    assert not re.search(r"definitely lost: [1-9]", log), log
    assert not re.search(r"indirectly lost: [1-9]", log), log
    assert "ERROR SUMMARY: 0 errors" in log, log
