# syntax=docker/dockerfile:1
# Build: docker build -t tidewater .
# Run:   docker run -v /etc/tidewater:/etc/tidewater:ro -p 127.0.0.1:8790:8790 tidewater

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tidewater

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin tidewater
COPY --from=build /src/target/release/tidewater /usr/local/bin/tidewater
USER tidewater
EXPOSE 8790
# In a container the status server must listen beyond loopback: set
# [status] listen = "0.0.0.0:8790" in the mounted config.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8790/healthz || exit 1
ENTRYPOINT ["/usr/local/bin/tidewater"]
CMD ["run", "--config", "/etc/tidewater/tidewater.toml"]
