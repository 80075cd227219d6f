"""The Dockerfile must install what contrib/install-deps.sh (run by .ci/run) installs for the build, and the runtime
libraries those -dev packages stand for, so the two cannot drift apart. No Docker engine runs here: the image's
and the compose file's other promises (numeric USER, HEALTHCHECK, stripped binary, .dockerignore, the key as a
compose secret, stop_grace_period, restarts, the demo profile) are checked on the files, and the demo's database
script and worker settings are run for real."""
import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ci_list(name):
    text = open(os.path.join(ROOT, "contrib", "install-deps.sh")).read()
    m = re.search(rf'^{name}="([^"]*)"', text, re.M)
    assert m, f"{name} not found in contrib/install-deps.sh"
    return set(m.group(1).split())


def dockerfile_stages():
    """Packages passed to apt-get install in each FROM stage, in order."""
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    stages = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages.append((line.split()[1], set()))
        m = re.search(r"apt-get install ([^&]*)", line)
        if m and stages:
            stages[-1][1].update(w for w in m.group(1).split() if not w.startswith("-"))
    return stages


def test_build_stage_matches_ci():
    stages = dockerfile_stages()
    assert stages[0][0] == "debian:bookworm"
    assert stages[0][1] == ci_list("BUILD_PACKAGES")


def test_runtime_stage_is_slim_and_has_each_runtime_library():
    stages = dockerfile_stages()
    image, runtime = stages[-1]
    assert image == "debian:bookworm-slim"
    assert not any(p.endswith("-dev") for p in runtime), runtime
    if not shutil.which("apt-cache"):
        pytest.skip("apt-cache not available to resolve -dev packages")
    for dev in sorted(p for p in ci_list("BUILD_PACKAGES") if p.endswith("-dev") and p != "libc6-dev"):
        out = subprocess.run(["apt-cache", "depends", dev], stdout=subprocess.PIPE, text=True).stdout
        deps = set(re.findall(r"^\s*Depends: (\S+)", out, re.M))
        assert deps & runtime, f"{dev}: none of its runtime libraries {sorted(deps)} is in the runtime stage"


# --- the image: numeric user, HEALTHCHECK, stripped binary, .dockerignore ----------------------

def dockerfile_text():
    return open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")


def test_runtime_user_is_numeric():
    text = dockerfile_text()
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert len(users) == 1, users
    m = re.fullmatch(r"(\d+):(\d+)", users[0])
    assert m, f"USER {users[0]}: runAsNonRoot can only verify a numeric uid"
    uid, gid = m.groups()
    assert uid != "0"
    assert re.search(rf"useradd [^&]*--uid {uid}\b[^&]*--gid {gid}\b", text)
    assert re.search(rf"groupadd [^&]*--gid {gid}\b", text)


def test_healthcheck_runs_the_subcommand():
    m = re.search(r"^HEALTHCHECK (.*?) CMD (\[.*\])$", dockerfile_text(), re.M)
    assert m, "no exec-form HEALTHCHECK"
    assert json.loads(m.group(2)) == ["/usr/local/bin/sendry-sync", "healthcheck"]
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", dockerfile_text(), re.M)
    assert json.loads(entry.group(1))[0] == "/usr/local/bin/sendry-sync"


def test_binary_is_stripped():
    text = dockerfile_text()
    build = text.split("\nFROM ")[1]
    assert re.search(r"^RUN make sendry-sync && strip sendry-sync$", build, re.M)
    assert "COPY --from=build /src/sendry-sync /usr/local/bin/sendry-sync" in text


