"""The API key from Supabase Vault: SENDRY_API_KEY_VAULT=<secret name>.

The worker reads vault.decrypted_secrets at start, and again after Sendry answers 401, so a
rotation with vault.update_secret needs no restart. Missing secrets, a missing Vault and a
missing privilege are one line and exit status 2.

Which Vault: CI cannot build the supabase_vault extension, so by default these tests run
against tests/fixtures/vault_standin.sql, a schema-compatible stand-in (same view, columns,
functions and privileges; no encryption). With SENDRY_TEST_REAL_VAULT=1 they run against the
real extension (github supabase/vault, built with PGXS against PostgreSQL 15 and installed
into the server's directories beforehand; nothing here builds it).
"""

import json
import os
import re
import subprocess

import pytest

from conftest import API_KEY, BIN, T, import_requests, start_daemon, wait_until, worker_env
import pgharness

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "fixtures", "vault_standin.sql")
REAL = os.environ.get("SENDRY_TEST_REAL_VAULT") == "1"
SECRET = "sendry_api_key"
NEW_KEY = "sn_test_rotated_key_2"

# What Supabase grants postgres on Vault (the extension itself grants nothing).
GRANTS = """
GRANT USAGE ON SCHEMA vault TO postgres;
GRANT SELECT ON vault.decrypted_secrets TO postgres;
GRANT EXECUTE ON FUNCTION vault._crypto_aead_det_decrypt, vault.create_secret, vault.update_secret
    TO postgres;
"""


def install_real_vault(c):
    """The real extension: preloaded, with a root key script, then CREATE EXTENSION."""
    script = os.path.join(c.dir, "vault_getkey.sh")
    with open(script, "w") as f:
        f.write("#!/bin/sh\necho " + "0" * 64 + "\n")
    os.chmod(script, 0o755)
    with open(os.path.join(c.datadir, "postgresql.conf"), "a") as f:
        f.write(f"shared_preload_libraries = 'supabase_vault'\nvault.getkey_script = '{script}'\n")
    c.restart()
    c.psql_as(c.SUPERUSER, "-c", "CREATE EXTENSION supabase_vault CASCADE")


@pytest.fixture(scope="module")
def cluster():
    with pgharness.Cluster(supabase=True, install=True,
                           port=20000 + (os.getpid() + 307) % 20000) as c:
        if REAL:
            install_real_vault(c)
        else:
            c.psql_as(c.SUPERUSER, "-f", STANDIN)
        c.psql_as(c.SUPERUSER, "-c", GRANTS)
        c.psql_as(c.SUPERUSER, "-c", "CREATE DATABASE novault OWNER postgres")
        yield c


@pytest.fixture
def vault(cluster, db):
    """Empties Vault; returns set_secret(value) -> id (creates, or updates the one secret)."""
    db.query("DELETE FROM vault.secrets", user=cluster.SUPERUSER)

    def set_secret(value, name=SECRET):
        sid = db.scalar("SELECT id::text FROM vault.secrets WHERE name = %s", (name,),
                        user=cluster.SUPERUSER)
        if sid:
            db.query("SELECT vault.update_secret(%s::uuid, %s)", (sid, value), user=cluster.SUPERUSER)
            return sid
        return db.scalar("SELECT vault.create_secret(%s, %s)::text", (value, name),
                         user=cluster.SUPERUSER)

    return set_secret


VAULT_ENV = {"SENDRY_API_KEY": None, "SENDRY_API_KEY_VAULT": SECRET}


def bearer_keys(fake):
    """The keys the worker sent, in order (Authorization: Bearer <key>)."""
    return [r["headers"].get("authorization", "")[len("Bearer "):] for r in fake.requests]


