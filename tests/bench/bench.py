#!/usr/bin/python3
"""make bench: the figures of issues 9 and 10, one table, never pass/fail on a timing.

    /usr/bin/python3 tests/bench/bench.py [--baseline CHECKOUT] [--only a,b,...] [--keep]

The worker is a black box: the real binary and the real sql/install.sql of a checkout (this
one, and with --baseline another one, built there first), a real PostgreSQL with PostgreSQL's
durable defaults (fsync, full_page_writes, synchronous_commit on) shaped like Supabase, and
build/fastapi, a fake Sendry in C that is far faster than the worker (its ceiling is measured
in the same run). With a baseline every scenario runs against both checkouts, one after the
other, and the table shows both columns and the change.

Scenarios (BENCH_QUICK=1 scales the row counts down for a smoke run of a few minutes):
  (the backlogs are the README's backfill of each checkout: since issue 17 captured rows,
  `INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users`, rendered at the claim)
  a  100k backlog right after install (no statistics yet), --mode import --rate 0 --once:
     rows/s, database CPU per row (every process of the cluster, the worker's backends, the
     worker), RSS, claims and completions
  b  1M backlog with stale statistics (ANALYZE of the empty outbox, autovacuum off for it):
     rows/s overall, over the first 1 s and 5 s, database CPU per row
  c  the same with --mode single: rows/s, claims, completions
  d  the mean claim with 1M sent rows and statistics taken while only they were there, vs
     the same backlog alone with fresh statistics
  e  commit-to-request latency of sign-ups at 100/s against a running daemon (--rate 0), then
     the idle daemon's CPU
  f  worker RSS (VmHWM) at 3k, 100k and 1M backlog
  g  issue 10: live sign-ups made mid-way through a 100k backfill, the fake at 100 requests/10 s
  h  issue 10: three daemons, one database, the fake at 100 requests/10 s, a 100k backfill
  i  issue 16: the inbox's apply time (sendry_inbox_receive of an unsubscribe, one
     statement each) at 10k and 1M users, in a cluster of its own
  k  issue 16: a 10k backlog right after install (no statistics: autovacuum off for the
     outbox), --once --rate 0: rows/s and the completion's cost (compare the checkout
     before the fix with BASELINE=)
  l  issue 18: events (sendry_track, live) enqueued while a 100k contact backfill flows,
     the fake at 100 requests/10 s, default --rate: events/s, and the contacts and requests
     admitted over the same window
  m  issue 18: sign-ups at 20/s with user.signed_up on, daemon --rate 0: the event's
     commit-to-request latency (the contact's request goes first), beside the contact's
  n  issue 17: commit-to-request latency of sign-ups at 1,000/s from 4 connections, --rate 0
  (l and m need events: a checkout without sendry_track shows "—")

Exit status: 0 when every scenario delivered all its rows, 1 when one did not (or its time
cap ran out), 2 when the bench could not run. Progress goes to stderr, the table to stdout.
"""

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
ROOT = os.path.dirname(TESTS)
sys.path.insert(0, TESTS)

import pgharness  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
CLK_TCK = os.sysconf("SC_CLK_TCK")
API_KEY, AUDIENCE = "sn_test_fake", "aud_test"
INSTANCE_ID = "00000000-0000-0000-0000-000000000000"
ADMIN = pgharness.Cluster.SUPERUSER

# Statements of the worker identified by their text (override when the SQL changes shape).
CLAIM_RE = re.compile(os.environ.get("BENCH_CLAIM_RE", r"FOR\s+UPDATE\s+SKIP\s+LOCKED"), re.I | re.S)
COMPLETE_RE = re.compile(os.environ.get(
    "BENCH_COMPLETE_RE", r"\bUPDATE\s+(public\.)?sendry_outbox\b.*\bsent_at\b"), re.I | re.S)

PG_CONF = [
    "shared_preload_libraries = 'pg_stat_statements,auto_explain'",
    "pg_stat_statements.track = all",
    "pg_stat_statements.track_planning = on",
    # Plans (estimates only, no timing overhead) of statements slower than this.
    "auto_explain.log_min_duration = 250",
    "auto_explain.log_nested_statements = on",
]


class Scale:
    """Row counts, durations and time caps of the scenarios."""
    users = 200_000 if QUICK else 1_000_000       # auth.users rows, made once per checkout
    tiny = 3_000
    after_install = 10_000                        # k's backlog (the case: not scaled)
    inbox_events = (500, 100)                     # i: events timed at 10k and at 1M users
    small = 20_000 if QUICK else 100_000          # a, c, d's backlog
    large = 200_000 if QUICK else 1_000_000       # b's backlog, d's sent rows
    limited = 30_000 if QUICK else 100_000        # g and h, at the fake's limit
    latency_seconds = 5 if QUICK else 10          # e: sign-ups at 100/s for this long
    signup_rate = 100
    idle_seconds = 10 if QUICK else 30            # e: the idle daemon
    live_signups = 20                             # g
    events = 100 if QUICK else 200                # l: events enqueued mid-backfill
    event_signup_rate = 20                        # m: sign-ups/s, each with user.signed_up
    fast_rate = 1000                              # n: sign-ups/s (issue 17: p99 <= 10 ms)
    fast_seconds = 3 if QUICK else 10             # n: for this long
    fast_connections = 4                          # n: the app's connections, each a share
    daemons = 3                                   # h
    # Seconds a drain may take before it is cut short (its figures then cover what it did,
    # and the run exits 1): at the goals every drain takes a fraction of its cap.
    cap_small = 20 if QUICK else 45               # a, f
    cap_claim = 15 if QUICK else 30               # d, twice: enough claims for a mean
    cap_single = 20 if QUICK else 60              # c
    cap_large = 40 if QUICK else 90               # b
    cap_limited = 30 if QUICK else 60             # g, h: 10 s at the fake's limit
    cap_events = 60 if QUICK else 90              # l: the events and the backfill at 10 requests/s


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] bench: {msg}", file=sys.stderr, flush=True)


def kfmt(n):
    """100000 -> 100k, 1000000 -> 1M (labels)."""
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    return str(n)


# --- processes and /proc ---------------------------------------------------------------

