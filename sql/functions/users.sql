-- sendry-step: requires auth.users
-- The triggers on auth.users. SECURITY DEFINER with an empty search_path: in
-- Supabase the auth server writes as supabase_auth_admin with search_path=auth, and
-- has no rights on public.sendry_outbox. Anything that goes wrong is turned into a
-- WARNING and recorded in public.sendry_enqueue_errors (in a subtransaction of its
-- own, so that the WARNING goes out even if that fails): a user's write never fails
-- because of the outbox.
--
-- The payload of a built-in event (sendry_settings.events): {"user_id": "<uuid>"}, with
-- "provider" (raw_app_meta_data ->> 'provider', user.signed_up) and "old_email"
-- (user.email_changed) when given. Inlinable: one expression, qualified names, no SET.
CREATE OR REPLACE FUNCTION public.sendry_user_event_payload(p_user_id uuid, p_provider text DEFAULT NULL,
                                                            p_old_email text DEFAULT NULL)
RETURNS jsonb
LANGUAGE sql
STABLE
AS $$
    SELECT pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
        'user_id', p_user_id::pg_catalog.text,
        'provider', CASE WHEN p_provider OPERATOR(pg_catalog.<>) '' THEN p_provider END,
        'old_email', p_old_email))
$$;

-- The triggers CAPTURE: per changed synced user, one narrow outbox row (op 'upsert',
-- class 'live', user_id, email = lower(btrim(the current address)), old_email = the
-- previous one for an email change, payload NULL). They never read the contact mapping
-- nor sendry_contact_state (the worker renders the contact when it claims the row, and
-- compares it with what Sendry last accepted: sendry_claim_render); the deletion paths
-- only delete the user's state row.
--
-- After an INSERT: a statement-level trigger over the transition table (one
-- set-based statement for a bulk import, about half the cost of a row trigger).
CREATE OR REPLACE FUNCTION public.sendry_auth_users_inserted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    BEGIN
        -- The settings are constants in these statements' plans (functions/settings.sql):
        -- no read of sendry_settings in a sign-up.
        IF 'user.signed_up' = ANY (public.sendry_settings_events()) THEN
            -- One captured row per new synced user (the worker renders the contact at the
            -- claim), then each user's user.signed_up event row, after all the contacts:
            -- in ONE statement. PostgreSQL parses and plans the outbox's CHECK constraints
            -- again for every INSERT statement, about as much as the rest of the statement.
            INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
            SELECT 'live', r.op, n.id, pg_catalog.lower(pg_catalog.btrim(n.email)), r.payload
              FROM new_rows n
             CROSS JOIN LATERAL (VALUES
                 (1, 'upsert', NULL::jsonb),
                 (2, 'event', pg_catalog.jsonb_build_object('name', 'user.signed_up', 'payload',
                                  public.sendry_user_event_payload(n.id, n.raw_app_meta_data ->> 'provider')))
             ) AS r (k, op, payload)
             WHERE public.sendry_user_is_synced(n, public.sendry_settings_sync_on())
             ORDER BY r.k, n.id;
        ELSE
            -- One captured row per new synced user: the worker renders the contact at the claim.
            INSERT INTO public.sendry_outbox (class, op, user_id, email)
            SELECT 'live', 'upsert', n.id, pg_catalog.lower(pg_catalog.btrim(n.email))
              FROM new_rows n
             WHERE public.sendry_user_is_synced(n, public.sendry_settings_sync_on());
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'sendry-sync: could not enqueue new users for Sendry: % (SQLSTATE %)',
            SQLERRM, SQLSTATE;
        BEGIN
            INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
            VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM,
                    ARRAY(SELECT n.id FROM new_rows n));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END
$$;

