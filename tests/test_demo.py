"""`make demo` works as the README says: the whole flow on a throwaway PostgreSQL and a fake Sendry, from
the sign-ups to an email change, a deletion, a contact Sendry rejects and its requeue, a sign-up whose
user.signed_up event starts an automation run, ending with `sendry-sync status` and `sendry-sync doctor`."""
import re
import os
import subprocess
import sys

from conftest import ROOT


def test_demo_runs_every_step():
    p = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "pgharness.py"), "run", "--", "sh",
                        os.path.join(ROOT, "contrib", "demo.sh")], cwd=ROOT, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-6000:]
    out = p.stdout
    for step in ("Sign up users", "What Sendry received", "changes her address", "deletes her account",
                 "Sendry rejects a contact", "requeue the failed rows", "Onboarding: an automation",
                 "sendry-sync status", "sendry-sync doctor",
                 "Stop the worker"):
        assert step in out, f"no step {step!r} in the demo's output:\n{out[-6000:]}"
    assert "PATCH /v1/contacts/by-email -> 200" in out, "the email change moved the contact"
    assert "typo@example.com: sent on the requeue" in out
    # The event reached Sendry after the contact, and started one run of the automation.
    onboarding = out[out.index("Onboarding: an automation"):out.index("sendry-sync status: the outbox")]
    assert re.search(r"POST /v1/contacts/import -> 200.*POST /v1/events -> 200", onboarding, re.S), onboarding
    assert '"name": "user.signed_up"' in onboarding and '"event_id": "ss-' in onboarding, onboarding
    assert re.search(r"^automation run run_\d+ for lin@example\.com started by event evt_\d+ -> in_progress$",
                     onboarding, re.M), onboarding
    assert re.search(r"^events\n.*\n  user\.signed_up +0 +1 \(0\) +0$", out, re.M), "status shows the event"
    assert "doctor exited 0" in out or "doctor exited 1" in out
    assert "worker exited 0" in out
