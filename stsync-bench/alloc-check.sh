#!/bin/sh
# Heap allocations per packet in steady state (docs/BENCHMARKS.md, "Allocation check"):
# the release relay on loopback, stsync-loadgen publishing 4 Mbit/s to 10 viewers,
# stsync_heap_allocations_total scraped after the 8192-slot ring has wrapped (each slot
# allocates its payload buffer once, on first use: ~22 s at 4 Mbit/s): twice back to back
# (what a scrape itself costs), then 10 s later; allocations in those 10 s = the difference
# less one scrape.
#
#   stsync-bench/alloc-check.sh userspace|ebpf clear|aes128|pub-aes128|view-aes128 [VIEWERS]
#
# Needs target/release/stsync-proxy and stsync-loadgen (and for ebpf, root and
# `cargo xtask build-ebpf`; the kernel path on lo). Everything on 127.0.0.1, ports 3999x.
set -eu
datapath=${1:-userspace}
crypto=${2:-aes128}
viewers=${3:-10}
bin=$(dirname "$0")/../target/release
dir=$(mktemp -d /tmp/stsb-alloc.XXXXXX)
token=stsync-alloc-check-token-1
pub_pass=alloc-check-publisher
view_pass=alloc-check-viewers
stream='{"id":"1","name":"alloc","token":"'$token'"'
gen=""
case $crypto in
clear) ;;
aes128) stream=$stream',"publish_passphrase":"'$pub_pass'","view_passphrase":"'$view_pass'"'
    gen="--publish-passphrase $pub_pass --view-passphrase $view_pass" ;;
pub-aes128) stream=$stream',"publish_passphrase":"'$pub_pass'"'
    gen="--publish-passphrase $pub_pass" ;;
view-aes128) stream=$stream',"view_passphrase":"'$view_pass'"'
    gen="--view-passphrase $view_pass" ;;
*) echo "unknown encryption $crypto" >&2; exit 2 ;;
esac
cat > "$dir/relay.json" <<JSON
{"srt_listen":"127.0.0.1:39999","http_listen":"127.0.0.1:39998","streams":[$stream}]}
JSON
if curl -sf http://127.0.0.1:39998/v1/health >/dev/null; then
    echo "127.0.0.1:39998 already answers: another relay is running" >&2
    exit 1
fi
extra=""
[ "$datapath" = ebpf ] && extra="--ebpf-interfaces lo"
# shellcheck disable=SC2086
"$bin/stsync-proxy" --config "$dir/relay.json" --datapath "$datapath" $extra >"$dir/relay.log" 2>&1 &
relay=$!
# (set -e holds in the trap too: nothing in it may fail before the rm.)
trap 'kill $relay $gen_pid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
gen_pid=""
for _ in $(seq 50); do curl -sf http://127.0.0.1:39998/v1/health >/dev/null && break; sleep 0.1; done
# shellcheck disable=SC2086
"$bin/stsync-loadgen" --relay 127.0.0.1:39999 --http 127.0.0.1:39998 --token $token \
    --viewers "$viewers" --warmup 40 --duration 5 --quiet --json "$dir/loadgen.json" $gen &
gen_pid=$!
sleep 30
scrape() { curl -sf -H "Authorization: Bearer $token" http://127.0.0.1:39998/v1/metrics > "$dir/m$1"; }
scrape 1; scrape 2; sleep 10; scrape 3
val() { awk -v n="$1" '$1 ~ "^"n"({|$)" { s += $2 } END { printf "%.0f", s }' "$dir/m$2"; }
a1=$(val stsync_heap_allocations_total 1); a2=$(val stsync_heap_allocations_total 2)
a3=$(val stsync_heap_allocations_total 3)
d() { echo $(( $(val "$1" 3) - $(val "$1" 2) )); }
echo "datapath=$datapath crypto=$crypto viewers=$viewers window=10s" \
    "publisher_packets_in=$(d srt_connection_data_packets_recv)" \
    "data_packets_out=$(d srt_connection_data_packets_sent)" \
    "kernel_clones_out=$(d srt_connection_data_packets_sent_kernel)" \
    "control_packets_in=$(d srt_connection_ctrl_packets_recv)" \
    "scrape_cost=$((a2 - a1)) allocations=$(( (a3 - a2) - (a2 - a1) ))"
grep -c "aes_bits=[1-9]" "$dir/relay.log" | sed 's/^/encrypted_connections=/'
wait $gen_pid
