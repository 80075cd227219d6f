"""`make demo` works as the README says: the whole flow on a throwaway PostgreSQL and a fake Sendry, from
the sign-ups to an email change, a deletion, a contact Sendry rejects and its requeue, ending with
`sendry-sync status` and `sendry-sync doctor`."""
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
                 "Sendry rejects a contact", "requeue the failed rows", "sendry-sync status", "sendry-sync doctor",
                 "Stop the worker"):
        assert step in out, f"no step {step!r} in the demo's output:\n{out[-6000:]}"
    assert "PATCH /v1/contacts/by-email -> 200" in out, "the email change moved the contact"
    assert "typo@example.com: sent on the requeue" in out
    assert "doctor exited 0" in out or "doctor exited 1" in out
    assert "worker exited 0" in out
