-- The built-in events (sendry_settings.events) through GoTrue's own statements: each
-- transition emits exactly one event row of the right name, to the right address, after
-- the user's contact row (the user.deleted row before the deletion); sign-in, token
-- refresh and GoTrue's role follow-up emit none; with the default (no event named)
-- nothing at all. Logged in as supabase_admin only to switch roles: GoTrue is
-- supabase_auth_admin with search_path auth, the operator is postgres. Everything is
-- undone by the final ROLLBACK.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(41);

-- The outbox as (user, op, email, event name), in id order: what the worker sends in turn.
CREATE FUNCTION pg_temp.rows() RETURNS TABLE (user_id uuid, op text, email text, name text)
    LANGUAGE sql AS $$ SELECT o.user_id, o.op, o.email, o.payload ->> 'name' FROM public.sendry_outbox o ORDER BY o.id $$;
CREATE FUNCTION pg_temp.calls(fn regprocedure) RETURNS bigint LANGUAGE sql AS
    $$ SELECT coalesce(pg_stat_get_xact_function_calls(fn), 0) $$;
SET track_functions = 'all';

-- 1. The settings column: none by default, only the five names.
:as_owner
SELECT col_default_is('public', 'sendry_settings', 'events', '{}', 'sendry_settings.events defaults to none');
SELECT is((SELECT events FROM public.sendry_settings), '{}'::text[], 'no event is on after an install');
SELECT throws_ok($$UPDATE public.sendry_settings SET events = '{user.signed_up,user.logged_in}'$$, '23514', NULL,
                 'an unknown event name is rejected');
SELECT throws_ok($$UPDATE public.sendry_settings SET events = NULL$$, '23502', NULL, 'events is NOT NULL');
SELECT throws_ok($$UPDATE public.sendry_settings SET events = ARRAY[NULL]::text[]$$, '23514', NULL,
                 'a NULL event name is rejected');
SELECT col_type_is('public', 'sendry_outbox', 'deduped', 'boolean', 'sendry_outbox.deduped is a boolean');
SELECT col_is_null('public', 'sendry_outbox', 'deduped', 'sendry_outbox.deduped is nullable (NULL but on a sent event)');
SELECT ok((SELECT convalidated FROM pg_constraint WHERE conname = 'sendry_outbox_op_check'
              AND conrelid = 'public.sendry_outbox'::regclass),
          'the op CHECK is validated');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, email) VALUES ('evnt', 'x@example.com')$$, '23514', NULL,
                 'the op CHECK still rejects an unknown op');

-- 2. Events off (the default): a whole life emits no event.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001001', 'authenticated', '',
        'off@example.com', '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001001';
SELECT (pg_stat_get_xact_numscans('public.sendry_changed_users'::regclass) + pg_stat_get_xact_numscans('public.sendry_changed_users_backend_pid_idx'::regclass)) AS scans_before \gset
UPDATE users SET email_confirmed_at = now(), confirmation_token = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001001';
SELECT (pg_stat_get_xact_numscans('public.sendry_changed_users'::regclass) + pg_stat_get_xact_numscans('public.sendry_changed_users_backend_pid_idx'::regclass)) - :scans_before AS scans_off \gset
UPDATE users SET email = 'off2@example.com', email_change = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001001';
:as_admin
SELECT pg_stat_get_xact_numscans('public.sendry_settings'::regclass) AS settings_before \gset
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000001001';
:as_admin
SELECT is(pg_stat_get_xact_numscans('public.sendry_settings'::regclass) - :settings_before, 0::bigint,
          'a delete reads no sendry_settings (compiled: functions/settings.sql)');
SELECT results_eq('SELECT op, email FROM pg_temp.rows()',
                  $$VALUES ('upsert', 'off@example.com'), ('upsert', 'off@example.com'), ('upsert', 'off2@example.com'),
                           ('delete', 'off2@example.com')$$,
                  'events off: sign-up, confirmation, email change and delete enqueue the contact rows only');
DELETE FROM public.sendry_outbox;

-- 3. Every event on, sync_on 'signup'.
:as_owner
UPDATE public.sendry_settings
   SET events = '{user.signed_up,user.email_confirmed,user.became_permanent,user.email_changed,user.deleted}';

