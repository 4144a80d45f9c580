// SPDX-License-Identifier: GPL-2.0
/* What the kernel's bpf_crypto kfuncs cost per SRT data packet (issue 14).
 *
 * crypto_setup (syscall, sleepable) creates one bpf_crypto context per "viewer" slot and keeps
 * it as a kptr in `ctxs`; the TC/XDP programs below are run with BPF_PROG_TEST_RUN (repeat = N)
 * by kcrypto.c, which subtracts the empty program's per-run time.
 *
 * SRT's counter block is the salt XOR (seq << 16) (stsync-user/src/srt/crypto.rs, iv()); the
 * programs build it per packet from `salt` and `seq` as a datapath would. `salt` is the whole
 * 16-byte base here (SRT's is 14 bytes with two zero bytes after it) so that the NIST
 * SP 800-38A vectors, whose counter starts at f0..ff, can check the result.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define EINVAL 22
#define ENOENT 2
#define EEXIST 17

#define HDR 58          /* Ethernet 14 + IPv4 20 + UDP 8 + SRT 16 */
#define PAYLOAD 1316    /* 7 TS packets */
#define BLOCKS 83       /* ceil(1316 / 16) counter blocks */
#define BIG (64 * 1024) /* per-byte cross-check buffer */
#define SLOTS 64

struct bpf_crypto_ctx *bpf_crypto_ctx_create(const struct bpf_crypto_params *params,
					     u32 params__sz, int *err) __ksym;
void bpf_crypto_ctx_release(struct bpf_crypto_ctx *ctx) __ksym;
int bpf_crypto_encrypt(struct bpf_crypto_ctx *ctx, const struct bpf_dynptr *src,
		       const struct bpf_dynptr *dst, const struct bpf_dynptr *siv) __ksym;
int bpf_dynptr_from_skb(struct __sk_buff *skb, u64 flags, struct bpf_dynptr *ptr__uninit) __ksym;
int bpf_dynptr_from_xdp(struct xdp_md *xdp, u64 flags, struct bpf_dynptr *ptr__uninit) __ksym;
int bpf_dynptr_adjust(const struct bpf_dynptr *p, u32 start, u32 end) __ksym;

struct slot {
	struct bpf_crypto_ctx __kptr *ctx;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, u32);
	__type(value, struct slot);
	__uint(max_entries, SLOTS);
} ctxs SEC(".maps");

/* Set by the loader before crypto_setup / before each run. */
char cipher[128];
__u8 key[32];
__u32 key_len;
__u32 slot;
__u32 siv_len;        /* the context's IV + state size: 16 for ctr(aes), 0 for ecb(aes) */
__u8 salt[16] __attribute__((aligned(8)));
__u32 seq;
__u32 stages = 7;   /* ctr_from_ecb_tc: 1 = ECB over the counter blocks, 2 = XOR into the skb,
		     * 4 = UDP checksum brought up to date (bpf_csum_diff + bpf_l4_csum_replace) */
int status;         /* crypto_setup's result */

__u8 iv[16] __attribute__((aligned(8)));
/* The payload kept clear, as a per-viewer loop would need it. */
__u8 plain[PAYLOAD] __attribute__((aligned(8)));
__u8 out[PAYLOAD + 16] __attribute__((aligned(8)));
/* CTR from ecb: the counter blocks, then (encrypted in place) the keystream. */
__u8 ctrblk[BLOCKS * 16] __attribute__((aligned(8)));
__u8 big[BIG] __attribute__((aligned(8)));

SEC("syscall")
int crypto_setup(void *args)
{
	struct bpf_crypto_params params = {
		.type = "skcipher",
		.key_len = key_len,
	};
	struct bpf_crypto_ctx *cctx, *old;
	struct slot *v;
	u32 k = slot;
	int err = 0;

	status = 0;
	if (!cipher[0] || !key_len || key_len > sizeof(key)) {
		status = -EINVAL;
		return 0;
	}
	__builtin_memcpy(&params.algo, cipher, sizeof(cipher));
	__builtin_memcpy(&params.key, key, sizeof(key));
	cctx = bpf_crypto_ctx_create(&params, sizeof(params), &err);
	if (!cctx) {
		status = err;
		return 0;
	}
	v = bpf_map_lookup_elem(&ctxs, &k);
	if (!v) {
		bpf_crypto_ctx_release(cctx);
		status = -ENOENT;
		return 0;
	}
	old = bpf_kptr_xchg(&v->ctx, cctx);
	if (old)
		bpf_crypto_ctx_release(old);
	return 0;
}