def one_line_exit_2(w, pattern):
    assert w.wait(T) == 2, w.log()
    lines = [line for line in w.lines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{w.log()}"
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def test_the_real_extension_is_used_when_asked(db):
    kind = db.scalar("SELECT count(*) FROM pg_extension WHERE extname = 'supabase_vault'")
    assert kind == (1 if REAL else 0)


def test_key_from_vault_delivers(db, fake, workers, vault):
    vault(API_KEY)
    w = start_daemon(workers, env=VAULT_ENV)
    db.signup("vaulted@example.com")
    wait_until(lambda: db.all_sent(1), T, "the row sent with the key from Vault")
    assert set(bearer_keys(fake)) == {API_KEY}
    assert API_KEY not in w.log()


def test_rotation_in_vault_needs_no_restart(db, fake, workers, vault):
    vault(API_KEY)
    w = start_daemon(workers, env=VAULT_ENV)
    db.signup("before@example.com")
    wait_until(lambda: db.all_sent(1), T, "the first row")
    # Rotate: Vault first, then Sendry revokes the old key.
    vault(NEW_KEY)
    fake.api_key = NEW_KEY
    db.signup("after@example.com")
    # Sending stops for 60 s after a 401; only reading Vault again delivers before that.
    wait_until(lambda: db.all_sent(2), 20, "the row after the rotation, well before the 60 s probe")
    assert w.poll() is None, "the worker restarted or exited"
    keys = bearer_keys(fake)
    assert API_KEY in keys and keys[-1] == NEW_KEY
    w.wait_log(r"vault: secret \"sendry_api_key\" holds a new API key")
    assert API_KEY not in w.log() and NEW_KEY not in w.log()


def test_rotation_in_vault_after_sendry_refused_the_old_key(db, fake, workers, vault):
    vault(API_KEY)
    w = start_daemon(workers, env=VAULT_ENV)
    fake.api_key = NEW_KEY          # Sendry revoked the key; Vault still holds it
    db.signup("late@example.com")
    w.wait_log(r"still holds the rejected key", T)
    assert db.row("late@example.com")["status"] == "pending"
    vault(NEW_KEY)                  # the operator stores the new key later
    wait_until(lambda: db.all_sent(1), 30, "the row, once Vault holds the new key")
    assert w.poll() is None
    assert NEW_KEY not in w.log() and API_KEY not in w.log()


def test_missing_secret_exits_2(db, fake, workers, vault):
    w = workers(env={"SENDRY_API_KEY": None, "SENDRY_API_KEY_VAULT": "no_such_secret"}, fast=False)
    one_line_exit_2(w, r"SENDRY_API_KEY_VAULT: no secret named \"no_such_secret\".*vault\.create_secret")
    assert not fake.requests


def test_no_privilege_exits_2(cluster, db, fake, workers, vault):
    vault(API_KEY)
    env = dict(VAULT_ENV, DATABASE_URL=cluster.dsn_for("authenticator"))
    w = workers(env=env, fast=False)
    line = one_line_exit_2(w, r"SENDRY_API_KEY_VAULT: role authenticator may not read "
                              r"vault\.decrypted_secrets \(permission denied.*GRANT USAGE ON SCHEMA vault")
    assert "ERROR:" not in line
    assert API_KEY not in w.log()


def test_no_vault_in_the_database_exits_2(cluster, fake, workers):
    env = dict(VAULT_ENV, DATABASE_URL=cluster.dsn_for("postgres", dbname="novault"))
    w = workers(env=env, fast=False)
    one_line_exit_2(w, r"SENDRY_API_KEY_VAULT: this database has no vault\.decrypted_secrets.*"
                       r"not installed")


def test_unreachable_database_exits_1(fake, workers, tmp_path):
    env = dict(VAULT_ENV, DATABASE_URL=f"host={tmp_path} port=1 dbname=postgres connect_timeout=2")
    w = workers(env=env, fast=False)
    assert w.wait(T) == 1, w.log()
    lines = [line for line in w.lines() if line.strip()]
    assert len(lines) == 1 and "SENDRY_API_KEY_VAULT" in lines[0], w.log()


def test_two_key_sources_exit_2(fake, workers):
    w = workers(env={"SENDRY_API_KEY": API_KEY, "SENDRY_API_KEY_VAULT": SECRET}, fast=False)
    one_line_exit_2(w, r"SENDRY_API_KEY and SENDRY_API_KEY_VAULT are both set")
    assert API_KEY not in w.log()


def test_doctor_reads_the_key_from_vault(cluster, db, fake, vault):
    vault(API_KEY)
    env = worker_env(cluster, fake, VAULT_ENV)
    r = subprocess.run([BIN, "doctor", "--json"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, timeout=60)
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["api key"]["status"] == "ok", checks["api key"]
    assert "SENDRY_API_KEY_VAULT" in checks["api key"]["detail"]
    assert API_KEY not in r.stdout + r.stderr
    assert import_requests(fake) == [] or all(
        req["json"] == {"contacts": []} for req in import_requests(fake))
