#!/usr/bin/env bash
# Captures real libsrt traffic through the relay for the fuzz seed corpus (see README.md).
#
#   fuzz/capture.sh OUT_DIR        (root; needs ffmpeg srt-tools pv tcpdump nftables curl)
#
# Everything runs inside a network namespace this script creates (and deletes on exit), on
# that namespace's loopback: the relay (target/debug/stsync-proxy, userspace datapath),
# srt-live-transmit and ffmpeg publishers and viewers, a VLC viewer when cvlc is installed,
# and tcpdump writing OUT_DIR/clean.pcap. Then a second pass with 3 % of the packets to and
# from the relay dropped by nftables writes OUT_DIR/lossy.pcap (NAKs, retransmissions,
# DROPREQs). Convert with `cargo xtask fuzz-corpus OUT_DIR/*.pcap`.
set -euo pipefail
out=$(realpath -m "${1:?usage: $0 OUT_DIR}")
root=$(cd "$(dirname "$0")/.." && pwd)
relay_bin=$root/target/debug/stsync-proxy
[ -x "$relay_bin" ] || (cd "$root" && cargo build -q -p stsync-user --bin stsync-proxy)
mkdir -p "$out"
ns=stsync-fuzzcap-$$
work=$(mktemp -d)
pids=()

cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

inns() { ip netns exec "$ns" "$@"; }
# `ip netns exec` execs the program, so $! is the program itself. SIGTERM, not SIGINT:
# background jobs of a script start with SIGINT ignored. Every program here closes cleanly
# on SIGTERM (the SRT ones send SHUTDOWN).
# (`<&0`: an asynchronous command's stdin would be /dev/null, and the publisher reads its.)
bg() { ip netns exec "$ns" "$@" <&0 & pids+=($!); }
stop() {
    kill -TERM "$1" 2>/dev/null || true
    for _ in $(seq 30); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

ip netns add "$ns"
inns ip link set lo up

ffmpeg -loglevel error -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=frequency=440 \
    -c:v mpeg2video -b:v 1000k -minrate 1000k -maxrate 1000k -bufsize 500k -g 25 -c:a mp2 \
    -t 12 -f mpegts "$work/clip.ts"
rate=$(($(stat -c %s "$work/clip.ts") / 12))

cat >"$work/config.json" <<EOF
{
  "srt_listen": "127.0.0.1:9999",
  "http_listen": "127.0.0.1:9998",
  "streams": [
    { "id": "1", "name": "one", "token": "fuzz-capture-token-1" },
    { "id": "2", "name": "two", "token": "fuzz-capture-token-2" }
  ]
}
EOF

key() {
    inns curl -sf -X POST -H "Authorization: Bearer fuzz-capture-token-$1" \
        "http://127.0.0.1:9998/v1/streams/$1/sessions" | sed 's/.*"session_id":"\([0-9a-f]*\)".*/\1/'
}
url() { echo "srt://127.0.0.1:9999?streamid=#!::r=$1,s=$(key "$1"),m=$2"; }

session() {
    local name=$1
    bg tcpdump -q -i lo -s 0 -U -w "$out/$name.pcap" udp port 9999
    local tcpdump_pid=${pids[-1]}
    bg env RUST_LOG=warn "$relay_bin" --config "$work/config.json" --datapath userspace
    local relay_pid=${pids[-1]}
    for _ in $(seq 50); do inns curl -sf http://127.0.0.1:9998/v1/health >/dev/null && break; sleep 0.1; done

    # A viewer that waits for the publisher; the publisher (byte-paced srt-live-transmit);
    # an ffmpeg viewer that joins mid-stream; an ffmpeg publisher and viewer on stream 2.
    bg srt-live-transmit -q -a:no "$(url 1 request)" file://con >/dev/null
    local v1=${pids[-1]}
    sleep 0.5
    bg srt-live-transmit -q -a:no file://con "$(url 1 publish)" < <(pv -q -L "$rate" "$work/clip.ts")
    local p1=${pids[-1]}
    sleep 1.5
    bg ffmpeg -nostdin -loglevel quiet -i "$(url 1 request)" -c copy -f mpegts -y /dev/null
    local v2=${pids[-1]}
    bg ffmpeg -nostdin -loglevel quiet -re -i "$work/clip.ts" -c copy -f mpegts "$(url 2 publish)"
    local p2=${pids[-1]}
    sleep 0.5
    bg ffmpeg -nostdin -loglevel quiet -i "$(url 2 request)" -c copy -f mpegts -y /dev/null
    local v3=${pids[-1]}
    if command -v cvlc >/dev/null && [ "$name" = clean ]; then
        # VLC sends the stream ID undecoded: `%23!::...`.
        bg su nobody -s /bin/sh -c "exec timeout 3 cvlc -q 'srt://127.0.0.1:9999?streamid=%23!::r=1,s=$(key 1),m=request' --sout '#std{access=file,mux=ts,dst=/dev/null}' vlc://quit"
    fi
    # Rejections: an unknown key, a malformed ID, a used key.
    inns timeout 3 srt-live-transmit -q -a:no "srt://127.0.0.1:9999?streamid=#!::r=1,s=abcdef,m=request" file://con >/dev/null 2>&1 || true
    inns timeout 3 srt-live-transmit -q -a:no "srt://127.0.0.1:9999?streamid=hello" file://con >/dev/null 2>&1 || true
    sleep 2
    # SHUTDOWN from each side: stream 1's clients stop, keepalives flow a while, then the
    # relay stops while stream 2's are still connected.
    stop "$v2"; stop "$p1"; sleep 1; stop "$v1"
    sleep 1.5
    stop "$relay_pid"; sleep 0.5; stop "$v3"; stop "$p2"; stop "$tcpdump_pid"
}

session clean
# 3 % of the datagrams to and from the relay port lost, both legs.
inns nft add table inet lossy
inns nft add chain inet lossy out '{ type filter hook output priority 0; }'
inns nft add rule inet lossy out udp sport 9999 numgen random mod 100 lt 3 drop
inns nft add rule inet lossy out udp dport 9999 numgen random mod 100 lt 3 drop
session lossy
ls -l "$out"
