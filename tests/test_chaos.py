"""The short version of `make chaos` (tests/chaos.py), in `make check`: each fault with a
few hundred rows against the real binary; nothing may be lost or stuck, and no worker may
crash. Then the regression tests of what it found.

    make && /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_chaos.py
    SENDRY_SYNC_BIN=$PWD/sendry-sync-asan /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/test_chaos.py
"""

import pytest

import chaos
from conftest import T, start_daemon, wait_until
from test_lifecycle import change_email


@pytest.mark.parametrize("scenario", chaos.SCENARIOS)
def test_nothing_lost_or_stuck(cluster, tmp_path, scenario):
    r = chaos.run_scenario(scenario, cluster, chaos.QUICK, str(tmp_path), seed=8)
    table = "\n".join([chaos.header(), chaos.format_row(r), "; ".join(r.notes)] + chaos.report(r))
    print(table)
    assert not r.problems, table
    assert r.lost == 0 and r.stuck == 0, table
    assert r.users > 0 and r.delivered == r.users, table
    assert r.enqueued >= r.users, table


# --- what make chaos found --------------------------------------------------------------

@pytest.mark.parametrize("last", ["third@example.com", "first@example.com"])
def test_a_move_applied_but_unrecorded_then_another_change_leaves_no_old_address(db, fake, workers, last):
    """kill9_backfill found it: a worker is killed while Sendry applies its move of a
    contact (A -> B); before the row's lease ends the user changes the address again
    (B -> C, or back to A). The next claim takes both rows and moves from A, which Sendry
    no longer has: the contact is at B. It must end up at the last address, with nothing
    left at B."""
    uid = db.signup("first@example.com", {"first_name": "Mover"})
    w1 = start_daemon(workers, "--lease", "4", "--http-timeout", "1")
    wait_until(lambda: db.all_sent(1), T, "the sign-up sent")
    fake.delay_next(0.5)
    change_email(db, uid, "second@example.com")
    wait_until(lambda: fake.requests_matching("PATCH"), T, "the move under way")
    w1.kill9()
    wait_until(lambda: "second@example.com" in fake.contacts, T, "Sendry applied the move")
    change_email(db, uid, last)
    start_daemon(workers, "--lease", "4", "--http-timeout", "1")
    wait_until(lambda: db.counts() == {"sent": 3}, T, "every row sent once the lease ran out")
    holds = sorted(c["email"] for c in fake.contacts.values()
                   if c["metadata"]["supabase_user_id"] == uid)
    assert holds == [last], holds
