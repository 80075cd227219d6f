"""The docs tell the truth about the code: every flag, variable, metric and compose service the README and
docs/ name exists, every one the binary has is documented, every relative link leads somewhere, and the
README stays a front door (short) that points at the reference in docs/."""
import glob
import os
import re
import subprocess

import yaml

from conftest import BIN, ROOT
from test_lifecycle import ldb, start_listener  # noqa: F401
from test_observability import exported_metrics

DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
# Flags of other programs the docs show: docker compose (--profile, --scale, --build), docker run
# (--name), systemctl (--now), tests/bench/bench.py (--only, --keep, --baseline), tests/chaos.py (--only,
# --seed), tests/bench_triggers.py (--baseline, --users, --runs),
# tests/bench_signup_instructions.py (--signin).
OTHER_TOOLS_FLAGS = {"--profile", "--scale", "--build", "--name", "--now", "--only", "--keep", "--seed",
                     "--baseline", "--users", "--runs", "--signin", "--fillfactor"}


def text(path):
    return open(path).read()


def all_docs():
    return "\n".join(text(p) for p in DOCS)


def help_text():
    return subprocess.run([BIN, "--help"], stdout=subprocess.PIPE, text=True, check=True).stdout


def binary_flags():
    return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text()))


def test_every_documented_flag_exists():
    flags = binary_flags()
    for path in DOCS:
        for flag in set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", text(path))):
            assert flag in flags or flag in OTHER_TOOLS_FLAGS, f"{os.path.relpath(path, ROOT)} names {flag}, " \
                                                               "which sendry-sync --help does not have"


def test_every_flag_and_variable_is_in_the_configuration_reference():
    doc = text(CONFIG_DOC)
    for flag in binary_flags() - {"--help", "--version"}:
        assert re.search(rf"`{re.escape(flag)}[` ]", doc), f"docs/configuration.md does not document {flag}"
    variables = set(re.findall(r"\b(?:DATABASE_URL|SENDRY_[A-Z_]+)\b", help_text()))
    assert "SENDRY_API_KEY_FILE" in variables
    for var in variables:
        assert f"`{var}`" in doc, f"docs/configuration.md does not document {var}"


def test_every_documented_variable_exists():
    """The worker's variables, and the tests' and benchmarks' own (SENDRY_SYNC_BIN, ...)."""
    readers = [p for pattern in ("src/*.c", "tests/*.py", "tests/bench/*.py", "Makefile", "contrib/*")
               for p in glob.glob(os.path.join(ROOT, pattern))]
    source = "\n".join(open(p, errors="replace").read() for p in readers if os.path.isfile(p))
    for var in set(re.findall(r"\bSENDRY_[A-Z_]*[A-Z]\b", all_docs())):
        assert var in source, f"the docs name {var}, which nothing reads"


def test_metrics_documented_and_exported(ldb, workers):  # noqa: F811
    hook = start_listener(workers)
    exported = exported_metrics(hook)
    documented = set(re.findall(r"\bsendry_sync_[a-z0-9_]+", all_docs()))
    # SQL objects share the prefix (the table sendry_sync_state, the triggers sendry_sync_users_*)
    sql = "\n".join(open(p).read() for p in glob.glob(os.path.join(ROOT, "sql", "**", "*.sql"), recursive=True))
    documented = {m for m in documented if not re.search(rf"\b{m}", sql)}
    histogram_parts = {m + s for m in exported for s in ("_bucket", "_sum", "_count")}
    for m in documented:
        assert m in exported or m in histogram_parts, f"the docs name {m}, which GET /metrics does not export"
    ops = text(os.path.join(ROOT, "docs", "operations.md"))
    for m in exported:
        if m.endswith(("_bucket", "_sum", "_count")) and m.rsplit("_", 1)[0] in exported:
            continue
        assert f"`{m}" in ops, f"{m} is exported but docs/operations.md does not document it"


def test_compose_services_named_in_the_docs_exist():
    compose = yaml.safe_load(text(os.path.join(ROOT, "contrib", "docker-compose.yml")))
    services = set(compose["services"])
    docs = all_docs()
    named = set(re.findall(r"--scale ([\w-]+)=", docs)) | set(re.findall(r"\bexec ([\w-]+) sendry-sync", docs))
    named |= set(re.findall(r"\bservice `([\w-]+)`", docs))
    assert named, "expected the docs to name compose services"
    for s in named:
        assert s in services, f"the docs name the compose service {s!r}; contrib/docker-compose.yml has {sorted(services)}"


def anchors(path):
    out, fence = set(), False
    for line in text(path).splitlines():
        if line.startswith("```"):
            fence = not fence
        if not fence and re.match(r"^#{1,6} ", line):
            h = re.sub(r"[^\w\- ]", "", line.lstrip("#").strip().lower())
            out.add(h.replace(" ", "-"))
    return out


def test_relative_links_lead_somewhere():
    for path in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", text(path)):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = os.path.normpath(os.path.join(os.path.dirname(path), file)) if file else path
            assert os.path.exists(dest), f"{os.path.relpath(path, ROOT)} links to {target}: no such file"
            if anchor and dest.endswith(".md"):
                assert anchor in anchors(dest), f"{os.path.relpath(path, ROOT)} links to {target}: no such heading"


def test_readme_is_a_front_door():
    readme = text(os.path.join(ROOT, "README.md"))
    assert len(readme.splitlines()) <= 300, "the README is a front door: put reference material in docs/"
    for cmd in ("sh contrib/install-deps.sh && make demo", "sh contrib/install-deps.sh && make check"):
        assert cmd in readme
    assert "sudo sh" not in readme, "as root there is no sudo: install-deps.sh adds it itself when needed"
    for doc in glob.glob(os.path.join(ROOT, "docs", "*.md")):
        assert f"docs/{os.path.basename(doc)}" in readme, f"the README does not link {os.path.basename(doc)}"
