//! SRT packet codec: parse borrowed views of datagrams, append encoded packets to a buffer.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0|                    Packet Sequence Number                   |  data
//! |1|        Control Type         |           Subtype             |  control
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |PP |O|KK |R|          Message Number / Type-specific           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           Timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                     Destination Socket ID                     |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```

use super::seq::Seq;
use stsync_common::srt::{CONTROL_BIT, HEADER_LEN, MAX_DATAGRAM, OFF_DEST_SOCKET, OFF_TIMESTAMP};

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("datagram shorter than its header or field")]
    Truncated,
    #[error("datagram larger than {MAX_DATAGRAM} bytes")]
    Oversized,
    #[error("malformed packet body")]
    Malformed,
}

impl PacketError {
    /// Label for the dropped-packets metric.
    pub fn reason(self) -> &'static str {
        match self {
            PacketError::Truncated => "truncated",
            PacketError::Oversized => "oversized",
            PacketError::Malformed => "malformed",
        }
    }
}

pub fn be32(b: &[u8], at: usize) -> Result<u32, PacketError> {
    b.get(at..at + 4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]))
        .ok_or(PacketError::Truncated)
}

#[derive(Debug, Clone, Copy)]
pub struct DataPacket<'a> {
    pub seq: Seq,
    /// Word 1 as on the wire: position, order, key and rexmit flags plus message number.
    pub msg: u32,
    pub ts: u32,
    pub dest: u32,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub struct ControlPacket<'a> {
    pub typ: u16,
    pub subtype: u16,
    pub info: u32,
    pub ts: u32,
    pub dest: u32,
    pub body: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
pub enum Packet<'a> {
    Data(DataPacket<'a>),
    Control(ControlPacket<'a>),
}

impl<'a> Packet<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, PacketError> {
        if buf.len() > MAX_DATAGRAM {
            return Err(PacketError::Oversized);
        }
        if buf.len() < HEADER_LEN {
            return Err(PacketError::Truncated);
        }
        let w0 = be32(buf, 0)?;
        let info = be32(buf, 4)?;
        let ts = be32(buf, OFF_TIMESTAMP)?;
        let dest = be32(buf, OFF_DEST_SOCKET)?;
        let body = &buf[HEADER_LEN..];
        Ok(if w0 & CONTROL_BIT == 0 {
            Packet::Data(DataPacket {
                seq: Seq::new(w0),
                msg: info,
                ts,
                dest,
                payload: body,
            })
        } else {
            Packet::Control(ControlPacket {
                typ: ((w0 >> 16) & 0x7FFF) as u16,
                subtype: w0 as u16,
                info,
                ts,
                dest,
                body,
            })
        })
    }

    pub fn dest(&self) -> u32 {
        match self {
            Packet::Data(d) => d.dest,
            Packet::Control(c) => c.dest,
        }
    }
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

pub fn write_data(out: &mut Vec<u8>, seq: Seq, msg: u32, ts: u32, dest: u32, payload: &[u8]) {
    put32(out, seq.get());
    put32(out, msg);
    put32(out, ts);
    put32(out, dest);
    out.extend_from_slice(payload);
}

/// `bytes` as the big-endian 32-bit words a control body or handshake extension carries
/// (keying material, say), the last one zero-padded.
pub fn be_words(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes.chunks(4).map(|c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        u32::from_be_bytes(w)
    })
}

/// Appends a control packet with a body of 32-bit words.
pub fn write_control(out: &mut Vec<u8>, typ: u16, info: u32, ts: u32, dest: u32, body: &[u32]) {
    put32(out, CONTROL_BIT | (u32::from(typ) << 16));
    put32(out, info);
    put32(out, ts);
    put32(out, dest);
    for w in body {
        put32(out, *w);
    }
}

/// A full ACK (the libsrt form: 7 words); a light ACK carries only `ack_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// The next sequence number the receiver expects (everything before it is received).
    pub ack_seq: Seq,
    pub full: Option<AckFigures>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckFigures {
    pub rtt_us: u32,
    pub rtt_var_us: u32,
    pub avail_buf: u32,
    pub pkt_rate: u32,
    pub capacity: u32,
    pub recv_rate_bps: u32,
}

