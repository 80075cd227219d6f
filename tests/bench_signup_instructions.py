#!/usr/bin/python3
"""What one GoTrue sign-up transaction costs the database, in CPU instructions.

    /usr/bin/python3 tests/bench_signup_instructions.py [--baseline REV|CHECKOUT] [--signups N] [--no-pieces] [--signin]

The wall-clock and CPU-time figures of bench_triggers.py move by tens of percent on a
shared machine; an instruction count does not (within 0.1 % between runs). This counts
the instructions the server executes per sign-up with valgrind (callgrind) on a
single-user backend (`postgres --single`, no client round trips): GoTrue's INSERT into
auth.users, INSERT into auth.identities and role UPDATE, then COMMIT, N times in a
procedure, less the same run with none (start-up and the warm-up are the same in both).

Variants, each a database cloned from the same Supabase-shaped fixture:
    bare          no sendry-sync
    before        sql/install.sql of --baseline (a git revision or a checkout), when given
    after         this tree's sql/install.sql
    and `after` with one piece taken away, to show what each costs:
    -checks       the outbox's CHECK constraints dropped (PostgreSQL parses and plans
                  each again for every INSERT statement: nothing caches them)
    -notify       the outbox's statement-level NOTIFY trigger dropped
    -indexes      the outbox's partial indexes dropped (its primary key kept)
    -exception    the INSERT trigger without its EXCEPTION block (no subtransaction)
    empty         the INSERT trigger's function emptied (RETURN NULL): what calling a
                  statement-level trigger with a transition table costs
--signin: GoTrue's sign-in / token refresh instead (UPDATE of last_sign_in_at and
updated_at of one of three users, then COMMIT), bare, before and after only.
Figures only (make bench prints them; nothing passes or fails on them). About 4 minutes.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import psycopg  # noqa: E402

import pgharness  # noqa: E402

SIGNUPS = """
CREATE PROCEDURE public.bench_signups(p_n integer) LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    FOR i IN 1 .. p_n LOOP
        v_id := gen_random_uuid();
        INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, confirmation_token,
                                confirmation_sent_at, raw_app_meta_data, raw_user_meta_data, is_sso_user,
                                is_anonymous, created_at, updated_at)
        VALUES ('00000000-0000-0000-0000-000000000000', v_id, 'authenticated', '',
                'signup.' || v_id || '@example.com',
                '$2a$10$abcdefghijklmnopqrstuvabcdefghijklmnopqrstuvwxyz012', md5(random()::text), now(),
                '{"provider": "email", "providers": ["email"]}',
                '{"first_name": "Sign", "last_name": "Up", "email_verified": false, "phone_verified": false}',
                false, false, now(), now());
        INSERT INTO auth.identities (user_id, provider, identity_data) VALUES (v_id, 'email', '{}');
        UPDATE auth.users SET role = 'authenticated', updated_at = now() WHERE id = v_id;
        COMMIT;
    END LOOP;
END $$;
"""

SIGNINS = """
CREATE PROCEDURE public.bench_signups(p_n integer) LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM auth.users) THEN
        INSERT INTO auth.users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                                is_sso_user, is_anonymous, created_at, updated_at)
        SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
               'signin' || g || '@example.com', '{"provider": "email"}', '{}', false, false, now(), now()
          FROM generate_series(1, 3) g;
        COMMIT;
    END IF;
    FOR i IN 1 .. p_n LOOP
        SELECT id INTO v_id FROM auth.users ORDER BY id OFFSET (i % 3) LIMIT 1;
        UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = v_id;
        COMMIT;
    END LOOP;
