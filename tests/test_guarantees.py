"""Every promise under faults, clocks and bad input (issue 8), end to end: the real
binary, a real PostgreSQL, the fake Sendry. The numbers in the section headers are the
issue's points; the gate's clock (6) is unit-tested in tests/unit/unit_test.c.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_guarantees.py
"""

import json
import os
import re
import signal
import subprocess
import threading
import time

import psycopg
import pytest

from conftest import API_KEY, BIN, T, import_requests, start_daemon, wait_until, worker_env
from test_lifecycle import (Hook, contact_event, free_port, ldb, sig_hex,  # noqa: F401
                            start_listener)
from test_worker import holding

IMPORT = "/v1/contacts/import"
UNSUBSCRIBES = "/v1/unsubscribes"


def imports_of(fake, email):
    """The import requests that carried `email`, in the order the fake received them."""
    return [r for r in import_requests(fake)
            if any(c.get("email") == email for c in (r["json"] or {}).get("contacts", []))]


def first_names(fake, email):
    return [c.get("first_name") for r in imports_of(fake, email)
            for c in r["json"]["contacts"] if c.get("email") == email]


def rename(db, uid, first_name):
    db.query("UPDATE users SET raw_user_meta_data = %s, updated_at = now() WHERE id = %s",
             (json.dumps({"first_name": first_name}), uid), user="supabase_auth_admin")


def snapshot(db):
    """The outbox as it stands (no columns relative to now)."""
    return db.query("SELECT id, status, attempts, claim_id, locked_by, locked_until, sent_at,"
                    " next_attempt_at, last_error, updated_at FROM public.sendry_outbox ORDER BY id")


def outbox(db):
    return db.query("SELECT id, status, attempts, claim_id, locked_by, sent_at, last_error,"
                    " EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS due_in,"
                    " EXTRACT(EPOCH FROM locked_until - now())::float8 AS lease_left"
                    " FROM public.sendry_outbox ORDER BY id")


# --- 1. an outcome belongs to the claim that produced it -------------------------------

def test_a_live_takeover_overwrites_no_outcome_and_keeps_the_order(ldb, fake, workers):
    """Worker A is SIGSTOPped while its request is at Sendry, past its lease; worker B
    takes the row, delivers it and a later change; A is SIGCONTed. A records nothing
    over B's outcome, and the fake saw the changes in the order they were made."""
    a = start_daemon(workers, "--lease", "2", "--http-timeout", "0.5", "--reconcile-interval", "0")
    stopped = []

    def stop_a(record):
        if record["path"] == IMPORT and not stopped:
            os.kill(a.pid, signal.SIGSTOP)   # A has sent its request; it never reads the answer
            stopped.append(record)
    fake.on_request = stop_a
    try:
        uid = ldb.signup("taken@example.com", {"first_name": "V1"})
        wait_until(lambda: stopped, T, "A's request reached the fake")
        fake.on_request = None
        b = start_daemon(workers, "--lease", "2", "--http-timeout", "0.5", "--reconcile-interval", "0")
        wait_until(lambda: ldb.counts() == {"sent": 1}, T, "B took the row over and sent it")
        rename(ldb, uid, "V2")
        wait_until(lambda: ldb.counts() == {"sent": 2}, T, "B sent the later change")
        before = snapshot(ldb)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    a.wait_log(r"outcomes not recorded: their rows were claimed again after their lease ran out", T)
    assert snapshot(ldb) == before, "A's late outcome was written over B's"
    assert first_names(fake, "taken@example.com") == ["V1", "V1", "V2"], \
        "A's write, B's write of the same change (at least once), then the later change"
    assert fake.contacts["taken@example.com"]["first_name"] == "V2"
    assert b.poll() is None and a.poll() is None


# --- 2. rows held are kept alive while held: queued, paused or in a request -----------

