-- The settings the triggers need are compiled (sql/functions/settings.sql): a sign-up
-- reads no sendry_settings, sendry_settings_sync_on(), _on_delete() and _events() return
-- the table's values as constants, a change of the settings (UPDATE, DELETE, INSERT,
-- TRUNCATE) replaces them in its own transaction and the next sign-up follows it, a change
-- rolled back leaves them as they were. (Other sessions: tests/test_sql_lifecycle.py.)
-- Logged in as supabase_admin only to switch roles: GoTrue is supabase_auth_admin with
-- search_path auth, the operator is postgres. Everything is undone by the final ROLLBACK.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(29);
SET track_functions = 'all';

-- A GoTrue sign-up (INSERT with role '', then the role UPDATE), unconfirmed.
CREATE FUNCTION pg_temp.signup(p_id uuid, p_email text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                       is_sso_user, is_anonymous, created_at, updated_at)
    VALUES ('00000000-0000-0000-0000-000000000000', p_id, 'authenticated', '', p_email,
            '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
    UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = p_id;
END $$;
GRANT EXECUTE ON FUNCTION pg_temp.signup(uuid, text) TO supabase_auth_admin;
CREATE FUNCTION pg_temp.rows(p_id uuid) RETURNS TABLE (op text, name text) LANGUAGE sql AS
    $$ SELECT o.op, o.payload ->> 'name' FROM public.sendry_outbox o WHERE o.user_id = p_id ORDER BY o.id $$;
CREATE FUNCTION pg_temp.compiled() RETURNS TABLE (sync_on text, on_delete text, events text[]) LANGUAGE sql AS
    $$ SELECT public.sendry_settings_sync_on(), public.sendry_settings_on_delete(), public.sendry_settings_events() $$;

-- 1. The compiled functions: plain SQL (inlinable), the table's values, and no privilege
--    for PUBLIC, anon or authenticated; the trigger on the settings.
SELECT results_eq('SELECT * FROM pg_temp.compiled()', $$VALUES ('signup', 'delete_contact', '{}'::text[])$$,
                  'after an install the compiled settings are the defaults');
SELECT results_eq($$SELECT p.proname::text COLLATE "default", l.lanname::text COLLATE "default", p.prosecdef, p.proconfig IS NULL
                      FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
                     WHERE p.pronamespace = 'public'::regnamespace
                       AND p.proname IN ('sendry_settings_sync_on', 'sendry_settings_on_delete', 'sendry_settings_events')
                     ORDER BY 1$$,
                  $$VALUES ('sendry_settings_events', 'sql', false, true), ('sendry_settings_on_delete', 'sql', false, true),
                           ('sendry_settings_sync_on', 'sql', false, true)$$,
                  'the compiled settings are plain SQL functions (inlined into the triggers'' plans)');
SELECT is((SELECT count(*) FROM pg_proc p, aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) x
            WHERE p.pronamespace = 'public'::regnamespace AND p.proname LIKE 'sendry\_settings\_%'
              AND (x.grantee = 0 OR x.grantee IN ('anon'::regrole, 'authenticated'::regrole))),
          0::bigint, 'no privilege on them for PUBLIC, anon or authenticated');
SELECT trigger_is('public', 'sendry_settings', 'sendry_settings_compile', 'public', 'sendry_settings_changed',
                  'a change of the settings compiles them again');
SELECT ok((SELECT prosecdef FROM pg_proc WHERE oid = 'public.sendry_settings_changed()'::regprocedure),
          'the settings trigger is SECURITY DEFINER (the role changing the settings need not own the functions)');
SELECT ok((SELECT prosrc !~* 'from\s+public\.sendry_settings'
             FROM pg_proc WHERE oid = 'public.sendry_auth_users_inserted()'::regprocedure),
          'the INSERT trigger does not query sendry_settings');
