-- The repair pass, sendry_reconcile_contacts(batch): compares what the mapping renders
-- with what Sendry last accepted for each user and enqueues the differences as class
-- 'bulk' captured rows, p_batch users per call, until `more` is false. It writes no state:
-- pg_temp.claim() plays the worker that sends them, as if Sendry accepted each. Here the triggers on auth.users
-- are disabled while users come and go (as supabase_admin: what "installed late" or "a
-- trigger disabled for a migration" looks like), then the pass catches up.
-- Also the README's queries for users an error left without an outbox row.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(27);

-- The worker's claim of the captured rows, and its completion as if Sendry accepted every
-- contact sent ('send') or found unchanged ('same'): the state written, the rows done
-- (a 'failed' one too: the worker fails it).
-- pg_temp.claim(): the worker's claim and completion (lib/claim.sql).
\ir lib/claim.sql

-- A whole pass, as a loop would make it: one row per call.
CREATE FUNCTION pg_temp.pass(batch int) RETURNS TABLE (call int, enqueued int, failed int, examined int, more boolean)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    LOOP
        n := n + 1;
        SELECT * INTO r FROM public.sendry_reconcile_contacts(batch);
        call := n; enqueued := r.enqueued; failed := r.failed; examined := r.examined; more := r.more;
        RETURN NEXT;
        EXIT WHEN NOT r.more OR n > 100;
    END LOOP;
END
$$;

ALTER TABLE auth.users DISABLE TRIGGER sendry_sync_users_insert;
ALTER TABLE auth.users DISABLE TRIGGER sendry_sync_users_update;
ALTER TABLE auth.users DISABLE TRIGGER sendry_sync_users_delete;
DELETE FROM public.sendry_sync_state WHERE key = 'contacts_reconcile_after';

:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', ('00000000-0000-4000-8000-00000000090' || n)::uuid,
       'authenticated', 'authenticated',
       CASE n WHEN 6 THEN NULL ELSE 'late' || n || '@example.com' END,
       CASE WHEN n = 5 THEN NULL ELSE now() END,
       '{"provider": "email", "providers": ["email"]}', jsonb_build_object('first_name', 'Late' || n),
       false, n = 6, now(), now()
FROM generate_series(1, 7) n;
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'with the triggers disabled, seven sign-ups enqueued nothing');

-- The README's query: users with an email and no outbox row.
SELECT results_eq($$SELECT u.email::text FROM auth.users u
                     WHERE u.email IS NOT NULL AND u.deleted_at IS NULL AND NOT u.is_anonymous
                       AND NOT EXISTS (SELECT 1 FROM public.sendry_outbox o WHERE o.user_id = u.id)
                     ORDER BY 1$$,
                  $$VALUES ('late1@example.com'), ('late2@example.com'), ('late3@example.com'),
                           ('late4@example.com'), ('late5@example.com'), ('late7@example.com')$$,
                  'the README''s query finds the users with an email and no outbox row');

-- 1. The pass, two users per call.
SELECT results_eq('SELECT * FROM pg_temp.pass(2)',
                  $$VALUES (1, 2, 0, 2, true), (2, 2, 0, 2, true), (3, 1, 0, 2, true), (4, 1, 0, 1, false)$$,
                  'a pass of 2 users a call: 4 calls, 6 rows enqueued (not the anonymous user), more false at the end');
SELECT results_eq($$SELECT o.user_id, o.op, o.class, o.status, o.payload IS NULL, r.payload ->> 'first_name'
                      FROM public.sendry_outbox o
                      JOIN public.sendry_claim_render(ARRAY(SELECT user_id FROM public.sendry_outbox)) r USING (user_id)
                     ORDER BY o.user_id$$,
                  $$SELECT ('00000000-0000-4000-8000-00000000090' || n)::uuid, 'upsert', 'bulk', 'pending', true, 'Late' || n
                      FROM unnest(ARRAY[1, 2, 3, 4, 5, 7]) n$$,
                  'the rows are class bulk captured upserts, of the contacts the mapping renders');
SELECT is_empty('SELECT 1 FROM public.sendry_contact_state', 'the pass wrote no state (nothing was accepted yet)');
SELECT is((SELECT value FROM public.sendry_sync_state WHERE key = 'contacts_reconcile_after'), NULL,
          'after a whole pass the position is cleared (the next call starts a new pass)');
