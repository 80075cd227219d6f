"""Backfills and many workers at the provider's limit (live before bulk, the live share,
one request budget per key however many workers), with the real binary against a fake
Sendry that enforces a rate limit, and the backfill command.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_budget.py
"""

import os
import re
import signal
import subprocess

import pytest

from conftest import (API_KEY, AUDIENCE, BIN, T, import_requests, start_daemon, wait_until,
                      worker_env)
from fake_sendry import FakeSendry
from test_lifecycle import ldb, request_emails  # noqa: F401

BACKFILL = ("INSERT INTO public.sendry_outbox (user_id, email, payload)"
            " SELECT id, email, public.sendry_contact_payload(u) FROM auth.users u"
            " WHERE email IS NOT NULL")


def existing_users(db, n, prefix="old"):
    """n users that signed up before sendry-sync was installed: no outbox rows."""
    db.query("ALTER TABLE auth.users DISABLE TRIGGER USER", user="supabase_admin")
    try:
        return db.signup_many(n, prefix=prefix)
    finally:
        db.query("ALTER TABLE auth.users ENABLE TRIGGER USER", user="supabase_admin")


@pytest.fixture
def limited():
    """A fake Sendry allowing 20 requests per 10 s per key, like Sendry's 100 per 10 s."""
    f = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=(20, 10.0))
    f.start()
    yield f
    f.stop()


def rate_limited(fake):
    return [r for r in fake.requests if r.get("status") == 429]


# --- live before bulk ------------------------------------------------------------------

def test_a_live_row_is_claimed_before_the_bulk_backlog(ldb, fake, workers):
    existing_users(ldb, 3000)
    ldb.query(BACKFILL)
    assert ldb.scalar("SELECT count(*) FROM public.sendry_outbox WHERE class = 'bulk'") == 3000
    ldb.signup("live@example.com")
    w = workers("--once", "--batch-size", "100", "--concurrency", "1")
    assert w.wait(T) == 0, w.log()
    imports = import_requests(fake)
    assert "live@example.com" in request_emails(imports[0]), "the live row goes first"
    assert all(len(request_emails(r)) <= 100 for r in imports)
    assert ldb.all_sent(3001)


def test_a_requeue_keeps_the_row_class(ldb, fake, workers):
    existing_users(ldb, 2)
    ldb.query(BACKFILL)
    ldb.signup("live2@example.com")
    ldb.query("UPDATE public.sendry_outbox SET status = 'failed'")
    ldb.query("UPDATE public.sendry_outbox SET status = 'pending', next_attempt_at = now()"
              " WHERE status = 'failed'")
    classes = {r["email"]: r["class"] for r in ldb.query("SELECT email, class FROM public.sendry_outbox")}
    assert classes["live2@example.com"] == "live"
    assert sorted(c for e, c in classes.items() if e != "live2@example.com") == ["bulk", "bulk"]


def test_bulk_work_leaves_the_live_share_in_the_budget(ldb, limited, cluster, workers, tmp_path):
    """While only bulk rows go, the key's shared bucket never drops below the live share
    (here 0.8 of a request: the share of a burst of 1.8, at most the burst less one); a
    live row takes from it at once."""
    existing_users(ldb, 400)
    ldb.query(BACKFILL)
    env = worker_env(cluster, limited)
    w = workers("--rate", "1.8", "--batch-size", "20", fast=False, env={"SENDRY_API_URL": limited.url})
    w.wait_ready(T)
    lows = []

    def sample():
        v = ldb.scalar("SELECT min(tokens) FROM public.sendry_rate_budget")
        if v is not None:
            lows.append(v)
        return len(import_requests(limited)) >= 6

    wait_until(sample, T, "bulk imports", interval=0.05)
    assert min(lows) >= 0.8 - 1e-9, f"bulk work took the live share: {min(lows)}"
    ldb.signup("jumper@example.com")
    wait_until(lambda: any("jumper@example.com" in request_emails(r) for r in import_requests(limited)),
               T, "the live row sent")
    assert not rate_limited(limited), "no 429 at the limit"
    w.terminate()
    assert w.wait(T) == 0, w.log()
    del env


# --- one budget for the key ------------------------------------------------------------

@pytest.fixture
def fast_limited():
    """A fake Sendry allowing 30 requests per 3 s per key."""
    f = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=(30, 3.0))
    f.start()
    yield f
    f.stop()


