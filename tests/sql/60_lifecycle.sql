-- A user's life as GoTrue writes it, under each setting of public.sendry_settings:
-- sign-up, confirmation, login, email change, soft and hard delete.
-- Logged in as supabase_admin only to switch roles: GoTrue is supabase_auth_admin with
-- search_path auth (unqualified `users`), the operator who changes the settings is
-- postgres (as in Supabase's SQL editor). The outbox is read and emptied as the admin.
-- Every settings change is undone by the final ROLLBACK.
\connect - supabase_admin
\set as_gotrue 'SET ROLE supabase_auth_admin; SET search_path = auth;'
\set as_owner 'SET ROLE postgres; RESET search_path;'
\set as_admin 'RESET ROLE; RESET search_path;'
BEGIN;
SELECT plan(40);

SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'the outbox starts empty');

-- 1. Settings: one row with the defaults; a second row and bad values are rejected.
:as_owner
SELECT results_eq('SELECT singleton, sync_on, on_delete FROM public.sendry_settings',
                  $$VALUES (true, 'signup', 'delete_contact')$$,
                  'one settings row: sync_on signup, on_delete delete_contact');
SELECT throws_ok('INSERT INTO public.sendry_settings DEFAULT VALUES', '23505', NULL,
                 'a second settings row is rejected (unique violation)');
SELECT throws_ok($$INSERT INTO public.sendry_settings (singleton, sync_on) VALUES (false, 'confirmed')$$, '23514', NULL,
                 'a second settings row with singleton = false is rejected (check violation)');
SELECT throws_ok($$UPDATE public.sendry_settings SET sync_on = 'verified'$$, '23514', NULL,
                 'sync_on outside signup|confirmed is rejected');
SELECT throws_ok($$UPDATE public.sendry_settings SET on_delete = 'purge'$$, '23514', NULL,
                 'on_delete outside delete_contact|remove_from_audience|keep is rejected');
SELECT throws_ok('UPDATE public.sendry_settings SET on_delete = NULL', '23502', NULL, 'on_delete may not be NULL');
SELECT is((SELECT count(*) FROM public.sendry_settings), 1::bigint, 'still exactly one settings row');

-- 2. Confirmed-only mode.
UPDATE public.sendry_settings SET sync_on = 'confirmed', updated_at = now();
SELECT is((SELECT sync_on FROM public.sendry_settings), 'confirmed', 'postgres can switch to confirmed-only mode');

-- An email sign-up, not confirmed yet: INSERT, then the role UPDATE.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, encrypted_password, confirmation_token,
                   confirmation_sent_at, raw_app_meta_data, raw_user_meta_data, is_sso_user,
                   is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000601',
        'authenticated', '', 'unconfirmed@example.com', '$2a$10$abcdefghijklmnopqrstuv', 'token',
        now(), '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Una", "last_name": "Confirmed"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000601';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'confirmed-only: an unconfirmed sign-up (INSERT and role UPDATE) enqueues nothing');

-- The confirmation.
:as_gotrue
UPDATE users SET email_confirmed_at = now(), confirmation_token = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000601';
:as_admin
SELECT results_eq($$SELECT user_id, op, email, old_email, status FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000601'::uuid, 'upsert', 'unconfirmed@example.com',
                            NULL::text, 'pending')$$,
                  'confirmed-only: the confirmation enqueues exactly one upsert');
SELECT is((SELECT payload FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000601'::uuid])),
          '{"email": "unconfirmed@example.com", "first_name": "Una", "last_name": "Confirmed",
            "metadata": {"supabase_user_id": "00000000-0000-4000-8000-000000000601", "signup_source": "supabase"}}'::jsonb,
          'confirmed-only: the claim renders the usual contact payload');

-- A later login.
:as_gotrue
UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000601';
:as_admin
SELECT is((SELECT count(*) FROM public.sendry_outbox), 1::bigint,
          'confirmed-only: a login after the confirmation enqueues nothing more');
DELETE FROM public.sendry_outbox;

-- An OAuth sign-up, confirmed in its INSERT.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000602',
        'authenticated', '', 'oauth@example.com', now(), '{"provider": "github", "providers": ["github"]}',
        '{"full_name": "Otto Auth", "email_verified": true}', false, false, now(), now());
:as_admin
SELECT results_eq($$SELECT o.user_id, o.op, o.email, r.payload ->> 'first_name'
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000602'::uuid, 'upsert', 'oauth@example.com', 'Otto')$$,
                  'confirmed-only: a sign-up already confirmed (OAuth) enqueues at once');
