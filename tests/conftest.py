"""Shared fixtures for the end-to-end tests of the real sendry-sync binary.

    cluster     one throwaway Supabase-shaped PostgreSQL per test module, migration installed
    db          per test: empties sendry_outbox and auth.users, returns a Db helper
    fake        per test: a fresh fake Sendry (no rate limit)
    workers     per test: start_worker(*flags, ...) -> Worker; leftovers are killed at teardown

The binary is $SENDRY_SYNC_BIN, else ./sendry-sync at the top of the repository.
Nothing here sleeps to wait for a condition: wait_until() polls against a deadline.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg
import pytest
from psycopg.rows import dict_row

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import pgharness  # noqa: E402
from fake_sendry import FakeSendry  # noqa: E402

BIN = os.environ.get("SENDRY_SYNC_BIN") or os.path.join(ROOT, "sendry-sync")
API_KEY = "sn_test_fake"
AUDIENCE = "aud_test"
INSTANCE_ID = "00000000-0000-0000-0000-000000000000"

# Fast defaults for tests; a test passes its own flags after these (later ones win).
FAST_FLAGS = ["--poll-interval", "0.2", "--backoff-base", "0.05", "--backoff-cap", "0.2",
              "--rate", "0"]

# Environment variables the worker reads: never inherited from the caller's shell.
WORKER_ENV_VARS = ("DATABASE_URL", "SENDRY_API_KEY", "SENDRY_API_KEY_FILE", "SENDRY_API_KEY_VAULT",
                   "SENDRY_AUDIENCE_ID", "SENDRY_API_URL", "SENDRY_WEBHOOK_SECRET", "SENDRY_CA_FILE",
                   "SENDRY_LISTEN", "NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID",
                   "CREDENTIALS_DIRECTORY")


def wait_until(fn, timeout=20.0, msg=None, interval=0.05):
    """Poll fn() until it returns something truthy; return that. AssertionError on timeout."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except (psycopg.OperationalError, psycopg.errors.AdminShutdown) as exc:
            last_exc = exc  # e.g. while PostgreSQL restarts
        if time.monotonic() >= deadline:
            what = msg or getattr(fn, "__name__", repr(fn))
            extra = f" (last error: {last_exc})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
        time.sleep(interval)


# --- database -----------------------------------------------------------------------

class Db:
    """Short-lived psycopg connections to the test cluster (they survive a restart)."""

    def __init__(self, cluster):
        self.cluster = cluster

    def connect(self, user="postgres"):
        return psycopg.connect(self.cluster.dsn_for(user), autocommit=True, row_factory=dict_row)

    def query(self, sql, params=None, user="postgres"):
        """Run one statement; return its rows as dicts ([] when it returns none)."""
        with self.connect(user) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, sql, params=None, user="postgres"):
        rows = self.query(sql, params, user)
        return next(iter(rows[0].values())) if rows else None

    def truncate(self):
        self.query("TRUNCATE public.sendry_outbox RESTART IDENTITY", user="postgres")
        self.query("TRUNCATE public.sendry_contact_state, public.sendry_rate_budget", user="postgres")
        self.query("DELETE FROM public.sendry_sync_state WHERE key = 'contacts_reconcile_after'",
                   user="postgres")
        self.query("TRUNCATE auth.users CASCADE", user=pgharness.Cluster.SUPERUSER)

    # sign-ups, as GoTrue makes them (role supabase_auth_admin)
    def signup(self, email, meta=None, anonymous=False, uid=None):
        uid = uid or str(uuid.uuid4())
        app_meta = {} if anonymous else {"provider": "email", "providers": ["email"]}
        self.query(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data,"
            " raw_app_meta_data, is_anonymous, created_at, updated_at)"
            " VALUES (%s, %s, 'authenticated', 'authenticated', %s, %s, %s, %s, now(), now())",
            (INSTANCE_ID, uid, email, json.dumps(meta or {}), json.dumps(app_meta), anonymous),
            user="supabase_auth_admin")
        return uid

    def signup_many(self, n, prefix="user", start=1):
        """n sign-ups in one statement; returns their emails (prefix00001@example.com ...)."""
        self.query(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data,"
            " raw_app_meta_data, is_anonymous, created_at, updated_at)"
            " SELECT %s, gen_random_uuid(), 'authenticated', 'authenticated',"
            "        %s || lpad(g::text, 5, '0') || '@example.com',"
            "        jsonb_build_object('first_name', 'First' || g, 'last_name', 'Last' || g),"
            "        '{\"provider\": \"email\", \"providers\": [\"email\"]}', false, now(), now()"
            " FROM generate_series(%s::int, %s::int) g",
            (INSTANCE_ID, prefix, start, start + n - 1), user="supabase_auth_admin")
        return [f"{prefix}{i:05d}@example.com" for i in range(start, start + n)]

    # the outbox
    def rows(self):
        return self.query(
            "SELECT id, user_id::text, email, status, attempts, last_http_status, last_error,"
            " sent_at, next_attempt_at, locked_by, locked_until,"
            " EXTRACT(EPOCH FROM next_attempt_at - now())::float8 AS due_in"
            " FROM public.sendry_outbox ORDER BY id")

    def row(self, email):
        rows = [r for r in self.rows() if r["email"] == email]
        assert len(rows) == 1, f"expected one outbox row for {email}, got {rows}"
        return rows[0]

    def counts(self):
        """{status: count} over the outbox."""
        return {r["status"]: r["n"] for r in self.query(
            "SELECT status, count(*)::int AS n FROM public.sendry_outbox GROUP BY status")}

    def all_sent(self, n):
        """Truthy when the outbox holds exactly n rows, all sent."""
        return self.counts() == {"sent": n}


