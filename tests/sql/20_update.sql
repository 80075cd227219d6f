-- UPDATEs of auth.users as GoTrue makes them, with the default settings (sync_on
-- 'signup', on_delete 'delete_contact'): a change of a column a contact can depend on
-- captures the user (one row, payload NULL: the claim renders it, and completes it without
-- a request when the contact did not change); an email change carries the previous address;
-- a soft delete enqueues the deletion of the previous address. Logins, GoTrue's role
-- update and a pending email change run no trigger function and enqueue nothing.
-- (Confirmed-only mode and the other on_delete settings: 60_lifecycle.sql.)
-- Logged in as supabase_admin to switch to supabase_auth_admin (GoTrue) and back.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(17);

-- Setup: sign-ups as GoTrue makes them.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, phone, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000101', 'authenticated', '',
        'before@example.com', NULL, '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Ada", "last_name": "Lovelace"}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000102', 'authenticated', '',
        NULL, NULL, '{}', '{}', false, true, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000103', 'authenticated', '',
        NULL, NULL, '{}', '{}', false, true, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000104', 'authenticated', '',
        'confirm@example.com', NULL, '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000105', 'authenticated', '',
        'delete.me@example.com', NULL, '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Del"}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000106', 'authenticated', '',
        'bulk1@example.com', NULL, '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000107', 'authenticated', '',
        'bulk2@example.com', NULL, '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000108', 'authenticated', '',
        NULL, '15550002222', '{"provider": "phone", "providers": ["phone"]}', '{}', false, false, now(), now());
UPDATE users SET role = 'authenticated' WHERE id::text LIKE '00000000-0000-4000-8000-0000000001%';
:as_admin
SELECT is((SELECT count(*) FROM public.sendry_outbox), 5::bigint, 'setup: five users with an email enqueued');
DELETE FROM public.sendry_outbox;
-- What the worker's completion writes when Sendry accepts these users' contacts.
CREATE FUNCTION pg_temp.accept(p_ids uuid[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO public.sendry_contact_state AS s (user_id, email, audiences, contact_hash)
    SELECT r.user_id, r.email, r.audiences, r.hash FROM public.sendry_claim_render(p_ids) r
     WHERE r.verdict IN ('send', 'same')
    ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, audiences = EXCLUDED.audiences,
                                        contact_hash = EXCLUDED.contact_hash, updated_at = now()
$$;
SELECT pg_temp.accept(ARRAY(SELECT id FROM auth.users));

-- Email change, first transaction: GoTrue records the pending change; email is unchanged.
:as_gotrue
UPDATE users SET email_change = 'after@example.com', email_change_token_new = 'token-new',
                 email_change_sent_at = now(), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000101';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'recording a pending email change enqueues nothing');

-- Email change, second transaction: email replaced.
:as_gotrue
UPDATE users SET email = 'after@example.com', email_change = '', email_change_token_new = '',
                 email_change_confirm_status = 0, updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000101';
:as_admin
SELECT results_eq($$SELECT user_id, op, email, old_email, status FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000101'::uuid, 'upsert', 'after@example.com',
                            'before@example.com', 'pending')$$,
                  'an email change enqueues one upsert with the new email and the old one in old_email');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000101'::uuid])),
          '{"email": "after@example.com", "first_name": "Ada", "last_name": "Lovelace",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000101", "signup_source": "supabase"}}'::jsonb,
          'the claim''s payload of an email change carries the new email');
DELETE FROM public.sendry_outbox;

-- An anonymous user becomes permanent in one UPDATE.
:as_gotrue
UPDATE users SET email = 'upgraded@example.com', is_anonymous = false,
                 raw_app_meta_data = '{"provider": "email", "providers": ["email"]}', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000102';
:as_admin
SELECT results_eq($$SELECT o.user_id, o.email, r.payload ->> 'email', o.old_email
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000102'::uuid, 'upgraded@example.com', 'upgraded@example.com',
                            NULL::text)$$,
                  'an anonymous user becoming permanent (email set, is_anonymous false) enqueues, with no old_email');
DELETE FROM public.sendry_outbox;

