#!/bin/sh
# Issue 14: what AES-CTR costs per 1316-byte SRT payload in the kernel (bpf_crypto kfuncs, timed
# with BPF_PROG_TEST_RUN; AF_ALG) and in userspace (examples/crypto_cost). See README.md.
# Needs root and a kernel with BTF (/sys/kernel/btf/vmlinux). Installs clang (>= 15, for the
# kptr type tag), libbpf-dev, bpftool and linux-libc-dev with apt-get when they are missing.
#   stsync-bench/kcrypto/run.sh [repeat]      (repeat: runs per test_run, 20000 by default)
# KCRYPTO_NO_CARGO=1 skips the userspace figures; KCRYPTO_OUT sets the build directory.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${KCRYPTO_OUT:-$root/target/kcrypto}
repeat=${1:-20000}
mkdir -p "$out"

clang_ok() { # a clang whose major version is 15 or more
	command -v "$1" >/dev/null 2>&1 || return 1
	v=$("$1" -dumpversion 2>/dev/null | cut -d. -f1)
	[ "${v:-0}" -ge 15 ]
}
find_clang() {
	for c in clang clang-19 clang-18 clang-17 clang-16 clang-15; do
		if clang_ok "$c"; then echo "$c"; return 0; fi
	done
	return 1
}
missing=""
[ -f /usr/include/bpf/libbpf.h ] || missing="$missing libbpf-dev"
command -v bpftool >/dev/null 2>&1 || missing="$missing bpftool"
[ -f /usr/include/linux/if_alg.h ] || missing="$missing linux-libc-dev"
command -v cc >/dev/null 2>&1 || missing="$missing gcc"
if [ -n "$missing" ] || ! find_clang >/dev/null; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	[ -z "$missing" ] || apt-get install -y -qq $missing
	find_clang >/dev/null || apt-get install -y -qq clang || true
	find_clang >/dev/null || apt-get install -y -qq clang-16
fi
CLANG=$(find_clang)

echo "machine: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) CPUs, Linux $(uname -r)"
echo "kernel AES drivers: $(grep -A1 '^name *: aes$' /proc/crypto | sed -n 's/^driver *: //p' | tr '\n' ' ')"
grep -qw aes /proc/cpuinfo && echo "CPU has AES-NI: yes" || echo "CPU has AES-NI: no"
echo "build: $($CLANG --version | head -1); $(bpftool version | head -1)"
echo

bpftool btf dump file /sys/kernel/btf/vmlinux format c > "$out/vmlinux.h"
"$CLANG" -O2 -g -Wall -target bpf -D__TARGET_ARCH_x86 -I"$out" \
	-c "$here/kcrypto.bpf.c" -o "$out/kcrypto.bpf.o"
bpftool gen skeleton "$out/kcrypto.bpf.o" > "$out/kcrypto.skel.h"
cc -O2 -Wall -I"$out" "$here/kcrypto.c" -lbpf -o "$out/kcrypto"
"$out/kcrypto" "$repeat"

if [ -z "${KCRYPTO_NO_CARGO:-}" ]; then
	echo
	echo "userspace (cargo run --release -p stsync-user --example crypto_cost):"
	cd "$root" && cargo run --release -q -p stsync-user --example crypto_cost
fi
