#!/usr/bin/python3
"""make bench: what the triggers cost the user's database (issue 9 item 5, issue 11).

    /usr/bin/python3 tests/bench_triggers.py [--baseline REV|CHECKOUT] [--fsync-off] [--runs N]
                                             [--users N] [--transactions N] [--no-breakdown]

Starts one throwaway Supabase-shaped cluster with PostgreSQL's default durability
(fsync, full_page_writes and synchronous_commit on; --fsync-off uses the test settings)
and one database per variant, all cloned from the same fixture:

    bare      no sendry-sync at all
    before    sql/install.sql of --baseline REV or CHECKOUT (default bf579a9; make bench's
              BASELINE=), when given
    after     this tree's sql/install.sql (the default mapping)
    setwise   `after` with its UPDATE trigger replaced by a statement-level one that
              compares old and new contacts set-wise (rendered by a row function)
    stmthash  `after` with its UPDATE trigger replaced by a statement-level one that
              compares the new contacts with sendry_contact_state (the hash approach)
    rowwhen   `after` with its row-level UPDATE trigger's column list removed (WHEN only)
    watched   `after` with the README's profiles mapping and sendry_watch('public.profiles')

Figures (each the median of --runs rounds, the variants measured in turn in every round),
as wall-clock time and as the CPU time of the database backend that ran them
(/proc/<pid>/schedstat: what the user's database pays, and less disturbed by other
work on the machine):
  * a bulk INSERT of --users GoTrue-shaped users in one statement (goal <= 1.6x bare, issue 17);
  * one GoTrue-shaped sign-up transaction: INSERT users, INSERT identities, the role
    UPDATE, COMMIT (prepared statements on one connection; goal <= 1.1x bare);
  * the sign-in / token refresh UPDATE (last_sign_in_at, updated_at), its own transaction
    (goal <= 1.05x bare, and nothing enqueued);
  * a name change through raw_user_meta_data, and a bulk UPDATE of raw_app_meta_data that
    changes no contact (what each UPDATE-trigger variant costs);
  * a profile UPDATE through a watched table, with and without a contact change;
  * the README's backfill statement and the repair pass over --users users;
  * where the bulk INSERT's trigger time goes (--no-breakdown skips it).
Figures only: nothing here passes or fails on a timing.
"""

import argparse
import hashlib
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import pgharness  # noqa: E402

ADMIN = pgharness.Cluster.SUPERUSER

# GoTrue-shaped users: a third OAuth (full_name), two thirds email sign-ups
# (first_name/last_name). Ids derive from the number, so pgbench can address user n.
BULK_INSERT = """
INSERT INTO users (instance_id, id, aud, role, email, encrypted_password, confirmation_token,
                   confirmation_sent_at, raw_app_meta_data, raw_user_meta_data, is_sso_user,
                   is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', md5('bench' || g)::uuid, 'authenticated',
       'authenticated', 'bench.user' || g || '@example.com',
       '$2a$10$' || md5(g::text) || 'abcdefghijklmnopqrstu', md5('c' || g), now(),
       CASE WHEN g %% 3 = 0 THEN '{"provider": "google", "providers": ["google"]}'::jsonb
            ELSE '{"provider": "email", "providers": ["email"]}'::jsonb END,
       CASE WHEN g %% 3 = 0
            THEN jsonb_build_object('full_name', 'Bench User ' || g, 'name', 'Bench User ' || g,
                                    'avatar_url', 'https://example.com/avatar/' || g || '.png',
                                    'email', 'bench.user' || g || '@example.com',
                                    'email_verified', true, 'phone_verified', false,
                                    'sub', (100000000 + g)::text)
            ELSE jsonb_build_object('first_name', 'Bench', 'last_name', 'User ' || g,
                                    'email_verified', false, 'phone_verified', false,
                                    'sub', md5('s' || g))
       END,
       false, false, now(), now()
FROM generate_series(1, %(n)s) g
"""

PROFILES_TABLE = """
CREATE TABLE public.profiles (id uuid PRIMARY KEY, plan text NOT NULL DEFAULT 'trial',
                              locale text, last_seen_at timestamptz);
"""

