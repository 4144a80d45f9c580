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

/// The peer-IP field as libsrt writes it (`CIPAddress::ntop` in `srtcore/common.cpp`, called
/// by the listener's `CUDT::rewriteHandshakeData` and the caller's `startConnect`): the
/// address as libsrt's socket sees it, loaded into four 32-bit words in host (little-endian)
/// order and sent big-endian (`CPacket::toNL`), so each 4-byte group arrives reversed.
///
/// - IPv4 (`AF_INET`): `ip[0] = sin_addr.s_addr`, `ip[1..4] = 0`; 127.0.0.1 is
///   `01 00 00 7f` and twelve zero bytes.
/// - IPv6 (`AF_INET6`): all 16 bytes; `::1` is twelve zero bytes and `01 00 00 00`.
/// - An IPv4 caller of a dual-stack (`[::]`) socket is an `AF_INET6` peer `::ffff:a.b.c.d` to
///   libsrt, so it gets the IPv6-mapped form, not the short IPv4 form: `00`×8
///   `ff ff 00 00` `d c b a`. Measured with Debian's libsrt 1.5.1 (srt-live-transmit on
///   `[::]`, a caller from 127.0.0.1): `00 00 00 00 00 00 00 00 ff ff 00 00 01 00 00 7f`.
///   libsrt's caller takes either form (`CIPAddress::pton`: an IPv4 peer accepts the
///   mapped form and the short one).
///
/// Only `srt_getsockname()` on the other side reads it (`pton` into the socket's
/// `m_SelfAddr`): libsrt checks it against nothing and rejects no handshake for it.
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

/// The most the handshake's MSS field (the MTU, IP and UDP headers included) may say in the
/// relay's answer: libsrt's default `SRTO_MSS`, and its listener answers the smaller of its
/// own and the caller's (`acceptAndRespond`: `m_config.iMSS = min(m_config.iMSS,
/// w_hs.m_iMSS)`).
pub const MAX_MSS: u32 = 1500;

/// What libsrt 1.5 takes off an MSS for the headers below an SRT packet's payload:
/// `CPacket::UDP_HDR_SIZE` = 28 ("20 bytes IPv4 + 8 bytes of UDP", `srtcore/packet.h`) and
/// the SRT header, `CPacket::HDR_SIZE` = 16. The same 28 for IPv6 in every 1.5 release
/// (1.5.0 to 1.5.5): `CPacket::udpHeaderSize(family)` exists only on libsrt's unreleased
/// `dev` branch (1.6), and there only for what a socket sends (1444 over IPv6).
pub const LIBSRT_HEADERS: u32 = 28 + 16;

/// The largest data payload a libsrt peer whose own MSS is `mss` takes in. libsrt 1.5 sizes
/// its receive buffers once, when the socket's multiplexer is made, before any handshake:
/// `CRcvQueue::init(128, s->core().maxPayloadSize(), …)` in `CUDTUnited::updateMux`, where
/// the payload size is `iMSS - UDP_HDR_SIZE - HDR_SIZE` (`CUDT::clearData`), whatever the
/// family: 1456 at the default MSS of 1500 over IPv6 as over IPv4. (libsrt's `dev` sizes
/// them the same way, "think big … fit both IPv4 and IPv6", `configureMuxer`.) A larger
/// datagram is cut by `recvmsg`, and `CChannel::recvfrom` drops it on `MSG_TRUNC`
/// (`RST_AGAIN`, logged at debug only): the receiver never sees the packet, asks for it in
/// its loss reports, and drops it when its play-out time passes. The connection stays up.
pub fn max_payload(mss: u32) -> usize {
    mss.saturating_sub(LIBSRT_HEADERS) as usize
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

    fn field(addr: &str) -> [u8; 16] {
        peer_ip_field(addr.parse().unwrap())
    }

    /// The bytes Debian's libsrt 1.5.1 listener (srt-live-transmit) put in its conclusion
    /// answer, captured on the wire, for each kind of caller.
    #[test]
    fn peer_ip_field_is_libsrts_for_each_family() {
        // An IPv4 socket, an IPv4 caller.
        assert_eq!(
            field("127.0.0.1:9000"),
            [1, 0, 0, 127, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        // An IPv6 caller.
        assert_eq!(
            field("[::1]:9000"),
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
        );
        // An IPv4 caller of a dual-stack socket: the mapped form, as libsrt's `ntop` of the
        // AF_INET6 peer address writes it.
        assert_eq!(
            field("[::ffff:127.0.0.1]:9000"),
            [0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 127]
        );
        // A full IPv6 address, word by word: 2001:db8:0102:0304:… as libsrt's little-endian
        // loads of each 4-byte group, sent big-endian.
        assert_eq!(
            field("[2001:db8:102:304:506:708:90a:b0c]:1"),
            [
                0xb8, 0x0d, 0x01, 0x20, 0x04, 0x03, 0x02, 0x01, 0x08, 0x07, 0x06, 0x05, 0x0c, 0x0b,
                0x0a, 0x09
            ]
        );
    }

    /// Whatever the family, libsrt 1.5 takes 1456 bytes at MSS 1500 (its receive units are
    /// sized with the IPv4 header size), and less at a smaller MSS of its own.
    #[test]
    fn max_payload_is_libsrts_for_any_family() {
        assert_eq!(max_payload(MAX_MSS), stsync_common::srt::MAX_PAYLOAD);
        assert_eq!(max_payload(1500), 1456);
        assert_eq!(max_payload(1400), 1356);
        assert_eq!(max_payload(1360), 1316);
        assert_eq!(max_payload(20), 0);
    }
}
