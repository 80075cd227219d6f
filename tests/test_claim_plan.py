"""The claim's cost depends on the batch, never on the table (issue: "cheap for the
user's database, at any table size"). Proved with EXPLAIN (ANALYZE), not a stopwatch:
on deliberately skewed statistics (none at all, statistics taken while only sent rows
were there, statistics of an empty table), the claim statement compiled into the binary
(src/claim.c) must

  * read no row through a sequential scan and scan no index of the outbox whole: every
    index scan has an Index Cond, and the rows all scans return add up to a small
    multiple of the batch, whatever the table holds;
  * run each ordering check as a per-row subplan, for a bounded number of candidates;
  * claim a full batch;
  * reach the outbox through the same access paths in every case (the same indexes, and
    a TID scan for the UPDATE; join methods between its own small CTEs may differ).

The worker prepares the claim once per connection (db_query_named), so after five runs
PostgreSQL may run it with a generic plan, made without the parameters' values (the batch
size among them): each check runs on the custom plan and on the generic one.

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_claim_plan.py
"""

import json
import os
import re

import pytest

import pgharness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCH = 500
SENT = 200_000
PENDING = 20_000


PARAMS = ["42", "12", "60", "'plan-test'", str(BATCH), str(BATCH)]   # $6 .. $1
PLANS = ["custom", "generic"]


def claim_sql(generic=False):
    """CLAIM_SQL as compiled into the binary, read from src/claim.c: with the worker's
    parameters written in, or (generic) as a prepared statement's generic plan runs it."""
    src = open(os.path.join(ROOT, "src", "claim.c")).read()
    body = re.search(r"static const char CLAIM_SQL\[\] =\n(.*?);\n", src, re.S).group(1)
    sql = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))
    if generic:
        return (f"SET plan_cache_mode = force_generic_plan; PREPARE claim AS {sql};"
                f" EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim({', '.join(reversed(PARAMS))})")
    for n, v in zip(("$6", "$5", "$4", "$3", "$2", "$1"), PARAMS):
        sql = sql.replace(n, v)
    return f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"


def nodes(node):
    yield node
    for child in node.get("Plans", []):
        yield from nodes(child)


def shape(plan):
    """How the plan reaches the outbox: the indexes it probes, and the TID scan."""
    paths = {n.get("Index Name") for n in nodes(plan) if n.get("Index Name")}
    paths |= {n["Node Type"] for n in nodes(plan)
              if n.get("Relation Name") == "sendry_outbox" and n["Node Type"] in ("Tid Scan", "Seq Scan")}
    return sorted(paths)


@pytest.fixture(scope="module")
def pg():
    with pgharness.Cluster(supabase=True, install=True, port=20000 + (os.getpid() + 211) % 20000) as c:
        c.psql("-c", "ALTER TABLE public.sendry_outbox SET (autovacuum_enabled = off)")
        yield c


def explain_claim(pg, plan="custom"):
    out = pg.psql("-A", "-t", "-c", "BEGIN", "-c", claim_sql(plan == "generic"), "-c", "ROLLBACK").stdout
    return json.loads(out[out.index("["):out.rindex("]") + 1])[0]["Plan"]


def fill(pg, sent, pending, analyze_between):
    pg.psql("-c", "TRUNCATE public.sendry_outbox")
    if sent:
        pg.psql("-c", "INSERT INTO public.sendry_outbox (user_id, email, status, sent_at)"
                      " SELECT gen_random_uuid(), 'sent' || g || '@example.com', 'sent', now()"
                      f" FROM generate_series(1, {sent}) g")
    if analyze_between:
        pg.psql("-c", "VACUUM ANALYZE public.sendry_outbox")
    pg.psql("-c", "INSERT INTO public.sendry_outbox (user_id, email)"
                  " SELECT gen_random_uuid(), 'user' || g || '@example.com'"
                  f" FROM generate_series(1, {pending}) g")


# (name, sent rows, statistics taken after the sent rows and before the backlog)
CASES = [
    ("no statistics, no sent rows", 0, False),
    ("statistics of an empty table", 0, True),
    ("statistics taken while only sent rows were there", SENT, True),
    ("no statistics, many sent rows", SENT, False),
]


def check_bounded(plan, case):
    scans = [n for n in nodes(plan) if n.get("Relation Name") == "sendry_outbox"]
    assert scans, case
    for n in scans:
        assert n["Node Type"] != "Seq Scan", f"{case}: a sequential scan of the outbox: {n}"
        if n["Node Type"] in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
            assert n.get("Index Cond"), f"{case}: {n['Index Name']} scanned whole (no Index Cond)"
    read = sum(n.get("Actual Rows", 0) * n.get("Actual Loops", 1) for n in scans)
    assert read <= 10 * BATCH, f"{case}: the scans returned {read} rows for a batch of {BATCH}"
    subplans = [n for n in nodes(plan) if n.get("Parent Relationship") == "SubPlan"]
    assert subplans, f"{case}: the ordering checks should be per-row subplans"
    loops = max(n["Actual Loops"] for n in subplans)
    assert 0 < loops <= 2 * BATCH, f"{case}: an ordering check ran {loops} times for {BATCH}"
    updates = [n for n in nodes(plan) if n["Node Type"] == "ModifyTable"]
    assert len(updates) == 1 and updates[0]["Actual Rows"] == BATCH and plan["Actual Rows"] == BATCH, \
        f"{case}: a full batch is claimed (and returned with its render)"
    renders = [n for n in nodes(plan) if n.get("Function Name") == "sendry_claim_render"]
    assert len(renders) == 1 and renders[0]["Actual Loops"] == 1, f"{case}: one render per claim"


@pytest.mark.parametrize("kind", PLANS)
def test_claim_stays_batch_sized_whatever_the_statistics(pg, kind):
    shapes = {}
    for case, sent, analyze in CASES:
        fill(pg, sent, PENDING, analyze)
        plan = explain_claim(pg, kind)
        check_bounded(plan, f"{kind} plan, {case}")
        shapes[case] = shape(plan)
    first = next(iter(shapes.values()))
    for case, s in shapes.items():
        assert s == first, f"the plan differs for {case!r}:\n{s}\nvs\n{first}"


@pytest.mark.parametrize("kind", PLANS)
def test_claim_probes_each_check_through_its_own_index(pg, kind):
    """With skewed statistics, each ordering check is one probe of its own index."""
    fill(pg, SENT, PENDING, True)
    plan = explain_claim(pg, kind)
    probes = {n["Index Name"] for n in nodes(plan)
              if n.get("Parent Relationship") == "SubPlan" and n.get("Index Name")}
    lateral = {n.get("Index Name") for n in nodes(plan) if n.get("Index Name")}
    assert {"sendry_outbox_email_idx", "sendry_outbox_old_email_idx"} <= probes, probes
    assert "sendry_outbox_user_idx" in lateral, lateral
    assert any(n["Node Type"] == "Tid Scan" for n in nodes(plan)), "the UPDATE finds rows by ctid"
