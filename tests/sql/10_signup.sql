-- Sign-ups as GoTrue makes them enqueue exactly the right rows with exactly the right
-- payloads. GoTrue connects as supabase_auth_admin with search_path=auth, uses the
-- unqualified table name, inserts with role = '' and then, in the same transaction,
-- UPDATEs role to 'authenticated' (which must not enqueue a second row).
-- Logged in as the superuser supabase_admin only to switch to supabase_auth_admin and back
-- and to read the outbox. (Payload checks take the first row per user: duplicates are
-- caught by the results_eq above them, with a clearer message than a subquery error.)
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(30);

SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'the outbox starts empty');

:as_gotrue

-- 1. Email sign-up with first_name/last_name, plus non-name metadata of other JSON types
--    (and an "unsubscribed" key that must never reach the payload).
INSERT INTO users (instance_id, id, aud, role, email, encrypted_password, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000001',
        'authenticated', '', 'ada@example.com', '$2a$10$abcdefghijklmnopqrstuv',
        '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Ada", "last_name": "Lovelace", "newsletter": true, "age": 36, "unsubscribed": false}',
        false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000001';

-- 2. OAuth sign-up with only full_name (split at the first space).
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000002',
        'authenticated', '', 'ada.king@example.com', now(),
        '{"provider": "github", "providers": ["github"]}',
        '{"avatar_url": "https://avatars.example.com/u/1", "email": "ada.king@example.com",
          "email_verified": true, "full_name": "Ada King Lovelace", "iss": "https://api.github.com",
          "phone_verified": false, "provider_id": "1", "sub": "1", "user_name": "ada"}',
        false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000002';

-- 3. OAuth sign-up with only `name`.
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000003',
        'authenticated', '', 'grace@example.com', now(),
        '{"provider": "google", "providers": ["google"]}',
        '{"name": "Grace Hopper", "picture": "https://example.com/g.png", "sub": "g-123", "email_verified": true}',
        false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000003';

-- 4. A one-word `name`: a first name and no last_name key.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000004',
        'authenticated', '', 'cher@example.com', '{"provider": "google", "providers": ["google"]}',
        '{"name": "Cher"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000004';

-- 5. Unicode and an apostrophe.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000005',
        'authenticated', '', 'zoe@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Zoë", "last_name": "O''Brien-Łukasz"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000005';

-- 6. A double quote in the name.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000006',
        'authenticated', '', 'dwayne@example.com', '{"provider": "github", "providers": ["github"]}',
        '{"full_name": "Dwayne \"The Rock\" Johnson"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000006';

-- 7. Upper case and surrounding spaces in the email (and a padded first name, empty last name).
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000007',
        'authenticated', '', '  Mixed.Case@Example.COM  ', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "  Mixed  ", "last_name": ""}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000007';

-- 8. An anonymous user: no email, is_anonymous, empty app metadata.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000008',
        'authenticated', '', NULL, '{}', '{}', false, true, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000008';

