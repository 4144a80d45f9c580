// SPDX-License-Identifier: MIT OR Apache-2.0
/* Loads kcrypto.bpf.c and times its programs with BPF_PROG_TEST_RUN (the kernel's own per-run
 * duration, repeat = N), for AES-128 and AES-256, against the empty program of the same type.
 * See README.md; run.sh builds and runs it. Needs root (CAP_BPF + CAP_SYS_ADMIN / CAP_NET_ADMIN).
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <linux/if_alg.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include "kcrypto.skel.h"

#define HDR 58
#define PAYLOAD 1316
#define BIG (64 * 1024)
#define TRIALS 7

static int repeat = 20000;

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

struct timing {
	uint32_t median, min;
	int retval;
	int err;
};

/* TRIALS test runs of `repeat` runs each; the kernel reports the mean per run of each. */
static struct timing timed(struct bpf_program *prog, void *pkt, uint32_t len)
{
	uint32_t d[TRIALS];
	struct timing t = {0};
	static unsigned char out[4096];

	for (int i = 0; i < TRIALS; i++) {
		LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = pkt, .data_size_in = len,
			    .data_out = out, .data_size_out = sizeof(out), .repeat = repeat);
		int err = bpf_prog_test_run_opts(bpf_program__fd(prog), &o);
		if (err) {
			t.err = -errno;
			return t;
		}
		t.retval = (int)o.retval;
		d[i] = o.duration;
	}
	qsort(d, TRIALS, sizeof(d[0]), cmp_u32);
	t.median = d[TRIALS / 2];
	t.min = d[0];
	return t;
}

static int run_once(struct bpf_program *prog, void *pkt, uint32_t len, void *out, uint32_t outlen,
		    int *retval)
{
	LIBBPF_OPTS(bpf_test_run_opts, o, .data_in = pkt, .data_size_in = len, .data_out = out,
		    .data_size_out = outlen, .repeat = 1);
	int err = bpf_prog_test_run_opts(bpf_program__fd(prog), &o);
	if (err)
		return -errno;
	*retval = (int)o.retval;
	return 0;
}

static void loadavg(const char *when)
{
	char buf[128] = "";
	FILE *f = fopen("/proc/loadavg", "r");

	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = 0;
		fclose(f);
	}
	printf("load average at %s: %s", when, buf);
}

static double now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* crypto_setup (a sleepable syscall program) creates a context for `algo` in slot `slot`. */
static int setup(struct kcrypto_bpf *skel, const char *algo, const unsigned char *key,
		 unsigned key_len, unsigned slot)
{
	LIBBPF_OPTS(bpf_test_run_opts, o);
	memset(skel->bss->cipher, 0, sizeof(skel->bss->cipher));
	strncpy(skel->bss->cipher, algo, sizeof(skel->bss->cipher) - 1);
	memset(skel->bss->key, 0, sizeof(skel->bss->key));
	memcpy(skel->bss->key, key, key_len);
	skel->bss->key_len = key_len;
	skel->bss->slot = slot;
	skel->bss->status = 0;
	if (bpf_prog_test_run_opts(bpf_program__fd(skel->progs.crypto_setup), &o))
		return -errno;
	return skel->bss->status;
}

static void hex(const char *s, unsigned char *out)
{
	for (size_t i = 0; s[2 * i]; i++)
		sscanf(s + 2 * i, "%2hhx", &out[i]);
}

/* NIST SP 800-38A F.5.1 / F.5.5: CTR-AES128 / CTR-AES256 encrypt, 4 blocks. */
static const char *V_CTR = "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff";
static const char *V_PT = "6bc1bee22e409f96e93d7e117393172aae2d8a571e03ac9c9eb76fac45af8e51"
			  "30c81c46a35ce411e5fbc1191a0a52eff69f2445df4f9b17ad2b417be66c3710";
static const char *V_K128 = "2b7e151628aed2a6abf7158809cf4f3c";
static const char *V_CT128 = "874d6191b620e3261bef6864990db6ce9806f66b7970fdff8617187bb9fffdff"
			     "5ae4df3edbd5d35e5b4f09020db03eab1e031dda2fbe03d1792170a0f3009cee";
static const char *V_K192 = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
static const char *V_CT192 = "1abc932417521ca24f2b0459fe7e6e0b090339ec0aa6faefd5ccc2c6f4ce8e94"
			     "1e36b26bd1ebc670d1bd1d665620abf74f78a7f6d29809585a97daec58c6b050";
