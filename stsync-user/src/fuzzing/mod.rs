//! Fuzzing harnesses, shared by the `cargo fuzz` targets (fuzz/fuzz_targets/*) and the
//! regression test that replays saved inputs on stable (tests/fuzz_regressions.rs), so the
//! logic that a crash exercised is written once. Not part of the relay's API.
//!
//! Each harness takes the fuzzer's bytes, runs the code under test and panics when an
//! invariant breaks. The structured harnesses (`receiver`, `relay`, `pull`) read their bytes as a
//! list of operations with [`Input`]; [`Ops`] writes the same format, which is how the seed
//! corpus is made from real libsrt captures (examples/fuzz_corpus.rs). A reader past the
//! end of the input reads zeros, so every byte string is a valid input.

mod codec;
mod pull;
mod receiver;
mod relay;

pub use codec::{handshake, packet, streamid};
pub use pull::{pull, PullOp};
pub use receiver::{receiver, ReceiverOp};
pub use relay::{relay, Flags, Peer, RelayOp, RelayRun, PEERS};

/// The harnesses by target name.
pub const TARGETS: &[&str] = &[
    "packet",
    "handshake",
    "streamid",
    "receiver",
    "relay",
    "pull",
];

/// Runs the harness of target `name` on `data`; false for an unknown name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match name {
        "packet" => packet(data),
        "handshake" => handshake(data),
        "streamid" => streamid(data),
        "receiver" => {
            receiver(data);
        }
        "relay" => {
            relay(data);
        }
        "pull" => pull(data),
        _ => return false,
    }
    true
}

/// Reads a fuzz input as numbers and byte strings; past the end it reads zeros (and empty
/// byte strings), so no input is rejected.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }
}

/// Writes what [`Input`] reads.
#[derive(Default)]
pub struct Ops(pub Vec<u8>);

impl Ops {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_what_ops_wrote_then_zeros() {
        let mut o = Ops::default();
        o.u8(7).u16(0x1234).u32(0xDEAD_BEEF).bytes(b"xy");
        let mut i = Input::new(&o.0);
        assert_eq!((i.u8(), i.u16(), i.u32()), (7, 0x1234, 0xDEAD_BEEF));
        assert_eq!(i.bytes(5), b"xy");
        assert!(i.is_empty());
        assert_eq!((i.u32(), i.bytes(3)), (0, &[][..]));
    }

    #[test]
    fn every_harness_takes_empty_and_arbitrary_input() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for name in TARGETS {
            assert!(run(name, &[]));
            for len in [1, 7, 48, 300, 2000] {
                let data: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                run(name, &data);
            }
        }
        assert!(!run("nope", &[]));
    }
}
