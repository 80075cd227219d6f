#!/usr/bin/python3
"""make chaos: the real worker under the faults production meets, one table row a fault.

    make chaos                    the full suite (a 20,000-row backfill and 10 kills; minutes)
    make chaos CHAOS_QUICK=1      the short version (a few hundred rows a scenario); the same
                                  scenarios run in `make check` through tests/test_chaos.py
    /usr/bin/python3 tests/chaos.py [--quick] [--only NAME]... [--seed N] [--keep-logs DIR]
    SENDRY_SYNC_BIN=$PWD/sendry-sync-asan ...   against the ASan/UBSan build
    CHAOS_WORKER_FLAGS=--verbose ...            more flags for every worker (last wins)

One throwaway Supabase-shaped PostgreSQL (tests/pgharness.py) for the whole run; each
scenario starts on a truncated outbox and auth.users with users of its own, a fresh fake
Sendry (tests/fake_sendry.py) and the real ./sendry-sync ($SENDRY_SYNC_BIN) as daemons.
A backlog of existing users is backfilled with the README's INSERT ... SELECT statement
(captured rows: `INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users`), and while
the fault runs, sign-ups and email changes come in as GoTrue makes them (live rows
mixed with the bulk ones, moves of contacts among them).

  kill9_backfill            one worker SIGKILLed at random points (each time after it has
                            sent something) and started again, K times, during the backfill
  three_workers_one_killed  three workers share the backlog; the one holding the most rows
                            is SIGKILLed and not restarted: its rows come back after --lease
  pg_restart_fast           pg_ctl restart -m fast while requests are in flight
  pg_restart_immediate      the same with -m immediate (a crash: the worker's last commits,
                            asynchronous in the test cluster, can be lost)
  storm_429                 60% of the writes answered 429 with Retry-After: 1 for a while
  storm_5xx                 60% of the writes answered 500, 502 or 503 for a while
  api_down                  the fake stops listening (connections refused) for a while

The app's writes (sign-ups, email changes, the backfill) are made durable before a
restart, as PostgreSQL's default synchronous_commit does; the worker's own commits
(claims, outcomes) stay asynchronous, as the test cluster sets them, so that an immediate
restart loses some of them. Every fault is transient and the workers' retry budget
(--max-attempts 100, backoff up to 1 s) outlasts it.

Columns:
  users       users in auth.users at the end (with an email), the scenario's own
  enqueued    rows in sendry_outbox at the end: the backfill's, and what the triggers
              wrote for the sign-ups and email changes made during the run
  delivered   users whose contact at the fake equals what the mapping renders for them at
              the end (sendry_render_contacts: email, first_name, last_name, metadata), who
              are in the audience, and for whom no other contact at the fake carries their
              supabase_user_id (an old address left behind by an email change)
  lost        users not delivered although none of their rows is still pending or
              processing (the outbox says done: their rows say sent, or failed), an old
              address of theirs left at the fake among them (a duplicate contact, still
              mailed); plus users with a failed row: every fault here is transient, so a
              failed row is a change given up on. Must be 0.
  dup_writes  contact writes the fake applied (a 2xx to an import, POST /v1/contacts, or
              PATCH/PUT of a contact) that repeat an earlier applied write of the same body
              for the same user: the sum over (user, body) of (times applied - 1). A write
              repeated because its answer never reached the worker (the worker was killed,
              the API went down while it was answering, the database lost the record of the
              claim or of the outcome) counts; a 429 or 5xx changed nothing and does not.
              At-least-once: these are expected from the kill and immediate-restart faults,
              and are harmless (the same upsert twice); never from the storms or a fast
              restart, which lose no answer and no commit (a scenario fails if they show any).
  events      event rows in the outbox: user.signed_up and user.email_changed are on
              (sendry_settings.events) for every scenario, so the app's sign-ups and email
              changes during the fault emit them (the backfill does not)
  ev_lost     event rows failed, or sent without Sendry having their event_id; plus events
              at the fake ingested before their contact was there (out of order) or with no
              row of ours. Must be 0.
  ev_dedupes  event requests the fake answered `deduped: true` (their event_id was ingested
              already): the repeats the kill and immediate-restart faults cause, each
              ingested once; never from the storms or a fast restart
  stuck       rows still pending or processing once the fault was over and the deadline
              passed (the deadline allows --lease several times over and the backlog at a
              slow pace). Must be 0.
  seconds     from the first worker's start to every row finished (or to the deadline)

Exit status 1 if any scenario has lost or stuck rows, a worker that crashed or exited on
its own, an exit status other than 0 on SIGTERM, or a sanitizer report in a log; else 0.
"""

