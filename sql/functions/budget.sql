-- The key's request budget (sendry_rate_budget, in the baseline): taking and pausing.

-- Takes up to p_want requests from the key's bucket (p_rate a second, at most p_burst),
-- leaving p_floor behind (bulk work leaves the live share). Returns how many it granted,
-- and when asking again makes sense (seconds: the pause left, or the wait for a token).
CREATE OR REPLACE FUNCTION public.sendry_rate_take(p_key text, p_rate double precision,
                                                   p_burst double precision, p_want integer,
                                                   p_floor double precision,
                                                   OUT granted integer, OUT wait double precision)
LANGUAGE plpgsql
SET search_path = ''
AS $$
DECLARE
    b public.sendry_rate_budget%ROWTYPE;
    v_now timestamptz := pg_catalog.clock_timestamp();
    v_tokens double precision;
    v_floor double precision := GREATEST(0, LEAST(p_floor, p_burst - 1));
BEGIN
    INSERT INTO public.sendry_rate_budget (key, tokens) VALUES (p_key, p_burst)
        ON CONFLICT (key) DO NOTHING;
    SELECT * INTO b FROM public.sendry_rate_budget WHERE key = p_key FOR UPDATE;
    v_tokens := LEAST(p_burst, b.tokens + GREATEST(0, EXTRACT(EPOCH FROM v_now - b.updated_at)) * p_rate);
    IF b.pause_until > v_now THEN
        granted := 0;
        wait := EXTRACT(EPOCH FROM b.pause_until - v_now);
    ELSE
        granted := GREATEST(0, LEAST(p_want, pg_catalog.floor(v_tokens - v_floor)::integer));
        v_tokens := v_tokens - granted;
        wait := CASE WHEN granted >= p_want THEN 0 ELSE (1 + v_floor - v_tokens) / p_rate END;
    END IF;
    UPDATE public.sendry_rate_budget SET tokens = v_tokens, updated_at = v_now WHERE key = p_key;
END
$$;

-- A 429: every worker of the key waits p_seconds (a longer pause already set stays).
CREATE OR REPLACE FUNCTION public.sendry_rate_pause(p_key text, p_seconds double precision)
RETURNS void
LANGUAGE sql
SET search_path = ''
AS $$
    INSERT INTO public.sendry_rate_budget (key, tokens, pause_until)
    VALUES (p_key, 0, pg_catalog.clock_timestamp() + p_seconds * interval '1 second')
    ON CONFLICT (key) DO UPDATE
        SET pause_until = GREATEST(public.sendry_rate_budget.pause_until, EXCLUDED.pause_until);
$$;
