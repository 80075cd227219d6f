"""Upgrades: versioned migrations over a database the previous release installed, under load.

Each test starts its own Supabase-shaped cluster and installs an older release's
install.sql (tests/fixtures/install_v2.sql, schema version 2; tests/fixtures/install_v5.sql,
schema version 5, the release before the capture path) or this one, then upgrades with the
binary (`sendry-sync migrate`) or with psql (`psql -f sql/install.sql`).

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_migrate.py

The lock test (test_upgrade_under_signups_never_makes_a_signup_wait) is the issue's: GoTrue-
shaped sign-ups and sign-ins at 20/s each while another session holds a read lock on the
outbox for 10 s; the upgrade includes a test-only step that needs ACCESS EXCLUSIVE on the
outbox (tests/fixtures/migrations/, built into a copy of install.sql with
SENDRY_EXTRA_STEPS), as a real release's ALTER TABLE would. Each statement's own duration
is the contract (250 ms), not a benchmark: the figure is in make bench
(tests/bench_upgrade.py).
"""

import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid

import psycopg
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgharness  # noqa: E402
from conftest import BIN, INSTANCE_ID, FAST_FLAGS, FakeSendry, API_KEY, AUDIENCE, worker_env, wait_until  # noqa: E402

ROOT = pgharness.ROOT
VERSION = subprocess.run(["sh", os.path.join(ROOT, "sql", "build.sh"), "version"], stdout=subprocess.PIPE,
                         text=True, check=True).stdout.strip()
V2_SQL = os.path.join(ROOT, "tests", "fixtures", "install_v2.sql")
# The release before the capture path (issue 17): main at 2353878, schema version 5.
V5_SQL = os.path.join(ROOT, "tests", "fixtures", "install_v5.sql")
EXTRA_STEPS = os.path.join(ROOT, "tests", "fixtures", "migrations")
SU = pgharness.Cluster.SUPERUSER

MAPPING = """
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email,
       NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') AS first_name,
       NULL::text AS last_name,
       jsonb_build_object('supabase_user_id', u.id::text, 'tier', 'custom') AS metadata,
       NULL::text[] AS audiences
FROM auth.users u
"""

# --- helpers ------------------------------------------------------------------------

@pytest.fixture
def pg():
    with pgharness.Cluster(supabase=True, port=20000 + (os.getpid() + 331) % 20000) as c:
        yield c


def psql(cluster, *args, user="postgres", env=None, input=None):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-d", cluster.dsn_for(user)] + list(args),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, input=input)


def install_v2(cluster):
    r = psql(cluster, "-q", "-f", V2_SQL)
    assert r.returncode == 0, r.stderr
    assert cluster.query("SELECT public.sendry_schema_version()") == [["2"]]


