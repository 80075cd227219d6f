"""A 10,000-row backlog right after install (no statistics) drains in plan-tested time
(issue 16, point 9): the real worker drains it with `--once` while auto_explain records
the plan of every statement it runs, as run (log_analyze); each completion must have
found its rows by key: the outcomes read once, one probe of the primary key per
outcome, no join comparing the rows held with the outcomes, no sequential scan of the
outbox, and no more outbox rows looked at than a small multiple of its outcomes. No
timing is asserted here; the drain rate before and after the fix is in `make bench`
(tests/bench/bench.py, case k).

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_backlog_after_install.py
"""

import json
import os
import re

import pytest

import pgharness
from conftest import T

BACKLOG = 10_000


@pytest.fixture(scope="module")
def cluster():
    """Installed, then every session of role postgres (the worker's) logs its plans as run.
    Autovacuum is off: the outbox keeps no statistics, as right after install."""
    with pgharness.Cluster(supabase=True, install=True, port=20000 + (os.getpid() + 409) % 20000,
                           conf=["autovacuum = off"]) as c:
        for setting in ("session_preload_libraries = 'auto_explain'", "auto_explain.log_min_duration = 0",
                        "auto_explain.log_analyze = on", "auto_explain.log_timing = off",
                        "auto_explain.log_format = json", "log_min_messages = log"):
            c.psql_as(pgharness.Cluster.SUPERUSER, "-c", f"ALTER ROLE postgres SET {setting}")
        yield c


def logged_plans(cluster):
    """(query text, plan) of every statement auto_explain logged."""
    text = open(cluster.logfile).read()
    out = []
    for m in re.finditer(r"plan:\n(\t?\{.*?\n\t?\})\n", text, re.S):
        p = json.loads(re.sub(r"^\t", "", m.group(1), flags=re.M))
        out.append((p["Query Text"], p["Plan"]))
    return out


def nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def looked_at(n):
    return (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)


def test_a_backlog_right_after_install_is_completed_by_key(cluster, fake, workers):
    cluster.psql("-c", "INSERT INTO public.sendry_outbox (user_id, email)"
                       " SELECT gen_random_uuid(), 'backlog' || g || '@example.com'"
                       f" FROM generate_series(1, {BACKLOG}) g")
    assert cluster.query("SELECT reltuples FROM pg_class WHERE oid = 'public.sendry_outbox'::regclass") == [["-1"]]
    w = workers("--once")
    assert w.wait(4 * T) == 0, w.log()
    assert cluster.query("SELECT status, count(*) FROM public.sendry_outbox GROUP BY 1") == [["sent", str(BACKLOG)]]
    completions = [(q, p) for q, p in logged_plans(cluster)
                   if "jsonb_to_recordset($1::jsonb)" in q and "UPDATE public.sendry_outbox o" in q
                   and "c.status" in q]
    assert completions, "no completion's plan was logged"
    recorded = 0
    for q, plan in completions:
        outbox = [n for n in nodes(plan) if n.get("Relation Name") == "sendry_outbox"]
        functions = [n for n in nodes(plan) if n.get("Function Name") == "jsonb_to_recordset"]
        assert len(functions) == 1 and functions[0]["Actual Loops"] == 1, \
            f"the outcomes are read once: {functions}"
        n = functions[0]["Actual Rows"]
        assert all(o["Node Type"] != "Seq Scan" for o in outbox), json.dumps(plan, indent=1)
        probes = [o for o in outbox if o.get("Index Name") == "sendry_outbox_pkey"]
        assert probes and all(o["Actual Loops"] == n for o in probes), \
            f"one probe of the primary key per outcome ({n}): {[o['Actual Loops'] for o in probes]}"
        joins = [j for j in nodes(plan) if j.get("Rows Removed by Join Filter")]
        assert not joins, f"a join compared rows with outcomes: {joins[0].get('Join Filter')}"
        read = sum(looked_at(o) for o in outbox)
        assert read <= 3 * n, f"{read} outbox rows looked at for {n} outcomes"
        recorded += plan["Actual Rows"]
    assert recorded == BACKLOG, "every outcome recorded by the completions whose plans were checked"
