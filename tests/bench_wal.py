#!/usr/bin/python3
"""make bench: write-ahead log per synced user, the trigger and the delivery apart (issue 17).

    /usr/bin/python3 tests/bench_wal.py [--baseline CHECKOUT] [--users N] [--signups N] [--keep]

One throwaway Supabase-shaped cluster (tests/pgharness.py) with PostgreSQL's durable
defaults (fsync, full_page_writes, synchronous_commit on; wal_level as the harness leaves
it, printed; BENCH_WAL_LEVEL=logical sets it) and autovacuum off, so that nothing but the statement measured writes WAL.
One database per variant, cloned from the same fixture:

    bare      no sendry-sync at all
    baseline  sql/install.sql of --baseline CHECKOUT (BASELINE= in make bench), when given
    this      this tree's sql/install.sql

In each, in turn, every figure is pg_wal_lsn_diff of pg_current_wal_insert_lsn() after and
before the work, started right after a CHECKPOINT (so it includes the full-page image of
every page it is the first to touch; `pg_waldump --stats` splits the bytes into records
and full-page images, printed as "FPI"):
  * a --users GoTrue-shaped users INSERT in one statement (bench_triggers.py's), per user;
  * --signups GoTrue-shaped sign-ups, one transaction each (INSERT users, INSERT
    identities, the role UPDATE, COMMIT; the same user ids in every database), per user;
  * the trigger: each of those less the same work on the bare table;
  * the delivery: `sendry-sync --once --rate 0` of the checkout (the real worker: claim,
    send to build/fastapi, complete) over the rows the two steps above enqueued, per row
    the worker marked sent (every statement of the worker counts: its start-up too; the
    outbox is analyzed first);
  * --signups sign-in / token-refresh UPDATEs (last_sign_in_at, updated_at), one
    transaction each, per transaction, and the rows they enqueued (should be none).
Then the record types that write most, per user, for the trigger and the delivery.
Figures only: nothing here passes or fails on a size or a time. BENCH_QUICK=1 scales it
down (20,000 users, 300 sign-ups).
"""

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import types
import uuid

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "bench"))

import bench  # noqa: E402  (tests/bench/bench.py: the worker, the fake, the baseline's build)
import bench_triggers  # noqa: E402  (the GoTrue-shaped statements)
import pgharness  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")
ADMIN = pgharness.Cluster.SUPERUSER
GOAL_BYTES = 800          # issue 17: trigger and delivery together, per synced user

# A cluster where only the work measured writes WAL, and where the WAL of a measurement is
# still on disk when pg_waldump reads it.
# BENCH_WAL_LEVEL=logical (as Supabase runs) measures at that wal_level instead of the
# harness's (PostgreSQL's default, replica): an UPDATE then logs the whole new row.
WAL_CONF = ["autovacuum = off", "checkpoint_timeout = '1h'", "max_wal_size = '8GB'",
            "wal_keep_size = '4GB'"] + (
    [f"wal_level = {os.environ['BENCH_WAL_LEVEL']}"] if os.environ.get("BENCH_WAL_LEVEL") else [])


# --- WAL accounting (also used by bench_lifecycle.py) -------------------------------------

def lsn(conn):
    return conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()[0]


class WalStats:
    """The WAL between two LSNs: bytes (pg_wal_lsn_diff) and, from pg_waldump --stats=record,
    per record type: count, record bytes, full-page-image bytes."""

    def __init__(self, cluster, conn, start, end):
        self.bytes = int(conn.execute("SELECT pg_wal_lsn_diff(%s, %s)", (end, start)).fetchone()[0])
        # The records up to `end` on disk for pg_waldump (a commit that wrote nothing else
        # would not wait for its flush).
        conn.execute("SELECT pg_switch_wal()")
        self.types = waldump(cluster, start, end)

    @property
    def fpi(self):
        return sum(t["fpi"] for t in self.types.values())

    def count(self, *names):
        return sum(t["n"] for k, t in self.types.items() if k in names)

    def index_entries(self):
        """B-tree leaf tuples written (one record each), hash/GIN/GiST not used here."""
        return self.count("Btree/INSERT_LEAF", "Btree/INSERT_POST")


STATS_LINE = re.compile(r"^(\S+/\S+)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(\s*[\d.]+\)\s+(\d+)\s+\(")


