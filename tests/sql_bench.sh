#!/bin/sh
# make bench: the cost of the auth.users trigger on a bulk sign-up. Not pass/fail.
#
#   sh tests/sql_bench.sh            (starts its own throwaway cluster via tests/pgharness.py)
#
# Inserts N users (default 100000; SENDRY_BENCH_USERS) into auth.users as
# supabase_auth_admin in one INSERT ... SELECT, first without the trigger, then with
# sql/install.sql applied, each time into a freshly truncated table, and prints e.g.
#   auth.users insert 100000 rows: 0.41 s without trigger, 0.88 s with trigger
# Each figure is the median of SENDRY_BENCH_RUNS runs (default 3), timed with psql's
# \timing (statement plus commit, one round trip). The harness cluster runs with fsync off.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

if [ -z "${SENDRY_BENCH_IN_CLUSTER:-}" ]; then
    SENDRY_BENCH_IN_CLUSTER=1 exec /usr/bin/python3 "$here/pgharness.py" run -- sh "$0" "$@"
fi

users=${SENDRY_BENCH_USERS:-100000}
runs=${SENDRY_BENCH_RUNS:-3}

admin() { PGOPTIONS='-c client_min_messages=warning' psql -X -q -v ON_ERROR_STOP=1 -U supabase_admin "$@"; }

# One timed run: fresh (truncated) auth.users and outbox, checkpoint, then the INSERT as
# GoTrue's role. Prints the INSERT's time in milliseconds.
one_run() {
    admin -c 'TRUNCATE auth.users CASCADE' >/dev/null
    if [ "$(admin -At -c "SELECT to_regclass('public.sendry_outbox') IS NOT NULL")" = t ]; then
        admin -c 'TRUNCATE public.sendry_outbox' >/dev/null
    fi
    admin -c 'VACUUM ANALYZE auth.users' -c 'CHECKPOINT' >/dev/null
    psql -X -q -v ON_ERROR_STOP=1 -U supabase_auth_admin -v n="$users" <<'SQL' |
\timing on
INSERT INTO users (instance_id, id, aud, role, email, encrypted_password, confirmation_token,
                   confirmation_sent_at, raw_app_meta_data, raw_user_meta_data, is_sso_user,
                   is_anonymous, created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', gen_random_uuid(), 'authenticated', 'authenticated',
       'bench.user' || g || '@example.com',
       '$2a$10$' || md5(g::text) || 'abcdefghijklmnopqrstu', md5('c' || g), now(),
       CASE WHEN g % 3 = 0 THEN '{"provider": "google", "providers": ["google"]}'::jsonb
            ELSE '{"provider": "email", "providers": ["email"]}'::jsonb END,
       CASE WHEN g % 3 = 0
            THEN jsonb_build_object('full_name', 'Bench User ' || g, 'name', 'Bench User ' || g,
                                    'avatar_url', 'https://example.com/avatar/' || g || '.png',
                                    'email', 'bench.user' || g || '@example.com',
                                    'email_verified', true, 'phone_verified', false,
                                    'sub', (100000000 + g)::text)
            ELSE jsonb_build_object('first_name', 'Bench', 'last_name', 'User ' || g,
                                    'email_verified', false, 'phone_verified', false,
                                    'sub', gen_random_uuid()::text)
       END,
       false, false, now(), now()
FROM generate_series(1, :n) g;
SQL
    awk '/^Time: / { print $2 }'
}

# The median of $runs runs, in seconds with two decimals.
measure() {
    i=0
    times=""
    while [ "$i" -lt "$runs" ]; do
        times="$times $(one_run)"
        i=$((i + 1))
    done
    echo "$times" | tr ' ' '\n' | grep . | sort -n |
        awk '{ t[NR] = $1 } END { m = (NR % 2) ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2;
                                  printf "%.2f", m / 1000 }'
}

bare=$(measure)
psql -X -q -v ON_ERROR_STOP=1 -U postgres -f "$root/sql/install.sql"
with=$(measure)
queued=$(admin -At -c 'SELECT count(*) FROM public.sendry_outbox')

echo "auth.users insert $users rows: $bare s without trigger, $with s with trigger" \
     "(median of $runs; $queued outbox rows from the last run)"
