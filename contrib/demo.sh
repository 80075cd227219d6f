#!/bin/sh
# The whole flow on a throwaway database: run by `make demo` under tests/pgharness.py,
# which starts a Supabase-shaped PostgreSQL and sets PGHOST/PGPORT/DATABASE_URL.
# Installs the migration, starts a fake Sendry and the worker, signs up a few users,
# shows what Sendry received and the outbox, brings an unsubscribe in Sendry back into
# auth.users (reconciliation and a signed webhook), changes an address, deletes a user,
# shows a contact Sendry rejects and its requeue, turns on the event user.signed_up and
# shows a sign-up starting an automation run, ends with `status` and `doctor`, and stops
# everything it started.
set -eu
cd "$(dirname "$0")/.."
PY=/usr/bin/python3
work=$(mktemp -d)
fake_pid=""
worker_pid=""
cleanup() {
    [ -n "$worker_pid" ] && kill "$worker_pid" 2>/dev/null && wait "$worker_pid" 2>/dev/null || true
    [ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null && wait "$fake_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

step() { printf '\n== %s\n' "$*"; }

# Waits up to $1 seconds for the SQL query $2 to return "t".
wait_sql() {
    deadline=$(( $(date +%s) + $1 ))
    while [ "$(psql -X -A -t -c "$2")" != "t" ]; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "demo: timed out waiting for: $2" >&2
            return 1
        fi
        sleep 0.2
    done
}

step "1. Install the migration (sendry-sync migrate, as role postgres like Supabase)"
./sendry-sync migrate

step "2. Start a fake Sendry on 127.0.0.1 and the worker"
$PY tests/fake_sendry.py --port-file "$work/port" > "$work/fake.log" 2>&1 &
fake_pid=$!
deadline=$(( $(date +%s) + 10 ))
until [ -s "$work/port" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "demo: fake Sendry did not start" >&2; cat "$work/fake.log" >&2; exit 1; }
    sleep 0.1
done
api="http://127.0.0.1:$(cat "$work/port")"
echo "fake Sendry at $api"
listen_port=$($PY -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
secret=whsec_demo_secret_0123456789
SENDRY_API_URL="$api" SENDRY_API_KEY=sn_test_fake SENDRY_AUDIENCE_ID=aud_test SENDRY_WEBHOOK_SECRET=$secret \
    ./sendry-sync --poll-interval 2 --reconcile-interval 2 --listen "127.0.0.1:$listen_port" \
    > "$work/worker.log" 2>&1 &
worker_pid=$!
deadline=$(( $(date +%s) + 10 ))
until grep -q "db: connected" "$work/worker.log"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "demo: worker did not connect" >&2; cat "$work/worker.log" >&2; exit 1; }
    sleep 0.1
done
sed 's/^/  worker | /' "$work/worker.log"

step "3. Sign up users as GoTrue does (as supabase_auth_admin, with search_path auth)"
psql -X -q -U supabase_auth_admin -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO users (id, email, role, raw_user_meta_data, raw_app_meta_data, created_at, updated_at) VALUES
  (gen_random_uuid(), 'ada@example.com', '', '{"first_name":"Ada","last_name":"Lovelace"}',
   '{"provider":"email","providers":["email"]}', now(), now()),
  (gen_random_uuid(), 'grace@example.com', '', '{"full_name":"Grace Brewster Hopper"}',
   '{"provider":"github","providers":["github"]}', now(), now());
INSERT INTO users (id, email, role, raw_user_meta_data, raw_app_meta_data, is_anonymous, created_at, updated_at)
  VALUES (gen_random_uuid(), NULL, '', '{}', '{}', true, now(), now());
INSERT INTO users (id, phone, role, raw_user_meta_data, raw_app_meta_data, created_at, updated_at)
  VALUES (gen_random_uuid(), '15550001111', '', '{}', '{"provider":"phone"}', now(), now());
SQL
echo "signed up: ada@example.com, grace@example.com (OAuth), one anonymous user, one phone-only user"
wait_sql 15 "select count(*) = 2 and bool_and(status = 'sent') from public.sendry_outbox" \
    || { cat "$work/worker.log" >&2; exit 1; }

# Prints the requests Sendry received after the first $1 (all with 0).
show_requests() {
    curl -s "$api/_control/requests" | $PY -c '
import json, sys
for r in json.load(sys.stdin)[int(sys.argv[1]):]:
    print(r["method"], r["path"], "->", r["status"])
    if r.get("json"):
        print("  " + json.dumps(r["json"], indent=2, ensure_ascii=False).replace("\n", "\n  "))' "$1"
}
requests_so_far() {
    curl -s "$api/_control/requests?summary=1" | $PY -c 'import json, sys; print(len(json.load(sys.stdin)))'
}

step "4. What Sendry received"
show_requests 0

step "5. The outbox"
psql -X -c "select id, op, email, status, attempts, last_http_status, sent_at is not null as sent from public.sendry_outbox order by id"
psql -X -c "select * from public.sendry_outbox_stats"

step "6. Ada unsubscribes in Sendry: the worker's reconciliation brings it back into auth.users"
curl -s -X POST "$api/_control/add_unsubscribe" -d '{"email":"ada@example.com","reason":"clicked unsubscribe"}' >/dev/null
wait_sql 15 "select coalesce((raw_app_meta_data->>'sendry_unsubscribed')::boolean, false) from auth.users where email = 'ada@example.com'" \
    || { cat "$work/worker.log" >&2; exit 1; }
echo "(pages GET /v1/unsubscribes every --reconcile-interval, here 2 s)"

step "7. Sendry's webhook says Grace unsubscribed: a signed POST /webhooks/sendry"
$PY - "$listen_port" "$secret" <<'PY'
import hashlib, hmac, json, sys, urllib.request
port, secret = sys.argv[1], sys.argv[2].encode()
body = json.dumps({"id": "evt_demo_1", "type": "contact.updated", "created_at": "2026-01-01T12:00:00Z",
                   "data": {"email": "grace@example.com", "unsubscribed": True}}).encode()
sig = hmac.new(secret, body, hashlib.sha256).hexdigest()
req = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/sendry", data=body, method="POST",
                             headers={"Content-Type": "application/json", "X-Sendry-Signature": "sha256=" + sig})
with urllib.request.urlopen(req) as r:
    print("POST /webhooks/sendry ->", r.status, r.read().decode())
bad = urllib.request.Request(f"http://127.0.0.1:{port}/webhooks/sendry", data=body, method="POST",
                             headers={"X-Sendry-Signature": "sha256=" + "0" * 64})
try:
    urllib.request.urlopen(bad)
except urllib.error.HTTPError as e:
    print("the same body with a wrong signature ->", e.code, e.read().decode())
PY

step "8. The opt-outs in auth.users (raw_app_meta_data) and the inbox"
psql -X -U supabase_admin -c "select email, raw_app_meta_data->'sendry_unsubscribed' as unsubscribed, raw_app_meta_data->>'sendry_unsubscribed_reason' as reason from auth.users where email is not null order by email"
psql -X -c "select source, type, email, status, reason from public.sendry_inbox where status <> 'ignored' or email like '%example.com' order by id"

step "9. Ada changes her address (GoTrue's UPDATE): the contact moves, it is not duplicated"
seen=$(requests_so_far)
psql -X -q -U supabase_auth_admin -v ON_ERROR_STOP=1 \
    -c "update users set email = 'ada.lovelace@example.com', updated_at = now() where email = 'ada@example.com'"
wait_sql 15 "select count(*) = 1 from public.sendry_outbox where email = 'ada.lovelace@example.com' and status = 'sent'" \
    || { cat "$work/worker.log" >&2; exit 1; }
show_requests "$seen"

step "10. Grace deletes her account: her contact is deleted in Sendry (sendry_settings.on_delete)"
seen=$(requests_so_far)
psql -X -q -U supabase_auth_admin -v ON_ERROR_STOP=1 -c "delete from users where email = 'grace@example.com'"
wait_sql 15 "select count(*) = 1 from public.sendry_outbox where op = 'delete' and status = 'sent'" \
    || { cat "$work/worker.log" >&2; exit 1; }
show_requests "$seen"

step "11. Sendry rejects a contact (422): the row fails with the reason, nothing else is held up"
curl -s -X POST "$api/_control/reject_emails" -d '{"regex":"^typo@"}' >/dev/null
psql -X -q -U supabase_auth_admin -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO users (id, email, role, raw_user_meta_data, raw_app_meta_data, created_at, updated_at) VALUES
  (gen_random_uuid(), 'typo@example.com', '', '{}', '{"provider":"email","providers":["email"]}', now(), now());
SQL
wait_sql 15 "select count(*) = 1 from public.sendry_outbox where email = 'typo@example.com' and status = 'failed'" \
    || { cat "$work/worker.log" >&2; exit 1; }
psql -X -c "select id, email, status, attempts, last_http_status, last_error from public.sendry_outbox where status = 'failed'"

step "12. Fixed on Sendry's side: requeue the failed rows with one UPDATE"
curl -s -X POST "$api/_control/reject_emails" -d '{"regex":null}' >/dev/null
psql -X -c "update public.sendry_outbox set status = 'pending', next_attempt_at = now() where status = 'failed'"
wait_sql 15 "select count(*) = 1 from public.sendry_outbox where email = 'typo@example.com' and status = 'sent'" \
    || { cat "$work/worker.log" >&2; exit 1; }
echo "typo@example.com: sent on the requeue"

step "13. Onboarding: an automation (trigger_type event) that a sign-up starts through user.signed_up"
auth="Authorization: Bearer sn_test_fake"
automation=$(curl -s -X POST "$api/v1/automations" -H "$auth" -H 'Content-Type: application/json' \
    -d '{"name":"Onboarding","trigger_type":"event","trigger_config":{"event_name":"user.signed_up"}}' \
    | $PY -c 'import json, sys; print(json.load(sys.stdin)["id"])')
curl -s -X POST "$api/v1/automations/$automation/activate" -H "$auth" >/dev/null
echo "automation $automation created and activated (POST /v1/automations, then .../activate)"
psql -X -c "update public.sendry_settings set events = '{user.signed_up}'"
seen=$(requests_so_far)
psql -X -q -U supabase_auth_admin -v ON_ERROR_STOP=1 <<'SQL'
INSERT INTO users (id, email, role, raw_user_meta_data, raw_app_meta_data, created_at, updated_at) VALUES
  (gen_random_uuid(), 'lin@example.com', '', '{"first_name":"Lin"}', '{"provider":"email","providers":["email"]}',
   now(), now());
SQL
wait_sql 15 "select count(*) = 1 from public.sendry_outbox where op = 'event' and status = 'sent'" \
    || { cat "$work/worker.log" >&2; exit 1; }
echo "lin@example.com signed up: the contact first, then the event (event_id = sendry_event_id(id))"
show_requests "$seen"
psql -X -c "select id, op, email, payload->>'name' as event, case when op = 'event' then public.sendry_event_id(id) end as event_id, status, deduped from public.sendry_outbox where email = 'lin@example.com' order by id"
curl -s "$api/v1/automations/$automation/runs" -H "$auth" | $PY -c '
import json, sys
for run in json.load(sys.stdin)["data"]:
    print("automation run", run["id"], "for", run["contact_email"], "started by event", run["trigger_event_id"], "->", run["status"])'

step "14. sendry-sync status: the outbox at a glance"
./sendry-sync status

step "15. sendry-sync doctor: what would break in production (exit 0 all good, 1 warnings, 2 failures)"
rc=0
SENDRY_API_URL="$api" SENDRY_API_KEY=sn_test_fake SENDRY_AUDIENCE_ID=aud_test SENDRY_WEBHOOK_SECRET=$secret \
    SENDRY_LISTEN="127.0.0.1:$listen_port" ./sendry-sync doctor || rc=$?
echo "doctor exited $rc"
[ "$rc" -le 1 ] || { echo "demo: doctor found failures" >&2; exit 1; }

step "16. Stop the worker (SIGTERM drains and exits 0)"
kill -TERM "$worker_pid"
wait "$worker_pid" && echo "worker exited 0"
worker_pid=""
tail -n 3 "$work/worker.log" | sed 's/^/  worker | /'