-- A sign-up as GoTrue makes it (INSERT with role '', then role 'authenticated').
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001002', 'authenticated', '',
        ' Ada@Example.com ', '{"provider": "email", "providers": ["email"]}', '{"first_name": "Ada"}',
        false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT results_eq('SELECT * FROM pg_temp.rows()',
                  $$VALUES ('00000000-0000-4000-8000-000000001002'::uuid, 'upsert', 'ada@example.com', NULL::text),
                           ('00000000-0000-4000-8000-000000001002'::uuid, 'event', 'ada@example.com', 'user.signed_up')$$,
                  'a sign-up: the contact, then one user.signed_up to the normalised address');
SELECT is((SELECT payload FROM public.sendry_outbox WHERE op = 'event'),
          '{"name": "user.signed_up", "payload": {"user_id": "00000000-0000-4000-8000-000000001002", "provider": "email"}}'::jsonb,
          'user.signed_up carries user_id and provider');
SELECT results_eq($$SELECT class, status, old_email, deduped FROM public.sendry_outbox WHERE op = 'event'$$,
                  $$VALUES ('live', 'pending', NULL::text, NULL::boolean)$$,
                  'the event row is live and pending, with no old_email and deduped NULL');
DELETE FROM public.sendry_outbox;

-- Sign-in and token refresh: nothing.
:as_gotrue
UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001002';
UPDATE users SET updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'a sign-in and a token refresh emit no event');

-- The confirmation.
:as_gotrue
SELECT (pg_stat_get_xact_numscans('public.sendry_changed_users'::regclass) + pg_stat_get_xact_numscans('public.sendry_changed_users_backend_pid_idx'::regclass)) AS scans_before \gset
UPDATE users SET email_confirmed_at = now(), confirmation_token = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT cmp_ok(:scans_off::bigint, '=', (pg_stat_get_xact_numscans('public.sendry_changed_users'::regclass) + pg_stat_get_xact_numscans('public.sendry_changed_users_backend_pid_idx'::regclass)) - :scans_before,
              'a confirmation reads the noted users as many times with events named as without: its contact and event rows are one INSERT statement (and none named is no extra work)');
SELECT results_eq('SELECT * FROM pg_temp.rows()',
                  $$VALUES ('00000000-0000-4000-8000-000000001002'::uuid, 'upsert', 'ada@example.com', NULL::text),
                           ('00000000-0000-4000-8000-000000001002'::uuid, 'event', 'ada@example.com', 'user.email_confirmed')$$,
                  'the confirmation captures the contact, then emits one user.email_confirmed');
SELECT is((SELECT payload -> 'payload' FROM public.sendry_outbox WHERE op = 'event'),
          '{"user_id": "00000000-0000-4000-8000-000000001002"}'::jsonb, 'user.email_confirmed carries user_id');
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET email_confirmed_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'confirming again (already confirmed) emits nothing');

-- An email change, as GoTrue makes it: the pending change, then the new address.
:as_gotrue
UPDATE users SET email_change = 'ada.new@example.com', email_change_token_new = 'token-new',
                 email_change_sent_at = now(), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'a pending email change emits nothing');
:as_gotrue
UPDATE users SET email = 'ada.new@example.com', email_change = '', email_change_token_new = '',
                 email_change_confirm_status = 0, updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT results_eq('SELECT * FROM pg_temp.rows()',
                  $$VALUES ('00000000-0000-4000-8000-000000001002'::uuid, 'upsert', 'ada.new@example.com', NULL::text),
                           ('00000000-0000-4000-8000-000000001002'::uuid, 'event', 'ada.new@example.com', 'user.email_changed')$$,
                  'the email change: the contact moves, then one user.email_changed to the new address');
SELECT is((SELECT payload -> 'payload' FROM public.sendry_outbox WHERE op = 'event'),
          '{"user_id": "00000000-0000-4000-8000-000000001002", "old_email": "ada@example.com"}'::jsonb,
          'user.email_changed carries the old address');
DELETE FROM public.sendry_outbox;