@pytest.mark.parametrize("n_workers", [2, 3])
def test_workers_share_the_key_budget_without_429(ldb, fast_limited, workers, n_workers):
    """--rate 7 with a burst of 7 stays under 30 per 3 s; each worker on its own budget
    would send 7 a second, n of them 7n: together they stay at 7, and none is left out."""
    existing_users(ldb, 600)
    ldb.query(BACKFILL)
    flags = ("--rate", "7", "--batch-size", "10", "--poll-interval", "0.5")
    ws = [workers(*flags, fast=False, env={"SENDRY_API_URL": fast_limited.url}) for _ in range(n_workers)]
    wait_until(lambda: ldb.all_sent(600), 60, "the backfill sent")
    assert not rate_limited(fast_limited), f"{len(rate_limited(fast_limited))} answers were 429"
    for w in ws:
        w.terminate()
        assert w.wait(T) == 0, w.log()
    sent_by = ldb.query("SELECT count(DISTINCT claim_id) AS claims FROM public.sendry_outbox")
    assert sent_by[0]["claims"] >= 60 - 5


def test_kill9_of_the_busiest_worker_the_others_go_on(ldb, fake, workers):
    existing_users(ldb, 2000)
    ldb.query(BACKFILL)
    fake.delay_all = 0.2
    flags = ("--rate", "20", "--batch-size", "50", "--lease", "4", "--http-timeout", "1")
    ws = [workers(*flags) for _ in range(3)]
    wait_until(lambda: len(import_requests(fake)) >= 6, T, "all three sending")
    held = {r["locked_by"]: 0 for r in ldb.query("SELECT DISTINCT locked_by FROM public.sendry_outbox"
                                                 " WHERE locked_by IS NOT NULL")}
    busiest = max(ws, key=lambda w: ldb.scalar("SELECT count(*) FROM public.sendry_outbox"
                                              " WHERE locked_by LIKE %s", (f"%:{w.pid}:%",)))
    busiest.kill9()
    before = len(import_requests(fake))
    wait_until(lambda: len(import_requests(fake)) > before + 2, 5, "the others going on within 5 s")
    wait_until(lambda: ldb.all_sent(2000), 60, "every row sent, the killed worker's after its lease")
    del held


# --- the backfill command --------------------------------------------------------------

