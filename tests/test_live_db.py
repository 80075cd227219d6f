"""The worker inside a database that is never idle (issue 16, points 3, 5, 6 and 7):
session timeouts and per-query deadlines, failures that need someone made loud, a worker
identity unique per process, and a killed worker's rows back in play within 30 s.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_live_db.py
"""

import json
import os
import re
import shutil
import signal
import subprocess
import time

import psycopg
import pytest

from conftest import BIN, T, import_requests, start_daemon, wait_until, worker_env
from test_lifecycle import SECRET, Hook, free_port, ldb, request_emails, start_listener  # noqa: F401

NORIGHTS = "sendry_norights"


def healthz(hook):
    status, text = hook.get("/healthz")
    return status, json.loads(text).get("reason", "") if text else ""


def first_arrival(fake, email):
    return wait_until(lambda: [r for r in import_requests(fake) if email in request_emails(r)], T,
                      f"{email} at Sendry")[0]


# --- 3. timeouts ------------------------------------------------------------------------------
# (db.c's part, SET at connect and the deadline of a query nobody answers, is also unit
# tested against a real PostgreSQL in tests/unit/db_test.c.)

def test_the_relay_and_the_commands_wait_for_a_lock_no_longer_than_lock_timeout(ldb, fake, workers):
    """Someone holds the outbox locked (a long report, a migration): the worker's claim and
    `status` each give up after --lock-timeout rather than queue behind it (and every
    writer behind them) for ever; the claim's connection is reported by /healthz."""
    ldb.signup("waiting@example.com")
    blocker = psycopg.connect(ldb.cluster.dsn_for("postgres"))
    try:
        blocker.execute("LOCK TABLE public.sendry_outbox IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        r = subprocess.run([BIN, "status", "--lock-timeout", "0.5"], env=worker_env(ldb.cluster, fake),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        took = time.monotonic() - started
        assert r.returncode == 1 and "lock timeout" in r.stderr, (r.stdout, r.stderr)
        assert took < 10, took
        hook = start_listener(workers, "--lock-timeout", "0.5", "--statement-timeout", "2")
        hook.worker.wait_log(r"relay connection: a query waited for a lock longer than its 0.5 s deadline "
                        r"\(--lock-timeout\)", T)
        status, reason = wait_until(lambda: (lambda s: s[0] == 503 and s)(healthz(hook)), T, "503")
        assert "relay connection" in reason and "lock" in reason, reason
    finally:
        blocker.rollback()
        blocker.close()
    wait_until(lambda: ldb.counts() == {"sent": 1}, T, "the row sent once the lock is gone")
    wait_until(lambda: healthz(hook)[0] == 200, T, "/healthz back to 200")


def aux_waiting_on_a_lock(db):
    return db.scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'sendry-sync'"
                     " AND wait_event_type = 'Lock'")


def test_a_query_stuck_behind_a_lock_on_the_aux_connection_ends_at_its_deadline(ldb, fake, workers):
    """Another session holds a lock on a table the aux connection reads for /healthz
    (sendry_enqueue_errors): the health query waits for it. A sign-up made while it waits
    goes out on the relay's connection within a second; the server ends the stuck query
    at the session's statement timeout (3 s here, lock_timeout out of the way), and
    /healthz answers 503 naming the aux connection and the deadline. Once the lock is
    gone, health is back."""
    blocker = psycopg.connect(ldb.cluster.dsn_for("postgres"))
    try:
        hook = start_listener(workers, "--statement-timeout", "3", "--lock-timeout", "60")
        wait_until(lambda: healthz(hook)[0] == 200, T, "healthy at first")
        blocker.execute("LOCK TABLE public.sendry_enqueue_errors IN ACCESS EXCLUSIVE MODE")
        wait_until(lambda: aux_waiting_on_a_lock(ldb), T, "the health query waiting for the lock")
        email = "during-the-lock@example.com"
        ldb.signup(email)
        committed = time.monotonic()
        latency = first_arrival(fake, email)["time"] - committed
        assert aux_waiting_on_a_lock(ldb), "the aux query was no longer stuck: the test proves nothing"
        assert latency < 1.0, f"the sign-up took {latency:.2f} s while the aux connection was stuck"
        status, reason = wait_until(lambda: (lambda s: s[0] == 503 and s)(healthz(hook)), T,
                                    "/healthz reporting the aux connection past its deadline")
        assert "aux connection" in reason and "3 s deadline" in reason, reason
        assert "statement timeout" in reason, reason
        hook.worker.wait_log(r"aux connection: a query was cancelled at its 3 s deadline", T)
        # The worker's statement does not stay queued on the lock past its deadline.
        assert not ldb.scalar(
            "SELECT count(*) FROM pg_stat_activity a WHERE a.application_name = 'sendry-sync'"
            " AND a.wait_event_type = 'Lock' AND now() - a.query_start > interval '4 seconds'")
    finally:
        blocker.rollback()
        blocker.close()
    wait_until(lambda: healthz(hook)[0] == 200, T, "/healthz back to 200 once the lock is gone")


