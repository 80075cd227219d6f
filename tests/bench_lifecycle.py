#!/usr/bin/python3
"""make bench: the leanest outbox row, candidates side by side (issue 17 point 2). SQL only.

    /usr/bin/python3 tests/bench_lifecycle.py [--rows N] [--runs N] [--fillfactor N]

One throwaway Supabase-shaped cluster (tests/pgharness.py) with PostgreSQL's durable
defaults (full_page_writes on; wal_level as the harness leaves it, printed, or
BENCH_WAL_LEVEL), autovacuum off
so that only the statement measured writes WAL. Each lifecycle delivers --rows rows in
batches of 1000 (one worker, every row sent), and is measured in turn in each of --runs
rounds; every figure is the median of the rounds:

  a         today's: public.sendry_outbox as sql/install.sql creates it, rows as the trigger
            writes them (rendered payload, email); the claim and the completion are the
            worker's own statements (CLAIM_SQL of src/claim.c, COMPLETE_SQL of
            src/complete.c): an UPDATE at claim, an UPDATE at completion
  a-narrow  the same table and statements with a narrow row (the payload left '{}')
  b         a narrow outbox (id, user_id, kind, old_email, created_at; its primary key
            only); claim: the next 1000 ids after the worker's cursor, and a lease over the
            batch (id range, worker, until) in a small claims table; completion: DELETE of
            the rows, a compact record of what was sent (id, user_id, sent_at, hash) in an
            append-only table, DELETE of the lease
  c         b with the sent records in daily partitions (retention: DROP of a day's partition)
  d         the narrow outbox; claim state in the worker's memory and one lease row per
            batch; completion: DELETE of the rows and of the lease, nothing kept
  e         an in-row lease that the claim can write as a HOT update: today's columns (the
            row as a-narrow's), its partial indexes keyed on finished_at (NULL until the
            row is sent or failed) instead of status, and no index of the rows in flight;
            claim: status, locked_by, locked_until, claim_id, attempts (no indexed column:
            HOT where the page has room), the rows in flight skipped by their lease;
            completion: an UPDATE that sets finished_at (the row leaves the partial
            indexes: a new primary-key entry), as a's. The table at --fillfactor (45 by
            default: the room on each page for every row's claim, so that each can be
            HOT; at 70, a's, 38 % of them are). One batch is kept in flight (the
            next claim runs before the last completion, as the worker's pipeline does), so
            each claim steps over the rows in flight
  f         e with the completion as d's and b's: DELETE of the sent rows and a compact
            record of each (id, user_id, sent_at, hash)

The rows carry the same users (md5 of the row's number), one in 20 with a previous address.
Phases: insert (statements of 1000 rows, right after a CHECKPOINT), then a CHECKPOINT (the
rows wait as a backlog does, so the delivery's first touch of each page writes a full-page
image: "FPI"; the rest, "records", is what delivery within the same checkpoint cycle
writes), then the delivery (claim, complete, batch after batch), a VACUUM (PARALLEL 0) of
the lifecycle's tables (the dead rows it left), and retention (removing the sent
records: a DELETE for a and b, a DROP of the partition for c, nothing for d). Per
delivered row: WAL bytes (pg_current_wal_insert_lsn before and after each statement;
records, FPI and B-tree index entries from pg_waldump), the CPU of the backend that ran
them (/proc/<pid>/schedstat; the checkpointer's writes are not in it), and the size of the
lifecycle's tables with their indexes after the delivery and after the VACUUM.
Figures only: nothing passes or fails. BENCH_QUICK=1: 20,000 rows, 3 rounds.
"""

import argparse
import json
import os
import re
import statistics
import sys
import time

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import bench_wal  # noqa: E402  (WAL accounting: LSNs and pg_waldump)
import pgharness  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ADMIN = pgharness.Cluster.SUPERUSER
BATCH = 1000
LIFECYCLES = ["a", "a-narrow", "b", "c", "d", "e", "f"]


