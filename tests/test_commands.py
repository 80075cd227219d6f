"""The commands beside the worker: status, healthcheck and migrate --print, on the real binary
and the test cluster."""

import json
import os
import re
import socket
import subprocess

from conftest import API_KEY, BIN, ROOT, T, start_daemon, wait_until, worker_env

INSTALL_SQL = os.path.join(ROOT, "sql", "install.sql")


def run(cluster, fake, *args, env=None, timeout=60):
    return subprocess.run([BIN, *args], env=worker_env(cluster, fake, env), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=timeout)


# --- status --------------------------------------------------------------------------------------

def outbox_fixture(db):
    """Rows in every state status reports, with times relative to the database's now()."""
    db.query("""
        INSERT INTO public.sendry_outbox (email, status, attempts, sent_at, next_attempt_at,
                                          last_http_status, last_error) VALUES
          ('sent1@example.com', 'sent', 1, now() - interval '5 minutes', now(), 200, NULL),
          ('sent2@example.com', 'sent', 1, now() - interval '25 minutes', now(), 200, NULL),
          ('sent3@example.com', 'sent', 1, now() - interval '2 hours', now(), 200, NULL),
          ('bad1@example.com', 'failed', 1, NULL, now(), 422,
           'HTTP 422 validation_error: contacts[0].email: invalid email address'),
          ('bad2@example.com', 'failed', 1, NULL, now(), 422,
           'HTTP 422 validation_error: contacts[0].email: invalid email address'),
          ('gone@example.com', 'failed', 12, NULL, now(), NULL, 'network: Connection refused'),
          ('later@example.com', 'pending', 3, NULL, now() + interval '1 hour', 503,
           'HTTP 503 internal_error: Service Unavailable'),
          ('oldest@example.com', 'pending', 2, NULL, now() - interval '10 minutes', 503,
           'HTTP 503 internal_error: Service Unavailable'),
          ('newer@example.com', 'pending', 0, NULL, now() - interval '1 minute', NULL, NULL)
    """)


def test_status_json(cluster, db, fake):
    outbox_fixture(db)
    r = run(cluster, fake, "status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["outbox"] == {"pending": 3, "due": 2, "processing": 0, "sent": 3, "failed": 3,
                           "oldest_due_age_seconds": s["outbox"]["oldest_due_age_seconds"],
                           "failed_last_hour": 3, "sent_estimated": False,
                           **{f"{k}_capped": False for k in ("pending", "due", "processing", "failed",
                                                             "failed_last_hour")}}
    assert 590 < s["outbox"]["oldest_due_age_seconds"] < 900
    tp = s["throughput"]
    assert not tp["estimated"] and tp["sampled_percent"] == 100, "a small table is read whole: exact"
    assert tp["sent_last_hour"] == 2 and tp["sent_last_10_minutes"] == 1
    assert tp["per_10_minutes_oldest_first"] == [0, 0, 0, 1, 0, 1]
    assert 290 < tp["last_sent_seconds_ago"] < 600
    assert s["failures"][0] == {"state": "failed", "last_http_status": 422, "rows": 2,
                                "last_error": "HTTP 422 validation_error: contacts[0].email: "
                                              "invalid email address"}
    rest = {(f["state"], f["last_http_status"], f["rows"]) for f in s["failures"][1:]}
    assert rest == {("failed", None, 1), ("retrying", 503, 2)}
    o = s["oldest_due"]
    assert o["email"] == "o***@example.com", "email addresses are masked"
    assert o["attempts"] == 2 and o["last_http_status"] == 503 and o["op"] == "upsert"
    assert 590 < o["due_for_seconds"] < 900


def test_status_text_table(cluster, db, fake):
    outbox_fixture(db)
    r = run(cluster, fake, "status")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert re.search(r"^  pending +3   2 due now, the oldest due for 1\d min \d+ s$", out, re.M), out
    assert re.search(r"^  sent +3   2 in the last hour, 1 in the last 10 min; the last \d+ min", out, re.M)
    assert re.search(r"^  failed +3   3 in the last hour$", out, re.M), out
    assert re.search(r"^ +0 +0 +0 +1 +0 +1$", out, re.M), out
    assert re.search(r"^  failed +2   422  HTTP 422 validation_error: contacts\[0\]\.email", out, re.M)
    assert re.search(r"^  retrying +2   503  HTTP 503 internal_error", out, re.M), out
    assert re.search(r"^  failed +1     -  network: Connection refused$", out, re.M), out
    assert "id " in out and "(upsert o***@example.com), due for 1" in out
    assert "oldest@example.com" not in out
    # --verbose shows the full address
    assert "oldest@example.com" in run(cluster, fake, "status", "--verbose").stdout


def test_status_of_an_empty_outbox(cluster, db, fake):
    r = run(cluster, fake, "status")
    assert r.returncode == 0
    assert "failures: none" in r.stdout and "oldest due row: none" in r.stdout


def events_fixture(db):
    """Event rows in every state status counts, of two names."""
    db.query("""
        INSERT INTO public.sendry_outbox (op, class, email, payload, status, sent_at, deduped, last_error)
        SELECT 'event', 'live', 'ev@example.com', jsonb_build_object('name', n, 'payload', '{}'::jsonb),
               st, CASE WHEN st = 'sent' THEN now() END, d,
               CASE WHEN st = 'failed' THEN 'HTTP 422 validation_error: payload' END
          FROM (VALUES ('user.signed_up', 'pending', NULL::boolean), ('user.signed_up', 'pending', NULL),
                       ('user.signed_up', 'sent', false), ('user.signed_up', 'sent', true),
                       ('user.signed_up', 'sent', false), ('user.signed_up', 'failed', NULL),
                       ('trial_started', 'sent', true), ('trial_started', 'failed', NULL),
                       ('trial_started', 'failed', NULL)) v (n, st, d)
    """)