def test_a_completion_past_its_lock_timeout_is_written_again_not_dropped(ldb, fake, workers):
    """Someone holds a row lock on a row whose request is at Sendry: the completion waits
    --lock-timeout, fails, and is written again once the lock is gone; the row is sent
    once (an outcome dropped would leave the row to its lease, and send it again)."""
    w = start_daemon(workers, "--lock-timeout", "0.3", "--lease", "3")
    fake.delay_next(1.5)
    email = "row-locked@example.com"
    ldb.signup(email)
    wait_until(lambda: import_requests(fake), T, "the request at Sendry")
    blocker = psycopg.connect(ldb.cluster.dsn_for("postgres"))
    try:
        blocker.execute("SELECT id FROM public.sendry_outbox WHERE email = %s FOR UPDATE", (email,))
        w.wait_log(r"recording 1 outcomes failed: .*lock timeout.*; trying again", T, count=2)
    finally:
        blocker.rollback()
        blocker.close()
    wait_until(lambda: ldb.counts() == {"sent": 1}, T, "the outcome written once the lock is gone")
    assert len([r for r in import_requests(fake) if email in request_emails(r)]) == 1
    assert not any("claimed again" in ln for ln in w.lines())


def aux_backend(db):
    """The pid of the worker's aux connection: the one whose last statement was the
    health query (the relay's claims, renewals and LISTEN never read that table)."""
    return db.scalar("SELECT pid FROM pg_stat_activity WHERE application_name = 'sendry-sync'"
                     " AND query LIKE '%sendry_enqueue_errors%' LIMIT 1")


def unread_bytes(pid):
    """Bytes waiting unread on the sockets of process pid (ss's Recv-Q)."""
    out = subprocess.run(["ss", "-xpn"], stdout=subprocess.PIPE, text=True, timeout=10).stdout
    return max([int(ln.split()[2]) for ln in out.splitlines() if f"pid={pid}," in ln] or [0])


def test_a_query_with_no_answer_drops_its_connection_past_the_deadline(ldb, fake, workers):
    """The aux connection's server process stops answering (SIGSTOP: a hung backend, a
    network that drops packets). No statement_timeout can help there: past the deadline
    (--statement-timeout and as long again, at most 5 s) the worker drops the connection,
    /healthz says so, and it reconnects; the relay's connection delivers a sign-up
    meanwhile within a second."""
    if not shutil.which("ss"):
        pytest.skip("no ss(8) to see a query waiting at the stopped backend")
    hook = start_listener(workers, "--statement-timeout", "1")
    pid = wait_until(lambda: aux_backend(ldb), T, "the aux connection's health query")
    os.kill(pid, signal.SIGSTOP)
    try:
        # The next aux query (the inbox's retry pass, every 1.2 s here) sits unread.
        wait_until(lambda: unread_bytes(pid) > 0, T, "a query waiting at the stopped backend")
        email = "while-aux-hangs@example.com"
        ldb.signup(email)
        committed = time.monotonic()
        latency = first_arrival(fake, email)["time"] - committed
        assert not any("got no answer" in ln for ln in hook.worker.lines()), "the aux query was not stuck"
        assert latency < 1.0, f"the sign-up took {latency:.2f} s while the aux connection hung"
        hook.worker.wait_log(r"aux connection: a query got no answer for 2 s, past its 1 s deadline", T)
        status, reason = wait_until(lambda: (lambda s: s[0] == 503 and s)(healthz(hook)), T,
                                    "/healthz reporting the dropped connection")
        assert "aux connection" in reason, reason
        hook.worker.wait_log(r"db: connected \(aux connection", T, count=2)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_until(lambda: healthz(hook)[0] == 200, T, "/healthz back to 200 once a query is answered")