def migrate(cluster, *args, timeout=120):
    env = worker_env(cluster, None)
    return subprocess.run([BIN, "migrate", *args], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


def connect(cluster, user="postgres", **kw):
    return psycopg.connect(cluster.dsn_for(user), autocommit=True, **kw)


def gotrue_signup(conn, email, meta='{}'):
    """GoTrue's sign-up: INSERT, then role '' -> 'authenticated', in one transaction (unqualified
    names: supabase_auth_admin's search_path is auth). Returns the longest statement, in s."""
    uid = str(uuid.uuid4())
    longest = 0.0
    with conn.transaction():
        for sql, params in (
                ("INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data,"
                 " raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)"
                 " VALUES (%s, %s, 'authenticated', '', %s, '{\"provider\": \"email\"}', %s,"
                 " false, false, now(), now())", (INSTANCE_ID, uid, email, meta)),
                ("UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = %s", (uid,))):
            t0 = time.monotonic()
            conn.execute(sql, params)
            longest = max(longest, time.monotonic() - t0)
    return uid, longest


def outbox_rows(cluster):
    """The outbox as schema version 2 had it (later versions add columns)."""
    cols = ("id, op, user_id, email, payload, status, attempts, max_attempts, next_attempt_at, locked_by,"
            " locked_until, last_http_status, last_error, created_at, updated_at, sent_at, old_email, class,"
            " claim_id")
    return cluster.query(f"SELECT ({cols})::text FROM public.sendry_outbox ORDER BY id", user=SU)


def mapping_def(cluster):
    return cluster.query("SELECT pg_get_viewdef('public.sendry_contacts'::regclass)")[0][0]


def recorded(cluster):
    return {r[0]: r[1:] for r in cluster.query(
        "SELECT name, kind, how, checksum FROM public.sendry_migrations ORDER BY name")}


def embedded_steps():
    """The step names of this build, in order (from `sh sql/build.sh`'s output)."""
    sql = subprocess.run(["sh", os.path.join(ROOT, "sql", "build.sh")], stdout=subprocess.PIPE,
                         text=True, check=True).stdout
    return [line.split()[2] for line in sql.splitlines()
            if line.startswith("-- ---- ") and line.split()[2].endswith(".sql")]


def build_with_extra_steps(tmp_path):
    """install.sql with the test-only steps of tests/fixtures/migrations."""
    out = tmp_path / "install_extra.sql"
    env = dict(os.environ, SENDRY_EXTRA_STEPS=EXTRA_STEPS)
    with open(out, "w") as f:
        subprocess.run(["sh", os.path.join(ROOT, "sql", "build.sh")], stdout=f, env=env, check=True)
    return str(out)


def seed_v2(cluster):
    """Rows in every state and a custom mapping, on the previous release."""
    r = psql(cluster, "-q", "-c", MAPPING)
    assert r.returncode == 0, r.stderr
    with connect(cluster, "supabase_auth_admin") as gt:
        for i in range(3):
            gotrue_signup(gt, f"before{i}@example.com", '{"first_name": "Before"}')
    with connect(cluster) as c:
        c.execute("INSERT INTO sendry_outbox (email, status, attempts, last_error, last_http_status)"
                  " VALUES ('failed@example.com', 'failed', 3, 'HTTP 422: invalid', 422),"
                  "        ('sent@example.com', 'sent', 1, NULL, 200)")
        c.execute("INSERT INTO sendry_outbox (email, status, locked_by, locked_until, next_attempt_at)"
                  " VALUES ('held@example.com', 'processing', 'host:1:1', now() - interval '1 s',"
                  "         now() - interval '1 s')")
    return outbox_rows(cluster), mapping_def(cluster)


class LockHolder(threading.Thread):
    """Another session: BEGIN; LOCK <table> IN <mode> MODE; held for `seconds`."""

    def __init__(self, cluster, table, mode, seconds, user="postgres"):
        super().__init__(daemon=True)
        self.conn = connect(cluster, user)
        self.conn.execute("SET application_name = 'lock_holder'")
        self.table, self.mode, self.seconds = table, mode, seconds
        self.locked = threading.Event()
        self.released = threading.Event()

    def run(self):
        try:
            with self.conn.transaction():
                self.conn.execute(f"LOCK {self.table} IN {self.mode} MODE")
                self.locked.set()
                # The scenario: a session that keeps its lock this long (a report, Studio).
                self.released.wait(self.seconds)
        finally:
            self.released.set()
            self.conn.close()


class Load(threading.Thread):
    """GoTrue-shaped traffic at `rate` a second: sign-ups or sign-ins. Records each
    statement's own duration and every error."""

    def __init__(self, cluster, kind, rate, user_ids=None):
        super().__init__(daemon=True)
        self.conn = connect(cluster, "supabase_auth_admin")
        self.kind, self.interval, self.user_ids = kind, 1.0 / rate, user_ids
        self.stop = threading.Event()
        self.durations, self.errors, self.emails = [], [], []

    def one(self, n):
        if self.kind == "signup":
            email = f"during{n}.{uuid.uuid4().hex[:6]}@example.com"
            _, longest = gotrue_signup(self.conn, email, '{"first_name": "During"}')
            self.emails.append(email)
            return longest
        t0 = time.monotonic()
        self.conn.execute("UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = %s",
                          (random.choice(self.user_ids),))
        return time.monotonic() - t0

    def run(self):
        n = 0
        next_at = time.monotonic()
        try:
            while not self.stop.is_set():
                n += 1
                try:
                    self.durations.append(self.one(n))
                except Exception as e:  # noqa: BLE001 - every failure is a finding
                    self.errors.append(repr(e))
                next_at += self.interval
                self.stop.wait(max(0.0, next_at - time.monotonic()))
        finally:
            self.conn.close()


def server_log(cluster):
    with open(cluster.logfile, errors="replace") as f:
        return f.read()


# --- (a) an upgrade keeps every row and the mapping -----------------------------------

@pytest.mark.parametrize("how", ["binary", "psql"])
def test_upgrade_from_v2_keeps_rows_and_mapping(pg, how):
    install_v2(pg)
    rows, mapping = seed_v2(pg)
    assert len(rows) == 6

    if how == "binary":
        r = migrate(pg)
        assert r.returncode == 0, r.stderr
        assert "recorded migrations/0002_baseline.sql as applied without running it" in r.stderr, r.stderr
        assert "applied functions/users.sql" in r.stderr
        assert "error" not in r.stderr.lower() and "warn" not in r.stderr.lower(), r.stderr
    else:
        r = psql(pg, "-f", pgharness.INSTALL)
        assert r.returncode == 0, r.stderr
        assert "migrations/0002_baseline.sql recorded as applied" in r.stderr, r.stderr
        assert "WARNING" not in r.stderr and "ERROR" not in r.stderr, r.stderr

    assert outbox_rows(pg) == rows, "the upgrade changed the outbox"
    assert mapping_def(pg) == mapping, "the upgrade replaced the project's mapping"
    steps = recorded(pg)
    assert set(steps) == set(embedded_steps())
    assert steps["migrations/0002_baseline.sql"][:2] == ["versioned", "recorded"]
    assert all(v[1] == "ran" for k, v in steps.items() if k.startswith("functions/"))
    assert pg.query("SELECT public.sendry_schema_version()") == [[VERSION]]
    # Events (0005): off until the operator names one; the op CHECK widened and validated;
    # the database's identity made once.
    assert pg.query("SELECT events FROM sendry_settings") == [["{}"]]
    assert pg.query("SELECT convalidated, pg_get_constraintdef(oid) LIKE '%event%' FROM pg_constraint"
                    " WHERE conname = 'sendry_outbox_op_check'") == [["t", "t"]]
    assert pg.query("SELECT count(*) FROM sendry_sync_state WHERE key = 'database_id'", user=SU) == [["1"]]
    # Capture (0006): the address CHECK added and validated over the rows kept; email and
    # payload nullable, payload with no default.
    assert pg.query("SELECT convalidated FROM pg_constraint WHERE conname = 'sendry_outbox_address_check'") == [["t"]]
    assert pg.query("SELECT attname, attnotnull, atthasdef FROM pg_attribute WHERE attrelid = 'sendry_outbox'::regclass"
                    " AND attname IN ('email', 'payload') ORDER BY 1") == [["email", "f", "f"], ["payload", "f", "f"]]

    # Delivery still works, through the project's mapping (rendered at the claim), and a
    # sign-up emits no event.
    with connect(pg, "supabase_auth_admin") as gt:
        uid, _ = gotrue_signup(gt, "after@example.com", '{"first_name": "After"}')
    assert pg.query(f"SELECT o.op, o.payload IS NULL, r.payload->'metadata'->>'tier' FROM sendry_outbox o,"
                    f" sendry_claim_render(ARRAY[o.user_id]) r WHERE o.user_id = '{uid}'") == [["upsert", "t", "custom"]]
    fake = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=None)
    fake.start()
    try:
        r = subprocess.run([BIN, "--once", *FAST_FLAGS, "--no-verify"], env=worker_env(pg, fake),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert fake.contacts["after@example.com"]["metadata"]["tier"] == "custom", "through the project's mapping"
    finally:
        fake.stop()
    assert pg.query("SELECT email, status FROM sendry_outbox WHERE status <> 'sent' ORDER BY email") == \
        [["failed@example.com", "failed"]], "the pending, held and new rows were delivered"

    # A second run: nothing to do.
    r = migrate(pg)
    assert r.returncode == 0 and f"nothing to do; schema version {VERSION}" in r.stderr, r.stderr


# --- (b) the test: sign-ups never wait on an upgrade ---------------------------

def upgrade_under_load(pg, tmp_path, hold_seconds, env=None, install_sql=None):
    """v2, users, a reader holding ACCESS SHARE on the outbox for hold_seconds, sign-ups and
    sign-ins at 20/s each; the upgrade (with the test-only outbox step) by psql. Returns
    (psql result, the upgrade's wall time, loads, the holder). install_sql: another file to
    upgrade with (the bench's comparison)."""
    install_v2(pg)
    with connect(pg, "supabase_auth_admin") as gt:
        ids = [gotrue_signup(gt, f"user{i}@example.com")[0] for i in range(50)]
    install_sql = install_sql or build_with_extra_steps(tmp_path)
    holder = LockHolder(pg, "public.sendry_outbox", "ACCESS SHARE", hold_seconds)
    holder.start()
    assert holder.locked.wait(10)
    loads = [Load(pg, "signup", 20), Load(pg, "signin", 20, ids)]
    for ld in loads:
        ld.start()
    try:
        time.sleep(0.5)   # the traffic running before the upgrade starts (part of the scenario)
        t0 = time.monotonic()
        r = psql(pg, "-f", install_sql, env=env)
        took = time.monotonic() - t0
        time.sleep(0.5)   # and after it
    finally:
        for ld in loads:
            ld.stop.set()
        for ld in loads:
            ld.join(10)
        holder.released.set()
        holder.join(10)
    return r, took, loads, holder


def test_upgrade_under_signups_never_makes_a_signup_wait(pg, tmp_path):
    r, took, loads, _ = upgrade_under_load(pg, tmp_path, hold_seconds=10)
    assert r.returncode == 0, r.stderr
    assert took >= 9, f"the outbox step waited for the reader's lock ({took:.1f} s)"
    for ld in loads:
        assert not ld.errors, f"{ld.kind}: {ld.errors[:3]}"
        assert len(ld.durations) >= 150, f"{ld.kind}: only {len(ld.durations)} statements ran"
        worst = max(ld.durations)
        assert worst < 0.25, f"a {ld.kind} waited {worst * 1000:.0f} ms"
    assert "deadlock detected" not in server_log(pg)
    steps = recorded(pg)
    assert "migrations/9000_test_outbox_lock.sql" in steps
    # The first step that needs ACCESS EXCLUSIVE on the outbox is the release's own 0005
    # (the events columns): it is the one that waited for the reader, retrying.
    attempts = pg.query("SELECT attempts FROM sendry_migrations WHERE name = 'migrations/0005_events.sql'")
    assert int(attempts[0][0]) > 1, "the step retried its lock"
    assert pg.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'sendry_outbox'"
                    " AND column_name = 'deduped'") == [["1"]]
    assert pg.query("SELECT count(*) FROM information_schema.columns WHERE table_name = 'sendry_outbox'"
                    " AND column_name = 'test_note'") == [["1"]]
    # Every sign-up made during the upgrade is in the outbox.
    emails = loads[0].emails
    got = pg.query("SELECT count(*) FROM sendry_outbox WHERE email = ANY (ARRAY[%s])"
                   % ",".join(f"'{e}'" for e in emails))
    assert got == [[str(len(emails))]]