@pytest.fixture(scope="module")
def cluster():
    # A port of its own (sockets live in a private directory anyway).
    with pgharness.Cluster(supabase=True, install=True,
                           port=20000 + (os.getpid() + 101) % 20000) as c:
        yield c


@pytest.fixture
def db(cluster):
    d = Db(cluster)
    d.truncate()
    return d


@pytest.fixture
def fake():
    f = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=None)
    f.start()
    yield f
    f.stop()


def import_requests(fake):
    return fake.requests_matching("POST", "/v1/contacts/import")


# --- the worker -----------------------------------------------------------------------

class Worker:
    """The real binary in a subprocess; stdout and stderr go to a log file."""

    def __init__(self, args, env, log_path=None, prefix=(), binary=None):
        self.args = [binary or BIN] + list(args)
        self.argv = list(prefix) + self.args
        self.env = env
        if log_path is None:
            fd, log_path = tempfile.mkstemp(prefix="sendry-sync-", suffix=".log")
            os.close(fd)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=self._log)

    @property
    def pid(self):
        return self.proc.pid

    def poll(self):
        return self.proc.poll()

    def wait(self, timeout=30.0):
        """Exit status; AssertionError (with the log) if it is still running after timeout."""
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker still running after {timeout} s; log:\n{self.log()}") from None

    def terminate(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)

    def log(self):
        self._log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def lines(self):
        return self.log().splitlines()

    def wait_log(self, regex, timeout=20.0, count=1):
        """Wait until `regex` matches at least `count` log lines; return the matches."""
        pattern = re.compile(regex)

        def found():
            hits = [m for m in map(pattern.search, self.lines()) if m]
            if len(hits) >= count:
                return hits
            if self.proc.poll() is not None:
                hits = [m for m in map(pattern.search, self.lines()) if m]
                if len(hits) >= count:
                    return hits
                raise AssertionError(f"worker exited ({self.proc.returncode}) before logging "
                                     f"{regex!r}; log:\n{self.log()}")
            return None

        try:
            return wait_until(found, timeout, f"log line {regex!r}")
        except AssertionError as exc:
            if "worker exited" in str(exc):
                raise
            raise AssertionError(f"{exc}; log:\n{self.log()}") from None

    def wait_ready(self, timeout=20.0):
        """Connected to PostgreSQL (LISTENing) and the audience verified."""
        self.wait_log(r"db: connected \(relay connection", timeout)
        self.wait_log(r"audience \S+ .* verified", timeout)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._log.close()


def worker_env(cluster, fake, extra=None):
    env = {k: v for k, v in os.environ.items() if k not in WORKER_ENV_VARS}
    env.update(DATABASE_URL=cluster.dsn, SENDRY_API_KEY=API_KEY, SENDRY_AUDIENCE_ID=AUDIENCE,
               SENDRY_API_URL=fake.url if fake else "http://127.0.0.1:9")
    for k, v in (extra or {}).items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


@pytest.fixture
def workers(cluster, fake, tmp_path):
    """start_worker(*flags, env=None, fast=True, prefix=(), binary=None) -> Worker.

    env: extra variables (None removes one). fast: put FAST_FLAGS first."""
    started = []

    def start_worker(*flags, env=None, fast=True, prefix=(), binary=None):
        args = (FAST_FLAGS if fast else []) + list(flags)
        log_path = str(tmp_path / f"worker{len(started) + 1}.log")
        w = Worker(args, worker_env(cluster, fake, env), log_path, prefix=prefix, binary=binary)
        started.append(w)
        return w

    yield start_worker
    for w in started:
        w.close()


# Deadlines for waiting on the worker: generous, for the ASan build on two cores.
T = 30.0


def start_daemon(workers, *flags, **kw):
    """A worker in daemon mode, once it is connected and listening."""
    w = workers(*flags, **kw)
    w.wait_ready(T)
    return w