# The README's profiles example (keep in step with README.md, "The contact mapping").
PROFILES_MAPPING = """
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id,
       lower(btrim(u.email)) AS email,
       NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') AS first_name,
       NULLIF(btrim(u.raw_user_meta_data ->> 'last_name'), '') AS last_name,
       jsonb_build_object('supabase_user_id', u.id::text,
                          'plan', COALESCE(p.plan, 'none'),
                          'locale', p.locale) AS metadata,
       CASE WHEN p.plan = 'trial' THEN ARRAY['aud_trial'] ELSE ARRAY['aud_customers'] END AS audiences
FROM auth.users u
LEFT JOIN public.profiles p ON p.id = u.id;
SELECT public.sendry_watch('public.profiles', 'id');
"""

# The two statement-level alternatives to the row-level UPDATE trigger.
SETWISE = r"""
CREATE FUNCTION public.bench_payload(u auth.users) RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_strip_nulls(jsonb_build_object(
        'email', lower(btrim(u.email)),
        'first_name', left(CASE WHEN NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') IS NULL
                                 AND NULLIF(btrim(u.raw_user_meta_data ->> 'last_name'), '') IS NULL
                                THEN substring(COALESCE(NULLIF(btrim(u.raw_user_meta_data ->> 'full_name'), ''),
                                                        NULLIF(btrim(u.raw_user_meta_data ->> 'name'), '')), '^\S+')
                                ELSE NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') END, 200),
        'last_name', NULLIF(btrim(u.raw_user_meta_data ->> 'last_name'), ''),
        'metadata', jsonb_build_object('supabase_user_id', u.id::text, 'signup_source', 'supabase')))
$$;
CREATE FUNCTION public.bench_updated() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = '' AS $$
BEGIN
    INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
    SELECT 'live', 'upsert', n.id, lower(btrim(n.email)), p.new_payload
    FROM new_rows n JOIN old_rows o ON o.id = n.id,
         LATERAL (SELECT public.bench_payload(n) AS new_payload, public.bench_payload(o) AS old_payload) p
    WHERE public.sendry_user_is_synced(n, 'signup') AND p.new_payload IS DISTINCT FROM p.old_payload;
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sendry_sync_users_update AFTER UPDATE ON auth.users
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.bench_updated();
"""

STMTHASH = r"""
CREATE FUNCTION public.bench_updated() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER
SET search_path = '' AS $$
BEGIN
    PERFORM public.sendry_enqueue_contacts(
        ARRAY(SELECT n.id FROM new_rows n WHERE public.sendry_user_is_synced(n, 'signup')), 'live');
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER sendry_sync_users_update AFTER UPDATE ON auth.users
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION public.bench_updated();
"""


SIGNUP_USER = """
INSERT INTO users (instance_id, id, aud, role, email, encrypted_password, confirmation_token,
                   confirmation_sent_at, raw_app_meta_data, raw_user_meta_data, is_sso_user,
                   is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', %s, 'authenticated', '', %s,
        '$2a$10$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz012', md5(random()::text), now(),
        '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Sign", "last_name": "Up", "email_verified": false, "phone_verified": false}',
        false, false, now(), now())
"""
SIGNUP_IDENTITY = "INSERT INTO identities (user_id, provider, identity_data) VALUES (%s, 'email', '{}')"
SIGNUP_ROLE = "UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = %s"
SIGNIN = "UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = %s"
RENAME = ("UPDATE users SET raw_user_meta_data = raw_user_meta_data || jsonb_build_object('first_name', %s::text),"
          " updated_at = now() WHERE id = %s")
PROFILE_CHANGE = "UPDATE profiles SET plan = CASE plan WHEN 'trial' THEN 'pro' ELSE 'trial' END WHERE id = %s"
PROFILE_SAME = "UPDATE profiles SET last_seen_at = now() WHERE id = %s"
HOT_USERS = 2000        # the per-transaction figures touch these (after a warm-up, no cold pages)


def user_id(n):
    """The id BULK_INSERT gives user n: md5('bench' || n)::uuid."""
    return str(uuid.UUID(hashlib.md5(f"bench{n}".encode()).hexdigest()))