def run_cmd(cluster, *args, timeout=T):
    env = worker_env(cluster, None)
    return subprocess.run([BIN, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=timeout)


def test_backfill_dry_run_changes_nothing(ldb, cluster):
    existing_users(ldb, 120)
    r = run_cmd(cluster, "backfill", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert ("backfill --dry-run: 120 users examined; the run would enqueue 120 rows: 120 contacts to send "
            "(1 requests, imports of up to 1000), 0 failing the mapping") in r.stdout, r.stdout
    assert ldb.scalar("SELECT count(*) FROM public.sendry_outbox") == 0


def test_dry_run_counts_what_the_real_run_enqueues(ldb, cluster):
    """The estimate counted only users never enqueued: after a change of the mapping (every contact
    differs from the one sent) it said 0 and the run then enqueued every user. Now the dry run walks the
    same users through the same comparison, read-only: changed contacts, contacts the mapping renders
    wrongly, and contacts of users deleted since, and the real run enqueues exactly that."""
    for i in range(40):
        ldb.signup(f"mapped{i:02d}@example.com", meta={"first_name": f"M{i}"})
    ldb.query("ALTER TABLE auth.users DISABLE TRIGGER USER", user="supabase_admin")
    try:
        ldb.query("DELETE FROM auth.users WHERE email IN ('mapped00@example.com', 'mapped01@example.com')")
    finally:
        ldb.query("ALTER TABLE auth.users ENABLE TRIGGER USER", user="supabase_admin")
    existing_users(ldb, 5, prefix="never")
    ldb.query("TRUNCATE public.sendry_outbox")
    # What Sendry accepted (the worker writes it): the users still here, every contact now
    # different from it, and two users deleted since (their trigger disabled).
    ldb.query("INSERT INTO public.sendry_contact_state (user_id, email, contact_hash)"
              " SELECT id, lower(email), 0 FROM auth.users WHERE email LIKE 'mapped%'"
              " UNION ALL SELECT gen_random_uuid(), 'gone' || g || '@example.com', 0 FROM generate_series(1, 2) g")
    r = run_cmd(cluster, "reconcile-contacts", "--dry-run", "--chunk-size", "7")
    assert r.returncode == 0, r.stderr
    m = re.search(r"(\d+) users examined; the run would enqueue (\d+) rows: (\d+) contacts to send .*"
                  r"(\d+) failing the mapping .*, (\d+) deletions", r.stdout)
    assert m, r.stdout
    examined, rows, send, failing, deletions = map(int, m.groups())
    assert examined == ldb.scalar("SELECT count(*) FROM auth.users")
    assert ldb.scalar("SELECT count(*) FROM public.sendry_outbox") == 0, "the dry run wrote nothing"
    real = run_cmd(cluster, "reconcile-contacts", "--chunk-size", "7")
    assert real.returncode == 0, real.stderr
    counts = ldb.query("SELECT op, status, count(*)::int AS n FROM public.sendry_outbox GROUP BY 1, 2")
    got = {(c["op"], c["status"]): c["n"] for c in counts}
    assert rows == sum(got.values()) and rows > 40, (r.stdout, got)
    assert deletions == got.get(("delete", "pending"), 0) == 2, (r.stdout, got)
    assert failing == got.get(("upsert", "failed"), 0), (r.stdout, got)
    assert send == got.get(("upsert", "pending"), 0), (r.stdout, got)


def test_progress_counts_every_user_it_examines(ldb, cluster):
    """The walk examines every user (anonymous ones too): "6 of about 2 users examined" came from
    counting only synced users for the total."""
    existing_users(ldb, 2)
    for i in range(4):
        ldb.signup(None, anonymous=True)
    r = run_cmd(cluster, "backfill", "--chunk-size", "2")
    assert r.returncode == 0, r.stderr
    m = re.search(r"backfill: (\d+) of (\d+) users examined", r.stderr)
    assert m and m.group(1) == m.group(2) == "6", r.stderr


def test_backfill_enqueues_each_user_once_across_an_interruption(ldb, cluster):
    emails = existing_users(ldb, 3000)
    env = worker_env(cluster, None)
    p = subprocess.Popen([BIN, "backfill", "--chunk-size", "100"], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    wait_until(lambda: ldb.scalar("SELECT count(*) FROM public.sendry_outbox") >= 200, T, "the backfill under way")
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=T)
    assert p.returncode == 1, err
    assert "interrupted after" in err and "run it again" in err, err
    partial = ldb.scalar("SELECT count(*) FROM public.sendry_outbox")
    assert 0 < partial < 3000, partial
    r = run_cmd(cluster, "backfill", "--chunk-size", "100")
    assert r.returncode == 0, r.stderr
    rows = ldb.query("SELECT email, class FROM public.sendry_outbox")
    assert sorted(x["email"] for x in rows) == sorted(emails), "each user exactly once"
    assert {x["class"] for x in rows} == {"bulk"}
    again = run_cmd(cluster, "backfill")
    assert again.returncode == 0 and ldb.scalar("SELECT count(*) FROM public.sendry_outbox") == 3000


def test_backfill_chunks_bound_the_transaction(ldb, cluster):
    existing_users(ldb, 1000)
    r = run_cmd(cluster, "backfill", "--chunk-size", "150")
    assert r.returncode == 0, r.stderr
    per_txn = ldb.query("SELECT xmin::text, count(*)::int AS n FROM public.sendry_outbox GROUP BY 1")
    assert len(per_txn) >= 7 and max(t["n"] for t in per_txn) <= 150, per_txn


# --- backfill --events: the sign-ups replayed as events -----------------------------------

SIGNED_UP_ROWS = ("SELECT id, op, class, user_id::text AS user_id, email, payload, status"
                  " FROM public.sendry_outbox ORDER BY id")


def events_on(db, names="{user.signed_up}"):
    db.query("UPDATE public.sendry_settings SET events = %s", (names,))


def test_backfill_events_dry_run_counts_and_writes_nothing(ldb, cluster):
    existing_users(ldb, 40)
    for _ in range(3):
        ldb.signup(None, anonymous=True)      # never synced: no event either
    r = run_cmd(cluster, "backfill", "--events", "--dry-run", "--chunk-size", "9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("backfill --dry-run: 43 users examined; the run would enqueue 40 rows"), r.stdout
    assert lines[1].startswith("backfill --events --dry-run: 43 users examined; the run would enqueue 40 "
                               "user.signed_up events"), r.stdout
    assert lines[1].endswith("Nothing was changed."), r.stdout
    assert ldb.scalar("SELECT count(*) FROM public.sendry_outbox") == 0


def test_backfill_events_replays_each_sign_up_once(ldb, cluster):
    """backfill --events: every synced user's contact row, then its user.signed_up event row
    (class bulk, the contract's shape); a second run, and a user that has a live event
    already, get none; a plain backfill never emits events."""
    emails = existing_users(ldb, 24)
    ldb.query("ALTER TABLE auth.users DISABLE TRIGGER USER", user="supabase_admin")
    try:
        ldb.signup("  Mixed.Case@Example.COM ")
        emails.append("mixed.case@example.com")       # normalised, as the contract says
    finally:
        ldb.query("ALTER TABLE auth.users ENABLE TRIGGER USER", user="supabase_admin")
    ldb.signup(None, anonymous=True)
    events_on(ldb)
    try:
        plain = run_cmd(cluster, "backfill", "--chunk-size", "10")
        assert plain.returncode == 0, plain.stderr
        assert ldb.scalar("SELECT count(*) FROM public.sendry_outbox WHERE op = 'event'") == 0, \
            "a plain backfill emits no event, even with user.signed_up on"
        live = ldb.signup("  Live.One@Example.com ")   # the trigger's own user.signed_up
        r = run_cmd(cluster, "backfill", "--events", "--chunk-size", "10")
        assert r.returncode == 0, r.stderr
        assert "backfill --events: done: 27 users examined, 25 user.signed_up events enqueued" in r.stderr, r.stderr
        rows = ldb.query(SIGNED_UP_ROWS)
        events = [x for x in rows if x["op"] == "event"]
        assert len(events) == 26 and sum(x["class"] == "live" for x in events) == 1
        bulk = [x for x in events if x["class"] == "bulk"]
        assert sorted(x["email"] for x in bulk) == sorted(emails)
        ids = {x["email"]: x["user_id"] for x in bulk}
        for x in bulk:
            assert x["payload"] == {"name": "user.signed_up",
                                    "payload": {"user_id": x["user_id"], "provider": "email"}}, x
            assert x["status"] == "pending"
            contact = [c for c in rows if c["user_id"] == x["user_id"] and c["op"] == "upsert"]
            assert contact and contact[0]["id"] < x["id"], "the contact row comes first"
        assert len(ids) == 25
        again = run_cmd(cluster, "backfill", "--events", "--chunk-size", "7")
        assert again.returncode == 0, again.stderr
        assert "0 user.signed_up events enqueued" in again.stderr, again.stderr
        # Sent rows count too: the run skips a user whatever its event row's status.
        ldb.query("UPDATE public.sendry_outbox SET status = 'sent', sent_at = now() WHERE op = 'event'")
        assert run_cmd(cluster, "backfill", "--events").returncode == 0
        assert ldb.scalar("SELECT count(*) FROM public.sendry_outbox WHERE op = 'event'") == 26
        assert live
    finally:
        events_on(ldb, "{}")


def test_live_changes_arriving_one_by_one_share_a_request(ldb, fake, workers):
    """Sign-ups come one transaction at a time, each claimed on its own; while the key's
    budget (here 1 request a second) holds them back, their queued imports go out
    together, not one request each."""
    w = start_daemon(workers, "--rate", "1", "--reconcile-interval", "0", fast=False,
                     env={"SENDRY_API_URL": fake.url})
    for i in range(20):
        ldb.signup(f"burst{i:02d}@example.com")
    wait_until(lambda: ldb.all_sent(20), T, "the burst sent")
    assert len(import_requests(fake)) <= 4, [len(request_emails(r)) for r in import_requests(fake)]
    assert w.poll() is None


# --- the burst fits the provider's window ----------------------------------------------

@pytest.fixture
def at_the_limit():
    """A fake Sendry allowing 20 requests per 10 s per key (a sliding window): Sendry's
    100 per 10 s, scaled down."""
    f = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=(20, 10.0))
    f.start()
    yield f
    f.stop()


def test_three_workers_at_the_providers_limit_draw_no_429_before_and_after_a_kill(ldb, at_the_limit,
                                                                                  workers):
    """--rate 2 is exactly the provider's 20 per 10 s: three workers share it through the
    key's budget, whose burst fits the window (no 10 s carry more than 20 requests, the
    startup checks of the audience included); one is killed half way (its pool of tokens
    goes with it, its rows come back after the lease) and the two others go on, still
    without a 429. About 60 requests: some 35 s."""
    n = 180
    existing_users(ldb, n)
    ldb.query(BACKFILL)
    flags = ("--rate", "2", "--batch-size", "3", "--poll-interval", "0.5", "--lease", "3",
             "--http-timeout", "0.5", "--reconcile-interval", "0", "--backoff-base", "0.05",
             "--backoff-cap", "0.2")
    ws = [workers(*flags, fast=False, env={"SENDRY_API_URL": at_the_limit.url}) for _ in range(3)]
    sent = lambda: ldb.scalar("SELECT count(*) FROM public.sendry_outbox WHERE status = 'sent'")  # noqa: E731
    wait_until(lambda: sent() >= n // 2, 60, "half of the backlog sent")
    assert not rate_limited(at_the_limit), f"{len(rate_limited(at_the_limit))} answers were 429 before the kill"
    ws[0].kill9()
    wait_until(lambda: ldb.all_sent(n), 60, "the rest sent by the two others")
    assert not rate_limited(at_the_limit), f"{len(rate_limited(at_the_limit))} answers were 429 after the kill"
    times = sorted(r["time"] for r in at_the_limit.requests)
    busiest = max(sum(1 for t in times if s <= t < s + 10) for s in times)
    assert busiest <= 20, busiest
    span = times[-1] - times[0]
    print(f"{len(times)} requests in {span:.1f} s: {len(times) / span:.2f}/s of the 2/s allowed; "
          f"busiest 10 s: {busiest}")
    for w in ws[1:]:
        w.terminate()
        assert w.wait(T) == 0, w.log()