END $$;
"""

NO_CHECKS = """
DO $$DECLARE c record; BEGIN
    FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = 'public.sendry_outbox'::regclass AND contype = 'c' LOOP
        EXECUTE format('ALTER TABLE public.sendry_outbox DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;
"""

NO_NOTIFY = "DROP TRIGGER sendry_outbox_notify_insert ON public.sendry_outbox;"

NO_INDEXES = """
DO $$DECLARE i record; BEGIN
    FOR i IN SELECT indexrelid::regclass AS name FROM pg_index
              WHERE indrelid = 'public.sendry_outbox'::regclass AND NOT indisprimary LOOP
        EXECUTE format('DROP INDEX %s', i.name);
    END LOOP;
END $$;
"""

EMPTY = """
CREATE OR REPLACE FUNCTION public.sendry_auth_users_inserted() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = '' AS $$ BEGIN RETURN NULL; END $$;
"""


def without_exception(conn):
    """The INSERT trigger's function as installed, without its EXCEPTION block."""
    src = conn.execute("SELECT pg_get_functiondef('public.sendry_auth_users_inserted()'::regprocedure)").fetchone()[0]
    head, sep, _ = src.partition("    EXCEPTION WHEN OTHERS THEN")
    if not sep:
        raise RuntimeError("no EXCEPTION block in sendry_auth_users_inserted")
    # The block's own BEGIN goes too: keep the statements, drop the handler and its END.
    body = head.replace("BEGIN\n    BEGIN\n", "BEGIN\n", 1)
    return body + "    RETURN NULL;\nEND\n$function$\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default="",
                    help="git revision or checkout whose sql/install.sql is `before`")
    ap.add_argument("--signups", type=int, default=int(os.environ.get("BENCH_SIGNUPS", "200")))
    ap.add_argument("--no-pieces", action="store_true", help="only bare, before and after")
    ap.add_argument("--signin", action="store_true", help="the sign-in UPDATE instead (implies --no-pieces)")
    args = ap.parse_args()
    if not shutil.which("valgrind"):
        print("bench_signup_instructions: valgrind not found: no figures", file=sys.stderr)
        return 0
    before = ""
    if args.baseline and os.path.isdir(args.baseline):          # a checkout (make bench BASELINE=...)
        before = os.path.join(args.baseline, "sql", "install.sql")
    elif args.baseline:                                          # a git revision
        r = subprocess.run(["git", "-C", pgharness.ROOT, "show", f"{args.baseline}:sql/install.sql"],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        if not r.returncode:
            tmp = tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False)
            tmp.write(r.stdout)
            tmp.close()
            before = tmp.name
    if args.baseline and not (before and os.path.exists(before)):
        print(f"bench_signup_instructions: no sql/install.sql at {args.baseline}: no `before` figures", file=sys.stderr)
        before = ""
    variants = [("bare", None, None)] + ([("before", before, None)] if before else []) + [("after", pgharness.INSTALL, None)]
    if not (args.no_pieces or args.signin):
        variants += [("-checks", pgharness.INSTALL, NO_CHECKS), ("-notify", pgharness.INSTALL, NO_NOTIFY),
                     ("-indexes", pgharness.INSTALL, NO_INDEXES), ("-exception", pgharness.INSTALL, without_exception),
                     ("empty", pgharness.INSTALL, EMPTY)]
    with pgharness.Cluster(supabase=True) as pg:
        for i, (name, install, extra) in enumerate(variants):
            db = f"v{i}"
            with psycopg.connect(pg.dsn_for(pg.SUPERUSER), autocommit=True) as c:
                c.execute(f"CREATE DATABASE {db} TEMPLATE postgres")
            if install:
                subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn_for("postgres", db),
                                "-f", install], check=True, capture_output=True)
            with psycopg.connect(pg.dsn_for(pg.SUPERUSER, db), autocommit=True) as c:
                if extra:
                    c.execute(extra(c) if callable(extra) else extra)
                c.execute(SIGNINS if args.signin else SIGNUPS)
                c.execute("CALL public.bench_signups(3)")     # the triggers work as installed
                c.execute("CHECKPOINT")
        pg.pg_stop()
        try:
            def instructions(db, n):
                argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
                        os.path.join(pg.bindir, "postgres"), "--single", "-D", pg.datadir,
                        "-c", "fsync=off", db]
                if os.geteuid() == 0:
                    argv = ["runuser", "-u", "postgres", "--"] + argv
                r = subprocess.run(argv, input=f"CALL public.bench_signups(30)\nCALL public.bench_signups({n})\n",
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                m = re.search(r"Collected : (\d+)", r.stderr)
                if r.returncode or not m or "ERROR" in r.stdout:
                    raise RuntimeError(f"postgres --single {db}: {r.stdout[-1000:]} {r.stderr[-1000:]}")
                return int(m.group(1))

            per = {name: (instructions(f"v{i}", args.signups) - instructions(f"v{i}", 0)) / args.signups
                   for i, (name, _, _) in enumerate(variants)}
        finally:
            pg.pg_start()
    bare = per["bare"]
    what = "sign-in / token refresh UPDATE" if args.signin else "sign-up"
    print(f"one GoTrue {what} transaction, instructions executed by the server (callgrind, postgres --single,"
          f" {args.signups} of them; before = {args.baseline or '(none)'})")
    for name, n in per.items():
        extra = "" if name == "bare" else f"  {n / bare:5.3f}x bare (+{(n - bare) / 1000:6.1f} k)"
        if name not in ("bare", "before", "after"):
            extra += f"  after less this piece: {(per['after'] - n) / 1000:6.1f} k"
        print(f"  {name:<10} {n / 1000:8.1f} k{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