def proc_stat(pid):
    """(ppid, utime+stime s, cutime+cstime s) of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            rest = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(rest[1]), (int(rest[11]) + int(rest[12])) / CLK_TCK,
            (int(rest[13]) + int(rest[14])) / CLK_TCK)


def vm_kib(pid, field="VmHWM"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cluster_cpu(postmaster):
    """CPU seconds of a cluster so far: the postmaster, its live children, and the children
    it has reaped (cutime/cstime: backends that exited count too). Read again when a child
    was reaped meanwhile, so that no backend is missed or counted twice."""
    for _ in range(20):
        before = proc_stat(postmaster)
        live = 0.0
        for name in os.listdir("/proc"):
            if name.isdigit():
                st = proc_stat(int(name))
                if st and st[0] == postmaster:
                    live += st[1]
        after = proc_stat(postmaster)
        if after[2] == before[2]:
            break
    return after[1] + after[2] + live


class Worker:
    """The real binary in a subprocess, reaped with wait4 for its exact CPU. Its peak RSS is
    VmHWM read at every poll (wait4's ru_maxrss would include this Python process's RSS,
    which the child inherits at fork)."""

    def __init__(self, side, fake, args, log_path):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SENDRY_", "PG"))}
        env.update(DATABASE_URL=side.cluster.dsn, SENDRY_API_KEY=API_KEY,
                   SENDRY_AUDIENCE_ID=AUDIENCE, SENDRY_API_URL=fake.url)
        self.log_path = log_path
        self.logf = open(log_path, "wb")
        self.t0_real = time.time()
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen([side.binary] + list(args), env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf)
        self.pid = self.proc.pid
        self.rc = None
        self.cpu = self.hwm_kib = 0
        self.t_end = None

    def poll(self):
        if self.rc is None:
            self.hwm_kib = max(self.hwm_kib, vm_kib(self.pid, "VmHWM"))
            pid, status, ru = os.wait4(self.pid, os.WNOHANG)
            if pid:
                self.t_end = time.monotonic()
                self.rc = os.waitstatus_to_exitcode(status)
                self.proc.returncode = self.rc        # Popen must not wait for it again
                self.cpu = ru.ru_utime + ru.ru_stime
                self.logf.close()
        return self.rc

    def wait(self, deadline):
        """Wait for the exit until time.monotonic() >= deadline; then SIGTERM (and SIGKILL)."""
        while self.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.rc is None:
            self.stop()
            return False
        return True

    def stop(self, grace=30.0):
        if self.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            end = time.monotonic() + grace
            while self.poll() is None and time.monotonic() < end:
                time.sleep(0.02)
            if self.rc is None:
                os.kill(self.pid, signal.SIGKILL)
                while self.poll() is None:
                    time.sleep(0.02)
        return self.rc

    def log_tail(self, n=15):
        with open(self.log_path, "rb") as f:
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])


class Sampler(threading.Thread):
    """While workers run: the CPU of their backends (application_name 'sendry-sync', looked for
    in pg_stat_activity every 100 ms) and of this sampler's own backend, read from /proc
    every 20 ms. A backend's last reading before it exits is kept (at most 20 ms of its CPU
    is missed)."""

    def __init__(self, side):
        super().__init__(daemon=True)
        self.side = side
        self.backends = {}            # pid -> CPU s at the first reading
        self.last = {}                # pid -> CPU s at the latest reading
        self.monitor_cpu = 0.0
        self._stop_event = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()

    def run(self):
        with psycopg.connect(self.side.cluster.dsn_for(ADMIN), autocommit=True) as conn:
            me = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
            me_cpu0 = proc_stat(me)[1]
            self._ready.set()
            tick = 0
            while not self._stop_event.is_set():
                if tick % 5 == 0:
                    for (pid,) in conn.execute("SELECT pid FROM pg_stat_activity "
                                               "WHERE application_name = 'sendry-sync'"):
                        with self._lock:
                            self.backends.setdefault(pid, None)
                self._read()
                tick += 1
                self._stop_event.wait(0.02)
            self._read()
            self.monitor_cpu = proc_stat(me)[1] - me_cpu0

    def _read(self):
        for pid in self.backend_pids():
            st = proc_stat(pid)
            if st:
                if self.backends[pid] is None:
                    self.backends[pid] = 0.0      # found after it started: count from 0
                self.last[pid] = st[1]

    def start(self):
        super().start()
        self._ready.wait(10)
        return self

    def finish(self):
        if self.is_alive():
            self._stop_event.set()
            self.join(10)

    def backend_pids(self):
        with self._lock:
            return list(self.backends)

    @property
    def backend_cpu(self):
        return sum(self.last.get(p, 0.0) - (c or 0.0) for p, c in self.backends.items())


# --- the fake Sendry ---------------------------------------------------------------------

class Fake:
    """build/fastapi in a subprocess, with its request log (and optionally its email log)."""

    def __init__(self, workdir, name, rate_limit=None, email_log=False):
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir, exist_ok=True)
        port_file = os.path.join(self.dir, "port")
        if os.path.exists(port_file):
            os.remove(port_file)                  # a fake started here before
        self.request_log = os.path.join(self.dir, "requests.log")
        self.email_log = os.path.join(self.dir, "emails.log") if email_log else None
        argv = [os.path.join(ROOT, "build", "fastapi"), "--port-file", port_file,
                "--request-log", self.request_log]
        if rate_limit:
            argv += ["--rate-limit", rate_limit]
        if self.email_log:
            argv += ["--email-log", self.email_log]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not os.path.exists(port_file):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("build/fastapi did not start")
            time.sleep(0.01)
        self.port = int(open(port_file).read())
        self.url = f"http://127.0.0.1:{self.port}"

    def stats(self):
        with urllib.request.urlopen(self.url + "/_stats", timeout=5) as r:
            return json.load(r)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def _lines(self, path):
        """The complete lines of a log the fake may still be writing (a read can end in
        the middle of its last line)."""
        with open(path) as f:
            for line in f:
                if line.endswith("\n"):
                    yield line[:-1].split(maxsplit=3)

    def requests(self):
        """[(realtime, status, contacts, path)] of every request, in arrival order."""
        return [(float(t), int(st), int(n), path) for t, st, n, path in self._lines(self.request_log)]

    def event_times(self):
        """The realtime of every POST /v1/events the fake answered 2xx, in arrival order."""
        return [float(t) for t, e in self._lines(self.email_log) if e.startswith("event:")]

    def arrivals(self):
        """{email: realtime of its first arrival}; an event's as "event:<address>"."""
        seen = {}
        for t, email in self._lines(self.email_log):
            seen.setdefault(email, float(t))
        return seen

    def wait_contacts(self, n, deadline):
        """Until the fake has accepted n contacts (or the deadline): their count."""
        while True:
            got = self.stats()["contacts"]
            if got >= n or time.monotonic() >= deadline:
                return got
            time.sleep(0.05)


def fake_ceiling(workdir):
    """Requests/s build/fastapi sustains from build/fastload (4 keep-alive connections)."""
    body_one = os.path.join(workdir, "one.json")
    body_import = os.path.join(workdir, "import.json")
    contacts = [{"email": f"user{i:07d}@example.com", "first_name": "User", "last_name": f"Number {i}",
                 "metadata": {"supabase_user_id": str(uuid.UUID(int=i)), "signup_source": "supabase"}}
                for i in range(1000)]
    with open(body_import, "w") as f:
        json.dump({"contacts": contacts, "audience_id": AUDIENCE}, f, separators=(",", ":"))
    with open(body_one, "w") as f:
        json.dump(dict(contacts[0], audience_id=AUDIENCE), f, separators=(",", ":"))
    fake = Fake(workdir, "ceiling")
    out = {}
    try:
        for key, path, body in (("single", "/v1/contacts", body_one),
                                ("import", "/v1/contacts/import", body_import)):
            r = subprocess.run([os.path.join(ROOT, "build", "fastload"), "--port", str(fake.port),
                                "--connections", "4", "--seconds", "2", "--path", path,
                                "--body-file", body], stdout=subprocess.PIPE, text=True, check=True)
            fields = dict(kv.split("=") for kv in r.stdout.split())
            out[key] = float(fields["rps"])
    finally:
        fake.stop()
    return {"fake.single_rps": out["single"], "fake.import_rows_s": out["import"] * 1000}


# --- a checkout under test and its cluster -----------------------------------------------

BACKFILL_SQL = ("INSERT INTO sendry_outbox (user_id, email, payload) "
                "SELECT id, email, sendry_contact_payload(u) FROM auth.users u WHERE email IS NOT NULL")
# Since schema version 6 (issue 17) the README's backfill is captured rows, rendered at
# the claim: each checkout is measured with the backfill its README gives.
CAPTURED_BACKFILL_SQL = "INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users u WHERE email IS NOT NULL"


def user_email(i):
    return f"user{i:07d}@example.com"


def first_users(n):
    """A condition on auth.users u for the first n bench users (the README's backfill
    statement gets it appended, so a backfill of n rows needs no table of its own)."""
    return f" AND u.email BETWEEN 'user' AND '{user_email(n)}'"