# --- 5. failures that need someone --------------------------------------------------------------

@pytest.fixture
def norights(ldb):
    """A login role with no privilege on the outbox."""
    su = ldb.cluster.SUPERUSER
    ldb.query(f"DROP ROLE IF EXISTS {NORIGHTS}", user=su)
    ldb.query(f"CREATE ROLE {NORIGHTS} LOGIN", user=su)
    yield ldb.cluster.dsn_for(NORIGHTS)
    ldb.query(f"DROP OWNED BY {NORIGHTS}", user=su)
    ldb.query(f"DROP ROLE {NORIGHTS}", user=su)


GRANT = (f"GRANT SELECT, UPDATE ON public.sendry_outbox TO {NORIGHTS}; "
         f"GRANT SELECT, INSERT, UPDATE ON public.sendry_contact_state TO {NORIGHTS}; "
         f"GRANT EXECUTE ON FUNCTION public.sendry_event_id(bigint), public.sendry_claim_render(uuid[]) "
         f"TO {NORIGHTS}")


def test_a_role_without_rights_on_the_outbox_makes_once_exit_1(ldb, fake, workers, norights):
    ldb.signup("pending@example.com")
    w = workers("--once", env={"DATABASE_URL": norights})
    assert w.wait(T) == 1, w.log()
    log = w.log()
    assert "permission denied" in log and GRANT in log, log
    assert "done: 0 sent" not in log, log
    assert ldb.counts() == {"pending": 1}


def test_a_role_without_rights_on_the_outbox_turns_healthz_503(ldb, fake, workers, norights):
    ldb.signup("pending@example.com")
    port = free_port()
    w = start_daemon(workers, "--listen", f"127.0.0.1:{port}", "--reconcile-interval", "0",
                     env={"SENDRY_WEBHOOK_SECRET": SECRET, "DATABASE_URL": norights})
    hook = Hook(w, port)
    status, reason = wait_until(lambda: (lambda s: s[0] == 503 and s)(healthz(hook)), T,
                                "/healthz naming the missing privilege")
    assert "claiming rows failed" in reason and GRANT in reason, reason
    assert len(w.wait_log(r"db: claiming rows failed: permission denied", T)) == 1
    assert "row level security hides" not in w.log(), "RLS is not the fault while SELECT is missing"
    # Granted, but row level security (on, no policy) hides every row from the role: the
    # claims now succeed and find nothing, which is said as loudly.
    ldb.query(GRANT)
    status, reason = wait_until(lambda: (lambda s: s[0] == 503 and "row level security" in s[1] and s)(
        healthz(hook)), T, "/healthz naming RLS")
    assert f"ALTER ROLE {NORIGHTS} BYPASSRLS" in reason, reason
    assert ldb.counts() == {"pending": 1}
    # Past RLS too, as the fix says: the row goes out, health comes back.
    ldb.query(f"ALTER ROLE {NORIGHTS} BYPASSRLS", user=ldb.cluster.SUPERUSER)
    wait_until(lambda: ldb.counts() == {"sent": 1}, T, "the row sent once granted")
    wait_until(lambda: healthz(hook)[0] == 200, T, "/healthz back to 200")
    w.wait_log(r"db: claiming rows works again", T)


def test_a_missing_column_makes_once_exit_1_naming_migrate(ldb, fake, workers):
    ldb.signup("pending@example.com")
    ldb.query("ALTER TABLE public.sendry_outbox RENAME COLUMN claim_id TO claim_id_renamed")
    try:
        w = workers("--once")
        assert w.wait(T) == 1, w.log()
        assert re.search(r"claiming rows failed: column .*claim_id.* does not exist \(SQLSTATE 42703\)"
                         r".*fix: sendry-sync migrate", w.log()), w.log()
    finally:
        ldb.query("ALTER TABLE public.sendry_outbox RENAME COLUMN claim_id_renamed TO claim_id")


