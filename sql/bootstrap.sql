-- sendry-sync's migration machinery (the head of the generated sql/install.sql; the binary
-- runs the same text before its steps). One statement: it takes no lock on any table of
-- the project's (auth.users, the outbox) and, when the machinery is already in place and
-- unchanged, writes nothing.
--
--   public.sendry_migrations              one row per step applied (contract: see DESIGN.md)
--   public.sendry_migrate_step(...)       applies one step, once, under the lock discipline
--   public.sendry_migrate_trigger(...)    creates or replaces a trigger only when its
--                                         definition changed
--   public.sendry_migrate_lock_holders()  who holds a lock on auth.users or a sendry_* table
--   public.sendry_migrate_lockdown()      RLS on, no privilege for PUBLIC/anon/authenticated
DO $bootstrap$
DECLARE
    v_deadline timestamptz := pg_catalog.clock_timestamp() + interval '5 minutes';
    v_timeout  text;
    v_sigs     text[] := ARRAY['public.sendry_migrate_lock_holders()', 'public.sendry_migrate_missing(text)',
                               'public.sendry_migrate_fingerprint(text)',
                               'public.sendry_migrate_lockdown()',
                               'public.sendry_migrate_trigger(regclass, name, text)',
                               'public.sendry_migrate_step(text, text, text, text[])'];
    v_defs     text[] := ARRAY[
-- ---- sendry_migrate_lock_holders ---------------------------------------------------------
$def$
CREATE OR REPLACE FUNCTION public.sendry_migrate_lock_holders()
RETURNS text
LANGUAGE sql
STABLE
SET search_path = ''
AS $fn$
    -- Locks other sessions have held for over a second on auth.users and sendry_* tables
    -- (whoever holds a lock that long is what a migration step waits for), as one line.
    SELECT pg_catalog.string_agg(DISTINCT pg_catalog.format('%s %s by pid %s (%s, in a transaction for %s s)',
                                 l.relation::pg_catalog.regclass, l.mode, l.pid,
                                 COALESCE(NULLIF(a.application_name, ''), a.usename::pg_catalog.text, '?'),
                                 pg_catalog.round(EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - a.xact_start))),
                                 '; ')
      FROM pg_catalog.pg_locks l
      JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
      JOIN pg_catalog.pg_class c ON c.oid = l.relation
     WHERE l.locktype = 'relation' AND l.granted AND l.pid <> pg_catalog.pg_backend_pid()
       AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                          WHERE d.datname = pg_catalog.current_database())
       AND (l.relation = pg_catalog.to_regclass('auth.users')
            OR (c.relnamespace = 'public'::pg_catalog.regnamespace AND c.relname LIKE 'sendry\_%'))
       AND a.xact_start < pg_catalog.clock_timestamp() - interval '1 second'