def c_sql(path, name):
    """A statement of the worker, as its C source has it, with $n as %(pn)s."""
    src = open(os.path.join(ROOT, path)).read()
    body = re.search(rf"static const char {name}\[\] =\n(.*?);\n", src, re.S).group(1)
    sql = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', body)).replace("%", "%%")
    return re.sub(r"\$(\d)", lambda m: "%(p" + m.group(1) + ")s", sql)


CLAIM_SQL = c_sql("src/claim.c", "CLAIM_SQL")
COMPLETE_SQL = c_sql("src/complete.c", "COMPLETE_SQL")

# Row number g -> a user, a kind, a previous address for one row in 20 (a move or a deletion).
ROW_USER = "md5('u' || g)::uuid"
ROW_OLD = "CASE WHEN g %% 20 = 0 THEN 'old' || g || '@example.com' END"

INSERT_TODAY = f"""
INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email, payload)
SELECT 'live', 'upsert', {ROW_USER}, 'user' || g || '@example.com', {ROW_OLD},
       jsonb_build_object('email', 'user' || g || '@example.com', 'first_name', 'Bench',
                          'last_name', 'User ' || g,
                          'metadata', jsonb_build_object('supabase_user_id', {ROW_USER}::text,
                                                         'signup_source', 'supabase'))
FROM generate_series(%(lo)s::int, %(hi)s::int) g
"""
INSERT_TODAY_NARROW = f"""
INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email)
SELECT 'live', 'upsert', {ROW_USER}, 'user' || g || '@example.com', {ROW_OLD}
FROM generate_series(%(lo)s::int, %(hi)s::int) g
"""


def insert_narrow(t):
    return (f"INSERT INTO lc.outbox_{t} (user_id, kind, old_email)"
            f" SELECT {ROW_USER}, 'u', {ROW_OLD} FROM generate_series(%(lo)s::int, %(hi)s::int) g")


SCHEMA = """
DROP SCHEMA IF EXISTS lc CASCADE;
CREATE SCHEMA lc;
CREATE TABLE lc.outbox_b (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, user_id uuid NOT NULL,
                          kind "char" NOT NULL, old_email text, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE lc.outbox_c (LIKE lc.outbox_b INCLUDING ALL);
CREATE TABLE lc.outbox_d (LIKE lc.outbox_b INCLUDING ALL);
CREATE TABLE lc.claims_b (claim_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, worker text NOT NULL,
                          lease_until timestamptz NOT NULL, lo bigint NOT NULL, hi bigint NOT NULL);
CREATE TABLE lc.claims_c (LIKE lc.claims_b INCLUDING ALL);
CREATE TABLE lc.lease_d (lo bigint PRIMARY KEY, hi bigint NOT NULL, worker text NOT NULL,
                         lease_until timestamptz NOT NULL);
CREATE TABLE lc.sent_b (id bigint NOT NULL, user_id uuid, sent_at timestamptz NOT NULL, hash bigint NOT NULL);
CREATE TABLE lc.sent_c (id bigint NOT NULL, user_id uuid, sent_at timestamptz NOT NULL, hash bigint NOT NULL)
    PARTITION BY RANGE (sent_at);
CREATE TABLE lc.outbox_e (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, class text NOT NULL DEFAULT 'bulk',
    op text NOT NULL DEFAULT 'upsert', user_id uuid, email text, old_email text, payload jsonb,
    status text NOT NULL DEFAULT 'pending', attempts integer NOT NULL DEFAULT 0, max_attempts integer,
    next_attempt_at timestamptz NOT NULL DEFAULT now(), locked_by text, locked_until timestamptz,
    claim_id bigint, last_http_status integer, last_error text, deduped boolean,
    created_at timestamptz NOT NULL DEFAULT now(), updated_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz, finished_at timestamptz) WITH (fillfactor = {fillfactor});
CREATE INDEX ON lc.outbox_e (class, next_attempt_at, id) WHERE finished_at IS NULL;
CREATE INDEX ON lc.outbox_e (user_id, id) WHERE finished_at IS NULL AND user_id IS NOT NULL;
CREATE INDEX ON lc.outbox_e (email, id) WHERE finished_at IS NULL AND email IS NOT NULL;
CREATE INDEX ON lc.outbox_e (old_email, id) WHERE finished_at IS NULL AND old_email IS NOT NULL;
CREATE TABLE lc.outbox_f (LIKE lc.outbox_e INCLUDING ALL) WITH (fillfactor = {fillfactor});
CREATE TABLE lc.sent_f (id bigint NOT NULL, user_id uuid, sent_at timestamptz NOT NULL, hash bigint NOT NULL);
"""