def test_rows_waiting_out_a_429_keep_their_lease(ldb, fake, workers):
    """A 429 with Retry-After: 4 holds rows in the queue twice as long as the 2 s lease:
    their lease is renewed all along, a second worker takes none of them, and each goes
    out once."""
    emails = ldb.signup_many(4, prefix="held")
    fake.fail_next(429, retry_after=4, path_prefix=IMPORT)
    a = start_daemon(workers, "--lease", "2", "--http-timeout", "0.5", "--batch-size", "1",
                     "--concurrency", "1", "--reconcile-interval", "0")
    a.wait_log(r"rate limited by Sendry \(429\): pausing all requests for 4\.0 s", T)
    b = start_daemon(workers, "--lease", "2", "--http-timeout", "0.5", "--reconcile-interval", "0")

    def leases_alive():
        rows = outbox(ldb)
        held = [r for r in rows if r["status"] == "processing"]
        return held and all(r["lease_left"] > 0 for r in held)
    holding(leases_alive, 3.0, "a held row's lease ran out during the pause")
    wait_until(lambda: ldb.all_sent(4), T, "all sent after the pause")
    for e in emails:
        ok = [r for r in imports_of(fake, e) if r["status"] == 200]
        assert len(ok) == 1, (e, len(ok))
    assert not any("claimed again" in ln for ln in a.lines() + b.lines())


def test_a_request_longer_than_the_lease_keeps_its_rows(ldb, fake, workers):
    """The lease no longer has to outlast the longest job (it used to be refused below 4 x
    --http-timeout): rows in a request are renewed every third of the lease like rows
    waiting in the queue. A request Sendry answers after 7 s, under a 3 s lease: a second
    worker takes nothing, and the contact goes out once."""
    a = start_daemon(workers, "--lease", "3", "--http-timeout", "20", "--reconcile-interval", "0")
    b = start_daemon(workers, "--lease", "3", "--http-timeout", "20", "--reconcile-interval", "0")
    fake.delay_next(7)   # the next request: the import
    ldb.signup("slow@example.com")
    arrived = wait_until(lambda: imports_of(fake, "slow@example.com"), T, "the request at Sendry")[0]["time"]
    wait_until(lambda: ldb.all_sent(1), T, "sent once Sendry answers")
    assert len(imports_of(fake, "slow@example.com")) == 1, "taken over and sent again"
    assert time.monotonic() - arrived > 6, "the request was not the delayed one"
    assert not any("claimed again" in ln for ln in a.lines() + b.lines())


# --- 3, 4. stopped: nothing queued goes; the rows are due again at once ----------------

def test_stopped_sends_no_queued_job_and_a_restart_delivers_at_once(ldb, fake, workers):
    ldb.signup_many(5, prefix="stop")
    fake.fail_next(401, path_prefix=IMPORT)
    w = start_daemon(workers, "--batch-size", "1", "--concurrency", "1", "--reconcile-interval", "0")
    w.wait_log(r"sending stopped: the API key", T)
    holding(lambda: len(import_requests(fake)) == 1, 2.0, "a queued job went out while stopped")
    rows = outbox(ldb)
    assert {r["status"] for r in rows} == {"pending"}, rows
    assert all(r["due_in"] <= 0 for r in rows), "a refused row must be due again at once"
    w.terminate()
    assert w.wait(T) == 0, w.log()

    again = start_daemon(workers, "--batch-size", "1", "--concurrency", "1", "--reconcile-interval", "0")
    ready = time.monotonic()
    wait_until(lambda: ldb.all_sent(5), 2.0, "delivery within 2 s of a restart with the right key")
    assert time.monotonic() - ready < 2.0
    again.terminate()


# --- 5. a claim the database lost --------------------------------------------------------