import argparse
import collections
import dataclasses
import json
import os
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import psycopg  # noqa: E402

import pgharness  # noqa: E402
from conftest import AUDIENCE, INSTANCE_ID, Db, Worker, wait_until, worker_env  # noqa: E402
from fake_sendry import FakeSendry  # noqa: E402

SCENARIOS = ("kill9_backfill", "three_workers_one_killed", "pg_restart_fast", "pg_restart_immediate",
             "storm_429", "storm_5xx", "api_down")
IMPORT = "/v1/contacts/import"
# The README's backfill: captured rows, each rendered through the mapping at its claim.
BACKFILL = "INSERT INTO public.sendry_outbox (user_id) SELECT id FROM auth.users u WHERE email IS NOT NULL"
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")
T = 60.0   # waiting for a worker's state: generous, for the ASan build on two cores


@dataclasses.dataclass(frozen=True)
class Sizes:
    backfill: int        # existing users backfilled in kill9_backfill
    kills: int           # SIGKILLs in kill9_backfill
    rows: int            # existing users backfilled in each other scenario
    restarts: int        # PostgreSQL restarts in each pg_restart_* scenario
    fault_seconds: float  # how long a storm or the API being down lasts
    live_ops: int        # at most this many sign-ups and email changes during a scenario
    batch: int           # --batch-size
    http_timeout: float  # --http-timeout (--lease is 4 times it, the shortest allowed)


FULL = Sizes(backfill=20000, kills=10, rows=5000, restarts=3, fault_seconds=10, live_ops=600,
             batch=250, http_timeout=2)
QUICK = Sizes(backfill=400, kills=3, rows=300, restarts=1, fault_seconds=3, live_ops=40,
              batch=25, http_timeout=1)


@dataclasses.dataclass
class Result:
    scenario: str
    users: int = 0
    enqueued: int = 0
    delivered: int = 0
    lost: int = 0
    dup_writes: int = 0
    stuck: int = 0
    events: int = 0
    events_lost: int = 0
    event_dedupes: int = 0
    seconds: float = 0.0
    problems: list = dataclasses.field(default_factory=list)   # crashes, sanitizer reports
    notes: list = dataclasses.field(default_factory=list)      # what the fault met
    details: list = dataclasses.field(default_factory=list)    # examples of lost/stuck users

    @property
    def ok(self):
        return self.lost == 0 and self.stuck == 0 and self.events_lost == 0 and not self.problems


# The built-in events on in every scenario: the app's sign-ups and email changes emit them.
EVENTS = ("user.signed_up", "user.email_changed")


# --- the app: sign-ups and email changes while the fault runs -------------------------------

class Load(threading.Thread):
    """Sign-ups and email changes as GoTrue makes them (role supabase_auth_admin), each
    committed synchronously, at a steady pace, until max_ops are done or it is stopped.
    A statement the database refused (it is restarting) just did not happen."""

    def __init__(self, cluster, prefix, user_ids, rng, max_ops, pace=0.03):
        super().__init__(name=f"load-{prefix}", daemon=True)
        self.cluster, self.prefix, self.rng = cluster, prefix, rng
        self.user_ids = list(user_ids)
        self.max_ops, self.pace = max_ops, pace
        self.ops = self.errors = 0
        self.halt = threading.Event()
        self.going = threading.Event()    # cleared: the app writes nothing for a while
        self.going.set()
        self.parked = threading.Event()   # set while it waits for `going`

    def _connect(self):
        return psycopg.connect(self.cluster.dsn_for("supabase_auth_admin"), autocommit=True,
                               options="-c synchronous_commit=on", connect_timeout=5)

    def _one(self, conn, n):
        if self.user_ids and self.rng.random() < 0.4:
            uid = self.rng.choice(self.user_ids)
            conn.execute("UPDATE auth.users SET email = %s, updated_at = now() WHERE id = %s",
                         (f"{self.prefix}-moved{n:05d}@example.com", uid))
            return
        uid = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_user_meta_data,"
            " raw_app_meta_data, is_anonymous, created_at, updated_at)"
            " VALUES (%s, %s, 'authenticated', 'authenticated', %s, %s, %s, false, now(), now())",
            (INSTANCE_ID, uid, f"{self.prefix}-new{n:05d}@example.com",
             json.dumps({"first_name": f"New{n}", "last_name": self.prefix}),
             json.dumps({"provider": "email", "providers": ["email"]})))
        self.user_ids.append(uid)

    def _park(self):
        if not self.going.is_set():
            self.parked.set()
            self.going.wait()
            self.parked.clear()

    def run(self):
        conn = None
        while not self.halt.is_set() and self.ops < self.max_ops:
            self._park()
            try:
                conn = conn or self._connect()
                self._one(conn, self.ops)
                self.ops += 1
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                self.halt.wait(0.2)   # pacing while the database is away
            self.halt.wait(self.pace)
        if conn is not None:
            conn.close()

    def pause(self):
        """No more writes until resume(); returns once the one under way is done."""
        self.going.clear()
        wait_until(lambda: self.parked.is_set() or not self.is_alive(), T, "the app's writes paused")

    def resume(self):
        self.going.set()

    def finish(self, timeout):
        """Lets it make the rest of its writes (for up to timeout), then stops it."""
        self.resume()
        self.join(timeout=timeout)
        self.halt.set()
        self.join(timeout=30)