-- The soft delete: user.deleted to the previous address, before its deletion.
:as_gotrue
UPDATE users SET deleted_at = now(), phone = NULL, raw_user_meta_data = '{}',
                 email = encode(sha256(convert_to(id::text || email, 'UTF8')), 'hex'), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT results_eq('SELECT * FROM pg_temp.rows()',
                  $$VALUES ('00000000-0000-4000-8000-000000001002'::uuid, 'event', 'ada.new@example.com', 'user.deleted'),
                           ('00000000-0000-4000-8000-000000001002'::uuid, 'delete', 'ada.new@example.com', NULL::text)$$,
                  'a soft delete: one user.deleted to the previous address, before the deletion');
DELETE FROM public.sendry_outbox;
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000001002';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'the hard delete of a soft-deleted user emits nothing more');

-- An anonymous sign-up, then the user becomes permanent (email and is_anonymous in one UPDATE).
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001003', 'authenticated', '',
        NULL, '{}', '{}', false, true, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001003';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'an anonymous sign-up emits nothing');
:as_gotrue
UPDATE users SET email = 'anon.now@example.com', is_anonymous = false,
                 raw_app_meta_data = '{"provider": "email", "providers": ["email"]}', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001003';
:as_admin
SELECT results_eq('SELECT * FROM pg_temp.rows()',
                  $$VALUES ('00000000-0000-4000-8000-000000001003'::uuid, 'upsert', 'anon.now@example.com', NULL::text),
                           ('00000000-0000-4000-8000-000000001003'::uuid, 'event', 'anon.now@example.com', 'user.became_permanent')$$,
                  'becoming permanent: the contact, then one user.became_permanent (no user.signed_up)');
DELETE FROM public.sendry_outbox;

-- The hard delete: user.deleted before the deletion.
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000001003';
:as_admin
SELECT results_eq('SELECT * FROM pg_temp.rows()',
                  $$VALUES ('00000000-0000-4000-8000-000000001003'::uuid, 'event', 'anon.now@example.com', 'user.deleted'),
                           ('00000000-0000-4000-8000-000000001003'::uuid, 'delete', 'anon.now@example.com', NULL::text)$$,
                  'a hard delete: one user.deleted, before the deletion');
SELECT is((SELECT payload -> 'payload' FROM public.sendry_outbox WHERE op = 'event'),
          '{"user_id": "00000000-0000-4000-8000-000000001003"}'::jsonb, 'user.deleted carries user_id');
DELETE FROM public.sendry_outbox;

-- A bulk sign-up (one INSERT of three users, one of them anonymous): per user, the
-- contact row first, then the event.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001005', 'authenticated', '',
        'b5@example.com', now(), '{"provider": "github", "providers": ["github"]}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001004', 'authenticated', '',
        'b4@example.com', NULL, '{}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001006', 'authenticated', '',
        NULL, NULL, '{}', '{}', false, true, now(), now());
:as_admin
SELECT results_eq($$SELECT user_id, op, payload ->> 'name' FROM public.sendry_outbox ORDER BY user_id, id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000001004'::uuid, 'upsert', NULL::text),
                           ('00000000-0000-4000-8000-000000001004'::uuid, 'event', 'user.signed_up'),
                           ('00000000-0000-4000-8000-000000001005'::uuid, 'upsert', NULL::text),
                           ('00000000-0000-4000-8000-000000001005'::uuid, 'event', 'user.signed_up')$$,
                  'a bulk sign-up: one user.signed_up per synced user, each after its contact');
SELECT ok((SELECT bool_and(e.id > c.id) FROM public.sendry_outbox e JOIN public.sendry_outbox c
            ON c.user_id = e.user_id AND c.op = 'upsert' WHERE e.op = 'event'),
          'a bulk sign-up: every event row comes after its user''s contact row');
SELECT results_eq($$SELECT payload -> 'payload' FROM public.sendry_outbox WHERE op = 'event' ORDER BY id$$,
                  $$VALUES ('{"user_id": "00000000-0000-4000-8000-000000001004"}'::jsonb),
                           ('{"user_id": "00000000-0000-4000-8000-000000001005", "provider": "github"}'::jsonb)$$,
                  'provider only when raw_app_meta_data names one');
DELETE FROM public.sendry_outbox;

