-- The render at the claim, public.sendry_claim_render(user_ids): one row per distinct user
-- id with the verdict the worker acts on ('gone', 'failed', 'same', 'send'), the rendered
-- contact (email, payload with leave_audiences, hash, audiences, problem) and what Sendry
-- last accepted (known, state_email). Also the two backfill statements (the short one
-- captures, today's form is sent as given) and sendry_enqueue_contacts with and without
-- p_check. Logged in as postgres (the owner, as the worker in Supabase may be); the
-- mapping is replaced for the test and everything is undone by the final ROLLBACK.
BEGIN;
SELECT plan(28);

-- The users (written with the triggers on: their captured rows are cleared below).
INSERT INTO auth.users (id, email, email_confirmed_at, raw_user_meta_data, is_anonymous, deleted_at)
VALUES ('00000000-0000-4000-8000-000000000c01', ' Send@Example.com ', now(), '{"first_name": "Send"}', false, NULL),
       ('00000000-0000-4000-8000-000000000c02', 'same@example.com', now(), '{"first_name": "Same"}', false, NULL),
       ('00000000-0000-4000-8000-000000000c03', 'failed@example.com', now(), '{"first_name": "Failed", "age": 3}', false, NULL),
       ('00000000-0000-4000-8000-000000000c04', NULL, NULL, '{}', true, NULL),
       ('00000000-0000-4000-8000-000000000c05', 'deleted@example.com', now(), '{}', false, now()),
       ('00000000-0000-4000-8000-000000000c06', 'unconfirmed@example.com', NULL, '{"first_name": "Un"}', false, NULL),
       ('00000000-0000-4000-8000-000000000c07', 'nomap@example.com', now(), '{"hidden": true}', false, NULL),
       ('00000000-0000-4000-8000-000000000c08', 'moved@example.com', now(), '{"first_name": "Moved"}', false, NULL),
       ('00000000-0000-4000-8000-000000000c09', 'left@example.com', now(), '{"first_name": "Left", "audiences": ["a"]}',
        false, NULL);
DELETE FROM public.sendry_outbox;

-- A mapping with a problem (a number in metadata), a user it has no row for (hidden), and
-- audiences from the user metadata.
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, lower(btrim(u.email)) AS email, u.raw_user_meta_data ->> 'first_name' AS first_name,
       NULL::text AS last_name,
       CASE WHEN u.raw_user_meta_data ? 'age' THEN jsonb_build_object('age', u.raw_user_meta_data -> 'age')
            ELSE '{}'::jsonb END AS metadata,
       CASE WHEN u.raw_user_meta_data ? 'audiences'
            THEN ARRAY(SELECT jsonb_array_elements_text(u.raw_user_meta_data -> 'audiences')) END AS audiences
  FROM auth.users u
 WHERE NOT (u.raw_user_meta_data ? 'hidden');

-- What Sendry accepted: c02 as it renders now; c08 the same contact at another address
-- (same hash, another email: cannot happen through the worker, but the address counts
-- on its own); c09 in audiences it has left since (a, b: the contact now renders a only);
-- c05 (deleted since) and c10 (no such user) gone with their state.
INSERT INTO public.sendry_contact_state (user_id, email, audiences, contact_hash)
SELECT r.user_id, r.email, r.audiences, r.hash
  FROM public.sendry_render_contacts(ARRAY['00000000-0000-4000-8000-000000000c02'::uuid]) r
UNION ALL
SELECT r.user_id, 'before.move@example.com', r.audiences, r.hash
  FROM public.sendry_render_contacts(ARRAY['00000000-0000-4000-8000-000000000c08'::uuid]) r
UNION ALL
SELECT '00000000-0000-4000-8000-000000000c09', 'left@example.com', ARRAY['a', 'b'], 0
UNION ALL
SELECT '00000000-0000-4000-8000-000000000c05', 'deleted@example.com', NULL, 0
UNION ALL
SELECT '00000000-0000-4000-8000-000000000c10', 'nobody@example.com', NULL, 0;

-- 1. The function's shape.
SELECT is_definer('public', 'sendry_claim_render', ARRAY['uuid[]'],
                  'sendry_claim_render is SECURITY DEFINER (a worker role needs EXECUTE only)');
SELECT is((SELECT proconfig FROM pg_proc WHERE oid = 'public.sendry_claim_render(uuid[])'::regprocedure)
            @> ARRAY['search_path=""'], true, 'with an empty search_path');
SELECT is((SELECT provolatile FROM pg_proc WHERE oid = 'public.sendry_claim_render(uuid[])'::regprocedure),
          's', 'and STABLE: it writes nothing');

CREATE TEMP TABLE r ON COMMIT DROP AS
SELECT * FROM public.sendry_claim_render(ARRAY[
    '00000000-0000-4000-8000-000000000c01', '00000000-0000-4000-8000-000000000c02', '00000000-0000-4000-8000-000000000c03',
    '00000000-0000-4000-8000-000000000c04', '00000000-0000-4000-8000-000000000c05', '00000000-0000-4000-8000-000000000c06',
    '00000000-0000-4000-8000-000000000c07', '00000000-0000-4000-8000-000000000c08', '00000000-0000-4000-8000-000000000c09',
    '00000000-0000-4000-8000-000000000c10', '00000000-0000-4000-8000-000000000c01', NULL,
    '00000000-0000-4000-8000-000000000c02']::uuid[]);

-- 2. One row per distinct id; the verdicts.
SELECT is((SELECT count(*) FROM r), 10::bigint, 'one row per distinct user id (duplicates once, NULL none)');
SELECT results_eq($$SELECT user_id, verdict FROM r ORDER BY user_id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000c01'::uuid, 'send'),
                           ('00000000-0000-4000-8000-000000000c02'::uuid, 'same'),
                           ('00000000-0000-4000-8000-000000000c03'::uuid, 'failed'),
                           ('00000000-0000-4000-8000-000000000c04'::uuid, 'gone'),
                           ('00000000-0000-4000-8000-000000000c05'::uuid, 'gone'),
                           ('00000000-0000-4000-8000-000000000c06'::uuid, 'send'),
                           ('00000000-0000-4000-8000-000000000c07'::uuid, 'gone'),
                           ('00000000-0000-4000-8000-000000000c08'::uuid, 'send'),
                           ('00000000-0000-4000-8000-000000000c09'::uuid, 'send'),
                           ('00000000-0000-4000-8000-000000000c10'::uuid, 'gone')$$,
                  'send (new, changed, moved), same, failed, gone (anonymous, deleted, no mapping row, no user)');

-- send: a new contact.
SELECT results_eq($$SELECT email, payload, hash, audiences, problem, known, state_email FROM r
                     WHERE user_id = '00000000-0000-4000-8000-000000000c01'$$,
                  $$VALUES ('send@example.com', '{"email": "send@example.com", "first_name": "Send", "metadata": {}}'::jsonb,
                            jsonb_hash_extended('{"email": "send@example.com", "first_name": "Send", "metadata": {}}'::jsonb, 0),
                            NULL::text[], NULL::text, false, NULL::text)$$,
                  'send: the address trimmed and lower-cased, the body, its hash; no state (known false)');
SELECT is((SELECT payload FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c01'),
          public.sendry_contact_payload((SELECT u FROM auth.users u WHERE id = '00000000-0000-4000-8000-000000000c01')),
          'send: the payload is what sendry_contact_payload renders (the backfill''s)');
-- same.
SELECT results_eq($$SELECT email, known, state_email, hash = (SELECT contact_hash FROM public.sendry_contact_state
                                                               WHERE user_id = r.user_id), problem
                      FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c02'$$,
                  $$VALUES ('same@example.com', true, 'same@example.com', true, NULL::text)$$,
                  'same: the hash and the address Sendry accepted');
-- failed.
SELECT results_eq($$SELECT email, problem, known, state_email FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c03'$$,
                  $$VALUES ('failed@example.com',
                            'mapping: metadata.age is a JSON number, not a string (metadata is flat: string values only)',
                            false, NULL::text)$$,
                  'failed: the rendered address and the problem, as sendry_render_contacts names it');
-- gone.
SELECT is_empty($$SELECT 1 FROM r WHERE verdict = 'gone'
                    AND (email IS NOT NULL OR payload IS NOT NULL OR hash IS NOT NULL OR audiences IS NOT NULL
                         OR problem IS NOT NULL)$$,
                'gone: email, payload, hash, audiences and problem NULL');
SELECT results_eq($$SELECT user_id, known, state_email FROM r WHERE verdict = 'gone' ORDER BY user_id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000c04'::uuid, false, NULL::text),
                           ('00000000-0000-4000-8000-000000000c05'::uuid, true, 'deleted@example.com'),
                           ('00000000-0000-4000-8000-000000000c07'::uuid, false, NULL::text),
                           ('00000000-0000-4000-8000-000000000c10'::uuid, true, 'nobody@example.com')$$,
                  'gone: known and state_email still say what Sendry has');
-- send: the same contact at another address.
SELECT results_eq($$SELECT email, known, state_email FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c08'$$,
                  $$VALUES ('moved@example.com', true, 'before.move@example.com')$$,
                  'send: the same hash at another address than Sendry accepted is sent (state_email: the old one)');
-- send: left audiences.
SELECT results_eq($$SELECT payload -> 'audiences', payload -> 'leave_audiences', audiences, known
                      FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c09'$$,
                  $$VALUES ('["a"]'::jsonb, '["b"]'::jsonb, ARRAY['a'], true)$$,
                  'send: leave_audiences names the audiences Sendry has the contact in that it left');
SELECT is((SELECT hash FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c09'),
          jsonb_hash_extended((SELECT payload - 'leave_audiences' FROM r WHERE user_id = '00000000-0000-4000-8000-000000000c09'), 0),
          'the hash is the rendered contact''s, without leave_audiences (what the state keeps)');

-- 3. Under sync_on = 'confirmed' the unconfirmed user is gone; no input, no rows.
UPDATE public.sendry_settings SET sync_on = 'confirmed';
SELECT is((SELECT verdict FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000c06'::uuid])), 'gone',
          'confirmed-only: an unconfirmed user is gone');
UPDATE public.sendry_settings SET sync_on = 'signup';
SELECT is_empty($$SELECT * FROM public.sendry_claim_render('{}')$$, 'an empty array: no rows');
SELECT is_empty($$SELECT * FROM public.sendry_claim_render(NULL)$$, 'NULL: no rows');
SELECT is_empty($$SELECT 1 FROM public.sendry_outbox$$, 'rendering wrote nothing to the outbox');

-- 4. The short backfill captures; today's form is sent as given.
INSERT INTO public.sendry_outbox (user_id) SELECT id FROM auth.users WHERE id::text LIKE '%-000000000c0%';
SELECT results_eq($$SELECT count(*)::int, bool_and(op = 'upsert' AND class = 'bulk' AND status = 'pending'
                                                    AND email IS NULL AND payload IS NULL) FROM public.sendry_outbox$$,
                  $$VALUES (9, true)$$,
                  'INSERT INTO sendry_outbox (user_id) SELECT id FROM auth.users: bulk captured upserts, no address');
SELECT is((SELECT count(*) FROM public.sendry_claim_render(ARRAY(SELECT user_id FROM public.sendry_outbox))
            WHERE verdict = 'gone'), 3::bigint,
          'and the claim finds who of them is not synced (gone: completed without a request)');
DELETE FROM public.sendry_outbox;
INSERT INTO public.sendry_outbox (user_id, email, payload)
SELECT id, email, public.sendry_contact_payload(u) FROM auth.users u
 WHERE email IS NOT NULL AND id = '00000000-0000-4000-8000-000000000c01';
SELECT results_eq($$SELECT op, class, email, payload FROM public.sendry_outbox$$,
                  $$VALUES ('upsert', 'bulk', ' Send@Example.com ',
                            '{"email": "send@example.com", "first_name": "Send", "metadata": {}}'::jsonb)$$,
                  'today''s backfill (user_id, email, payload) is still accepted, its payload kept: sent as given');
DELETE FROM public.sendry_outbox;
SELECT throws_ok($$INSERT INTO public.sendry_outbox (op, user_id, payload)
                   VALUES ('delete', '00000000-0000-4000-8000-000000000c01', '{"delete_mode": "delete_contact"}')$$,
                 '23514', NULL, 'a delete with no email is rejected (sendry_outbox_address_check)');

-- 5. sendry_enqueue_contacts: without p_check it captures every user given; with it, the
--    ones whose contact differs from what Sendry accepted, a problem failed; neither
--    writes the state.
CREATE TEMP TABLE state_before ON COMMIT DROP AS SELECT * FROM public.sendry_contact_state;
SELECT results_eq($$SELECT * FROM public.sendry_enqueue_contacts(
                       ARRAY['00000000-0000-4000-8000-000000000c01', '00000000-0000-4000-8000-000000000c02']::uuid[],
                       'live', 'Old@Example.com', p_check => false)$$,
                  $$VALUES (2, 0)$$, 'without p_check: every user given, nothing rendered');
SELECT results_eq($$SELECT user_id, op, class, email, old_email, payload, status FROM public.sendry_outbox ORDER BY id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000c01'::uuid, 'upsert', 'live', 'send@example.com',
                            'old@example.com', NULL::jsonb, 'pending'),
                           ('00000000-0000-4000-8000-000000000c02'::uuid, 'upsert', 'live', 'same@example.com',
                            'old@example.com', NULL::jsonb, 'pending')$$,
                  'captured rows: the address from auth.users, the previous one as given, lower-cased');
DELETE FROM public.sendry_outbox;
SELECT results_eq($$SELECT * FROM public.sendry_enqueue_contacts(
                       ARRAY['00000000-0000-4000-8000-000000000c01', '00000000-0000-4000-8000-000000000c02',
                             '00000000-0000-4000-8000-000000000c03', '00000000-0000-4000-8000-000000000c08']::uuid[],
                       'bulk')$$,
                  $$VALUES (3, 1)$$, 'with p_check: the three contacts that differ, one of them failed');
SELECT results_eq($$SELECT user_id, class, email, old_email, payload, status, attempts, last_error
                      FROM public.sendry_outbox ORDER BY user_id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000c01'::uuid, 'bulk', 'send@example.com', NULL::text,
                            NULL::jsonb, 'pending', 0, NULL::text),
                           ('00000000-0000-4000-8000-000000000c03'::uuid, 'bulk', 'failed@example.com', NULL,
                            NULL, 'failed', 0,
                            'mapping: metadata.age is a JSON number, not a string (metadata is flat: string values only)'),
                           ('00000000-0000-4000-8000-000000000c08'::uuid, 'bulk', 'moved@example.com',
                            'before.move@example.com', NULL, 'pending', 0, NULL)$$,
                  'captured rows (a failed one with the mapping''s problem), old_email the address Sendry has');
SELECT is_empty($$(SELECT * FROM public.sendry_contact_state EXCEPT SELECT * FROM state_before)
                  UNION ALL (SELECT * FROM state_before EXCEPT SELECT * FROM public.sendry_contact_state)$$,
                'neither wrote sendry_contact_state');
SELECT results_eq($$SELECT * FROM public.sendry_enqueue_contacts('{}', 'bulk')$$, $$VALUES (0, 0)$$,
                  'no users: nothing');

SELECT * FROM finish();
ROLLBACK;