def test_a_claim_the_database_lost_is_called_that(ldb, fake, workers, cluster):
    """As after an immediate restart with synchronous_commit off: the row is back in its
    state from before the claim while the request is out. The warning says so (not
    "taken over by another worker"), and the row is sent again."""
    ldb.signup("lost@example.com")
    undone = []

    def undo_claim(record):
        if record["path"] == IMPORT and not undone:
            with psycopg.connect(cluster.dsn_for("postgres"), autocommit=True) as c:
                c.execute("UPDATE public.sendry_outbox SET status = 'pending', attempts = 0, claim_id = NULL,"
                          " locked_by = NULL, locked_until = NULL, next_attempt_at = created_at,"
                          " updated_at = created_at")
            undone.append(record)
    fake.on_request = undo_claim
    w = start_daemon(workers, "--reconcile-interval", "0")
    w.wait_log(r"outcomes not recorded: the database (no longer has|lost) the claim", T)
    fake.on_request = None
    wait_until(lambda: ldb.all_sent(1), T, "sent again")
    assert not any("another worker" in ln for ln in w.lines()), w.log()


SLOW_SENT = """
CREATE FUNCTION public.test_slow_sent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'processing' AND NEW.status = 'sent' AND NEW.email = 'slow@example.com' THEN
        PERFORM pg_sleep(1.5);   -- the relay's connection is busy recording this outcome
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_slow_sent BEFORE UPDATE ON public.sendry_outbox
    FOR EACH ROW EXECUTE FUNCTION public.test_slow_sent();
"""


def test_a_lost_claim_is_called_that_when_both_outcomes_go_in_one_statement(ldb, fake, workers, cluster):
    """A row whose claim the database lost is claimed again by the same worker, so both
    outcomes of one row can be written by one completion statement (both answers arrive
    while the previous completion is still being written). Only the second claim's is
    recorded: the first is still reported, not taken for recorded because its row id came
    back. The answers for lost@ are held until slow@'s completion is under way."""
    ldb.query(SLOW_SENT)
    release = threading.Event()
    seen = []

    def admin(sql, args=()):
        with psycopg.connect(cluster.dsn_for("postgres"), autocommit=True) as c:
            return c.execute(sql, args).fetchall()

    def release_once_slow_completion_sleeps():
        wait_until(lambda: admin("SELECT 1 FROM pg_stat_activity WHERE wait_event = 'PgSleep'"), T,
                   "slow@'s completion under way")
        release.set()

    def on_request(record):
        emails = [c.get("email") for c in (record["json"] or {}).get("contacts", [])]
        if record["path"] != IMPORT:
            return
        if "lost@example.com" in emails:
            seen.append(record)
            if len(seen) == 1:   # the claim's commit lost: the row back as before the claim
                admin("UPDATE public.sendry_outbox SET status = 'pending', attempts = 0, claim_id = NULL,"
                      " locked_by = NULL, locked_until = NULL, next_attempt_at = created_at,"
                      " updated_at = created_at WHERE email = 'lost@example.com'")
            release.wait(T)
        elif "slow@example.com" in emails:
            threading.Thread(target=release_once_slow_completion_sleeps, daemon=True).start()

    fake.on_request = on_request
    try:
        w = start_daemon(workers, "--reconcile-interval", "0")
        ldb.signup("lost@example.com")
        wait_until(lambda: len(seen) >= 2, T, "lost@ claimed again and sent a second time")
        ldb.signup("slow@example.com")
        w.wait_log(r"outcomes not recorded: the database (no longer has|lost) the claim", T)
        wait_until(lambda: ldb.all_sent(2), T, "both sent")
        assert not any("another worker" in ln for ln in w.lines()), w.log()
    finally:
        release.set()
        fake.on_request = None
        ldb.query("DROP TRIGGER test_slow_sent ON public.sendry_outbox; DROP FUNCTION public.test_slow_sent()")


# --- 7. Retry-After that is not a delay ----------------------------------------------------

ODD_RETRY_AFTER = ["nan", "inf", "86400", "-5", "0x10"]


def pauses(worker, prefix=""):
    return [float(m.group(1)) for m in
            worker.wait_log(prefix + r"rate limited by Sendry \(429\): pausing all requests for ([\d.]+) s", T)]


@pytest.mark.parametrize("value", ODD_RETRY_AFTER)
def test_an_odd_retry_after_on_delivery_backs_off(ldb, fake, workers, value):
    ldb.signup("odd@example.com")
    fake.fail_next(429, retry_after=value, path_prefix=IMPORT)
    w = start_daemon(workers, "--reconcile-interval", "0")
    assert pauses(w)[0] <= 0.2, "the backoff (here --backoff-cap 0.2), not the header"
    wait_until(lambda: ldb.all_sent(1), T, "sent after the backoff")