:as_gotrue
UPDATE users SET role = 'authenticated', last_sign_in_at = now(), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000602';
:as_admin
SELECT is((SELECT count(*) FROM public.sendry_outbox), 1::bigint,
          'confirmed-only: its role UPDATE enqueues nothing more');
DELETE FROM public.sendry_outbox;

-- An unconfirmed user's email change is not synced either.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000603',
        'authenticated', 'authenticated', 'typo@example.con', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now());
UPDATE users SET email = 'fixed@example.com', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000603';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'confirmed-only: an unconfirmed user''s sign-up and email change enqueue nothing');

-- 3. Sign-up mode again: the sign-up enqueues, its confirmation adds nothing.
:as_owner
UPDATE public.sendry_settings SET sync_on = 'signup', updated_at = now();
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000604',
        'authenticated', '', 'early@example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Early"}', false, false, now(), now());
UPDATE users SET role = 'authenticated', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000604';
:as_admin
SELECT results_eq($$SELECT user_id, op, email FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000604'::uuid, 'upsert', 'early@example.com')$$,
                  'signup mode: an unconfirmed sign-up enqueues one upsert');
:as_gotrue
UPDATE users SET email_confirmed_at = now(), confirmation_token = '', updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000604';
:as_admin
SELECT results_eq($$SELECT user_id, op, payload IS NULL FROM public.sendry_outbox ORDER BY id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000604'::uuid, 'upsert', true),
                           ('00000000-0000-4000-8000-000000000604'::uuid, 'upsert', true)$$,
                  'signup mode: the confirmation captures the user again (the claim renders both rows as one contact)');
DELETE FROM public.sendry_outbox;

-- 4. Email change, as GoTrue makes it: two UPDATEs. The stored addresses are mixed-case
--    here (imported users) to show both are trimmed and lower-cased.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000611',
        'authenticated', 'authenticated', ' Old.Address@Example.COM', now(),
        '{"provider": "email", "providers": ["email"]}', '{"first_name": "Mo", "last_name": "Ver"}',
        false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000612',
        'authenticated', 'authenticated', 'case@example.com', now(),
        '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
:as_admin
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET email_change = 'New.Address@Example.com', email_change_token_new = 'token-new',
                 email_change_sent_at = now(), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000611';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'email change, first UPDATE (email_change recorded): nothing');
:as_gotrue
UPDATE users SET email = 'New.Address@Example.com', email_change = '', email_change_token_new = '',
                 email_change_confirm_status = 0, updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000611';
:as_admin
SELECT results_eq($$SELECT o.user_id, o.op, o.email, o.old_email, r.payload ->> 'email'
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000611'::uuid, 'upsert', 'new.address@example.com',
                            'old.address@example.com', 'new.address@example.com')$$,
                  'email change, second UPDATE: one upsert, email the new address, old_email the old one, lower-cased');
DELETE FROM public.sendry_outbox;
-- Sendry accepted 612's contact (what the worker's completion writes).
INSERT INTO public.sendry_contact_state (user_id, email, audiences, contact_hash)
SELECT r.user_id, r.email, r.audiences, r.hash
  FROM public.sendry_claim_render(ARRAY['00000000-0000-4000-8000-000000000612'::uuid]) r;
:as_gotrue
UPDATE users SET email = 'Case@Example.com', updated_at = now() WHERE id = '00000000-0000-4000-8000-000000000612';
:as_admin
SELECT results_eq($$SELECT o.email, o.old_email, r.verdict
                     FROM public.sendry_outbox o, public.sendry_claim_render(ARRAY[o.user_id]) r$$,
                  $$VALUES ('case@example.com', NULL::text, 'same')$$,
                  'an email change in case only: captured with no old_email, and the claim finds the contact the same');
DELETE FROM public.sendry_outbox;

-- 5. Hard delete: GoTrue's DELETE FROM users (identities cascade).
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000621',
        'authenticated', 'authenticated', 'Gone@Example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000622',
        'authenticated', 'authenticated', 'leaves.audience@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000623',
        'authenticated', 'authenticated', 'kept@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000624',
        'authenticated', 'authenticated', NULL, '{}', '{}', false, true, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000625',
        'authenticated', 'authenticated', NULL, '{"provider": "phone", "providers": ["phone"]}', '{}',
        false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000626',
        'authenticated', 'authenticated', 'bulk.a@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000627',
        'authenticated', 'authenticated', 'bulk.b@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now());