def waldump(cluster, start, end):
    """{record type: {n, rec, fpi}} of pg_waldump --stats=record between two LSNs."""
    if start == end:
        return {}
    argv = [os.path.join(cluster.bindir, "pg_waldump"), "--stats=record", "-p",
            os.path.join(cluster.datadir, "pg_wal"), "-s", str(start), "-e", str(end)]
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode:
        raise RuntimeError(f"pg_waldump {start}..{end}: {r.stderr.strip()}")
    out = {}
    for line in r.stdout.splitlines():
        m = STATS_LINE.match(line)
        if m:
            out[m.group(1)] = dict(n=int(m.group(2)), rec=int(m.group(3)), fpi=int(m.group(4)))
    return out


def wal_settings(conn):
    return conn.execute("SELECT string_agg(name || '=' || setting, ', ' ORDER BY name) FROM pg_settings"
                        " WHERE name IN ('wal_level', 'full_page_writes', 'wal_compression', 'fsync',"
                        " 'synchronous_commit', 'server_version', 'autovacuum', 'data_checksums',"
                        " 'wal_log_hints')").fetchone()[0]


def top_types(stats, per, n=6):
    """'Heap/INSERT 210 B (FPI 0), ...' of the n record types that write most, per `per`."""
    rows = sorted(stats.types.items(), key=lambda kv: -(kv[1]["rec"] + kv[1]["fpi"]))[:n]
    return ", ".join(f"{k} {(t['rec'] + t['fpi']) / per:,.0f} B"
                     + (f" (FPI {t['fpi'] / per:,.0f})" if t["fpi"] else "")
                     + f" ×{t['n'] / per:.2f}" for k, t in rows)


# --- the measurements --------------------------------------------------------------------

def signup_id(n):
    return str(uuid.UUID(hashlib.md5(f"walsignup{n}".encode()).hexdigest()))


class Run:
    def __init__(self, pg, args, workdir):
        self.pg, self.args, self.workdir = pg, args, workdir
        self.dbs = ["bare"] + (["baseline"] if args.baseline else []) + ["this"]
        self.checkout = {"baseline": args.baseline, "this": ROOT}
        self.res = {db: {} for db in self.dbs}
        self.problems = []

    def conn(self, db, user=ADMIN):
        c = psycopg.connect(self.pg.dsn_for(user, db), autocommit=True)
        if user == "supabase_auth_admin":
            c.execute("SET search_path = auth")
        return c

    def setup(self):
        with self.conn("postgres") as c:
            for db in self.dbs:
                c.execute(f"CREATE DATABASE {db} TEMPLATE postgres")
        for db in self.dbs:
            if db != "bare":
                sql = os.path.join(self.checkout[db], "sql", "install.sql")
                r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d",
                                    self.pg.dsn_for("postgres", db), "-f", sql],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                if r.returncode:
                    raise RuntimeError(f"psql -f {sql} on {db}: {r.stderr}")

    def measured(self, db, work):
        """WalStats of work(), right after a CHECKPOINT."""
        with self.conn(db) as c:
            c.execute("CHECKPOINT")
            start = lsn(c)
            work()
            end = lsn(c)
            return WalStats(self.pg, c, start, end)

    def outbox(self, db, where=""):
        if db == "bare":
            return 0
        with self.conn(db) as c:
            return c.execute("SELECT count(*) FROM public.sendry_outbox " + where).fetchone()[0]

    def bulk_insert(self, db):
        with self.conn(db) as c:
            c.execute("VACUUM ANALYZE auth.users")

        def work():
            with self.conn(db, "supabase_auth_admin") as c:
                c.execute(bench_triggers.BULK_INSERT, {"n": self.args.users})
        self.res[db]["bulk"] = self.measured(db, work)
        self.res[db]["bulk_enqueued"] = self.outbox(db)

    def signups(self, db):
        before = self.outbox(db)

        def work():
            with psycopg.connect(self.pg.dsn_for("supabase_auth_admin", db)) as c:
                c.execute("SET search_path = auth")
                c.execute("SELECT setseed(0.17)")        # the same confirmation tokens in every database
                c.commit()
                for i in range(self.args.signups):
                    uid = signup_id(i)
                    c.execute(bench_triggers.SIGNUP_USER, (uid, f"wal.signup{i}@example.com"), prepare=True)
                    c.execute(bench_triggers.SIGNUP_IDENTITY, (uid,), prepare=True)
                    c.execute(bench_triggers.SIGNUP_ROLE, (uid,), prepare=True)
                    c.commit()
        self.res[db]["signup"] = self.measured(db, work)
        self.res[db]["signup_enqueued"] = self.outbox(db) - before

    def signins(self, db):
        before = self.outbox(db)

        def work():
            with psycopg.connect(self.pg.dsn_for("supabase_auth_admin", db)) as c:
                c.execute("SET search_path = auth")
                c.commit()
                for i in range(self.args.signups):
                    c.execute(bench_triggers.SIGNIN, (bench_triggers.user_id(i + 1),), prepare=True)
                    c.commit()
        self.res[db]["signin"] = self.measured(db, work)
        self.res[db]["signin_enqueued"] = self.outbox(db) - before

    def delivery(self, db):
        with self.conn(db) as c:
            # Fresh statistics: a release whose claim or completion needs them (bf579a9's
            # completion without them is O(held rows) per outcome) drains in time; the
            # ANALYZE is before the measurement.
            c.execute("ANALYZE public.sendry_outbox")
        due = self.outbox(db, "WHERE status <> 'sent'")
        sent0 = self.outbox(db, "WHERE status = 'sent'")
        side = types.SimpleNamespace(cluster=types.SimpleNamespace(dsn=self.pg.dsn_for("postgres", db)),
                                     binary=os.path.join(self.checkout[db], "sendry-sync"))
        box = {}

        def work():
            fake = bench.Fake(self.workdir, f"fake-{db}")
            try:
                w = bench.Worker(side, fake, ["--once", "--rate", "0"], os.path.join(self.workdir, f"{db}.log"))
                if not w.wait(w.t0 + self.args.cap):
                    self.problems.append(f"{db}: the drain was cut short after {self.args.cap} s; log {w.log_path}")
                elif w.rc != 0:
                    self.problems.append(f"{db}: the worker exited {w.rc}; log {w.log_path}:\n{w.log_tail()}")
                box["wall"] = w.t_end - w.t0
            finally:
                fake.stop()
        self.res[db]["delivery"] = self.measured(db, work)
        sent = self.outbox(db, "WHERE status = 'sent'") - sent0
        self.res[db].update(delivered=sent, due=due, delivery_wall=box.get("wall"))
        if sent != due:
            self.problems.append(f"{db}: {sent} of {due} rows sent")

    def run(self):
        for db in self.dbs:
            t0 = time.monotonic()
            self.bulk_insert(db)
            self.signups(db)
            if db != "bare":
                self.delivery(db)
            self.signins(db)
            bench.log(f"wal: {db} measured in {time.monotonic() - t0:.0f} s")


