"""End-to-end tests of the relay's layout: two database connections, so that neither the
webhooks and the reconciliation nor the claims and completions wait behind the other,
and health that the relay answers (including "wedged").

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_relay.py
"""

import json
import time

import psycopg

from conftest import T, import_requests, start_daemon, wait_until
from test_lifecycle import contact_event, ldb, request_emails, sig_hex, start_listener  # noqa: F401

UNSUBSCRIBES = "/v1/unsubscribes"


SLOW_INBOX = """
CREATE FUNCTION public.test_slow_inbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.payload -> 'data' ->> 'email' < 'gone00500' THEN
        PERFORM pg_sleep(0.02);   -- the first five pages take two seconds each to store
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER test_slow_inbox BEFORE INSERT ON public.sendry_inbox
    FOR EACH ROW EXECUTE FUNCTION public.test_slow_inbox();
"""


def test_a_signup_during_a_long_reconciliation_arrives_within_a_second(ldb, fake, workers):
    """20,000 unsubscribes wait at Sendry: the reconciliation pages them into the inbox on
    the aux connection, and spends the key's request budget as bulk work does, leaving the
    live share; a sign-up goes out on the relay's connection meanwhile. The first pages
    are made slow to store (a busy database), so that a sign-up queued behind one of them
    would wait two seconds. (With one connection, a sign-up made during a 5,000-entry
    reconciliation arrived 3.8 s late.)"""
    n = 20_000
    for i in range(n):
        fake.add_unsubscribe(f"gone{i:05d}@example.org")
    ldb.query(SLOW_INBOX)
    try:
        # The first run 2 s after start; 200 pages at 40 requests/s at most.
        w = start_daemon(workers, "--reconcile-interval", "3600", "--rate", "40")
        wait_until(lambda: len(fake.requests_matching("GET", UNSUBSCRIBES)) >= 2, T,
                   "the reconciliation under way")
        email = "live@example.com"
        ldb.signup(email)
        committed = time.monotonic()
        sent = wait_until(lambda: [r for r in import_requests(fake) if email in request_emails(r)], T,
                          "the sign-up at Sendry")
        latency = sent[0]["time"] - committed
        pages = len(fake.requests_matching("GET", UNSUBSCRIBES))
        assert pages < n // 100, f"the reconciliation had already ended ({pages} pages)"
        assert latency < 1.0, f"the sign-up took {latency:.2f} s to reach Sendry during the reconciliation"
        w.wait_log(rf"reconcile: {n} entries read", 300)
        assert ldb.scalar("SELECT count(*) FROM public.sendry_inbox") == n
    finally:
        ldb.query("DROP TRIGGER test_slow_inbox ON public.sendry_inbox;"
                  " DROP FUNCTION public.test_slow_inbox()")


def test_healthz_says_wedged_while_due_rows_get_no_claim(ldb, fake, workers):
    """A claim that never comes back (here: the outbox locked against it) leaves rows due:
    /healthz turns 503 with the reason, and webhooks, on the other connection, are still
    answered. Once the claim goes through, health comes back."""
    emails = ldb.signup_many(3, prefix="wedge")
    blocker = psycopg.connect(ldb.cluster.dsn_for("postgres"))   # a transaction held open
    try:
        # EXCLUSIVE blocks the claim's row locks and updates, not the backlog's SELECT.
        blocker.execute("LOCK TABLE public.sendry_outbox IN EXCLUSIVE MODE")
        hook = start_listener(workers, "--http-timeout", "1", "--poll-interval", "0.2")

        def wedged():
            status, text = hook.get("/healthz")
            return status == 503 and "wedged" in json.loads(text)["reason"] and text
        text = wait_until(wedged, T, "/healthz reporting the wedge")
        assert "3 rows are due" in json.loads(text)["reason"], text

        event = contact_event("nobody@example.com")
        status, text = hook.post(event, {"X-Sendry-Signature": sig_hex(event)})
        assert status == 200 and json.loads(text)["result"].startswith("ignored"), text
        assert not import_requests(fake)
    finally:
        blocker.rollback()
        blocker.close()
    wait_until(lambda: ldb.all_sent(len(emails)), T, "the rows sent once the lock is gone")
    wait_until(lambda: hook.get("/healthz")[0] == 200, T, "/healthz back to 200")