-- on_delete 'keep': no deletion, but the event still goes (the contact stays in Sendry).
:as_owner
UPDATE public.sendry_settings SET on_delete = 'keep';
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000001004';
:as_admin
SELECT results_eq('SELECT op, name FROM pg_temp.rows()', $$VALUES ('event', 'user.deleted')$$,
                  'on_delete keep: the hard delete emits user.deleted and deletes nothing');
DELETE FROM public.sendry_outbox;
:as_owner
UPDATE public.sendry_settings SET on_delete = 'delete_contact';

-- Only the events named: with user.deleted alone, a sign-up and a confirmation emit none.
UPDATE public.sendry_settings SET events = '{user.deleted}';
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001007', 'authenticated', '',
        'only@example.com', '{"provider": "email"}', '{}', false, false, now(), now());
UPDATE users SET email_confirmed_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001007';
:as_admin
SELECT results_eq('SELECT op FROM pg_temp.rows()', $$VALUES ('upsert'), ('upsert')$$,
                  'only the named events: no user.signed_up or user.email_confirmed when only user.deleted is on (two captured contacts)');
DELETE FROM public.sendry_outbox;

-- 4. sync_on 'confirmed': the sign-up is the confirmation.
:as_owner
UPDATE public.sendry_settings
   SET sync_on = 'confirmed',
       events = '{user.signed_up,user.email_confirmed,user.became_permanent,user.email_changed,user.deleted}';
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001008', 'authenticated', '',
        'late@example.com', '{"provider": "email"}', '{}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001008';
UPDATE users SET email = 'late2@example.com', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001008';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'confirmed-only: an unconfirmed sign-up and its email change emit nothing');
:as_gotrue
UPDATE users SET email_confirmed_at = now(), confirmation_token = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000001008';
:as_admin
SELECT results_eq('SELECT op, email, name FROM pg_temp.rows()',
                  $$VALUES ('upsert', 'late2@example.com', NULL::text),
                           ('event', 'late2@example.com', 'user.signed_up'),
                           ('event', 'late2@example.com', 'user.email_confirmed')$$,
                  'confirmed-only: the confirmation enqueues the contact, then user.signed_up and user.email_confirmed');
SELECT is((SELECT payload -> 'payload' FROM public.sendry_outbox WHERE payload ->> 'name' = 'user.signed_up'),
          '{"user_id": "00000000-0000-4000-8000-000000001008", "provider": "email"}'::jsonb,
          'confirmed-only: user.signed_up carries the provider too');
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001008';
UPDATE users SET email_confirmed_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001008';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'confirmed-only: a sign-in and a second confirmation emit nothing');

-- An unconfirmed user's delete in confirmed-only mode: the address was never sent.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001009', 'authenticated', '',
        'never@example.com', '{"provider": "email"}', '{}', false, false, now(), now());
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000001009';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'confirmed-only: an unconfirmed user''s sign-up and delete emit nothing');

-- An OAuth sign-up arrives confirmed: user.signed_up at the INSERT.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001010', 'authenticated', '',
        'oauth@example.com', now(), '{"provider": "google"}', '{}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000001010';
:as_admin
SELECT results_eq('SELECT op, name FROM pg_temp.rows()', $$VALUES ('upsert', NULL::text), ('event', 'user.signed_up')$$,
                  'confirmed-only: a sign-up that arrives confirmed emits user.signed_up at once');
DELETE FROM public.sendry_outbox;

-- 5. A failure in an event's INSERT is a trigger failure like any other: the user's
--    write still succeeds, with a WARNING and a row in sendry_enqueue_errors.
:as_owner
ALTER TABLE public.sendry_outbox ADD CONSTRAINT test_no_events CHECK (op <> 'event') NOT VALID;
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000001011', 'authenticated', '',
        'fails@example.com', now(), '{"provider": "email"}', '{}', false, false, now(), now());
:as_admin
SELECT ok(EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000001011'),
          'a failing event INSERT does not fail the sign-up');
SELECT results_eq($$SELECT trigger_name, user_ids FROM public.sendry_enqueue_errors$$,
                  $$VALUES ('sendry_sync_users_insert', ARRAY['00000000-0000-4000-8000-000000001011'::uuid])$$,
                  'it is recorded in sendry_enqueue_errors, naming the user');

SELECT * FROM finish();
ROLLBACK;
