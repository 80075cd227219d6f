-- Watching the project's own tables: sendry_watch('public.profiles', 'id') makes a change
-- of a watched row (INSERT, UPDATE, DELETE) capture its user (one row, payload NULL); the
-- claim renders the contact and sends it when it changed (pg_temp.claim() plays the
-- worker, as if Sendry accepted every contact sent); sendry_unwatch stops it;
-- sendry_watched_tables lists them.
-- The same safety rules as the auth.users triggers: the app's own roles write the table
-- (here authenticated, under RLS, as PostgREST does), a failure never breaks the write.
-- Logged in as supabase_admin to switch roles. Everything is undone by the final ROLLBACK.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(36);

-- pg_temp.claim(): the worker's claim and completion (lib/claim.sql).
\ir lib/claim.sql

-- The project's table and mapping (the README's example), owned by postgres.
:as_owner
CREATE TABLE public.profiles (
    id         uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    plan       text NOT NULL DEFAULT 'trial',
    locale     text,
    last_seen_at timestamptz
);
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_profile ON public.profiles FOR ALL TO authenticated
    USING (id = current_setting('test.uid')::uuid) WITH CHECK (id = current_setting('test.uid')::uuid);
GRANT SELECT, INSERT, UPDATE, DELETE ON public.profiles TO authenticated;
CREATE TABLE public.notes (owner uuid, body text);
CREATE VIEW public.profile_view AS SELECT * FROM public.profiles;
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

-- 1. Watching: refused for what cannot work, then installed.
SELECT throws_ok($$SELECT public.sendry_watch('public.profiles', 'nope')$$, 'P0001',
                 'sendry-sync: public.profiles has no column nope', 'a missing user column is refused');
SELECT throws_ok($$SELECT public.sendry_watch('public.profiles', 'locale')$$, 'P0001',
                 'sendry-sync: column locale of public.profiles is text, not uuid (the auth.users id)',
                 'a user column that is not uuid is refused');
SELECT throws_ok($$SELECT public.sendry_watch('auth.users', 'id')$$, 'P0001',
                 'sendry-sync: auth.users needs no watching: its own triggers sync it', 'auth.users is refused');
SELECT throws_ok($$SELECT public.sendry_watch('public.sendry_outbox', 'user_id')$$, 'P0001',
                 'sendry-sync: public.sendry_outbox is one of sendry-sync''s own tables', 'an own table is refused');
SELECT throws_ok($$SELECT public.sendry_watch('public.profile_view', 'id')$$, 'P0001',
                 'sendry-sync: public.profile_view is not a table', 'a view is refused');
SELECT is(public.sendry_watch('public.profiles', 'id'), 'sendry-sync: watching public.profiles (user column id)',
          'sendry_watch(''public.profiles'', ''id'') says what it did');
SELECT is(public.sendry_watch('public.profiles'), 'sendry-sync: watching public.profiles (user column id)',
          'watching again replaces the triggers (the user column defaults to id)');
SELECT is(public.sendry_watch('public.notes', 'owner'), 'sendry-sync: watching public.notes (user column owner)',
          'a second table, with another user column');
SELECT results_eq($$SELECT table_name::text, user_column::text, enabled FROM public.sendry_watched_tables ORDER BY 1$$,
                  $$VALUES ('notes', 'owner', true), ('profiles', 'id', true)$$,
                  'sendry_watched_tables lists the watched tables and their user columns');
SELECT results_eq($$SELECT tgname::text COLLATE "default", tgtype::int, tgoldtable IS NOT NULL, tgnewtable IS NOT NULL
                      FROM pg_trigger WHERE tgrelid = 'public.profiles'::regclass AND NOT tgisinternal ORDER BY 1$$,
                  $$VALUES ('sendry_watch_delete', 8, true, false), ('sendry_watch_insert', 4, false, true),
                           ('sendry_watch_update', 16, true, true)$$,
                  'three statement-level triggers (AFTER INSERT, UPDATE, DELETE) with transition tables');
SELECT is_definer('public', 'sendry_watched_changed', ARRAY[]::name[],
                  'the trigger function is SECURITY DEFINER (the app''s roles write the table)');
SELECT isnt_definer('public', 'sendry_watch', ARRAY['regclass', 'name'],
                    'sendry_watch runs with the caller''s rights (TRIGGER on the table needed)');

-- 2. A sign-up, then its profile: the contact changes (plan, audiences).
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000811', 'authenticated', '',
        'pat@example.com', '{"provider": "email", "providers": ["email"]}', '{"first_name": "Pat"}',
        false, false, now(), now());
:as_admin
SELECT results_eq($$SELECT verdict, payload -> 'metadata' ->> 'plan', payload -> 'audiences' FROM pg_temp.claim()$$,
                  $$VALUES ('send', 'none', '["aud_customers"]'::jsonb)$$, 'the sign-up enqueues the contact as it is (no profile yet)');
