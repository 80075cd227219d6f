# sendry-sync in a container: built on Debian bookworm, run on bookworm-slim with only
# the runtime libraries, as a non-root user with a numeric uid (so Kubernetes'
# runAsNonRoot can verify it), with a HEALTHCHECK.
#
#   docker build -t sendry-sync .
#   docker run --rm -e DATABASE_URL=... -e SENDRY_API_KEY_FILE=/run/secrets/key \
#       -v /path/to/key:/run/secrets/key:ro -e SENDRY_AUDIENCE_ID=... sendry-sync
#
# The build stage installs the BUILD_PACKAGES of contrib/install-deps.sh, which .ci/run
# uses, and the runtime stage the libraries they stand for; tests/test_packaging.py
# checks that the lists agree. contrib/docker-compose.yml runs it (and a demo).

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc make pkg-config libc6-dev libpq-dev libcurl4-openssl-dev libjson-c-dev libev-dev \
        libmicrohttpd-dev libssl-dev libsystemd-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY src ./src
COPY sql ./sql
RUN make sendry-sync && strip sendry-sync

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpq5 libcurl4 libjson-c5 libev4 libmicrohttpd12 libssl3 libsystemd0 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 sendry \
 && useradd --system --no-create-home --uid 10001 --gid 10001 --shell /usr/sbin/nologin sendry
COPY --from=build /src/sendry-sync /usr/local/bin/sendry-sync
USER 10001:10001
# Asks the worker's GET /healthz when SENDRY_LISTEN is set (the environment is what a
# HEALTHCHECK sees, not the worker's flags), else checks the database: exit 0 or 1.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/sendry-sync", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/sendry-sync"]
