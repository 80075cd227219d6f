# sendry-sync in a container: built on Debian bookworm, run on bookworm-slim with only
# the runtime libraries, as a non-root user.
#
#   docker build -t sendry-sync .
#   docker run --rm -e DATABASE_URL=... -e SENDRY_API_KEY=... -e SENDRY_AUDIENCE_ID=... sendry-sync
#
# The build stage installs the BUILD_PACKAGES of contrib/install-deps.sh, which .ci/run
# uses; tests/test_packaging.py checks that the two lists agree.

FROM debian:bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        gcc make pkg-config libc6-dev libpq-dev libcurl4-openssl-dev libjson-c-dev libev-dev \
        libmicrohttpd-dev libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Makefile ./
COPY src ./src
COPY sql ./sql
RUN make sendry-sync

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        libpq5 libcurl4 libjson-c5 libev4 libmicrohttpd12 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --uid 10001 --shell /usr/sbin/nologin sendry
COPY --from=build /src/sendry-sync /usr/local/bin/sendry-sync
USER sendry
ENTRYPOINT ["/usr/local/bin/sendry-sync"]