def dockerignored(path, patterns):
    """Docker's rule for these simple patterns: a pattern matches the path or a parent."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(fnmatch.fnmatch(p, pat.rstrip("/")) for pat in patterns for p in prefixes)


def test_dockerignore_excludes_build_outputs_and_git():
    lines = open(os.path.join(ROOT, ".dockerignore")).read().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns)
    for path in (".git", ".git/HEAD", "build/install_sql.c", "sendry-sync", "sendry-sync-asan",
                 "src/main.o", "tests/conftest.py"):
        assert dockerignored(path, patterns), f"{path} would be sent to the build"
    # what the Dockerfile copies must stay in the context
    for src in re.findall(r"^COPY (?!--from)(\S+) ", dockerfile_text(), re.M):
        assert not dockerignored(src.rstrip("/"), patterns), src
        assert os.path.exists(os.path.join(ROOT, src)), src


# --- compose -----------------------------------------------------------------------------------

COMPOSE = os.path.join(ROOT, "contrib", "docker-compose.yml")


def compose():
    import yaml  # python3-yaml, from contrib/install-deps.sh
    return yaml.safe_load(open(COMPOSE))


def seconds(text):
    m = re.fullmatch(r"(\d+)(s|m)", str(text))
    assert m, text
    return int(m.group(1)) * (60 if m.group(2) == "m" else 1)


def drain_timeout(service):
    cmd = service.get("command") or []
    return float(cmd[cmd.index("--drain-timeout") + 1]) if "--drain-timeout" in cmd else 10.0


def test_compose_live_worker_takes_the_key_as_a_secret():
    c = compose()
    w = c["services"]["worker"]
    assert w["profiles"] == ["live"]
    assert w["secrets"] == ["sendry_api_key"]
    assert w["environment"]["SENDRY_API_KEY_FILE"] == "/run/secrets/sendry_api_key"
    assert "SENDRY_API_KEY" not in w["environment"]
    assert "file" in c["secrets"]["sendry_api_key"]
    text = open(COMPOSE).read()
    assert ":?" not in text, "a required ${VAR:?} would break every profile, the demo's too"


def test_compose_stops_gracefully_and_does_not_loop_on_exit_2():
    for name, s in compose()["services"].items():
        if s.get("build"):
            assert seconds(s["stop_grace_period"]) > drain_timeout(s) + 5, name
            assert re.fullmatch(r"on-failure:\d+|unless-stopped", s["restart"]), name


def test_compose_demo_profile_needs_no_key():
    c = compose()
    demo = {n: s for n, s in c["services"].items() if s.get("profiles") == ["demo"]}
    assert set(demo) == {"demo-db", "demo-sendry", "demo-worker"}
    here = os.path.dirname(COMPOSE)
    mounts = {}
    for s in demo.values():
        for v in s.get("volumes", []):
            src, dst = v.split(":")[:2]
            assert os.path.exists(os.path.normpath(os.path.join(here, src))), src
            mounts[dst] = os.path.normpath(os.path.join(here, src))
    assert mounts["/sendry/supabase.sql"] == os.path.join(ROOT, "tests", "fixtures", "supabase.sql")
    assert mounts["/sendry/install.sql"] == os.path.join(ROOT, "sql", "install.sql")
    assert mounts["/sendry/fake_sendry.py"] == os.path.join(ROOT, "tests", "fake_sendry.py")
    assert mounts["/docker-entrypoint-initdb.d/10-sendry-demo.sh"] == os.path.join(here, "demo-initdb.sh")
    w = demo["demo-worker"]
    assert w["network_mode"] == "service:demo-sendry"
    assert w["environment"]["SENDRY_API_URL"] == "http://127.0.0.1:8080"
    assert "secrets" not in w and "${" not in json.dumps(demo)


def test_demo_database_and_worker(tmp_path):
    """The demo's init script on a plain PostgreSQL (as the postgres image runs it, as the
    bootstrap superuser), then the demo worker's settings against the fake Sendry."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import pgharness
    from fake_sendry import FakeSendry
    sqldir = tmp_path / "sendry"
    sqldir.mkdir()
    shutil.copy(os.path.join(ROOT, "tests", "fixtures", "supabase.sql"), sqldir)
    shutil.copy(os.path.join(ROOT, "sql", "install.sql"), sqldir)
    w = compose()["services"]["demo-worker"]
    env_demo = w["environment"]
    with pgharness.Cluster(supabase=False, port=20000 + (os.getpid() + 503) % 20000) as pg, \
            FakeSendry(api_key=env_demo["SENDRY_API_KEY"], audience_id=env_demo["SENDRY_AUDIENCE_ID"],
                       rate_limit=None) as fake:
        env = dict(pg.env(user=pg.SUPERUSER), SENDRY_DEMO_SQL_DIR=str(sqldir))
        subprocess.run(["sh", os.path.join(ROOT, "contrib", "demo-initdb.sh")], env=env, check=True,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDRY_")}
        env.update({k: str(v) for k, v in env_demo.items()},
                   DATABASE_URL=pg.dsn_for("postgres"), SENDRY_API_URL=fake.url)
        binary = os.environ.get("SENDRY_SYNC_BIN") or os.path.join(ROOT, "sendry-sync")
        r = subprocess.run([binary, *w["command"], "--once"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=60)
        assert r.returncode == 0, r.stdout
        assert set(fake.contacts) == {"ada@example.com", "grace@example.com"}