SELECT is_empty($$SELECT u.id FROM auth.users u
                   WHERE u.email IS NOT NULL AND u.deleted_at IS NULL AND NOT u.is_anonymous
                     AND NOT EXISTS (SELECT 1 FROM public.sendry_outbox o WHERE o.user_id = u.id)$$,
                'the README''s query finds nobody any more');
SELECT results_eq('SELECT * FROM pg_temp.pass(1000)', $$VALUES (1, 0, 0, 7, false)$$,
                  'a second pass before the worker sent them enqueues nothing: each user has a captured row still pending, rendered when claimed');
SELECT is((SELECT count(*) FROM pg_temp.claim() WHERE verdict = 'send'), 6::bigint, 'the worker sends the six contacts');
SELECT results_eq('SELECT * FROM pg_temp.pass(1000)', $$VALUES (1, 0, 0, 7, false)$$,
                  'a pass after Sendry accepted them enqueues nothing: every contact is as Sendry has it');

-- 2. Half a pass, then a position kept between calls.
SELECT results_eq('SELECT enqueued, examined, more FROM public.sendry_reconcile_contacts(3)',
                  $$VALUES (0, 3, true)$$, 'one call of a new pass examines 3 users');
SELECT is((SELECT value FROM public.sendry_sync_state WHERE key = 'contacts_reconcile_after'),
          '00000000-0000-4000-8000-000000000903', 'the position (the last user examined) is kept in sendry_sync_state');
SELECT results_eq('SELECT enqueued, examined, more FROM public.sendry_reconcile_contacts(1000)',
                  $$VALUES (0, 4, false)$$, 'the next call goes on from there');

-- 3. Confirmed-only mode: the unconfirmed user is not synced, and is not deleted either.
:as_owner
UPDATE public.sendry_settings SET sync_on = 'confirmed';
:as_admin
SELECT results_eq('SELECT enqueued, failed, examined, more FROM public.sendry_reconcile_contacts(1000)',
                  $$VALUES (0, 0, 7, false)$$, 'confirmed-only: nothing to do (an unconfirmed user is left alone)');
:as_owner
UPDATE public.sendry_settings SET sync_on = 'signup';

-- 4. The mapping replaced (a new metadata field, an audience), one contact it renders wrongly.
:as_owner
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email, u.raw_user_meta_data ->> 'first_name' AS first_name,
       NULL::text AS last_name,
       jsonb_build_object('tier', CASE WHEN u.email = 'late3@example.com' THEN to_jsonb(3) ELSE to_jsonb('free'::text) END)
           AS metadata,
       ARRAY['newsletter'] AS audiences
FROM auth.users u;
:as_admin
SELECT results_eq('SELECT sum(enqueued)::int, sum(failed)::int FROM pg_temp.pass(4)',
                  $$VALUES (6, 1)$$, 'a replaced mapping: the pass enqueues every contact again, one of them failed');
SELECT results_eq($$SELECT o.email, o.status, r.payload -> 'metadata', r.payload -> 'leave_audiences', o.last_error
                      FROM public.sendry_outbox o
                      JOIN public.sendry_claim_render(ARRAY(SELECT user_id FROM public.sendry_outbox)) r USING (user_id)
                     WHERE o.email IN ('late1@example.com', 'late3@example.com') ORDER BY 1$$,
                  $$VALUES ('late1@example.com', 'pending', '{"tier": "free"}'::jsonb, '["default"]'::jsonb, NULL::text),
                           ('late3@example.com', 'failed', '{"tier": 3}'::jsonb, NULL::jsonb,
                            'mapping: metadata.tier is a JSON number, not a string (metadata is flat: string values only)')$$,
                  'the new metadata, the audience left, and the wrong one failed with its reason');
SELECT results_eq($$SELECT verdict, count(*)::int FROM pg_temp.claim() GROUP BY 1 ORDER BY 1$$,
                  $$VALUES ('send', 5)$$, 'the worker sends the five pending ones (the wrong one is failed already)');
DELETE FROM public.sendry_outbox;