-- After an UPDATE: two triggers with the same column list (the columns a contact can
-- depend on; see below), so that GoTrue's sign-in and token refresh UPDATE
-- (last_sign_in_at, updated_at) and its role '' -> 'authenticated' follow-up run no
-- function at all, and no subtransaction per row for a bulk UPDATE:
--  * sendry_sync_users_update, row-level, whose WHEN clause skips a row whose listed
--    columns did not change: its function (sendry_auth_users_noted) notes the user in
--    public.sendry_changed_users, with what the old row said, and nothing else: no
--    EXCEPTION block (one INSERT into an unlogged table of ours: nothing the project's
--    mapping or data can make fail);
--  * sendry_sync_users_updated, statement-level, after them: sendry_auth_users_updated
--    enqueues the noted users set-wise, in ONE subtransaction for the whole statement
--    (errors: a WARNING and a row in sendry_enqueue_errors naming every user of the
--    statement, for the repair pass), then forgets them.
-- For each noted user synced now it captures the contact (the claim finds whether it
-- changed: names, metadata, email, audiences; the confirmation under sync_on =
-- 'confirmed'; an anonymous user becoming permanent). An email change carries the previous
-- address in old_email (one that may have been sent: not an anonymous user's, and under
-- sync_on = 'confirmed' a confirmed one), so the worker moves the contact. A soft delete
-- (deleted_at set; GoTrue overwrites email with a hash, never to be sent) enqueues the
-- deletion of the previous address (in confirmed-only mode only if it was confirmed: an
-- unconfirmed address was never sent, and may be someone else's).
CREATE OR REPLACE FUNCTION public.sendry_auth_users_noted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
BEGIN
    INSERT INTO public.sendry_changed_users (backend_pid, user_id, old_email, old_anonymous,
                                             old_confirmed, soft_deleted)
    VALUES (pg_catalog.pg_backend_pid(), NEW.id, OLD.email, COALESCE(OLD.is_anonymous, false),
            OLD.email_confirmed_at IS NOT NULL, OLD.deleted_at IS NULL AND NEW.deleted_at IS NOT NULL);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.sendry_auth_users_updated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_pid       integer := pg_catalog.pg_backend_pid();
    v_sync_on   text;
    v_on_delete text;
    v_events    text[];
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.sendry_changed_users c WHERE c.backend_pid = v_pid) THEN
        RETURN NULL;   -- every row's WHEN clause said "no change"
    END IF;
    BEGIN
        -- The settings, compiled (functions/settings.sql): no read of sendry_settings.
        v_sync_on := public.sendry_settings_sync_on();
        v_on_delete := public.sendry_settings_on_delete();
        v_events := public.sendry_settings_events();
        IF EXISTS (SELECT 1 FROM public.sendry_changed_users c WHERE c.backend_pid = v_pid AND c.soft_deleted) THEN
            -- Soft deletes: the event user.deleted (to the previous address, which the
            -- contact had: the delete's conditions, whatever on_delete says), before the
            -- deletion of that address.
            IF 'user.deleted' = ANY (v_events) THEN
                INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
                SELECT 'live', 'event', c.user_id, pg_catalog.lower(pg_catalog.btrim(c.old_email)),
                       pg_catalog.jsonb_build_object('name', 'user.deleted',
                                                     'payload', public.sendry_user_event_payload(c.user_id))
                  FROM public.sendry_changed_users c
                 WHERE c.backend_pid = v_pid AND c.soft_deleted
                   AND NULLIF(pg_catalog.btrim(c.old_email), '') IS NOT NULL AND NOT c.old_anonymous
                   AND (v_sync_on = 'signup' OR c.old_confirmed)
                 ORDER BY c.user_id;
            END IF;
            IF v_on_delete <> 'keep' THEN
                INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
                SELECT 'live', 'delete', c.user_id, pg_catalog.lower(pg_catalog.btrim(c.old_email)),
                       pg_catalog.jsonb_build_object('delete_mode', v_on_delete)
                  FROM public.sendry_changed_users c
                 WHERE c.backend_pid = v_pid AND c.soft_deleted
                   AND NULLIF(pg_catalog.btrim(c.old_email), '') IS NOT NULL AND NOT c.old_anonymous
                   AND (v_sync_on = 'signup' OR c.old_confirmed)
                 ORDER BY c.user_id;
            END IF;
            DELETE FROM public.sendry_contact_state s
             USING public.sendry_changed_users c
             WHERE c.backend_pid = v_pid AND c.soft_deleted AND s.user_id = c.user_id;
        END IF;
        -- One captured row per noted user synced now, with the previous address of an
        -- email change; then the built-in events of the transitions, after the contact
        -- rows (each user's event rows follow their contact row), for users whose
        -- address may be sent:
        --   user.signed_up         under sync_on = 'confirmed', the confirmation of a user
        --                          not synced before (not anonymous, unconfirmed)
        --   user.became_permanent  is_anonymous true -> false
        --   user.email_changed     the address moved (from one that was sent)
        --   user.email_confirmed   email_confirmed_at NULL -> set
        -- Nothing more unless one of them is named in sendry_settings.events; then the
        -- contact rows and the event rows in ONE statement (PostgreSQL parses and plans
        -- the outbox's CHECK constraints again for every INSERT statement).
        IF v_events && ARRAY['user.signed_up', 'user.became_permanent', 'user.email_changed',
                             'user.email_confirmed'] THEN
            INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email, payload)
            SELECT 'live', CASE WHEN e.n = 0 THEN 'upsert' ELSE 'event' END, t.id, t.email,
                   CASE WHEN e.n = 0 THEN t.moved_from END,
                   CASE WHEN e.n > 0 THEN pg_catalog.jsonb_build_object('name', e.name, 'payload', e.payload) END
              FROM (SELECT u.id, pg_catalog.lower(pg_catalog.btrim(u.email)) AS email,
                           u.raw_app_meta_data ->> 'provider' AS provider,
                           u.email_confirmed_at IS NOT NULL AS confirmed,
                           c.old_anonymous, c.old_confirmed,
                           CASE WHEN NOT c.old_anonymous
                                 AND NULLIF(pg_catalog.lower(pg_catalog.btrim(c.old_email)), '') IS NOT NULL
                                 AND pg_catalog.lower(pg_catalog.btrim(c.old_email))
                                     IS DISTINCT FROM pg_catalog.lower(pg_catalog.btrim(u.email))
                                 AND (v_sync_on = 'signup' OR c.old_confirmed)
                                THEN pg_catalog.lower(pg_catalog.btrim(c.old_email)) END AS moved_from
                      FROM public.sendry_changed_users c JOIN auth.users u ON u.id = c.user_id
                     WHERE c.backend_pid = v_pid AND NOT c.soft_deleted
                       AND public.sendry_user_is_synced(u, v_sync_on)) t
             CROSS JOIN LATERAL (VALUES
                 (0, NULL, true, NULL::jsonb),     -- the contact row
                 (1, 'user.signed_up', v_sync_on = 'confirmed' AND NOT t.old_confirmed AND NOT t.old_anonymous,
                  public.sendry_user_event_payload(t.id, t.provider)),
                 (2, 'user.became_permanent', t.old_anonymous, public.sendry_user_event_payload(t.id)),
                 (3, 'user.email_changed', t.moved_from IS NOT NULL,
                  public.sendry_user_event_payload(t.id, p_old_email => t.moved_from)),
                 (4, 'user.email_confirmed', NOT t.old_confirmed AND t.confirmed,
                  public.sendry_user_event_payload(t.id))) AS e (n, name, fires, payload)
             WHERE e.n = 0 OR (e.fires AND e.name = ANY (v_events))
             ORDER BY e.n > 0, t.id, e.n;
        ELSE
            INSERT INTO public.sendry_outbox (class, op, user_id, email, old_email)
            SELECT 'live', 'upsert', u.id, pg_catalog.lower(pg_catalog.btrim(u.email)),
                   CASE WHEN NOT c.old_anonymous
                         AND NULLIF(pg_catalog.lower(pg_catalog.btrim(c.old_email)), '') IS NOT NULL
                         AND pg_catalog.lower(pg_catalog.btrim(c.old_email))
                             IS DISTINCT FROM pg_catalog.lower(pg_catalog.btrim(u.email))
                         AND (v_sync_on = 'signup' OR c.old_confirmed)
                        THEN pg_catalog.lower(pg_catalog.btrim(c.old_email)) END
              FROM public.sendry_changed_users c JOIN auth.users u ON u.id = c.user_id
             WHERE c.backend_pid = v_pid AND NOT c.soft_deleted
               AND public.sendry_user_is_synced(u, v_sync_on)
             ORDER BY u.id;
        END IF;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'sendry-sync: could not enqueue updated users for Sendry: % (SQLSTATE %)',
            SQLERRM, SQLSTATE;
        BEGIN
            INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
            VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM,
                    ARRAY(SELECT c.user_id FROM public.sendry_changed_users c
                           WHERE c.backend_pid = v_pid ORDER BY c.user_id));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
    END;
    DELETE FROM public.sendry_changed_users c WHERE c.backend_pid = v_pid;
    RETURN NULL;
END
$$;

-- After a DELETE (a hard delete: GoTrue's DELETE FROM users), the contact goes too,
-- as sendry_settings.on_delete says; in confirmed-only mode only if the address was
-- confirmed (an unconfirmed one was never sent, and may be someone else's).
CREATE OR REPLACE FUNCTION public.sendry_auth_users_deleted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = ''
AS $$
DECLARE
    v_sync_on   text;
    v_on_delete text;
    v_events    text[];
BEGIN
    BEGIN
        -- The settings, compiled (functions/settings.sql): no read of sendry_settings.
        v_sync_on := public.sendry_settings_sync_on();
        v_on_delete := public.sendry_settings_on_delete();
        v_events := public.sendry_settings_events();
        -- The event user.deleted first (whatever on_delete says), then the deletion.
        IF 'user.deleted' = ANY (v_events) THEN
            INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
            SELECT 'live', 'event', o.id, pg_catalog.lower(pg_catalog.btrim(o.email)),
                   pg_catalog.jsonb_build_object('name', 'user.deleted',
                                                 'payload', public.sendry_user_event_payload(o.id))
              FROM old_rows o
             WHERE NULLIF(pg_catalog.btrim(o.email), '') IS NOT NULL
               AND NOT COALESCE(o.is_anonymous, false)
               AND o.deleted_at IS NULL
               AND (v_sync_on = 'signup' OR o.email_confirmed_at IS NOT NULL)
             ORDER BY o.id;
        END IF;
        IF v_on_delete <> 'keep' THEN
            INSERT INTO public.sendry_outbox (class, op, user_id, email, payload)
            SELECT 'live', 'delete', o.id, pg_catalog.lower(pg_catalog.btrim(o.email)),
                   pg_catalog.jsonb_build_object('delete_mode', v_on_delete)
              FROM old_rows o
             WHERE NULLIF(pg_catalog.btrim(o.email), '') IS NOT NULL
               AND NOT COALESCE(o.is_anonymous, false)
               AND o.deleted_at IS NULL
               AND (v_sync_on = 'signup' OR o.email_confirmed_at IS NOT NULL);
        END IF;
        DELETE FROM public.sendry_contact_state s USING old_rows o WHERE s.user_id = o.id;
    EXCEPTION WHEN OTHERS THEN
        RAISE WARNING 'sendry-sync: could not enqueue deleted users for Sendry: % (SQLSTATE %)',
            SQLERRM, SQLSTATE;
        BEGIN
            INSERT INTO public.sendry_enqueue_errors (trigger_name, table_name, sqlstate, message, user_ids)
            VALUES (TG_NAME, TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME, SQLSTATE, SQLERRM,
                    ARRAY(SELECT o.id FROM old_rows o));
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'sendry-sync: could not record that in public.sendry_enqueue_errors either: % (SQLSTATE %)',
                SQLERRM, SQLSTATE;
        END;
    END;
    RETURN NULL;
END
$$;

-- The triggers themselves: each replaced only when its definition changed
-- (sendry_migrate_trigger), so that applying this file again with only a function changed
-- takes no lock on auth.users. Replacing one takes SHARE ROW EXCLUSIVE on auth.users for
-- a moment, under the step's lock_timeout.
--
-- The UPDATE triggers fire only when a column a contact can depend on changed: every
-- column of auth.users but GoTrue's bookkeeping (sign-in time, updated_at, role and
-- aud, the password hash, tokens and their send times, a pending email or phone
-- change) and generated columns. A mapping that reads one of those is not re-synced
-- when only they change (the repair pass catches up). The column list (UPDATE OF)
-- lets an UPDATE that sets none of them, as GoTrue's sign-in and token refresh do,
-- skip the trigger without even reading its WHEN clause (about 40 us a statement);
-- the WHEN clause skips an UPDATE that sets them to what they were, and one that changes
-- only the opt-out keys sendry_inbox_apply writes into raw_app_meta_data
-- (sendry_unsubscribed, _at, _reason: never part of a contact, an upsert must not
-- re-subscribe anyone), so that mirroring an opt-out enqueues nothing.
DO $triggers$
DECLARE
    v_columns text;
    v_when    text;
BEGIN
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(a.attname), ', ' ORDER BY a.attnum),
           pg_catalog.string_agg(pg_catalog.format(
               CASE WHEN a.attname = 'raw_app_meta_data'
                    THEN '(OLD.%1$I OPERATOR(pg_catalog.-) %2$L::pg_catalog.text[])'
                         ' IS DISTINCT FROM (NEW.%1$I OPERATOR(pg_catalog.-) %2$L::pg_catalog.text[])'
                    ELSE 'OLD.%1$I IS DISTINCT FROM NEW.%1$I' END,
               a.attname, '{sendry_unsubscribed,sendry_unsubscribed_at,sendry_unsubscribed_reason}'),
                                 ' OR ' ORDER BY a.attnum)
      INTO v_columns, v_when
      FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = 'auth.users'::regclass AND a.attnum > 0 AND NOT a.attisdropped
       AND a.attgenerated = ''
       AND a.attname NOT IN ('instance_id', 'aud', 'role', 'encrypted_password', 'last_sign_in_at',
                             'updated_at', 'confirmation_token', 'confirmation_sent_at',
                             'recovery_token', 'recovery_sent_at', 'email_change_token_new',
                             'email_change_token_current', 'email_change', 'email_change_sent_at',
                             'email_change_confirm_status', 'phone_change', 'phone_change_token',
                             'phone_change_sent_at', 'reauthentication_token',
                             'reauthentication_sent_at');
    PERFORM public.sendry_migrate_trigger('auth.users', 'sendry_sync_users_insert', $t$
        CREATE OR REPLACE TRIGGER sendry_sync_users_insert
            AFTER INSERT ON auth.users
            REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_inserted()
    $t$);
    PERFORM public.sendry_migrate_trigger('auth.users', 'sendry_sync_users_update', pg_catalog.format($t$
        CREATE OR REPLACE TRIGGER sendry_sync_users_update
            AFTER UPDATE OF %s ON auth.users
            FOR EACH ROW
            WHEN (%s)
            EXECUTE FUNCTION public.sendry_auth_users_noted()
    $t$, v_columns, v_when));
    PERFORM public.sendry_migrate_trigger('auth.users', 'sendry_sync_users_updated', pg_catalog.format($t$
        CREATE OR REPLACE TRIGGER sendry_sync_users_updated
            AFTER UPDATE OF %s ON auth.users
            FOR EACH STATEMENT
            EXECUTE FUNCTION public.sendry_auth_users_updated()
    $t$, v_columns));
    PERFORM public.sendry_migrate_trigger('auth.users', 'sendry_sync_users_delete', $t$
        CREATE OR REPLACE TRIGGER sendry_sync_users_delete
            AFTER DELETE ON auth.users
            REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION public.sendry_auth_users_deleted()
    $t$);
END
$triggers$;