# --- the table ---------------------------------------------------------------------------

def per(stats, n):
    return stats.bytes / n if n else None


def cell(v, fpi=None):
    if v is None:
        return "—"
    v = 0.0 if abs(v) < 0.5 else v
    fpi = 0.0 if fpi is not None and abs(fpi) < 0.5 else fpi
    return f"{v:,.0f}" + (f" (FPI {fpi:,.0f})" if fpi is not None else "")


def print_report(run, args, settings):
    r, dbs = run.res, run.dbs
    variants = [db for db in dbs if db != "bare"]
    n_bulk, n_sign = args.users, args.signups
    bare = r["bare"]
    rows = []

    def fig(label, fn):
        rows.append([label] + [fn(db) for db in dbs])

    def both(key, n):
        return lambda db: cell(per(r[db][key], n), r[db][key].fpi / n)

    def extra(key, n):
        return lambda db: "" if db == "bare" else cell((r[db][key].bytes - bare[key].bytes) / n,
                                                       (r[db][key].fpi - bare[key].fpi) / n)

    def delivered(db):
        d = r[db].get("delivered")
        return "" if db == "bare" else cell(per(r[db]["delivery"], d), r[db]["delivery"].fpi / d if d else None)

    def total(key, n, fpi=True):
        def f(db):
            if db == "bare" or not r[db].get("delivered"):
                return ""
            t = ((r[db][key].bytes - bare[key].bytes) / n + r[db]["delivery"].bytes / r[db]["delivered"])
            if not fpi:
                t -= (r[db][key].fpi - bare[key].fpi) / n + r[db]["delivery"].fpi / r[db]["delivered"]
            return f"{t:,.0f} ({t / GOAL_BYTES:.2f}× goal)"
        return f

    fig(f"sign-up, one transaction per user ({n_sign:,}): B per user", both("signup", n_sign))
    fig("  the trigger's share (less bare): B per user", extra("signup", n_sign))
    fig(f"INSERT of {n_bulk:,} users, one statement: B per user", both("bulk", n_bulk))
    fig("  the trigger's share (less bare): B per user", extra("bulk", n_bulk))
    fig("  rows enqueued", lambda db: "" if db == "bare" else f"{r[db]['bulk_enqueued']:,}")
    fig("delivery (claim, send, complete; --once --rate 0): B per row", delivered)
    fig("  rows delivered", lambda db: "" if db == "bare" else f"{r[db]['delivered']:,}")
    fig("  its time (s)", lambda db: "" if db == "bare" or r[db].get("delivery_wall") is None
        else f"{r[db]['delivery_wall']:.1f}")
    fig(f"trigger + delivery, one-transaction sign-up (goal ≤ {GOAL_BYTES})", total("signup", n_sign))
    fig("  the same without full-page images", total("signup", n_sign, False))
    fig(f"trigger + delivery, the {n_bulk:,}-user INSERT (goal ≤ {GOAL_BYTES})", total("bulk", n_bulk))
    fig("  the same without full-page images", total("bulk", n_bulk, False))
    fig(f"sign-in / token refresh UPDATE, one transaction ({n_sign:,}): B each", both("signin", n_sign))
    fig("  extra (less bare): B each", extra("signin", n_sign))
    fig("  rows enqueued", lambda db: "" if db == "bare" else f"{r[db]['signin_enqueued']:,}")

    head = ["WAL (bytes)"] + dbs
    if len(variants) == 2:
        head.append("change")
        for row, key in zip(rows, ("signup", None, "bulk", None, None, "delivery", None, None, None, None,
                                   None, None, "signin", None, None)):
            change = ""
            if key == "delivery":
                a, b = (per(r[v]["delivery"], r[v]["delivered"]) for v in variants)
                change = f"×{b / a:.2f}" if a and b else ""
            elif key == "signin":
                a, b = (r[v][key].bytes for v in variants)
                change = f"×{b / a:.2f}" if a and b else ""
            elif key:
                a, b = (r[v][key].bytes - bare[key].bytes for v in variants)
                change = f"×{b / a:.2f} (trigger)" if a > 0 and b > 0 else ""
            row.append(change)
    widths = [max(len(x[i]) for x in rows + [head]) for i in range(len(head))]
    print(f"\nbench_wal: WAL per synced user; {settings}; autovacuum off; every figure right after a CHECKPOINT"
          f" (FPI: the full-page images in it); baseline = {args.baseline or '(none)'}")
    for row in [head] + rows:
        print("  " + "  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    print("  (change = this / baseline; goal: issue 17, trigger and delivery together ≤ 800 B per synced user)")
    print("\nwhere it goes: the record types that write most (pg_waldump --stats=record), bytes per user or row,"
          " ×records per user or row")
    for db in variants:
        for key, n, what in (("signup", n_sign, "sign-up transaction"), ("bulk", n_bulk, "bulk INSERT"),
                             ("delivery", r[db]["delivered"], "delivery")):
            if n:
                print(f"  {db} {what}: {top_types(r[db][key], n)}")
    print(f"  bare sign-up transaction: {top_types(bare['signup'], n_sign)}")
    for p in run.problems:
        print(f"\nbench_wal: {p}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="", help="another checkout (its sendry-sync is built there first)")
    ap.add_argument("--users", type=int, default=20_000 if QUICK else 100_000)
    ap.add_argument("--signups", type=int, default=300 if QUICK else 1000)
    ap.add_argument("--cap", type=float, default=60 if QUICK else 120, help="seconds a drain may take")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (worker logs)")
    args = ap.parse_args()
    if args.baseline:
        args.baseline = os.path.abspath(args.baseline)
        bench.build_baseline(args.baseline)
    for tool in ("sendry-sync", "build/fastapi"):
        if not os.access(os.path.join(ROOT, tool), os.X_OK):
            print(f"bench_wal: {tool} is missing: run make bench", file=sys.stderr)
            return 2
    workdir = tempfile.mkdtemp(prefix="sendry-bench-wal-")
    os.chmod(workdir, 0o755)
    with pgharness.Cluster(supabase=True, durable=True, conf=WAL_CONF) as pg:
        run = Run(pg, args, workdir)
        run.setup()
        with run.conn("postgres") as c:
            settings = wal_settings(c)
        bench.log(f"wal: {settings}")
        run.run()
        print_report(run, args, settings)
    if not run.problems and not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if run.problems else 0


if __name__ == "__main__":
    sys.exit(main())