-- An anonymous user gets an email first (still anonymous), then becomes permanent.
:as_gotrue
UPDATE users SET email = 'later@example.com', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000103';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'an email on a still-anonymous user enqueues nothing');
:as_gotrue
UPDATE users SET is_anonymous = false, email_confirmed_at = now(), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000103';
:as_admin
SELECT results_eq($$SELECT user_id, email FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000103'::uuid, 'later@example.com')$$,
                  'is_anonymous true -> false with an email already set enqueues');
DELETE FROM public.sendry_outbox;

-- A confirmation and an app-metadata update: captured, and the claim finds the contact
-- Sendry has (verdict same: completed without a request). Logins: nothing at all.
:as_gotrue
UPDATE users SET email_confirmed_at = now(), confirmation_token = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000104';
:as_admin
SELECT results_eq($$SELECT o.op, o.email, o.payload IS NULL, r.verdict
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('upsert', 'confirm@example.com', true, 'same')$$,
                  'an UPDATE of email_confirmed_at captures the user; the claim finds the contact unchanged');
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET last_sign_in_at = now(), updated_at = now()
 WHERE id IN ('00000000-0000-4000-8000-000000000101', '00000000-0000-4000-8000-000000000104');
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'an UPDATE of last_sign_in_at (a sign-in) enqueues nothing');
:as_gotrue
UPDATE users SET role = 'authenticated', raw_app_meta_data = raw_app_meta_data || '{"providers": ["email", "google"]}',
                 email = email, updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000104';
:as_admin
SELECT results_eq($$SELECT o.user_id, o.old_email, r.verdict
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000104'::uuid, NULL::text, 'same')$$,
                  'role, app metadata and an unchanged email (email = email): one captured row, no old_email, the contact the same');
DELETE FROM public.sendry_outbox;

-- Soft delete: deleted_at set, email overwritten by a hash (never sent): the contact of
-- the previous address is deleted.
:as_gotrue
UPDATE users SET deleted_at = now(), phone = NULL, raw_user_meta_data = '{}',
                 email = encode(sha256(convert_to(id::text || email, 'UTF8')), 'hex'), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000105';
:as_admin
SELECT ok((SELECT deleted_at IS NOT NULL AND email NOT LIKE '%@%' FROM auth.users
            WHERE id = '00000000-0000-4000-8000-000000000105'), 'the soft delete went through');
SELECT results_eq($$SELECT user_id, op, email, old_email, payload FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000105'::uuid, 'delete', 'delete.me@example.com',
                            NULL::text, '{"delete_mode": "delete_contact"}'::jsonb)$$,
                  'a soft delete (email overwritten by a hash) enqueues one delete of the previous address, no upsert');
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET last_sign_in_at = now(), email = 'ghost@example.com'
 WHERE id = '00000000-0000-4000-8000-000000000105';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'a soft-deleted user is never enqueued again');

-- Email removed: nothing to send.
:as_gotrue
UPDATE users SET email = NULL, phone = '15550003333' WHERE id = '00000000-0000-4000-8000-000000000104';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'removing the email enqueues nothing');

-- Two email changes in one statement: two rows.
:as_gotrue
UPDATE users SET email = replace(email, 'bulk', 'moved'), updated_at = now()
 WHERE id IN ('00000000-0000-4000-8000-000000000106', '00000000-0000-4000-8000-000000000107');
:as_admin
SELECT results_eq($$SELECT user_id, email FROM public.sendry_outbox ORDER BY user_id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000106'::uuid, 'moved1@example.com'),
                           ('00000000-0000-4000-8000-000000000107'::uuid, 'moved2@example.com')$$,
                  'two email changes in one UPDATE statement enqueue two rows');
DELETE FROM public.sendry_outbox;

-- A phone-only user adds an email: set for the first time, enqueued (trimmed, lower-cased).
:as_gotrue
UPDATE users SET email = ' Phone.Person@Example.com ', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000108';
:as_admin
SELECT results_eq($$SELECT o.user_id, o.email, r.payload ->> 'email'
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000108'::uuid, 'phone.person@example.com', 'phone.person@example.com')$$,
                  'a phone-only user adding an email enqueues it, trimmed and lower-cased');
DELETE FROM public.sendry_outbox;

SELECT is((SELECT count(*) FROM auth.users WHERE id::text LIKE '00000000-0000-4000-8000-0000000001%'), 8::bigint,
          'every UPDATE above succeeded (all eight users still there)');

SELECT * FROM finish();
ROLLBACK;
