"""The pictures for the people who watch it: the Prometheus alert rules (contrib/prometheus/) pass
`promtool check rules` and their unit tests (each alert once firing and once not), and every expression of
the rules and of the Grafana dashboard (contrib/grafana/) names only metrics a running worker's GET /metrics
exports."""
import json
import os
import re
import shutil
import subprocess

import pytest

from conftest import ROOT
from test_lifecycle import ldb, start_listener  # noqa: F401

RULES = os.path.join(ROOT, "contrib", "prometheus", "sendry-sync.rules.yml")
RULES_TEST = os.path.join(ROOT, "contrib", "prometheus", "sendry-sync.rules.test.yml")
DASHBOARD = os.path.join(ROOT, "contrib", "grafana", "sendry-sync.json")

promtool = pytest.mark.skipif(not shutil.which("promtool"),
                              reason="promtool not installed (contrib/install-deps.sh installs prometheus)")


def run(*args, cwd=None):
    p = subprocess.run(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=120)
    assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}:\n{p.stdout}"
    return p.stdout


@promtool
def test_rules_are_valid():
    out = run("promtool", "check", "rules", RULES)
    assert "SUCCESS" in out


@promtool
def test_rules_unit_tests_pass():
    run("promtool", "test", "rules", os.path.basename(RULES_TEST), cwd=os.path.dirname(RULES_TEST))


def alert_names():
    return re.findall(r"^\s*- alert:\s*(\S+)", open(RULES).read(), re.M)


def test_each_alert_is_tested_firing_and_not_firing():
    """The unit test file has, for every alert, an evaluation expecting it and one expecting nothing."""
    text = open(RULES_TEST).read()
    names = alert_names()
    assert {"SendrySyncWedged", "SendrySyncSendingStopped", "SendrySyncOldestDueRowTooOld",
            "SendrySyncFailedRows", "SendrySyncTriggerErrors", "SendrySyncWebhooksRejected"} <= set(names)
    # Each alert_rule_test entry: alertname then exp_alerts: [] (not firing) or a list (firing).
    entries = re.findall(r"alertname:\s*(\S+)\s*\n\s*exp_alerts:(\s*\[\])?", text)
    for name in names:
        kinds = {bool(empty) for n, empty in entries if n == name}
        assert kinds == {True, False}, f"{name}: needs a test where it fires and one where it does not"


def metric_names(expr):
    return set(re.findall(r"\bsendry_sync_[a-z0-9_]+", expr))


def dashboard_exprs():
    dash = json.load(open(DASHBOARD))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        if isinstance(q, dict):
            exprs.append(q.get("query", ""))
    return exprs


def test_dashboard_shows_what_the_issue_asks():
    dash = json.load(open(DASHBOARD))
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for want in ("rows per second by outcome", "backlog", "age", "requests by status", "429", "webhook"):
        assert want in titles, f"no panel about {want!r}: {titles}"


def exported_metrics(hook):
    status, text = hook.get("/metrics")
    assert status == 200, text
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            name, kind = line.split()[2:4]
            names.add(name)
            if kind == "histogram":
                names |= {name + "_bucket", name + "_sum", name + "_count"}
        elif line and not line.startswith("#"):
            names.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
    return names


def test_rules_and_dashboard_name_only_exported_metrics(ldb, workers):  # noqa: F811
    hook = start_listener(workers)
    exported = exported_metrics(hook)
    assert "sendry_sync_rows_total" in exported, sorted(exported)
    used = {}
    for expr in dashboard_exprs():
        for n in metric_names(expr):
            used.setdefault(n, "contrib/grafana/sendry-sync.json")
    for expr in re.findall(r"^\s*expr:\s*(\|\s*\n(?:\s{10,}.*\n)+|.*)$", open(RULES).read(), re.M):
        for n in metric_names(expr):
            used.setdefault(n, "contrib/prometheus/sendry-sync.rules.yml")
    assert used, "no metric found in the rules or the dashboard"
    missing = {n: where for n, where in used.items() if n not in exported}
    assert not missing, f"metrics that GET /metrics does not export: {missing}"