# --- one scenario's world ---------------------------------------------------------------

class Run:
    """A scenario's fresh outbox and users, its fake Sendry, its workers and its load."""

    def __init__(self, name, cluster, sizes, logdir, rng):
        self.name, self.cluster, self.sizes, self.rng = name, cluster, sizes, rng
        self.logdir = logdir
        self.db = Db(cluster)
        self.db.truncate()
        self.db.query("TRUNCATE public.sendry_enqueue_errors, public.sendry_inbox")
        self.db.query(f"UPDATE public.sendry_settings SET events = '{{{','.join(EVENTS)}}}'")
        self.fake = FakeSendry(audience_id=AUDIENCE, rate_limit=None)
        self.fake.start()
        self.workers, self.killed = [], set()
        self.load = None
        self.started_at = None
        self.notes = []
        self.problems = []
        self.after_stop = None   # a note that needs the stopped workers' logs

    # the backlog and the app
    def backfill(self, n):
        """n users who signed up before sendry-sync (no outbox rows), then the backfill."""
        self.db.query("ALTER TABLE auth.users DISABLE TRIGGER USER", user=pgharness.Cluster.SUPERUSER)
        try:
            self.db.signup_many(n, prefix=f"{self.name[:12]}-old")
        finally:
            self.db.query("ALTER TABLE auth.users ENABLE TRIGGER USER", user=pgharness.Cluster.SUPERUSER)
        self.db.query(BACKFILL)
        self.durable()

    def durable(self):
        """What was committed so far survives a crash (as with synchronous_commit on)."""
        self.db.query("CHECKPOINT", user=pgharness.Cluster.SUPERUSER)

    def start_load(self):
        ids = [r["id"] for r in self.db.query("SELECT id::text AS id FROM auth.users")]
        self.load = Load(self.cluster, self.name[:12], ids, random.Random(self.rng.random()),
                         self.sizes.live_ops)
        self.load.start()

    # workers
    def flags(self):
        t = self.sizes.http_timeout
        return ["--poll-interval", "0.5", "--backoff-base", "0.1", "--backoff-cap", "1", "--rate", "0",
                "--max-attempts", "100", "--reconcile-interval", "0", "--batch-size", str(self.sizes.batch),
                "--http-timeout", str(t), "--lease", str(4 * t),
                *os.environ.get("CHAOS_WORKER_FLAGS", "").split()]

    def start_worker(self, *extra):
        log = os.path.join(self.logdir, f"{self.name}-worker{len(self.workers) + 1}.log")
        w = Worker(self.flags() + list(extra), worker_env(self.cluster, self.fake), log)
        self.workers.append(w)
        if self.started_at is None:
            self.started_at = time.monotonic()
        w.wait_ready(T)
        return w

    def note(self, text):
        self.notes.append(text)

    def kill9(self, w):
        self.killed.add(w)
        w.kill9()

    # what the database and the fake say
    def unfinished(self):
        return self.db.scalar("SELECT count(*) FROM public.sendry_outbox"
                              " WHERE status IN ('pending', 'processing')")

    def imports(self):
        return len(self.fake.requests_matching("POST", IMPORT))

    def in_flight(self):
        return any(r["status"] is None for r in list(self.fake.requests)[-20:])

    def deadline(self, rows):
        return 10 * 4 * self.sizes.http_timeout + 30 + rows / 50

    def settle(self, rows):
        """Lets the app finish its writes, waits for every row to finish, up to the
        deadline; returns the time it took."""
        if self.load is not None:
            self.load.finish(T)
        alive = lambda: any(w.poll() is None for w in self.workers if w not in self.killed)  # noqa: E731
        try:
            # Each event is a request of its own (Sendry has no batch endpoint for them).
            events = self.db.scalar("SELECT count(*) FROM public.sendry_outbox WHERE op = 'event'")
            wait_until(lambda: self.unfinished() == 0 or not alive(),
                       self.deadline(rows) + events * (self.fake.delay_all + 0.05),
                       "every row finished", 0.1)
        except AssertionError:
            pass   # measured as stuck
        return time.monotonic() - self.started_at

    def finish(self, result):
        """Stops the workers (SIGTERM: each must exit 0), looks for crashes, measures."""
        for i, w in enumerate(self.workers, 1):
            if w in self.killed:
                continue
            if w.poll() is not None:
                result.problems.append(f"worker {i} exited by itself with status {w.poll()}: {w.log_path}")
                continue
            w.terminate()
            try:
                rc = w.wait(T)
            except AssertionError:
                rc = "none (still running)"
            if rc != 0:
                result.problems.append(f"worker {i} exited {rc} on SIGTERM: {w.log_path}")
        if self.after_stop is not None:
            self.after_stop()
        for i, w in enumerate(self.workers, 1):
            marks = [m for m in SANITIZER_MARKS if m in w.log()]
            w.close()
            if marks:
                result.problems.append(f"worker {i}: {marks[0]} in {w.log_path}")
        result.notes += self.notes
        result.problems += self.problems
        if self.load is not None:
            result.notes.append(f"{self.load.ops} sign-ups and email changes meanwhile"
                                + (f" ({self.load.errors} refused)" if self.load.errors else ""))
        measure(self.db, self.fake, result)

    def close(self):
        if self.load is not None:
            self.load.halt.set()
            self.load.resume()
        for w in self.workers:
            w.close()
        self.fake.stop()
        self.db.query("UPDATE public.sendry_settings SET events = '{}'")


