-- sendry-step: requires auth.users
-- Applies one stored Sendry event to auth.users: an opt-out (contact.updated with
-- unsubscribed true, a global unsubscribe, a suppression, email.complained, a hard
-- bounce) sets raw_app_meta_data.sendry_unsubscribed = true with when and why; a
-- re-subscribe (contact.updated with unsubscribed false) sets it false. An older
-- event never overrides a newer one. Unknown emails and event types are kept,
-- marked ignored with the reason. Errors leave the event 'received' with the error
-- in reason: SELECT public.sendry_inbox_apply(id) FROM sendry_inbox WHERE status = 'received'
-- applies them again.
CREATE OR REPLACE FUNCTION public.sendry_inbox_apply(p_id bigint)
RETURNS text
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    ev        public.sendry_inbox%ROWTYPE;
    d         jsonb;
    v_email   text;
    v_action  text;      -- 'unsubscribe' | 'resubscribe'
    v_why     text;
    v_at      timestamptz;
    v_user    uuid;
    v_sso     uuid;      -- an SSO user the address was last enqueued for
    v_prev_at timestamptz;
    v_prev_text text;
    v_result  text;
BEGIN
    SELECT * INTO ev FROM public.sendry_inbox WHERE id = p_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'ignored: no such event';
    END IF;
    BEGIN
        d := CASE WHEN pg_catalog.jsonb_typeof(ev.payload -> 'data') = 'object'
                  THEN ev.payload -> 'data' ELSE ev.payload END;
        v_email := COALESCE(d ->> 'email',
                            CASE pg_catalog.jsonb_typeof(d -> 'to')
                                 WHEN 'array' THEN d -> 'to' ->> 0
                                 WHEN 'string' THEN d ->> 'to' END,
                            d ->> 'recipient');
        v_email := pg_catalog.lower(pg_catalog.btrim(v_email));
        BEGIN
            v_at := COALESCE((ev.payload ->> 'created_at')::timestamptz,
                             (d ->> 'created_at')::timestamptz,
                             (d ->> 'timestamp')::timestamptz, pg_catalog.now());
        EXCEPTION WHEN others THEN
            v_at := pg_catalog.now();
        END;

        CASE
        WHEN ev.type IN ('contact.updated', 'contact.created') THEN
            IF pg_catalog.jsonb_typeof(d -> 'unsubscribed') = 'boolean' THEN
                v_action := CASE WHEN (d ->> 'unsubscribed')::boolean
                                 THEN 'unsubscribe' ELSE 'resubscribe' END;
                v_why := CASE v_action WHEN 'unsubscribe' THEN 'unsubscribed' ELSE 'contact.updated' END;
            ELSE
                v_result := 'ignored: no unsubscribed field';
            END IF;
        WHEN ev.type = 'email.complained' THEN
            v_action := 'unsubscribe';
            v_why := 'complaint';
        WHEN ev.type = 'email.bounced' THEN
            IF pg_catalog.lower(COALESCE(d ->> 'bounce_type', d ->> 'type', d -> 'bounce' ->> 'type', ''))
               IN ('hard', 'permanent') THEN
                v_action := 'unsubscribe';
                v_why := 'hard_bounce';
            ELSE
                v_result := 'ignored: not a hard bounce';
            END IF;
        WHEN ev.type = 'unsubscribe' THEN
            IF d ->> 'list_id' IS NULL THEN
                v_action := 'unsubscribe';
                v_why := COALESCE(NULLIF(d ->> 'reason', ''), 'unsubscribe');
            ELSE
                v_result := 'ignored: unsubscribed from one list only';
            END IF;
        WHEN ev.type = 'suppression' THEN
            v_action := 'unsubscribe';
            v_why := COALESCE(NULLIF(d ->> 'reason', ''), 'suppression');
        ELSE
            v_result := 'ignored: event type not mirrored';
        END CASE;

        IF v_result IS NULL AND (v_email IS NULL OR v_email = '') THEN
            v_result := 'ignored: no email in the event';
        END IF;
        IF v_result IS NULL THEN
            -- By key at any number of users: GoTrue's unique index on email is
            -- partial (WHERE is_sso_user = false; SSO users may share an address),
            -- so the lookup names its predicate. SSO users are found through the
            -- address last enqueued for them (sendry_contact_state_email_idx; no
            -- index may be created in schema auth), the most recent first.
            SELECT u.id, u.raw_app_meta_data ->> 'sendry_unsubscribed_at'
              INTO v_user, v_prev_text
              FROM auth.users u WHERE u.email = v_email AND u.is_sso_user = false FOR UPDATE;
            IF NOT FOUND THEN
                FOR v_sso IN SELECT s.user_id FROM public.sendry_contact_state s
                              WHERE s.email = v_email ORDER BY s.updated_at DESC LOOP
                    SELECT u.id, u.raw_app_meta_data ->> 'sendry_unsubscribed_at'
                      INTO v_user, v_prev_text
                      FROM auth.users u
                     WHERE u.id = v_sso AND u.email = v_email AND u.is_sso_user FOR UPDATE;
                    EXIT WHEN FOUND;
                END LOOP;
            END IF;
            BEGIN
                v_prev_at := v_prev_text::timestamptz;
            EXCEPTION WHEN others THEN
                v_prev_at := NULL;   -- not a time we wrote: do not let it block updates
            END;
            IF v_user IS NULL THEN
                v_result := 'ignored: no user with this email';
            ELSIF v_prev_at IS NOT NULL AND v_prev_at > v_at THEN
                v_result := 'ignored: older than the state already recorded';
            ELSE
                UPDATE auth.users
                   SET raw_app_meta_data = COALESCE(raw_app_meta_data, '{}'::jsonb)
                       || pg_catalog.jsonb_build_object(
                              'sendry_unsubscribed', v_action = 'unsubscribe',
                              'sendry_unsubscribed_at', v_at,
                              'sendry_unsubscribed_reason', v_why)
                 WHERE id = v_user;
                v_result := 'applied';
            END IF;
        END IF;

        UPDATE public.sendry_inbox
           SET status = CASE WHEN v_result = 'applied' THEN 'applied' ELSE 'ignored' END,
               reason = CASE WHEN v_result = 'applied' THEN v_action || ' (' || v_why || ')'
                             ELSE pg_catalog.substr(v_result, 10) END,
               email = v_email, applied_at = pg_catalog.now()
         WHERE id = p_id;
        RETURN v_result;
    EXCEPTION WHEN OTHERS THEN
        UPDATE public.sendry_inbox SET status = 'received', reason = 'error: ' || SQLERRM
         WHERE id = p_id;
        RETURN 'error: ' || SQLERRM;
    END;
END
$$;
