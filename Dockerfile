# payhook container image.
#
#   docker build -t payhook .
#   docker run --rm -v "$PWD/my.toml:/etc/payhook/payhook.toml:ro" -p 8080:8080 payhook
#
# Inside a container the config listens on 0.0.0.0:8080 (notify) and 0.0.0.0:9090 (admin, for
# Prometheus and the health check); never publish the admin port to the internet.
# compose.yaml runs the quick start with Redis and the PHP example backend; see
# docs/production.md.

# ---- build ------------------------------------------------------------------------------
FROM rust:1-bookworm AS build

# pingora's zlib-ng build needs cmake; the rest (gcc, make, binutils) is in the image.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
COPY . .
# --locked: exactly the versions of Cargo.lock. The release profile keeps line tables
# (debug = 1, ~130 MB); the image keeps the symbols (function names in backtraces) but not
# the DWARF, which takes the binary to under 20 MB.
RUN cargo build --release --locked \
 && strip --strip-debug target/release/payhook \
 && target/release/payhook --version

# ---- run --------------------------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates: https backends and the providers' query APIs verify against system roots.
# uid/gid 10001: a fixed non-root id, so Kubernetes' runAsUser/fsGroup and host-side file
# permissions can name it.
# /var/lib/payhook: working directory, and the embedded ledger's home if one is used
#   (mount a volume there: [ledger] path = "/var/lib/payhook/ledger.redb").
# /run/payhook: $RUNTIME_DIRECTORY, the default directory of the pid file and the upgrade
#   socket; payhook refuses a directory that other users can write, hence 0700.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 payhook \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/payhook --no-create-home \
      --shell /usr/sbin/nologin payhook \
 && install -d -o payhook -g payhook -m 0700 /var/lib/payhook /run/payhook \
 && install -d -m 0755 /etc/payhook

COPY --from=build /src/target/release/payhook /usr/local/bin/payhook

ENV RUNTIME_DIRECTORY=/run/payhook \
    PAYHOOK_LOG=info

USER 10001:10001
WORKDIR /var/lib/payhook

# 8080: provider notifications (server.listen); 9090: /metrics, /healthz, /readyz and the
# admin API (server.admin_listen; keep it private).
EXPOSE 8080 9090

# No HTTP client in the image: bash's /dev/tcp asks the admin listener for /healthz (200
# while the process runs). Assumes admin_listen on port 9090 over plain HTTP (not admin_tls);
# change both together.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && IFS= read -r status <&3 && [[ $status == 'HTTP/1.1 200'* ]]"]

# payhook is PID 1: SIGTERM (docker stop) is pingora's graceful shutdown (stop accepting,
# grace_period, then up to 5 s for in-flight notifications); SIGHUP reloads keys, routes and
# admin tokens.
ENTRYPOINT ["payhook"]
CMD ["run", "--config", "/etc/payhook/payhook.toml"]