-- 9. A phone-only user.
INSERT INTO users (instance_id, id, aud, role, email, phone, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000009',
        'authenticated', '', NULL, '15550001111', '{"provider": "phone", "providers": ["phone"]}',
        '{}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000009';

-- 10. No user metadata at all (admin API): no names in the payload.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000010',
        'authenticated', '', 'nometa@example.com', '{"provider": "email", "providers": ["email"]}',
        NULL, false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000010';

-- 11, 12. Two users in one statement (an import): the statement trigger takes both.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000011',
        'authenticated', '', 'one@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "One"}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000012',
        'authenticated', '', 'two@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"last_name": "Two"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now()
 WHERE id IN ('00000000-0000-4000-8000-000000000011', '00000000-0000-4000-8000-000000000012');

-- 13. An anonymous user that carries an email (e.g. imported): still anonymous, not sent.
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000013',
        'authenticated', '', 'anon.with.email@example.com', '{}', '{}', false, true, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000013';

:as_admin

SELECT is((SELECT count(*) FROM auth.users WHERE role = 'authenticated'), 13::bigint,
          'all 13 sign-ups (including the anonymous and phone-only ones) succeeded and were updated');

SELECT results_eq(
    $$SELECT user_id, op, email, status, attempts FROM public.sendry_outbox ORDER BY user_id$$,
    $$VALUES ('00000000-0000-4000-8000-000000000001'::uuid, 'upsert', 'ada@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000002'::uuid, 'upsert', 'ada.king@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000003'::uuid, 'upsert', 'grace@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000004'::uuid, 'upsert', 'cher@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000005'::uuid, 'upsert', 'zoe@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000006'::uuid, 'upsert', 'dwayne@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000007'::uuid, 'upsert', 'mixed.case@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000010'::uuid, 'upsert', 'nometa@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000011'::uuid, 'upsert', 'one@example.com', 'pending', 0),
             ('00000000-0000-4000-8000-000000000012'::uuid, 'upsert', 'two@example.com', 'pending', 0)$$,
    'exactly one pending upsert per user with an email; none for the role update, the anonymous or the phone-only user');

SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000001'::uuid])),
          '{"email": "ada@example.com", "first_name": "Ada", "last_name": "Lovelace",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000001", "signup_source": "supabase"}}'::jsonb,
          'email sign-up: first_name and last_name from the metadata, nothing else copied');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000002'::uuid])),
          '{"email": "ada.king@example.com", "first_name": "Ada", "last_name": "King Lovelace",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000002", "signup_source": "supabase"}}'::jsonb,
          'OAuth full_name "Ada King Lovelace": first Ada, last "King Lovelace"');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000003'::uuid])),
          '{"email": "grace@example.com", "first_name": "Grace", "last_name": "Hopper",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000003", "signup_source": "supabase"}}'::jsonb,
          'OAuth with only name: split into first and last');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000004'::uuid])),
          '{"email": "cher@example.com", "first_name": "Cher",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000004", "signup_source": "supabase"}}'::jsonb,
          'one-word name: first_name only, no last_name key');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000005'::uuid])),
          '{"email": "zoe@example.com", "first_name": "Zoë", "last_name": "O''Brien-Łukasz",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000005", "signup_source": "supabase"}}'::jsonb,
          'unicode and an apostrophe survive unchanged');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000006'::uuid])),
          '{"email": "dwayne@example.com", "first_name": "Dwayne", "last_name": "\"The Rock\" Johnson",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000006", "signup_source": "supabase"}}'::jsonb,
          'a double quote in the name survives unchanged');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000007'::uuid])),
          '{"email": "mixed.case@example.com", "first_name": "Mixed",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000007", "signup_source": "supabase"}}'::jsonb,
          'email trimmed and lower-cased, names trimmed, an empty last_name dropped');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000010'::uuid])),
          '{"email": "nometa@example.com",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000010", "signup_source": "supabase"}}'::jsonb,
          'NULL user metadata: no name keys');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000011'::uuid])),
          '{"email": "one@example.com", "first_name": "One",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000011", "signup_source": "supabase"}}'::jsonb,
          'first of two users inserted in one statement');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000012'::uuid])),
          '{"email": "two@example.com", "last_name": "Two",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000012", "signup_source": "supabase"}}'::jsonb,
          'second of two users inserted in one statement (last_name only)');

SELECT ok(EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000008' AND is_anonymous),
          'the anonymous user''s INSERT succeeded');
SELECT is_empty($$SELECT 1 FROM public.sendry_outbox WHERE user_id = '00000000-0000-4000-8000-000000000008'$$,
                'the anonymous user enqueued nothing');
SELECT is_empty($$SELECT 1 FROM public.sendry_outbox WHERE user_id = '00000000-0000-4000-8000-000000000013'$$,
                'an anonymous user with an email enqueued nothing');
SELECT ok(EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000009' AND phone = '15550001111'),
          'the phone-only user''s INSERT succeeded');
SELECT is_empty($$SELECT 1 FROM public.sendry_outbox WHERE user_id = '00000000-0000-4000-8000-000000000009'$$,
                'the phone-only user enqueued nothing');