$fn$
$def$,
-- ---- sendry_migrate_missing --------------------------------------------------------------
$def$
CREATE OR REPLACE FUNCTION public.sendry_migrate_missing(p_sql text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = ''
AS $fn$
    -- The first sendry_* object a step's text creates that is not there (a function, a
    -- table, view or index, a column or a constraint it adds to one of our tables (a table
    -- dropped and made again by an earlier step), a trigger made by sendry_migrate_trigger,
    -- or one disabled), or
    -- NULL: a repeatable step whose objects were dropped by hand is applied again, so that
    -- `sendry-sync migrate` repairs what doctor finds missing. Catalog reads only: no lock.
    SELECT COALESCE(
        (SELECT 'function public.' || m[1]
           FROM pg_catalog.regexp_matches(p_sql, 'CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+public\.(sendry_\w+)\s*\(', 'g') m
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_proc p
                             WHERE p.pronamespace = 'public'::pg_catalog.regnamespace AND p.proname = m[1])
          LIMIT 1),
        (SELECT 'public.' || m[1]
           FROM pg_catalog.regexp_matches(p_sql,
                    'CREATE\s+(?:OR\s+REPLACE\s+VIEW|VIEW|TABLE\s+IF\s+NOT\s+EXISTS|INDEX\s+IF\s+NOT\s+EXISTS)\s+(?:public\.)?(sendry_\w+)', 'g') m
          WHERE pg_catalog.to_regclass('public.' || m[1]) IS NULL
          LIMIT 1),
        (SELECT 'column public.' || m[1] || '.' || m[2]
           FROM pg_catalog.regexp_matches(p_sql,
                    'ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?public\.(sendry_\w+)\s+ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)', 'g') m
          WHERE pg_catalog.to_regclass('public.' || m[1]) IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                             WHERE a.attrelid = pg_catalog.to_regclass('public.' || m[1])
                               AND a.attname = m[2] AND NOT a.attisdropped)
          LIMIT 1),
        (SELECT 'constraint ' || m[2] || ' on public.' || m[1]
           FROM pg_catalog.regexp_matches(p_sql,
                    'ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?public\.(sendry_\w+)\s[^;]*?ADD\s+CONSTRAINT\s+(sendry_\w+)', 'g') m
          WHERE pg_catalog.to_regclass('public.' || m[1]) IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k
                             WHERE k.conrelid = pg_catalog.to_regclass('public.' || m[1]) AND k.conname = m[2])
          LIMIT 1),
        (SELECT 'trigger ' || m[2] || ' on ' || m[1] || ' (or it is disabled)'
           FROM pg_catalog.regexp_matches(p_sql, 'sendry_migrate_trigger\(\s*''([^'']+)''\s*,\s*''(\w+)''', 'g') m
          WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t
                             WHERE t.tgrelid = pg_catalog.to_regclass(m[1]) AND t.tgname = m[2]
                               AND t.tgenabled = 'O')
          LIMIT 1))
