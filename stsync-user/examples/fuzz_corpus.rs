//! Turns pcap captures of real SRT traffic through the relay into the fuzz seed corpus
//! (fuzz/corpus/<target>/), in each target's input format. Run through
//! `cargo xtask fuzz-corpus PCAP...`; fuzz/capture.sh makes the captures (fuzz/README.md).
//!
//! - packet: a few datagrams of each kind and direction (handshake types, data, ACK forms,
//!   ACKACK, NAK, keepalive, SHUTDOWN, ...), as captured;
//! - handshake: every handshake body (after the 16-byte header), both directions;
//! - streamid: every stream ID the callers sent, decoded from the wire form;
//! - receiver: each publisher's packets (data, ACKACK, DROPREQ) as receiver operations with
//!   the captured timing, in windows of 150 data packets;
//! - relay: what the callers sent, grouped by stream (at most four callers per file), as raw
//!   datagrams the harness fixes up (socket IDs, cookies, session keys) with the captured
//!   timing; data payloads are cut to 16 bytes to keep files small (the relay does not look
//!   into them).

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;
use stsync_common::srt::{ctrl, CONTROL_BIT, HEADER_LEN, MSG_REXMIT_FLAG};
use stsync_user::fuzzing::{Flags, Ops, ReceiverOp, RelayOp};
use stsync_user::srt::handshake::{hs_type, parse_extensions, Handshake, BODY_LEN};
use stsync_user::srt::packet::Packet;
use stsync_user::srt::seq::Seq;
use stsync_user::srt::streamid::{self, Mode};

type Result<T> = std::result::Result<T, String>;

struct Dgram {
    /// Since the capture's first datagram.
    t: Duration,
    src: SocketAddr,
    dst: SocketAddr,
    payload: Vec<u8>,
}

fn main() {
    if let Err(e) = run() {
        eprintln!("fuzz_corpus: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out = PathBuf::from("fuzz/corpus");
    let mut port = 9999u16;
    let mut pcaps = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => out = args.next().ok_or("--out DIR")?.into(),
            "--relay-port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .ok_or("--relay-port N")?
            }
            _ => pcaps.push(PathBuf::from(a)),
        }
    }
    if pcaps.is_empty() {
        return Err("usage: fuzz_corpus [--out DIR] [--relay-port N] PCAP...".into());
    }
    let mut corpus = Corpus::default();
    for pcap in &pcaps {
        let bytes = std::fs::read(pcap).map_err(|e| format!("{}: {e}", pcap.display()))?;
        let dgrams = read_pcap(&bytes).map_err(|e| format!("{}: {e}", pcap.display()))?;
        let dgrams: Vec<Dgram> = dgrams
            .into_iter()
            .filter(|d| d.src.port() == port || d.dst.port() == port)
            .collect();
        let stem = pcap.file_stem().unwrap().to_string_lossy().to_string();
        eprintln!("{}: {} SRT datagrams", pcap.display(), dgrams.len());
        corpus.add_capture(&stem, &dgrams, port);
    }
    corpus.write(&out)
}

// --- pcap ---------------------------------------------------------------------------------

/// UDP datagrams of a classic pcap file (Ethernet, Linux cooked v1/v2, raw IP or BSD
/// loopback link types; IPv4 and IPv6).
fn read_pcap(b: &[u8]) -> Result<Vec<Dgram>> {
    let head = b.get(..24).ok_or("not a pcap file")?;
    let magic = u32::from_le_bytes(head[..4].try_into().unwrap());
    let (le, nanos) = match magic {
        0xa1b2_c3d4 => (true, false),
        0xa1b2_3c4d => (true, true),
        0xd4c3_b2a1 => (false, false),
        0x4d3c_b2a1 => (false, true),
        _ => return Err("not a pcap file (pcapng is not read: tcpdump -w writes pcap)".into()),
    };
    let u32_at = |s: &[u8], i: usize| {
        let w: [u8; 4] = s[i..i + 4].try_into().unwrap();
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let link = u32_at(head, 20);
    let mut out = Vec::new();
    let mut first = None;
    let mut i = 24;
    while i + 16 <= b.len() {
        let (sec, frac, len) = (u32_at(b, i), u32_at(b, i + 4), u32_at(b, i + 8) as usize);
        let frame = b.get(i + 16..i + 16 + len).ok_or("truncated record")?;
        i += 16 + len;
        let t = Duration::new(sec.into(), if nanos { frac } else { frac * 1000 });
        let t0 = *first.get_or_insert(t);
        let ip = match link {
            1 if frame.len() >= 14 => ether_payload(&frame[12..14], &frame[14..]),
            113 if frame.len() >= 16 => ether_payload(&frame[14..16], &frame[16..]),
            276 if frame.len() >= 20 => ether_payload(&frame[..2], &frame[20..]),
            0 if frame.len() >= 4 => Some(&frame[4..]),
            101 | 12 | 228 | 229 => Some(frame),
            1 | 113 | 276 | 0 => None,
            _ => return Err(format!("link type {link} not supported")),
        };
        if let Some((src, dst, payload)) = ip.and_then(udp) {
            out.push(Dgram {
                t: t.saturating_sub(t0),
                src,
                dst,
                payload: payload.to_vec(),
            });
        }
    }
    Ok(out)
}

fn ether_payload<'a>(ethertype: &[u8], rest: &'a [u8]) -> Option<&'a [u8]> {
    matches!(ethertype, [0x08, 0x00] | [0x86, 0xDD]).then_some(rest)
}