TABLES = {
    "a": ["public.sendry_outbox"], "a-narrow": ["public.sendry_outbox"],
    "b": ["lc.outbox_b", "lc.claims_b", "lc.sent_b"],
    "c": ["lc.outbox_c", "lc.claims_c", "lc.sent_c_today"],
    "d": ["lc.outbox_d", "lc.lease_d"],
    "e": ["lc.outbox_e"],
    "f": ["lc.outbox_f", "lc.sent_f"],
}

INSERT_LEASED = f"""
INSERT INTO lc.outbox_{{t}} (class, op, user_id, email, old_email)
SELECT 'live', 'upsert', {ROW_USER}, 'user' || g || '@example.com', {ROW_OLD}
FROM generate_series(%(lo)s::int, %(hi)s::int) g
"""
# The claim of e and f: due rows not leased, oldest first; the ordering probes of a's
# claim (an older unfinished row of the same user or address) left out, as in b, c, d.
CLAIM_IN_ROW = """
WITH c AS MATERIALIZED (
    SELECT ctid AS tid FROM lc.outbox_{t}
    WHERE class = 'live' AND finished_at IS NULL AND next_attempt_at <= now()
      AND (locked_until IS NULL OR locked_until <= now())
    ORDER BY next_attempt_at, id LIMIT {n} FOR UPDATE SKIP LOCKED)
UPDATE lc.outbox_{t} o
SET status = 'processing', locked_by = 'bench', locked_until = now() + interval '30 s',
    claim_id = %(claim)s, attempts = o.attempts + 1, updated_at = now()
FROM c WHERE o.ctid = c.tid
RETURNING o.id, o.user_id, o.email, o.old_email, o.claim_id
"""
COMPLETE_IN_ROW = """
UPDATE lc.outbox_e o
SET status = 'sent', finished_at = now(), sent_at = now(), locked_by = NULL, locked_until = NULL,
    updated_at = now()
WHERE o.id = ANY (%(ids)s) AND o.claim_id = %(claim)s AND o.locked_by = 'bench'
"""
COMPLETE_IN_ROW_DELETE = """
WITH done AS (DELETE FROM lc.outbox_f o WHERE o.id = ANY (%(ids)s) AND o.claim_id = %(claim)s
                                         AND o.locked_by = 'bench' RETURNING id, user_id)
INSERT INTO lc.sent_f (id, user_id, sent_at, hash)
SELECT id, user_id, now(), hashtextextended(user_id::text, 0) FROM done
"""

