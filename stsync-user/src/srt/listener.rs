//! The listener side of the HSv5 handshake (the codec is `handshake.rs`): stateless
//! induction with a SYN cookie, then a conclusion that is checked and answered with HSRSP,
//! or rejected with a reason code.

use crate::srt::cookie::CookieJar;
use crate::srt::handshake::{
    ext, ext_flag, ext_header, hs_type, parse_extensions, peer_ip_field, srt_flag, Handshake,
    SrtHs, BODY_LEN, MAGIC, MAX_MSS, SRT_VERSION, VERSION_4, VERSION_5,
};
use crate::srt::packet::write_control;
use crate::srt::streamid::{self, StreamId, StreamIdError};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use stsync_common::srt::ctrl;

/// Why a caller is turned away; `code()` is what goes on the wire (1000 + libsrt reason, or
/// 2000 + an HTTP-like application code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed stream ID or handshake (REJ_ROGUE)")]
    Rogue,
    #[error("handshake version not supported (REJ_VERSION)")]
    Version,
    #[error("encryption offered where none is set, or required and not offered (REJ_UNSECURE)")]
    Unsecure,
    #[error("wrong passphrase (REJ_BADSECRET)")]
    BadSecret,
    #[error("stream (file) mode requested; this is a live relay (REJ_MESSAGEAPI)")]
    MessageApi,
    #[error("session key unknown or for another resource")]
    Unauthorized,
    #[error("connection or viewer limit reached")]
    Overload,
    #[error("connection limit for this address reached")]
    AddressOverload,
    #[error("too many live session keys of this stream used recently")]
    KeysOverload,
    #[error("too many handshakes from this address (REJ_BACKLOG)")]
    Backlog,
    #[error("session key already used")]
    Forbidden,
    #[error("resource not found")]
    NotFound,
    #[error("mode is neither publish nor request")]
    BadMode,
    #[error("session key expired")]
    Expired,
}

impl Rejection {
    pub fn code(self) -> u32 {
        match self {
            Rejection::Rogue => 1004,
            Rejection::Version => 1008,
            Rejection::BadSecret => 1010,
            Rejection::Unsecure => 1011,
            Rejection::MessageApi => 1012,
            Rejection::Unauthorized => 2401,
            Rejection::Overload | Rejection::AddressOverload | Rejection::KeysOverload => 2402,
            Rejection::Backlog => 1005,
            Rejection::Forbidden => 2403,
            Rejection::NotFound => 2404,
            Rejection::BadMode => 2405,
            Rejection::Expired => 2424,
        }
    }
}

/// A conclusion with a valid cookie and well-formed extensions.
#[derive(Debug)]
pub struct Conclusion {
    pub hs: Handshake,
    pub hsreq: SrtHs,
    /// The caller's keying material (KMREQ), if it encrypts: whether it may, and with which
    /// passphrase, is the stream's to say.
    pub km: Option<Vec<u8>>,
    pub stream_id: StreamId,
}

impl Conclusion {
    /// (latency for what we receive, latency for what we send), each the larger of the two
    /// sides' values, in ms.
    pub fn latencies(&self, ours: Duration) -> (u16, u16) {
        let ours = ours.as_millis().min(u16::MAX as u128) as u16;
        (
            ours.max(self.hsreq.send_latency_ms),
            ours.max(self.hsreq.recv_latency_ms),
        )
    }
}