# --- measuring ----------------------------------------------------------------------------

def applied_writes(fake):
    """(user, body) of every contact write the fake applied (answered 2xx)."""
    for r in list(fake.requests):
        status, body, path = r["status"], r["json"], r["path"]
        if status is None or not 200 <= status < 300 or not isinstance(body, dict):
            continue
        if r["method"] == "POST" and path == IMPORT:
            items = body.get("contacts") or []
        elif (r["method"] == "POST" and path == "/v1/contacts") or \
                (r["method"] in ("PATCH", "PUT") and path.startswith("/v1/contacts/")):
            items = [body]
        else:
            continue
        for c in items:
            c = {k: v for k, v in c.items() if k != "audience_id"}
            user = (c.get("metadata") or {}).get("supabase_user_id") or str(c.get("email")).lower()
            yield user, json.dumps(c, sort_keys=True)


def duplicate_writes(fake):
    return sum(n - 1 for n in collections.Counter(applied_writes(fake)).values())


def matches(contact, body):
    """The fake's contact holds what the mapping renders, and is in the audience."""
    return (contact is not None and contact["email"].lower() == body["email"].lower()
            and all(contact.get(f) == body.get(f) for f in ("first_name", "last_name"))
            and (contact.get("metadata") or {}) == (body.get("metadata") or {})
            and AUDIENCE in contact["audiences"])


def fake_contacts_by_user(fake):
    by_user = collections.defaultdict(list)
    for c in fake.contacts_json():
        by_user[(c.get("metadata") or {}).get("supabase_user_id")].append(c)
    return by_user


USER_STATE_SQL = """
SELECT r.user_id::text AS user_id, r.body,
       count(o.id) FILTER (WHERE o.status IN ('pending', 'processing')) AS unfinished,
       count(o.id) FILTER (WHERE o.status = 'failed') AS failed,
       string_agg(o.id || ':' || o.status || COALESCE(' ' || o.last_error, ''), ', ' ORDER BY o.id) AS rows
FROM public.sendry_render_contacts(ARRAY(SELECT id FROM auth.users WHERE email IS NOT NULL)) r
LEFT JOIN public.sendry_outbox o ON o.user_id = r.user_id
GROUP BY r.user_id, r.body
"""


