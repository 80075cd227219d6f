-- Bulk UPDATEs of auth.users (issue 16, point 8): no subtransaction per row. The row-level
-- trigger only notes each changed user (its function has no EXCEPTION block); the
-- statement-level one enqueues them all at once, in one subtransaction, and forgets them.
-- The outcome per user is what a single-row UPDATE gives (20_update.sql): renames, email
-- changes with their previous address, soft deletes. Logged in as supabase_admin (GoTrue's
-- role, function call counts); everything is undone by the final ROLLBACK.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(13);
SET LOCAL track_functions = 'pl';
CREATE FUNCTION pg_temp.calls(fn regprocedure) RETURNS bigint LANGUAGE sql AS
    $$ SELECT coalesce(pg_stat_get_xact_function_calls(fn), 0) $$;

SELECT ok((SELECT prosrc !~* '\mEXCEPTION\M' FROM pg_proc WHERE oid = 'public.sendry_auth_users_noted()'::regprocedure),
          'the row-level function has no EXCEPTION block: no subtransaction per row');

:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', ('00000000-0000-4000-8000-00000000' || lpad(g::text, 4, '0'))::uuid,
       'authenticated', 'authenticated', 'bulk' || g || '@example.com', '{"provider": "email"}',
       jsonb_build_object('first_name', 'Bulk' || g), false, false, now(), now()
FROM generate_series(1, 300) g;
:as_admin
DELETE FROM public.sendry_outbox;

-- 1. A bulk change of 300 contacts: each enqueued once, one statement-level call.
:as_gotrue
UPDATE users SET raw_user_meta_data = raw_user_meta_data || '{"last_name": "Renamed"}'
 WHERE email LIKE 'bulk%';
:as_admin
SELECT is(pg_temp.calls('public.sendry_auth_users_noted()'), 300::bigint, 'the row function ran once a row');
SELECT is(pg_temp.calls('public.sendry_auth_users_updated()'), 1::bigint, 'the statement function once');
SELECT is((SELECT count(*) FROM public.sendry_outbox WHERE payload IS NULL AND class = 'live' AND op = 'upsert'),
          300::bigint, 'every changed user is captured once, live');
SELECT is((SELECT count(*) FROM public.sendry_claim_render(ARRAY(SELECT user_id FROM public.sendry_outbox)) r
            WHERE r.payload ->> 'last_name' = 'Renamed' AND r.verdict = 'send'),
          300::bigint, 'and the claim renders each with the new name');
SELECT is_empty('SELECT 1 FROM public.sendry_changed_users', 'the noted users are forgotten at the end of the statement');

-- 2. A bulk UPDATE that changes no contact (Sendry accepted them all): captured, and the
-- claim finds every contact the same (completed without a request).
INSERT INTO public.sendry_contact_state (user_id, email, audiences, contact_hash)
SELECT r.user_id, r.email, r.audiences, r.hash FROM public.sendry_claim_render(ARRAY(SELECT id FROM auth.users)) r
 WHERE r.verdict = 'send';
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET raw_app_meta_data = raw_app_meta_data || '{"tick": 1}' WHERE email LIKE 'bulk%';
:as_admin
SELECT is((SELECT count(*) FROM public.sendry_claim_render(ARRAY(SELECT user_id FROM public.sendry_outbox)) r
            WHERE r.verdict = 'same'),
          300::bigint, 'app metadata the mapping ignores: 300 captured rows, each contact the same at the claim');
DELETE FROM public.sendry_outbox;

-- 3. Two address changes in one statement: each carries its own previous address.
:as_gotrue
UPDATE users SET email = replace(email, 'bulk', 'moved')
 WHERE id IN ('00000000-0000-4000-8000-000000000001', '00000000-0000-4000-8000-000000000002');
:as_admin
SELECT results_eq($$SELECT email, old_email FROM public.sendry_outbox ORDER BY email$$,
                  $$VALUES ('moved1@example.com', 'bulk1@example.com'), ('moved2@example.com', 'bulk2@example.com')$$,
                  'a bulk email change moves each contact from its own previous address');

-- 4. Two soft deletes in one statement (GoTrue overwrites the email): the previous addresses go.
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET deleted_at = now(), email = md5(email) || '@deleted.invalid'
 WHERE id IN ('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000004');
:as_admin
SELECT results_eq($$SELECT op, email FROM public.sendry_outbox ORDER BY email$$,
                  $$VALUES ('delete', 'bulk3@example.com'), ('delete', 'bulk4@example.com')$$,
                  'a bulk soft delete enqueues the deletion of each previous address');
SELECT is_empty($$SELECT 1 FROM public.sendry_contact_state
                   WHERE user_id IN ('00000000-0000-4000-8000-000000000003', '00000000-0000-4000-8000-000000000004')$$,
                'and forgets what was enqueued for them');

-- 5. An enqueue that fails (here a CHECK of the test's on the outbox): the UPDATE
-- succeeds, one error row names every user of it.
:as_owner
ALTER TABLE public.sendry_outbox ADD CONSTRAINT test_no_upserts CHECK (op <> 'upsert') NOT VALID;
:as_admin
DELETE FROM public.sendry_outbox;
DELETE FROM public.sendry_enqueue_errors;
SET LOCAL client_min_messages = error;
:as_gotrue
UPDATE users SET raw_user_meta_data = '{"first_name": "Again"}'
 WHERE id IN ('00000000-0000-4000-8000-000000000010', '00000000-0000-4000-8000-000000000011');
:as_admin
SET LOCAL client_min_messages = notice;
SELECT is((SELECT count(*) FROM auth.users WHERE raw_user_meta_data ->> 'first_name' = 'Again'), 2::bigint,
          'an enqueue that raises an error does not fail the bulk UPDATE');
SELECT results_eq($$SELECT trigger_name, sqlstate, user_ids FROM public.sendry_enqueue_errors$$,
                  $$VALUES ('sendry_sync_users_updated', '23514',
                            ARRAY['00000000-0000-4000-8000-000000000010', '00000000-0000-4000-8000-000000000011']::uuid[])$$,
                  'one error row for the statement, naming every user of it (the repair pass catches up)');
SELECT is_empty('SELECT 1 FROM public.sendry_changed_users', 'and the noted users are forgotten even then');

SELECT * FROM finish();
ROLLBACK;
