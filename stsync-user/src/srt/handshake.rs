//! The HSv5 handshake body and its extension blocks.
//!
//! Body (48 bytes): version · encryption (16) | extension field (16) · initial sequence number ·
//! MTU · flow window · handshake type · socket ID · SYN cookie · peer IP (16 bytes).
//! Extension blocks follow: type (16) · length in words (16) · content.

use super::packet::{be32, PacketError};
use super::seq::Seq;
use std::net::{IpAddr, SocketAddr};

pub const BODY_LEN: usize = 48;

pub const VERSION_4: u32 = 4;
pub const VERSION_5: u32 = 5;
/// Extension field of a listener's induction answer: proves an HSv5 listener.
pub const MAGIC: u16 = 0x4A17;

pub mod hs_type {
    pub const INDUCTION: u32 = 1;
    pub const CONCLUSION: u32 = 0xFFFF_FFFF;
    /// Rejections are `REJECTION_BASE + reason`.
    pub const REJECTION_BASE: u32 = 1000;
}

/// Extension-field flags of a conclusion.
pub mod ext_flag {
    pub const HSREQ: u16 = 0x1;
    pub const KMREQ: u16 = 0x2;
    pub const CONFIG: u16 = 0x4;
}

/// Extension block types.
pub mod ext {
    pub const HSREQ: u16 = 1;
    pub const HSRSP: u16 = 2;
    pub const KMREQ: u16 = 3;
    pub const KMRSP: u16 = 4;
    pub const SID: u16 = 5;
}

/// HSREQ/HSRSP flags.
pub mod srt_flag {
    pub const TSBPDSND: u32 = 0x01;
    pub const TSBPDRCV: u32 = 0x02;
    pub const CRYPT: u32 = 0x04;
    pub const TLPKTDROP: u32 = 0x08;
    pub const PERIODICNAK: u32 = 0x10;
    pub const REXMITFLG: u32 = 0x20;
    pub const STREAM: u32 = 0x40;
}

/// The SRT version the relay announces in HSRSP (1.5.0).
pub const SRT_VERSION: u32 = 0x0001_0500;

/// Stream IDs are at most 512 bytes.
pub const MAX_SID_LEN: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    pub version: u32,
    pub encryption: u16,
    pub ext_field: u16,
    pub isn: Seq,
    pub mtu: u32,
    pub flow_window: u32,
    pub hs_type: u32,
    pub socket_id: u32,
    pub cookie: u32,
    pub peer_ip: [u8; 16],
}

/// What the relay reads from a conclusion's extension blocks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// HSREQ: (SRT version, flags, receiver latency ms, sender latency ms).
    pub hsreq: Option<SrtHs>,
    /// KMREQ: the caller's keying material (`srt::crypto::KeyMaterial`), as sent.
    pub kmreq: Option<Vec<u8>>,
    /// The stream ID as raw bytes (decoded from the wire's word-reversed form).
    pub sid: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SrtHs {
    pub version: u32,
    pub flags: u32,
    pub recv_latency_ms: u16,
    pub send_latency_ms: u16,
}

impl Handshake {
    pub fn parse(body: &[u8]) -> Result<Self, PacketError> {
        if body.len() < BODY_LEN {
            return Err(PacketError::Truncated);
        }
        let w = |i: usize| be32(body, i * 4);
        let field = w(1)?;
        let mut peer_ip = [0; 16];
        peer_ip.copy_from_slice(&body[32..48]);
        Ok(Handshake {
            version: w(0)?,
            encryption: (field >> 16) as u16,
            ext_field: field as u16,
            isn: Seq::new(w(2)?),
            mtu: w(3)?,
            flow_window: w(4)?,
            hs_type: w(5)?,
            socket_id: w(6)?,
            cookie: w(7)?,
            peer_ip,
        })
    }

    pub fn words(&self) -> [u32; 12] {
        let ip = |i: usize| u32::from_be_bytes(self.peer_ip[i * 4..i * 4 + 4].try_into().unwrap());
        [
            self.version,
            (u32::from(self.encryption) << 16) | u32::from(self.ext_field),
            self.isn.get(),
            self.mtu,
            self.flow_window,
            self.hs_type,
            self.socket_id,
            self.cookie,
            ip(0),
            ip(1),
            ip(2),
            ip(3),
        ]
    }
}

/// The peer-IP field as libsrt writes it: the address in 32-bit words, each in host (little
/// endian) order.
pub fn peer_ip_field(addr: SocketAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match addr.ip() {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            o.reverse();
            out[..4].copy_from_slice(&o);
        }
        IpAddr::V6(v6) => {
            for (dst, src) in out.chunks_exact_mut(4).zip(v6.octets().chunks_exact(4)) {
                dst.copy_from_slice(&[src[3], src[2], src[1], src[0]]);
            }
        }
    }
    out
}