def measure(db, fake, result):
    """Fills in the columns (see the module's docstring)."""
    by_user = fake_contacts_by_user(fake)
    users = db.query(USER_STATE_SQL)
    result.users = len(users)
    result.enqueued = db.scalar("SELECT count(*) FROM public.sendry_outbox")
    result.stuck = db.scalar("SELECT count(*) FROM public.sendry_outbox"
                             " WHERE status IN ('pending', 'processing')")
    for u in users:
        held = by_user.get(u["user_id"], [])
        mine = [c for c in held if c["email"].lower() == u["body"]["email"].lower()]
        delivered = len(held) == 1 and matches(mine[0] if mine else None, u["body"])
        result.delivered += delivered
        if u["failed"] or (not delivered and not u["unfinished"]):
            result.lost += 1
        if not delivered and len(result.details) < 5:
            seen = ", ".join(f"{c['email']} {c.get('first_name')}" for c in held) or "nothing"
            result.details.append(f"user {u['user_id']} wants {u['body']['email']}; the fake holds "
                                  f"{seen}; rows {u['rows']}")
    result.dup_writes = duplicate_writes(fake)
    measure_events(db, fake, result)


def measure_events(db, fake, result):
    """The events columns: every event row ingested once, after its contact."""
    rows = db.query("SELECT id, status, public.sendry_event_id(id) AS event_id, payload->>'name' AS name"
                    " FROM public.sendry_outbox WHERE op = 'event'")
    at_fake = {e["external_id"]: e for e in fake.events}
    result.events = len(rows)
    result.event_dedupes = sum(fake.event_dedupes.values())
    ours = {r["event_id"] for r in rows}
    for r in rows:
        if r["status"] == "failed" or (r["status"] == "sent" and r["event_id"] not in at_fake):
            result.events_lost += 1
            result.details.append(f"event row {r['id']} ({r['name']}) is {r['status']}, "
                                  f"{'not ' if r['event_id'] not in at_fake else ''}at the fake")
    for e in fake.events:
        if e["external_id"] not in ours or e["contact_id"] is None:
            result.events_lost += 1
            why = "no row of ours" if e["external_id"] not in ours else "its contact was not there yet"
            result.details.append(f"event {e['external_id']} ({e['name']}) at the fake: {why}")


# --- the scenarios ----------------------------------------------------------------------------

