//! The stateless targets: the packet codec, the handshake (parsers, and the listener path
//! through a relay), the stream ID parser. Each checks that what parses also re-encodes to
//! the same thing where the codec has an encoder.

use super::relay::{Flags, World};
use crate::srt::handshake::{
    decode_sid, encode_sid, hs_type, parse_extensions, Handshake, BODY_LEN, MAX_SID_LEN,
};
use crate::srt::packet::{encode_loss, loss_ranges, write_control, write_data, Ack, Packet};
use crate::srt::streamid::{self, normalize_hex};
use stsync_common::srt::{ctrl, CONTROL_BIT, HEADER_LEN, MAX_DATAGRAM, MAX_PAYLOAD};

fn be_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_be_bytes()).collect()
}

/// `Packet::parse`, `Ack::parse` and `loss_ranges` on the same bytes, with round trips
/// through `write_data`, `write_control`, `Ack::words` and `encode_loss`.
pub fn packet(data: &[u8]) {
    match Packet::parse(data) {
        Ok(Packet::Data(d)) => {
            assert!(d.payload.len() <= MAX_PAYLOAD);
            let mut out = Vec::new();
            write_data(&mut out, d.seq, d.msg, d.ts, d.dest, d.payload);
            assert_eq!(out, data, "data packet round trip");
        }
        Ok(Packet::Control(c)) => {
            // The encoder writes subtype 0 and bodies of whole words.
            if c.body.len().is_multiple_of(4) {
                let words: Vec<u32> = c
                    .body
                    .chunks_exact(4)
                    .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
                    .collect();
                let mut out = Vec::new();
                write_control(&mut out, c.typ, c.info, c.ts, c.dest, &words);
                let mut expect = data.to_vec();
                expect[2..4].fill(0);
                assert_eq!(out, expect, "control packet round trip");
            }
            assert_eq!(data[0] & 0x80, 0x80);
            assert_eq!(
                u32::from(c.typ),
                (u32::from_be_bytes(data[..4].try_into().unwrap()) & !CONTROL_BIT) >> 16
            );
            if c.typ == ctrl::ACK {
                ack(c.body);
            }
        }
        Err(_) => assert!(data.len() < HEADER_LEN || data.len() > MAX_DATAGRAM),
    }
    // The body parsers see every input too, not only well-typed packets.
    ack(data);
    loss(data);
}

fn ack(body: &[u8]) {
    let Ok(a) = Ack::parse(body) else {
        assert!(body.len() < 4);
        return;
    };
    let (words, n) = a.words();
    let enc = be_bytes(&words[..n]);
    assert_eq!(Ack::parse(&enc), Ok(a), "ACK round trip");
    // Light (1 word) and full (7 words) ACKs come back byte for byte (but for bit 31 of
    // the sequence number); a 4-word "small" ACK comes back as a full one with zero rates.
    let mut expect = body[..body.len().min(28)].to_vec();
    expect[0] &= 0x7F;
    match body.len() {
        4..=15 => assert_eq!(enc[..], expect[..4]),
        28.. => assert_eq!(enc, expect),
        _ => assert_eq!(enc[..16], expect[..16]),
    }
}

fn loss(body: &[u8]) {
    let ranges: Vec<_> = loss_ranges(body).map_while(Result::ok).collect();
    assert!(ranges.len() <= body.len() / 4);
    let mut words = Vec::new();
    for &(first, last) in &ranges {
        encode_loss(&mut words, first, last);
    }
    let again: Vec<_> = loss_ranges(&be_bytes(&words))
        .collect::<Result<_, _>>()
        .expect("an encoded loss list decodes");
    assert_eq!(again, ranges, "loss list round trip");
}

/// The handshake body and extension parsers, then the same bytes as a caller's handshake
/// to a relay's listener: as they are, and as a conclusion with a valid cookie and a minted
/// session key, sent twice (the repeat must get the same answer).
pub fn handshake(data: &[u8]) {
    if let Ok(hs) = Handshake::parse(data) {
        let mut expect = data[..BODY_LEN].to_vec();
        expect[8] &= 0x7F; // the ISN is 31 bits
        assert_eq!(be_bytes(&hs.words()), expect, "handshake body round trip");
    }
    let exts = data.get(BODY_LEN..).unwrap_or_default();
    if let Ok(e) = parse_extensions(exts) {
        if let Some(sid) = e.sid {
            assert!(sid.len() <= MAX_SID_LEN && sid.last() != Some(&0));
            assert_eq!(
                decode_sid(&be_bytes(&encode_sid(&sid))),
                sid,
                "SID round trip"
            );
        }
    }
    // The wire's word-reversed stream ID: re-encoding drops only trailing zero words.
    if data.len().is_multiple_of(4) {
        let enc = be_bytes(&encode_sid(&decode_sid(data)));
        assert_eq!(enc[..], data[..enc.len()]);
        assert!(data[enc.len()..].iter().all(|&b| b == 0));
    }

    let mut w = World::new(0);
    let mut bytes = Vec::new();
    write_control(&mut bytes, ctrl::HANDSHAKE, 0, 0, 0, &[]);
    bytes.extend_from_slice(data);
    w.raw(0, 0, bytes.clone());
    // The same body as a conclusion that passes the cookie and names a minted key: the
    // admission path.
    if data.len() >= BODY_LEN {
        let at = HEADER_LEN + 20;
        bytes[at..at + 4].copy_from_slice(&hs_type::CONCLUSION.to_be_bytes());
        let before = w.run;
        w.raw(0, Flags::ALL, bytes.clone());
        assert!(w.relay.connection_count() <= 1);
        if w.run.conclusions > before.conclusions {
            assert_eq!(
                w.relay.connection_count(),
                1,
                "an accepted caller is connected"
            );
            // The answer was lost: the repeat gets the answer again, no second connection.
            w.raw(0, Flags::ALL, bytes);
            assert_eq!(w.run.conclusions, before.conclusions + 2);
            assert_eq!(w.relay.connection_count(), 1);
        }
    }
}

/// `streamid::parse`: what it accepts is normalised hex and a mode, and the canonical form
/// (and its fully percent-encoded form) parse back to the same ID.
pub fn streamid(data: &[u8]) {
    if let Ok(id) = streamid::parse(data) {
        for v in [&id.resource, &id.session] {
            assert_eq!(normalize_hex(v).as_ref(), Some(v), "not normalised: {v}");
        }
        let canonical = format!(
            "#!::r={},s={},m={}",
            id.resource,
            id.session,
            id.mode.as_str()
        );
        assert_eq!(streamid::parse(canonical.as_bytes()), Ok(id.clone()));
        let encoded: String = canonical.bytes().map(|b| format!("%{b:02X}")).collect();
        assert_eq!(streamid::parse(encoded.as_bytes()), Ok(id.clone()));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(n) = normalize_hex(text) {
            assert_eq!(
                normalize_hex(&n),
                Some(n.clone()),
                "normalize_hex is idempotent"
            );
            assert!(n.len() <= text.len() && !n.is_empty());
        }
    }
}