/// Reads the extension blocks after the 48-byte body. Unknown blocks are skipped; a block
/// that claims more bytes than remain is malformed.
pub fn parse_extensions(mut rest: &[u8]) -> Result<Extensions, PacketError> {
    let mut exts = Extensions::default();
    while rest.len() >= 4 {
        let head = be32(rest, 0)?;
        let (typ, words) = ((head >> 16) as u16, (head & 0xFFFF) as usize);
        let content = rest.get(4..4 + words * 4).ok_or(PacketError::Truncated)?;
        match typ {
            ext::HSREQ => {
                let lat = be32(content, 8)?;
                exts.hsreq = Some(SrtHs {
                    version: be32(content, 0)?,
                    flags: be32(content, 4)?,
                    recv_latency_ms: (lat >> 16) as u16,
                    send_latency_ms: lat as u16,
                });
            }
            ext::KMREQ => exts.kmreq = Some(content.to_vec()),
            ext::SID => {
                if content.len() > MAX_SID_LEN {
                    return Err(PacketError::Malformed);
                }
                exts.sid = Some(decode_sid(content));
            }
            _ => {}
        }
        rest = &rest[4 + words * 4..];
    }
    Ok(exts)
}

/// libsrt stores the stream ID as little-endian words: each 4-byte group arrives reversed
/// ("#!::" as "::!#"), padded with zeros.
pub fn decode_sid(content: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = content
        .chunks(4)
        .flat_map(|c| c.iter().rev().copied())
        .collect();
    while out.last() == Some(&0) {
        out.pop();
    }
    out
}

pub fn encode_sid(sid: &[u8]) -> Vec<u32> {
    sid.chunks(4)
        .map(|c| {
            let mut w = [0u8; 4];
            w[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(w)
        })
        .collect()
}

/// A caller's handshake the way libsrt fills it in (version 4 for induction, 5 with HSREQ and
/// a stream ID for conclusion); for tests that play the caller.
#[cfg(test)]
pub fn caller(hs_type: u32, version: u32, cookie: u32, isn: Seq, socket_id: u32) -> Handshake {
    Handshake {
        version,
        encryption: 0,
        ext_field: if version == VERSION_4 {
            2
        } else {
            ext_flag::HSREQ | ext_flag::CONFIG
        },
        isn,
        mtu: 1500,
        flow_window: 8192,
        hs_type,
        socket_id,
        cookie,
        peer_ip: [0; 16],
    }
}

/// The extension block header word.
pub fn ext_header(typ: u16, words: usize) -> u32 {
    (u32::from(typ) << 16) | words as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sid_round_trips_through_word_reversal() {
        let sid = b"#!::r=1,s=abc,m=publish";
        let words = encode_sid(sid);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(&bytes[..4], b"::!#");
        assert_eq!(decode_sid(&bytes), sid);
    }

    #[test]
    fn extensions_skip_unknown_and_refuse_overruns() {
        let mut words = vec![
            ext_header(0x99, 1),
            0xDEAD_BEEF,
            ext_header(ext::HSREQ, 3),
            SRT_VERSION,
            0x3F,
        ];
        words.push((200 << 16) | 120);
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let e = parse_extensions(&bytes).unwrap();
        let hs = e.hsreq.unwrap();
        assert_eq!(
            (hs.recv_latency_ms, hs.send_latency_ms, hs.flags),
            (200, 120, 0x3F)
        );
        let overrun: Vec<u8> = ext_header(ext::SID, 50).to_be_bytes().to_vec();
        assert_eq!(
            parse_extensions(&overrun).unwrap_err(),
            PacketError::Truncated
        );
        // A truncated HSREQ is an error, not a panic.
        let short: Vec<u8> = [ext_header(ext::HSREQ, 1), 1]
            .iter()
            .flat_map(|w| w.to_be_bytes())
            .collect();
        assert!(parse_extensions(&short).is_err());
    }

    #[test]
    fn body_round_trips() {
        let hs = Handshake {
            version: 5,
            encryption: 0,
            ext_field: MAGIC,
            isn: Seq::new(1234),
            mtu: 1500,
            flow_window: 8192,
            hs_type: hs_type::CONCLUSION,
            socket_id: 77,
            cookie: 0xABCD,
            peer_ip: peer_ip_field("127.0.0.1:1".parse().unwrap()),
        };
        let bytes: Vec<u8> = hs.words().iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(Handshake::parse(&bytes).unwrap(), hs);
        assert_eq!(&hs.peer_ip[..4], &[1, 0, 0, 127]);
    }
}
