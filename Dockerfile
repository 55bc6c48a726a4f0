# syntax=docker/dockerfile:1
# Build: docker build --build-arg GIT_COMMIT="$(git rev-parse --short=12 HEAD)" -t tidewater .
# Run:   see the README, "Run in a container" (config + passwords mounted read-only, a
#        writable volume for a SQLite target, status on 0.0.0.0 with a token).

FROM rust:1-bookworm AS build
WORKDIR /src
# .dockerignore keeps target/ and .git out of the context: the commit comes in here.
ARG GIT_COMMIT=unknown
ENV TIDEWATER_GIT_COMMIT=$GIT_COMMIT
COPY . .
RUN cargo build --release --locked --bin tidewater

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tidewater
COPY --from=build /src/target/release/tidewater /usr/local/bin/tidewater
RUN install -d -o tidewater -g tidewater -m 0750 /var/lib/tidewater
USER tidewater
# SQLite targets: mount a writable volume here (the rest of the image is read-only to
# the tidewater user).
VOLUME ["/var/lib/tidewater"]
EXPOSE 8790
# In a container the status server must listen beyond loopback: set
# [status] listen = "0.0.0.0:8790" in the mounted config, and a token_file, or anyone
# who reaches the port reads /status and /metrics (/healthz stays open for this check).
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8790/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tidewater"]
CMD ["run", "--config", "/etc/tidewater/tidewater.toml"]
