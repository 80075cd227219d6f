-- A failing outbox insert never fails the sign-up (GoTrue would answer HTTP 500
-- "Database error saving new user"): the trigger turns the error into a WARNING.
-- The outbox is made to reject every row with a CHECK constraint added inside this
-- rolled-back transaction (as supabase_admin; postgres could, too, as the owner).
-- The two WARNINGs are expected; they are silenced here and their text is checked by
-- tests/test_sql_lifecycle.py.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(7);
SET LOCAL client_min_messages = error;

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