# The claim of b and c: the next batch after the worker's cursor, and its lease.
CLAIM_LEASE = """
WITH batch AS MATERIALIZED (
    SELECT id, user_id, kind, old_email FROM lc.outbox_{t} WHERE id > %(cursor)s ORDER BY id LIMIT {n}),
lease AS (INSERT INTO lc.claims_{t} (worker, lease_until, lo, hi)
          SELECT 'bench', now() + interval '30 s', min(id), max(id) FROM batch HAVING count(*) > 0
          RETURNING claim_id)
SELECT b.id, b.user_id, b.kind, b.old_email, l.claim_id FROM batch b, lease l ORDER BY b.id
"""
COMPLETE_RECORD = """
WITH done AS (DELETE FROM lc.outbox_{t} WHERE id = ANY(%(ids)s) RETURNING id, user_id),
rec AS (INSERT INTO lc.sent_{t} (id, user_id, sent_at, hash)
        SELECT id, user_id, now(), hashtextextended(user_id::text, 0) FROM done)
DELETE FROM lc.claims_{t} WHERE claim_id = %(claim)s
"""
CLAIM_D = """
WITH batch AS MATERIALIZED (
    SELECT id, user_id, kind, old_email FROM lc.outbox_d WHERE id > %(cursor)s ORDER BY id LIMIT {n}),
lease AS (INSERT INTO lc.lease_d (lo, hi, worker, lease_until)
          SELECT min(id), max(id), 'bench', now() + interval '30 s' FROM batch HAVING count(*) > 0
          RETURNING lo)
SELECT b.id, b.user_id, b.kind, b.old_email, l.lo FROM batch b, lease l ORDER BY b.id
"""
COMPLETE_D = """
WITH done AS (DELETE FROM lc.outbox_d WHERE id = ANY(%(ids)s))
DELETE FROM lc.lease_d WHERE lo = %(claim)s
"""


def cpu_ns(pid):
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


class Meter:
    """WAL bytes and backend CPU of statements on one connection, by phase."""

    def __init__(self, conn):
        self.conn = conn
        self.pid = conn.info.backend_pid
        self.wal = {}
        self.cpu = {}

    def run(self, phase, sql, params=None):
        l0, c0 = bench_wal.lsn(self.conn), cpu_ns(self.pid)
        cur = self.conn.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
        c1, l1 = cpu_ns(self.pid), bench_wal.lsn(self.conn)
        self.cpu[phase] = self.cpu.get(phase, 0) + c1 - c0
        self.wal[phase] = self.wal.get(phase, 0) + int(
            self.conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (l1, l0)).fetchone()[0])
        return rows