def kill9_backfill(run):
    s = run.sizes
    run.fake.delay_all = 0.02
    run.backfill(s.backfill)
    run.start_load()
    gap = max(1, s.backfill // s.batch // (s.kills + 1))   # imports between kills, on average
    mid_request = 0
    for _ in range(s.kills):
        w = run.start_worker("--concurrency", "2")
        # a random point of the backfill, once this worker is sending
        until = run.imports() + run.rng.randint(1, 2 * gap - 1)
        wait_until(lambda: run.imports() >= until or run.unfinished() == 0, T + 4 * s.http_timeout,
                   "the restarted worker sending")
        time.sleep(run.rng.uniform(0, 0.05))   # the fault: where exactly the kill lands
        mid_request += run.in_flight()
        run.kill9(w)
    run.start_worker("--concurrency", "2")
    run.note(f"{s.kills} kills, {mid_request} of them with a request in flight")
    return run.settle(s.backfill)


def sent_by(w):
    """The rows a worker says it sent (its last line, on SIGTERM), once it stopped."""
    hits = [m for m in map(re.compile(r"stopped: (\d+) sent").search, w.lines()) if m]
    return int(hits[-1].group(1)) if hits else None


def three_workers_one_killed(run):
    s = run.sizes
    run.fake.delay_all = 0.05   # requests take a while: some are in flight when it dies
    workers = [run.start_worker("--concurrency", "2") for _ in range(3)]
    run.backfill(s.rows * 2)
    run.start_load()
    holders = lambda: {r["locked_by"]: r["n"] for r in run.db.query(  # noqa: E731
        "SELECT locked_by, count(*) AS n FROM public.sendry_outbox WHERE status = 'processing'"
        " AND locked_by IS NOT NULL GROUP BY 1")}
    until = run.rng.randint(1, max(1, s.rows * 2 // s.batch // 2))   # somewhere in the first half
    wait_until(lambda: (run.imports() >= until and len(holders()) == 3) or run.unfinished() == 0, T,
               "all three workers holding rows")
    held = holders()
    rows_of = lambda w: sum(n for k, n in held.items() if f":{w.pid}:" in k)  # noqa: E731
    victim = max(workers, key=rows_of)
    flying = run.in_flight()
    run.kill9(victim)
    run.note(f"killed after {run.imports()} imports, holding {rows_of(victim)} rows"
             + (", with requests in flight" if flying else ""))
    run.after_stop = lambda: run.note("the other two sent " + " and ".join(
        str(sent_by(w)) for w in workers if w is not victim) + " rows")
    return run.settle(s.rows * 2)


def lose_worker_commits(run):
    """An immediate restart loses the commits the WAL writer has not flushed yet: with
    wal_writer_delay at 10 s and the app pausing its (synchronous) writes, the crash comes
    once the worker has committed a claim and an outcome since, and loses both."""
    run.load.pause()
    since = run.db.scalar("SELECT now()")
    wait_until(lambda: run.db.scalar(
        "SELECT count(DISTINCT status) = 2 FROM public.sendry_outbox"
        " WHERE status IN ('processing', 'sent') AND updated_at > %s", (since,))
        or run.unfinished() == 0, T, "a claim and an outcome committed since the app's last write")


def wal_writer_delay(run, value):
    """Sets the server's wal_writer_delay (None: back to the default)."""
    sql = f"ALTER SYSTEM SET wal_writer_delay = '{value}'" if value else "ALTER SYSTEM RESET wal_writer_delay"
    run.db.query(sql, user=pgharness.Cluster.SUPERUSER)
    run.db.query("SELECT pg_reload_conf()", user=pgharness.Cluster.SUPERUSER)


def pg_restart(run, mode):
    s = run.sizes
    run.fake.delay_all = 0.15   # every request is in flight a while
    w = run.start_worker("--concurrency", "2")
    run.backfill(s.rows)
    run.start_load()
    mid_request = 0
    if mode == "immediate":
        wal_writer_delay(run, "10s")
    try:
        for k in range(s.restarts):
            until = run.imports() + 2
            wait_until(lambda: (run.imports() >= until and run.in_flight()) or run.unfinished() == 0, T,
                       "requests in flight")
            if mode == "immediate":
                lose_worker_commits(run)
            mid_request += run.in_flight()
            run.cluster.pg_stop(mode)
            run.cluster.pg_start()
            run.load.resume()
            w.wait_log(r"db: connected \(relay connection", T, count=k + 2)
    finally:
        if mode == "immediate":
            wal_writer_delay(run, None)
    run.note(f"{s.restarts} restarts, {mid_request} with a request in flight")
    run.after_stop = lambda: alone(run, w)
    return run.settle(s.rows)


def alone(run, w):
    """The worker was alone, and no restart outlasted its lease: what it says of rows it
    could no longer record or renew must blame neither another worker nor a lease that
    ran out (the database lost its claims)."""
    lines = w.lines()
    count = lambda pattern: sum(bool(re.search(pattern, line)) for line in lines)  # noqa: E731
    run.note(f"{count('outcomes not recorded')} warnings of outcomes not recorded, "
             f"{count('no longer its claim|claimed again by another')} of rows no longer held")
    blamed = [line for line in lines if re.search(r"another worker|, by |claimed again after their lease", line)]
    if blamed:
        run.problems.append("the only worker blames another worker or a lease that ran out: "
                            + blamed[0].split(" ", 1)[-1])


def storm(run, **fault):
    s = run.sizes
    run.start_worker()
    run.start_worker()
    run.fake.fail_fraction(0.6, seed=run.rng.randrange(1 << 30), **fault)
    run.backfill(s.rows)
    run.start_load()
    time.sleep(s.fault_seconds)   # the storm lasts this long
    run.fake.fail_fraction(0)
    failed = sum(n for k, n in run.fake.stats.items() if k in ("429", "500", "502", "503"))
    run.note(f"{failed} of {len(run.fake.requests)} requests answered with the storm's status")
    return run.settle(s.rows)


def api_down(run):
    s = run.sizes
    run.fake.delay_all = 0.2
    run.start_worker("--concurrency", "1")
    run.start_worker("--concurrency", "1")
    run.backfill(s.rows)
    run.start_load()
    answered = lambda: [r for r in run.fake.requests_matching("POST", IMPORT) if r["status"]]  # noqa: E731
    wait_until(lambda: answered() or run.unfinished() == 0, T, "the first import answered")
    run.fake.down()
    left = run.unfinished()
    time.sleep(s.fault_seconds)   # the API is away this long
    run.fake.up()
    run.note(f"down {s.fault_seconds:g} s with {left} rows unfinished")
    return run.settle(s.rows)


RUNNERS = {
    "kill9_backfill": kill9_backfill,
    "three_workers_one_killed": three_workers_one_killed,
    "pg_restart_fast": lambda run: pg_restart(run, "fast"),
    "pg_restart_immediate": lambda run: pg_restart(run, "immediate"),
    "storm_429": lambda run: storm(run, status=429, retry_after=1),
    "storm_5xx": lambda run: storm(run, status=[500, 502, 503]),
    "api_down": api_down,
}


# Faults that lose no answer and no commit: nothing may be written twice (README: "a 429
# or 5xx storm and a fast restart write nothing twice").
NO_DUPLICATES = ("pg_restart_fast", "storm_429", "storm_5xx")


def run_scenario(name, cluster, sizes, logdir, seed=1):
    """Runs one scenario on `cluster` and returns its Result."""
    result = Result(name)
    run = Run(name, cluster, sizes, logdir, random.Random(f"{seed}:{name}"))
    try:
        result.seconds = RUNNERS[name](run)
        run.finish(result)
    except AssertionError as exc:   # a wait that timed out: the scenario could not go on
        result.problems.append(f"{name} did not get through: {exc}".splitlines()[0])
        result.seconds = time.monotonic() - (run.started_at or time.monotonic())
        run.finish(result)
    finally:
        run.close()
    if name in NO_DUPLICATES and result.dup_writes:
        result.problems.append(f"{result.dup_writes} contact writes repeated, where no answer and no "
                               "commit was lost")
    if name in NO_DUPLICATES and result.event_dedupes:
        result.problems.append(f"{result.event_dedupes} events sent again, where no answer and no "
                               "commit was lost")
    return result


# --- the table ------------------------------------------------------------------------------

COLUMNS = (("scenario", 26), ("users", 7), ("enqueued", 9), ("delivered", 10), ("lost", 5),
           ("dup_writes", 11), ("events", 7), ("ev_lost", 8), ("ev_dedupes", 11), ("stuck", 6),
           ("seconds", 8))


def header():
    return "  ".join(f"{name:<{w}}" if i == 0 else f"{name:>{w}}" for i, (name, w) in enumerate(COLUMNS))


def format_row(r):
    cells = (r.scenario, r.users, r.enqueued, r.delivered, r.lost, r.dup_writes, r.events, r.events_lost,
             r.event_dedupes, r.stuck, f"{r.seconds:.1f}")
    return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}"
                     for i, (c, (_, w)) in enumerate(zip(cells, COLUMNS)))


def report(r):
    """The lines under the table for a scenario that did not pass."""
    out = [f"  {r.scenario}: {p}" for p in r.problems]
    if r.lost or r.stuck or r.events_lost:
        out += [f"  {r.scenario}: {d}" for d in r.details]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short version (as in make check)")
    ap.add_argument("--only", action="append", choices=SCENARIOS, help="run this scenario (repeatable)")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000, help="for the random kill points")
    ap.add_argument("--keep-logs", metavar="DIR", help="keep the workers' logs here")
    args = ap.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    logdir = args.keep_logs or tempfile.mkdtemp(prefix="sendry-chaos-")
    os.makedirs(logdir, exist_ok=True)
    binary = os.environ.get("SENDRY_SYNC_BIN") or "./sendry-sync"
    print(f"chaos: {'quick' if args.quick else 'full'} run, seed {args.seed}, binary {binary}, logs {logdir}",
          flush=True)
    print(header(), flush=True)
    results = []
    with pgharness.Cluster(supabase=True, install=True) as cluster:
        for name in args.only or SCENARIOS:
            results.append(run_scenario(name, cluster, sizes, logdir, args.seed))
            print(format_row(results[-1]), flush=True)
    failed = [r for r in results if not r.ok]
    print()
    for r in results:
        print(f"  {r.scenario}: " + "; ".join(r.notes))
    for r in failed:
        print("\n".join(report(r)))
    if not failed and not args.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
    print(f"chaos: {len(results) - len(failed)} of {len(results)} scenarios passed (nothing lost or stuck,"
          " no worker crashed)" + ("" if not failed else f"; logs in {logdir}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
