//! An encrypting caller's keys, as libsrt's caller makes them: a fresh random salt and
//! stream key per connection, sealed with the passphrase into the KMREQ of its conclusion
//! (the relay's own `srt::crypto`, no crypto of the generator's). The publisher encrypts
//! its payloads with them; a viewer decrypts what it checks. A key refresh the relay sends
//! (SRT_CMD_KMREQ) is taken and answered with the same bytes (KMRSP), as libsrt does.

use anyhow::{bail, Result};
use stsync_common::srt::MSG_KK_MASK;
use stsync_user::srt::crypto::{KeyMaterial, Parity, Sek, StreamKeys, PASSPHRASE_LEN, SALT_LEN};
use stsync_user::srt::packet::be_words;
use stsync_user::srt::seq::Seq;

/// Subtypes of the extended control message (type 0x7FFF) that carry keying material.
pub(crate) const SRT_CMD_KMREQ: u16 = 3;
pub(crate) const SRT_CMD_KMRSP: u16 = 4;

/// A passphrase and key length for the publisher or the viewers (`--passphrase`...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Secret {
    pub passphrase: String,
    /// Bytes per key: 16, 24 or 32 (AES-128/192/256).
    pub key_len: usize,
}

impl Secret {
    pub fn check(&self) -> Result<()> {
        if !PASSPHRASE_LEN.contains(&self.passphrase.len()) {
            bail!("a passphrase must be 10 to 79 bytes long (libsrt's bounds)");
        }
        if ![16, 24, 32].contains(&self.key_len) {
            bail!("--pbkeylen must be 16, 24 or 32");
        }
        Ok(())
    }
}

/// One connection's keys and the keying material its conclusion sends.
pub(crate) struct Crypto {
    passphrase: String,
    /// The KMREQ as sent; the relay's KMRSP must be these bytes.
    pub(crate) km: Vec<u8>,
    pub(crate) keys: StreamKeys,
}

impl Crypto {
    /// A fresh salt and even key of `secret.key_len` bytes, sealed with its passphrase
    /// (a 2048-round PBKDF2: 0.2 to 0.4 ms).
    pub(crate) fn new(secret: &Secret) -> Result<Crypto> {
        let mut salt = [0u8; SALT_LEN];
        let mut key = [0u8; 32];
        random(&mut salt)?;
        random(&mut key)?;
        let key = &key[..secret.key_len];
        let km = KeyMaterial::seal(secret.passphrase.as_bytes(), salt, Some(key), None)
            .map_err(|e| anyhow::anyhow!("sealing keying material: {e}"))?;
        let mut bytes = Vec::new();
        km.encode(&mut bytes);
        Ok(Crypto {
            passphrase: secret.passphrase.clone(),
            km: bytes,
            keys: StreamKeys {
                salt,
                even: Some(Sek::new(key).map_err(|e| anyhow::anyhow!("{e}"))?),
                odd: None,
            },
        })
    }

    /// Encrypts data packet `seq`'s payload; returns the KK bits for its message word.
    pub(crate) fn seal(&self, seq: Seq, payload: &mut [u8]) -> u32 {
        self.keys.seal(seq, payload);
        self.keys.send_parity().msg_bits()
    }

    /// Decrypts data packet `seq`'s payload in place under the key its message word `msg`
    /// names; false when it is not encrypted or names a key this connection lacks.
    pub(crate) fn open(&self, msg: u32, seq: Seq, payload: &mut [u8]) -> bool {
        match Parity::of_msg(msg & MSG_KK_MASK) {
            Some(p) => self.keys.crypt(p, seq, payload),
            None => false,
        }
    }

    /// A key refresh from the relay (SRT_CMD_KMREQ's body): its keys join ours (see
    /// `StreamKeys::refresh`); the KMRSP to send back (the same bytes, as words), or None
    /// if it does not open with our passphrase.
    pub(crate) fn refresh(&mut self, body: &[u8]) -> Option<Vec<u32>> {
        let new = KeyMaterial::parse(body)
            .and_then(|km| km.open(self.passphrase.as_bytes()))
            .ok()?;
        self.keys.refresh(new);
        Some(be_words(body).collect())
    }
}

fn random(buf: &mut [u8]) -> Result<()> {
    // SAFETY: getrandom into a buffer of its length.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        bail!("getrandom: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(key_len: usize) -> Secret {
        Secret {
            passphrase: "bench passphrase".into(),
            key_len,
        }
    }

    /// What the publisher seals, the relay (which opens the KMREQ with the passphrase)
    /// decrypts, and a viewer with its own keys opens what the relay sealed for it.
    #[test]
    fn sealed_payloads_open_with_the_keys_the_relay_unwraps() {
        for len in [16, 24, 32] {
            let c = Crypto::new(&secret(len)).unwrap();
            let relay = KeyMaterial::parse(&c.km)
                .unwrap()
                .open(b"bench passphrase")
                .unwrap();
            assert_eq!(relay.key_len(), len);
            let mut p = vec![0u8; 1316];
            crate::caller::write_payload(&mut p, 1316, 7, 99);
            p.drain(..1316);
            let clear = p.clone();
            let kk = c.seal(Seq::new(1234), &mut p);
            assert_eq!(kk, Parity::Even.msg_bits());
            assert_ne!(p, clear);
            let mut at_relay = p.clone();
            assert!(relay.crypt(Parity::of_msg(kk).unwrap(), Seq::new(1234), &mut at_relay));
            assert_eq!(at_relay, clear);
            assert!(c.open(0xC000_0001 | kk, Seq::new(1234), &mut p));
            assert_eq!(p, clear);
            assert!(
                !c.open(0xC000_0001, Seq::new(1234), &mut p),
                "not encrypted"
            );
        }
        assert!(secret(20).check().is_err());
        assert!(Secret {
            passphrase: "short".into(),
            key_len: 16
        }
        .check()
        .is_err());
    }

    /// A refresh with a new odd key (what a rotating relay sends first): taken, answered
    /// with the same bytes; one sealed with another passphrase is not.
    #[test]
    fn a_key_refresh_is_taken_and_answered_with_the_same_bytes() {
        let mut c = Crypto::new(&secret(16)).unwrap();
        let salt = c.keys.salt;
        let km = KeyMaterial::seal(b"bench passphrase", salt, None, Some(&[5; 16])).unwrap();
        let mut body = Vec::new();
        km.encode(&mut body);
        let words = c.refresh(&body).expect("opens");
        let back: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        assert_eq!(back, body);
        assert!(c.keys.even.is_some() && c.keys.odd.is_some());
        let mut p = *b"0123456789abcdefghij";
        assert!(c.open(Parity::Odd.msg_bits(), Seq::new(1), &mut p));
        let other = KeyMaterial::seal(b"another passphrase", salt, Some(&[1; 16]), None).unwrap();
        let mut body = Vec::new();
        other.encode(&mut body);
        assert!(c.refresh(&body).is_none());
    }
}
