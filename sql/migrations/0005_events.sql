-- sendry-step: idempotent
-- Events (issue 18): the outbox carries events for Sendry's automations beside contacts.
--   sendry_settings.events  the built-in events from auth.users to emit, by name (none by
--                           default: this step changes nothing until the operator names one)
--   sendry_outbox.op        'event' besides 'upsert' and 'delete' (payload {name, payload})
--   sendry_outbox.deduped   on a sent event row: whether Sendry answered deduped: true
--   sendry_sync_state       key 'database_id': a random uuid made once, the first part of
--                           every event_id (public.sendry_event_id): stable for ever
-- Short locks only, each table's at most once, taken in the order the triggers on
-- auth.users take them (settings, then the outbox) so that a sign-up and this step never
-- deadlock: adding a nullable column or a column with a constant default rewrites
-- nothing; the widened op CHECK is added NOT VALID here (no scan under ACCESS EXCLUSIVE)
-- and validated by functions/events.sql in a transaction of its own, which holds only a
-- SHARE UPDATE EXCLUSIVE lock while it reads the outbox (writes go on). Each change is
-- made only when missing: running it again takes no lock and changes nothing.
DO $events$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'public.sendry_settings'::regclass AND attname = 'events'
                      AND NOT attisdropped) THEN
        ALTER TABLE public.sendry_settings
            ADD COLUMN events text[] NOT NULL DEFAULT '{}',
            ADD CONSTRAINT sendry_settings_events_check
                CHECK (events <@ ARRAY['user.signed_up', 'user.email_confirmed', 'user.became_permanent',
                                       'user.email_changed', 'user.deleted']::text[]);
        COMMENT ON COLUMN public.sendry_settings.events IS
            'sendry-sync: the built-in events from auth.users to send to Sendry (user.signed_up, user.email_confirmed, user.became_permanent, user.email_changed, user.deleted); none by default';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute
                    WHERE attrelid = 'public.sendry_outbox'::regclass AND attname = 'deduped'
                      AND NOT attisdropped) THEN
        ALTER TABLE public.sendry_outbox ADD COLUMN deduped boolean;
        COMMENT ON COLUMN public.sendry_outbox.deduped IS
            'sendry-sync: on a sent event row, true when Sendry answered deduped: true (its event_id was ingested before)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint
                    WHERE conrelid = 'public.sendry_outbox'::regclass AND conname = 'sendry_outbox_op_check'
                      AND pg_catalog.pg_get_constraintdef(oid) LIKE '%''event''%') THEN
        ALTER TABLE public.sendry_outbox
            DROP CONSTRAINT IF EXISTS sendry_outbox_op_check,
            ADD CONSTRAINT sendry_outbox_op_check CHECK (op IN ('upsert', 'delete', 'event')) NOT VALID;
    END IF;
END
$events$;

-- The database's identity in event ids: made once, never changed (a new one would give
-- an event already sent but not yet recorded a new event_id, and Sendry could not
-- dedupe it). A copy of the database (a restore, a branch) keeps it: its events dedupe
-- against the original's.
INSERT INTO public.sendry_sync_state (key, value)
VALUES ('database_id', pg_catalog.gen_random_uuid()::text)
ON CONFLICT (key) DO NOTHING;
