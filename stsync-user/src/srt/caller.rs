//! The caller side of the HSv5 handshake, as libsrt's caller sends it: the edge's pull from
//! its upstream (`relay::pull`) and the benchmark's clients use it.

use super::handshake::{
    encode_sid, ext, ext_flag, ext_header, hs_type, peer_ip_field, srt_flag, Handshake, BODY_LEN,
    MAGIC, SRT_VERSION, VERSION_4, VERSION_5,
};
use super::packet::{be_words, write_control};
use super::seq::Seq;
use std::net::SocketAddr;
use stsync_common::srt::ctrl;

pub const MTU: u32 = 1500;
pub const FLOW_WINDOW: u32 = 8192;

/// libsrt 1.5's default HSREQ flags for a live caller.
pub const HS_FLAGS: u32 = srt_flag::TSBPDSND
    | srt_flag::TSBPDRCV
    | srt_flag::CRYPT
    | srt_flag::TLPKTDROP
    | srt_flag::PERIODICNAK
    | srt_flag::REXMITFLG;

/// Induction: version 4, extension field 2, no cookie, destination 0.
pub fn induction(out: &mut Vec<u8>, socket_id: u32, isn: Seq, ts: u32, peer: SocketAddr) {
    let hs = Handshake {
        version: VERSION_4,
        encryption: 0,
        ext_field: 2,
        isn,
        mtu: MTU,
        flow_window: FLOW_WINDOW,
        hs_type: hs_type::INDUCTION,
        socket_id,
        cookie: 0,
        peer_ip: peer_ip_field(peer),
    };
    write_control(out, ctrl::HANDSHAKE, 0, ts, 0, &hs.words());
}

/// Conclusion with HSREQ, KMREQ when `km` is given (an encrypting caller's keying
/// material, `srt::crypto::KeyMaterial::encode`), and the stream ID, in libsrt's order.
#[allow(clippy::too_many_arguments)]
pub fn conclusion(
    out: &mut Vec<u8>,
    socket_id: u32,
    isn: Seq,
    ts: u32,
    peer: SocketAddr,
    cookie: u32,
    latency_ms: u16,
    sid: &[u8],
    km: Option<&[u8]>,
) {
    let (encryption, kmreq) = match km {
        // libsrt's caller advertises its key length (PBKEYLEN / 8: 2, 3 or 4) here.
        Some(km) => (km_key_len(km).map_or(0, |l| l / 8) as u16, ext_flag::KMREQ),
        None => (0, 0),
    };
    let hs = Handshake {
        version: VERSION_5,
        encryption,
        ext_field: ext_flag::HSREQ | kmreq | ext_flag::CONFIG,
        isn,
        mtu: MTU,
        flow_window: FLOW_WINDOW,
        hs_type: hs_type::CONCLUSION,
        socket_id,
        cookie,
        peer_ip: peer_ip_field(peer),
    };
    let mut words: Vec<u32> = hs.words().to_vec();
    words.extend_from_slice(&[
        ext_header(ext::HSREQ, 3),
        SRT_VERSION,
        HS_FLAGS,
        (u32::from(latency_ms) << 16) | u32::from(latency_ms),
    ]);
    if let Some(km) = km {
        words.push(ext_header(ext::KMREQ, km.len().div_ceil(4)));
        words.extend(be_words(km));
    }
    let sid_words = encode_sid(sid);
    words.push(ext_header(ext::SID, sid_words.len()));
    words.extend_from_slice(&sid_words);
    write_control(out, ctrl::HANDSHAKE, 0, ts, 0, &words);
}

/// Bytes per key of encoded keying material (its Klen/4 byte), if it is that long.
fn km_key_len(km: &[u8]) -> Option<usize> {
    km.get(15).map(|&k| usize::from(k) * 4)
}

/// The KMRSP block of a conclusion answer (`body` is the handshake body), as sent.
pub fn kmrsp(body: &[u8]) -> Option<&[u8]> {
    block(body, ext::KMRSP)
}

/// The latency (ms) a conclusion answer's HSRSP agrees on for what the listener sends: the
/// larger of its own and the one the caller asked for, as libsrt's listener answers.
pub fn agreed_latency_ms(body: &[u8]) -> Option<u16> {
    let hsrsp = block(body, ext::HSRSP)?;
    let lat = u32::from_be_bytes(hsrsp.get(8..12)?.try_into().ok()?);
    Some((lat >> 16).max(lat & 0xFFFF) as u16)
}

