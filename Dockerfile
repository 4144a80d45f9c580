# Multi-stage build of stsync-proxy. The same steps as `cargo xtask run` / .ci/run.
# Run with host networking (docker NAT costs a lot per UDP packet); the eBPF datapath needs
# CAP_BPF and CAP_NET_ADMIN (or --privileged), without them the relay serves from userspace.
#   docker build -t stsync-proxy .
#   docker run -d --name streamsync --network=host --cap-add=BPF --cap-add=NET_ADMIN \
#     -v $PWD/config.json:/etc/stsync/config.json stsync-proxy
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p stsync-user --bin stsync-proxy

FROM debian:bookworm-slim
COPY --from=build /src/target/release/stsync-proxy /usr/local/bin/stsync-proxy
COPY config.json /etc/stsync/config.json
EXPOSE 9999/udp 9998/tcp
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/stsync-proxy", "--config", "/etc/stsync/config.json"]
