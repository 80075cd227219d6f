"""sendry-sync doctor against real parts: the test cluster, a transaction-mode PgBouncer in
front of it (the Debian package, started here on 127.0.0.1 with its own config file), and
the fake Sendry. Exit status 0 all good, 1 warnings, 2 failures; --json for machines."""

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile

import psycopg
import pytest

from conftest import API_KEY, AUDIENCE, BIN, wait_until, worker_env
from fake_sendry import FakeSendry

CHECKS = ["database", "listen/notify", "schema version", "objects", "triggers", "claim index",
          "exposure", "api key", "audience", "write scope", "events scope", "webhook secret", "xmin horizon",
          "dead rows"]


def doctor(cluster, fake, *args, env=None):
    """Runs doctor --json; returns (exit status, {check name: check}, the whole JSON)."""
    e = worker_env(cluster, fake, env)
    r = subprocess.run([BIN, "doctor", "--json", *args], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=120)
    out = json.loads(r.stdout)
    assert out["exit_status"] == r.returncode, r.stdout
    return r.returncode, {c["name"]: c for c in out["checks"]}, out


def states(checks):
    return {name: c["status"] for name, c in checks.items()}


def test_healthy_database_exits_0(cluster, db, fake):
    rc, checks, out = doctor(cluster, fake)
    assert rc == 0, json.dumps(out, indent=1)
    assert list(checks) == CHECKS
    assert set(states(checks).values()) <= {"ok", "skip"}
    assert states(checks)["webhook secret"] == "skip"
    assert out["failures"] == 0 and out["warnings"] == 0
    for c in checks.values():
        assert set(c) == {"name", "status", "detail", "fix"} and c["detail"]
    assert "Test audience" in checks["audience"]["detail"]
    # the scope probe is a write that changes nothing
    assert [r["json"] for r in fake.requests_matching("POST")] == [{"contacts": []}]
    assert not fake.contacts


def test_text_output_has_one_line_per_check_and_a_summary(cluster, db, fake):
    r = subprocess.run([BIN, "doctor"], env=worker_env(cluster, fake), stdout=subprocess.PIPE,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stdout
    for name in CHECKS:
        assert any(line.split()[1:2] == name.split()[:1] for line in r.stdout.splitlines()), name
    assert r.stdout.rstrip().endswith("0 failures, 1 skipped: exit status 0"), r.stdout
    assert API_KEY not in r.stdout


# --- PgBouncer ---------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def pgbouncer(cluster):
    """PgBouncer on 127.0.0.1: database `postgres` in transaction mode, `postgres_session` in
    session mode, both to the test cluster, round robin over the server connections, and
    no reset of a server connection between session-mode clients (server_reset_query
    empty: a client finds what the one before it left, prepared statements among them).
    Yields the port."""
    binary = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not os.path.exists(binary):
        pytest.skip("pgbouncer is not installed (contrib/install-deps.sh installs it)")
    d = tempfile.mkdtemp(prefix="sendry-pgbouncer-")
    port = free_port()
    target = f"host={cluster.host} port={cluster.port} dbname=postgres"
    with open(os.path.join(d, "pgbouncer.ini"), "w") as f:
        f.write(f"[databases]\npostgres = {target}\npostgres_session = {target} pool_mode=session\n"
                f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
                f"auth_type = trust\nauth_file = {d}/users.txt\npool_mode = transaction\nserver_round_robin = 1\n"
                f"server_reset_query =\n"
                f"logfile = {d}/pgbouncer.log\npidfile = {d}/pgbouncer.pid\n")
    with open(os.path.join(d, "users.txt"), "w") as f:
        f.write('"postgres" ""\n')
    argv = [binary, os.path.join(d, "pgbouncer.ini")]
    if os.geteuid() == 0:  # PgBouncer refuses to run as root
        pw = pwd.getpwnam("postgres")
        for p in [d] + [os.path.join(d, n) for n in os.listdir(d)]:
            os.chown(p, pw.pw_uid, pw.pw_gid)
        argv = ["runuser", "-u", "postgres", "--"] + argv
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pidfile = os.path.join(d, "pgbouncer.pid")
    try:
        wait_until(lambda: os.path.exists(pidfile) and socket.create_connection(("127.0.0.1", port)).close()
                   is None, 15, "PgBouncer listening")
        yield port
    finally:
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)
        proc.wait(timeout=15)
        shutil.rmtree(d, ignore_errors=True)


def test_transaction_mode_pgbouncer_warns_about_notify(cluster, db, fake, pgbouncer):
    url = f"host=127.0.0.1 port={pgbouncer} dbname=postgres user=postgres"
    rc, checks, out = doctor(cluster, fake, env={"DATABASE_URL": url})
    assert rc == 1, json.dumps(out, indent=1)
    notify = checks["listen/notify"]
    assert notify["status"] == "warn"
    assert "transaction-mode pooler" in notify["detail"]
    assert "5432" in notify["fix"] and "session" in notify["fix"]
    others = {k: v for k, v in states(checks).items() if k != "listen/notify"}
    assert set(others.values()) <= {"ok", "skip"}, others