@pytest.mark.parametrize("value", ["nan", "inf", "86400"])
def test_an_odd_retry_after_on_reconciliation_pauses_no_delivery(ldb, fake, workers, value):
    fake.add_unsubscribe("someone@example.org")
    fake.fail_next(429, retry_after=value, path_prefix=UNSUBSCRIBES)
    w = start_daemon(workers, "--reconcile-interval", "1")
    assert pauses(w, r"reconcile: ")[0] <= 0.2
    ldb.signup("after429@example.com")
    wait_until(lambda: ldb.all_sent(1), T, "a sign-up after the reconciliation's 429")
    w.wait_log(r"reconcile: \d+ entries read", T)


# --- 8. a 404 is the audience only when Sendry says so; bodies in any shape -------------

def test_a_404_that_is_not_the_audience_blames_the_url(ldb, fake, workers):
    ldb.signup("path@example.com")
    fake.fail_next(404, code="not_found", message="Not Found", path_prefix=IMPORT)
    w = start_daemon(workers, "--reconcile-interval", "0")
    line = w.wait_log(r"sending stopped: Sendry answered 404 to a contact write, but GET "
                      r"/v1/audiences/\S+ finds the audience: the write's URL is wrong", T)[0]
    assert "SENDRY_API_URL" in line.string
    assert not any("the audience does not exist" in ln for ln in w.lines())
    assert outbox(ldb)[0]["status"] == "pending"
    # A rewritten URL may be put right by itself (a proxy's fault that passed): the first
    # probe comes within 5 s, not a minute, and the row goes with it.
    stopped = time.monotonic()
    wait_until(lambda: ldb.all_sent(1), T, "sent by the first probe")
    assert time.monotonic() - stopped < 6


def test_a_404_with_the_audience_gone_names_the_audience(ldb, fake, workers):
    ldb.signup("gone@example.com")
    fake.fail_next(404, code="not_found", message="Not Found", path_prefix=IMPORT)
    fake.on_request = lambda r: r["path"] == IMPORT and fake.remove_audience(fake.audience_id)
    w = start_daemon(workers, "--reconcile-interval", "0")
    w.wait_log(r"sending stopped: the audience does not exist \(404\): check SENDRY_AUDIENCE_ID", T)
    fake.on_request = None
    assert outbox(ldb)[0]["status"] == "pending"


BODIES = {
    "html": ("<html><head><title>502</title></head><body><h1>502 Bad Gateway</h1>"
             "<p>nginx</p></body></html>", "text/html", "502 Bad Gateway"),
    "problem+json": ('{"type":"about:blank","title":"Bad Gateway","status":502,'
                     '"detail":"upstream sendry-api is down"}', "application/problem+json",
                     "upstream sendry-api is down"),
}


@pytest.mark.parametrize("shape", list(BODIES))
def test_an_error_body_in_neither_of_sendrys_shapes_is_kept_as_text(ldb, fake, workers, shape):
    body, ctype, text = BODIES[shape]
    ldb.signup("proxy@example.com")
    fake.fail_next(502, raw_body=body + " " + "x" * 5000, content_type=ctype, path_prefix=IMPORT)
    w = workers("--once", "--backoff-base", "60", "--backoff-cap", "60")   # the retry is not due in this run
    assert w.wait(T) == 3, w.log()   # a row that waits for its retry
    row = ldb.query("SELECT last_error, last_http_status FROM public.sendry_outbox")[0]
    assert row["last_http_status"] == 502
    assert text in row["last_error"], row
    assert "<" not in row["last_error"] and len(row["last_error"]) < 1200, row


# --- 9. a 422 keeps Sendry's details -------------------------------------------------------------