class Side:
    """One checkout: its binary, its sql/install.sql, and a cluster of its own."""

    def __init__(self, name, checkout, workdir, port):
        self.name = name
        self.checkout = os.path.abspath(checkout)
        self.binary = os.path.join(self.checkout, "sendry-sync")
        self.install_sql = os.path.join(self.checkout, "sql", "install.sql")
        self.workdir = os.path.join(workdir, name)
        os.makedirs(self.workdir, exist_ok=True)
        self.cluster = pgharness.Cluster(supabase=True, port=port, durable=True, conf=PG_CONF)
        self.log_offset = 0

    def start(self):
        t0 = time.monotonic()
        self.cluster.start()
        self.sql("CREATE SCHEMA bench; CREATE EXTENSION pg_stat_statements SCHEMA bench", user=ADMIN)
        self.make_users(Scale.users)
        self.reinstall()
        log(f"{self.name}: cluster ready in {time.monotonic() - t0:.0f} s")

    def stop(self):
        self.cluster.stop()

    @property
    def postmaster(self):
        with open(os.path.join(self.cluster.datadir, "postmaster.pid")) as f:
            return int(f.readline())

    def connect(self, user="postgres"):
        return psycopg.connect(self.cluster.dsn_for(user), autocommit=True)

    def sql(self, text, params=None, user="postgres"):
        """Run statements; the last one's rows (or [])."""
        with self.connect(user) as conn:
            cur = conn.execute(text, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, text, params=None, user="postgres"):
        return self.sql(text, params, user)[0][0]

    def make_users(self, n):
        """n GoTrue-shaped users (user0000001@example.com ...), before any trigger exists."""
        self.sql(
            "INSERT INTO users (instance_id, id, aud, role, email, encrypted_password,"
            " confirmation_token, confirmation_sent_at, raw_app_meta_data, raw_user_meta_data,"
            " is_sso_user, is_anonymous, created_at, updated_at)"
            " SELECT %s, gen_random_uuid(), 'authenticated', 'authenticated',"
            "  'user' || lpad(g::text, 7, '0') || '@example.com',"
            "  '$2a$10$' || md5(g::text) || 'abcdefghijklmnopqrstu', md5('c' || g), now(),"
            "  '{\"provider\": \"email\", \"providers\": [\"email\"]}'::jsonb,"
            "  jsonb_build_object('first_name', 'Bench', 'last_name', 'User ' || g,"
            "                     'email_verified', false, 'sub', gen_random_uuid()::text),"
            "  false, false, now(), now()"
            " FROM generate_series(1, %s) g", (INSTANCE_ID, n), user="supabase_auth_admin")
        self.sql("VACUUM ANALYZE auth.users", user=ADMIN)

    def reinstall(self):
        """A fresh outbox: drop it (and what depends on it) and apply install.sql again.
        Backends a worker left behind (one cut short in a long statement) are ended first."""
        pids = [p for (p,) in self.sql(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'sendry-sync'", user=ADMIN)]
        if pids:
            self.sql("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) pid", (pids,), user=ADMIN)
            wait_gone(pids)
        self.sql("DROP TABLE IF EXISTS public.sendry_outbox CASCADE")
        self.cluster.psql("-f", self.install_sql)

    def backfill(self, n):
        """The README's backfill of the first n users; its duration in seconds."""
        captured = self.scalar("SELECT to_regprocedure('public.sendry_claim_render(uuid[])') IS NOT NULL")
        t0 = time.monotonic()
        self.sql((CAPTURED_BACKFILL_SQL if captured else BACKFILL_SQL) + first_users(n))
        return time.monotonic() - t0

    def autovacuum_off(self):
        self.sql("ALTER TABLE public.sendry_outbox SET (autovacuum_enabled = off)")

    def quiesce(self):
        """Before a measurement: flush dirty buffers, forget the statement statistics."""
        self.sql("CHECKPOINT", user=ADMIN)
        self.sql("SELECT bench.pg_stat_statements_reset()", user=ADMIN)
        self.log_offset = os.path.getsize(self.cluster.logfile)

    def sent(self):
        """Sent rows (counted as the superuser: only the worker's role is in statements())."""
        return self.scalar("SELECT count(*) FROM public.sendry_outbox WHERE status = 'sent'", user=ADMIN)

    def statements(self):
        """The worker role's statements since quiesce(), by total time (plan + execution)."""
        rows = self.sql(
            "SELECT s.query, s.calls, s.total_exec_time + s.total_plan_time, s.total_plan_time,"
            "       s.rows, s.toplevel"
            " FROM bench.pg_stat_statements s JOIN pg_roles r ON r.oid = s.userid"
            " WHERE r.rolname = 'postgres' AND s.calls > 0 ORDER BY 3 DESC", user=ADMIN)
        return [dict(query=q, calls=c, total_ms=t, plan_ms=p, rows=n, toplevel=top)
                for q, c, t, p, n, top in rows]

    def slow_plans(self, limit=3):
        """auto_explain's plans (statements over 250 ms) logged since quiesce(): the
        first of each statement text."""
        with open(self.cluster.logfile, errors="replace") as f:
            f.seek(self.log_offset)
            text = f.read()
        plans, current = [], None
        for line in text.splitlines():
            if "duration:" in line and "plan:" in line:
                current = [line.split("LOG:", 1)[-1].strip()]
                plans.append(current)
            elif current is not None and line.startswith(("\t", " ")):
                current.append(line.rstrip())
            else:
                current = None
        first = {}
        for p in plans:
            text = next((l.strip() for l in p if "Query Text:" in l), "")
            first.setdefault(text, "\n".join(p))
        return list(first.values())[:limit]


# --- measuring a drain -------------------------------------------------------------------

def statement_figures(stmts, rows):
    """Claims and completions (found by CLAIM_RE and COMPLETE_RE) from pg_stat_statements."""
    claim = [s for s in stmts if CLAIM_RE.search(s["query"])]
    complete = [s for s in stmts if COMPLETE_RE.search(s["query"]) and not CLAIM_RE.search(s["query"])]
    f = {}
    for name, group in (("claim", claim), ("complete", complete)):
        calls = sum(s["calls"] for s in group)
        total = sum(s["total_ms"] for s in group)
        if calls:
            f[name + "s"] = calls
            f[name + "_mean_ms"] = total / calls
            if rows:
                f[name + "_ms_k"] = total / rows * 1000
    return f


def delivered_by(fake_requests, t0_real, seconds):
    """Contacts the fake accepted within `seconds` of t0_real."""
    return sum(n for t, st, n, _ in fake_requests if 200 <= st < 300 and t - t0_real <= seconds)


def wait_gone(pids, timeout=10.0):
    end = time.monotonic() + timeout
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < end:
        time.sleep(0.01)


def drain_once(side, tag, args, expect, cap, already_sent=0):
    """`sendry-sync --once --rate 0 ARGS` over a prepared backlog of `expect` rows (besides
    `already_sent` rows sent before)."""
    fake = Fake(side.workdir, tag)
    w = sampler = None
    try:
        side.quiesce()
        sampler = Sampler(side).start()
        cpu0 = cluster_cpu(side.postmaster)
        w = Worker(side, fake, ["--once", "--rate", "0"] + list(args),
                   os.path.join(side.workdir, tag + ".log"))
        in_time = w.wait(w.t0 + cap)
        wait_gone(sampler.backend_pids())
        sampler.finish()
        db_cpu = cluster_cpu(side.postmaster) - cpu0 - sampler.monitor_cpu
    finally:
        if w:
            w.stop()
        if sampler:
            sampler.finish()
        fake.stop()
    sent = side.sent() - already_sent
    wall = w.t_end - w.t0
    reqs = fake.requests()
    f = dict(sent=sent, expect=expect, rc=w.rc, in_time=in_time, wall=wall, rows_s=sent / wall,
             rss_mb=w.hwm_kib / 1024, stmts=side.statements(), plans=side.slow_plans(),
             rows_1s=delivered_by(reqs, w.t0_real, 1.0),
             rows_5s=delivered_by(reqs, w.t0_real, 5.0) / 5.0,
             requests=sum(1 for r in reqs if r[3] != "/_stats"))
    if sent:
        f.update(db_us=db_cpu / sent * 1e6, backend_us=sampler.backend_cpu / sent * 1e6,
                 worker_us=w.cpu / sent * 1e6, backends=len(sampler.backends))
    f.update(statement_figures(f["stmts"], sent))
    f["ok"] = sent == expect and w.rc == 0
    if not f["ok"] and not in_time:
        f["problem"] = (f"{sent}/{expect} rows sent when its time cap of {cap:.0f} s ran out "
                        f"(its figures cover what it did); log {w.log_path}")
    elif not f["ok"]:
        f["problem"] = f"{sent}/{expect} rows sent, exit status {w.rc}; log {w.log_path}:\n{w.log_tail()}"
    return f


# --- scenarios: each prepares the outbox, measures, returns {figure: value} ----------------

def scenario_a(side):
    """100k backlog right after install (no statistics yet, autovacuum on), import mode."""
    side.reinstall()
    side.backfill(Scale.small)
    return drain_once(side, "a-import", [], Scale.small, Scale.cap_small)


def scenario_b(side):
    """1M backlog, statistics taken while the outbox was empty, autovacuum off for it."""
    side.reinstall()
    side.sql("ANALYZE public.sendry_outbox")
    side.autovacuum_off()
    took = side.backfill(Scale.large)
    f = drain_once(side, "b-import-large", [], Scale.large, Scale.cap_large)
    f["backfill_s"] = took
    return f


def scenario_c(side):
    """100k backlog right after install, --mode single."""
    side.reinstall()
    side.backfill(Scale.small)
    return drain_once(side, "c-single", ["--mode", "single"], Scale.small, Scale.cap_single)


def scenario_k(side):
    """10k backlog right after install: no statistics (autovacuum off for the outbox, so
    that none arrive mid-way), import mode."""
    side.reinstall()
    side.autovacuum_off()
    side.backfill(Scale.after_install)
    return drain_once(side, "k-after-install", [], Scale.after_install, Scale.cap_small)


INBOX_USERS_SQL = ("INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data,"
                   " raw_user_meta_data, is_sso_user, created_at, updated_at)"
                   " SELECT %s, gen_random_uuid(), 'authenticated', 'authenticated',"
                   "  'inbox' || g || '@example.com', '{\"provider\": \"email\"}', '{}', g %% 1000 = 0,"
                   "  now(), now() FROM generate_series(%s::int, %s::int) g")

INBOX_APPLY_SQL = "SELECT public.sendry_inbox_receive(%s, 'email.complained', %s::jsonb)"


def inbox_apply_ms(dsn, key, users, events, known):
    """Mean ms per event of `events` unsubscribes, each its own statement (as the worker
    sends them: one sendry_inbox_receive per webhook): of existing users spread over the
    table (known), or of addresses no user has; and how many were applied."""
    applied = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        t0 = time.monotonic()
        for g in range(1, events + 1):
            # Users in no order of the table (a sequential scan stopped at one user starts
            # the next scan there, synchronize_seqscans: users in the table's order would
            # each be found a few rows further).
            email = f"inbox{g * 2654435761 % users + 1}@example.com" if known else f"nobody{g}@example.com"
            r = conn.execute(INBOX_APPLY_SQL, (f"bench-{key}-{known}-{g}",
                                               json.dumps({"data": {"email": email}})))
            applied += r.fetchone()[0] == "applied"
        return (time.monotonic() - t0) / events * 1000, applied


def scenario_i(side):
    """The inbox's apply time per event at 10k and 1M users (GoTrue's indexes, one user in
    a thousand SSO), in a cluster of its own with this checkout's install.sql: the
    events are unsubscribes of existing users, then of addresses no user has, one
    statement each, as the worker sends them."""
    c = pgharness.Cluster(supabase=True, port=side.cluster.port + 100, durable=True)
    c.start()
    try:
        c.psql("-f", side.install_sql)

        def sql(text, params=None, user="postgres"):
            with psycopg.connect(c.dsn_for(user), autocommit=True) as conn:
                cur = conn.execute(text, params)
                return cur.fetchall() if cur.description else []

        f, have = {}, 0
        for users, events, key in ((10_000, Scale.inbox_events[0], "k10"),
                                   (1_000_000, Scale.inbox_events[1], "m1")):
            sql(INBOX_USERS_SQL, (INSTANCE_ID, have + 1, users), user="supabase_auth_admin")
            have = users
            sql("TRUNCATE public.sendry_outbox, public.sendry_inbox")
            sql("VACUUM ANALYZE auth.users", user=ADMIN)
            f[f"known_ms_{key}"], applied = inbox_apply_ms(c.dsn, key, users, events, True)
            f[f"unknown_ms_{key}"], _ = inbox_apply_ms(c.dsn, key, users, events, False)
            if applied != events:
                f["problem"] = f"{applied} of {events} events applied at {users} users"
        f["ok"] = "problem" not in f
        return f
    finally:
        c.stop()


SENT_ROWS_SQL = ("INSERT INTO sendry_outbox (user_id, email, payload, status, attempts,"
                 " next_attempt_at, created_at, updated_at, sent_at)"
                 " SELECT id, email, sendry_contact_payload(u), 'sent', 1, now() - interval '2 days',"
                 "        now() - interval '2 days', now() - interval '1 day', now() - interval '1 day'"
                 " FROM auth.users u WHERE email IS NOT NULL")


def scenario_d(side):
    """The claim with 1M sent rows under statistics of only those, vs a backlog alone."""
    side.reinstall()
    side.backfill(Scale.small)
    side.sql("ANALYZE public.sendry_outbox")
    side.autovacuum_off()
    ref = drain_once(side, "d-reference", [], Scale.small, Scale.cap_claim)
    side.reinstall()
    side.sql(SENT_ROWS_SQL + first_users(Scale.large))
    side.sql("VACUUM ANALYZE public.sendry_outbox")
    side.autovacuum_off()
    side.backfill(Scale.small)
    f = drain_once(side, "d-sent", [], Scale.small, Scale.cap_claim, already_sent=Scale.large)
    f["ref_claim_mean_ms"] = ref.get("claim_mean_ms")
    if f.get("claim_mean_ms") and ref.get("claim_mean_ms"):
        f["claim_ratio"] = f["claim_mean_ms"] / ref["claim_mean_ms"]
    f["ref_rows_s"] = ref["rows_s"]
    if not ref["ok"]:
        f["problem"] = "\n".join(p for p in ("the backlog alone: " + ref["problem"], f.get("problem")) if p)
    f["ok"] = f["ok"] and ref["ok"]
    f["ref_stmts"], f["ref_plans"] = ref["stmts"], ref["plans"]
    return f


def scenario_tiny(side):
    """3k backlog: the worker's RSS at a small backlog."""
    side.reinstall()
    side.backfill(Scale.tiny)
    return drain_once(side, "f-tiny", [], Scale.tiny, Scale.cap_small)


SIGNUP_SQL = ("INSERT INTO users (instance_id, id, aud, role, email, encrypted_password,"
              " raw_user_meta_data, raw_app_meta_data, is_anonymous, created_at, updated_at)"
              " VALUES (%s, gen_random_uuid(), 'authenticated', 'authenticated', %s,"
              " '$2a$10$abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstu',"
              " '{\"first_name\": \"Live\", \"last_name\": \"Signup\"}',"
              " '{\"provider\": \"email\", \"providers\": [\"email\"]}', false, now(), now())")


def signups(conn, emails, rate):
    """One GoTrue-shaped sign-up per transaction, at a steady `rate` per second:
    {email: realtime when its COMMIT returned}."""
    commits = {}
    start = time.monotonic()
    for i, email in enumerate(emails):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        conn.execute(SIGNUP_SQL, (INSTANCE_ID, email))
        commits[email] = time.time()
    return commits


def wait_arrivals(fake, emails, deadline):
    """{email: arrival realtime} once every email reached the fake (or at the deadline)."""
    while True:
        seen = fake.arrivals()
        if all(e in seen for e in emails) or time.monotonic() >= deadline:
            return seen
        time.sleep(0.05)


def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    v = sorted(values)
    return v[max(0, min(len(v) - 1, -(-len(v) * p // 100) - 1))]


def latency_figures(prefix, commits, seen):
    lat = [(seen[e] - t) * 1000 for e, t in commits.items() if e in seen]
    f = {prefix + "arrived": len(lat)}
    if lat:
        f.update({prefix + "p50_ms": percentile(lat, 50), prefix + "p99_ms": percentile(lat, 99),
                  prefix + "max_ms": max(lat)})
    return f


def wait_sent(side, n, deadline):
    while side.sent() < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return side.sent()


def idle_cpu(side, w, seconds):
    """CPU seconds per minute of an idle daemon and of its backends over `seconds`."""
    backends = [p for (p,) in side.sql("SELECT pid FROM pg_stat_activity "
                                       "WHERE application_name = 'sendry-sync'", user=ADMIN)]
    b0 = sum(proc_stat(p)[1] for p in backends if proc_stat(p))
    w0 = proc_stat(w.pid)[1]
    time.sleep(seconds)                   # the measurement window itself
    w1 = proc_stat(w.pid)[1]
    b1 = sum(proc_stat(p)[1] for p in backends if proc_stat(p))
    return {"idle_worker_s_min": (w1 - w0) / seconds * 60, "idle_backend_s_min": (b1 - b0) / seconds * 60}


def scenario_e(side):
    """Commit-to-request latency at 100 sign-ups/s, --rate 0; then the idle daemon's CPU."""
    side.reinstall()
    n = Scale.signup_rate * Scale.latency_seconds
    emails = [f"lat{i:05d}@bench.example" for i in range(n)]
    with contextlib.ExitStack() as stack:
        fake = Fake(side.workdir, "e-latency", email_log=True)
        stack.callback(fake.stop)
        w = Worker(side, fake, ["--rate", "0"], os.path.join(side.workdir, "e-latency.log"))
        stack.callback(w.stop)
        with side.connect("supabase_auth_admin") as conn:
            # The daemon is ready once a first sign-up went all the way through.
            signups(conn, ["warmup@bench.example"], 1)
            if "warmup@bench.example" not in wait_arrivals(fake, ["warmup@bench.example"],
                                                           time.monotonic() + 60):
                raise BenchError(f"the daemon never delivered a first sign-up; log {w.log_path}")
            commits = signups(conn, emails, Scale.signup_rate)
        f = latency_figures("", commits, wait_arrivals(fake, emails, time.monotonic() + 60))
        f.update(sent=wait_sent(side, n + 1, time.monotonic() + 60) - 1, expect=n)
        f.update(idle_cpu(side, w, Scale.idle_seconds))
    f["ok"] = f.get("arrived") == n and f["sent"] == n
    if not f["ok"]:
        f["problem"] = f"{f.get('arrived')}/{n} sign-ups reached the fake; log {w.log_path}"
    return f


def scenario_g(side):
    """Issue 10: 20 sign-ups made mid-way through a backfill, the fake at 100 requests/10 s."""
    side.reinstall()
    side.backfill(Scale.limited)
    total = Scale.limited + Scale.live_signups
    emails = [f"live{i:02d}@bench.example" for i in range(Scale.live_signups)]
    with contextlib.ExitStack() as stack:
        fake = Fake(side.workdir, "g-live", rate_limit="100/10", email_log=True)
        stack.callback(fake.stop)
        w = Worker(side, fake, [], os.path.join(side.workdir, "g-live.log"))
        stack.callback(w.stop)
        deadline = w.t0 + Scale.cap_limited
        fake.wait_contacts(Scale.limited // 2, deadline)
        with side.connect("supabase_auth_admin") as conn:
            commits = signups(conn, emails, 20)
        seen = wait_arrivals(fake, emails, deadline)
        fake.wait_contacts(total, deadline)
        f = latency_figures("live_", commits, seen)
        f["sent"] = wait_sent(side, total, min(deadline, time.monotonic() + 30))
    reqs = fake.requests()
    done = [t for t, st, n, _ in reqs if 200 <= st < 300 and n]
    f.update(expect=total, drain_s=max(done) - w.t0_real if done else None,
             n429=sum(1 for r in reqs if r[1] == 429))
    f["ok"] = f["sent"] == total
    if not f["ok"]:
        f["problem"] = f"{f['sent']}/{total} rows sent; log {w.log_path}"
    return f


def scenario_h(side):
    """Issue 10: three daemons, one database, the fake at 100 requests/10 s."""
    side.reinstall()
    side.backfill(Scale.limited)
    with contextlib.ExitStack() as stack:
        fake = Fake(side.workdir, "h-multi", rate_limit="100/10")
        stack.callback(fake.stop)
        ws = []
        for i in range(Scale.daemons):
            ws.append(Worker(side, fake, [], os.path.join(side.workdir, f"h-multi-{i + 1}.log")))
            stack.callback(ws[-1].stop)
        t0_real, deadline = ws[0].t0_real, ws[0].t0 + Scale.cap_limited
        fake.wait_contacts(Scale.limited, deadline)
        sent = wait_sent(side, Scale.limited, min(deadline, time.monotonic() + 30))
    reqs = fake.requests()
    done = [t for t, st, n, _ in reqs if 200 <= st < 300 and n]
    f = dict(sent=sent, expect=Scale.limited, n429=sum(1 for r in reqs if r[1] == 429))
    if done:
        f["drain_s"] = max(done) - t0_real
        admitted = sum(1 for t, st, _, _ in reqs if 200 <= st < 300 and t <= max(done))
        f["achieved_rps"] = admitted / f["drain_s"]
        f["utilisation_pct"] = f["achieved_rps"] / 10 * 100
    f["ok"] = sent == Scale.limited
    if not f["ok"]:
        f["problem"] = f"{sent}/{Scale.limited} rows sent; logs {side.workdir}/h-multi-*.log"
    return f


TRACK_SQL = ("SELECT count(public.sendry_track('bench.event', u.id, jsonb_build_object('n', 1)))"
             " FROM auth.users u WHERE u.email BETWEEN %s AND %s")


def has_events(side):
    """Whether the checkout's SQL has events (issue 18): sendry_track exists."""
    return side.scalar("SELECT to_regprocedure('public.sendry_track(text, uuid, jsonb, boolean)')"
                       " IS NOT NULL")


def wait_events(fake, n, deadline):
    while len(fake.event_times()) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    return fake.event_times()


def scenario_l(side):
    """Issue 18: events enqueued (sendry_track, live) while a contact backfill flows, the
    fake at 100 requests/10 s: events/s, and contacts and requests over the same window."""
    side.reinstall()
    if not has_events(side):
        return {"ok": True, "skipped": "no events in this checkout"}
    side.backfill(Scale.limited)
    n = Scale.events
    total = Scale.limited + n
    with contextlib.ExitStack() as stack:
        fake = Fake(side.workdir, "l-events", rate_limit="100/10", email_log=True)
        stack.callback(fake.stop)
        w = Worker(side, fake, [], os.path.join(side.workdir, "l-events.log"))
        stack.callback(w.stop)
        deadline = w.t0 + Scale.cap_events
        fake.wait_contacts(Scale.limited // 10, deadline)          # the contacts are flowing
        side.sql(TRACK_SQL, (user_email(Scale.limited + 1), user_email(Scale.limited + n)))
        times = wait_events(fake, n, deadline)
        fake.wait_contacts(Scale.limited, deadline)
        sent = wait_sent(side, total, min(deadline, time.monotonic() + 30))
    reqs = fake.requests()
    f = dict(events=len(times), sent=sent, expect=total, n429=sum(1 for r in reqs if r[1] == 429))
    if len(times) >= 2:
        first, last = times[0], times[-1]
        window = [r for r in reqs if first <= r[0] <= last and 200 <= r[1] < 300]
        f.update(events_s=(len(times) - 1) / (last - first), window_s=last - first,
                 contacts_s=sum(r[2] for r in window) / (last - first),
                 requests_s=len(window) / (last - first))
    f["ok"] = sent == total and len(times) == n
    if not f["ok"]:
        f["problem"] = f"{sent}/{total} rows sent, {len(times)}/{n} events; log {w.log_path}"
    return f


def scenario_m(side):
    """Issue 18: sign-ups with user.signed_up on, --rate 0: commit-to-request latency of
    the event (and of the contact, whose request goes first)."""
    side.reinstall()
    if not has_events(side):
        return {"ok": True, "skipped": "no events in this checkout"}
    n = Scale.event_signup_rate * Scale.latency_seconds
    emails = [f"evlat{i:05d}@bench.example" for i in range(n)]
    side.sql("UPDATE public.sendry_settings SET events = '{user.signed_up}'")
    try:
        with contextlib.ExitStack() as stack:
            fake = Fake(side.workdir, "m-event-latency", email_log=True)
            stack.callback(fake.stop)
            w = Worker(side, fake, ["--rate", "0"], os.path.join(side.workdir, "m-event-latency.log"))
            stack.callback(w.stop)
            with side.connect("supabase_auth_admin") as conn:
                signups(conn, ["evwarmup@bench.example"], 1)
                if "event:evwarmup@bench.example" not in wait_arrivals(
                        fake, ["event:evwarmup@bench.example"], time.monotonic() + 60):
                    raise BenchError(f"the daemon never delivered a first event; log {w.log_path}")
                commits = signups(conn, emails, Scale.event_signup_rate)
            keys = ["event:" + e for e in emails]
            seen = wait_arrivals(fake, keys, time.monotonic() + 60)
            f = latency_figures("", {"event:" + e: t for e, t in commits.items()}, seen)
            f.update(latency_figures("contact_", commits, seen))
            f.update(sent=wait_sent(side, 2 * (n + 1), time.monotonic() + 60), expect=2 * (n + 1))
    finally:
        side.sql("UPDATE public.sendry_settings SET events = '{}'")
    f["ok"] = f.get("arrived") == n and f["sent"] == f["expect"]
    if not f["ok"]:
        f["problem"] = f"{f.get('arrived')}/{n} events reached the fake; log {w.log_path}"
    return f


def scenario_n(side):
    """Commit-to-request latency at 1,000 sign-ups/s (issue 17), --rate 0: the sign-ups come
    from several connections at once, as from an app's pool (one connection's commits,
    each waiting for its fsync, could not keep that pace)."""
    side.reinstall()
    per = Scale.fast_rate * Scale.fast_seconds // Scale.fast_connections
    shares = [[f"fast{c}-{i:05d}@bench.example" for i in range(per)] for c in range(Scale.fast_connections)]
    emails = [e for share in shares for e in share]
    with contextlib.ExitStack() as stack:
        fake = Fake(side.workdir, "n-latency", email_log=True)
        stack.callback(fake.stop)
        w = Worker(side, fake, ["--rate", "0"], os.path.join(side.workdir, "n-latency.log"))
        stack.callback(w.stop)
        conns = [stack.enter_context(side.connect("supabase_auth_admin")) for _ in shares]
        signups(conns[0], ["warmup-n@bench.example"], 1)
        if "warmup-n@bench.example" not in wait_arrivals(fake, ["warmup-n@bench.example"], time.monotonic() + 60):
            raise BenchError(f"the daemon never delivered a first sign-up; log {w.log_path}")
        commits = {}
        with concurrent.futures.ThreadPoolExecutor(len(shares)) as pool:
            rate = Scale.fast_rate / len(shares)
            for done in pool.map(lambda cs: signups(cs[0], cs[1], rate), zip(conns, shares)):
                commits.update(done)
        f = latency_figures("", commits, wait_arrivals(fake, emails, time.monotonic() + 60))
        f.update(sent=wait_sent(side, len(emails) + 1, time.monotonic() + 60) - 1, expect=len(emails))
    f["ok"] = f.get("arrived") == len(emails) and f["sent"] == len(emails)
    if not f["ok"]:
        f["problem"] = f"{f.get('arrived')}/{len(emails)} sign-ups reached the fake; log {w.log_path}"
    return f


class BenchError(Exception):
    """The bench itself could not go on (not a slow worker: that is a figure)."""


SCENARIOS = [("a", scenario_a), ("b", scenario_b), ("c", scenario_c), ("d", scenario_d),
             ("e", scenario_e), ("f", scenario_tiny), ("g", scenario_g), ("h", scenario_h),
             ("i", scenario_i), ("k", scenario_k), ("l", scenario_l), ("m", scenario_m),
             ("n", scenario_n)]


def scenario_title(sc):
    """The table's section title of a scenario (f: its own run, the 3k backlog)."""
    if sc == "f":
        return f"{kfmt(Scale.tiny)} backlog, --once --rate 0 (worker RSS)"
    return next(t for t, *_ in table_rows() if t and t.startswith(sc + ". "))[3:]


# --- the table ---------------------------------------------------------------------------

def table_rows():
    """(section title or None, key 'scenario.field', label, goal op, goal value)."""
    S = Scale
    return [
        (f"a. {kfmt(S.small)} backlog right after install (no statistics yet), --mode import "
         "--rate 0 --once", None, None, None, None),
        (None, "a.rows_s", "rows/s", None, None),
        (None, "a.db_us", "database CPU per row, whole cluster (µs)", "<=", 20),
        (None, "a.backend_us", "  of it the worker's backend(s) (µs)", None, None),
        (None, "a.worker_us", "worker process CPU per row (µs)", None, None),
        (None, "a.claims", "claims (statements)", None, None),
        (None, "a.completes", "completions (statements)", None, None),
        (None, "a.claim_ms_k", "claim ms per 1000 rows", None, None),
        (None, "a.complete_ms_k", "completion ms per 1000 rows", None, None),
        (None, "a.rss_mb", "worker RSS peak, VmHWM (MiB)", "<=", 16),
        (f"b. {kfmt(S.large)} backlog, stale statistics (ANALYZE while empty), autovacuum off",
         None, None, None, None),
        (None, "b.backfill_s", "the backfill INSERT ... SELECT (s)", None, None),
        (None, "b.rows_1s", "rows/s over the first 1 s", ">=", 30000),
        (None, "b.rows_5s", "rows/s over the first 5 s", ">=", 30000),
        (None, "b.rows_s", "rows/s overall", ">=", 30000),
        (None, "b.db_us", "database CPU per row, whole cluster (µs)", "<=", 20),
        (None, "b.backend_us", "  of it the worker's backend(s) (µs)", None, None),
        (None, "b.worker_us", "worker process CPU per row (µs)", None, None),
        (None, "b.claim_mean_ms", "mean claim (ms)", None, None),
        (None, "b.claim_ms_k", "claim ms per 1000 rows", None, None),
        (None, "b.complete_ms_k", "completion ms per 1000 rows", None, None),
        (f"c. {kfmt(S.small)} backlog right after install, --mode single --rate 0 --once", None, None, None, None),
        (None, "c.rows_s", "rows/s", ">=", 10000),
        (None, "c.db_us", "database CPU per row, whole cluster (µs)", None, None),
        (None, "c.claims", "claims (statements)", None, None),
        (None, "c.completes", "completions (statements)", None, None),
        (f"d. claim with {kfmt(S.large)} sent rows, statistics taken with only those, "
         f"{kfmt(S.small)} backlog", None, None, None, None),
        (None, "d.ref_claim_mean_ms", "mean claim, the backlog alone, fresh statistics (ms)", None, None),
        (None, "d.claim_mean_ms", f"mean claim with {kfmt(S.large)} sent rows (ms)", None, None),
        (None, "d.claim_ratio", "ratio", "<=", 1.5),
        (None, "d.ref_rows_s", "rows/s, the backlog alone", None, None),
        (None, "d.rows_s", f"rows/s with {kfmt(S.large)} sent rows", None, None),
        (f"e. {S.signup_rate} sign-ups/s for {S.latency_seconds} s, daemon --rate 0",
         None, None, None, None),
        (None, "e.arrived", "sign-ups that reached the fake", None, None),
        (None, "e.p50_ms", "commit-to-request p50 (ms)", None, None),
        (None, "e.p99_ms", "commit-to-request p99 (ms)", "<=", 5),
        (None, "e.max_ms", "commit-to-request max (ms)", None, None),
        ("f. worker memory and idle CPU", None, None, None, None),
        (None, "f.rss_mb", f"worker RSS at {kfmt(S.tiny)} backlog (MiB)", "<=", 16),
        (None, "a.rss_mb", f"worker RSS at {kfmt(S.small)} backlog (MiB)", "<=", 16),
        (None, "b.rss_mb", f"worker RSS at {kfmt(S.large)} backlog (MiB)", "<=", 16),
        (None, "e.idle_worker_s_min", f"idle daemon CPU over {S.idle_seconds} s (s per minute)", None, None),
        (None, "e.idle_backend_s_min", "  its backend(s) (s per minute)", None, None),
        (f"g. issue 10: {S.live_signups} sign-ups mid-way through a {kfmt(S.limited)} backfill, "
         "fake at 100 req/10 s, default --rate", None, None, None, None),
        (None, "g.live_arrived", f"live sign-ups that reached the fake (of {S.live_signups})", None, None),
        (None, "g.live_p50_ms", "live commit-to-request p50 (ms)", None, None),
        (None, "g.live_p99_ms", "live commit-to-request p99 (ms)", "<=", 1000),
        (None, "g.live_max_ms", "live commit-to-request max (ms)", None, None),
        (None, "g.drain_s", "drain time (s)", None, None),
        (None, "g.n429", "429 answers", None, None),
        (f"h. issue 10: {S.daemons} daemons, a {kfmt(S.limited)} backfill, fake at 100 req/10 s",
         None, None, None, None),
        (None, "h.achieved_rps", "admitted requests/s (allowed: 10/s)", None, None),
        (None, "h.utilisation_pct", "utilisation of the allowed rate (%)", ">=", 90),
        (None, "h.n429", "429 answers", "==", 0),
        (None, "h.drain_s", "drain time (s)", None, None),
        ("i. issue 16: the inbox's apply time per unsubscribe (one statement each, as webhooks arrive)",
         None, None, None, None),
        (None, "i.known_ms_k10", f"a user's, at 10k users (ms per event, {S.inbox_events[0]} events)", None, None),
        (None, "i.unknown_ms_k10", "an address no user has, at 10k users (ms per event)", None, None),
        (None, "i.known_ms_m1", f"a user's, at 1M users (ms per event, {S.inbox_events[1]} events)", None, None),
        (None, "i.unknown_ms_m1", "an address no user has, at 1M users (ms per event)", None, None),
        (f"k. issue 16: {kfmt(S.after_install)} backlog right after install (no statistics, autovacuum "
         "off for the outbox), --once --rate 0", None, None, None, None),
        (None, "k.rows_s", "rows/s", None, None),
        (None, "k.complete_mean_ms", "mean completion (ms)", None, None),
        (None, "k.complete_ms_k", "completion ms per 1000 rows", None, None),
        (None, "k.db_us", "database CPU per row, whole cluster (µs)", None, None),
        (f"l. issue 18: {S.events} events (sendry_track) enqueued while a {kfmt(S.limited)} contact "
         "backfill flows, fake at 100 req/10 s, default --rate", None, None, None, None),
        (None, "l.events", f"events that reached the fake (of {S.events})", None, None),
        (None, "l.events_s", "events/s, first to last event", None, None),
        (None, "l.contacts_s", "  contacts/s over the same window", None, None),
        (None, "l.requests_s", "  requests/s admitted over the same window (allowed: 10/s)", None, None),
        (None, "l.n429", "429 answers", None, None),
        (f"m. issue 18: {S.event_signup_rate} sign-ups/s for {S.latency_seconds} s with user.signed_up "
         "on, daemon --rate 0", None, None, None, None),
        (None, "m.arrived", "events that reached the fake", None, None),
        (None, "m.p50_ms", "event commit-to-request p50 (ms)", None, None),
        (None, "m.p99_ms", "event commit-to-request p99 (ms)", None, None),
        (None, "m.max_ms", "event commit-to-request max (ms)", None, None),
        (None, "m.contact_p50_ms", "  the contact's, p50 (ms)", None, None),
        (None, "m.contact_p99_ms", "  the contact's, p99 (ms)", None, None),
        (f"n. issue 17: {S.fast_rate} sign-ups/s for {S.fast_seconds} s from {S.fast_connections} "
         "connections, daemon --rate 0", None, None, None, None),
        (None, "n.arrived", "sign-ups that reached the fake", None, None),
        (None, "n.p50_ms", "commit-to-request p50 (ms)", None, None),
        (None, "n.p99_ms", "commit-to-request p99 (ms)", "<=", 10),
        (None, "n.max_ms", "commit-to-request max (ms)", None, None),
    ]


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, int) or v == 0:
        return f"{int(v):,}"
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 0.1 else f"{v:.3f}"


def goal_text(op, goal):
    return "" if op is None else {"<=": "≤ ", ">=": "≥ ", "==": "= "}[op] + fmt(goal)


def goal_cells(op, goal, v):
    """(ratio to the goal, met?) cells."""
    if op is None or v is None:
        return "", ""
    met = {"<=": v <= goal, ">=": v >= goal, "==": v == goal}[op]
    return ("" if goal == 0 else f"{v / goal:.2f}"), ("yes" if met else "NO")


def value(results, side, key):
    sc, field = key.split(".", 1)
    return results.get(side, {}).get(sc, {}).get(field)


def print_table(results, sides, ceiling):
    names = [s.name for s in sides]
    two = len(names) == 2
    head = ["figure", "goal"] + names + (["change"] if two else []) + ["ratio/goal", "met"]
    lines = []
    for title, key, label, op, goal in table_rows():
        if title:
            lines.append([title])
            continue
        vals = [value(results, n, key) for n in names]
        row = [label, goal_text(op, goal)] + [fmt(v) for v in vals]
        if two:
            row.append(f"×{vals[1] / vals[0]:.2f}" if vals[0] and vals[1] is not None else "")
        row += list(goal_cells(op, goal, vals[-1]))
        lines.append(row)
    widths = [max(len(r[i]) for r in lines + [head] if len(r) > 1) for i in range(len(head))]

    def out(r):
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        print("  ".join(cells).rstrip())

    print(f"fake API ceiling (build/fastapi from build/fastload, 4 keep-alive connections): "
          f"{fmt(ceiling['fake.single_rps'])} POST /v1/contacts per s; "
          f"{fmt(ceiling['fake.import_rows_s'])} contacts/s in imports of 1000")
    out(head)
    for r in lines:
        if len(r) == 1:
            print(r[0])
        else:
            out(r)
    print("ratio/goal and met refer to the last column"
          + (f" ({names[-1]}); change = {names[1]} / {names[0]}" if two else ""))


def short_sql(q, width=100):
    q = " ".join(q.split())
    return q if len(q) <= width else q[:width - 1] + "…"


# (scenario, its statements' field, its plans' field, title) of the drains measured.
DRAINS = (("a", "stmts", "plans", "a"), ("b", "stmts", "plans", "b"), ("c", "stmts", "plans", "c"),
          ("k", "stmts", "plans", "k"),
          ("d", "ref_stmts", "ref_plans", "d, the backlog alone"),
          ("d", "stmts", "plans", "d, with sent rows"))


def print_statements(results, sides):
    print("\nwhere the database time goes: the worker role's statements (pg_stat_statements, "
          "track = all, plan + execution), top 6 by total time")
    for sc, field, _, title in DRAINS:
        for side in sides:
            stmts = results.get(side.name, {}).get(sc, {}).get(field)
            if not stmts:
                continue
            total = sum(s["total_ms"] for s in stmts if s["toplevel"])
            print(f"-- {title} / {side.name}: {fmt(total)} ms in top-level statements")
            print(f"   {'calls':>7} {'total ms':>10} {'mean ms':>9} {'plan ms':>8} {'rows/call':>9}  query")
            for s in stmts[:6]:
                nest = "" if s["toplevel"] else "(nested) "
                print(f"   {s['calls']:>7,} {s['total_ms']:>10,.1f} {s['total_ms'] / s['calls']:>9.3f} "
                      f"{s['plan_ms']:>8.1f} {s['rows'] / s['calls']:>9.1f}  {nest}{short_sql(s['query'])}")


def print_plans(results, sides):
    shown = False
    for sc, _, field, title in DRAINS:
        for side in sides:
            for plan in results.get(side.name, {}).get(sc, {}).get(field) or []:
                if not shown:
                    print("\nplans of statements slower than 250 ms (auto_explain, estimates), "
                          "the first of each statement")
                    shown = True
                lines = plan.splitlines()
                print(f"-- {title} / {side.name}:")
                print("\n".join("   " + l for l in lines[:40]) + ("\n   ..." if len(lines) > 40 else ""))


# --- the run -----------------------------------------------------------------------------

def summary(f):
    if not f.get("ok") and "sent" not in f:
        return "could not run"
    if f.get("skipped"):
        return f"skipped: {f['skipped']}"
    parts = [f"{f.get('sent')}/{f.get('expect')} rows"] if "sent" in f else []
    for key, unit in (("rows_s", "rows/s"), ("db_us", "µs/row in the database"),
                      ("claim_mean_ms", "ms per claim"), ("p99_ms", "ms p99"),
                      ("live_p99_ms", "ms live p99"), ("events_s", "events/s"), ("n429", "429s"),
                      ("drain_s", "s to drain"),
                      ("known_ms_k10", "ms per inbox event at 10k users"),
                      ("known_ms_m1", "ms per inbox event at 1M users"),
                      ("unknown_ms_m1", "ms per unknown address at 1M users")):
        if f.get(key) is not None:
            parts.append(f"{fmt(f[key])} {unit}")
    return ", ".join(parts) + ("" if f.get("ok") else " — INCOMPLETE")


def describe(checkout):
    """'<short commit>' of a checkout, '+' when its work tree differs."""
    def git(*a):
        return subprocess.run(["git", "-C", checkout] + list(a), stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "?"
    return commit + ("+" if git("status", "--porcelain", "--untracked-files=no") else "")


def build_baseline(checkout):
    log(f"building the baseline: make -C {checkout} sendry-sync")
    r = subprocess.run(["make", "-C", checkout, "sendry-sync"], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise BenchError(f"make -C {checkout} sendry-sync failed:\n{r.stdout[-3000:]}")


def run(args, workdir):
    for tool in ("fastapi", "fastload"):
        if not os.access(os.path.join(ROOT, "build", tool), os.X_OK):
            raise BenchError(f"build/{tool} is missing: run make bench (or make build/{tool})")
    if not os.access(os.path.join(ROOT, "sendry-sync"), os.X_OK):
        raise BenchError("./sendry-sync is missing: run make bench (or make)")
    checkouts = [("this", ROOT)]
    if args.baseline:
        build_baseline(args.baseline)
        checkouts.insert(0, ("baseline", args.baseline))
    only = set(args.only.split(",")) if args.only else None
    log(f"{'quick' if QUICK else 'full'} run; measuring the fake API's ceiling")
    ceiling = fake_ceiling(workdir)
    sides, results = [], {}
    port = 20000 + os.getpid() % 20000
    try:
        for i, (name, checkout) in enumerate(checkouts):
            log(f"{name} = {checkout} @ {describe(checkout)}: cluster with {kfmt(Scale.users)} users")
            sides.append(Side(name, checkout, workdir, port + i))
            sides[-1].start()
        for sc, fn in SCENARIOS:
            if only and sc not in only:
                continue
            for side in sides:
                log(f"{sc}/{side.name}: {scenario_title(sc)}")
                t0 = time.monotonic()
                try:
                    f = fn(side)
                except (BenchError, psycopg.Error, RuntimeError, OSError, subprocess.SubprocessError) as e:
                    f = {"ok": False, "problem": f"could not run: {e}"}
                results.setdefault(side.name, {})[sc] = f
                log(f"{sc}/{side.name}: {summary(f)} ({time.monotonic() - t0:.0f} s)")
    finally:
        for side in sides:
            side.stop()
    return sides, results, ceiling


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="another checkout to measure too (built there first)")
    ap.add_argument("--only", help="comma-separated scenario letters, e.g. a,d (development)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = ap.parse_args()
    # SIGTERM (make interrupted) unwinds like ^C: workers, fakes and clusters are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = tempfile.mkdtemp(prefix="sendry-make-bench-")
    os.chmod(workdir, 0o755)
    # The clusters' directories (pgharness: mkdtemp) go in here too, out of the way of
    # anything that cleans up /tmp/sendry-pg-* on this shared machine.
    tempfile.tempdir = workdir
    started = time.monotonic()
    try:
        sides, results, ceiling = run(args, workdir)
    except (BenchError, RuntimeError, psycopg.Error, OSError, subprocess.SubprocessError) as e:
        print(f"bench: could not run: {e} (work directory {workdir})", file=sys.stderr)
        return 2
    print()
    print("make bench: " + "; ".join(f"{s.name} = {s.checkout} @ {describe(s.checkout)}" for s in sides)
          + f"; {'BENCH_QUICK=1, scaled down' if QUICK else 'full run'}; PostgreSQL with fsync on")
    print_table(results, sides, ceiling)
    print_statements(results, sides)
    print_plans(results, sides)
    problems = [(sc, n, f["problem"]) for n, r in results.items() for sc, f in r.items() if not f.get("ok")]
    for sc, name, text in problems:
        print(f"\n{sc}/{name} did not deliver everything: {text}")
    print(f"\nbench: {time.monotonic() - started:.0f} s; "
          + (f"{len(problems)} scenario(s) incomplete; logs kept in {workdir}" if problems
             else "every scenario delivered all its rows"))
    if not problems and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