static const char *V_K256 = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";
static const char *V_CT256 = "601ec313775789a5b7a7f504bbf3d228f443e3ca4d62b59aca84e990cacaf5c5"
			     "2b0930daa23de94ce87017ba2d84988ddfc9c58db67aada613c2dd08457941a6";

/* Encrypts the SP 800-38A plaintext with `prog` (which writes into the packet's payload) and
 * compares with the known ciphertext. */
static const char *check(struct kcrypto_bpf *skel, struct bpf_program *prog, const char *ct_hex,
			 unsigned char *pkt, uint32_t len)
{
	unsigned char pt[64], ct[64], out[4096];
	int retval = 0, err;

	hex(V_PT, pt);
	hex(ct_hex, ct);
	hex(V_CTR, skel->bss->salt);
	skel->bss->seq = 0;
	memset(skel->bss->plain, 0, sizeof(skel->bss->plain));
	memcpy(skel->bss->plain, pt, 64);
	err = run_once(prog, pkt, len, out, sizeof(out), &retval);
	if (err)
		return "test_run failed";
	if (retval)
		return "program returned an error";
	return memcmp(out + HDR, ct, 64) ? "MISMATCH" : "ok";
}

/* The kernel's own ctr(aes) skcipher through AF_ALG: encrypts 64 KiB per sendmsg/read pair,
 * `calls` times, and reports ns per byte and per 1316 bytes (wall clock, syscalls included,
 * which 64 KiB per call makes small). */
static void af_alg(const char *name, const unsigned char *key, unsigned key_len)
{
	struct sockaddr_alg sa = {.salg_family = AF_ALG};
	static unsigned char buf[BIG];
	int tfm, op, calls = 200;
	const char *step;

	strcpy((char *)sa.salg_type, "skcipher");
	strcpy((char *)sa.salg_name, "ctr(aes)");
	step = "socket(AF_ALG, SOCK_SEQPACKET)";
	tfm = socket(AF_ALG, SOCK_SEQPACKET, 0);
	if (tfm < 0)
		goto fail;
	step = "bind(skcipher, ctr(aes))";
	if (bind(tfm, (struct sockaddr *)&sa, sizeof(sa)))
		goto fail;
	step = "setsockopt(ALG_SET_KEY)";
	if (setsockopt(tfm, SOL_ALG, ALG_SET_KEY, key, key_len))
		goto fail;
	step = "accept";
	op = accept(tfm, NULL, 0);
	if (op < 0)
		goto fail;
	double best = 1e99;
	for (int trial = 0; trial < TRIALS; trial++) {
		double t0 = now_ns();
		for (int i = 0; i < calls; i++) {
			char cbuf[CMSG_SPACE(sizeof(__u32)) + CMSG_SPACE(sizeof(struct af_alg_iv) + 16)];
			struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf)};
			struct msghdr msg = {.msg_control = cbuf, .msg_controllen = sizeof(cbuf),
					     .msg_iov = &iov, .msg_iovlen = 1};
			struct cmsghdr *c;
			struct af_alg_iv *ivp;

			memset(cbuf, 0, sizeof(cbuf));
			c = CMSG_FIRSTHDR(&msg);
			c->cmsg_level = SOL_ALG;
			c->cmsg_type = ALG_SET_OP;
			c->cmsg_len = CMSG_LEN(sizeof(__u32));
			*(__u32 *)CMSG_DATA(c) = ALG_OP_ENCRYPT;
			c = CMSG_NXTHDR(&msg, c);
			c->cmsg_level = SOL_ALG;
			c->cmsg_type = ALG_SET_IV;
			c->cmsg_len = CMSG_LEN(sizeof(struct af_alg_iv) + 16);
			ivp = (struct af_alg_iv *)CMSG_DATA(c);
			ivp->ivlen = 16;
			memset(ivp->iv, 0, 16);
			ivp->iv[13] = i;
			step = "sendmsg";
			if (sendmsg(op, &msg, 0) != (ssize_t)sizeof(buf))
				goto fail;
			step = "read";
			if (read(op, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
				goto fail;
		}
		double per = (now_ns() - t0) / calls;
		if (per < best)
			best = per;
	}
	printf("  %s: %.3f ns/byte, %.0f ns per 1316 bytes (best of %d x %d calls)\n", name,
	       best / BIG, best / BIG * PAYLOAD, TRIALS, calls);
	close(op);
	close(tfm);
	return;
fail:
	printf("  %s: %s failed: %s\n", name, step, strerror(errno));
	if (tfm >= 0)
		close(tfm);
}

