"""Every statement on a hot path keeps a plan that does not grow with auth.users or the
outbox, whatever the statistics say (issue 16, points 2 and 9). Proved with EXPLAIN on
big tables, as tests/test_claim_plan.py does for the claim:

  * 1M users in auth.users with GoTrue's real indexes (tests/fixtures/supabase.sql),
    one in a thousand an SSO user; 1M rows in sendry_contact_state;
  * an outbox of 2M sent and failed rows, a backlog of 10k pending rows and 500 rows in
    flight; an inbox of 500k events applied long ago; 100k keys in the rate budget;
  * three states of the statistics, in this order: stale (ANALYZE ran when the tables
    were a hundredth of their size, then they grew), missing (none, as right after
    install: pg_statistic emptied, reltuples -1), fresh (VACUUM ANALYZE).

The statements are the ones compiled into the binary, read from the C sources (the
string literals of `static const char NAME[]`), so this test breaks when the code's
statement changes; the inbox's lookup runs inside sendry_inbox_apply (sql/install.sql)
and is caught with auto_explain (log_nested_statements) as the function runs. Each is
planned with the parameters the worker passes (PREPARE + EXPLAIN EXECUTE: a custom plan,
as PQexecParams gets). The statements the worker prepares once per connection (the claim,
the lease renewal, the completion: db_query_named) are checked with their generic plan
too (plan_cache_mode = force_generic_plan: the plan PostgreSQL may switch to after five
runs, made without the parameters' values). A plan passes when no node reads auth.users, the outbox or the
contact state through a sequential scan, every index scan of them has an Index Cond (or
stops at a LIMIT: a capped count), and the indexes each statement is meant to use are
the ones it uses.

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_hot_plans.py
"""

import json
import os
import re

import pytest

import pgharness

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
USERS = 1_000_000
SENT = 2_000_000
BACKLOG = 10_000
HELD = 500
WORKER = "plan-test"
CLAIM_ID = 42
BIG = {"sendry_outbox", "users", "sendry_contact_state", "sendry_rate_budget", "sendry_inbox"}
INBOX_EVENTS = 500_000
STATES = ("stale", "missing", "fresh")


def c_statement(path, name):
    """The statement `static const char NAME[]` of a C source, its literals joined."""
    src = open(os.path.join(ROOT, "src", path)).read()
    m = re.search(r"static const char " + name + r"\[\] =\s*\n?(.*?);\n", src, re.S)
    assert m, f"{name} not found in src/{path}"
    body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
    return "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body))


def middle_id(pg):
    """An id half-way through the outbox: where a prune walk may stand."""
    return int(pg.query("SELECT (min(id) + max(id)) / 2 FROM public.sendry_outbox")[0][0])


def held_rows(pg):
    return [int(r[0]) for r in pg.query(f"SELECT id FROM public.sendry_outbox WHERE status = 'processing'"
                                        f" AND locked_by = '{WORKER}' ORDER BY id")]


def outcomes(ids):
    return json.dumps([{"id": i, "claim_id": CLAIM_ID, "status": "sent", "http_status": 200, "error": None,
                        "delay_ms": 0, "uncount": 0} for i in ids])


def lit(v):
    return "'" + str(v).replace("'", "''") + "'"