def test_upgrade_past_its_deadline_changes_nothing_of_the_step(pg, tmp_path):
    env = {"PGOPTIONS": "-c sendry.migrate_deadline=2s"}
    r, took, loads, _ = upgrade_under_load(pg, tmp_path, hold_seconds=6, env=env)
    assert r.returncode == 3, r.stderr
    errors = [line for line in r.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1, r.stderr
    # The first step that needs ACCESS EXCLUSIVE on the outbox: the release's 0005.
    assert "migrations/0005_events.sql not applied (nothing of it changed)" in errors[0]
    assert "public.sendry_outbox AccessShareLock by pid" in errors[0] and "lock_holder" in errors[0]
    assert took < 6, f"gave up at its deadline ({took:.1f} s)"
    for ld in loads:
        assert not ld.errors, f"{ld.kind}: {ld.errors[:3]}"
        assert max(ld.durations) < 0.25, f"a {ld.kind} waited {max(ld.durations) * 1000:.0f} ms"
    steps = recorded(pg)
    assert "migrations/0005_events.sql" not in steps and "migrations/9000_test_outbox_lock.sql" not in steps
    # Nothing of 0005: not the settings column it adds before it waits for the outbox.
    assert pg.query("SELECT count(*) FROM information_schema.columns WHERE table_name IN ('sendry_outbox', 'sendry_settings')"
                    " AND column_name IN ('test_note', 'deduped', 'events')") == [["0"]]
    assert pg.query("SELECT count(*) FROM public.sendry_sync_state WHERE key = 'database_id'", user=SU) == [["0"]]
    # The binary: one line, exit 1, the step named (here the outbox's triggers, the v2 ones).
    holder = LockHolder(pg, "public.sendry_outbox", "SHARE", 30)
    holder.start()
    try:
        assert holder.locked.wait(10)
        r = migrate(pg, "--lock-deadline", "2")
    finally:
        holder.released.set()
        holder.join(10)
    assert r.returncode == 1, r.stderr
    errors = [line for line in r.stderr.splitlines() if " error " in line]
    assert len(errors) == 1, r.stderr
    assert "migrations/0005_events.sql failed, nothing of it applied" in errors[0]
    assert "ShareLock by pid" in errors[0], errors[0]
    assert "migrations/0005_events.sql" not in recorded(pg)
    r = migrate(pg)
    assert r.returncode == 0 and "applied migrations/0005_events.sql" in r.stderr, r.stderr
    assert "applied functions/outbox.sql" in r.stderr, r.stderr


# --- (c) nothing pending: no lock, nothing recreated ----------------------------------

def test_rerun_with_nothing_pending_takes_no_lock(pg):
    r = migrate(pg)
    assert r.returncode == 0, r.stderr
    before = pg.query("SELECT tgname, oid, xmin FROM pg_trigger WHERE tgname LIKE 'sendry%' ORDER BY 1", user=SU)
    assert len(before) == 7
    holder = LockHolder(pg, "auth.users, public.sendry_outbox, public.sendry_settings", "ACCESS EXCLUSIVE", 60,
                        user=SU)
    holder.start()
    try:
        assert holder.locked.wait(10)
        t0 = time.monotonic()
        r = migrate(pg, timeout=30)
        assert r.returncode == 0 and "nothing to do" in r.stderr, r.stderr
        r2 = psql(pg, "-f", pgharness.INSTALL)
        took = time.monotonic() - t0
        assert r2.returncode == 0 and r2.stderr == "", r2.stderr
        # Any lock on one of the tables would wait for the holder (60 s): both finished.
        assert took < 20, f"{took:.1f} s"
    finally:
        holder.released.set()
        holder.join(10)
    after = pg.query("SELECT tgname, oid, xmin FROM pg_trigger WHERE tgname LIKE 'sendry%' ORDER BY 1", user=SU)
    assert after == before, "a trigger was recreated"


def test_an_outbox_dropped_by_hand_comes_back_whole(pg):
    """The outbox dropped and `migrate` run again: the baseline makes the table again, and
    the later steps that add its columns (0005's deduped) or constraints (0006's address
    CHECK) run again too, not skipped as
    applied (the worker's completion would fail on a missing column that migrate says
    nothing to do about)."""
    assert migrate(pg).returncode == 0
    pg.query("DROP TABLE public.sendry_outbox CASCADE", user=SU)
    r = migrate(pg)
    assert r.returncode == 0, r.stderr
    assert "0005_events" in r.stderr, r.stderr
    cols = {c for (c,) in pg.query("SELECT attname FROM pg_attribute WHERE attrelid = 'public.sendry_outbox'::regclass"
                                   " AND attnum > 0 AND NOT attisdropped")}
    assert {"deduped", "claim_id", "class", "old_email"} <= cols, cols
    assert pg.query("SELECT pg_get_constraintdef(oid) LIKE '%event%' FROM pg_constraint"
                    " WHERE conname = 'sendry_outbox_op_check'") == [['t']]
    # and 0006 again: the baseline's NOT NULL email and payload dropped, the address CHECK back.
    assert "0006_capture" in r.stderr, r.stderr
    assert pg.query("SELECT convalidated FROM pg_constraint WHERE conname = 'sendry_outbox_address_check'") == [["t"]]
    assert pg.query("SELECT count(*) FROM pg_attribute WHERE attrelid = 'sendry_outbox'::regclass"
                    " AND attname IN ('email', 'payload') AND NOT attnotnull") == [["2"]]


# --- (d) two migrators at once ---------------------------------------------------------

def test_two_migrators_at_once(pg):
    install_v2(pg)
    env = worker_env(pg, None)
    procs = [subprocess.Popen([BIN, "migrate"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for name in embedded_steps():
        said = sum(f" {name} " in out[1] or f" {name} (" in out[1] for out in outs)
        assert said == 1, f"{name} applied {said} times: {outs}"
    assert set(recorded(pg)) == set(embedded_steps())


# --- (e) migrate --status, and doctor ----------------------------------------------------

def test_status_lists_applied_and_pending(pg):
    r = migrate(pg, "--status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"schema version: none installed, {VERSION} in this binary"
    assert [ln.split()[:2] for ln in lines[1:-1]] == [["pending", n] for n in embedded_steps()]
    assert lines[-1] == f"{len(embedded_steps())} step(s) pending: sendry-sync migrate applies them"

    install_v2(pg)
    assert migrate(pg, "--status").stdout.splitlines()[0] == f"schema version: 2 installed, {VERSION} in this binary"
    fake = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=None)
    fake.start()
    try:
        d = subprocess.run([BIN, "doctor", "--json"], env=worker_env(pg, fake), stdout=subprocess.PIPE,
                           text=True, timeout=60)
        check = {c["name"]: c for c in json.loads(d.stdout)["checks"]}["schema version"]
        assert check["status"] == "fail" and "not applied" in check["detail"], check
        assert "functions/users.sql" in check["detail"] and "sendry-sync migrate" in check["fix"]
    finally:
        fake.stop()

    assert migrate(pg).returncode == 0
    pg.query("UPDATE sendry_migrations SET checksum = 'x' WHERE name = 'functions/budget.sql'")
    r = migrate(pg, "--status")
    lines = r.stdout.splitlines()
    assert lines[0] == f"schema version: {VERSION} installed, {VERSION} in this binary"
    by_name = {ln.split()[1]: ln for ln in lines[1:-1]}
    assert by_name["migrations/0002_baseline.sql"].split()[0] == "applied"
    assert "(installed by the previous release)" in by_name["migrations/0002_baseline.sql"]
    assert by_name["functions/budget.sql"].split()[0] == "pending"
    assert "changed since it was applied" in by_name["functions/budget.sql"]
    assert all(by_name[n].split()[0] == "applied" for n in by_name if n != "functions/budget.sql")
    assert lines[-1] == "1 step(s) pending: sendry-sync migrate applies them"
    r = migrate(pg, "--status", "--print")
    assert r.returncode == 2 and "exclude each other" in r.stderr


# --- (f) from the release before the capture path (issue 17) ------------------------------

V5_COLS = ("id, op, user_id, email, payload, status, attempts, max_attempts, next_attempt_at, locked_by,"
           " locked_until, last_http_status, last_error, created_at, updated_at, sent_at, old_email, class,"
           " claim_id, deduped")


def v5_rows(cluster, where="true"):
    """{email: the row as text} over the columns schema version 5 had."""
    return {r[0]: r[1] for r in cluster.query(
        f"SELECT email || ':' || op, ({V5_COLS})::text FROM public.sendry_outbox WHERE {where} ORDER BY id",
        user=SU)}


def seed_v5(cluster):
    """On schema version 5, as its triggers wrote them (payloads rendered, state at enqueue):
    rows pending (three contacts and their user.signed_up events), one processing under the
    expired lease of a worker that died, one sent and one failed."""
    with connect(cluster) as c:
        c.execute("UPDATE sendry_settings SET events = '{user.signed_up}', updated_at = now()")
    with connect(cluster, "supabase_auth_admin") as gt:
        for i in range(3):
            gotrue_signup(gt, f"pending{i}@example.com", '{"first_name": "Before"}')
    with connect(cluster) as c:
        c.execute("UPDATE sendry_settings SET events = '{}', updated_at = now()")
    with connect(cluster, "supabase_auth_admin") as gt:
        for who in ("held", "sent", "failed"):
            gotrue_signup(gt, f"{who}@example.com", '{"first_name": "Before"}')
    with connect(cluster) as c:
        c.execute("UPDATE sendry_outbox SET status = 'processing', attempts = 1, claim_id = 42,"
                  " locked_by = 'deadhost:4242:00000000000000aa', locked_until = now() - interval '1 s',"
                  " next_attempt_at = now() - interval '1 s' WHERE email = 'held@example.com'")
        c.execute("UPDATE sendry_outbox SET status = 'sent', attempts = 1, last_http_status = 200,"
                  " sent_at = now() WHERE email = 'sent@example.com'")
        c.execute("UPDATE sendry_outbox SET status = 'failed', attempts = 3, last_http_status = 422,"
                  " last_error = 'HTTP 422: invalid' WHERE email = 'failed@example.com'")
    return v5_rows(cluster)


def run_worker_once(cluster, fake):
    r = subprocess.run([BIN, "--once", *FAST_FLAGS, "--no-verify"], env=worker_env(cluster, fake),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r


@pytest.mark.parametrize("how", ["binary", "psql"])
def test_upgrade_from_v5_keeps_every_row_and_delivers_what_was_due(pg, how):
    r = psql(pg, "-q", "-f", V5_SQL)
    assert r.returncode == 0, r.stderr
    assert pg.query("SELECT public.sendry_schema_version()") == [["5"]]
    rows = seed_v5(pg)
    assert [k for k in rows] == ["pending0@example.com:upsert", "pending0@example.com:event",
                                 "pending1@example.com:upsert", "pending1@example.com:event",
                                 "pending2@example.com:upsert", "pending2@example.com:event",
                                 "held@example.com:upsert", "sent@example.com:upsert", "failed@example.com:upsert"]
    assert pg.query("SELECT count(*) FROM sendry_outbox WHERE op = 'upsert' AND payload->>'first_name' = 'Before'") \
        == [["6"]], "schema version 5 rendered the payloads in the trigger"
    state = pg.query("SELECT user_id, email, contact_hash FROM sendry_contact_state ORDER BY user_id", user=SU)
    assert len(state) == 6

    if how == "binary":
        r = migrate(pg)
        assert r.returncode == 0, r.stderr
        assert "applied migrations/0006_capture.sql" in r.stderr, r.stderr
        assert "error" not in r.stderr.lower() and "warn" not in r.stderr.lower(), r.stderr
    else:
        r = psql(pg, "-f", pgharness.INSTALL)
        assert r.returncode == 0, r.stderr
        assert "WARNING" not in r.stderr and "ERROR" not in r.stderr, r.stderr
    assert pg.query("SELECT public.sendry_schema_version()") == [[VERSION]]
    assert int(VERSION) >= 6
    assert v5_rows(pg) == rows, "the upgrade changed a row of the outbox"
    assert pg.query("SELECT user_id, email, contact_hash FROM sendry_contact_state ORDER BY user_id",
                    user=SU) == state, "the upgrade changed sendry_contact_state"
    assert pg.query("SELECT attname, attnotnull, pg_get_expr(d.adbin, d.adrelid) FROM pg_attribute a"
                    " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
                    " WHERE a.attrelid = 'public.sendry_outbox'::regclass AND attname IN ('email', 'payload')"
                    " ORDER BY attname") == [["email", "f", ""], ["payload", "f", ""]]
    assert pg.query("SELECT convalidated FROM pg_constraint WHERE conname = 'sendry_outbox_address_check'") == [["t"]]

    # The worker: the pending rows and the one a dead worker held go, as that release
    # rendered them; the sent and failed rows are left as they are, and nothing of them
    # reaches Sendry.
    fake = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=None)
    fake.start()
    try:
        run_worker_once(pg, fake)
        due = [f"pending{i}@example.com" for i in range(3)] + ["held@example.com"]
        assert sorted(fake.contacts) == sorted(due), sorted(fake.contacts)
        assert all(fake.contacts[e]["first_name"] == "Before" for e in due)
        assert sorted(e["contact_email"] for e in fake.events_json("user.signed_up")) == due[:3]
        after = v5_rows(pg)
        assert {k: v for k, v in after.items() if k.split("@")[0] in ("sent", "failed")} == \
            {k: v for k, v in rows.items() if k.split("@")[0] in ("sent", "failed")}, "a settled row was touched"
        assert pg.query("SELECT email, op, status FROM sendry_outbox WHERE status <> 'sent' ORDER BY id") == \
            [["failed@example.com", "upsert", "failed"]]
        assert pg.query("SELECT attempts, locked_by IS NULL FROM sendry_outbox WHERE email = 'held@example.com'") == \
            [["2", "t"]], "the dead worker's row, claimed once more"
        sent_before = [r for r in fake.requests if "sent@example.com" in json.dumps(r["json"] or {})
                       or "failed@example.com" in json.dumps(r["json"] or {})]
        assert sent_before == [], "a sent or failed row went again"

        # After the upgrade: a sign-up is captured (no payload, no state until Sendry
        # accepts it); a change of an upgraded user is rendered at the claim.
        with connect(pg, "supabase_auth_admin") as gt:
            uid, _ = gotrue_signup(gt, "after@example.com", '{"first_name": "After"}')
            gt.execute("UPDATE users SET raw_user_meta_data = '{\"first_name\": \"Renamed\"}', updated_at = now()"
                       " WHERE email = 'pending0@example.com'")
        assert pg.query("SELECT email, payload IS NULL, old_email IS NULL, class FROM sendry_outbox"
                        " WHERE status = 'pending' ORDER BY id") == \
            [["after@example.com", "t", "t", "live"], ["pending0@example.com", "t", "t", "live"]]
        assert pg.query(f"SELECT count(*) FROM sendry_contact_state WHERE user_id = '{uid}'", user=SU) == [["0"]]
        run_worker_once(pg, fake)
        assert fake.contacts["after@example.com"]["first_name"] == "After"
        assert fake.contacts["pending0@example.com"]["first_name"] == "Renamed"
        assert pg.query(f"SELECT email FROM sendry_contact_state WHERE user_id = '{uid}'", user=SU) == \
            [["after@example.com"]]
        assert pg.query("SELECT count(*) FROM sendry_outbox WHERE status = 'pending'") == [["0"]]
    finally:
        fake.stop()
