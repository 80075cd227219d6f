"""Installs like a Unix daemon: the man page lints clean and names every command, flag, variable, signal and
exit status the binary has; `make install` (PREFIX, DESTDIR, BINDIR, MANDIR, DATADIR, DOCDIR, UNITDIR) puts the
binary, the man page, the SQL, the systemd unit pointing at the installed binary and the docs in place, and
`make uninstall` takes them away; `make deb` builds a package lintian finds no error in. (.ci/run then installs
that package with apt and checks it.)"""
import os
import re
import shutil
import subprocess

import pytest

from conftest import BIN, ROOT

MAN = os.path.join(ROOT, "docs", "sendry-sync.1")


def run(args, cwd=ROOT, env=None, timeout=300):
    p = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=timeout, env=env)
    assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}:\n{p.stdout[-4000:]}"
    return p.stdout


def man_text():
    """The page's words with roff escapes for '-' undone."""
    return open(MAN).read().replace("\\-", "-").replace("\\e", "\\")


def help_text():
    return subprocess.run([BIN, "--help"], stdout=subprocess.PIPE, text=True, check=True).stdout


def test_man_page_lints_clean():
    if shutil.which("mandoc"):
        out = run(["mandoc", "-Tlint", "-Wstyle", MAN])
    elif shutil.which("groff"):
        out = run(["groff", "-ww", "-z", "-man", MAN])
    else:
        pytest.skip("neither mandoc nor groff is installed (contrib/install-deps.sh installs mandoc)")
    assert out.strip() == "", out


def test_man_page_names_every_command_flag_and_variable():
    page, helptext = man_text(), help_text()
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", helptext)) | {"-h", "-V"}
    commands = set(re.findall(r"^\s+sendry-sync ([a-z][a-z-]+)", helptext, re.M))
    variables = set(re.findall(r"\b(?:DATABASE_URL|SENDRY_[A-Z_]+|https_proxy|HTTPS_PROXY|NO_PROXY)\b", helptext))
    assert {"--once", "--rate"} <= flags and {"migrate", "doctor", "backfill"} <= commands, helptext
    assert "SENDRY_AUDIENCE_ID" in variables
    for word in sorted(flags | commands | variables):
        assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", page), f"the man page does not name {word}"
    # and no option the binary does not have
    options = page.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
    for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", options)):
        assert flag in flags, f"the man page names {flag}, which --help does not"


def test_man_page_has_signals_and_exit_statuses():
    page = man_text()
    for section in ("NAME", "SYNOPSIS", "DESCRIPTION", "COMMANDS", "OPTIONS", "ENVIRONMENT", "SIGNALS",
                    "EXIT STATUS", "FILES", "EXAMPLES", "SEE ALSO"):
        assert re.search(rf'^\.SH "?{section}"?$', page, re.M), f"no section {section}"
    for sig in ("SIGTERM", "SIGINT", "SIGHUP"):
        assert sig in page
    statuses = page.split(".SH EXIT STATUS", 1)[1].split(".SH ", 1)[0]
    for code in ("0", "1", "2", "3"):
        assert re.search(rf"^\.B {code}$", statuses, re.M), f"exit status {code} not described"
    version = subprocess.run([BIN, "--version"], stdout=subprocess.PIPE, text=True).stdout.split()[1]
    assert f'"sendry-sync {version}"' in page.split("\n.SH", 1)[0], "the .TH line names another version"