class Lifecycle:
    def __init__(self, pg, conn, name, rows):
        self.pg, self.conn, self.name, self.rows = pg, conn, name, rows
        self.t = name[0]

    def reset(self):
        c = self.conn
        if self.t == "a":
            c.execute("TRUNCATE public.sendry_outbox RESTART IDENTITY")
        else:
            c.execute(f"TRUNCATE {', '.join(x for x in TABLES[self.name] if 'today' not in x)} RESTART IDENTITY")
        if self.t == "c":
            c.execute("DROP TABLE IF EXISTS lc.sent_c_today")
            c.execute("CREATE TABLE lc.sent_c_today PARTITION OF lc.sent_c"
                      " FOR VALUES FROM (date_trunc('day', now())) TO (date_trunc('day', now()) + interval '1 day')")

    def size(self):
        return sum(self.conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]
                   for t in TABLES[self.name])

    def insert(self, m):
        sql = ({"a": INSERT_TODAY, "a-narrow": INSERT_TODAY_NARROW}.get(self.name)
               or (INSERT_LEASED.replace("{t}", self.t) if self.t in "ef" else insert_narrow(self.t)))
        for lo in range(1, self.rows + 1, BATCH):
            m.run("insert", sql, {"lo": lo, "hi": min(lo + BATCH - 1, self.rows)})

    def deliver(self, m):
        """Claims and completes every row; the rows delivered."""
        delivered, cursor, claim_no = 0, 0, 0
        while True:
            claim_no += 1
            if self.t == "a":
                got = m.run("claim", CLAIM_SQL, {"p1": BATCH, "p2": 0, "p3": "bench", "p4": 30, "p5": 10,
                                                 "p6": claim_no})
                if not got:
                    return delivered
                outcomes = [{"id": r[1], "claim_id": r[9], "status": "sent", "http_status": 200,
                             "error": None, "delay_ms": 0, "uncount": 0} for r in got]
                done = m.run("complete", COMPLETE_SQL, {"p1": json.dumps(outcomes), "p2": "bench"})
                delivered += len(done)
                continue
            if self.t in "ef":
                return self.deliver_in_row(m)
            claim = CLAIM_D if self.t == "d" else CLAIM_LEASE.replace("{t}", self.t)
            got = m.run("claim", claim.replace("{n}", str(BATCH)), {"cursor": cursor})
            if not got:
                return delivered
            cursor = got[-1][0]
            complete = COMPLETE_D if self.t == "d" else COMPLETE_RECORD.replace("{t}", self.t)
            m.run("complete", complete, {"ids": [r[0] for r in got], "claim": got[0][4]})
            delivered += len(got)

    def deliver_in_row(self, m):
        """e and f: one batch in flight while the next is claimed."""
        claim = CLAIM_IN_ROW.replace("{t}", self.t).replace("{n}", str(BATCH))
        complete = COMPLETE_IN_ROW if self.t == "e" else COMPLETE_IN_ROW_DELETE
        delivered, claim_no, held = 0, 0, None
        while True:
            claim_no += 1
            got = m.run("claim", claim, {"claim": claim_no})
            if held:
                m.run("complete", complete, {"ids": [r[0] for r in held], "claim": held[0][4]})
                delivered += len(held)
            if not got:
                return delivered
            held = got

    def vacuum(self, m):
        for t in TABLES[self.name]:
            m.run("vacuum", f"VACUUM (PARALLEL 0) {t}")

    def retention(self, m):
        if self.t == "a":
            m.run("retention", "DELETE FROM public.sendry_outbox WHERE status = 'sent'")
        elif self.t == "b":
            m.run("retention", "DELETE FROM lc.sent_b")
        elif self.t == "c":
            m.run("retention", "DROP TABLE lc.sent_c_today")
        elif self.t == "e":
            m.run("retention", "DELETE FROM lc.outbox_e WHERE status = 'sent'")
        elif self.t == "f":
            m.run("retention", "DELETE FROM lc.sent_f")

    def round(self):
        """One lifecycle of --rows rows: {figure: value per row}."""
        c = self.conn
        self.reset()
        c.execute("CHECKPOINT")
        m = Meter(c)
        start = bench_wal.lsn(c)
        self.insert(m)
        ins_end = bench_wal.lsn(c)
        c.execute("CHECKPOINT")
        d_start = bench_wal.lsn(c)
        n = self.deliver(m)
        d_end = bench_wal.lsn(c)
        size_after = self.size()
        self.vacuum(m)
        v_end = bench_wal.lsn(c)
        size_vacuumed = self.size()
        self.retention(m)
        ins = bench_wal.WalStats(self.pg, c, start, ins_end)
        dlv = bench_wal.WalStats(self.pg, c, d_start, d_end)
        vac = bench_wal.WalStats(self.pg, c, d_end, v_end)
        f = {"delivered": n}
        for phase in ("insert", "claim", "complete", "vacuum", "retention"):
            f[f"wal_{phase}"] = m.wal.get(phase, 0) / n
            f[f"cpu_{phase}"] = m.cpu.get(phase, 0) / 1e3 / n
        f["wal_delivery_fpi"] = dlv.fpi / n
        f["wal_vacuum_fpi"] = vac.fpi / n
        f["wal_total"] = sum(f[f"wal_{p}"] for p in ("insert", "claim", "complete", "vacuum"))
        f["wal_records"] = f["wal_total"] - (ins.fpi + dlv.fpi + vac.fpi) / n
        f["cpu_total"] = sum(f[f"cpu_{p}"] for p in ("insert", "claim", "complete", "vacuum"))
        f["idx_insert"] = ins.index_entries() / n
        f["idx_delivery"] = dlv.index_entries() / n
        f["heap_records"] = sum(t["n"] for k, t in list(ins.types.items()) + list(dlv.types.items())
                                if k.startswith(("Heap/", "Heap2/"))) / n
        f["lock_records"] = dlv.count("Heap/LOCK") / n
        f["hot_records"] = dlv.count("Heap/HOT_UPDATE") / n
        f["mb_after"] = size_after / 1e6
        f["mb_vacuumed"] = size_vacuumed / 1e6
        f["top"] = bench_wal.top_types(dlv, n, 4)
        return f