def test_session_mode_pgbouncer_delivers_notify(cluster, db, fake, pgbouncer):
    url = f"host=127.0.0.1 port={pgbouncer} dbname=postgres_session user=postgres"
    rc, checks, out = doctor(cluster, fake, env={"DATABASE_URL": url})
    assert checks["listen/notify"]["status"] == "ok", checks["listen/notify"]
    assert rc == 0, json.dumps(out, indent=1)


# --- the database ------------------------------------------------------------------------------

def test_missing_and_disabled_triggers_exit_2(cluster, db, fake):
    su = cluster.SUPERUSER
    try:
        db.query("DROP TRIGGER sendry_sync_users_insert ON auth.users", user=su)
        rc, checks, _ = doctor(cluster, fake)
        assert rc == 2
        t = checks["triggers"]
        assert t["status"] == "fail" and "sendry_sync_users_insert" in t["detail"]
        assert "migrate" in t["fix"]
        cluster.install()
        db.query("ALTER TABLE auth.users DISABLE TRIGGER sendry_sync_users_delete", user=su)
        rc, checks, _ = doctor(cluster, fake)
        assert rc == 2
        t = checks["triggers"]
        assert t["status"] == "fail" and "disabled" in t["detail"]
        assert "sendry_sync_users_delete" in t["detail"] and "ENABLE TRIGGER" in t["fix"]
    finally:
        cluster.install()
        db.query("ALTER TABLE auth.users ENABLE TRIGGER sendry_sync_users_delete", user=su)
    assert doctor(cluster, fake)[0] == 0


def test_missing_claim_index_and_old_schema_version_exit_2(cluster, db, fake):
    try:
        db.query("DROP INDEX public.sendry_outbox_claim_idx")
        db.query("CREATE OR REPLACE FUNCTION public.sendry_schema_version() RETURNS text"
                 " LANGUAGE sql RETURN '0'")
        rc, checks, _ = doctor(cluster, fake)
        assert rc == 2
        assert checks["claim index"]["status"] == "fail"
        assert "sendry_outbox_claim_idx" in checks["claim index"]["detail"]
        s = checks["schema version"]
        assert s["status"] == "fail" and "version 0" in s["detail"] and "migrate" in s["fix"]
    finally:
        cluster.install()


def test_outbox_readable_by_anon_exits_2(cluster, db, fake):
    try:
        db.query("GRANT SELECT ON public.sendry_outbox TO anon")
        db.query("GRANT EXECUTE ON FUNCTION public.sendry_inbox_receive(text, text, jsonb, text)"
                 " TO authenticated")
        rc, checks, _ = doctor(cluster, fake)
        assert rc == 2
        e = checks["exposure"]
        assert e["status"] == "fail"
        assert "anon: public.sendry_outbox" in e["detail"]
        assert "authenticated: public.sendry_inbox_receive" in e["detail"]
    finally:
        cluster.install()
    assert doctor(cluster, fake)[1]["exposure"]["status"] == "ok"


def test_missing_database_id_fails_objects_and_track_for_anon_fails_exposure(cluster, db, fake):
    """Events need the database's identity (their event_id); sendry_track is never anon's."""
    saved = db.scalar("SELECT value FROM public.sendry_sync_state WHERE key = 'database_id'")
    try:
        db.query("DELETE FROM public.sendry_sync_state WHERE key = 'database_id'")
        db.query("GRANT EXECUTE ON FUNCTION public.sendry_track(text, uuid, jsonb, boolean) TO anon")
        rc, checks, _ = doctor(cluster, fake)
        assert rc == 2
        o = checks["objects"]
        assert o["status"] == "fail" and "sendry_event_id() fails" in o["detail"], o
        assert "database_id" in o["detail"] and "database_id" in o["fix"], o
        e = checks["exposure"]
        assert e["status"] == "fail" and "anon: public.sendry_track(text, uuid, jsonb, boolean)" in e["detail"], e
    finally:
        db.query(f"INSERT INTO public.sendry_sync_state (key, value) VALUES ('database_id', '{saved}')"
                 " ON CONFLICT (key) DO NOTHING")
        cluster.install()
    rc, checks, _ = doctor(cluster, fake)
    assert states(checks)["objects"] == "ok" and states(checks)["exposure"] == "ok"