def test_a_422_keeps_sendrys_details(ldb, fake, workers):
    ldb.signup("details@example.com")
    fake.fail_next(422, code="validation_error", message="Validation failed", path_prefix=IMPORT,
                   details={"field": "contacts[0].first_name", "reason": "must be at most 64 characters"})
    w = workers("--once", "--batch-size", "1")
    assert w.wait(T) == 1, w.log()   # a row failed for good
    row = ldb.query("SELECT status, last_error FROM public.sendry_outbox")[0]
    assert row["status"] == "failed"
    assert "contacts[0].first_name" in row["last_error"], row
    assert "must be at most 64 characters" in row["last_error"], row


# --- 10. a cursor seen before ends the list --------------------------------------------------

def test_reconciliation_stops_on_a_cursor_it_has_seen(ldb, fake, workers):
    for i in range(3):
        fake.add_unsubscribe(f"loop{i}@example.org")
    fake.stuck_cursor = "cur_forever"
    w = start_daemon(workers, "--reconcile-interval", "3600")
    w.wait_log(r"reconcile: GET /v1/unsubscribes answered a next_cursor it had already given "
               r"in this run; stopping this list", T)
    w.wait_log(r"reconcile: \d+ entries read", T)
    assert len(fake.requests_matching("GET", UNSUBSCRIBES)) <= 3


# --- 11. a DATABASE_URL that can never work -------------------------------------------------

@pytest.fixture
def password_role(cluster):
    """A role that logs in with a password over the Unix socket (scram-sha-256)."""
    cluster.query("DROP ROLE IF EXISTS sendry_pw; CREATE ROLE sendry_pw LOGIN PASSWORD 'right-password'",
                  user=cluster.SUPERUSER)
    hba = os.path.join(cluster.datadir, "pg_hba.conf")
    with open(hba) as f:
        original = f.read()
    with open(hba, "w") as f:
        f.write("local all sendry_pw scram-sha-256\n" + original)
    cluster.query("SELECT pg_reload_conf()", user=cluster.SUPERUSER)
    yield "sendry_pw"
    with open(hba, "w") as f:
        f.write(original)
    cluster.query("SELECT pg_reload_conf()", user=cluster.SUPERUSER)


def bad_urls(cluster):
    return {
        "not-a-url": ("not a database url", r"DATABASE_URL: not a connection string"),
        "wrong-password": (cluster.dsn_for("sendry_pw") + " password=wrong-password",
                           r"DATABASE_URL: .*password authentication failed"),
        "missing-role": (cluster.dsn_for("no_such_role"), r"DATABASE_URL: .*no_such_role.* does not exist"),
        "missing-database": (cluster.dsn_for("postgres", "no_such_db"),
                             r"DATABASE_URL: .*no_such_db.* does not exist"),
        "unresolvable-host": ("postgresql://postgres@no-such-host.invalid/postgres",
                              r"DATABASE_URL: .*could not translate host name"),
    }


@pytest.mark.parametrize("case", ["not-a-url", "wrong-password", "missing-role", "missing-database",
                                  "unresolvable-host"])
def test_a_database_url_that_cannot_work_exits_2_at_once(cluster, fake, workers, password_role, case):
    url, pattern = bad_urls(cluster)[case]
    w = workers(env={"DATABASE_URL": url})
    started = time.monotonic()
    assert w.wait(5) == 2, w.log()
    assert time.monotonic() - started < 5
    lines = [ln for ln in w.lines() if ln.strip()]
    errors = [ln for ln in lines if re.search(r"\berror\b", ln) or ln.startswith("sendry-sync:")]
    assert len(errors) == 1 and re.search(pattern, errors[0]), w.log()
    assert "wrong-password" not in w.log() and "right-password" not in w.log()


def test_a_server_that_is_down_is_retried_with_a_line_as_the_delay_grows(fake, workers, tmp_path):
    url = f"host={tmp_path} port=5999 user=postgres dbname=postgres"   # no server there
    w = workers(env={"DATABASE_URL": url})
    lines = w.wait_log(r"db: .* reconnecting in ([\d.]+) s", T, count=3)
    assert w.poll() is None, "a server that is down is not bad configuration"
    w.terminate()


