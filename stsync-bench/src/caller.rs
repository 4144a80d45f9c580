//! The payload format the generator publishes; the caller's handshake is stsync-user's
//! (`srt::caller`).

pub use stsync_user::srt::caller::*;

/// Payload layout: it starts like an MPEG-TS null packet (0x47 1F FF 10), then the packet
/// index (u64 BE) and the CLOCK_MONOTONIC send time in ns (u64 BE); the rest is 0xFF with a
/// null-packet header every 188 bytes, so a TS demuxer sees padding only.
pub const OFF_INDEX: usize = 4;
pub const OFF_SENT: usize = 12;
pub const MIN_PAYLOAD: usize = 20;
const TS_NULL: [u8; 4] = [0x47, 0x1F, 0xFF, 0x10];

pub fn write_payload(out: &mut Vec<u8>, len: usize, index: u64, sent_ns: u64) {
    let start = out.len();
    out.resize(start + len, 0xFF);
    let p = &mut out[start..];
    for chunk in p.chunks_mut(188) {
        let n = chunk.len().min(4);
        chunk[..n].copy_from_slice(&TS_NULL[..n]);
    }
    p[OFF_INDEX..OFF_INDEX + 8].copy_from_slice(&index.to_be_bytes());
    p[OFF_SENT..OFF_SENT + 8].copy_from_slice(&sent_ns.to_be_bytes());
}

/// (index, send time) of a payload written by `write_payload`.
pub fn read_payload(p: &[u8]) -> Option<(u64, u64)> {
    if p.len() < MIN_PAYLOAD || p[..4] != TS_NULL {
        return None;
    }
    let idx = u64::from_be_bytes(p[OFF_INDEX..OFF_INDEX + 8].try_into().ok()?);
    let ts = u64::from_be_bytes(p[OFF_SENT..OFF_SENT + 8].try_into().ok()?);
    Some((idx, ts))
}

/// Whether `p` is exactly what `write_payload` produces for its own index and time: a
/// byte-exact check of what a third-party viewer received.
pub fn payload_intact(p: &[u8]) -> bool {
    let Some((idx, ts)) = read_payload(p) else {
        return false;
    };
    let mut expect = Vec::with_capacity(p.len());
    write_payload(&mut expect, p.len(), idx, ts);
    expect == p
}

/// Fills `{stream}`, `{key}` and `{mode}` in a stream-ID template.
pub fn stream_id(template: &str, stream: &str, key: &str, mode: &str) -> String {
    template
        .replace("{stream}", stream)
        .replace("{key}", key)
        .replace("{mode}", mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trips() {
        let mut out = vec![1, 2];
        write_payload(&mut out, 1316, 42, 123_456_789);
        let p = &out[2..];
        assert_eq!(p.len(), 1316);
        assert_eq!(read_payload(p), Some((42, 123_456_789)));
        assert!(payload_intact(p));
        assert_eq!(&p[188..192], &TS_NULL);
        let mut bad = p.to_vec();
        bad[1000] ^= 1;
        assert!(!payload_intact(&bad));
    }
}