$fn$
$def$,
-- ---- sendry_migrate_fingerprint ----------------------------------------------------------
$def$
CREATE OR REPLACE FUNCTION public.sendry_migrate_fingerprint(p_sql text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = ''
AS $fn$
    -- md5 of the definitions of the sendry_* functions a step's text creates, as they are
    -- now (pg_proc only: no lock): recorded when the step is applied, so that one
    -- replaced by hand since is made again by `sendry-sync migrate`.
    SELECT pg_catalog.md5(COALESCE(pg_catalog.string_agg(
               p.oid::pg_catalog.regprocedure::pg_catalog.text || ' ' || p.prosrc || ' '
               || p.provolatile::pg_catalog.text || p.prosecdef::pg_catalog.text || COALESCE(p.proconfig::pg_catalog.text, ''),
               ' ' ORDER BY p.oid::pg_catalog.regprocedure::pg_catalog.text), ''))
      FROM pg_catalog.pg_proc p
     WHERE p.pronamespace = 'public'::pg_catalog.regnamespace
       AND p.proname IN (SELECT m[1] FROM pg_catalog.regexp_matches(p_sql,
                             'CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+public\.(sendry_\w+)\s*\(', 'g') m)
$fn$
$def$,
-- ---- sendry_migrate_lockdown -------------------------------------------------------------
$def$
CREATE OR REPLACE FUNCTION public.sendry_migrate_lockdown()
RETURNS void
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
-- Supabase serves schema public over HTTP to anon and authenticated, and by default grants
-- them everything postgres creates there (functions are executable by PUBLIC by default,
-- callable as /rest/v1/rpc/<name>). None of it is theirs: every sendry_* table has RLS on,
-- and no privilege on any sendry_* object is left to PUBLIC, anon or authenticated. Only
-- what is not so already is changed (ENABLE ROW LEVEL SECURITY takes an ACCESS EXCLUSIVE
-- lock: never on a table that has it on).
DECLARE
    obj   record;
    v_who text;
    v_roles oid[] := ARRAY(SELECT r.oid FROM pg_catalog.pg_roles r
                            WHERE r.rolname IN ('anon', 'authenticated'));
BEGIN
    FOR obj IN
        SELECT c.oid::pg_catalog.regclass::text AS name, c.relkind, c.relrowsecurity,
               EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(c.relacl,
                           pg_catalog.acldefault((CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END)::pg_catalog."char", c.relowner))) x
                        WHERE x.grantee = 0 OR x.grantee = ANY (v_roles)) AS exposed
          FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'public'::pg_catalog.regnamespace AND c.relname LIKE 'sendry\_%'
           AND c.relkind IN ('r', 'v', 'S')
    LOOP
        IF obj.relkind = 'r' AND NOT obj.relrowsecurity THEN
            EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', obj.name);
        END IF;
        IF obj.exposed THEN
            FOREACH v_who IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
                CONTINUE WHEN v_who <> 'PUBLIC' AND pg_catalog.to_regrole(v_who) IS NULL;
                EXECUTE pg_catalog.format('REVOKE ALL ON %s %s FROM %s',
                                          CASE obj.relkind WHEN 'S' THEN 'SEQUENCE' ELSE 'TABLE' END, obj.name,
                                          CASE v_who WHEN 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(v_who) END);
            END LOOP;
        END IF;
    END LOOP;
    FOR obj IN
        SELECT p.oid::pg_catalog.regprocedure::text AS name
          FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'public'::pg_catalog.regnamespace AND p.proname LIKE 'sendry\_%'
           AND EXISTS (SELECT 1 FROM pg_catalog.aclexplode(COALESCE(p.proacl,
                           pg_catalog.acldefault('f'::pg_catalog."char", p.proowner))) x
                        WHERE x.grantee = 0 OR x.grantee = ANY (v_roles))
    LOOP
        FOREACH v_who IN ARRAY ARRAY['PUBLIC', 'anon', 'authenticated'] LOOP
            CONTINUE WHEN v_who <> 'PUBLIC' AND pg_catalog.to_regrole(v_who) IS NULL;
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM %s', obj.name,
                                      CASE v_who WHEN 'PUBLIC' THEN 'PUBLIC' ELSE pg_catalog.quote_ident(v_who) END);
        END LOOP;
    END LOOP;
END
$fn$
$def$,
-- ---- sendry_migrate_trigger --------------------------------------------------------------
$def$
CREATE OR REPLACE FUNCTION public.sendry_migrate_trigger(p_table regclass, p_name name, p_definition text)
RETURNS boolean
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
-- Creates or replaces trigger p_name on p_table with p_definition (a CREATE OR REPLACE
-- TRIGGER statement) only when the definition changed: public.sendry_migrate_triggers
-- keeps the md5 of the definition that made each trigger, and the trigger's oid (a
-- trigger dropped and made again by hand is made again, and so is one disabled). Checking takes no lock (catalog
-- reads only; not even pg_get_triggerdef, which opens the table to print a WHEN clause;
-- and a comment on the trigger would need to own auth.users); replacing takes SHARE ROW
-- EXCLUSIVE on p_table, under the step's lock_timeout. Returns whether it replaced it.
DECLARE
    v_sum  text := pg_catalog.md5(p_definition);
    v_oid  oid;
BEGIN
    SELECT t.oid INTO v_oid FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = p_table AND t.tgname = p_name AND NOT t.tgisinternal AND t.tgenabled = 'O';
    IF v_oid IS NOT NULL AND EXISTS (SELECT 1 FROM public.sendry_migrate_triggers m
                                      WHERE m.table_name = p_table::text AND m.trigger_name = p_name
                                        AND m.trigger_oid = v_oid AND m.checksum = v_sum) THEN
        RETURN false;
    END IF;
    EXECUTE p_definition;
    SELECT t.oid INTO v_oid FROM pg_catalog.pg_trigger t
     WHERE t.tgrelid = p_table AND t.tgname = p_name AND NOT t.tgisinternal;
    INSERT INTO public.sendry_migrate_triggers (table_name, trigger_name, trigger_oid, checksum)
    VALUES (p_table::text, p_name, v_oid, v_sum)
    ON CONFLICT (table_name, trigger_name) DO UPDATE
       SET trigger_oid = EXCLUDED.trigger_oid, checksum = EXCLUDED.checksum,
           replaced_at = pg_catalog.clock_timestamp();
    RETURN true;
