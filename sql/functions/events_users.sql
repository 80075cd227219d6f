-- sendry-step: requires auth.users
-- The application's own event for a user of auth.users, in its own transaction (a
-- rollback leaves nothing; a commit is sent even if the worker is down at the time):
--   SELECT sendry_track('trial_started', '6f1c...'::uuid, '{"plan": "pro"}');
-- Sent to the user's current address, after the contact rows enqueued before it. A user
-- whose address may not be sent (as for the contact: none found, deleted, anonymous,
-- without an address, not confirmed under sync_on = 'confirmed') is a problem like a bad
-- name or payload: a failed row with the reason and a WARNING, or with p_strict an error
-- (sendry_enqueue_event, functions/events.sql). Returns the outbox row's id.
CREATE OR REPLACE FUNCTION public.sendry_track(p_name text, p_user_id uuid,
                                               p_payload jsonb DEFAULT '{}',
                                               p_strict boolean DEFAULT false)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_email     text;
    v_anonymous boolean;
    v_deleted   boolean;
    v_confirmed boolean;
    v_sync_on   text;
    v_problem   text;
BEGIN
    SELECT u.email, COALESCE(u.is_anonymous, false), u.deleted_at IS NOT NULL, u.email_confirmed_at IS NOT NULL
      INTO v_email, v_anonymous, v_deleted, v_confirmed
      FROM auth.users u WHERE u.id = p_user_id;
    IF NOT FOUND THEN
        v_problem := CASE WHEN p_user_id IS NULL THEN 'event: the user id is NULL'
                          ELSE 'event: no user ' || p_user_id::text || ' in auth.users' END;
    ELSIF v_deleted THEN
        v_problem := 'event: the user is deleted';
        v_email := NULL;   -- GoTrue overwrote it with a hash: not an address
    ELSIF v_anonymous THEN
        v_problem := 'event: the user is anonymous';
    ELSIF NULLIF(pg_catalog.btrim(v_email), '') IS NULL THEN
        v_problem := 'event: the user has no address';
    ELSIF NOT v_confirmed THEN
        v_sync_on := public.sendry_settings_sync_on();   -- compiled: functions/settings.sql
        IF v_sync_on = 'confirmed' THEN
            v_problem := 'event: the user''s address is not confirmed (sync_on = confirmed)';
        END IF;
    END IF;
    RETURN public.sendry_enqueue_event('sendry_track', p_user_id, v_email, p_name, p_payload, v_problem, p_strict);
END
$$;

-- Who may call it: as sendry_track_email (functions/events.sql).
REVOKE ALL ON FUNCTION public.sendry_track(text, uuid, jsonb, boolean) FROM PUBLIC;
DO $grants$ BEGIN IF pg_catalog.to_regrole('service_role') IS NOT NULL THEN
    GRANT EXECUTE ON FUNCTION public.sendry_track(text, uuid, jsonb, boolean) TO service_role;
END IF; END $grants$;
