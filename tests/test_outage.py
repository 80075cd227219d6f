"""The provider-outage rule: an outage of Sendry, of any length, fails no row. Requests
that fail transiently across the board (5xx, timeouts, refused connections) pause sending
behind a probe, the first within 5 s, then at doubling intervals; a request failing while
Sendry is down counts no attempt; a row's own transient failures retry for --retry-for
(72 h by default) and --max-attempts before it fails.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_outage.py
"""

import time

from conftest import T, import_requests, start_daemon, wait_until
from test_lifecycle import ldb  # noqa: F401

# The default schedule (--max-attempts 12, --retry-for 72 h, --backoff-cap 3600) scaled
# down: twelve attempts at most 0.2 s apart, and one second.
SCALED = ("--backoff-base", "0.05", "--backoff-cap", "0.2", "--retry-for", "1", "--reconcile-interval", "0")


def never_failed(db, seen):
    counts = db.counts()
    seen.append(counts)
    assert "failed" not in counts, f"a row failed during the outage: {counts}"
    return counts


def test_an_outage_longer_than_the_retry_schedule_fails_no_row(ldb, fake, workers):
    """Sendry answers 503 to every write for 4 s, then refuses connections for 4 s: more
    than the whole (scaled) retry schedule. No row fails, nothing is lost, and every row
    is sent once Sendry is back, with at most the two attempts spent before the outage
    was recognised."""
    w = start_daemon(workers, *SCALED, "--batch-size", "5")
    fake.fail_fraction(1.0, status=[500, 502, 503])
    emails = ldb.signup_many(40, prefix="outage")
    seen = []
    wait_until(lambda: len(import_requests(fake)) >= 3, T, "the first requests failing")
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        never_failed(ldb, seen)
        time.sleep(0.2)
    fake.fail_fraction(0)
    fake.down()
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        never_failed(ldb, seen)
        time.sleep(0.2)
    fake.up()
    back = time.monotonic()
    wait_until(lambda: never_failed(ldb, seen) == {"sent": len(emails)}, 60, "every row sent once Sendry is back")
    took = time.monotonic() - back
    attempts = ldb.query("SELECT max(attempts) AS m FROM public.sendry_outbox")[0]["m"]
    assert attempts <= 3, f"rows spent {attempts} attempts on the outage"
    assert "sending paused: Sendry unavailable" in w.log() and "sending resumed" in w.log()
    print(f"sent {len(emails)} rows {took:.1f} s after Sendry came back")


def test_a_fault_of_a_second_costs_seconds(ldb, fake, workers):
    """A storm of 503s that lasts about a second: the first probe comes within 5 s of the
    pause (not a minute), and sending resumes with it."""
    w = start_daemon(workers, *SCALED)
    fake.fail_fraction(1.0, status=503)
    ldb.signup("first@example.com")
    line = w.wait_log(r"sending paused: .*first probe in (\d+) s", T)[0]
    paused = time.monotonic()
    assert int(line.group(1)) <= 5, line.string
    fake.fail_fraction(0)
    ldb.signup_many(20, prefix="after")
    wait_until(lambda: ldb.all_sent(21), T, "sent after the probe")
    assert time.monotonic() - paused < 7, "the first probe within 5 s"
    failed = [r for r in import_requests(fake) if r["status"] and r["status"] >= 500]
    assert len(failed) == 3, f"{len(failed)} requests failed: the pause held the rest back"


def test_once_during_an_outage_exits_3_with_the_rows_pending(ldb, fake, workers):
    """--once meets Sendry down across the board: it gives the rows back with their
    attempts and exits 3 (rows wait for a retry), not 1 (a row failed or sending stopped)."""
    fake.fail_fraction(1.0, status=503)
    ldb.signup_many(10, prefix="once")
    w = workers("--once", "--batch-size", "2", "--concurrency", "1", *SCALED)
    assert w.wait(T) == 3, w.log()
    assert "Sendry unavailable" in w.log()
    assert ldb.counts() == {"pending": 10}
    assert ldb.scalar("SELECT max(attempts) FROM public.sendry_outbox") <= 2
