"""systemd: sd_notify for real (a Unix datagram socket bound here, NOTIFY_SOCKET pointing at
it, the real binary), and contrib/sendry-sync.service checked by systemd-analyze verify and
security (skipped, saying why, where systemd-analyze is missing)."""

import os
import re
import shutil
import socket
import subprocess

import pytest

from conftest import BIN, ROOT, T, wait_until

UNIT = os.path.join(ROOT, "contrib", "sendry-sync.service")


class NotifySocket:
    """A bound AF_UNIX datagram socket: what systemd listens on for a Type=notify service."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages = []

    def drain(self):
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (socket.timeout, BlockingIOError):
                return

    def assignments(self):
        """Every KEY=value line received, in order."""
        self.drain()
        return [line for m in self.messages for line in m.split("\n") if line]

    def wait_for(self, line, timeout=T):
        return wait_until(lambda: line in self.assignments(), timeout, f"{line!r} on NOTIFY_SOCKET")

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    s = NotifySocket(str(tmp_path / "notify.sock"))
    yield s
    s.close()


def test_ready_watchdog_stopping(db, fake, workers, notify):
    fake.delay_next(1.0)  # the audience check answers late: READY waits for it
    w = workers(env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"})
    notify.wait_for("READY=1")
    log = w.log()
    assert "db: connected" in log and re.search(r"audience \S+ .* verified", log), \
        "READY=1 before the database was connected and the audience verified:\n" + log
    assert any(a.startswith("STATUS=delivering") for a in notify.assignments())
    # WATCHDOG_USEC=0.2 s: a keep-alive every 0.1 s while the loop runs
    wait_until(lambda: notify.assignments().count("WATCHDOG=1") >= 3, T, "three WATCHDOG=1")
    w.terminate()
    notify.wait_for("STOPPING=1")
    assert w.wait(T) == 0
    got = notify.assignments()
    assert got.count("READY=1") == 1
    assert got.index("READY=1") < got.index("STOPPING=1")
    assert got[got.index("STOPPING=1") + 1].startswith("STATUS=stopping")


def test_status_says_why_sending_stopped(db, fake, workers, notify):
    w = workers("--no-verify", env={"NOTIFY_SOCKET": notify.path, "SENDRY_API_KEY": "sn_test_revoked"})
    notify.wait_for("READY=1")
    db.signup("status@example.com")
    wait_until(lambda: any(a.startswith("STATUS=sending stopped:") and "401" in a
                           for a in notify.assignments()), T, "STATUS=sending stopped")
    assert "sn_test_revoked" not in "\n".join(notify.assignments())
    w.terminate()
    assert w.wait(T) == 0


def test_no_watchdog_without_watchdog_usec(db, fake, workers, notify):
    w = workers(env={"NOTIFY_SOCKET": notify.path})
    notify.wait_for("READY=1")
    w.terminate()
    notify.wait_for("STOPPING=1")
    assert w.wait(T) == 0
    assert "WATCHDOG=1" not in notify.assignments()


# --- the unit ------------------------------------------------------------------------------------

def analyze():
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.skip("systemd-analyze is not installed (Debian package systemd): the unit "
                    "cannot be verified on this machine")
    return path


def test_unit_verifies(tmp_path):
    tool = analyze()
    # verify insists that ExecStart= exists: check the unit as it is, pointed at this build.
    text = open(UNIT).read()
    assert "ExecStart=/usr/local/bin/sendry-sync\n" in text
    unit = tmp_path / "sendry-sync.service"
    unit.write_text(text.replace("ExecStart=/usr/local/bin/sendry-sync", f"ExecStart={BIN}"))
    r = subprocess.run([tool, "verify", str(unit)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout  # warnings count as failures


def test_unit_security_rating_is_2_or_better():
    tool = analyze()
    r = subprocess.run([tool, "security", "--offline=true", "--threshold=20", UNIT],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60)
    m = re.search(r"Overall exposure level for sendry-sync\.service: (\d+\.\d)", r.stdout)
    assert m, r.stdout
    assert float(m.group(1)) <= 2.0 and r.returncode == 0, r.stdout


def test_unit_hands_the_key_over_as_a_credential():
    text = open(UNIT).read()
    assert "Type=notify" in text and re.search(r"^WatchdogSec=\S+", text, re.M)
    assert "LoadCredential=sendry-api-key:/etc/sendry-sync/api-key" in text
    assert "Environment=SENDRY_API_KEY_FILE=%d/sendry-api-key" in text
    assert "DynamicUser=yes" in text and "RestartPreventExitStatus=2" in text
    # TimeoutStopSec above the default --drain-timeout (10 s) plus the release
    assert int(re.search(r"^TimeoutStopSec=(\d+)s", text, re.M).group(1)) > 15


def test_key_file_in_a_credentials_directory(db, fake, workers, tmp_path):
    """What the unit sets up: SENDRY_API_KEY_FILE=%d/sendry-api-key, %d = $CREDENTIALS_DIRECTORY."""
    creds = tmp_path / "credentials"
    creds.mkdir()
    (creds / "sendry-api-key").write_text(fake.api_key + "\n")
    os.chmod(creds / "sendry-api-key", 0o400)
    w = workers(env={"SENDRY_API_KEY": None, "CREDENTIALS_DIRECTORY": str(creds),
                     "SENDRY_API_KEY_FILE": str(creds / "sendry-api-key")})
    w.wait_ready(T)
    db.signup("credential@example.com")
    wait_until(lambda: db.all_sent(1), T, "sent with the key from the credential")