def cpu_ns(pid):
    """CPU time a process has run, in ns (/proc/<pid>/schedstat)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[0])


class Bench:
    def __init__(self, pg, args):
        self.pg = pg
        self.args = args
        self.tmp = tempfile.mkdtemp(prefix="sendry-bench-")
        self.dbs = ["bare"] + (["before"] if args.baseline else []) + ["after", "setwise", "stmthash",
                                                                        "rowwhen", "watched"]
        self.sessions = {}
        self.rng = random.Random(1)

    # --- plumbing ------------------------------------------------------------------
    def conn(self, db, user=ADMIN, autocommit=True):
        return psycopg.connect(self.pg.dsn_for(user, db), autocommit=autocommit)

    def sql(self, db, text, user=ADMIN):
        with self.conn(db, user) as c:
            c.execute(text)

    def scalar(self, db, text, user=ADMIN):
        with self.conn(db, user) as c:
            return c.execute(text).fetchone()[0]

    def psql_file(self, db, path, user="postgres"):
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.pg.dsn_for(user, db),
                            "-f", path], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if r.returncode:
            raise RuntimeError(f"psql -f {path} on {db}: {r.stderr}")

    def installed(self, db):
        return db != "bare"

    def outbox_rows(self, db):
        return self.scalar(db, "SELECT count(*) FROM public.sendry_outbox") if self.installed(db) else 0

    def session(self, db, user):
        """One long-lived connection per database and role, like an application's pool."""
        key = (db, user)
        if key not in self.sessions:
            c = self.conn(db, user, autocommit=False)
            if user == "supabase_auth_admin":
                c.execute("SET search_path = auth")
                c.commit()
            self.sessions[key] = c
        return self.sessions[key]

    # --- set-up --------------------------------------------------------------------
    def setup(self):
        for db in self.dbs:
            self.sql("postgres", f"CREATE DATABASE {db} TEMPLATE postgres")
            self.sql(db, PROFILES_TABLE, user="postgres")
        if self.args.baseline:
            old = os.path.join(self.tmp, "install-baseline.sql")
            if os.path.isdir(self.args.baseline):      # a checkout (make bench BASELINE=...)
                shutil.copyfile(os.path.join(self.args.baseline, "sql", "install.sql"), old)
            else:
                with open(old, "w") as f:
                    f.write(subprocess.run(["git", "-C", ROOT, "show", f"{self.args.baseline}:sql/install.sql"],
                                           check=True, stdout=subprocess.PIPE, text=True).stdout)
            self.psql_file("before", old)
        for db in ("after", "setwise", "stmthash", "rowwhen", "watched"):
            self.psql_file(db, pgharness.INSTALL)
        self.sql("setwise", SETWISE)
        self.sql("stmthash", STMTHASH)
        when = self.scalar("rowwhen", "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                                      " WHERE tgname = 'sendry_sync_users_update'")
        self.sql("rowwhen", "DROP TRIGGER sendry_sync_users_update ON auth.users;"
                 + when.split(" UPDATE OF ")[0] + " UPDATE ON auth.users" + when.split(" ON auth.users")[1])
        self.sql("watched", PROFILES_MAPPING, user="postgres")

    def reset(self, db):
        with self.conn(db) as c:
            c.execute("TRUNCATE auth.users CASCADE")
            c.execute("TRUNCATE public.profiles")
            if self.installed(db):
                c.execute("TRUNCATE public.sendry_outbox")
                if db != "before":
                    c.execute("TRUNCATE public.sendry_contact_state")
            c.execute("VACUUM ANALYZE auth.users")
            c.execute("CHECKPOINT")

    def timed(self, db, text, user=ADMIN, params=None):
        """(wall s, backend CPU s) of one statement on a fresh connection."""
        with self.conn(db, user) as c:
            if user == "supabase_auth_admin":
                c.execute("SET search_path = auth")
            pid = c.info.backend_pid
            c0, t0 = cpu_ns(pid), time.perf_counter()
            c.execute(text, params)
            return time.perf_counter() - t0, (cpu_ns(pid) - c0) / 1e9

    @staticmethod
    def medians(samples):
        """{db: [(wall, cpu), ...]} -> {db: (median wall, median cpu)}."""
        return {db: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v))
                for db, v in samples.items()}

    # --- figures -------------------------------------------------------------------
    def bulk_insert(self, dbs):
        samples = {db: [] for db in dbs}
        for _ in range(self.args.runs):
            for db in dbs:
                self.reset(db)
                samples[db].append(self.timed(db, BULK_INSERT, "supabase_auth_admin", {"n": self.args.users}))
        return self.medians(samples)

    def fill_the_rest(self):
        """Every variant gets the users (bulk_insert measured only some) and their profiles."""
        for db in self.dbs:
            if not self.scalar(db, "SELECT count(*) FROM auth.users"):
                self.reset(db)
                self.timed(db, BULK_INSERT, "supabase_auth_admin", {"n": self.args.users})
            self.sql(db, "INSERT INTO public.profiles (id, plan, locale)"
                         " SELECT id, 'trial', 'en' FROM auth.users ON CONFLICT DO NOTHING", user="postgres")
            self.sql(db, "VACUUM ANALYZE")
        self.sql("postgres", "CHECKPOINT")

    def transactions(self, dbs, user, one, n=None):
        """Per transaction (wall ms, backend CPU ms): `one(conn, i)` runs it, then COMMIT.
        A warm-up chunk first; then --runs rounds, the variants in turn in each."""
        n = n or self.args.transactions
        samples = {db: [] for db in dbs}
        for rnd in range(self.args.runs + 1):
            for db in dbs:
                conn = self.session(db, user)
                pid = conn.info.backend_pid
                c0, t0 = cpu_ns(pid), time.perf_counter()
                for i in range(n):
                    one(conn, i)
                    conn.commit()
                if rnd:
                    samples[db].append(((time.perf_counter() - t0) * 1000 / n, (cpu_ns(pid) - c0) / 1e6 / n))
        return self.medians(samples)

    def hot_user(self):
        return user_id(self.rng.randint(1, min(HOT_USERS, self.args.users)))

    def signup(self, conn, i):
        uid = str(uuid.uuid4())
        conn.execute(SIGNUP_USER, (uid, f"signup.{uid}@example.com"), prepare=True)
        conn.execute(SIGNUP_IDENTITY, (uid,), prepare=True)
        conn.execute(SIGNUP_ROLE, (uid,), prepare=True)

    def signin(self, conn, i):
        conn.execute(SIGNIN, (self.hot_user(),), prepare=True)

    def rename(self, conn, i):
        conn.execute(RENAME, (f"Renamed{self.rng.random()}", self.hot_user()), prepare=True)

    def profile_change(self, conn, i):
        conn.execute(PROFILE_CHANGE, (self.hot_user(),), prepare=True)

    def profile_same(self, conn, i):
        conn.execute(PROFILE_SAME, (self.hot_user(),), prepare=True)

    def enqueued_by(self, dbs, fn):
        before = {db: self.outbox_rows(db) for db in dbs}
        result = fn()
        return result, {db: self.outbox_rows(db) - before[db] for db in dbs}

    def bulk_update(self, dbs, n):
        stmt = ("UPDATE auth.users SET raw_app_meta_data = raw_app_meta_data"
                " || jsonb_build_object('bench_tick', %(t)s::int) WHERE id IN"
                " (SELECT md5('bench' || g)::uuid FROM generate_series(1, %(n)s) g)")
        samples = {db: [] for db in dbs}
        for run in range(self.args.runs):
            for db in dbs:
                samples[db].append(self.timed(db, stmt, params={"t": run, "n": n}))
        return self.medians(samples)

    def backfill_and_repair(self):
        n = self.args.users
        backfill = ("INSERT INTO sendry_outbox (user_id, email, payload)"
                    " SELECT id, email, sendry_contact_payload(u) FROM auth.users u WHERE email IS NOT NULL")
        out = {f"README backfill statement, {n} users": {}}
        for db in (["before"] if self.args.baseline else []) + ["after"]:
            runs = []
            for _ in range(self.args.runs):
                self.sql(db, "TRUNCATE public.sendry_outbox; CHECKPOINT")
                runs.append(self.timed(db, backfill, "postgres"))
            out[f"README backfill statement, {n} users"][db] = runs
        repair = ("DO $$DECLARE r record; BEGIN LOOP SELECT * INTO r FROM sendry_reconcile_contacts(1000);"
                  " EXIT WHEN NOT r.more; END LOOP; END $$")
        out[f"repair pass over {n} users, nothing to do"] = {"after": [self.timed("after", repair, "postgres")]}
        self.sql("after", "TRUNCATE public.sendry_contact_state; TRUNCATE public.sendry_outbox; CHECKPOINT")
        out[f"repair pass over {n} users, every contact enqueued"] = {
            "after": [self.timed("after", repair, "postgres")]}
        return {k: self.medians(v) for k, v in out.items()}

    def breakdown(self):
        """Where the bulk INSERT's trigger time goes, in a scratch database."""
        db = "probe"
        self.sql("postgres", f"CREATE DATABASE {db} TEMPLATE postgres")
        self.sql(db, PROFILES_TABLE, user="postgres")
        self.psql_file(db, pgharness.INSTALL)
        parts = {}

        def insert_time():
            self.reset(db)
            return self.timed(db, BULK_INSERT, "supabase_auth_admin", {"n": self.args.users})

        def med(fn):
            return self.medians({0: [fn() for _ in range(self.args.runs)]})[0]

        parts["INSERT with every trigger"] = med(insert_time)
        self.sql(db, "ALTER TABLE auth.users DISABLE TRIGGER USER")
        parts["INSERT, no trigger (bare)"] = med(insert_time)
        self.sql(db, "CREATE FUNCTION public.bench_noop() RETURNS trigger LANGUAGE plpgsql AS"
                     " $$BEGIN RETURN NULL; END$$;"
                     "CREATE TRIGGER bench_capture AFTER INSERT ON auth.users REFERENCING NEW TABLE AS n"
                     " FOR EACH STATEMENT EXECUTE FUNCTION public.bench_noop()")
        parts["INSERT + an empty trigger with a transition table"] = med(insert_time)
        self.sql(db, "DROP TRIGGER bench_capture ON auth.users")
        self.sql(db, "CREATE TABLE public.bench_rendered AS SELECT r.user_id, r.email, r.body AS payload, r.hash"
                     " FROM public.sendry_render_contacts(ARRAY(SELECT id FROM auth.users)) r")
        parts["render the mapping (sendry_render_contacts)"] = med(lambda: self.timed(
            db, "SELECT count(r.hash) FROM public.sendry_render_contacts(ARRAY(SELECT id FROM auth.users)) r"))
        fill = ("INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)"
                " SELECT 'live', 'upsert', user_id, email, payload FROM public.bench_rendered")

        def outbox_time():
            self.sql(db, "TRUNCATE public.sendry_outbox; CHECKPOINT")
            return self.timed(db, fill)

        def state_time():
            self.sql(db, "TRUNCATE public.sendry_contact_state; CHECKPOINT")
            return self.timed(db, "INSERT INTO public.sendry_contact_state (user_id, email, contact_hash)"
                                  " SELECT user_id, email, hash FROM public.bench_rendered")

        parts["outbox INSERT of the rendered rows"] = med(outbox_time)
        parts["sendry_contact_state INSERT"] = med(state_time)
        self.sql(db, "DROP TRIGGER sendry_outbox_notify_insert ON public.sendry_outbox")
        parts["outbox INSERT without the NOTIFY trigger"] = med(outbox_time)
        for idx in ("sendry_outbox_claim_idx", "sendry_outbox_user_idx", "sendry_outbox_email_idx",
                    "sendry_outbox_old_email_idx"):
            definition = self.scalar(db, f"SELECT pg_get_indexdef('public.{idx}'::regclass)")
            self.sql(db, f"DROP INDEX public.{idx}")
            parts[f"outbox INSERT without NOTIFY and without {idx}"] = med(outbox_time)
            self.sql(db, definition)
        return parts


