"""End-to-end: what the contact triggers capture, the real worker renders and delivers
(issues 11 and 17).

A project mapping over public.profiles, a watched table, a name change through
raw_user_meta_data, a sign-in that enqueues nothing, a change the contact does not show
(settled at the claim without a request), and a contact the mapping renders wrongly that
is failed at the claim and never reaches Sendry.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_contacts_e2e.py
"""

import json

import pytest

from conftest import T, import_requests

MAPPING = """
CREATE OR REPLACE VIEW public.sendry_contacts WITH (security_invoker = true) AS
SELECT u.id AS user_id,
       lower(btrim(u.email)) AS email,
       NULLIF(btrim(u.raw_user_meta_data ->> 'first_name'), '') AS first_name,
       NULLIF(btrim(u.raw_user_meta_data ->> 'last_name'), '') AS last_name,
       jsonb_build_object('supabase_user_id', u.id::text, 'plan', COALESCE(p.plan, 'none'),
                          'prefs', p.prefs) AS metadata,
       NULL::text[] AS audiences
FROM auth.users u LEFT JOIN public.profiles p ON p.id = u.id
"""


@pytest.fixture
def mapped(db, cluster):
    """The conftest db with public.profiles watched and mapped; undone afterwards."""
    db.query("TRUNCATE public.sendry_contact_state")
    db.query("CREATE TABLE public.profiles (id uuid PRIMARY KEY, plan text, prefs jsonb)")
    db.query(MAPPING)
    db.query("SELECT sendry_watch('public.profiles', 'id')")
    yield db
    db.query("SELECT sendry_unwatch('public.profiles')")
    db.query("DROP VIEW public.sendry_contacts")
    db.query("DROP TABLE public.profiles")
    cluster.install()          # the default mapping again, for whatever runs next


def run_once(workers):
    w = workers("--once")
    assert w.wait(T) == 0, w.log()


def as_gotrue(db, sql, params):
    db.query(sql, params, user="supabase_auth_admin")


def test_watched_and_metadata_changes_reach_sendry(mapped, fake, workers):
    db = mapped
    uid = db.signup("pat@example.com", {"first_name": "Pat"})
    run_once(workers)
    assert fake.contacts["pat@example.com"]["metadata"]["plan"] == "none"

    db.query("INSERT INTO public.profiles (id, plan) VALUES (%s, 'pro')", (uid,))
    as_gotrue(db, "UPDATE users SET raw_user_meta_data = %s, updated_at = now() WHERE id = %s",
              (json.dumps({"first_name": "Patricia", "last_name": "Q"}), uid))
    run_once(workers)
    contact = fake.contacts["pat@example.com"]
    assert (contact["first_name"], contact["last_name"], contact["metadata"]["plan"]) == ("Patricia", "Q", "pro")
    assert "prefs" not in contact["metadata"], "a NULL metadata value is left out"
    assert db.counts() == {"sent": 3}

    # A sign-in enqueues nothing; a profile change the contact does not show is captured
    # (the trigger does not render) and settled at the claim without a request.
    sent_before = len(import_requests(fake))
    as_gotrue(db, "UPDATE users SET last_sign_in_at = now(), updated_at = now() WHERE id = %s", (uid,))
    assert db.counts() == {"sent": 3}
    db.query("UPDATE public.profiles SET plan = 'pro' WHERE id = %s", (uid,))
    assert db.counts() == {"sent": 3, "pending": 1}
    run_once(workers)
    assert len(import_requests(fake)) == sent_before
    assert db.counts() == {"sent": 4}
    last = db.query("SELECT attempts, last_http_status FROM public.sendry_outbox ORDER BY id DESC LIMIT 1")[0]
    assert (last["attempts"], last["last_http_status"]) == (0, None), last


def test_a_contact_the_mapping_renders_wrongly_never_reaches_sendry(mapped, fake, workers):
    db = mapped
    ok = db.signup("fine@example.com", {"first_name": "Fi"})
    uid = db.signup("nested@example.com", {"first_name": "Nes"})
    db.query("INSERT INTO public.profiles (id, plan, prefs) VALUES (%s, 'pro', '{\"news\": true}')", (uid,))
    assert db.counts() == {"pending": 3}, "the triggers capture; nothing is rendered yet"
    w = workers("--once")
    assert w.wait(T) == 1, "--once: 1 when a row failed"
    assert "row 3: not sent, mapping: metadata.prefs is a JSON object" in w.log()
    # Both rows of the user are rendered once, at the claim, as the user is now: wrongly.
    assert "nested@example.com" not in fake.contacts
    assert fake.contacts["fine@example.com"]["metadata"] == {"supabase_user_id": ok, "plan": "none"}
    rows = db.query("SELECT status, attempts, last_error FROM public.sendry_outbox"
                    " WHERE user_id = %s ORDER BY id", (uid,))
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(r["attempts"] == 0 for r in rows), rows
    assert rows[1]["last_error"].startswith("mapping: metadata.prefs is a JSON object"), rows[1]
    assert db.scalar("SELECT count(*) FROM public.sendry_contact_state WHERE user_id = %s", (uid,)) == 0

    # Put right and requeued: rendered again at the claim, and sent.
    db.query("UPDATE public.profiles SET prefs = NULL WHERE id = %s", (uid,))
    db.query("UPDATE public.sendry_outbox SET status = 'pending', next_attempt_at = now() WHERE status = 'failed'")
    run_once(workers)
    assert fake.contacts["nested@example.com"]["metadata"] == {"supabase_user_id": uid, "plan": "pro"}
    assert db.counts() == {"sent": 4}