UPDATE users SET phone = '15550006250' WHERE id = '00000000-0000-4000-8000-000000000625';
INSERT INTO identities (user_id, provider, identity_data)
VALUES ('00000000-0000-4000-8000-000000000621', 'email', '{"sub": "00000000-0000-4000-8000-000000000621"}');
:as_admin
DELETE FROM public.sendry_outbox;

:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000621';
:as_admin
SELECT ok(NOT EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000621')
          AND NOT EXISTS (SELECT 1 FROM auth.identities WHERE user_id = '00000000-0000-4000-8000-000000000621'),
          'the hard delete went through (and cascaded to identities)');
SELECT results_eq($$SELECT user_id, op, email, old_email, payload, status FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000621'::uuid, 'delete', 'gone@example.com', NULL::text,
                            '{"delete_mode": "delete_contact"}'::jsonb, 'pending')$$,
                  'a hard delete enqueues one delete of the old address with delete_mode delete_contact');
DELETE FROM public.sendry_outbox;

:as_owner
UPDATE public.sendry_settings SET on_delete = 'remove_from_audience', updated_at = now();
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000622';
:as_admin
SELECT results_eq($$SELECT user_id, op, email, payload FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000622'::uuid, 'delete', 'leaves.audience@example.com',
                            '{"delete_mode": "remove_from_audience"}'::jsonb)$$,
                  'on_delete remove_from_audience: the delete row says so');
DELETE FROM public.sendry_outbox;

:as_owner
UPDATE public.sendry_settings SET on_delete = 'keep', updated_at = now();
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000623';
:as_admin
SELECT ok(NOT EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000623'),
          'on_delete keep: the hard delete went through');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'on_delete keep: a hard delete enqueues nothing');

:as_owner
UPDATE public.sendry_settings SET on_delete = 'delete_contact', updated_at = now();
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000624';
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000625';
:as_admin
SELECT ok(NOT EXISTS (SELECT 1 FROM auth.users
                       WHERE id IN ('00000000-0000-4000-8000-000000000624', '00000000-0000-4000-8000-000000000625')),
          'deleting an anonymous and a phone-only user succeeds');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'deleting an anonymous or a phone-only user enqueues nothing');

:as_gotrue
DELETE FROM users WHERE id IN ('00000000-0000-4000-8000-000000000626', '00000000-0000-4000-8000-000000000627');
:as_admin
SELECT results_eq($$SELECT user_id, op, email FROM public.sendry_outbox ORDER BY user_id$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000626'::uuid, 'delete', 'bulk.a@example.com'),
                           ('00000000-0000-4000-8000-000000000627'::uuid, 'delete', 'bulk.b@example.com')$$,
                  'two users deleted in one statement: two delete rows');
DELETE FROM public.sendry_outbox;

-- 6. Soft delete: deleted_at set and email overwritten with a hash, in one UPDATE.
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000631',
        'authenticated', 'authenticated', 'Soft@Example.com', '{"provider": "email", "providers": ["email"]}',
        '{"first_name": "Soft"}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000632',
        'authenticated', 'authenticated', 'soft.kept@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000633',
        'authenticated', 'authenticated', NULL, '{}', '{}', false, true, now(), now());
:as_admin
DELETE FROM public.sendry_outbox;
:as_gotrue
UPDATE users SET deleted_at = now(), phone = NULL, raw_user_meta_data = '{}',
                 email = encode(sha256(convert_to(id::text || email, 'UTF8')), 'hex'), updated_at = now()
 WHERE id = '00000000-0000-4000-8000-000000000631';
:as_admin
SELECT ok((SELECT deleted_at IS NOT NULL AND email NOT LIKE '%@%' FROM auth.users
            WHERE id = '00000000-0000-4000-8000-000000000631'), 'the soft delete went through');
SELECT results_eq($$SELECT user_id, op, email, old_email, payload FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000631'::uuid, 'delete', 'soft@example.com', NULL::text,
                            '{"delete_mode": "delete_contact"}'::jsonb)$$,
                  'a soft delete enqueues one delete of the previous address, lower-cased');
SELECT is_empty($$SELECT 1 FROM public.sendry_outbox WHERE op = 'upsert' OR email NOT LIKE '%@%'$$,
                'a soft delete enqueues no upsert, and the hash is never enqueued');
DELETE FROM public.sendry_outbox;

-- The soft-deleted user is then hard-deleted: already gone from Sendry, nothing more.
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000631';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'the hard delete of a soft-deleted user enqueues nothing');

