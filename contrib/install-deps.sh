#!/bin/sh
# Installs the Debian 12 packages that building, testing and the demo need.
# Idempotent and non-interactive; run as root (or it uses sudo). Used by .ci/run.
set -eu

# Keep these lists in step with the Dockerfile (tests/test_packaging.py checks).
BUILD_PACKAGES="gcc make pkg-config libc6-dev libpq-dev libcurl4-openssl-dev libjson-c-dev libev-dev libmicrohttpd-dev libssl-dev libsystemd-dev"
# pgbouncer: doctor through a transaction-mode pooler; openssl: a private CA for --ca-file;
# systemd: systemd-analyze for the unit (not started); python3-yaml: the compose file;
# prometheus: promtool, to check and unit-test the alert rules; mandoc: the man page's lint;
# debhelper, dpkg-dev, fakeroot, lintian: make deb and its check.
TEST_PACKAGES="postgresql-15 postgresql-client-15 postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl python3 python3-pytest python3-psycopg python3-yaml valgrind curl clang libclang-rt-14-dev pgbouncer openssl systemd prometheus mandoc debhelper dpkg-dev fakeroot lintian"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=""
for p in $BUILD_PACKAGES $TEST_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -z "$missing" ]; then
    echo "install-deps: all packages present"
    exit 0
fi
echo "install-deps: installing:$missing"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
# shellcheck disable=SC2086
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