def installed_files(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_make_install_and_uninstall(tmp_path):
    stage = tmp_path / "stage"
    run(["make", "-s", "install", f"DESTDIR={stage}", "PREFIX=/usr", "UNITDIR=/lib/systemd/system"])
    files = installed_files(stage)
    for want in ("usr/bin/sendry-sync", "usr/share/man/man1/sendry-sync.1", "usr/share/sendry-sync/sql/install.sql",
                 "usr/share/sendry-sync/sql/uninstall.sql", "lib/systemd/system/sendry-sync.service",
                 "usr/share/doc/sendry-sync/README.md", "usr/share/sendry-sync/prometheus/sendry-sync.rules.yml",
                 "usr/share/sendry-sync/grafana/sendry-sync.json"):
        assert want in files, files
    assert os.stat(stage / "usr/bin/sendry-sync").st_mode & 0o777 == 0o755
    unit = (stage / "lib/systemd/system/sendry-sync.service").read_text()
    assert re.search(r"^ExecStart=/usr/bin/sendry-sync$", unit, re.M), unit
    assert not re.search(r"^[^#\n]*/usr/local/bin", unit, re.M), unit
    out = subprocess.run([str(stage / "usr/bin/sendry-sync"), "--version"], stdout=subprocess.PIPE, text=True)
    assert out.returncode == 0 and out.stdout.startswith("sendry-sync "), out.stdout
    # BINDIR and MANDIR on their own; the default PREFIX is /usr/local
    alt = tmp_path / "alt"
    run(["make", "-s", "install", f"DESTDIR={alt}", "BINDIR=/opt/ss/sbin", "MANDIR=/opt/ss/man"])
    alt_files = installed_files(alt)
    assert "opt/ss/sbin/sendry-sync" in alt_files and "opt/ss/man/man1/sendry-sync.1" in alt_files, alt_files
    assert "usr/local/share/sendry-sync/sql/install.sql" in alt_files, alt_files
    assert "ExecStart=/opt/ss/sbin/sendry-sync\n" in (alt / "usr/local/lib/systemd/system/sendry-sync.service").read_text()
    run(["make", "-s", "uninstall", f"DESTDIR={stage}", "PREFIX=/usr", "UNITDIR=/lib/systemd/system"])
    assert installed_files(stage) == []


def test_installed_unit_verifies(tmp_path):
    """Installed under a PREFIX of its own (no DESTDIR), the unit's ExecStart is the installed binary and
    systemd-analyze verify has nothing to say."""
    tool = shutil.which("systemd-analyze")
    if not tool:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    prefix = tmp_path / "prefix"
    run(["make", "-s", "install", f"PREFIX={prefix}"])
    unit = prefix / "lib/systemd/system/sendry-sync.service"
    assert f"ExecStart={prefix}/bin/sendry-sync\n" in unit.read_text()
    out = run([tool, "verify", str(unit)], timeout=60)
    assert out.strip() == "", out


def test_deb_builds_and_lintian_finds_no_error(tmp_path):
    for tool in ("dpkg-buildpackage", "dh", "lintian", "fakeroot"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed (contrib/install-deps.sh installs the packaging tools)")
    run(["make", "-s", "deb"], timeout=600)
    debs = [f for f in os.listdir(os.path.join(ROOT, "build", "deb"))
            if re.match(r"sendry-sync_[^_]+_[^_]+\.deb$", f)]
    assert len(debs) == 1, debs
    deb = os.path.join(ROOT, "build", "deb", debs[0])
    version = subprocess.run([BIN, "--version"], stdout=subprocess.PIPE, text=True).stdout.split()[1]
    assert debs[0].startswith(f"sendry-sync_{version}-"), f"{debs[0]}: debian/changelog is not at {version}"
    out = run(["lintian", "--tag-display-limit", "0", deb], timeout=300)
    errors = [line for line in out.splitlines() if line.startswith("E:")]
    assert not errors, out
    run(["dpkg-deb", "-x", deb, str(tmp_path)])
    files = installed_files(tmp_path)
    for want in ("usr/bin/sendry-sync", "usr/share/man/man1/sendry-sync.1.gz", "lib/systemd/system/sendry-sync.service",
                 "usr/share/sendry-sync/sql/install.sql", "usr/share/doc/sendry-sync/copyright"):
        assert want in files, files
    assert "ExecStart=/usr/bin/sendry-sync\n" in (tmp_path / "lib/systemd/system/sendry-sync.service").read_text()
    out = subprocess.run([str(tmp_path / "usr/bin/sendry-sync"), "--version"], stdout=subprocess.PIPE, text=True)
    assert out.returncode == 0 and out.stdout.startswith(f"sendry-sync {version} "), out.stdout