ROWS = [
    ("WAL per delivered row (B)", None),
    ("  insert", "wal_insert"),
    ("  claim", "wal_claim"),
    ("  completion", "wal_complete"),
    ("    of claim + completion: full-page images (backlog)", "wal_delivery_fpi"),
    ("  VACUUM of the dead rows", "wal_vacuum"),
    ("  total: insert, claim, completion, VACUUM", "wal_total"),
    ("  total without full-page images (delivered within a checkpoint cycle)", "wal_records"),
    ("  retention (removing the sent records)", "wal_retention"),
    ("backend CPU per delivered row (µs)", None),
    ("  insert", "cpu_insert"),
    ("  claim", "cpu_claim"),
    ("  completion", "cpu_complete"),
    ("  VACUUM", "cpu_vacuum"),
    ("  total: insert, claim, completion, VACUUM", "cpu_total"),
    ("  retention", "cpu_retention"),
    ("records written per delivered row", None),
    ("  B-tree index entries at insert", "idx_insert"),
    ("  B-tree index entries at claim + completion", "idx_delivery"),
    ("  heap records, insert to completion", "heap_records"),
    ("  lock records (Heap/LOCK) at claim + completion", "lock_records"),
    ("  HOT updates (Heap/HOT_UPDATE) at claim + completion", "hot_records"),
    ("size of the tables and their indexes (MB)", None),
    ("  after the delivery", "mb_after"),
    ("  after the VACUUM", "mb_vacuumed"),
]


def fmt(v):
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=20_000 if QUICK else 100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fillfactor", type=int, default=45, help="e's and f's outbox (10 to 100)")
    args = ap.parse_args()
    with pgharness.Cluster(supabase=True, install=True, durable=True, conf=bench_wal.WAL_CONF) as pg:
        with psycopg.connect(pg.dsn_for(ADMIN), autocommit=True) as conn:
            settings = bench_wal.wal_settings(conn)
            conn.execute(SCHEMA.replace("{fillfactor}", str(args.fillfactor)))
            res = {name: [] for name in LIFECYCLES}
            for rnd in range(args.runs):
                for name in LIFECYCLES:
                    t0 = time.monotonic()
                    f = Lifecycle(pg, conn, name, args.rows).round()
                    if f["delivered"] != args.rows:
                        print(f"bench_lifecycle: {name} delivered {f['delivered']} of {args.rows} rows",
                              file=sys.stderr)
                        return 1
                    res[name].append(f)
                    print(f"[{time.strftime('%H:%M:%S')}] bench_lifecycle: round {rnd + 1} {name}:"
                          f" {f['wal_total']:.0f} B/row, {f['cpu_total']:.1f} µs/row"
                          f" ({time.monotonic() - t0:.0f} s)", file=sys.stderr, flush=True)
    print(f"\nbench_lifecycle: one outbox row's lifecycle, {args.rows:,} rows in batches of {BATCH},"
          f" one worker (e and f: --fillfactor {args.fillfactor}); medians of {args.runs} rounds, the lifecycles in turn in each, one cluster;"
          f" {settings}; load average {os.getloadavg()[0]:.2f}")
    head = ["per delivered row"] + LIFECYCLES
    lines = []
    for label, key in ROWS:
        lines.append([label] + (["" for _ in LIFECYCLES] if key is None else
                                [fmt(statistics.median(f[key] for f in res[n])) for n in LIFECYCLES]))
    widths = [max(len(x[i]) for x in lines + [head]) for i in range(len(head))]
    for row in [head] + lines:
        print("  " + "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    print("  a: today's outbox and the worker's claim and completion; a-narrow: the same with the payload"
          " left '{}'; b: lease row per batch, DELETE + sent record; c: b with daily partitions of the"
          " records; d: lease row per batch, DELETE only; e: in-row lease, HOT claim, UPDATE to sent; f: e with"
          " DELETE + sent record")
    print("\nthe delivery's record types that write most (first round; bytes per row, ×records per row):")
    for name in LIFECYCLES:
        print(f"  {name}: {res[name][0]['top']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
