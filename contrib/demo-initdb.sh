#!/bin/sh
# The demo database of contrib/docker-compose.yml (profile demo), run once by the
# postgres image's entrypoint as the bootstrap superuser supabase_admin: the
# Supabase-shaped roles and auth.users of tests/fixtures/supabase.sql, the migration as
# the non-superuser postgres (as Supabase runs migrations), and two sign-ups as GoTrue
# makes them, which the worker then delivers to the fake Sendry.
# SENDRY_DEMO_SQL_DIR: where supabase.sql and install.sql are (the compose file mounts
# them at /sendry; tests/test_packaging.py runs this script on a test cluster).
set -eu
dir=${SENDRY_DEMO_SQL_DIR:-/sendry}
psql -X -q -v ON_ERROR_STOP=1 -U supabase_admin -d postgres -f "$dir/supabase.sql"
psql -X -q -v ON_ERROR_STOP=1 -U supabase_admin -d postgres -c "ALTER ROLE postgres PASSWORD 'postgres'"
psql -X -q -v ON_ERROR_STOP=1 -U postgres -d postgres -f "$dir/install.sql"
psql -X -q -v ON_ERROR_STOP=1 -U supabase_auth_admin -d postgres <<'SQL'
INSERT INTO users (id, email, role, raw_user_meta_data, raw_app_meta_data, created_at, updated_at) VALUES
  (gen_random_uuid(), 'ada@example.com', '', '{"first_name":"Ada","last_name":"Lovelace"}',
   '{"provider":"email","providers":["email"]}', now(), now()),
  (gen_random_uuid(), 'grace@example.com', '', '{"full_name":"Grace Brewster Hopper"}',
   '{"provider":"github","providers":["github"]}', now(), now());
SQL