/// The content of the first extension block of type `typ` after a handshake body.
fn block(body: &[u8], typ: u16) -> Option<&[u8]> {
    let mut rest = body.get(BODY_LEN..)?;
    while rest.len() >= 4 {
        let head = u32::from_be_bytes(rest[..4].try_into().ok()?);
        let (t, words) = ((head >> 16) as u16, (head & 0xFFFF) as usize);
        let content = rest.get(4..4 + words * 4)?;
        if t == typ {
            return Some(content);
        }
        rest = &rest[4 + words * 4..];
    }
    None
}

/// What a listener's handshake answer means to a caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsAnswer {
    /// Induction answered: send the conclusion with this cookie.
    Cookie(u32),
    /// Connected: the listener's socket ID.
    Accepted(u32),
    Rejected(u32),
    Other,
}

pub fn answer(body: &[u8]) -> HsAnswer {
    let Ok(hs) = Handshake::parse(body) else {
        return HsAnswer::Other;
    };
    match hs.hs_type {
        hs_type::INDUCTION if hs.version == VERSION_5 && hs.ext_field == MAGIC => {
            HsAnswer::Cookie(hs.cookie)
        }
        hs_type::CONCLUSION => HsAnswer::Accepted(hs.socket_id),
        t if (hs_type::REJECTION_BASE..hs_type::REJECTION_BASE + 2000).contains(&t) => {
            HsAnswer::Rejected(t)
        }
        _ => HsAnswer::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srt::handshake::parse_extensions;
    use crate::srt::packet::Packet;

    #[test]
    fn conclusion_parses_as_the_relay_reads_it() {
        let mut out = Vec::new();
        let peer: SocketAddr = "10.0.0.1:9999".parse().unwrap();
        conclusion(
            &mut out,
            7,
            Seq::new(5),
            0,
            peer,
            99,
            120,
            b"#!::r=1,s=ab,m=request",
            None,
        );
        let Packet::Control(c) = Packet::parse(&out).unwrap() else {
            panic!()
        };
        assert_eq!((c.typ, c.dest), (ctrl::HANDSHAKE, 0));
        let hs = Handshake::parse(c.body).unwrap();
        assert_eq!((hs.cookie, hs.socket_id, hs.version), (99, 7, 5));
        let e = parse_extensions(&c.body[48..]).unwrap();
        assert_eq!(e.sid.as_deref(), Some(&b"#!::r=1,s=ab,m=request"[..]));
        assert_eq!(e.hsreq.unwrap().recv_latency_ms, 120);
        assert_eq!((hs.encryption, e.kmreq), (0, None));
    }

    /// An encrypting caller's conclusion: the relay's listener reads its KMREQ back as
    /// the keying material that was sealed, and its answer's KMRSP is found.
    #[test]
    fn kmreq_rides_in_the_conclusion_and_kmrsp_is_found_in_the_answer() {
        use crate::srt::crypto::KeyMaterial;
        use crate::srt::listener;
        let km = KeyMaterial::seal(b"bench passphrase", [3; 16], Some(&[9; 32]), None).unwrap();
        let mut km_bytes = Vec::new();
        km.encode(&mut km_bytes);
        let mut out = Vec::new();
        let peer: SocketAddr = "10.0.0.1:9999".parse().unwrap();
        let sid = b"#!::r=1,s=ab,m=publish";
        conclusion(
            &mut out,
            7,
            Seq::new(5),
            0,
            peer,
            99,
            120,
            sid,
            Some(&km_bytes),
        );
        let Packet::Control(c) = Packet::parse(&out).unwrap() else {
            panic!()
        };
        let hs = Handshake::parse(c.body).unwrap();
        assert_eq!(hs.encryption, 4, "AES-256 advertised");
        assert_ne!(hs.ext_field & ext_flag::KMREQ, 0);
        let e = parse_extensions(&c.body[BODY_LEN..]).unwrap();
        assert_eq!(e.kmreq.as_deref(), Some(&km_bytes[..]));
        assert_eq!(e.sid.as_deref(), Some(&sid[..]));
        assert_eq!(KeyMaterial::parse(&km_bytes).unwrap(), km);
        // The relay's answer carries it back.
        let accepted = listener::accept(&hs, 42, peer, (120, 120), Some(&km_bytes));
        let Packet::Control(a) = Packet::parse(&accepted).unwrap() else {
            panic!()
        };
        assert_eq!(answer(a.body), HsAnswer::Accepted(42));
        assert_eq!(kmrsp(a.body), Some(&km_bytes[..]));
        assert_eq!(agreed_latency_ms(a.body), Some(120));
        let clear = listener::accept(&hs, 42, peer, (120, 120), None);
        let Packet::Control(a) = Packet::parse(&clear).unwrap() else {
            panic!()
        };
        assert_eq!(kmrsp(a.body), None);
    }
}
