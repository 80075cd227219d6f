"""The Dockerfile must install what contrib/install-deps.sh (run by .ci/run) installs for the build, and the runtime
libraries those -dev packages stand for, so the two cannot drift apart."""
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ci_list(name):
    text = open(os.path.join(ROOT, "contrib", "install-deps.sh")).read()
    m = re.search(rf'^{name}="([^"]*)"', text, re.M)
    assert m, f"{name} not found in contrib/install-deps.sh"
    return set(m.group(1).split())


def dockerfile_stages():
    """Packages passed to apt-get install in each FROM stage, in order."""
    text = open(os.path.join(ROOT, "Dockerfile")).read().replace("\\\n", " ")
    stages = []
    for line in text.splitlines():
        if line.startswith("FROM "):
            stages.append((line.split()[1], set()))
        m = re.search(r"apt-get install ([^&]*)", line)
        if m and stages:
            stages[-1][1].update(w for w in m.group(1).split() if not w.startswith("-"))
    return stages


def test_build_stage_matches_ci():
    stages = dockerfile_stages()
    assert stages[0][0] == "debian:bookworm"
    assert stages[0][1] == ci_list("BUILD_PACKAGES")


def test_runtime_stage_is_slim_and_has_each_runtime_library():
    stages = dockerfile_stages()
    image, runtime = stages[-1]
    assert image == "debian:bookworm-slim"
    assert not any(p.endswith("-dev") for p in runtime), runtime
    if not shutil.which("apt-cache"):
        pytest.skip("apt-cache not available to resolve -dev packages")
    for dev in sorted(p for p in ci_list("BUILD_PACKAGES") if p.endswith("-dev") and p != "libc6-dev"):
        out = subprocess.run(["apt-cache", "depends", dev], stdout=subprocess.PIPE, text=True).stdout
        deps = set(re.findall(r"^\s*Depends: (\S+)", out, re.M))
        assert deps & runtime, f"{dev}: none of its runtime libraries {sorted(deps)} is in the runtime stage"
