# syntax=docker/dockerfile:1
#
# remora's container images: one build stage, then one stage per image.
#
#   docker build --target proxy   -t remora-proxy .
#   docker build --target control -t remora-control .
#   docker build --target init    -t remora-init .
#
# The proxy and the control plane are distroless cc for Debian 12: glibc
# and libgcc, which is all the release binaries link (rustls and ring, not
# OpenSSL), no shell and no package manager, run as the nonroot user
# 65532:65532 in /home/nonroot. The init image is the proxy's binary for
# `remora-proxy init`, the init container `remora-control inject` adds:
# it runs iptables and ip6tables as root, so it is Debian 12 slim with the
# iptables package, kept apart so that the sidecar stays distroless.
# images/assemble makes the same images (same paths, same users) without
# Docker or a registry; .ci/image-check runs them. See
# docs/operations.md, "Container images".

# The lockfile's dependencies need 1.91 or newer (notify-types 2.3.0).
ARG RUST_VERSION=1.93

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The release profile is fat LTO with one codegen unit: slow to link, so
# the registry and the target directory are cache mounts that survive
# between builds. A cache mount is not part of the image, so the binaries
# are copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p remora-proxy -p remora-control \
 && mkdir /out \
 && cp target/release/remora-proxy target/release/remora-control /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="remora"
USER 65532:65532
WORKDIR /home/nonroot

FROM runtime AS control
LABEL org.opencontainers.image.title="remora-control" \
      org.opencontainers.image.description="remora's control plane: serves mesh.yaml and registrations to the proxies, signs their certificates"
COPY --from=build /out/remora-control /usr/local/bin/remora-control
# api, admin
EXPOSE 8086 9990
ENTRYPOINT ["/usr/local/bin/remora-control"]

FROM debian:bookworm-slim AS init
# iptables 1.8.9: `iptables` and `ip6tables` are the nf_tables variant,
# Debian's default alternative; the legacy one comes with it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
# After the install: a RUN after an ARG is rebuilt when the ARG changes.
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="remora" \
      org.opencontainers.image.title="remora-init" \
      org.opencontainers.image.description="remora's init container: remora-proxy init, which installs the iptables rules of transparent mode"
COPY --from=build /out/remora-proxy /usr/local/bin/remora-proxy
# Root, as iptables needs; the init container's securityContext drops every
# capability but NET_ADMIN and NET_RAW.
USER 0:0
WORKDIR /
ENTRYPOINT ["/usr/local/bin/remora-proxy"]

# Last, so that a build without --target gives the proxy.
FROM runtime AS proxy
LABEL org.opencontainers.image.title="remora-proxy" \
      org.opencontainers.image.description="remora's sidecar proxy"
COPY --from=build /out/remora-proxy /usr/local/bin/remora-proxy
# outbound, inbound, admin
EXPOSE 4140 4143 4191
ENTRYPOINT ["/usr/local/bin/remora-proxy"]
