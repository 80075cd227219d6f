"""The completion (COMPLETE_SQL of src/complete.c, read from the source as the worker
sends it) takes no row lock: it updates each row by ctid with the claim checked in the
UPDATE's own WHERE, which PostgreSQL checks again on the row's latest version when
another transaction changed the row while the completion waited for it (READ COMMITTED's
recheck). These tests hold such a change open in a second session, start the completion,
commit the change, and look at what the completion wrote: never an outcome over another
claim, and the contact's state only for an outcome written.

    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_complete_race.py
"""

import json
import threading

import psycopg

from conftest import T, wait_until
from test_hot_plans import c_statement

WORKER = "race-worker"
COMPLETE_SQL = c_statement("complete.c", "COMPLETE_SQL")


def held_row(db):
    """One captured row of a new user, claimed by WORKER under claim 7 (as the claim leaves it)."""
    uid = db.signup("race@example.com")
    db.query("UPDATE public.sendry_outbox SET status = 'processing', locked_by = %s,"
             " locked_until = now() + interval '1 minute', next_attempt_at = now() + interval '1 minute',"
             " claim_id = 7, attempts = 1, email = 'race@example.com' WHERE user_id = %s", (WORKER, uid))
    return uid, db.scalar("SELECT id FROM public.sendry_outbox WHERE user_id = %s", (uid,))


def sent_outcome(row_id, uid):
    return json.dumps([{"id": row_id, "claim_id": 7, "status": "sent", "http_status": 200, "error": None,
                        "delay_ms": 0, "uncount": 0, "deduped": None, "user_id": uid,
                        "state_email": "race@example.com", "state_audiences": None, "hash": "42"}])


def complete_while(db, change, outcome):
    """Runs the completion while another session holds `change` uncommitted on the row;
    commits the change once the completion waits for it. Returns the completion's rows."""
    result = {}

    def run():
        try:
            with psycopg.connect(db.cluster.dsn_for("postgres"), autocommit=True) as c:
                c.execute(f"PREPARE complete(jsonb, text) AS {COMPLETE_SQL}")
                result["rows"] = psycopg.ClientCursor(c).execute("EXECUTE complete(%s, %s)", (outcome, WORKER)).fetchall()
        except Exception as e:  # noqa: BLE001 (reported below)
            result["error"] = e

    with psycopg.connect(db.cluster.dsn_for("postgres")) as other:
        other.execute(change)
        t = threading.Thread(target=run, daemon=True)
        t.start()
        wait_until(lambda: "error" in result or db.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND %s = ANY (pg_blocking_pids(pid))", (other.info.backend_pid,)) == 1,
            T, "the completion waiting for the other session's change")
        other.commit()
    t.join(T)
    assert not t.is_alive() and "error" not in result, result
    return result["rows"]


def test_a_row_claimed_again_while_the_completion_waits_keeps_the_new_claim(db):
    """Another worker's claim (after this one's lease ran out) commits while the completion
    waits for the row: the outcome is not written over it, and no state is recorded."""
    uid, row_id = held_row(db)
    rows = complete_while(db, "UPDATE public.sendry_outbox SET claim_id = 8, locked_by = 'other-worker',"
                              f" attempts = 2 WHERE id = {row_id}", sent_outcome(row_id, uid))
    assert rows == []
    row = db.query("SELECT status, claim_id, locked_by FROM public.sendry_outbox WHERE id = %s", (row_id,))[0]
    assert row == {"status": "processing", "claim_id": 8, "locked_by": "other-worker"}
    assert db.scalar("SELECT count(*) FROM public.sendry_contact_state WHERE user_id = %s", (uid,)) == 0


def test_a_row_released_by_hand_while_the_completion_waits_is_not_written(db):
    """An operator's requeue of the held row commits while the completion waits: the row
    stays as the operator left it."""
    uid, row_id = held_row(db)
    rows = complete_while(db, "UPDATE public.sendry_outbox SET status = 'pending', locked_by = NULL,"
                              f" locked_until = NULL, next_attempt_at = now() WHERE id = {row_id}",
                          sent_outcome(row_id, uid))
    assert rows == []
    assert db.scalar("SELECT status FROM public.sendry_outbox WHERE id = %s", (row_id,)) == "pending"
    assert db.scalar("SELECT count(*) FROM public.sendry_contact_state WHERE user_id = %s", (uid,)) == 0


def test_a_change_of_another_column_while_the_completion_waits_leaves_the_outcome_unrecorded(db):
    """A change of another column (max_attempts) commits while the completion waits: the
    row's latest version is not the one the completion found, so the outcome is not
    written (the worker reports it unrecorded, "changed by someone else"); the row keeps
    the change, and comes back after its lease."""
    uid, row_id = held_row(db)
    rows = complete_while(db, f"UPDATE public.sendry_outbox SET max_attempts = 9 WHERE id = {row_id}",
                          sent_outcome(row_id, uid))
    assert rows == []
    row = db.query("SELECT status, max_attempts, locked_by FROM public.sendry_outbox WHERE id = %s", (row_id,))[0]
    assert row == {"status": "processing", "max_attempts": 9, "locked_by": WORKER}
    assert db.scalar("SELECT count(*) FROM public.sendry_contact_state WHERE user_id = %s", (uid,)) == 0


def complete(db, outcome):
    with psycopg.connect(db.cluster.dsn_for("postgres"), autocommit=True) as c:
        c.execute(f"PREPARE complete(jsonb, text) AS {COMPLETE_SQL}")
        return psycopg.ClientCursor(c).execute("EXECUTE complete(%s, %s)", (outcome, WORKER)).fetchall()


def test_a_row_claimed_again_before_the_completion_is_not_written(db):
    """Another worker's claim committed before the completion began: the completion finds
    the row's new version, whose claim is not its own, and writes nothing."""
    uid, row_id = held_row(db)
    db.query("UPDATE public.sendry_outbox SET claim_id = 8, locked_by = 'other-worker', attempts = 2"
             " WHERE id = %s", (row_id,))
    assert complete(db, sent_outcome(row_id, uid)) == []
    row = db.query("SELECT status, claim_id, locked_by FROM public.sendry_outbox WHERE id = %s", (row_id,))[0]
    assert row == {"status": "processing", "claim_id": 8, "locked_by": "other-worker"}
    assert db.scalar("SELECT count(*) FROM public.sendry_contact_state WHERE user_id = %s", (uid,)) == 0


def test_an_outcome_of_this_claim_is_written_with_the_state(db):
    """Nothing in the way: the row is sent, unlocked, and the state Sendry accepted kept."""
    uid, row_id = held_row(db)
    assert complete(db, sent_outcome(row_id, uid)) == [(row_id, 7)]
    row = db.query("SELECT status, locked_by, locked_until FROM public.sendry_outbox WHERE id = %s", (row_id,))[0]
    assert row == {"status": "sent", "locked_by": None, "locked_until": None}
    assert db.scalar("SELECT contact_hash FROM public.sendry_contact_state WHERE user_id = %s", (uid,)) == 42