-- A soft delete with on_delete keep, and of an anonymous user: nothing.
:as_owner
UPDATE public.sendry_settings SET on_delete = 'keep', updated_at = now();
:as_gotrue
UPDATE users SET deleted_at = now(), email = encode(sha256(convert_to(id::text || email, 'UTF8')), 'hex')
 WHERE id = '00000000-0000-4000-8000-000000000632';
:as_owner
UPDATE public.sendry_settings SET on_delete = 'delete_contact', updated_at = now();
:as_gotrue
UPDATE users SET deleted_at = now() WHERE id = '00000000-0000-4000-8000-000000000633';
:as_admin
SELECT is((SELECT count(*) FROM auth.users WHERE deleted_at IS NOT NULL
            AND id IN ('00000000-0000-4000-8000-000000000632', '00000000-0000-4000-8000-000000000633')),
          2::bigint, 'both soft deletes went through');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'a soft delete under on_delete keep, or of an anonymous user, enqueues nothing');

-- 7. Confirmed-only mode: a user whose address was never confirmed was never sent, so
--    deleting them must not delete a Sendry contact of that address (possibly someone
--    else's: that is what confirmed-only mode guards against). A confirmed one is deleted.
:as_owner
UPDATE public.sendry_settings SET sync_on = 'confirmed', updated_at = now();
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data,
                   raw_user_meta_data, is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000651',
        'authenticated', 'authenticated', 'not.mine@example.com', NULL,
        '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000652',
        'authenticated', 'authenticated', 'not.mine.either@example.com', NULL,
        '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000653',
        'authenticated', 'authenticated', 'confirmed.leaver@example.com', now(),
        '{"provider": "email", "providers": ["email"]}', '{}', false, false, now(), now());
:as_admin
DELETE FROM public.sendry_outbox;
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000651';
UPDATE users SET deleted_at = now(), email = md5(email) WHERE id = '00000000-0000-4000-8000-000000000652';
:as_admin
SELECT is_empty('SELECT 1 FROM public.sendry_outbox',
                'confirmed-only: deleting (hard or soft) a user never confirmed enqueues nothing');
:as_gotrue
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000653';
:as_admin
SELECT results_eq($$SELECT user_id, op, email, payload FROM public.sendry_outbox$$,
                  $$VALUES ('00000000-0000-4000-8000-000000000653'::uuid, 'delete', 'confirmed.leaver@example.com',
                            '{"delete_mode": "delete_contact"}'::jsonb)$$,
                  'confirmed-only: deleting a confirmed user enqueues the delete');
DELETE FROM public.sendry_outbox;
:as_owner
UPDATE public.sendry_settings SET sync_on = 'signup', updated_at = now();
:as_admin

-- 8. A delete never fails because of the outbox: the error becomes a WARNING (its text
--    is checked by tests/test_sql_lifecycle.py).
SET LOCAL client_min_messages = error;
ALTER TABLE public.sendry_outbox ADD CONSTRAINT sendry_test_reject_everything CHECK (false) NOT VALID;
:as_gotrue
INSERT INTO users (instance_id, id, aud, role, email, raw_app_meta_data, raw_user_meta_data,
                   is_sso_user, is_anonymous, created_at, updated_at)
VALUES ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000641',
        'authenticated', 'authenticated', 'doomed@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now()),
       ('00000000-0000-0000-0000-000000000000', '00000000-0000-4000-8000-000000000642',
        'authenticated', 'authenticated', 'soft.doomed@example.com', '{"provider": "email", "providers": ["email"]}',
        '{}', false, false, now(), now());
DELETE FROM users WHERE id = '00000000-0000-4000-8000-000000000641';
UPDATE users SET deleted_at = now(), email = md5(email) WHERE id = '00000000-0000-4000-8000-000000000642';
:as_admin
ALTER TABLE public.sendry_outbox DROP CONSTRAINT sendry_test_reject_everything;
SET LOCAL client_min_messages = notice;
SELECT ok(NOT EXISTS (SELECT 1 FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000641'),
          'a hard delete succeeds although its outbox row cannot be written');
SELECT ok((SELECT deleted_at IS NOT NULL FROM auth.users WHERE id = '00000000-0000-4000-8000-000000000642'),
          'a soft delete succeeds although its outbox row cannot be written');
SELECT is_empty('SELECT 1 FROM public.sendry_outbox', 'nothing was enqueued');

SELECT * FROM finish();
ROLLBACK;
