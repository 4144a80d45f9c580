//! What SRT encryption costs the relay per packet and per key derivation, measured:
//! `cargo run --release --example crypto_cost`. An encrypted viewer's datagram is a copy of
//! the payload into the outbox plus one AES-CTR pass over it; an encrypted publisher's
//! packet is decrypted once; each conclusion with keying material (and each key refresh)
//! costs one PBKDF2.

use std::hint::black_box;
use std::time::Instant;
use stsync_user::srt::crypto::{KeyMaterial, Parity};
use stsync_user::srt::seq::Seq;

const PAYLOAD: usize = 1316;
const PACKETS: u32 = 200_000;

fn main() {
    let salt = [7u8; 16];
    for key_len in [16, 24, 32] {
        let key = vec![3u8; key_len];
        let km = KeyMaterial::seal(b"measure-the-cost", salt, Some(&key), None).unwrap();
        let t = Instant::now();
        let keys = km.open(b"measure-the-cost").unwrap();
        let derive = t.elapsed();
        let src = vec![0x47u8; PAYLOAD];
        let mut out = Vec::with_capacity(PAYLOAD * 64);
        let t = Instant::now();
        for i in 0..PACKETS {
            // As the outbox does it: the payload copied in, then sealed in place.
            if out.len() + PAYLOAD > out.capacity() {
                out.clear();
            }
            let start = out.len();
            out.extend_from_slice(&src);
            keys.crypt(Parity::Even, Seq::new(i), &mut out[start..]);
        }
        black_box(&out);
        let per = t.elapsed().as_nanos() as f64 / f64::from(PACKETS);
        println!(
            "AES-{}: {per:.0} ns per {PAYLOAD}-byte packet (copy + CTR, {:.2} GB/s); key derivation (PBKDF2 + unwrap) {:.2} ms",
            key_len * 8,
            PAYLOAD as f64 / per,
            derive.as_secs_f64() * 1e3
        );
    }
    let src = vec![0x47u8; PAYLOAD];
    let mut out = Vec::with_capacity(PAYLOAD * 64);
    let t = Instant::now();
    for _ in 0..PACKETS {
        if out.len() + PAYLOAD > out.capacity() {
            out.clear();
        }
        out.extend_from_slice(&src);
    }
    black_box(&out);
    let per = t.elapsed().as_nanos() as f64 / f64::from(PACKETS);
    println!("copy alone: {per:.0} ns per {PAYLOAD}-byte packet");
}
