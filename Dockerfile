# syntax=docker/dockerfile:1
#
# Quarry container image. CI does not build this file: it is provided for operators and is
# checked only by hand (`docker build -t quarry .`).
#
#   docker build -t quarry .
#   docker run -d --name quarry --stop-timeout 30 \
#     -p 3333:3333 -p 8080:8080 \
#     -v quarry-data:/var/lib/quarry \
#     -v "$PWD/quarry.toml:/etc/quarry/quarry.toml:ro" \
#     quarry
#
# The image ships quarry.example.toml as /etc/quarry/quarry.toml, a starting point only: mount
# your own config over it. Two things to change for a container:
#   - [api] listen in the example is 127.0.0.1:8080, unreachable from outside the container:
#     the image sets QUARRY_API_LISTEN=0.0.0.0:8080 (the dashboard and API; the flag is
#     --api-listen). Put a reverse proxy with TLS in front of it on a public host.
#   - [[node]] url must point at a bitcoind the container can reach (not 127.0.0.1, unless you
#     run with --network host). QUARRY_NODE_URL, QUARRY_RPC_USER, QUARRY_RPC_PASSWORD and
#     QUARRY_RPC_COOKIE override the first node; `quarry serve --help` lists every QUARRY_*.
# The found blocks, the SQLite share log (quarry.db), the share spool and the generated SV2
# authority key all live in the data volume /var/lib/quarry: keep it.
# On SIGTERM quarry drains (miners are told to reconnect, the share log is flushed); give it
# time with --stop-timeout 30 (compose: stop_grace_period: 30s).

FROM rust:1.95-bookworm AS builder
# A C compiler (gcc, already in the image) builds ring, secp256k1 and the bundled SQLite.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p quarry \
    && install -D -m 0755 target/release/quarry /out/quarry

FROM debian:bookworm-slim
# No C libraries beyond glibc at runtime (rustls for TLS, SQLite linked in); CA roots for TLS.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system quarry \
    && useradd --system --gid quarry --home-dir /var/lib/quarry --no-create-home \
         --shell /usr/sbin/nologin quarry \
    && install -d -m 0750 -o quarry -g quarry /var/lib/quarry \
    && install -d -m 0755 /etc/quarry
COPY --from=builder /out/quarry /usr/local/bin/quarry
COPY quarry.example.toml /etc/quarry/quarry.toml

ENV QUARRY_API_LISTEN=0.0.0.0:8080
USER quarry
WORKDIR /var/lib/quarry
VOLUME /var/lib/quarry

# 3333: Stratum V1 and V2 ([stratum] listen). 8080: HTTP API, /metrics ([api] listen; see
# above). 5555: Kaspa stratum ([kaspa] listen, only when [kaspa] enabled = true).
# Stratum over TLS ([stratum] tls_listen, e.g. 3334) is off by default: publish it if you set it.
EXPOSE 3333 8080 5555

STOPSIGNAL SIGTERM
ENTRYPOINT ["quarry"]
CMD ["serve", "--config", "/etc/quarry/quarry.toml", "--data-dir", "/var/lib/quarry", "--log-format", "json"]