def test_dead_rows_warn(cluster, db, fake):
    db.query("ALTER TABLE public.sendry_outbox SET (autovacuum_enabled = false)")
    try:
        db.query("INSERT INTO public.sendry_outbox (email, payload)"
                 " SELECT 'dead' || g || '@example.com', '{}' FROM generate_series(1, 12000) g")
        db.query("DELETE FROM public.sendry_outbox")
        wait_until(lambda: db.scalar("SELECT n_dead_tup >= 12000 FROM pg_stat_user_tables"
                                     " WHERE relname = 'sendry_outbox'"), 30, "the dead rows counted")
        rc, checks, _ = doctor(cluster, fake)
        assert rc == 1
        d = checks["dead rows"]
        assert d["status"] == "warn" and "dead rows" in d["detail"] and "VACUUM" in d["fix"]
    finally:
        db.query("ALTER TABLE public.sendry_outbox RESET (autovacuum_enabled)")
        db.query("VACUUM public.sendry_outbox")


def test_xmin_horizon_names_the_session_holding_it(cluster, db, fake):
    with psycopg.connect(cluster.dsn_for("postgres")) as conn:
        conn.execute("SET application_name = 'long_report'")
        conn.commit()
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        conn.execute("SELECT count(*) FROM public.sendry_outbox")
        pid = conn.info.backend_pid
        rc, checks, _ = doctor(cluster, fake)
        h = checks["xmin horizon"]
        assert f"pid {pid} (long_report" in h["detail"], h
        assert h["status"] == "ok"   # young: no warning
        conn.rollback()


def test_unreachable_database_fails_and_skips_the_rest(cluster, fake, tmp_path):
    rc, checks, _ = doctor(cluster, fake, env={"DATABASE_URL": f"host={tmp_path} port=1 dbname=x"})
    assert rc == 2
    assert checks["database"]["status"] == "fail" and "DATABASE_URL" in checks["database"]["fix"]
    for name in ("listen/notify", "schema version", "triggers", "exposure", "dead rows"):
        assert checks[name]["status"] == "skip"
    assert checks["api key"]["status"] == "ok"   # Sendry is still checked


# --- Sendry -------------------------------------------------------------------------------------

def test_rejected_key_exits_2(cluster, db):
    with FakeSendry(api_key="sn_test_another", audience_id=AUDIENCE, rate_limit=None) as other:
        rc, checks, out = doctor(cluster, other)
    assert rc == 2
    k = checks["api key"]
    assert k["status"] == "fail" and "401" in k["detail"] and "SENDRY_API_KEY" in k["fix"]
    assert checks["audience"]["status"] == "skip" and checks["write scope"]["status"] == "skip"
    assert checks["events scope"]["status"] == "skip"
    assert API_KEY not in json.dumps(out)


def test_read_only_key_fails_the_write_scope(cluster, db):
    with FakeSendry(api_key="sn_test_full", read_only_key=API_KEY, audience_id=AUDIENCE,
                    rate_limit=None) as ro:
        rc, checks, _ = doctor(cluster, ro)
    assert rc == 2
    assert checks["api key"]["status"] == "ok" and checks["audience"]["status"] == "ok"
    s = checks["write scope"]
    assert s["status"] == "fail" and "403" in s["detail"] and "full_access" in s["fix"]


def test_key_without_the_events_scope_fails_the_events_scope(cluster, db):
    with FakeSendry(api_key="sn_test_full", no_events_key=API_KEY, audience_id=AUDIENCE,
                    rate_limit=None) as noev:
        rc, checks, _ = doctor(cluster, noev)
        assert noev.requests_matching("GET", "/v1/events"), "the check is a read"
        assert not noev.events
    assert rc == 2
    assert checks["write scope"]["status"] == "ok", "the key writes contacts"
    s = checks["events scope"]
    assert s["status"] == "fail" and "403" in s["detail"] and "scope for events" in s["detail"]
    assert "full_access" in s["fix"] and "SENDRY_API_KEY" in s["fix"]


def test_events_scope_ok_with_a_full_key(cluster, db, fake):
    rc, checks, _ = doctor(cluster, fake)
    assert rc == 0 and checks["events scope"]["status"] == "ok"
    assert "may send events" in checks["events scope"]["detail"]
    assert [r["status"] for r in fake.requests_matching("GET", "/v1/events")] == [200]


def test_unknown_audience_exits_2(cluster, db, fake):
    rc, checks, _ = doctor(cluster, fake, env={"SENDRY_AUDIENCE_ID": "aud_nope"})
    assert rc == 2
    assert checks["api key"]["status"] == "ok"
    a = checks["audience"]
    assert a["status"] == "fail" and "aud_nope" in a["detail"] and "SENDRY_AUDIENCE_ID" in a["fix"]


def test_webhook_secret_is_checked_with_listen(cluster, db, fake):
    rc, checks, _ = doctor(cluster, fake, "--listen", "127.0.0.1:1")
    assert rc == 2 and checks["webhook secret"]["status"] == "fail"
    assert "SENDRY_WEBHOOK_SECRET" in checks["webhook secret"]["fix"]
    rc, checks, _ = doctor(cluster, fake, "--listen", "127.0.0.1:1",
                           env={"SENDRY_WEBHOOK_SECRET": "whsec_0123456789abcdef"})
    assert rc == 0 and checks["webhook secret"]["status"] == "ok"
