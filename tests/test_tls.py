"""--ca-file (SENDRY_CA_FILE) against a local TLS fake Sendry whose certificate is signed by a
private CA made here with the openssl CLI: with the CA the worker delivers; without it every
request fails TLS verification, rows stay pending and the log says what to do. libcurl reads
neither SSL_CERT_FILE nor CURL_CA_BUNDLE, so setting them changes nothing."""

import json
import os
import shutil
import ssl
import subprocess

import pytest

from conftest import AUDIENCE, API_KEY, BIN, T, start_daemon, wait_until, worker_env
from fake_sendry import FakeSendry


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A private CA, and a certificate for 127.0.0.1 signed by it."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed (contrib/install-deps.sh installs it)")
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=sendry-sync test CA", cwd=d)
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "san.ext").write_text("subjectAltName = IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext", cwd=d)
    return d


@pytest.fixture
def tls_fake(pki):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(pki / "server.pem"), str(pki / "server.key"))
    f = FakeSendry(api_key=API_KEY, audience_id=AUDIENCE, rate_limit=None, ssl_context=ctx)
    f.start()
    yield f
    f.stop()


def test_ca_file_delivers(db, tls_fake, workers, pki):
    assert tls_fake.url.startswith("https://127.0.0.1:")
    w = start_daemon(workers, "--ca-file", str(pki / "ca.pem"), env={"SENDRY_API_URL": tls_fake.url})
    db.signup("tls@example.com")
    wait_until(lambda: db.all_sent(1), T, "the row sent over TLS")
    assert tls_fake.contacts["tls@example.com"]


def test_sendry_ca_file_variable(db, tls_fake, workers, pki):
    start_daemon(workers, env={"SENDRY_API_URL": tls_fake.url, "SENDRY_CA_FILE": str(pki / "ca.pem")})
    db.signup("tlsenv@example.com")
    wait_until(lambda: db.all_sent(1), T, "the row sent over TLS")


def test_without_ca_file_verification_fails_and_rows_stay_pending(db, tls_fake, workers, pki):
    # What does not work: the variables OpenSSL tools and the curl CLI read.
    env = {"SENDRY_API_URL": tls_fake.url, "SSL_CERT_FILE": str(pki / "ca.pem"),
           "CURL_CA_BUNDLE": str(pki / "ca.pem")}
    w = workers(env=env)
    w.wait_log(r"startup check of the audience failed \(network: SSL certificate problem.*"
               r"--ca-file / SENDRY_CA_FILE", T)
    db.signup("untrusted@example.com")
    wait_until(lambda: db.row("untrusted@example.com")["attempts"] >= 1 and
               db.row("untrusted@example.com")["status"] == "pending", T, "a failed attempt")
    row = db.row("untrusted@example.com")
    assert row["last_error"].startswith("network: SSL certificate problem"), row
    assert "SENDRY_CA_FILE" in row["last_error"]
    w.wait_log(r"warn .*network: SSL certificate problem.*will retry with backoff", T)
    assert not tls_fake.requests, "no request got through"


def test_once_that_could_deliver_nothing_over_tls_exits_3(db, tls_fake, workers):
    """For cron and CI: a --once run whose every request failed (here TLS) is not 0."""
    db.signup("cron@example.com")
    w = workers("--once", "--backoff-base", "60", "--backoff-cap", "60",   # no retry in this run
                env={"SENDRY_API_URL": tls_fake.url})
    assert w.wait(T) == 3, w.log()
    assert db.row("cron@example.com")["status"] == "pending"


def test_unreadable_ca_file_exits_2(fake, workers, tmp_path):
    w = workers("--ca-file", str(tmp_path / "missing.pem"), fast=False)
    assert w.wait(T) == 2
    assert "SENDRY_CA_FILE (--ca-file): cannot read" in w.log()


def test_doctor_uses_the_ca_file(cluster, db, tls_fake, pki):
    def doctor(*args):
        r = subprocess.run([BIN, "doctor", "--json", *args], env=worker_env(cluster, tls_fake),
                           stdout=subprocess.PIPE, text=True, timeout=120)
        return {c["name"]: c for c in json.loads(r.stdout)["checks"]}

    assert doctor("--ca-file", str(pki / "ca.pem"))["api key"]["status"] == "ok"
    k = doctor()["api key"]
    assert k["status"] == "fail" and "SSL certificate problem" in k["detail"]
    assert "--ca-file" in k["fix"]