SET LOCAL test.uid = '00000000-0000-4000-8000-000000000811';
SET ROLE authenticated;
INSERT INTO public.profiles (id, plan, locale) VALUES ('00000000-0000-4000-8000-000000000811', 'trial', 'fr');
:as_admin
SELECT results_eq($$SELECT user_id, op, class, status, email, payload FROM public.sendry_outbox ORDER BY id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000811'::uuid, 'upsert', 'live', 'pending', 'pat@example.com',
                            NULL::jsonb)$$,
                  'a profile INSERT by the user (authenticated, RLS) captures the user: one live upsert, payload NULL');
SELECT results_eq($$SELECT user_id, verdict, payload -> 'metadata', payload -> 'audiences', payload -> 'leave_audiences'
                      FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000811'::uuid, 'send',
                            '{"supabase_user_id": "00000000-0000-4000-8000-000000000811", "plan": "trial", "locale": "fr"}'::jsonb,
                            '["aud_trial"]'::jsonb, '["aud_customers"]'::jsonb)$$,
                  'the claim renders it: plan, locale, audiences, and the audience left');

-- 3. Updates: one that changes the contact, one that does not, one that sets what is there.
SET ROLE authenticated;
UPDATE public.profiles SET plan = 'pro' WHERE id = '00000000-0000-4000-8000-000000000811';
:as_admin
SELECT results_eq($$SELECT verdict, payload -> 'metadata' ->> 'plan', payload -> 'audiences', payload -> 'leave_audiences'
                      FROM pg_temp.claim()$$,
                  $$VALUES ('send', 'pro', '["aud_customers"]'::jsonb, '["aud_trial"]'::jsonb)$$,
                  'a profile change through the watched table sends one upsert (trial -> customers)');
SET ROLE authenticated;
UPDATE public.profiles SET last_seen_at = now() WHERE id = '00000000-0000-4000-8000-000000000811';
UPDATE public.profiles SET plan = 'pro' WHERE id = '00000000-0000-4000-8000-000000000811';
:as_admin
SELECT results_eq($$SELECT user_id, verdict FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000811'::uuid, 'same')$$,
                  'a profile change the contact does not show (last_seen_at), or to the same plan: the contact is the same at the claim');

-- 4. Several users in one statement; a watched table with several rows per user.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', ('00000000-0000-4000-8000-00000000082' || n)::uuid,
       'authenticated', 'authenticated', 'many' || n || '@example.com',
       '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()
FROM generate_series(1, 3) n;
:as_owner
INSERT INTO public.profiles (id, plan) SELECT ('00000000-0000-4000-8000-00000000082' || n)::uuid, 'trial'
FROM generate_series(1, 3) n;
DELETE FROM public.sendry_outbox;
UPDATE public.profiles SET plan = 'team' WHERE plan = 'trial';
:as_admin
SELECT results_eq($$SELECT user_id, verdict, payload -> 'metadata' ->> 'plan' FROM pg_temp.claim()$$,
                  $$SELECT ('00000000-0000-4000-8000-00000000082' || n)::uuid, 'send', 'team' FROM generate_series(1, 3) n$$,
                  'one UPDATE of three profiles enqueues three upserts, set-based');
:as_owner
INSERT INTO public.notes VALUES ('00000000-0000-4000-8000-000000000821', 'a'), ('00000000-0000-4000-8000-000000000821', 'b'),
                                (NULL, 'nobody''s');
:as_admin
SELECT results_eq($$SELECT user_id, verdict FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000821'::uuid, 'same')$$,
                  'rows of a watched table that change no contact: its user once (the contact the same), none for no user');

-- 5. DELETE of a profile row.
:as_owner
DELETE FROM public.profiles WHERE id = '00000000-0000-4000-8000-000000000822';
:as_admin
SELECT is_empty($$SELECT 1 FROM public.sendry_outbox WHERE op <> 'upsert'$$, 'deleting a profile never enqueues a delete');
SELECT results_eq($$SELECT user_id, verdict, payload -> 'metadata' ->> 'plan', payload -> 'audiences' FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000822'::uuid, 'send', 'none', '["aud_customers"]'::jsonb)$$,
                  'deleting a profile re-renders the contact without it: one upsert');

-- 6. Users sendry-sync does not sync are not enqueued through a watched table either.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000831', 'authenticated',
        'authenticated', NULL, '{}', '{}', false, true, now(), now());
UPDATE users SET deleted_at = now(), email = md5(email) WHERE id = '00000000-0000-4000-8000-000000000823';
:as_owner
DELETE FROM public.sendry_outbox;
INSERT INTO public.profiles (id, plan) VALUES ('00000000-0000-4000-8000-000000000831', 'pro');
UPDATE public.profiles SET plan = 'gold' WHERE id = '00000000-0000-4000-8000-000000000823';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'the profile of an anonymous or a soft-deleted user enqueues nothing');