-- What the trigger wrote: captured rows only (the claim renders them), no state.
SELECT is_empty($$SELECT id FROM public.sendry_outbox
                   WHERE payload IS NOT NULL OR class <> 'live' OR old_email IS NOT NULL OR last_error IS NOT NULL$$,
                'every row is captured: class live, payload NULL, no old_email, no error');
SELECT is_empty('SELECT 1 FROM public.sendry_contact_state',
                'the sign-ups wrote no sendry_contact_state row (the worker does, when Sendry accepts)');

-- What the claim renders for them (sendry_claim_render): the payloads above, and these.
CREATE TEMP TABLE rendered ON COMMIT DROP AS
SELECT o.id, o.email AS row_email, r.*
  FROM public.sendry_outbox o
  JOIN public.sendry_claim_render(ARRAY(SELECT user_id FROM public.sendry_outbox)) r ON r.user_id = o.user_id;
SELECT is((SELECT count(*) FROM rendered WHERE verdict = 'send' AND NOT known AND state_email IS NULL), 10::bigint,
          'the claim renders every captured row: verdict send, no state yet');
SELECT is_empty($$SELECT o.id, e.key FROM rendered o, jsonb_each(o.payload -> 'metadata') e
                   WHERE jsonb_typeof(e.value) <> 'string'$$,
                'every metadata value is a string');
SELECT is_empty($$SELECT id FROM rendered WHERE jsonb_typeof(payload -> 'metadata') IS DISTINCT FROM 'object'$$,
                'every payload has a metadata object');
SELECT is_empty($$SELECT id FROM rendered
                   WHERE payload ? 'unsubscribed' OR payload -> 'metadata' ? 'unsubscribed'$$,
                'no payload has the key "unsubscribed" (an upsert must not re-subscribe anyone)');
SELECT is_empty($$SELECT o.id, k FROM rendered o, jsonb_object_keys(o.payload) k
                   WHERE k NOT IN ('email', 'first_name', 'last_name', 'metadata')$$,
                'payload keys are only email, first_name, last_name, metadata');
SELECT is_empty($$SELECT id FROM rendered WHERE payload ->> 'email' IS DISTINCT FROM row_email
                                              OR email IS DISTINCT FROM row_email$$,
                'the rendered email is the row''s email (lower(btrim(...)) of the address)');
SELECT is_empty($$SELECT o.id FROM rendered o JOIN auth.users u ON u.id = o.user_id
                   WHERE o.payload IS DISTINCT FROM public.sendry_contact_payload(u)$$,
                'the claim''s payload is sendry_contact_payload(user) (what a backfill sends)');

-- The trigger reads no mapping: with a mapping that raises on every row, a GoTrue sign-up
-- still enqueues its captured row, and no error is recorded.
CREATE FUNCTION public.test_mapping_raises(uuid) RETURNS text LANGUAGE plpgsql AS
$$ BEGIN RAISE EXCEPTION 'test: the mapping was read for %', $1; END $$;
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id, public.test_mapping_raises(u.id) AS email, NULL::text AS first_name,
       NULL::text AS last_name, NULL::jsonb AS metadata, NULL::text[] AS audiences
  FROM auth.users u;
SELECT throws_like($$SELECT * FROM public.sendry_contacts WHERE user_id = '00000000-0000-4000-8000-000000000001'$$,
                   'test: the mapping was read%', 'the replaced mapping raises when read');
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000014',
        'authenticated', '', 'no.mapping@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "No"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000014';
UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000014';
:as_admin
SELECT results_eq($$SELECT op, class, email, payload IS NULL, status FROM public.sendry_outbox
                     WHERE user_id = '00000000-0000-4000-8000-000000000014'$$,
                  $$VALUES ('upsert', 'live', 'no.mapping@example.com', true, 'pending')$$,
                  'a GoTrue sign-up with a mapping that raises enqueues its one captured row (the sign-in after it nothing)');
SELECT is_empty('SELECT 1 FROM public.sendry_enqueue_errors', 'and no trigger error was recorded');

SELECT * FROM finish();
ROLLBACK;
