-- sendry-sync: remove everything sql/install.sql created, including the outbox, the inbox,
-- the settings and their rows, the triggers sendry_watch() put on the project's tables,
-- and the contact mapping public.sendry_contacts (yours, if you replaced it: keep a copy
-- first, SELECT pg_get_viewdef('public.sendry_contacts')).
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
DECLARE
    t record;
BEGIN
    IF pg_catalog.to_regprocedure('public.sendry_watched_changed()') IS NOT NULL THEN
        FOR t IN
            SELECT tg.tgname, tg.tgrelid::regclass AS rel FROM pg_catalog.pg_trigger tg
             WHERE tg.tgfoid = 'public.sendry_watched_changed()'::regprocedure
        LOOP
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
        END LOOP;
    END IF;
    IF pg_catalog.to_regclass('auth.users') IS NOT NULL THEN
        BEGIN
            DROP TRIGGER IF EXISTS sendry_sync_users_insert ON auth.users;
            DROP TRIGGER IF EXISTS sendry_sync_users_update ON auth.users;
            DROP TRIGGER IF EXISTS sendry_sync_users_updated ON auth.users;
            DROP TRIGGER IF EXISTS sendry_sync_users_delete ON auth.users;
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'sendry-sync: role % may not drop triggers on auth.users', current_user
                USING HINT = 'In Supabase run uninstall.sql in the SQL editor (supautils allows it); '
                             'elsewhere run it as the owner of auth.users or a superuser.';
        END;
        DROP FUNCTION IF EXISTS public.sendry_contact_payload(auth.users);
        DROP FUNCTION IF EXISTS public.sendry_user_is_synced(auth.users, text);
    END IF;
END
$uninstall$;

DROP VIEW IF EXISTS public.sendry_watched_tables;
DROP FUNCTION IF EXISTS public.sendry_rate_take(text, double precision, double precision, integer, double precision);
DROP FUNCTION IF EXISTS public.sendry_rate_pause(text, double precision);
DROP FUNCTION IF EXISTS public.sendry_watched_changed();
DROP FUNCTION IF EXISTS public.sendry_watch(regclass, name);
DROP FUNCTION IF EXISTS public.sendry_unwatch(regclass);
DROP FUNCTION IF EXISTS public.sendry_reconcile_contacts(integer);
DROP FUNCTION IF EXISTS public.sendry_enqueue_contacts(uuid[], text, text, boolean);
DROP FUNCTION IF EXISTS public.sendry_claim_render(uuid[]);
DROP FUNCTION IF EXISTS public.sendry_changed_contacts(uuid[], text);
DROP FUNCTION IF EXISTS public.sendry_compared_contacts(uuid[], text);
DROP FUNCTION IF EXISTS public.sendry_render_contacts(uuid[]);
DROP FUNCTION IF EXISTS public.sendry_contact_body(text, text, text, jsonb, text[]);
DROP FUNCTION IF EXISTS public.sendry_contact_problem(text, text, jsonb, text[]);
DROP VIEW IF EXISTS public.sendry_contacts;
DROP FUNCTION IF EXISTS public.sendry_auth_users_inserted();
DROP FUNCTION IF EXISTS public.sendry_auth_users_updated();
DROP FUNCTION IF EXISTS public.sendry_auth_users_noted();
DROP FUNCTION IF EXISTS public.sendry_auth_users_deleted();
DROP FUNCTION IF EXISTS public.sendry_inbox_receive(text, text, jsonb, text);
DROP FUNCTION IF EXISTS public.sendry_inbox_apply(bigint);
DROP FUNCTION IF EXISTS public.sendry_track(text, uuid, jsonb, boolean);
DROP FUNCTION IF EXISTS public.sendry_track_email(text, text, jsonb, boolean);
DROP FUNCTION IF EXISTS public.sendry_enqueue_event(text, uuid, text, text, jsonb, text, boolean);
DROP FUNCTION IF EXISTS public.sendry_event_problem(text, jsonb);
DROP FUNCTION IF EXISTS public.sendry_event_id(bigint);
DROP FUNCTION IF EXISTS public.sendry_user_event_payload(uuid, text, text);
DROP VIEW IF EXISTS public.sendry_outbox_stats;
DROP TABLE IF EXISTS public.sendry_outbox;
DROP TABLE IF EXISTS public.sendry_inbox;
DROP TABLE IF EXISTS public.sendry_settings;
DROP TABLE IF EXISTS public.sendry_sync_state;
DROP TABLE IF EXISTS public.sendry_rate_budget;
DROP TABLE IF EXISTS public.sendry_contact_state;
DROP TABLE IF EXISTS public.sendry_enqueue_errors;
DROP TABLE IF EXISTS public.sendry_changed_users;
DROP FUNCTION IF EXISTS public.sendry_outbox_notify_insert();
DROP FUNCTION IF EXISTS public.sendry_outbox_notify_update();
DROP FUNCTION IF EXISTS public.sendry_settings_changed();
DROP FUNCTION IF EXISTS public.sendry_settings_compile();
DROP FUNCTION IF EXISTS public.sendry_settings_sync_on();
DROP FUNCTION IF EXISTS public.sendry_settings_on_delete();
DROP FUNCTION IF EXISTS public.sendry_settings_events();
DROP FUNCTION IF EXISTS public.sendry_schema_version();
DROP FUNCTION IF EXISTS public.sendry_migrate_step(text, text, text, text[]);
DROP FUNCTION IF EXISTS public.sendry_migrate_trigger(regclass, name, text);
DROP FUNCTION IF EXISTS public.sendry_migrate_lockdown();
DROP FUNCTION IF EXISTS public.sendry_migrate_missing(text);
DROP FUNCTION IF EXISTS public.sendry_migrate_fingerprint(text);
DROP FUNCTION IF EXISTS public.sendry_migrate_lock_holders();
DROP TABLE IF EXISTS public.sendry_migrations;
DROP TABLE IF EXISTS public.sendry_migrate_triggers;

COMMIT;