/* SRT's counter block for this packet: salt XOR (seq << 16), big-endian, in bytes 10..13. */
static __always_inline void make_iv(void)
{
	u32 s = bpf_htonl(seq);

	__builtin_memcpy(iv, salt, 16);
	iv[10] ^= s & 0xff;
	iv[11] ^= (s >> 8) & 0xff;
	iv[12] ^= (s >> 16) & 0xff;
	iv[13] ^= (s >> 24) & 0xff;
}

static __always_inline struct bpf_crypto_ctx *ctx_of_slot(void)
{
	u32 k = slot;
	struct slot *v = bpf_map_lookup_elem(&ctxs, &k);

	return v ? v->ctx : NULL;
}

SEC("tc")
int empty_tc(struct __sk_buff *skb)
{
	return 0;
}

SEC("xdp")
int empty_xdp(struct xdp_md *xdp)
{
	return XDP_PASS;
}

/* Everything but the cipher: context lookup, counter block, dynptrs over the skb's payload,
 * the clear copy and the IV. */
SEC("tc")
int setup_tc(struct __sk_buff *skb)
{
	struct bpf_dynptr src, dst, siv;
	struct bpf_crypto_ctx *ctx = ctx_of_slot();

	if (!ctx)
		return -ENOENT;
	make_iv();
	bpf_dynptr_from_mem(plain, PAYLOAD, 0, &src);
	bpf_dynptr_from_skb(skb, 0, &dst);
	if (bpf_dynptr_adjust(&dst, HDR, HDR + PAYLOAD))
		return -EINVAL;
	bpf_dynptr_from_mem(iv, siv_len & 16, 0, &siv);
	return 0;
}

/* One viewer's packet: the clear payload encrypted into the skb's payload, in place of what the
 * clone carried (bpf_crypto writes through the dynptr; the skb must be linear). */
SEC("tc")
int enc_tc(struct __sk_buff *skb)
{
	struct bpf_dynptr src, dst, siv;
	struct bpf_crypto_ctx *ctx = ctx_of_slot();

	if (!ctx)
		return -ENOENT;
	make_iv();
	bpf_dynptr_from_mem(plain, PAYLOAD, 0, &src);
	bpf_dynptr_from_skb(skb, 0, &dst);
	if (bpf_dynptr_adjust(&dst, HDR, HDR + PAYLOAD))
		return -EINVAL;
	bpf_dynptr_from_mem(iv, siv_len & 16, 0, &siv);
	return bpf_crypto_encrypt(ctx, &src, &dst, &siv);
}

/* The same from the skb's payload into a buffer (as the kernel selftest's crypto_bench). */
SEC("tc")
int enc_tc_to_buf(struct __sk_buff *skb)
{
	struct bpf_dynptr src, dst, siv;
	struct bpf_crypto_ctx *ctx = ctx_of_slot();

	if (!ctx)
		return -ENOENT;
	make_iv();
	bpf_dynptr_from_skb(skb, 0, &src);
	if (bpf_dynptr_adjust(&src, HDR, HDR + PAYLOAD))
		return -EINVAL;
	bpf_dynptr_from_mem(out, PAYLOAD, 0, &dst);
	bpf_dynptr_from_mem(iv, siv_len & 16, 0, &siv);
	return bpf_crypto_encrypt(ctx, &src, &dst, &siv);
}

SEC("xdp")
int enc_xdp(struct xdp_md *xdp)
{
	struct bpf_dynptr src, dst, siv;
	struct bpf_crypto_ctx *ctx = ctx_of_slot();

	if (!ctx)
		return -ENOENT;
	make_iv();
	bpf_dynptr_from_mem(plain, PAYLOAD, 0, &src);
	bpf_dynptr_from_xdp(xdp, 0, &dst);
	if (bpf_dynptr_adjust(&dst, HDR, HDR + PAYLOAD))
		return -EINVAL;
	bpf_dynptr_from_mem(iv, siv_len & 16, 0, &siv);
	return bpf_crypto_encrypt(ctx, &src, &dst, &siv);
}

