//! SRT wire constants: header layout, control types, flags (big-endian on the wire).

/// Length of the SRT header shared by data and control packets.
pub const HEADER_LEN: usize = 16;
/// Byte offset of word 0: sequence number (data) or control type/subtype (control).
pub const OFF_SEQ_OR_TYPE: usize = 0;
/// Byte offset of word 1: flags + message number (data) or type-specific info (control).
pub const OFF_MSG_OR_INFO: usize = 4;
/// Byte offset of the 32-bit timestamp (µs since the sender's start, wrapping).
pub const OFF_TIMESTAMP: usize = 8;
/// Byte offset of the destination socket ID.
pub const OFF_DEST_SOCKET: usize = 12;

/// Bit 31 of word 0: set on control packets.
pub const CONTROL_BIT: u32 = 1 << 31;
/// Sequence numbers are 31-bit.
pub const SEQ_MASK: u32 = 0x7FFF_FFFF;
/// Message numbers are 26-bit.
pub const MSGNO_MASK: u32 = 0x03FF_FFFF;
/// Word 1 of a data packet: retransmitted flag.
pub const MSG_REXMIT_FLAG: u32 = 1 << 26;
/// Word 1 of a data packet: the two key-encryption bits.
pub const MSG_KK_MASK: u32 = 0b11 << 27;

/// Largest SRT payload at an MTU of 1500 (1500 - 20 IPv4 - 8 UDP - 16 SRT).
pub const MAX_PAYLOAD: usize = 1456;
/// Largest SRT datagram the relay handles.
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_PAYLOAD;

/// Control packet types (bits 30..16 of word 0).
pub mod ctrl {
    pub const HANDSHAKE: u16 = 0;
    pub const KEEPALIVE: u16 = 1;
    pub const ACK: u16 = 2;
    pub const NAK: u16 = 3;
    pub const CONGESTION_WARNING: u16 = 4;
    pub const SHUTDOWN: u16 = 5;
    pub const ACKACK: u16 = 6;
    pub const DROPREQ: u16 = 7;
    pub const PEERERROR: u16 = 8;
    pub const USER_DEFINED: u16 = 0x7FFF;
}