-- 5. Users deleted while nothing watched.
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000901';
UPDATE users SET deleted_at = now(), email = md5(email) WHERE id = '00000000-0000-4000-8000-000000000902';
:as_owner
UPDATE public.sendry_settings SET on_delete = 'remove_from_audience';
:as_admin
SELECT results_eq('SELECT sum(enqueued)::int, sum(failed)::int FROM pg_temp.pass(1000)', $$VALUES (3, 1)$$,
                  'users deleted (hard and soft) while the triggers were off: two rows (and the contact the mapping renders wrongly, failed again)');
SELECT results_eq($$SELECT user_id, op, class, email, payload FROM public.sendry_outbox WHERE op = 'delete' ORDER BY user_id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000901'::uuid, 'delete', 'bulk', 'late1@example.com',
                            '{"delete_mode": "remove_from_audience"}'::jsonb),
                           ('00000000-0000-4000-8000-000000000902'::uuid, 'delete', 'bulk', 'late2@example.com',
                            '{"delete_mode": "remove_from_audience"}'::jsonb)$$,
                  'each a bulk delete of the address Sendry last accepted, as on_delete says');
SELECT is_empty($$SELECT 1 FROM public.sendry_contact_state
                   WHERE user_id IN ('00000000-0000-4000-8000-000000000901', '00000000-0000-4000-8000-000000000902')$$,
                'and their state rows are gone');
DELETE FROM public.sendry_outbox;
SELECT results_eq('SELECT sum(enqueued)::int, sum(failed)::int FROM pg_temp.pass(1000)', $$VALUES (1, 1)$$,
                  'once: a second pass enqueues no delete (only the wrong contact, failed, until the mapping is fixed)');

-- 6. With on_delete = keep nothing is sent for them, but their state goes.
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000903';
:as_owner
UPDATE public.sendry_settings SET on_delete = 'keep';
:as_admin
SELECT results_eq('SELECT sum(enqueued)::int FROM pg_temp.pass(1000)', $$VALUES (0)$$, 'on_delete keep: no delete row');
SELECT is_empty($$SELECT 1 FROM public.sendry_contact_state WHERE user_id = '00000000-0000-4000-8000-000000000903'$$,
                'on_delete keep: the state row is gone all the same');

-- 7. An enqueue error left users without a row: the README's query for them, and the repair.
DELETE FROM public.sendry_outbox;
ALTER TABLE auth.users ENABLE TRIGGER sendry_sync_users_insert;
ALTER TABLE public.sendry_outbox ADD CONSTRAINT sendry_test_reject_everything CHECK (false) NOT VALID;
DELETE FROM public.sendry_enqueue_errors;
SET LOCAL client_min_messages = error;
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000911', 'authenticated', '',
        'lost@example.com', '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
:as_admin
SET LOCAL client_min_messages = notice;
ALTER TABLE public.sendry_outbox DROP CONSTRAINT sendry_test_reject_everything;
SELECT results_eq($$SELECT DISTINCT u.email::text
                      FROM public.sendry_enqueue_errors e, unnest(e.user_ids) AS x (id)
                      JOIN auth.users u ON u.id = x.id
                     WHERE NOT EXISTS (SELECT 1 FROM public.sendry_outbox o
                                        WHERE o.user_id = u.id AND o.created_at >= e.occurred_at)$$,
                  $$VALUES ('lost@example.com')$$,
                  'the README''s query finds the users an enqueue error left without an outbox row');
SELECT results_eq($$SELECT * FROM public.sendry_enqueue_contacts(
                       ARRAY(SELECT DISTINCT x.id FROM public.sendry_enqueue_errors e, unnest(e.user_ids) AS x (id)
                              JOIN auth.users u ON u.id = x.id
                             WHERE public.sendry_user_is_synced(u, (SELECT sync_on FROM public.sendry_settings))),
                       'bulk')$$,
                  $$VALUES (1, 0)$$, 'and the README''s repair enqueues them (class bulk)');
SELECT results_eq($$SELECT email, class, status, payload IS NULL FROM public.sendry_outbox$$,
                  $$VALUES ('lost@example.com', 'bulk', 'pending', true)$$, 'the lost user''s contact is in the outbox, captured');

SELECT throws_ok('SELECT * FROM public.sendry_reconcile_contacts(0)', 'P0001',
                 'sendry-sync: the batch must be between 1 and 100000 users, not 0', 'a batch of 0 is refused');

SELECT * FROM finish();
ROLLBACK;