fn udp(ip: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    let (src, dst, l4) = match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0xF) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            if *ip.get(9)? != 17
                || ip.len() < ihl.max(20)
                || u16::from_be_bytes([ip[6], ip[7]]) & 0x3FFF != 0
            {
                return None; // not UDP, or a fragment
            }
            let a = |o: usize| IpAddr::V4(Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]));
            (a(12), a(16), ip.get(ihl..total.min(ip.len()))?)
        }
        6 => {
            if *ip.get(6)? != 17 || ip.len() < 40 {
                return None;
            }
            let a = |o: usize| {
                IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(&ip[o..o + 16]).unwrap(),
                ))
            };
            (a(8), a(24), &ip[40..])
        }
        _ => return None,
    };
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    if l4.len() < 8 {
        return None;
    }
    let len = usize::from(port(4)).clamp(8, l4.len());
    Some((
        SocketAddr::new(src, port(0)),
        SocketAddr::new(dst, port(2)),
        &l4[8..len],
    ))
}

// --- SRT views of a capture ---------------------------------------------------------------

fn control_type(p: &[u8]) -> Option<u16> {
    let w0 = u32::from_be_bytes(p.get(..4)?.try_into().unwrap());
    (w0 & CONTROL_BIT != 0 && p.len() >= HEADER_LEN).then_some(((w0 >> 16) & 0x7FFF) as u16)
}

/// A short name for what a datagram is.
fn kind(p: &[u8]) -> String {
    match Packet::parse(p) {
        Ok(Packet::Data(d)) if d.msg & MSG_REXMIT_FLAG != 0 => "data-rexmit".into(),
        Ok(Packet::Data(_)) => "data".into(),
        Ok(Packet::Control(c)) => match c.typ {
            ctrl::HANDSHAKE => match Handshake::parse(c.body).map(|h| h.hs_type) {
                Ok(hs_type::INDUCTION) => "induction".into(),
                Ok(hs_type::CONCLUSION) => "conclusion".into(),
                Ok(t) if t >= hs_type::REJECTION_BASE => format!("reject{t}"),
                _ => "handshake".into(),
            },
            ctrl::KEEPALIVE => "keepalive".into(),
            ctrl::ACK => match c.body.len() {
                4 => "ack-light".into(),
                16 => "ack-small".into(),
                _ => "ack-full".into(),
            },
            ctrl::NAK => "nak".into(),
            ctrl::SHUTDOWN => "shutdown".into(),
            ctrl::ACKACK => "ackack".into(),
            ctrl::DROPREQ => "dropreq".into(),
            t => format!("ctrl{t}"),
        },
        Err(_) => "garbage".into(),
    }
}

/// A caller's conclusion: its stream ID and ISN.
fn conclusion(p: &[u8]) -> Option<(Vec<u8>, Seq)> {
    if control_type(p)? != ctrl::HANDSHAKE {
        return None;
    }
    let hs = Handshake::parse(&p[HEADER_LEN..]).ok()?;
    if hs.hs_type != hs_type::CONCLUSION {
        return None;
    }
    let exts = parse_extensions(&p[HEADER_LEN + BODY_LEN..]).ok()?;
    Some((exts.sid?, hs.isn))
}

#[derive(Default)]
struct Corpus {
    /// target → file name → bytes
    files: BTreeMap<&'static str, BTreeMap<String, Vec<u8>>>,
}

impl Corpus {
    fn put(&mut self, target: &'static str, name: String, bytes: Vec<u8>) {
        let files = self.files.entry(target).or_default();
        if !files.values().any(|b| *b == bytes) {
            files.insert(name, bytes);
        }
    }