pub enum HandshakeOutcome {
    /// Send these bytes back (an induction answer).
    Reply(Vec<u8>),
    /// A repeated conclusion for this existing connection: send its answer again.
    Repeat(u32),
    /// Drop silently, counted under this reason.
    Ignore(&'static str),
    Reject(Handshake, Rejection),
    Conclusion(Box<Conclusion>),
}

pub fn process(
    cookies: &CookieJar,
    now: Instant,
    from: SocketAddr,
    body: &[u8],
    existing: impl Fn(u32) -> Option<u32>,
) -> HandshakeOutcome {
    let Ok(hs) = Handshake::parse(body) else {
        return HandshakeOutcome::Ignore("malformed_handshake");
    };
    match hs.hs_type {
        hs_type::INDUCTION => {
            if hs.version != VERSION_4 && hs.version != VERSION_5 {
                return HandshakeOutcome::Ignore("bad_handshake_version");
            }
            let answer = Handshake {
                version: VERSION_5,
                encryption: 0,
                ext_field: MAGIC,
                cookie: cookies.issue(from, now),
                ..hs.clone()
            };
            HandshakeOutcome::Reply(encode(0, hs.socket_id, &answer.words(), &[]))
        }
        hs_type::CONCLUSION => {
            if let Some(id) = existing(hs.socket_id) {
                return HandshakeOutcome::Repeat(id);
            }
            if !cookies.check(from, hs.cookie, now) {
                return HandshakeOutcome::Ignore("bad_cookie");
            }
            if hs.version != VERSION_5 {
                return HandshakeOutcome::Reject(hs, Rejection::Version);
            }
            let exts = match parse_extensions(&body[BODY_LEN..]) {
                Ok(e) => e,
                Err(_) => return HandshakeOutcome::Reject(hs, Rejection::Rogue),
            };
            let Some(hsreq) = exts.hsreq else {
                return HandshakeOutcome::Reject(hs, Rejection::Rogue);
            };
            if hsreq.flags & srt_flag::STREAM != 0 {
                return HandshakeOutcome::Reject(hs, Rejection::MessageApi);
            }
            let stream_id = match exts.sid.as_deref().map(streamid::parse) {
                Some(Ok(id)) => id,
                Some(Err(StreamIdError::BadMode)) => {
                    return HandshakeOutcome::Reject(hs, Rejection::BadMode)
                }
                Some(Err(StreamIdError::Malformed)) | None => {
                    return HandshakeOutcome::Reject(hs, Rejection::Rogue)
                }
            };
            HandshakeOutcome::Conclusion(Box::new(Conclusion {
                hs,
                hsreq,
                km: exts.kmreq,
                stream_id,
            }))
        }
        _ => HandshakeOutcome::Ignore("unexpected_handshake"),
    }
}

fn encode(ts: u32, dest: u32, words: &[u32], ext: &[u32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 4 * (words.len() + ext.len()));
    let all: Vec<u32> = words.iter().chain(ext).copied().collect();
    write_control(&mut out, ctrl::HANDSHAKE, 0, ts, dest, &all);
    out
}

/// The conclusion answer: our socket ID, the caller's ISN for both directions (libsrt's
/// listener does the same) and HSRSP. The caller takes its time base from the answer's
/// timestamp, so the relay stamps it with the connection's clock each time it is sent
/// (`stamp`). An encrypting caller whose keying material opened gets it back as KMRSP, as
/// libsrt's listener answers.
pub fn accept(
    req: &Handshake,
    id: u32,
    from: SocketAddr,
    (rcv_latency, snd_latency): (u16, u16),
    kmrsp: Option<&[u8]>,
) -> Vec<u8> {
    let (encryption, ext_field) = match kmrsp {
        Some(_) => (req.encryption, ext_flag::HSREQ | ext_flag::KMREQ),
        None => (0, ext_flag::HSREQ),
    };
    let answer = Handshake {
        version: VERSION_5,
        encryption,
        ext_field,
        isn: req.isn,
        mtu: answer_mss(req.mtu),
        flow_window: req.flow_window.clamp(32, 8192),
        hs_type: hs_type::CONCLUSION,
        socket_id: id,
        cookie: req.cookie,
        peer_ip: peer_ip_field(from),
    };
    let flags = srt_flag::TSBPDSND
        | srt_flag::TSBPDRCV
        | srt_flag::CRYPT
        | srt_flag::TLPKTDROP
        | srt_flag::PERIODICNAK
        | srt_flag::REXMITFLG;
    let mut exts = vec![
        ext_header(ext::HSRSP, 3),
        SRT_VERSION,
        flags,
        (u32::from(rcv_latency) << 16) | u32::from(snd_latency),
    ];
    if let Some(km) = kmrsp {
        exts.push(ext_header(ext::KMRSP, km.len().div_ceil(4)));
        exts.extend(super::packet::be_words(km));
    }
    encode(0, req.socket_id, &answer.words(), &exts)
}

/// The smallest MSS libsrt lets a socket set (`SRTO_MSS` refuses less than
/// `CPacket::UDP_HDR_SIZE + CHandShake::m_iContentSize`, 28 + 48).
pub const MIN_MSS: u32 = 76;

/// The MSS the relay answers: the smaller of the caller's and its own 1500, as libsrt's
/// listener (`acceptAndRespond`), whatever the caller's family (libsrt 1.5 has no per-family
/// MSS or payload size; see `handshake::max_payload`). A caller's payload limit follows
/// from it: `max_payload(answer)`, 1456 at most.
pub fn answer_mss(caller_mss: u32) -> u32 {
    caller_mss.clamp(MIN_MSS, MAX_MSS)
}

/// Sets a control packet's timestamp (bytes 8..12).
pub fn stamp(packet: &mut [u8], ts: u32) {
    packet[8..12].copy_from_slice(&ts.to_be_bytes());
}

/// The caller's own handshake sent back with the rejection code as its type.
pub fn rejection(req: &Handshake, code: u32) -> Vec<u8> {
    let answer = Handshake {
        hs_type: code,
        ..req.clone()
    };
    encode(0, req.socket_id, &answer.words(), &[])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srt::handshake::encode_sid;
    use crate::srt::packet::Packet;
    use crate::srt::seq::Seq;

    fn caller_hs(hs_type: u32, version: u32, cookie: u32) -> Handshake {
        crate::srt::handshake::caller(hs_type, version, cookie, Seq::new(77), 0x1234)
    }

    /// A conclusion as libsrt sends it: HSREQ then SID.
    pub fn conclusion_body(cookie: u32, sid: &str, flags: u32, kmreq: bool) -> Vec<u8> {
        let mut words = caller_hs(hs_type::CONCLUSION, 5, cookie).words().to_vec();
        words.extend([
            ext_header(ext::HSREQ, 3),
            SRT_VERSION,
            flags,
            (120 << 16) | 200,
        ]);
        if kmreq {
            words.extend([ext_header(ext::KMREQ, 2), 0, 0]);
        }
        let sid = encode_sid(sid.as_bytes());
        words.push(ext_header(ext::SID, sid.len()));
        words.extend(sid);
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    fn body(hs: &Handshake) -> Vec<u8> {
        hs.words().iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    #[test]
    fn induction_is_answered_with_magic_and_cookie() {
        let jar = CookieJar::new([1; 16], Instant::now());
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let HandshakeOutcome::Reply(bytes) = process(
            &jar,
            Instant::now(),
            from,
            &body(&caller_hs(1, 4, 0)),
            |_| None,
        ) else {
            panic!()
        };
        let Packet::Control(c) = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(c.dest, 0x1234);
        let hs = Handshake::parse(c.body).unwrap();
        assert_eq!((hs.version, hs.ext_field), (5, MAGIC));
        assert!(jar.check(from, hs.cookie, Instant::now()));
    }

    #[test]
    fn conclusion_checks_cookie_then_extensions() {
        let now = Instant::now();
        let jar = CookieJar::new([1; 16], now);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let c = jar.issue(from, now);
        let flags = 0xBF & !srt_flag::STREAM;
        let run = |b: Vec<u8>| process(&jar, now, from, &b, |_| None);
        assert!(matches!(
            run(conclusion_body(
                c ^ 1,
                "#!::r=1,s=1,m=publish",
                flags,
                false
            )),
            HandshakeOutcome::Ignore("bad_cookie")
        ));
        match run(conclusion_body(c, "#!::r=1,s=ab,m=request", flags, false)) {
            HandshakeOutcome::Conclusion(cc) => {
                assert_eq!(cc.stream_id.session, "ab");
                assert_eq!(cc.latencies(Duration::from_millis(150)), (200, 150));
            }
            _ => panic!("accepted"),
        }
        let rejected = |b| match run(b) {
            HandshakeOutcome::Reject(_, r) => r,
            _ => panic!("expected a rejection"),
        };
        assert_eq!(
            rejected(conclusion_body(c, "garbage", flags, false)),
            Rejection::Rogue
        );
        assert_eq!(
            rejected(conclusion_body(c, "#!::r=1,s=1,m=watch", flags, false)),
            Rejection::BadMode
        );
        // Keying material is passed on: whether the stream takes it is the relay's call.
        match run(conclusion_body(c, "#!::r=1,s=1,m=request", flags, true)) {
            HandshakeOutcome::Conclusion(cc) => assert_eq!(cc.km, Some(vec![0; 8])),
            _ => panic!("accepted"),
        }
        assert_eq!(
            rejected(conclusion_body(
                c,
                "#!::r=1,s=1,m=request",
                flags | srt_flag::STREAM,
                false
            )),
            Rejection::MessageApi
        );
        // A repeated conclusion maps to the existing connection before anything else.
        assert!(matches!(
            process(&jar, now, from, &conclusion_body(0, "x", 0, false), |_| {
                Some(9)
            }),
            HandshakeOutcome::Repeat(9)
        ));
    }

    #[test]
    fn accept_and_rejection_layouts() {
        let req = caller_hs(hs_type::CONCLUSION, 5, 42);
        let from: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let bytes = accept(&req, 99, from, (200, 120), None);
        let Packet::Control(c) = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        let hs = Handshake::parse(c.body).unwrap();
        assert_eq!(
            (c.dest, hs.socket_id, hs.isn, hs.ext_field),
            (0x1234, 99, Seq::new(77), ext_flag::HSREQ)
        );
        let hsrsp = &c.body[BODY_LEN..];
        assert_eq!(&hsrsp[..4], &ext_header(ext::HSRSP, 3).to_be_bytes());
        assert_eq!(&hsrsp[12..16], &((200u32 << 16) | 120).to_be_bytes());
        let bytes = rejection(&req, 2404);
        let Packet::Control(r) = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(Handshake::parse(r.body).unwrap().hs_type, 2404);
    }

    /// The conclusion answer's peer-IP field is the caller's address as libsrt's listener
    /// writes it (bytes captured from Debian's libsrt 1.5.1 on `[::]` and on `0.0.0.0`), the
    /// same MSS for every family, and the induction answer echoes the caller's field as
    /// libsrt's does.
    #[test]
    fn answers_carry_the_callers_address_as_libsrt_does() {
        let answer = |from: &str, mss: u32| {
            let req = Handshake {
                mtu: mss,
                ..caller_hs(hs_type::CONCLUSION, 5, 42)
            };
            let bytes = accept(&req, 99, from.parse().unwrap(), (120, 120), None);
            let Packet::Control(c) = Packet::parse(&bytes).unwrap() else {
                panic!()
            };
            let hs = Handshake::parse(c.body).unwrap();
            (hs.peer_ip, hs.mtu)
        };
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[1, 0, 0, 127]);
        assert_eq!(answer("127.0.0.1:4000", 1500), (v4, 1500));
        let mut mapped = [0u8; 16];
        mapped[8..].copy_from_slice(&[0xff, 0xff, 0, 0, 1, 0, 0, 127]);
        assert_eq!(answer("[::ffff:127.0.0.1]:4000", 1500), (mapped, 1500));
        let mut v6 = [0u8; 16];
        v6[12] = 1;
        assert_eq!(answer("[::1]:4000", 1500), (v6, 1500));
        // The smaller MSS of the two, for IPv6 as for IPv4 (libsrt 1.5 has no IPv6 one).
        assert_eq!(answer("[::1]:4000", 1400).1, 1400);
        assert_eq!(answer("127.0.0.1:4000", 9000).1, 1500);
        assert_eq!(answer("[::1]:4000", 10).1, MIN_MSS);

        let jar = CookieJar::new([1; 16], Instant::now());
        let req = Handshake {
            peer_ip: [0xa5; 16],
            ..caller_hs(hs_type::INDUCTION, 4, 0)
        };
        let from: SocketAddr = "[::1]:4000".parse().unwrap();
        let HandshakeOutcome::Reply(bytes) =
            process(&jar, Instant::now(), from, &body(&req), |_| None)
        else {
            panic!()
        };
        let Packet::Control(c) = Packet::parse(&bytes).unwrap() else {
            panic!()
        };
        assert_eq!(Handshake::parse(c.body).unwrap().peer_ip, [0xa5; 16]);
    }
}