impl Ack {
    pub fn parse(body: &[u8]) -> Result<Self, PacketError> {
        let ack_seq = Seq::new(be32(body, 0)?);
        // libsrt sends 4-byte light ACKs, 16-byte "small" ACKs and 28-byte full ones.
        let full = if body.len() >= 16 {
            let w = |i: usize| be32(body, i * 4).unwrap_or(0);
            Some(AckFigures {
                rtt_us: w(1),
                rtt_var_us: w(2),
                avail_buf: w(3),
                pkt_rate: w(4),
                capacity: w(5),
                recv_rate_bps: w(6),
            })
        } else {
            None
        };
        Ok(Ack { ack_seq, full })
    }

    pub fn words(&self) -> ([u32; 7], usize) {
        match self.full {
            None => ([self.ack_seq.get(), 0, 0, 0, 0, 0, 0], 1),
            Some(f) => (
                [
                    self.ack_seq.get(),
                    f.rtt_us,
                    f.rtt_var_us,
                    f.avail_buf,
                    f.pkt_rate,
                    f.capacity,
                    f.recv_rate_bps,
                ],
                7,
            ),
        }
    }
}

/// Iterates the ranges of a range-coded loss list: a word with bit 31 set opens a range that
/// the next word closes; a plain word is a single sequence number.
pub fn loss_ranges(body: &[u8]) -> impl Iterator<Item = Result<(Seq, Seq), PacketError>> + '_ {
    let mut words = body
        .chunks_exact(4)
        .map(|w| u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    std::iter::from_fn(move || {
        let w = words.next()?;
        if w & CONTROL_BIT != 0 {
            match words.next() {
                Some(end) if end & CONTROL_BIT == 0 => Some(Ok((Seq::new(w), Seq::new(end)))),
                _ => Some(Err(PacketError::Malformed)),
            }
        } else {
            Some(Ok((Seq::new(w), Seq::new(w))))
        }
    })
}

/// Appends ranges to a loss list body in the same coding.
pub fn encode_loss(words: &mut Vec<u32>, first: Seq, last: Seq) {
    if first == last {
        words.push(first.get());
    } else {
        words.push(first.get() | CONTROL_BIT);
        words.push(last.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_data() {
        let mut out = Vec::new();
        write_data(
            &mut out,
            Seq::new(0x7FFF_FFFF),
            0xC000_0001,
            42,
            7,
            b"hello",
        );
        match Packet::parse(&out).unwrap() {
            Packet::Data(d) => {
                assert_eq!(d.seq, Seq::new(0x7FFF_FFFF));
                assert_eq!(
                    (d.msg, d.ts, d.dest, d.payload),
                    (0xC000_0001, 42, 7, &b"hello"[..])
                );
            }
            p => panic!("{p:?}"),
        }
    }

    #[test]
    fn round_trips_control_and_ack() {
        let mut out = Vec::new();
        let ack = Ack {
            ack_seq: Seq::new(9),
            full: Some(AckFigures {
                rtt_us: 1,
                ..Default::default()
            }),
        };
        let (w, n) = ack.words();
        write_control(&mut out, 2, 5, 1, 3, &w[..n]);
        let Packet::Control(c) = Packet::parse(&out).unwrap() else {
            panic!()
        };
        assert_eq!((c.typ, c.info, c.ts, c.dest), (2, 5, 1, 3));
        assert_eq!(Ack::parse(c.body).unwrap(), ack);
        assert_eq!(Ack::parse(&9u32.to_be_bytes()).unwrap().full, None);
    }

    #[test]
    fn rejects_short_and_huge() {
        assert_eq!(Packet::parse(&[0; 15]).unwrap_err(), PacketError::Truncated);
        assert_eq!(
            Packet::parse(&[0; 2000]).unwrap_err(),
            PacketError::Oversized
        );
        assert_eq!(Ack::parse(&[1, 2]).unwrap_err(), PacketError::Truncated);
    }

    #[test]
    fn loss_list_codes_ranges() {
        let mut words = Vec::new();
        encode_loss(&mut words, Seq::new(5), Seq::new(5));
        encode_loss(&mut words, Seq::new(10), Seq::new(12));
        let body: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let got: Vec<_> = loss_ranges(&body).collect::<Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![(Seq::new(5), Seq::new(5)), (Seq::new(10), Seq::new(12))]
        );
        // A range opener without its end is malformed, not a panic.
        let bad = (10 | CONTROL_BIT).to_be_bytes();
        assert!(loss_ranges(&bad).next().unwrap().is_err());
    }
}
