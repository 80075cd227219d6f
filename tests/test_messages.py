"""Messages that tell the truth and name the fix (issue 19, point 5): each of these said something else
before (an empty key file was "SENDRY_API_KEY is not set", a short webhook secret "needs
SENDRY_WEBHOOK_SECRET", an API URL ending in /v1 was blamed on the audience, DATABASE_URL=garbage was taken
as a database name by the commands, doctor said "exposure ok" with nothing installed, a TLS host-name
mismatch was called a missing CA, a CA file that is not PEM was retried for ever, "listening" was logged
twice, the server version printed as 150020)."""
import re
import subprocess

import psycopg
import pytest

from conftest import BIN, T, start_daemon, worker_env
from test_lifecycle import ldb, start_listener  # noqa: F401
from test_tls import pki, tls_fake  # noqa: F401

SECRET_KEY = "sn_live_messages_test_key_0123456789"


def one_line_exit_2(w):
    assert w.wait(T) == 2, w.log()
    lines = [line for line in w.lines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{w.log()}"
    return lines[0]


def test_empty_key_file_says_the_file_is_empty(fake, workers, tmp_path):
    key = tmp_path / "api-key"
    key.write_text("\n")
    line = one_line_exit_2(workers(env={"SENDRY_API_KEY": None, "SENDRY_API_KEY_FILE": str(key)}, fast=False))
    assert re.search(r"SENDRY_API_KEY_FILE: \S*api-key is empty", line), line
    assert "not set" not in line


def test_short_webhook_secret_names_the_minimum(fake, workers):
    line = one_line_exit_2(workers("--listen", "127.0.0.1:0", env={"SENDRY_WEBHOOK_SECRET": "short-secret"},
                                   fast=False))
    assert re.search(r"SENDRY_WEBHOOK_SECRET is 12 characters.*at least 16", line), line


def test_api_url_ending_in_v1_is_blamed_on_the_url(fake, workers):
    line = one_line_exit_2(workers(env={"SENDRY_API_URL": fake.url + "/v1"}, fast=False))
    assert line.count("SENDRY_API_URL") == 1 and "/v1" in line and "AUDIENCE" not in line, line
    assert not fake.requests


@pytest.mark.parametrize("command", [[], ["doctor"], ["status"], ["backfill"], ["reconcile-contacts"],
                                     ["migrate"], ["healthcheck"]])
def test_database_url_that_is_not_one_exits_2_for_every_command(cluster, fake, command):
    """healthcheck answers 0 or 1 only (Docker reserves 2), with the same line."""
    p = subprocess.run([BIN, *command], env=worker_env(cluster, fake, {"DATABASE_URL": "garbage"}),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=T)
    lines = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    assert p.returncode == (1 if command == ["healthcheck"] else 2), (p.returncode, lines)
    assert len(lines) == 1 and "DATABASE_URL: not a connection string or URL" in lines[0], lines


def test_ca_file_that_is_not_pem_exits_2(fake, workers, tmp_path):
    bad = tmp_path / "ca.der"
    bad.write_bytes(b"\x30\x82\x01\x0a not a certificate")
    line = one_line_exit_2(workers("--ca-file", str(bad), fast=False))
    assert re.search(r"SENDRY_CA_FILE \(--ca-file\): \S*ca\.der holds no PEM certificate", line), line


def test_tls_host_name_mismatch_is_called_that(db, tls_fake, workers, pki):  # noqa: F811
    """The certificate is for 127.0.0.1; reached as localhost, with the right CA given."""
    url = tls_fake.url.replace("127.0.0.1", "localhost")
    w = workers("--ca-file", str(pki / "ca.pem"), env={"SENDRY_API_URL": url})
    w.wait_log(r"startup check of the audience failed .*not for this host name", T)
    assert "give its certificate with --ca-file" not in w.log()


def test_untrusted_certificate_with_a_ca_file_does_not_suggest_one(db, tls_fake, workers, tmp_path):  # noqa: F811
    other = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp_path / "k"),
                    "-out", str(other), "-days", "2", "-subj", "/CN=another CA"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    w = workers("--ca-file", str(other), env={"SENDRY_API_URL": tls_fake.url})
    w.wait_log(r"startup check of the audience failed .*no CA in --ca-file / SENDRY_CA_FILE signed", T)


def test_doctor_on_an_empty_database_does_not_call_exposure_ok(cluster, fake):
    with psycopg.connect(cluster.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS empty_db")
        conn.execute("CREATE DATABASE empty_db")
    dsn = re.sub(r"dbname=\S+", "dbname=empty_db", cluster.dsn) if "dbname=" in cluster.dsn \
        else cluster.dsn + " dbname=empty_db"
    p = subprocess.run([BIN, "doctor"], env=worker_env(cluster, fake, {"DATABASE_URL": dsn}),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=60)
    exposure = [line for line in p.stdout.splitlines() if "exposure" in line]
    assert exposure and not re.search(r"\bok\b", exposure[0]), p.stdout
    assert "nothing installed" in exposure[0], p.stdout


def test_one_listening_line_and_a_readable_server_version(ldb, workers):  # noqa: F811
    hook = start_listener(workers)
    log = hook.worker.log()
    assert len(re.findall(r"listening on", log)) == 1, log
    assert re.search(r"db: connected \(relay connection, PostgreSQL \d+\.\d+", log), log
    assert not re.search(r"server 1\d{5}", log), log