    fn add_capture(&mut self, stem: &str, dgrams: &[Dgram], port: u16) {
        let inbound = |d: &Dgram| d.dst.port() == port;
        // packet: up to 3 of each kind and direction (1 of data), spread over the capture.
        let mut by_kind: BTreeMap<(bool, String), Vec<&Dgram>> = BTreeMap::new();
        for d in dgrams {
            by_kind
                .entry((inbound(d), kind(&d.payload)))
                .or_default()
                .push(d);
        }
        for ((inb, k), ds) in &by_kind {
            let keep = if k.starts_with("data") { 1 } else { 3 };
            let step = ds.len().div_ceil(keep);
            for (i, d) in ds.iter().step_by(step.max(1)).enumerate() {
                let dir = if *inb { "in" } else { "out" };
                self.put("packet", format!("{stem}-{dir}-{k}-{i}"), d.payload.clone());
            }
        }
        // handshake bodies, streamids.
        for (i, d) in dgrams.iter().enumerate() {
            if control_type(&d.payload) == Some(ctrl::HANDSHAKE) {
                let dir = if inbound(d) { "in" } else { "out" };
                let k = kind(&d.payload);
                let body = d.payload[HEADER_LEN..].to_vec();
                self.put("handshake", format!("{stem}-{dir}-{k}-{i}"), body);
            }
            if let Some((sid, _)) = conclusion(&d.payload).filter(|_| inbound(d)) {
                self.put("streamid", format!("{stem}-{i}"), sid);
            }
        }
        self.add_receiver(stem, dgrams, port);
        self.add_relay(stem, dgrams, port);
    }

    /// Each publisher's packets as receiver operations.
    fn add_receiver(&mut self, stem: &str, dgrams: &[Dgram], port: u16) {
        const WINDOW: usize = 150;
        const WINDOWS: usize = 4;
        // In order of appearance (the ISN of each one's first conclusion).
        let mut publishers: Vec<(SocketAddr, Seq)> = Vec::new();
        for d in dgrams.iter().filter(|d| d.dst.port() == port) {
            let Some((sid, isn)) = conclusion(&d.payload) else {
                continue;
            };
            let publish = streamid::parse(&sid).is_ok_and(|id| id.mode == Mode::Publish);
            if publish && !publishers.iter().any(|(a, _)| *a == d.src) {
                publishers.push((d.src, isn));
            }
        }
        for (n, (addr, isn)) in publishers.into_iter().enumerate() {
            let from: Vec<&Dgram> = dgrams.iter().filter(|d| d.src == addr).collect();
            let data_at: Vec<usize> = (0..from.len())
                .filter(|&i| matches!(Packet::parse(&from[i].payload), Ok(Packet::Data(_))))
                .collect();
            let starts: Vec<usize> = data_at.iter().step_by(WINDOW).copied().collect();
            let step = starts.len().div_ceil(WINDOWS).max(1);
            for (w, &start) in starts.iter().step_by(step).enumerate() {
                let first_seq = match Packet::parse(&from[start].payload) {
                    Ok(Packet::Data(d)) if w > 0 => d.seq,
                    _ => isn,
                };
                let mut o = Ops::default();
                ReceiverOp::header(&mut o, first_seq.get(), 30, 3);
                let (mut next, mut t, mut datas) = (first_seq, from[start].t, 0);
                for d in &from[start..] {
                    advance(&mut o, d.t.saturating_sub(t), 20, |o, u| {
                        ReceiverOp::Advance(u).write(o)
                    });
                    t = d.t;
                    let op = match Packet::parse(&d.payload) {
                        Ok(Packet::Data(p)) => {
                            datas += 1;
                            let delta = p.seq.diff(next);
                            if !p.seq.lt(next) {
                                next = p.seq.next();
                            }
                            let len = p.payload.len() as u16;
                            match i16::try_from(delta) {
                                Ok(delta) => ReceiverOp::Data { delta, len },
                                Err(_) => ReceiverOp::DataAt {
                                    seq: p.seq.get(),
                                    len,
                                },
                            }
                        }
                        Ok(Packet::Control(c)) if c.typ == ctrl::ACKACK => {
                            ReceiverOp::AckAckRecent(0)
                        }
                        Ok(Packet::Control(c)) if c.typ == ctrl::DROPREQ && c.body.len() >= 8 => {
                            let w = |i: usize| {
                                Seq::new(u32::from_be_bytes(c.body[i..i + 4].try_into().unwrap()))
                            };
                            let rel = |s: Seq| {
                                s.diff(next).clamp(i16::MIN.into(), i16::MAX.into()) as i16
                            };
                            ReceiverOp::DropReq {
                                first: rel(w(0)),
                                last: rel(w(4)),
                            }
                        }
                        _ => continue,
                    };
                    op.write(&mut o);
                    if datas >= WINDOW {
                        break;
                    }
                }
                self.put("receiver", format!("{stem}-publisher{n}-w{w}"), o.0);
            }
        }
    }