def test_doctor_names_the_missing_privilege(ldb, fake, norights):
    e = worker_env(ldb.cluster, fake, {"DATABASE_URL": norights})
    r = subprocess.run([BIN, "doctor", "--json"], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    out = json.loads(r.stdout)
    assert r.returncode == 2, r.stdout
    failed = [c for c in out["checks"] if c["status"] == "fail"]
    assert failed, r.stdout
    text = json.dumps(failed)
    assert "privilege" in text and NORIGHTS in text and "GRANT" in text, r.stdout
    for c in failed:
        assert "migrate" not in (c.get("fix") or ""), c


def test_a_role_that_rls_hides_the_outbox_from_makes_once_exit_1(ldb, fake, workers, norights):
    ldb.signup("pending@example.com")
    ldb.query(GRANT)
    w = workers("--once", env={"DATABASE_URL": norights})
    assert w.wait(T) == 1, w.log()
    assert f"row level security hides every row of public.sendry_outbox from role {NORIGHTS}" in w.log()
    assert ldb.counts() == {"pending": 1}


def test_doctor_names_row_level_security_hiding_the_outbox(ldb, fake, norights):
    """GRANTed, but not the owner and without BYPASSRLS: RLS (on, no policy) hides every
    row, and the worker would claim nothing without an error; doctor says so."""
    ldb.query(GRANT)
    e = worker_env(ldb.cluster, fake, {"DATABASE_URL": norights})
    r = subprocess.run([BIN, "doctor", "--json"], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["objects"]["status"] == "fail", r.stdout
    assert "row level security" in checks["objects"]["detail"], r.stdout
    assert f"ALTER ROLE {NORIGHTS} BYPASSRLS" in checks["objects"]["fix"], r.stdout


# --- 6. the worker's identity -------------------------------------------------------------------

IDENTITY = re.compile(r"starting: worker (\S+),")


def identity(w):
    return w.wait_log(IDENTITY.pattern, T)[0].group(1)


def test_the_identity_is_random_per_process(ldb, fake, workers):
    a = start_daemon(workers)
    b = start_daemon(workers)
    ia, ib = identity(a), identity(b)
    assert re.fullmatch(r"[^:]+:\d+:[0-9a-f]{16}", ia), ia
    assert ia != ib


def unshare_works():
    if not shutil.which("unshare"):
        return "no unshare(1)"
    r = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "true"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=30)
    return None if r.returncode == 0 else f"unshare --pid is not permitted here: {r.stderr.strip()}"


def test_two_workers_in_separate_pid_namespaces_get_different_identities(ldb, fake, workers):
    why = unshare_works()
    if why:
        pytest.skip(why)
    # --kill-child: the worker (pid 1 inside) dies with unshare when the fixture kills it.
    prefix = ("unshare", "--pid", "--fork", "--kill-child", "--mount-proc")
    a = start_daemon(workers, prefix=prefix)
    b = start_daemon(workers, prefix=prefix)
    ia, ib = identity(a), identity(b)
    assert ia.split(":")[1] == ib.split(":")[1] == "1", (ia, ib)   # both pid 1, same host name
    assert ia != ib
    # status shows who holds rows: a held row is listed under its worker's identity.
    fake.delay_next(8)
    ldb.signup("held@example.com")
    wait_until(lambda: ldb.counts().get("processing"), T, "a row held")
    r = subprocess.run([BIN, "status"], env=worker_env(ldb.cluster, fake), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (ia in r.stdout) != (ib in r.stdout), r.stdout


# --- 7. a killed worker's rows ------------------------------------------------------------------

def test_a_killed_workers_rows_are_sent_by_another_within_40_s_by_default(ldb, fake, workers):
    """Default settings (lease 30 s, renewed every 10 s): a worker holding rows in a
    request Sendry has not answered is killed with SIGKILL; another worker sends them
    within 40 s of the kill."""
    a = start_daemon(workers, fast=False)
    fake.delay_all = 120
    emails = ldb.signup_many(5, prefix="killed")
    # All five held (claimed; in requests Sendry does not answer, or queued behind them).
    wait_until(lambda: ldb.counts().get("processing") == 5 and import_requests(fake), T,
               "the rows held, requests at Sendry unanswered")
    a.kill9()
    killed = time.monotonic()
    fake.delay_all = 0
    start_daemon(workers, fast=False)
    wait_until(lambda: ldb.all_sent(len(emails)), 40, "the killed worker's rows sent by the other")
    took = time.monotonic() - killed
    assert took <= 40, took
    assert {e for r in import_requests(fake) for e in request_emails(r)} >= set(emails)