/* Per-byte cost of the same implementation on a large buffer, in place. */
SEC("tc")
int enc_big(struct __sk_buff *skb)
{
	struct bpf_dynptr src, dst, siv;
	struct bpf_crypto_ctx *ctx = ctx_of_slot();

	if (!ctx)
		return -ENOENT;
	make_iv();
	bpf_dynptr_from_mem(big, BIG, 0, &src);
	bpf_dynptr_from_mem(big, BIG, 0, &dst);
	bpf_dynptr_from_mem(iv, siv_len & 16, 0, &siv);
	return bpf_crypto_encrypt(ctx, &src, &dst, &siv);
}

/* CTR built in BPF from an ecb(aes) context (this kernel's ctr(aes) is not an lskcipher):
 * 83 counter blocks written, ECB-encrypted in place, XORed into the skb's payload, and the UDP
 * checksum updated for the new payload: one encrypted viewer's packet as the TC fan-out would
 * make it after each clone. `stages` leaves parts out to see what each costs. */
SEC("tc")
int ctr_from_ecb_tc(struct __sk_buff *skb)
{
	struct bpf_dynptr ks, ksd;
	struct bpf_crypto_ctx *ctx = ctx_of_slot();
	__s64 diff = 0;
	u8 *p;
	int i, err;

	if (!ctx)
		return -ENOENT;
	make_iv();
	/* Counter blocks: the IV with its low 64 bits incremented, big-endian, as Ctr128BE does
	 * (SRT's block ends in two zero bytes, so a packet's 83 increments never carry further). */
	{
		u64 hi = *(u64 *)iv, lo = bpf_be64_to_cpu(*(u64 *)(iv + 8));
		u64 *blk = (u64 *)ctrblk;

		for (i = 0; i < BLOCKS; i++) {
			blk[2 * i] = hi;
			blk[2 * i + 1] = bpf_cpu_to_be64(lo + i);
		}
	}
	if (stages & 1) {
		bpf_dynptr_from_mem(ctrblk, sizeof(ctrblk), 0, &ks);
		bpf_dynptr_from_mem(ctrblk, sizeof(ctrblk), 0, &ksd);
		err = bpf_crypto_encrypt(ctx, &ks, &ksd, NULL);
		if (err)
			return err;
	}
	if (!(stages & 2))
		return 0;
	/* Makes the head private (after a clone this is where the copy happens) and linear. */
	if (bpf_skb_pull_data(skb, HDR + PAYLOAD))
		return -EINVAL;
	p = (u8 *)(long)skb->data;
	if (p + HDR + PAYLOAD > (u8 *)(long)skb->data_end)
		return -EINVAL;
	p += HDR;
	/* Unaligned 8-byte packet stores are fine on x86 (no BPF_F_STRICT_ALIGNMENT). */
	for (i = 0; i < PAYLOAD / 8; i++)
		*(u64 *)(p + i * 8) = ((u64 *)plain)[i] ^ ((u64 *)ctrblk)[i];
	for (i = PAYLOAD / 8 * 8; i < PAYLOAD; i++)
		p[i] = plain[i] ^ ctrblk[i];
	if (!(stages & 4))
		return 0;
	/* bpf_csum_diff takes at most 512 bytes a side: 512 + 512 + 292. */
	diff = bpf_csum_diff((void *)plain, 512, (void *)p, 512, 0);
	if (diff < 0)
		return -EINVAL;
	diff = bpf_csum_diff((void *)(plain + 512), 512, (void *)(p + 512), 512, diff);
	if (diff < 0)
		return -EINVAL;
	diff = bpf_csum_diff((void *)(plain + 1024), 292, (void *)(p + 1024), 292, diff);
	if (diff < 0)
		return -EINVAL;
	return bpf_l4_csum_replace(skb, 40, 0, diff, BPF_F_MARK_MANGLED_0) ? -EINVAL : 0;
}

char LICENSE[] SEC("license") = "GPL";
