"""End-to-end tests of the relay's layout: two database connections, so that neither the
webhooks and the reconciliation nor the claims and completions wait behind the other,
and health that the relay answers (including "wedged").

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_relay.py
"""

import http.client
import json
import re
import threading
import time

import psycopg
import pytest

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


# --- no head-of-line waits at the default --rate -------------------------------------------

def metric(hook, name):
    """The value of one unlabelled metric from GET /metrics."""
    status, text = hook.get("/metrics")
    assert status == 200, text
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def post_raw(hook, body):
    """POST /webhooks/sendry signed; returns (status, Retry-After header, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", hook.port, timeout=T)
    try:
        conn.request("POST", "/webhooks/sendry", body=body.encode(),
                     headers={"Content-Type": "application/json", "X-Sendry-Signature": sig_hex(body)})
        resp = conn.getresponse()
        return resp.status, resp.getheader("Retry-After"), resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def test_webhooks_past_the_queue_bound_get_503_with_retry_after(ldb, fake, workers):
    """While the database does not answer (the inbox locked), --webhook-queue webhooks wait
    for it; the next ones are answered 503 with Retry-After at once (Sendry redelivers),
    holding nothing, and /metrics counts them. The waiting ones are stored once the lock
    is gone."""
    hook = start_listener(workers, "--webhook-queue", "4")
    assert metric(hook, "sendry_sync_webhook_queue_limit") == 4
    blocker = psycopg.connect(ldb.cluster.dsn_for("postgres"))
    waiting = []
    try:
        blocker.execute("LOCK TABLE public.sendry_inbox IN ACCESS EXCLUSIVE MODE")
        for i in range(4):
            t = threading.Thread(target=lambda i=i: waiting.append(post_raw(hook, contact_event(f"q{i}@example.com"))))
            t.start()
        wait_until(lambda: metric(hook, "sendry_sync_webhook_queue_depth") == 4, T, "four webhooks waiting")
        started = time.monotonic()
        status, retry_after, text = post_raw(hook, contact_event("late@example.com"))
        assert time.monotonic() - started < 1, "answered at once"
        assert status == 503 and retry_after == "5", (status, retry_after, text)
        assert "too many webhooks" in json.loads(text)["error"], text
        assert metric(hook, "sendry_sync_webhook_queue_rejections_total") == 1
        assert not waiting, "the first four wait for the database"
    finally:
        blocker.rollback()
        blocker.close()
    wait_until(lambda: len(waiting) == 4, T, "the waiting webhooks answered")
    assert all(s == 200 for s, _, _ in waiting), waiting
    assert metric(hook, "sendry_sync_webhook_queue_depth") == 0
    assert ldb.scalar("SELECT count(*) FROM public.sendry_inbox") == 4


@pytest.mark.parametrize("rate", ["9", "0"])
def test_signups_during_webhooks_and_a_long_reconciliation_arrive_within_a_second(ldb, fake, workers,
                                                                                  rate):
    """The same as above at the default --rate (9 a second, shared through the database)
    and unlimited, with 5,000 webhooks arriving meanwhile: the key's budget is asked on the relay's
    connection, so neither the webhooks nor the reconciliation's pages (both on the aux
    connection, the first pages slow to store) hold a sign-up back. Webhooks past the
    queue's bound are answered 503 and counted; the rest are stored."""
    n = 20_000
    for i in range(n):
        fake.add_unsubscribe(f"gone{i:05d}@example.org")
    ldb.query(SLOW_INBOX)
    stop = threading.Event()
    answers = []

    def storm(k):
        for i in range(k, 5000, 8):
            if stop.is_set():
                return
            answers.append(post_raw(hook, contact_event(f"storm{i:04d}@example.com"))[0])

    try:
        hook = start_listener(workers, "--reconcile-interval", "3600", "--rate", rate)   # 9: the default
        assert f"rate {rate}/s" in hook.worker.log()
        wait_until(lambda: len(fake.requests_matching("GET", UNSUBSCRIBES)) >= 2, T,
                   "the reconciliation under way")
        threads = [threading.Thread(target=storm, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answers) >= 200, T, "the webhooks arriving")
        latencies = []
        for j in range(5):
            email = f"live{j}@example.com"
            ldb.signup(email)
            committed = time.monotonic()
            sent = wait_until(lambda: [r for r in import_requests(fake) if email in request_emails(r)], T,
                              "the sign-up at Sendry")
            latencies.append(sent[0]["time"] - committed)
        pages = len(fake.requests_matching("GET", UNSUBSCRIBES))
        assert pages < n // 100, f"the reconciliation had already ended ({pages} pages)"
        assert len(answers) < 5000, "the webhooks had already ended"
        assert max(latencies) < 1.0, f"sign-ups took {latencies} s to reach Sendry"
        print(f"--rate {rate}: sign-up to Sendry {', '.join(f'{x * 1000:.0f}' for x in latencies)} ms")
        for t in threads:
            t.join(120)
        assert len(answers) == 5000
        assert set(answers) <= {200, 503}, set(answers)
        rejected = metric(hook, "sendry_sync_webhook_queue_rejections_total")
        assert rejected == answers.count(503)
    finally:
        stop.set()
        ldb.query("DROP TRIGGER test_slow_inbox ON public.sendry_inbox;"
                  " DROP FUNCTION public.test_slow_inbox()")