END
$fn$
$def$,
-- ---- sendry_migrate_step -----------------------------------------------------------------
$def$
CREATE OR REPLACE FUNCTION public.sendry_migrate_step(p_kind text, p_name text, p_sql text,
                                                      p_options text[] DEFAULT '{}')
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $fn$
-- Applies one step of sql/migrations (p_kind 'versioned': once, ever) or sql/functions
-- ('repeatable': again whenever its text changed), in a subtransaction:
--  * under an advisory lock, so two migrators never race (the second waits, then finds
--    the step applied);
--  * with lock_timeout sendry.migrate_lock_timeout (default 100ms): a step that cannot get
--    a lock at once gives up within that time instead of queueing the sign-ups behind
--    it, is rolled back, and retried after a sleep (full jitter, 50 ms doubling up to 2 s)
--    until sendry.migrate_deadline (default 60s) has passed; then one error naming the
--    step and who holds locks, with nothing of the step applied.
-- p_options: 'requires auth.users' (skipped, and not recorded, where there is none);
-- 'baseline' (recorded without being run where the previous release, schema version 2
-- or later, is installed: its tables are there); 'idempotent' (a versioned step safe to
-- run again: it is, when an object it creates is missing). A repeatable step is applied
-- again when an object it creates is missing (sendry_migrate_missing). Returns what it did: 'applied',
-- 'recorded', 'unchanged', or 'skipped: <why>'.
DECLARE
    v_sum      text := pg_catalog.md5(p_sql);
    v_version  integer;
    v_have     public.sendry_migrations%ROWTYPE;
    v_deadline timestamptz;
    v_timeout  text := COALESCE(NULLIF(pg_catalog.current_setting('sendry.migrate_lock_timeout', true), ''), '100ms');
    v_start    timestamptz := pg_catalog.clock_timestamp();
    v_attempt  integer := 0;
    v_sleep    double precision;
    v_err      text;
    v_holders  text;
    v_missing  text;
    v_messages text := pg_catalog.current_setting('client_min_messages');