    /// What the callers sent, by stream, as relay operations.
    fn add_relay(&mut self, stem: &str, dgrams: &[Dgram], port: u16) {
        /// Ring 256, latency 120 ms.
        const CONF: u8 = 0b0110;
        const MAX_FILE: usize = 8 * 1024;
        const WINDOWS: usize = 3;
        const PAYLOAD: usize = 16;
        // Callers the relay accepted (it answered their conclusion with one).
        let accepted: HashSet<SocketAddr> = dgrams
            .iter()
            .filter(|d| d.src.port() == port && kind(&d.payload) == "conclusion")
            .map(|d| d.dst)
            .collect();
        // Callers, in order of appearance, grouped by the resource their stream ID names;
        // the ones the relay turned away on their own.
        let mut groups: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
        let mut seen = HashSet::new();
        for d in dgrams.iter().filter(|d| d.dst.port() == port) {
            if let Some((sid, _)) = conclusion(&d.payload) {
                if seen.insert(d.src) {
                    let group = match streamid::parse(&sid) {
                        Ok(id) if accepted.contains(&d.src) => format!("stream{}", id.resource),
                        _ => "rejected".into(),
                    };
                    groups.entry(group).or_default().push(d.src);
                }
            }
        }
        let chunks: Vec<(String, Vec<SocketAddr>)> = groups
            .into_iter()
            .flat_map(|(g, addrs)| {
                addrs
                    .chunks(4)
                    .enumerate()
                    .map(|(i, c)| {
                        (
                            if i == 0 {
                                g.clone()
                            } else {
                                format!("{g}.{i}")
                            },
                            c.to_vec(),
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        for (group, addrs) in chunks {
            let peer = |a: SocketAddr| addrs.iter().position(|&x| x == a).map(|i| i as u8);
            let from: Vec<(u8, &Dgram)> = dgrams
                .iter()
                .filter(|d| d.dst.port() == port)
                .filter_map(|d| Some((peer(d.src)?, d)))
                .collect();
            let raw = |p: u8, d: &Dgram| {
                let mut bytes = d.payload.clone();
                if matches!(Packet::parse(&bytes), Ok(Packet::Data(_))) {
                    bytes.truncate(HEADER_LEN + PAYLOAD);
                }
                // Only the keys the relay accepted are minted: a rejected one stays unknown.
                let flags = if accepted.contains(&d.src) {
                    Flags::ALL
                } else {
                    Flags::DEST | Flags::COOKIE
                };
                RelayOp::Raw {
                    peer: p,
                    flags,
                    bytes,
                }
            };
            let is_hs = |d: &Dgram| {
                control_type(&d.payload) == Some(ctrl::HANDSHAKE) && d.payload[12..16] == [0; 4]
            };
            // Windows: from the start, and from later points with the callers' handshakes first.
            let mut windows = Vec::new();
            let mut start = 0;
            while start < from.len() {
                let mut o = Ops::default();
                o.u8(CONF);
                for (p, d) in from[..start].iter().filter(|(_, d)| is_hs(d)) {
                    raw(*p, d).write(&mut o);
                }
                let mut t = from[start].1.t;
                let mut end = start;
                for (p, d) in &from[start..] {
                    if o.0.len() >= MAX_FILE {
                        break;
                    }
                    advance(&mut o, d.t.saturating_sub(t), 100, |o, u| {
                        RelayOp::Advance(u).write(o)
                    });
                    t = d.t;
                    raw(*p, d).write(&mut o);
                    end += 1;
                }
                // Let the last timers run (keepalives, timeouts).
                RelayOp::Advance(u16::MAX).write(&mut o);
                windows.push(o.0);
                start = end;
            }
            let step = windows.len().div_ceil(WINDOWS).max(1);
            let last = windows.len() - 1;
            for (i, w) in windows.into_iter().enumerate() {
                if i % step == 0 || i == last {
                    self.put("relay", format!("{stem}-{group}-w{i}"), w);
                }
            }
        }
    }

    fn write(&self, out: &Path) -> Result<()> {
        let (mut files, mut bytes) = (0, 0);
        for (target, entries) in &self.files {
            // The corpus is exactly what these captures make: earlier files go.
            let dir = out.join(target);
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            for (name, b) in entries {
                std::fs::write(dir.join(name), b).map_err(|e| format!("{name}: {e}"))?;
            }
            let n: usize = entries.values().map(Vec::len).sum();
            eprintln!("{target}: {} files, {n} bytes", entries.len());
            files += entries.len();
            bytes += n;
        }
        eprintln!("{}: {files} files, {bytes} bytes", out.display());
        Ok(())
    }
}

/// Writes time passing as `Advance` ops of at most u16::MAX units of `unit_us`.
fn advance(o: &mut Ops, d: Duration, unit_us: u128, op: impl Fn(&mut Ops, u16)) {
    let mut units = d.as_micros() / unit_us;
    while units > 0 {
        let u = units.min(u16::MAX.into()) as u16;
        op(o, u);
        units -= u128::from(u);
    }
}