def ratio(x, base):
    return f"{x / base:5.2f}x" if base else "   - "


def print_table(title, figures, unit, goal=None, enqueued=None):
    """figures: {db: (wall, cpu)}; ratios to `bare` when it is there."""
    base = figures.get("bare")
    print(f"\n{title}   [wall {unit} | database CPU {unit}]")
    for db, (wall, cpu) in figures.items():
        extra = ""
        if base is not None and db != "bare":
            extra = (f"  {ratio(wall, base[0])} bare (+{wall - base[0]:.3f}) | CPU {ratio(cpu, base[1])}"
                     f" (+{cpu - base[1]:.3f})")
            if goal:
                extra += f"  goal <= {goal}x: {'met' if wall / base[0] <= goal else 'MISSED'}"
        if enqueued is not None and db in enqueued:
            extra += f"  enqueued {enqueued[db]}"
        print(f"  {db:<9} {wall:9.3f} | {cpu:9.3f}{extra}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=os.environ.get("BENCH_BASELINE", "bf579a9"),
                    help="git revision or checkout whose sql/install.sql is `before` ('' to skip)")
    ap.add_argument("--fsync-off", action="store_true", help="the tests' settings (fsync off)")
    ap.add_argument("--runs", type=int, default=int(os.environ.get("BENCH_RUNS", "3")))
    ap.add_argument("--users", type=int, default=int(os.environ.get("BENCH_USERS", "100000")))
    ap.add_argument("--transactions", type=int, default=int(os.environ.get("BENCH_TRANSACTIONS", "300")),
                    help="transactions per variant and round")
    ap.add_argument("--no-breakdown", action="store_true")
    args = ap.parse_args()
    if os.path.isdir(args.baseline or "/nonexistent"):
        args.baseline = os.path.abspath(args.baseline)
        if not os.path.exists(os.path.join(args.baseline, "sql", "install.sql")):
            print(f"bench_triggers: no sql/install.sql in {args.baseline}: no `before` figures", file=sys.stderr)
            args.baseline = ""
    elif args.baseline and subprocess.run(["git", "-C", ROOT, "cat-file", "-e", f"{args.baseline}:sql/install.sql"],
                                          stderr=subprocess.DEVNULL).returncode:
        print(f"bench_triggers: no sql/install.sql at {args.baseline}: no `before` figures", file=sys.stderr)
        args.baseline = ""

    with pgharness.Cluster(supabase=True, durable=not args.fsync_off) as pg:
        b = Bench(pg, args)
        b.setup()
        settings = b.scalar("postgres", "SELECT string_agg(name || '=' || setting, ', ' ORDER BY name)"
                                        " FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit',"
                                        " 'full_page_writes', 'shared_buffers', 'work_mem', 'max_wal_size')")
        print(f"bench_triggers: {settings}; medians of {args.runs} rounds; before = {args.baseline or '(none)'}"
              f"; load average {os.getloadavg()[0]:.2f}")
        auth = [db for db in b.dbs if db in ("bare", "before", "after", "watched")]
        print_table(f"bulk INSERT of {args.users} users, one statement", b.bulk_insert(auth), "s", 1.6)
        b.fill_the_rest()
        print_table("one sign-up transaction: INSERT users, INSERT identities, role UPDATE, COMMIT",
                    b.transactions(auth[:3], "supabase_auth_admin", b.signup), "ms", 1.1)
        updaters = [db for db in b.dbs if db != "watched"]
        for title, one, goal in (("sign-in / token refresh UPDATE, its own transaction", b.signin, 1.05),
                                 ("name change through raw_user_meta_data, its own transaction", b.rename, None)):
            res, enq = b.enqueued_by(updaters, lambda o=one: b.transactions(updaters, "supabase_auth_admin", o))
            print_table(title, res, "ms", goal, enq)
        n = min(10000, args.users)
        res, enq = b.enqueued_by(updaters, lambda: b.bulk_update(updaters, n))
        print_table(f"bulk UPDATE of raw_app_meta_data for {n} users (no contact changes)", res, "s", None, enq)
        for title, one in (("profile UPDATE that changes the contact (plan)", b.profile_change),
                           ("profile UPDATE that changes no contact (last_seen_at)", b.profile_same)):
            res, enq = b.enqueued_by(["bare", "watched"], lambda o=one: b.transactions(["bare", "watched"],
                                                                                      "postgres", o))
            print_table(f"{title}, its own transaction", res, "ms", None, enq)
        for title, figures in b.backfill_and_repair().items():
            print_table(title, figures, "s")
        if not args.no_breakdown:
            parts = b.breakdown()
            bare = parts["INSERT, no trigger (bare)"]
            print(f"\nwhere the bulk INSERT's time goes ({args.users} rows)   [wall s | database CPU s]")
            for k, (wall, cpu) in parts.items():
                print(f"  {k:<66} {wall:7.3f} ({ratio(wall, bare[0])}) | {cpu:7.3f} ({ratio(cpu, bare[1])})")
        for c in b.sessions.values():
            c.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
