-- A failing outbox insert never fails the sign-up (GoTrue would answer HTTP 500
-- "Database error saving new user"): the trigger turns the error into a WARNING, and
-- records it in public.sendry_enqueue_errors.
-- The outbox is made to reject every row with a CHECK constraint added inside this
-- rolled-back transaction (as supabase_admin; postgres could, too, as the owner).
-- The two WARNINGs are expected; they are silenced here and their text is checked by
-- tests/test_sql_lifecycle.py.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(10);
SET LOCAL client_min_messages = error;
DELETE FROM public.sendry_enqueue_errors;

SELECT lives_ok($$ALTER TABLE public.sendry_outbox
                  ADD CONSTRAINT sendry_test_reject_everything CHECK (false) NOT VALID$$,
                'the outbox now rejects every row');
SELECT throws_ok($$INSERT INTO public.sendry_outbox (email) VALUES ('probe@example.com')$$, '23514', NULL,
                 'an insert into the outbox does fail now');

-- A sign-up as GoTrue makes it: INSERT, then the role UPDATE, in this transaction.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000201',
        'authenticated', '', 'still.works@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Still"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000201';
-- An email change, which enqueues through the UPDATE trigger.
UPDATE users SET email = 'changed@example.com', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000201';
:as_admin

SELECT ok(EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000201'
                                             AND role = 'authenticated'),
          'the sign-up succeeded although its outbox row could not be written');
SELECT is((SELECT email::text FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000201'),
          'changed@example.com', 'the email change succeeded although its outbox row could not be written');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'nothing was enqueued');
SELECT results_eq($$SELECT trigger_name, table_name, sqlstate, user_ids FROM public.sendry_enqueue_errors ORDER BY id$$,
                  $$VALUES ('sendry_sync_users_insert', 'auth.users', '23514', ARRAY['00000000-0000-4000-8000-000000000201'::uuid]),
                           ('sendry_sync_users_updated', 'auth.users', '23514', ARRAY['00000000-0000-4000-8000-000000000201'::uuid])$$,
                  'both failures are recorded where an operator sees them (sendry_enqueue_errors)');
SELECT ok((SELECT bool_and(message LIKE '%sendry_test_reject_everything%') FROM public.sendry_enqueue_errors),
          'with the error message');
SELECT is((SELECT enqueue_errors_last_hour FROM public.sendry_outbox_stats), 2::bigint,
          'sendry_outbox_stats counts them in enqueue_errors_last_hour');

-- Once the outbox accepts rows again, the same transaction goes on working normally.
ALTER TABLE public.sendry_outbox DROP CONSTRAINT sendry_test_reject_everything;
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000202',
        'authenticated', '', 'after.fix@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now());
:as_admin
SELECT results_eq($$SELECT user_id, email FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000202'::uuid, 'after.fix@example.com')$$,
                  'after a swallowed failure, the next sign-up in the same transaction is enqueued');
SELECT is((SELECT count(*) FROM auth.users WHERE id::text LIKE '00000000-0000-4000-8000-0000000002%'), 2::bigint,
          'both users exist');

SELECT * FROM finish();
ROLLBACK;