# (name, source file, statement, parameters as the worker passes them, indexes it must use)
def statements(pg):
    ids = held_rows(pg)
    refs = json.dumps([{"id": i, "claim_id": CLAIM_ID} for i in ids])
    unrecorded = json.dumps([{"id": i, "claim_id": CLAIM_ID, "claimed_at": 0, "attempts": 1} for i in ids])
    middle = middle_id(pg)
    return [
        ("claim", "claim.c", "CLAIM_SQL", [500, 500, WORKER, 60, 12, CLAIM_ID],
         {"sendry_outbox_claim_idx", "sendry_outbox_user_idx", "sendry_outbox_email_idx"}),
        ("next due", "claim.c", "NEXT_DUE_SQL", [], {"sendry_outbox_claim_idx"}),
        ("orphan release", "claim.c", "RELEASE_ORPHANS_SQL", [WORKER, json.dumps(ids[:HELD // 2])],
         {"sendry_outbox_processing_idx"}),
        ("lease renewal", "claim.c", "RENEW_SQL", [refs, 60, WORKER], {"sendry_outbox_pkey"}),
        ("completion", "complete.c", "COMPLETE_SQL", [outcomes(ids), WORKER], {"sendry_outbox_pkey"}),
        ("unrecorded outcomes", "complete.c", "EXPLAIN_SQL", [unrecorded, WORKER], {"sendry_outbox_pkey"}),
        ("prune", "prune.c", "PRUNE_SQL", [middle, 0], {"sendry_outbox_pkey"}),
        ("backlog count", "health.c", "BACKLOG_SQL", [100000], {"sendry_outbox_claim_idx"}),
        ("enqueue errors", "health.c", "ENQUEUE_ERRORS_SQL", [], set()),
        ("status figures", "status.c", "STATS_SQL", [1000000],
         {"sendry_outbox_claim_idx", "sendry_outbox_processing_idx", "sendry_outbox_failed_idx"}),
        ("status sent sample", "status.c", "SENT_SQL", [2000], set()),
        ("status workers", "status.c", "LAST_SQL", [2000], {"sendry_outbox_processing_idx"}),
        ("status failures", "status.c", "FAILURES_SQL", [1000000],
         {"sendry_outbox_claim_idx", "sendry_outbox_failed_idx"}),
        ("status oldest", "status.c", "OLDEST_SQL", [1], {"sendry_outbox_claim_idx"}),
        ("status events", "status_events.c", "EVENTS_SQL", [1000000],
         {"sendry_outbox_claim_idx", "sendry_outbox_failed_idx"}),
        ("status events sent sample", "status_events.c", "EVENTS_SENT_SQL", [2000], set()),
        ("inbox retry", "inbox.c", "RETRY_SQL", [], {"sendry_inbox_received_idx"}),
        ("audiences named", "audience.c", "NAMED_SQL", ["aud-plan"],
         {"sendry_outbox_claim_idx", "sendry_contact_state_pkey"}),
    ]


def explain(pg, sql, params, generic=False):
    """The custom plan of sql with params, as PQexecParams gets it (nothing is run); generic:
    the prepared statement's generic plan."""
    prep = ("SET plan_cache_mode = force_generic_plan;\n" if generic else "") + f"PREPARE s AS {sql}"
    exe = "EXPLAIN (FORMAT JSON) EXECUTE s" + (f"({', '.join(lit(p) for p in params)})" if params else "")
    out = pg.psql("-A", "-t", "-c", prep + ";\n" + exe).stdout
    return json.loads(out[out.index("["):out.rindex("]") + 1])[0]["Plan"]


def explain_analyze(pg, sql, params):
    """The plan as run (in a transaction rolled back), with the rows each node returned."""
    prep = f"PREPARE s AS {sql}"
    exe = "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE s" + (f"({', '.join(lit(p) for p in params)})" if params else "")
    out = pg.psql("-A", "-t", "-c", "BEGIN", "-c", prep, "-c", exe, "-c", "ROLLBACK").stdout
    return json.loads(out[out.index("["):out.rindex("]") + 1])[0]["Plan"]


def rows_read(plan):
    """Rows the scans of the big tables looked at (returned or filtered out), over all
    their loops."""
    return sum((n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)
                + n.get("Rows Removed by Index Recheck", 0)) * n.get("Actual Loops", 1)
               for n, _ in nodes(plan) if n.get("Relation Name") in BIG)


# Read-only statements run with a small cap: (name, source, statement, parameters, most
# rows read). A count reads at most its cap of entries of each index it counts in, or
# (statistics missing: the planner believes a class holds a row or two and sorts them
# rather than reading in the index's order) a class's whole backlog through the claim
# index: the backlog, never the table. A probe for the oldest row reads one row a class.
CAP = 100
BACKLOG_ROWS = BACKLOG + BACKLOG // 100
CAPPED = [
    ("backlog count", "health.c", "BACKLOG_SQL", [CAP], 2 * CAP + 2),
    ("status figures", "status.c", "STATS_SQL", [CAP], BACKLOG_ROWS + 5 * CAP + 2),
    ("status failures", "status.c", "FAILURES_SQL", [CAP], BACKLOG_ROWS + CAP),
    ("status oldest", "status.c", "OLDEST_SQL", [1], 2),
    ("next due", "claim.c", "NEXT_DUE_SQL", [], 2),
    ("status sent sample", "status.c", "SENT_SQL", [CAP], 200 * CAP),
    ("status events", "status_events.c", "EVENTS_SQL", [CAP], BACKLOG_ROWS + CAP),
    ("status events sent sample", "status_events.c", "EVENTS_SENT_SQL", [CAP], 200 * CAP),
    ("inbox retry", "inbox.c", "RETRY_SQL", [], 100),
    # at start-up: at most 10,000 rows waiting and 100,000 states looked at
    ("audiences named", "audience.c", "NAMED_SQL", ["aud-plan"], 10_000 + 100_000),
]


def nodes(node, under_limit=False):
    yield node, under_limit
    under_limit = under_limit or node["Node Type"] == "Limit"
    for child in node.get("Plans", []):
        yield from nodes(child, under_limit)


def problems(plan):
    """What in plan reads a big table other than by key."""
    bad = []
    for n, capped in nodes(plan):
        rel = n.get("Relation Name")
        if rel not in BIG:
            continue
        kind = n["Node Type"]
        if kind == "Seq Scan":
            bad.append(f"Seq Scan on {rel}")
        elif kind in ("Index Scan", "Index Only Scan", "Bitmap Heap Scan") and not (
                n.get("Index Cond") or n.get("Recheck Cond") or capped):
            bad.append(f"{kind} of {n.get('Index Name')} on {rel} without an Index Cond or a LIMIT")
    for n, capped in nodes(plan):
        if n["Node Type"] == "Bitmap Index Scan" and not n.get("Index Cond") and not capped:
            bad.append(f"Bitmap Index Scan of {n['Index Name']} without an Index Cond")
    return bad


def indexes(plan):
    return {n.get("Index Name") for n, _ in nodes(plan) if n.get("Index Name")}


# --- the tables ------------------------------------------------------------------------

def superuser(pg, *sqls):
    """Each statement in its own -c (VACUUM may not run in a transaction)."""
    return pg.psql_as(pgharness.Cluster.SUPERUSER, *[a for s in sqls for a in ("-c", s)])


def add_users(pg, first, last):
    """Users first..last, inserted as GoTrue does (the triggers off: this is the test's data,
    not sign-ups to deliver); every 1000th an SSO user."""
    superuser(pg, "SET session_replication_role = replica;"
                  " INSERT INTO auth.users (instance_id, id, aud, role, email, raw_app_meta_data,"
                  "                         raw_user_meta_data, created_at, updated_at, is_sso_user)"
                  " SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated',"
                  "        'authenticated', 'user' || g || '@example.com', '{\"provider\":\"email\"}', '{}',"
                  "        now(), now(), g % 1000 = 0"
                  f" FROM generate_series({first}, {last}) g;"
                  " INSERT INTO public.sendry_contact_state (user_id, email, contact_hash)"
                  "  SELECT u.id, lower(u.email), 0 FROM auth.users u"
                  "  WHERE NOT EXISTS (SELECT 1 FROM public.sendry_contact_state s WHERE s.user_id = u.id)")


def add_outbox(pg, sent, backlog, held):
    pg.psql("-c", "INSERT INTO public.sendry_outbox (user_id, email, status, attempts, sent_at, created_at,"
                  "                                  updated_at, last_error)"
                  " SELECT gen_random_uuid(), 'old' || g || '@example.com',"
                  "        CASE WHEN g % 20 = 0 THEN 'failed' ELSE 'sent' END, 1,"
                  "        CASE WHEN g % 20 = 0 THEN NULL ELSE now() - (g % 2000) * interval '1 hour' END,"
                  "        now() - (g % 2000) * interval '1 hour', now() - (g % 2000) * interval '1 hour',"
                  "        CASE WHEN g % 20 = 0 THEN 'HTTP 422 validation_error' END"
                  f" FROM generate_series(1, {sent}) g",
            "-c", "INSERT INTO public.sendry_outbox (user_id, email)"
                  " SELECT gen_random_uuid(), 'new' || g || '@example.com'"
                  f" FROM generate_series(1, {backlog}) g",
            "-c", "UPDATE public.sendry_outbox SET status = 'processing', attempts = 1,"
                  f" locked_by = '{WORKER}', locked_until = now() + interval '1 hour',"
                  f" next_attempt_at = now() + interval '1 hour', claim_id = {CLAIM_ID}"
                  " WHERE id IN (SELECT id FROM public.sendry_outbox WHERE status = 'pending'"
                  f"              ORDER BY id DESC LIMIT {held})")


def add_inbox(pg, first, last):
    """Events received and applied long ago: the inbox keeps every one."""
    pg.psql("-c", "INSERT INTO public.sendry_inbox (event_id, type, payload, status, email, applied_at)"
                  " SELECT 'old-' || g, 'email.complained', '{}', 'applied', 'a@example.com', now()"
                  f" FROM generate_series({first}, {last}) g")


def forget_statistics(pg):
    """As right after install: no column statistics, reltuples unknown."""
    superuser(pg, "DELETE FROM pg_statistic WHERE starelid IN ('public.sendry_outbox'::regclass,"
                  " 'auth.users'::regclass, 'public.sendry_contact_state'::regclass,"
                  " 'public.sendry_rate_budget'::regclass, 'public.sendry_inbox'::regclass);"
                  " UPDATE pg_class SET reltuples = -1, relpages = 0, relallvisible = 0"
                  " WHERE oid IN (SELECT indexrelid FROM pg_index WHERE indrelid IN"
                  "   ('public.sendry_outbox'::regclass, 'auth.users'::regclass,"
                  "    'public.sendry_contact_state'::regclass, 'public.sendry_rate_budget'::regclass,"
                  "    'public.sendry_inbox'::regclass))"
                  "  OR oid IN ('public.sendry_outbox'::regclass, 'auth.users'::regclass,"
                  "             'public.sendry_contact_state'::regclass, 'public.sendry_rate_budget'::regclass,"
                  "             'public.sendry_inbox'::regclass)")


# --- the inbox's lookup (inside sendry_inbox_apply), through auto_explain -------------------

INBOX_CASES = [
    ("a user", "user500001@example.com", "applied"),
    ("an SSO user", "user777000@example.com", "applied"),
    ("an unknown address", "nobody@example.com", "ignored: no user with this email"),
]


def nested_plans(pg, sql):
    """The plans of every statement sql runs (functions' statements included), and its
    result's last line (in a transaction rolled back)."""
    r = pg.psql_as(pgharness.Cluster.SUPERUSER, "-A", "-t",
                   "-c", "LOAD 'auto_explain'",
                   "-c", "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
                         " SET auto_explain.log_format = json; SET auto_explain.log_level = notice;"
                         " SET client_min_messages = notice",
                   "-c", "BEGIN", "-c", sql, "-c", "ROLLBACK")
    plans = []
    for m in re.finditer(r"plan:\n(\{.*?\n\})", r.stderr, re.S):
        p = json.loads(m.group(1))
        plans.append((p["Query Text"], p["Plan"]))
    return plans, (r.stdout.strip().splitlines() or [""])[-1]


def inbox_plans(pg, email):
    """The plans of every statement sendry_inbox_apply runs for an unsubscribe of email."""
    return nested_plans(pg, "SELECT public.sendry_inbox_receive('plan-test', 'email.complained',"
                            f" '{{\"data\": {{\"email\": \"{email}\"}}}}'::jsonb)")


# The budget's statements (budget.c), with 100,000 keys in the table (it holds one per API
# key: never that many, but a by-key plan does not care).
BUDGET_KEYS = 100_000


def budget_plans(pg):
    take = c_statement("budget.c", "TAKE_SQL").replace("$1", "'key-500'").replace("$2", "10") \
        .replace("$3", "20").replace("$4", "5").replace("$5", "0")
    pause = c_statement("budget.c", "PAUSE_SQL").replace("$1", "'key-500'").replace("$2", "30")
    return {"take": nested_plans(pg, take)[0], "pause": nested_plans(pg, pause)[0]}


def track_plans(pg):
    """The plans of every statement sendry_track runs for a user among 1M (the application
    calls it inside its own transactions: the user's address, the outbox row, its event id)."""
    uid = pg.query("SELECT id FROM auth.users WHERE email = 'user500001@example.com'")[0][0]
    return nested_plans(pg, f"SELECT public.sendry_track('trial_started', '{uid}', '{{\"plan\": \"pro\"}}')"
                            f", public.sendry_event_id(1)")


# The render at the claim (sendry_claim_render, functions/contacts.sql): the worker calls it
# once per claim with the users of its captured rows, up to a batch of 1000.
RENDER_IDS = 1000


def render_ids(pg):
    """1000 users spread over the 1M (every 1000th in id order), as uuid literals."""
    return [r[0] for r in pg.query("SELECT id FROM (SELECT id, row_number() OVER (ORDER BY id) AS n"
                                   " FROM auth.users) u WHERE n % 1000 = 500")]


def claim_render_plans(pg, ids):
    """The plans of every statement sendry_claim_render runs for these users, and its verdicts."""
    arr = "ARRAY[" + ",".join(f"'{i}'" for i in ids) + "]::uuid[]"
    return nested_plans(pg, "SELECT count(*) || ' ' || string_agg(DISTINCT verdict, ',')"
                            f" FROM public.sendry_claim_render({arr})")


def trigger_plans(pg, uid):
    """The plans of every statement the triggers on auth.users run for a sign-up and for an
    UPDATE of a user among 1M (a name and an address change: captured with old_email)."""
    signup, _ = nested_plans(pg, "INSERT INTO auth.users (instance_id, id, aud, role, email, raw_app_meta_data,"
                                 " raw_user_meta_data, created_at, updated_at) VALUES"
                                 " ('00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', '',"
                                 " 'plan.signup@example.com', '{\"provider\": \"email\"}', '{}', now(), now())")
    update, _ = nested_plans(pg, "UPDATE auth.users SET email = 'plan.moved@example.com',"
                                 " raw_user_meta_data = '{\"first_name\": \"Plan\"}'"
                                 f" WHERE id = '{uid}'")
    return signup, update


# --- the fixture: the same tables under each state of the statistics ------------------------

@pytest.fixture(scope="module")
def plans():
    """{state: {name: (plan, expected indexes)}}, {state: {case: (plans, result)}} and
    {state: {name: (rows read, most allowed)}}."""
    with pgharness.Cluster(supabase=True, install=True, port=20000 + (os.getpid() + 307) % 20000) as pg:
        for t in ("public.sendry_outbox", "auth.users", "public.sendry_contact_state",
                  "public.sendry_rate_budget", "public.sendry_inbox"):
            superuser(pg, f"ALTER TABLE {t} SET (autovacuum_enabled = off)")
        # stale: statistics of tables a hundredth of their size
        add_users(pg, 1, USERS // 100)
        add_outbox(pg, SENT // 100, BACKLOG // 100, HELD // 100)
        add_inbox(pg, 1, INBOX_EVENTS // 100)
        superuser(pg, "ANALYZE auth.users; ANALYZE public.sendry_outbox; ANALYZE public.sendry_contact_state;"
                      " ANALYZE public.sendry_inbox")
        add_users(pg, USERS // 100 + 1, USERS)
        add_outbox(pg, SENT, BACKLOG, HELD)
        add_inbox(pg, INBOX_EVENTS // 100 + 1, INBOX_EVENTS)
        pg.psql("-c", "INSERT INTO public.sendry_rate_budget (key, tokens)"
                      f" SELECT 'key-' || g, 20 FROM generate_series(1, {BUDGET_KEYS}) g")
        out, inbox, read = {}, {}, {}
        ids = render_ids(pg)
        assert len(ids) == RENDER_IDS
        for state in STATES:
            if state == "missing":
                forget_statistics(pg)
            elif state == "fresh":
                superuser(pg, "VACUUM ANALYZE auth.users", "VACUUM ANALYZE public.sendry_outbox",
                          "VACUUM ANALYZE public.sendry_contact_state", "VACUUM ANALYZE public.sendry_rate_budget",
                          "VACUUM ANALYZE public.sendry_inbox")
            out[state] = {name: (explain(pg, c_statement(src, var), params), want)
                          for name, src, var, params, want in statements(pg)}
            out[state].update({f"{name} (generic plan)": (explain(pg, c_statement(src, var), params, True), want)
                               for name, src, var, params, want in statements(pg) if name in PREPARED})
            inbox[state] = {case: inbox_plans(pg, email) for case, email, _ in INBOX_CASES}
            inbox[state]["budget"] = budget_plans(pg)
            inbox[state]["track"] = track_plans(pg)
            inbox[state]["claim render"] = claim_render_plans(pg, ids)
            inbox[state]["triggers"] = trigger_plans(pg, ids[0])
            inbox[state]["repair"] = nested_plans(pg, "SELECT enqueued || ' of ' || examined"
                                                      " FROM public.sendry_reconcile_contacts(1000)")
            read[state] = {name: (rows_read(explain_analyze(pg, c_statement(src, var), params)), most)
                           for name, src, var, params, most in CAPPED}
            # a prune step half-way through its walk: its 1000 rows, each looked at about
            # three times (the window, the probe, the delete)
            read[state]["prune"] = (rows_read(explain_analyze(pg, c_statement("prune.c", "PRUNE_SQL"),
                                                              [middle_id(pg), 0])), 4000)
        yield out, inbox, read


# Prepared once per connection by the worker (db_query_named): their generic plans too.
PREPARED = ["claim", "lease renewal", "completion"]
STATEMENTS = [f"{n} (generic plan)" for n in PREPARED] + ["claim", "next due", "orphan release", "lease renewal", "completion", "unrecorded outcomes",
              "prune", "backlog count", "enqueue errors", "status figures", "status sent sample",
              "status workers", "status failures", "status oldest", "inbox retry", "audiences named"]


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", STATEMENTS)
def test_statement_reads_by_key(plans, name, state):
    plan, want = plans[0][state][name]
    assert not problems(plan), f"{name}, statistics {state}: {problems(plan)}\n{json.dumps(plan, indent=1)}"
    assert want <= indexes(plan), f"{name}, statistics {state}: uses {indexes(plan)}, not {want}"


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("name", [c[0] for c in CAPPED] + ["prune"])
def test_counts_stop_at_their_cap(plans, name, state):
    """A count reads at most its cap (here 100) of entries, the oldest due row one entry of
    each class, the sample at most its pages (here 100), a prune step its window of 1000
    rows: never the table."""
    n, most = plans[2][state][name]
    assert n <= most, f"{name}, statistics {state}: read {n} rows (at most {most})"


@pytest.mark.parametrize("state", STATES)
def test_completion_probes_the_primary_key_per_outcome_and_updates_by_ctid(plans, state):
    """No join between the outcomes and the rows held: each outcome is one probe of the
    primary key, in a per-outcome subquery, and the UPDATE reads exactly the ctids found."""
    for name in ("completion", "lease renewal", "completion (generic plan)", "lease renewal (generic plan)"):
        plan = plans[0][state][name][0]
        probes = [n for n, _ in nodes(plan) if n.get("Index Name") == "sendry_outbox_pkey"]
        assert probes and all(re.fullmatch(r"\(id = h(_\d+)?\.id\)", n.get("Index Cond", "")) for n in probes), \
            f"{name}, {state}: {[n.get('Index Cond') for n in probes]}"
        tid = [n for n, _ in nodes(plan) if n["Node Type"] == "Tid Scan"]
        assert tid and all(re.fullmatch(r"\(ctid = (ANY \(\$\d+\)|c\.tid)\)", n["TID Cond"]) for n in tid), \
            f"{name}, {state}: the UPDATE by ctid: {[n['TID Cond'] for n in tid]}"
        joins = [n for n, _ in nodes(plan) if n.get("Join Filter") and "id" in n["Join Filter"]]
        assert not joins, f"{name}, {state}: a join compares rows with outcomes: {joins[0]['Join Filter']}"


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("case,email,result", INBOX_CASES)
def test_inbox_lookup_uses_an_index(plans, state, case, email, result):
    """An unsubscribe finds its user by key at 1M users: GoTrue's partial unique index
    (its predicate named), or for an SSO user the address Sendry last accepted for them."""
    found, got = plans[1][state][case]
    assert got == result, f"{case}: {got}"
    lookups = [(q, p) for q, p in found if "v_email" in q and re.search(r"auth\.users|sendry_contact_state", q)]
    assert lookups, f"{case}: the lookup's plan was not seen: {[q for q, _ in found]}"
    used = set()
    for q, p in lookups:
        assert not problems(p), f"{case}, {state}: {problems(p)}\n{q}"
        used |= indexes(p)
    assert "users_email_partial_key" in used, f"{case}, {state}: {used}"
    if case != "a user":   # not found among non-SSO users: the SSO path by the contact state
        assert "sendry_contact_state_email_idx" in used, f"{case}, {state}: {used}"
    if case == "an SSO user":   # and each candidate by primary key
        assert "users_pkey" in used, f"{case}, {state}: {used}"


@pytest.mark.parametrize("state", STATES)
def test_track_finds_its_user_by_key(plans, state):
    """sendry_track at 1M users and a 2M-row outbox: its user by primary key, nothing of a
    big table read otherwise (and sendry_event_id, which the claim calls, by key too)."""
    found, got = plans[1][state]["track"]
    assert re.fullmatch(r"\d+\|ss-[0-9a-f-]{36}-1", got), got
    lookups = [(q, p) for q, p in found if "auth.users" in q]
    assert lookups, f"the user's lookup was not seen: {[q for q, _ in found]}"
    for q, p in found:
        assert not problems(p), f"{state}: {problems(p)}\n{q}"
    assert all("users_pkey" in indexes(p) for _, p in lookups), [indexes(p) for _, p in lookups]


@pytest.mark.parametrize("state", STATES)
def test_claim_render_reads_users_and_state_by_key(plans, state):
    """sendry_claim_render for 1000 users among 1M, each with a state row: the users (the
    synced check, and the mapping's read of auth.users) and the state by primary key, no
    big table read otherwise, whatever the statistics."""
    found, got = plans[1][state]["claim render"]
    assert got == f"{RENDER_IDS} send", got
    inner = [(q, p) for q, p in found if "sendry_claim_render" not in q]
    assert inner, f"its statements' plans were not seen: {[q for q, _ in found]}"
    for q, p in found:
        assert not problems(p), f"{state}: {problems(p)}\n{q}\n{json.dumps(p, indent=1)}"
    users = [(q, p) for q, p in inner if "auth.users" in q]
    assert users and all("users_pkey" in indexes(p) for _, p in users), \
        f"{state}: {[(q, indexes(p)) for q, p in users]}"
    used = set().union(*(indexes(p) for _, p in inner))
    assert {"users_pkey", "sendry_contact_state_pkey"} <= used, f"{state}: {used}"


@pytest.mark.parametrize("state", STATES)
def test_repair_chunk_reads_by_key(plans, state):
    """A chunk of the repair walk (sendry_reconcile_contacts: `backfill`, the repair pass)
    over 1000 users among 1M with a 2M-row outbox: the users, the state and the outbox
    (is a captured row of the user still pending? one probe of the unfinished rows by
    user each) by key, whatever the statistics."""
    found, got = plans[1][state]["repair"]
    assert got.endswith(" of 1000"), got
    for q, p in found:
        assert not problems(p), f"{state}: {problems(p)}\n{q}\n{json.dumps(p, indent=1)}"
    pending = [p for q, p in found if "INSERT INTO public.sendry_outbox" in q and "o.payload IS NULL" in q]
    assert pending and all("sendry_outbox_user_idx" in indexes(p) for p in pending), \
        f"{state}: {[indexes(p) for p in pending]}"


@pytest.mark.parametrize("state", STATES)
def test_triggers_capture_by_key_and_read_no_state(plans, state):
    """A sign-up and a user's UPDATE among 1M users: the triggers' statements read
    auth.users by primary key only, and neither the contact state nor the mapping (they
    capture: the claim renders)."""
    signup, update = plans[1][state]["triggers"]
    for what, found in (("sign-up", signup), ("update", update)):
        inner = [(q, p) for q, p in found if "sendry_outbox" in q]
        assert inner, f"{what}: the capture's INSERT was not seen: {[q for q, _ in found]}"
        for q, p in found:
            assert not problems(p), f"{what}, {state}: {problems(p)}\n{q}"
            rels = {n.get("Relation Name") for n, _ in nodes(p)}
            assert "sendry_contact_state" not in rels, f"{what}, {state}: reads the state\n{q}"
            assert "sendry_contacts" not in q, f"{what}, {state}: reads the mapping\n{q}"
    capture = [p for q, p in update if "sendry_outbox" in q and "auth.users" in q]
    assert capture and all("users_pkey" in indexes(p) for p in capture), \
        f"{state}: {[indexes(p) for p in capture]}"


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("which", ["take", "pause"])
def test_budget_reads_its_key_by_key(plans, which, state):
    found = plans[1][state]["budget"][which]
    touching = [(q, p) for q, p in found if "sendry_rate_budget" in q]
    assert touching, f"{which}: no statement on sendry_rate_budget seen: {[q for q, _ in found]}"
    for q, p in touching:
        assert not problems(p), f"{which}, {state}: {problems(p)}\n{q}"
        if "INSERT" not in q:
            assert "sendry_rate_budget_pkey" in indexes(p), f"{which}, {state}: {indexes(p)}\n{q}"


def test_doctor_reads_no_big_table():
    """Doctor's statements read catalogs only (pg_stat_*, pg_class, to_regclass), never
    the outbox's or auth.users' rows."""
    for path in ("doctor.c", "doctor_db.c", "doctor_schema.c", "doctor_api.c"):
        src = open(os.path.join(ROOT, "src", path)).read()
        sql = " ".join(re.findall(r'"((?:[^"\\]|\\.)*)"', src))
        assert not re.search(r"\b(FROM|JOIN)\s+(public\.sendry_outbox|auth\.users|public\.sendry_contact_state)\b",
                             sql), path