BEGIN
    IF p_kind NOT IN ('versioned', 'repeatable') THEN
        RAISE EXCEPTION 'sendry-sync: unknown kind of step %', p_kind;
    END IF;
    v_deadline := v_start + COALESCE(NULLIF(pg_catalog.current_setting('sendry.migrate_deadline', true), ''),
                                     '60s')::interval;
    IF p_kind = 'versioned' THEN
        v_version := pg_catalog.substring(p_name, '^migrations/([0-9]+)_')::integer;
        IF v_version IS NULL THEN
            RAISE EXCEPTION 'sendry-sync: versioned step % is not named migrations/NNNN_name.sql', p_name;
        END IF;
    END IF;

    WHILE NOT pg_catalog.pg_try_advisory_xact_lock(1397050948, 1) LOOP
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'sendry-sync: % not applied: another sendry-sync migration has been running for longer than %',
                p_name, v_deadline - v_start USING ERRCODE = 'lock_not_available';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.02);
    END LOOP;

    SELECT * INTO v_have FROM public.sendry_migrations m WHERE m.name = p_name;
    IF FOUND AND (p_kind = 'versioned' OR v_have.checksum = v_sum) THEN
        IF p_kind = 'repeatable' OR 'idempotent' = ANY (p_options) THEN
            v_missing := public.sendry_migrate_missing(p_sql);
        END IF;
        IF v_missing IS NULL AND p_kind = 'repeatable'
           AND v_have.fingerprint IS DISTINCT FROM public.sendry_migrate_fingerprint(p_sql) THEN
            v_missing := 'a function it creates, replaced by hand since,';
        END IF;
        IF v_missing IS NULL THEN
            RETURN 'unchanged';
        END IF;
    END IF;
    IF 'requires auth.users' = ANY (p_options) AND pg_catalog.to_regclass('auth.users') IS NULL THEN
        RETURN 'skipped: no auth.users';
    END IF;
    IF 'baseline' = ANY (p_options) AND v_have.name IS NULL
       AND pg_catalog.to_regclass('public.sendry_outbox') IS NOT NULL
       AND pg_catalog.to_regprocedure('public.sendry_schema_version()') IS NOT NULL
       AND public.sendry_migrate_missing(p_sql) IS NULL THEN
        IF COALESCE(pg_catalog.substring(public.sendry_schema_version(), '^[0-9]+$')::integer, 0)
           >= v_version THEN
            INSERT INTO public.sendry_migrations (name, kind, version, checksum, how)
            VALUES (p_name, p_kind, v_version, v_sum, 'recorded');
            IF pg_catalog.current_setting('sendry.migrate_quiet', true) IS DISTINCT FROM 'on' THEN
                RAISE NOTICE 'sendry-sync: % recorded as applied (schema version % was installed)',
                    p_name, public.sendry_schema_version();
            END IF;
            RETURN 'recorded';
        END IF;
    END IF;

    PERFORM pg_catalog.set_config('lock_timeout', v_timeout, true);
    LOOP
        v_attempt := v_attempt + 1;
        BEGIN
            EXECUTE p_sql;
            -- RLS and privileges of what the step created (under the same lock_timeout).
            PERFORM public.sendry_migrate_lockdown();
            EXIT;
        EXCEPTION WHEN lock_not_available OR deadlock_detected THEN
            GET STACKED DIAGNOSTICS v_err = MESSAGE_TEXT;
        END;
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            v_holders := public.sendry_migrate_lock_holders();
            RAISE EXCEPTION 'sendry-sync: % not applied (nothing of it changed): could not take its locks within % (% attempts with lock_timeout %, last: %)%',
                p_name, v_deadline - v_start, v_attempt, v_timeout, v_err,
                COALESCE('; held: ' || v_holders, '')
                USING ERRCODE = 'lock_not_available';
        END IF;
        v_sleep := pg_catalog.random() * LEAST(2.0, 0.05 * 2 ^ LEAST(v_attempt - 1, 10));
        PERFORM pg_catalog.pg_sleep(LEAST(v_sleep, GREATEST(0, EXTRACT(EPOCH FROM v_deadline - pg_catalog.clock_timestamp()))));
    END LOOP;

    -- What the step set locally (client_min_messages...) ends with it.
    PERFORM pg_catalog.set_config('client_min_messages', v_messages, true);
    INSERT INTO public.sendry_migrations AS m (name, kind, version, checksum, fingerprint, how, attempts, duration)
    VALUES (p_name, p_kind, v_version, v_sum,
            CASE p_kind WHEN 'repeatable' THEN public.sendry_migrate_fingerprint(p_sql) END,
            'ran', v_attempt, pg_catalog.clock_timestamp() - v_start)
    ON CONFLICT (name) DO UPDATE
       SET checksum = EXCLUDED.checksum, fingerprint = EXCLUDED.fingerprint, how = EXCLUDED.how,
           attempts = EXCLUDED.attempts,
           duration = EXCLUDED.duration, applied_at = EXCLUDED.applied_at;
    IF pg_catalog.current_setting('sendry.migrate_quiet', true) IS DISTINCT FROM 'on' THEN
        RAISE NOTICE 'sendry-sync: % applied (% ms%)%', p_name,
            pg_catalog.round(EXTRACT(EPOCH FROM pg_catalog.clock_timestamp() - v_start) * 1000),
            CASE WHEN v_attempt > 1 THEN pg_catalog.format(', %s attempts', v_attempt) ELSE '' END,
            COALESCE(' again: ' || v_missing || ' was missing', '');
    END IF;
    RETURN 'applied';
