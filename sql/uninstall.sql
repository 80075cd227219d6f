-- sendry-sync: remove everything sql/install.sql created, including the outbox, the inbox,
-- the settings and their rows.
--
--   psql -v ON_ERROR_STOP=1 -f sql/uninstall.sql
--
-- Safe to run when nothing (or only part) is installed.
-- Dropping a trigger needs ownership of its table. In Supabase, supautils lets
-- `postgres` drop triggers on auth.users (drop_trigger_grants), so the SQL editor works;
-- on another PostgreSQL run this as the owner of auth.users or a superuser.

BEGIN;
SET LOCAL client_min_messages = warning;

DO $uninstall$
BEGIN
    IF pg_catalog.to_regclass('auth.users') IS NOT NULL THEN
        BEGIN
            DROP TRIGGER IF EXISTS sendry_sync_users_insert ON auth.users;
            DROP TRIGGER IF EXISTS sendry_sync_users_update ON auth.users;
            DROP TRIGGER IF EXISTS sendry_sync_users_delete ON auth.users;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'sendry-sync: role % may not drop triggers on auth.users', current_user
                USING HINT = 'In Supabase run uninstall.sql in the SQL editor (supautils allows it); '
                             'elsewhere run it as the owner of auth.users or a superuser.';
        END;
        DROP FUNCTION IF EXISTS public.sendry_contact_payload(auth.users);
    END IF;
END
$uninstall$;

DROP FUNCTION IF EXISTS public.sendry_auth_users_inserted();
DROP FUNCTION IF EXISTS public.sendry_auth_users_updated();
DROP FUNCTION IF EXISTS public.sendry_auth_users_deleted();
DROP FUNCTION IF EXISTS public.sendry_inbox_receive(text, text, jsonb, text);
DROP FUNCTION IF EXISTS public.sendry_inbox_apply(bigint);
DROP VIEW IF EXISTS public.sendry_outbox_stats;
DROP TABLE IF EXISTS public.sendry_outbox;
DROP TABLE IF EXISTS public.sendry_inbox;
DROP TABLE IF EXISTS public.sendry_settings;
DROP TABLE IF EXISTS public.sendry_sync_state;
DROP FUNCTION IF EXISTS public.sendry_outbox_notify_insert();
DROP FUNCTION IF EXISTS public.sendry_outbox_notify_update();
DROP FUNCTION IF EXISTS public.sendry_schema_version();

COMMIT;