def test_status_shows_events_by_name(cluster, db, fake):
    outbox_fixture(db)
    events_fixture(db)
    r = run(cluster, fake, "status", "--json")
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["events"] == [
        {"name": "trial_started", "pending": 0, "sent": 1, "deduped": 1, "failed": 2},
        {"name": "user.signed_up", "pending": 2, "sent": 3, "deduped": 1, "failed": 1}]
    assert s["events_more_names"] is False
    assert s["outbox"]["pending"] == 5 and s["outbox"]["failed"] == 6, "events are outbox rows too"
    out = run(cluster, fake, "status").stdout
    assert re.search(r"^events\n  name +pending +sent \(deduped\) +failed$", out, re.M), out
    assert re.search(r"^  trial_started +0 +1 \(1\) +2$", out, re.M), out
    assert re.search(r"^  user\.signed_up +2 +3 \(1\) +1$", out, re.M), out


def test_status_without_event_rows_shows_no_events(cluster, db, fake):
    outbox_fixture(db)
    assert json.loads(run(cluster, fake, "status", "--json").stdout)["events"] == []
    assert not re.search(r"^events", run(cluster, fake, "status").stdout, re.M)


def test_status_without_the_migration_exits_1(cluster, fake):
    r = run(cluster, fake, "status", env={"DATABASE_URL": cluster.dsn_for("postgres", "template1")})
    assert r.returncode == 1
    assert "sendry_outbox" in r.stderr and "migrate" in r.stderr


# --- healthcheck ---------------------------------------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_without_listen_checks_the_database(cluster, fake, tmp_path):
    r = run(cluster, fake, "healthcheck")
    assert r.returncode == 0 and r.stdout.startswith("healthy: the database answers"), r.stdout
    r = run(cluster, fake, "healthcheck", env={"DATABASE_URL": f"host={tmp_path} port=1 dbname=x"})
    assert r.returncode == 1 and r.stdout.startswith("unhealthy: cannot connect"), r.stdout


def test_healthcheck_asks_the_workers_healthz(cluster, db, fake, workers):
    port = free_port()
    secret = {"SENDRY_WEBHOOK_SECRET": "whsec_0123456789abcdef"}
    start_daemon(workers, "--listen", f"127.0.0.1:{port}", env=secret)
    # As a container's HEALTHCHECK sees it: SENDRY_LISTEN, ":port", a proxy in the environment.
    r = run(cluster, fake, "healthcheck",
            env={"SENDRY_LISTEN": f":{port}", "http_proxy": "http://127.0.0.1:9", "DATABASE_URL": None})
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == f"healthy: http://127.0.0.1:{port}/healthz answered 200"


def test_healthcheck_reports_a_stopped_worker(cluster, db, fake, workers):
    port = free_port()
    env = {"SENDRY_WEBHOOK_SECRET": "whsec_0123456789abcdef", "SENDRY_API_KEY": "sn_test_revoked"}
    w = workers("--listen", f"127.0.0.1:{port}", "--no-verify", env=env)
    w.wait_log(r"db: connected", T)
    db.signup("stopped@example.com")
    w.wait_log(r"sending stopped", T)
    r = run(cluster, fake, "healthcheck", "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert re.match(rf"unhealthy: http://127\.0\.0\.1:{port}/healthz answered HTTP 503: .*401", r.stdout)


def test_healthcheck_never_exits_2(cluster, fake):
    r = run(cluster, fake, "healthcheck", env={"DATABASE_URL": None})
    assert r.returncode == 1 and "DATABASE_URL" in r.stderr
    r = run(cluster, fake, "healthcheck", "--listen", f"127.0.0.1:{free_port()}")
    assert r.returncode == 1 and r.stdout.startswith("unhealthy: http://127.0.0.1:"), r.stdout


# --- migrate --print -----------------------------------------------------------------------------

def test_migrate_print_is_install_sql_byte_for_byte(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    r = subprocess.run([BIN, "migrate", "--print"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, timeout=30)
    assert r.returncode == 0, r.stderr
    with open(INSTALL_SQL, "rb") as f:
        assert r.stdout == f.read()
    assert r.stderr == b""


def test_migrate_print_output_installs(cluster, db):
    db.query("DROP DATABASE IF EXISTS printed")
    db.query("CREATE DATABASE printed")
    sql = subprocess.run([BIN, "migrate", "--print"], stdout=subprocess.PIPE, check=True).stdout
    r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                        cluster.dsn_for("postgres", "printed"), "-f", "-"], input=sql,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert r.returncode == 0, r.stderr
    version = subprocess.run(["psql", "-X", "-A", "-t", "-d", cluster.dsn_for("postgres", "printed"),
                              "-c", "SELECT public.sendry_schema_version()"],
                             stdout=subprocess.PIPE, text=True).stdout.strip()
    marker = re.search(r"one step at a time \(schema version (\d+)\)", open(INSTALL_SQL).read())
    assert version == marker.group(1)


def test_print_is_refused_outside_migrate(cluster, fake):
    r = run(cluster, fake, "--print")
    assert r.returncode == 2 and "--print does not apply to the worker" in r.stderr
    assert API_KEY not in r.stderr