END
$fn$
$def$
    ];
BEGIN
    -- Two migrators at once: the second waits here (never on a table).
    WHILE NOT pg_catalog.pg_try_advisory_xact_lock(1397050948, 1) LOOP
        IF pg_catalog.clock_timestamp() >= v_deadline THEN
            RAISE EXCEPTION 'sendry-sync: another sendry-sync migration has been running for 5 minutes';
        END IF;
        PERFORM pg_catalog.pg_sleep(0.02);
    END LOOP;
    IF pg_catalog.to_regclass('public.sendry_migrations') IS NULL THEN
        -- One row per step applied: name (its file under sql/), kind, version (the
        -- number of a versioned step), checksum (md5 of its text), fingerprint (of the
        -- functions a repeatable step made, sendry_migrate_fingerprint), how ('ran', or
        -- 'recorded': the baseline of a database the previous release installed),
        -- when, how many attempts (lock timeouts retried) and how long it took.
        CREATE TABLE public.sendry_migrations (
            name       text        PRIMARY KEY,
            kind       text        NOT NULL,
            version    integer     UNIQUE,
            checksum   text        NOT NULL,
            fingerprint text,
            how        text        NOT NULL DEFAULT 'ran',
            attempts   integer     NOT NULL DEFAULT 1,
            duration   interval,
            applied_at timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
            CONSTRAINT sendry_migrations_kind_check CHECK (kind IN ('versioned', 'repeatable')),
            CONSTRAINT sendry_migrations_version_check CHECK ((kind = 'versioned') = (version IS NOT NULL)),
            CONSTRAINT sendry_migrations_how_check CHECK (how IN ('ran', 'recorded'))
        );
        COMMENT ON TABLE public.sendry_migrations IS
            'sendry-sync: the steps of sql/migrations and sql/functions applied here (sendry-sync migrate --status).';
    END IF;
    IF pg_catalog.to_regclass('public.sendry_migrate_triggers') IS NULL THEN
        -- The definition (md5) each trigger sendry-sync made was made from (sendry_migrate_trigger).
        CREATE TABLE public.sendry_migrate_triggers (
            table_name   text        NOT NULL,
            trigger_name name        NOT NULL,
            trigger_oid  oid         NOT NULL,
            checksum     text        NOT NULL,
            replaced_at  timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
            PRIMARY KEY (table_name, trigger_name)
        );
    END IF;
    -- Each function only when its text changed (its comment keeps the md5 of the text).
    FOR i IN 1 .. pg_catalog.cardinality(v_defs) LOOP
        IF pg_catalog.obj_description(pg_catalog.to_regprocedure(v_sigs[i]), 'pg_proc')
           IS DISTINCT FROM 'sendry-sync ' || pg_catalog.md5(v_defs[i]) THEN
            EXECUTE v_defs[i];
            EXECUTE pg_catalog.format('COMMENT ON FUNCTION %s IS %L', v_sigs[i],
                                      'sendry-sync ' || pg_catalog.md5(v_defs[i]));
        END IF;
    END LOOP;
    -- A privilege granted back by hand, RLS turned off by hand: put right, but never by
    -- queueing behind another session (ENABLE ROW LEVEL SECURITY takes ACCESS EXCLUSIVE).
    v_timeout := pg_catalog.current_setting('lock_timeout');
    BEGIN
        PERFORM pg_catalog.set_config('lock_timeout', '100ms', true);
        PERFORM public.sendry_migrate_lockdown();
    EXCEPTION WHEN lock_not_available THEN
        RAISE WARNING 'sendry-sync: could not restore RLS or revoke privileges on a sendry_* table now (it is in use): run the migration again';
    END;
    PERFORM pg_catalog.set_config('lock_timeout', v_timeout, true);
END
$bootstrap$;
