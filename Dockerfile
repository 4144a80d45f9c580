# Multi-stage build of stsync-proxy with its eBPF fast path: the same steps as .ci/run and
# `cargo xtask run`. Run with host networking (docker's NAT costs a lot per UDP packet); the
# kernel fast path needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (or --privileged); without
# them the relay logs why and serves every viewer from userspace.
# The image name is the one deploy/k8s runs (README, "Kubernetes"):
#   docker build -t ghcr.io/streamsync/stsync-proxy:0.1 .
#   docker run -d --name streamsync --network=host --cap-add=BPF --cap-add=NET_ADMIN \
#     --cap-add=PERFMON -v $PWD/config.json:/etc/stsync/config.json \
#     ghcr.io/streamsync/stsync-proxy:0.1
FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends llvm-22-dev libpolly-22-dev \
 && rustup toolchain install nightly --profile minimal --component rust-src \
 && LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22
WORKDIR /src
COPY . .
RUN cargo xtask build-ebpf \
 && cargo build --release -p stsync-user --bin stsync-proxy

FROM debian:bookworm-slim
COPY --from=build /src/target/release/stsync-proxy /usr/local/bin/stsync-proxy
COPY --from=build /src/target/bpfel-unknown-none/release/stsync-ebpf /usr/lib/stsync/stsync-ebpf
COPY config.json /etc/stsync/config.json
EXPOSE 9999/udp 9998/tcp
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/stsync-proxy", "--config", "/etc/stsync/config.json"]