def test_workers_do_not_reconnect_in_lockstep(fake, workers, tmp_path):
    """Jitter is seeded per process: two workers waiting for the same server back off by
    different delays."""
    url = f"host={tmp_path} port=5999 user=postgres dbname=postgres"
    ws = [workers(env={"DATABASE_URL": url}) for _ in range(2)]
    delays = [tuple(m.group(1) for m in w.wait_log(r"reconnecting in ([\d.]+) s", T, count=5)[:5])
              for w in ws]
    assert delays[0] != delays[1], delays


# --- 13. nothing lost silently: a trigger's error is seen -------------------------------------

def test_an_enqueue_error_shows_in_health_metrics_and_the_log_and_is_repaired(ldb, fake, workers):
    ldb.query("DELETE FROM public.sendry_enqueue_errors")
    ldb.query("ALTER TABLE public.sendry_outbox ADD CONSTRAINT test_reject CHECK (false) NOT VALID")
    try:
        ldb.signup("unqueued@example.com")
    finally:
        ldb.query("ALTER TABLE public.sendry_outbox DROP CONSTRAINT test_reject")
    assert ldb.counts() == {}, "the sign-up succeeded and enqueued nothing"
    hook = start_listener(workers)
    w = hook.worker
    w.wait_log(r"1 writes to auth.users in the last hour enqueued nothing", T)
    status, text = hook.get("/healthz")
    assert status == 200 and json.loads(text)["status"] == "degraded", text
    assert "sendry_enqueue_errors" in json.loads(text)["reason"]
    _, metrics = hook.get("/metrics")
    assert "sendry_sync_enqueue_errors_last_hour 1" in metrics

    # The README's repair for just those users; then /healthz is no longer degraded (it was
    # for an hour, whatever the repair).
    ldb.query("SELECT * FROM sendry_enqueue_contacts(ARRAY(SELECT DISTINCT x.id FROM"
              " sendry_enqueue_errors e, unnest(e.user_ids) AS x (id)), 'bulk')")
    wait_until(lambda: ldb.all_sent(1), T, "the repaired user delivered")
    assert "unqueued@example.com" in fake.contacts
    wait_until(lambda: json.loads(hook.get("/healthz")[1])["status"] == "ok", T, "healthy once repaired")
    _, metrics = hook.get("/metrics")
    assert "sendry_sync_enqueue_errors_last_hour 0" in metrics


def test_a_complete_repair_pass_clears_degraded(ldb, fake, workers, cluster):
    """The repair pass as a command (reconcile-contacts) repairs every trigger error before
    it started: /healthz stops saying degraded."""
    ldb.query("DELETE FROM public.sendry_enqueue_errors")
    ldb.query("DELETE FROM public.sendry_sync_state WHERE key LIKE 'contacts_%'")
    ldb.query("ALTER TABLE public.sendry_outbox ADD CONSTRAINT test_reject CHECK (false) NOT VALID")
    try:
        ldb.signup("unqueued2@example.com")
    finally:
        ldb.query("ALTER TABLE public.sendry_outbox DROP CONSTRAINT test_reject")
    hook = start_listener(workers)
    wait_until(lambda: json.loads(hook.get("/healthz")[1])["status"] == "degraded", T, "degraded")
    r = subprocess.run([BIN, "reconcile-contacts"], env=worker_env(cluster, fake), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=T)
    assert r.returncode == 0, r.stderr
    wait_until(lambda: json.loads(hook.get("/healthz")[1])["status"] == "ok", T, "healthy after the repair pass")
    wait_until(lambda: "unqueued2@example.com" in fake.contacts, T, "the repaired user delivered")
    ldb.query("DELETE FROM public.sendry_enqueue_errors")


# --- 14. inbox events an error left 'received' ------------------------------------------------------