SELECT is(public.sendry_settings_compile(), 0, 'compiling unchanged settings replaces nothing');
CREATE FUNCTION pg_temp.plan_of(p_sql text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r record; v text := '';
BEGIN
    FOR r IN EXECUTE 'EXPLAIN (VERBOSE, COSTS OFF) ' || p_sql LOOP v := v || r."QUERY PLAN" || E'\n'; END LOOP;
    RETURN v;
END $$;
SELECT matches(pg_temp.plan_of($$SELECT 1 FROM auth.users n WHERE public.sendry_user_is_synced(n, public.sendry_settings_sync_on())$$),
               '^((?!sendry_settings_sync_on)[\s\S])*$',
               'the planner inlines the compiled sync_on: the plan holds its value, not a call');

-- 2. A sign-up reads no sendry_settings (and no index of it).
:as_admin
SELECT pg_stat_get_xact_numscans('public.sendry_settings'::regclass) AS scans_before \gset
:as_gotrue
SELECT pg_temp.signup('00000000-0000-4000-8000-000000008701', 'settings.one@example.com');
:as_admin
SELECT is(pg_stat_get_xact_numscans('public.sendry_settings'::regclass) - :scans_before, 0::bigint,
          'a sign-up reads no sendry_settings');
SELECT results_eq($$SELECT * FROM pg_temp.rows('00000000-0000-4000-8000-000000008701')$$,
                  $$VALUES ('upsert', NULL::text)$$, 'sync_on signup, no events: one captured row');

-- 3. A change takes effect for the next sign-up: events, then sync_on.
:as_owner
UPDATE public.sendry_settings SET events = '{user.signed_up}', updated_at = now();
SELECT results_eq('SELECT * FROM pg_temp.compiled()', $$VALUES ('signup', 'delete_contact', '{user.signed_up}'::text[])$$,
                  'an UPDATE of events compiles it');
SELECT coalesce(pg_stat_get_xact_function_calls('public.sendry_outbox_notify_insert()'::regprocedure), 0) AS notify_before \gset
:as_gotrue
SELECT pg_temp.signup('00000000-0000-4000-8000-000000008702', 'settings.two@example.com');
:as_admin
SELECT results_eq($$SELECT * FROM pg_temp.rows('00000000-0000-4000-8000-000000008702')$$,
                  $$VALUES ('upsert', NULL::text), ('event', 'user.signed_up')$$,
                  'the next sign-up emits user.signed_up');
SELECT is(pg_stat_get_xact_function_calls('public.sendry_outbox_notify_insert()'::regprocedure) - :notify_before,
          1::bigint, 'its contact and event rows are written by ONE INSERT statement (the outbox''s CHECKs parsed once)');
:as_owner
UPDATE public.sendry_settings SET sync_on = 'confirmed', updated_at = now();
SELECT is(public.sendry_settings_sync_on(), 'confirmed', 'an UPDATE of sync_on compiles it');
:as_gotrue
SELECT pg_temp.signup('00000000-0000-4000-8000-000000008703', 'settings.three@example.com');
:as_admin
SELECT is_empty($$SELECT * FROM pg_temp.rows('00000000-0000-4000-8000-000000008703')$$,
                'under sync_on confirmed an unconfirmed sign-up enqueues nothing');
:as_gotrue
UPDATE users SET email_confirmed_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000008703';
:as_admin
SELECT results_eq($$SELECT * FROM pg_temp.rows('00000000-0000-4000-8000-000000008703')$$,
                  $$VALUES ('upsert', NULL::text), ('event', 'user.signed_up')$$,
                  'its confirmation syncs it, with user.signed_up (the UPDATE path follows the setting too)');
:as_owner
UPDATE public.sendry_settings SET on_delete = 'keep', updated_at = now();
SELECT is(public.sendry_settings_on_delete(), 'keep', 'an UPDATE of on_delete compiles it');
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000008703';
:as_admin
SELECT results_eq($$SELECT * FROM pg_temp.rows('00000000-0000-4000-8000-000000008703')$$,
                  $$VALUES ('upsert', NULL::text), ('event', 'user.signed_up')$$,
                  'on_delete keep: a hard delete enqueues no deletion (the DELETE path follows the setting)');
:as_owner
SELECT is(public.sendry_settings_compile(), 0, 'the trigger left nothing for a second compile to do');

-- 4. A change rolled back leaves the compiled settings as they were.
SAVEPOINT change;
UPDATE public.sendry_settings SET sync_on = 'signup', events = '{}', on_delete = 'delete_contact';
SELECT results_eq('SELECT * FROM pg_temp.compiled()', $$VALUES ('signup', 'delete_contact', '{}'::text[])$$,
                  'inside the change: compiled');
ROLLBACK TO SAVEPOINT change;
SELECT results_eq('SELECT * FROM pg_temp.compiled()', $$VALUES ('confirmed', 'keep', '{user.signed_up}'::text[])$$,
                  'after ROLLBACK the compiled settings are the ones before the change');
:as_gotrue
SELECT pg_temp.signup('00000000-0000-4000-8000-000000008704', 'settings.four@example.com');
:as_admin
SELECT is_empty($$SELECT * FROM pg_temp.rows('00000000-0000-4000-8000-000000008704')$$,
                'and the next sign-up follows them (confirmed: nothing for an unconfirmed user)');

-- 5. The row deleted: the defaults the triggers always assumed; inserted again: its values.
:as_owner
DELETE FROM public.sendry_settings;
SELECT results_eq('SELECT * FROM pg_temp.compiled()', $$VALUES ('signup', 'delete_contact', '{}'::text[])$$,
                  'no settings row: the defaults');
INSERT INTO public.sendry_settings (sync_on, on_delete, events) VALUES ('confirmed', 'remove_from_audience', '{user.deleted}');
SELECT results_eq('SELECT * FROM pg_temp.compiled()',
                  $$VALUES ('confirmed', 'remove_from_audience', '{user.deleted}'::text[])$$,
                  'a settings row inserted: its values');
TRUNCATE public.sendry_settings;
SELECT results_eq('SELECT * FROM pg_temp.compiled()', $$VALUES ('signup', 'delete_contact', '{}'::text[])$$,
                  'TRUNCATE: the defaults');
INSERT INTO public.sendry_settings DEFAULT VALUES;

-- 6. A compiled function dropped by hand is made again by the next change, without
--    privileges for PUBLIC.
DROP FUNCTION public.sendry_settings_on_delete();
UPDATE public.sendry_settings SET on_delete = 'keep';
SELECT is(public.sendry_settings_on_delete(), 'keep', 'a dropped compiled function is made again by a change');
SELECT is((SELECT count(*) FROM pg_proc p, aclexplode(COALESCE(p.proacl, acldefault('f', p.proowner))) x
            WHERE p.oid = 'public.sendry_settings_on_delete()'::regprocedure
              AND (x.grantee = 0 OR x.grantee IN ('anon'::regrole, 'authenticated'::regrole))),
          0::bigint, 'made again without privileges for PUBLIC, anon or authenticated');

-- 7. Values with quotes survive the compilation (the function's text is built with %L).
SELECT is(public.sendry_settings_events(), '{}'::text[], 'events compiled from the row inserted back');
SELECT is((SELECT prosrc FROM pg_proc WHERE oid = 'public.sendry_settings_sync_on()'::regprocedure),
          $$SELECT 'signup'::pg_catalog.text$$, 'the function''s text is the literal, quoted');

SELECT * FROM finish();
ROLLBACK;