static void report(const char *what, struct timing t, struct timing base)
{
	if (t.err) {
		printf("  %-44s test_run: %s\n", what, strerror(-t.err));
		return;
	}
	if (t.retval) {
		printf("  %-44s program returned %d (%s)\n", what, t.retval, strerror(-t.retval));
		return;
	}
	printf("  %-44s %6u ns/run (min %u); net of the empty program %6d ns\n", what, t.median,
	       t.min, (int)t.median - (int)base.median);
}

int main(int argc, char **argv)
{
	static unsigned char pkt[HDR + PAYLOAD];
	struct kcrypto_bpf *skel;
	unsigned char k128[16], k192[24], k256[32];
	int err;

	if (argc > 1)
		repeat = atoi(argv[1]);
	libbpf_set_strict_mode(LIBBPF_STRICT_ALL);
	skel = kcrypto_bpf__open();
	if (!skel) {
		perror("open");
		return 1;
	}
	err = kcrypto_bpf__load(skel);
	if (err) {
		fprintf(stderr, "load failed: %s (verifier log above)\n", strerror(-err));
		return 1;
	}
	hex(V_K128, k128);
	hex(V_K192, k192);
	hex(V_K256, k256);
	/* An IPv4/UDP frame with an SRT data header and a 1316-byte payload. */
	memset(pkt, 0, sizeof(pkt));
	pkt[12] = 0x08;
	pkt[14] = 0x45;
	pkt[23] = 17;                   /* UDP */
	pkt[40] = 0x12, pkt[41] = 0x34; /* a UDP checksum to keep up to date */
	for (int i = HDR; i < HDR + PAYLOAD; i++)
		pkt[i] = 0x47;
	memset(skel->bss->plain, 0x47, sizeof(skel->bss->plain));

	printf("repeat %d, %d trials per figure (median of the trials' per-run means)\n", repeat,
	       TRIALS);
	loadavg("start");

	/* Which algorithms a bpf_crypto "skcipher" context can be created for here. */
	const char *algos[] = {"ctr(aes)", "ecb(aes)", "cbc(aes)", "xctr(aes)"};
	int ctr_ok = 0;
	printf("\nbpf_crypto_ctx_create(type \"skcipher\", AES-128 key) from a syscall program:\n");
	for (unsigned i = 0; i < sizeof(algos) / sizeof(algos[0]); i++) {
		err = setup(skel, algos[i], k128, 16, 63);
		printf("  %-10s %s\n", algos[i], err ? strerror(-err) : "created");
		if (!err && i == 0)
			ctr_ok = 1;
	}

	struct timing e_tc = timed(skel->progs.empty_tc, pkt, sizeof(pkt));
	struct timing e_xdp = timed(skel->progs.empty_xdp, pkt, sizeof(pkt));
	printf("\nempty program: tc %u ns/run (min %u), xdp %u ns/run (min %u)\n", e_tc.median,
	       e_tc.min, e_xdp.median, e_xdp.min);

	struct {
		const char *name;
		const unsigned char *key;
		unsigned len;
		const char *ct;
	} keys[] = {{"AES-128", k128, 16, V_CT128},
		    {"AES-192", k192, 24, V_CT192},
		    {"AES-256", k256, 32, V_CT256}};

	for (unsigned k = 0; k < 3; k++) {
		if (ctr_ok) {
			err = setup(skel, "ctr(aes)", keys[k].key, keys[k].len, 0);
			if (err) {
				printf("\nctr(aes) %s: %s\n", keys[k].name, strerror(-err));
			} else {
				skel->bss->siv_len = 16;
				printf("\nbpf_crypto ctr(aes) %s, 1316-byte payload:\n", keys[k].name);
				printf("  known answer (SP 800-38A, tc): %s\n",
				       check(skel, skel->progs.enc_tc, keys[k].ct, pkt, sizeof(pkt)));
				printf("  known answer (SP 800-38A, xdp): %s\n",
				       check(skel, skel->progs.enc_xdp, keys[k].ct, pkt, sizeof(pkt)));
				memset(skel->bss->plain, 0x47, sizeof(skel->bss->plain));
				skel->bss->seq = 12345;
				report("tc: all but the cipher (lookup, IV, dynptrs)",
				       timed(skel->progs.setup_tc, pkt, sizeof(pkt)), e_tc);
				report("tc: clear copy -> skb payload",
				       timed(skel->progs.enc_tc, pkt, sizeof(pkt)), e_tc);
				report("tc: skb payload -> buffer",
				       timed(skel->progs.enc_tc_to_buf, pkt, sizeof(pkt)), e_tc);
				report("xdp: clear copy -> frame payload",
				       timed(skel->progs.enc_xdp, pkt, sizeof(pkt)), e_xdp);
				struct timing b = timed(skel->progs.enc_big, pkt, sizeof(pkt));
				report("tc: 64 KiB buffer in place", b, e_tc);
				if (!b.err && !b.retval)
					printf("  -> %.3f ns/byte, %.0f ns per 1316 bytes\n",
					       (double)((int)b.median - (int)e_tc.median) / BIG,
					       (double)((int)b.median - (int)e_tc.median) / BIG * PAYLOAD);
			}
		}
	}
	/* "ecb(aes)" is what the kernel picks (aes-fixed-time, priority 100, here); the table-based
	 * aes-generic is asked for by its driver name for comparison. */
	const char *ecbs[] = {"ecb(aes)", "ecb(aes-generic)"};
	for (unsigned a = 0; a < 2; a++)
	for (unsigned k = 0; k < 3; k++) {
		err = setup(skel, ecbs[a], keys[k].key, keys[k].len, 0);
		if (err) {
			printf("\n%s %s: %s\n", ecbs[a], keys[k].name, strerror(-err));
			continue;
		}
		skel->bss->siv_len = 0;
		printf("\nbpf_crypto %s %s, CTR built in BPF over a 1316-byte payload:\n", ecbs[a],
		       keys[k].name);
		skel->data->stages = 7;
		printf("  known answer (SP 800-38A CTR, tc): %s\n",
		       check(skel, skel->progs.ctr_from_ecb_tc, keys[k].ct, pkt, sizeof(pkt)));
		memset(skel->bss->plain, 0x47, sizeof(skel->bss->plain));
		skel->bss->seq = 12345;
		static const struct {
			unsigned stages;
			const char *what;
		} st[] = {
			{2, "tc: counter blocks + XOR into skb (no cipher)"},
			{3, "tc: CTR = 83 ECB blocks + XOR into skb"},
			{7, "tc: CTR + UDP checksum update"},
		};
		for (unsigned i = 0; i < 3; i++) {
			skel->data->stages = st[i].stages;
			report(st[i].what, timed(skel->progs.ctr_from_ecb_tc, pkt, sizeof(pkt)), e_tc);
		}
		skel->data->stages = 7;
		struct timing b = timed(skel->progs.enc_big, pkt, sizeof(pkt));
		report("tc: ecb over a 64 KiB buffer in place", b, e_tc);
		if (!b.err && !b.retval)
			printf("  -> %.3f ns/byte, %.0f ns per 1328 bytes (83 blocks)\n",
			       (double)((int)b.median - (int)e_tc.median) / BIG,
			       (double)((int)b.median - (int)e_tc.median) / BIG * 1328);
	}

	/* What a viewer's context costs to create (wall clock around the syscall program). */
	const char *algo = ctr_ok ? "ctr(aes)" : "ecb(aes)";
	double t0 = now_ns();
	int n = 0;
	for (int r = 0; r < 10; r++)
		for (unsigned s = 0; s < 64; s++, n++)
			if (setup(skel, algo, k128, 16, s))
				break;
	printf("\ncontext creation (%s, AES-128, replacing the slot's previous one): %.1f us each "
	       "over %d\n", algo, (now_ns() - t0) / n / 1e3, n);

	printf("\nAF_ALG skcipher ctr(aes), 64 KiB per call (the kernel's CTR on large buffers):\n");
	af_alg("AES-128", k128, 16);
	af_alg("AES-192", k192, 24);
	af_alg("AES-256", k256, 32);

	loadavg("end");
	kcrypto_bpf__destroy(skel);
	return 0;
}
