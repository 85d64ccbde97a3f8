# syntax=docker/dockerfile:1
# bindgate container image: a Rust builder stage, then distroless (glibc + libgcc, no shell, no
# package manager) running as the image's non-root user (uid/gid 65532).
#
#   docker build -t bindgate:0.1.0 .          (or: buildah build -t bindgate:0.1.0 .)
#   docker run --rm -v $PWD/gateway.yaml:/etc/bindgate/config.yaml:ro -p 8080:8080 bindgate:0.1.0
#
# Paths:   /etc/bindgate/config.yaml   the config (mount it; none is baked in)
#          /var/lib/bindgate           state_dir: credentials, allocations (writable, 0700, uid 65532)
# Ports:   9901 admin (/live /ready /metrics ...); loopback-only unless the config says
#          `admin: { address: 0.0.0.0:9901, allow_non_loopback: true }`, as the Kubernetes
#          base does for the kubelet's probes. Listener ports are whatever the config declares.

ARG RUST_IMAGE=docker.io/library/rust:1.95-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# The registry and target directories are build caches (BuildKit / buildah `--mount=type=cache`),
# so a rebuild after a source change compiles only bindgate; the binary is copied out in the same
# step because a cache mount is not part of the image.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin bindgate \
 && install -D -m 0755 target/release/bindgate /out/usr/local/bin/bindgate \
 && install -d -m 0700 /out/var/lib/bindgate \
 && install -d -m 0755 /out/etc/bindgate

FROM ${RUNTIME_IMAGE}
COPY --from=build /out/usr/local/bin/bindgate /usr/local/bin/bindgate
COPY --from=build --chown=65532:65532 /out/var/lib/bindgate /var/lib/bindgate
COPY --from=build /out/etc/bindgate /etc/bindgate
USER 65532:65532
EXPOSE 9901
ENTRYPOINT ["bindgate"]
CMD ["run", "-c", "/etc/bindgate/config.yaml"]