-- 7. Confirmed-only mode: an unconfirmed user's profile change enqueues nothing.
:as_owner
UPDATE public.sendry_settings SET sync_on = 'confirmed';
UPDATE public.profiles SET plan = 'gold' WHERE id = '00000000-0000-4000-8000-000000000811';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'confirmed-only: an unconfirmed user''s profile change enqueues nothing');
:as_owner
UPDATE public.sendry_settings SET sync_on = 'signup';

-- 8. A failure never breaks the write: WARNING, recorded (here a CHECK of the test's on
--    the outbox makes the enqueue fail).
:as_owner
ALTER TABLE public.sendry_outbox ADD CONSTRAINT test_no_upserts CHECK (op <> 'upsert') NOT VALID;
:as_admin
DELETE FROM public.sendry_enqueue_errors;
SET LOCAL client_min_messages = error;
SET ROLE authenticated;
UPDATE public.profiles SET plan = 'not a number' WHERE id = '00000000-0000-4000-8000-000000000811';
:as_admin
SET LOCAL client_min_messages = notice;
SELECT is((SELECT plan FROM public.profiles WHERE id = '00000000-0000-4000-8000-000000000811'), 'not a number',
          'a profile UPDATE succeeds although enqueueing its user fails');
SELECT results_eq($$SELECT trigger_name, table_name, sqlstate, user_ids FROM public.sendry_enqueue_errors$$,
                  $$VALUES ('sendry_watch_update', 'public.profiles', '23514', ARRAY['00000000-0000-4000-8000-000000000811'::uuid])$$,
                  'and the failure is recorded: trigger, table, SQLSTATE, the user');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'nothing was enqueued');
:as_owner
ALTER TABLE public.sendry_outbox DROP CONSTRAINT test_no_upserts;
:as_admin

-- 9. Unwatching.
:as_owner
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email, NULL::text AS first_name, NULL::text AS last_name,
       jsonb_build_object('plan', p.plan) AS metadata, NULL::text[] AS audiences
FROM auth.users u LEFT JOIN public.profiles p ON p.id = u.id;
SELECT is(public.sendry_unwatch('public.profiles'), 'sendry-sync: no longer watching public.profiles',
          'sendry_unwatch(''public.profiles'') says what it did');
SELECT is(public.sendry_unwatch('public.profiles'), 'sendry-sync: public.profiles was not watched',
          'unwatching again says it was not watched');
UPDATE public.profiles SET plan = 'unwatched' WHERE id = '00000000-0000-4000-8000-000000000811';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'after sendry_unwatch a profile change enqueues nothing');
SELECT is_empty($$SELECT 1 FROM pg_trigger WHERE tgrelid = 'public.profiles'::regclass AND NOT tgisinternal$$,
                'its triggers are gone');
SELECT results_eq($$SELECT table_name::text FROM public.sendry_watched_tables$$, $$VALUES ('notes')$$,
                  'sendry_watched_tables lists the one still watched');

-- 10. None of it is reachable by the app's roles.
SET ROLE authenticated;
SELECT throws_ok($$SELECT public.sendry_watch('public.profiles', 'id')$$, '42501', NULL,
                 'authenticated may not call sendry_watch');
SELECT throws_ok($$SELECT public.sendry_unwatch('public.notes')$$, '42501', NULL,
                 'authenticated may not call sendry_unwatch');
SELECT throws_ok('SELECT * FROM public.sendry_watched_tables', '42501', NULL,
                 'authenticated may not read sendry_watched_tables');
:as_admin

-- 11. One sign-up with a profile created by the project's own trigger on auth.users (the
--     usual handle_new_user): one outbox row, the profile in it.
:as_owner
SELECT is(public.sendry_watch('public.profiles', 'id'), 'sendry-sync: watching public.profiles (user column id)',
          'watching public.profiles again');
CREATE FUNCTION public.handle_new_user() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $$
BEGIN
    INSERT INTO public.profiles (id, plan) VALUES (NEW.id, 'starter');
    RETURN NEW;
END $$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();
:as_admin
DELETE FROM public.sendry_outbox;
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000841', 'authenticated', '',
        'handled@example.com', '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
UPDATE users SET role = 'authenticated' WHERE id = '00000000-0000-4000-8000-000000000841';
:as_admin
SELECT results_eq($$SELECT user_id, verdict, payload -> 'metadata' ->> 'plan' FROM pg_temp.claim()$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000841'::uuid, 'send', 'starter')$$,
                  'a sign-up whose profile a trigger creates: its captured rows are one contact at the claim, with the profile');

SELECT * FROM finish();
ROLLBACK;