FAIL_APPLY = """
CREATE TABLE IF NOT EXISTS public.test_apply_fails (on_ boolean);
CREATE OR REPLACE FUNCTION public.test_fail_apply() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.test_apply_fails) THEN
        RAISE EXCEPTION 'test: applying fails now';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_fail_apply BEFORE UPDATE OF raw_app_meta_data ON auth.users
    FOR EACH ROW EXECUTE FUNCTION public.test_fail_apply();
INSERT INTO public.test_apply_fails VALUES (true);
"""


@pytest.fixture
def failing_apply(ldb):
    ldb.query(FAIL_APPLY, user="supabase_admin")
    yield ldb
    ldb.query("DROP TRIGGER IF EXISTS test_fail_apply ON auth.users;"
              " DROP FUNCTION IF EXISTS public.test_fail_apply(); DROP TABLE IF EXISTS public.test_apply_fails",
              user="supabase_admin")


def inbox_status(db, event_id):
    rows = db.query("SELECT status FROM public.sendry_inbox WHERE event_id = %s", (event_id,))
    return rows[0]["status"] if rows else None


def metric(text, name):
    for ln in text.splitlines():
        if ln.startswith(name + " "):
            return float(ln.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics")


def test_inbox_events_left_received_are_applied_again(failing_apply, fake, workers):
    db = failing_apply
    db.signup("later@example.com")
    db.signup("again@example.com")
    hook = start_listener(workers)
    wait_until(lambda: db.all_sent(2), T, "both sent")
    timer_evt = contact_event("later@example.com", event_id="evt_timer")
    redeliver_evt = contact_event("again@example.com", event_id="evt_redeliver")
    for evt in (timer_evt, redeliver_evt):
        hook.post(evt, {"X-Sendry-Signature": sig_hex(evt)})
    assert inbox_status(db, "evt_timer") == inbox_status(db, "evt_redeliver") == "received"

    db.query("DELETE FROM public.test_apply_fails", user="supabase_admin")   # the cause is fixed
    status, _ = hook.post(redeliver_evt, {"X-Sendry-Signature": sig_hex(redeliver_evt)})
    assert status == 200
    assert inbox_status(db, "evt_redeliver") == "applied"
    wait_until(lambda: inbox_status(db, "evt_timer") == "applied", T, "the retry timer applied it")
    hook.worker.wait_log(r"inbox: applied 1 stored events again", T)
    _, text = hook.get("/metrics")
    assert metric(text, 'sendry_sync_inbox_retries_total{result="applied"}') >= 1
    assert metric(text, 'sendry_sync_webhook_events_total{type="contact.updated",result="reapplied"}') == 1


# --- 15. SIGHUP -------------------------------------------------------------------------------------

def test_sighup_reads_the_api_key_file_again(ldb, fake, workers, tmp_path):
    key_file = tmp_path / "sendry.key"
    key_file.write_text(API_KEY + "\n")
    w = start_daemon(workers, "--reconcile-interval", "0",
                     env={"SENDRY_API_KEY": None, "SENDRY_API_KEY_FILE": str(key_file)})
    ldb.signup("before@example.com")
    wait_until(lambda: ldb.all_sent(1), T, "sent with the first key")

    fake.api_key = "sn_test_rotated_key_0001"       # the key is rotated at Sendry
    ldb.signup("during@example.com")
    w.wait_log(r"sending stopped: the API key", T)
    key_file.write_text("sn_test_rotated_key_0001\n")
    w.proc.send_signal(signal.SIGHUP)
    w.wait_log(r"SIGHUP: read the API key again from SENDRY_API_KEY_FILE", T)
    wait_until(lambda: ldb.all_sent(2), T, "sent with the new key, without waiting out the probe")
    assert w.poll() is None
    assert "sn_test_rotated_key_0001" not in w.log()


def test_sighup_with_the_key_in_the_environment_is_not_a_kill(ldb, fake, workers):
    w = start_daemon(workers, "--reconcile-interval", "0")
    w.proc.send_signal(signal.SIGHUP)
    w.wait_log(r"SIGHUP: the API key comes from SENDRY_API_KEY", T)
    ldb.signup("stillhere@example.com")
    wait_until(lambda: ldb.all_sent(1), T, "still sending after SIGHUP")
    assert w.poll() is None
