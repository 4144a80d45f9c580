//! SRT encryption as libsrt 1.5 does it (HaiCrypt, AES-CTR), sans-IO: the keying-material
//! message (KMREQ/KMRSP body), the key-encrypting key from a passphrase, AES key wrap, and
//! the per-packet keystream. Read from libsrt's `haicrypt/` (hcrypt_msg.h, hcrypt.h,
//! hcrypt_sa.c, cryspr.c); the known answers are in the tests.
//!
//! ```text
//! Keying material (KMREQ/KMRSP body, and the SRT_CMD_KMREQ/KMRSP control messages)
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |0|Vers=1| PT=2 |      Sign = 0x2029 ("HAI")    |   resv    |KF |  KF: 1 even, 2 odd, 3 both
//! |                          KEKI = 0                             |
//! | Cipher = 2 CTR|    Auth = 0   |  SE = 2 (SRT) |     resv      |
//! |             resv              | Slen/4 = 4    |   Klen/4      |
//! |                        Salt (16 bytes)                        |
//! |   Wrap: RFC 3394 of the SEK(s), even first (8 + Klen × keys)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! KEK  = PBKDF2-HMAC-SHA1(passphrase, salt[8..16], 2048 rounds, Klen bytes)
//! IV   = 0^10 ‖ seq (4 bytes, big-endian) ‖ 0^2, its first 14 bytes XORed with salt[0..14]
//! data = payload XOR AES-CTR(SEK, IV), the counter running in the IV's last bytes
//! ```
//!
//! The data header's KK bits (`MSG_KK_MASK`) say which key a packet is under: 1 even, 2 odd.

use crate::srt::seq::Seq;
use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use aes::{Aes128, Aes192, Aes256};

/// Bytes of salt in keying material (libsrt always sends 16).
pub const SALT_LEN: usize = 16;
/// PBKDF2 takes the salt's last this many bytes.
const PBKDF2_SALT_LEN: usize = 8;
const PBKDF2_ROUNDS: u32 = 2048;
/// RFC 3394 adds this much to what it wraps.
const WRAP_OVERHEAD: usize = 8;
const VERSION: u8 = 1;
const PT_KM: u8 = 2;
const SIGN: u16 = 0x2029;
const CIPHER_AES_CTR: u8 = 2;
const SE_SRT: u8 = 2;
/// Keying material is at most this long: header, salt, two 32-byte keys wrapped.
pub const KM_MAX_LEN: usize = 16 + SALT_LEN + WRAP_OVERHEAD + 2 * 32;
/// Passphrase lengths libsrt accepts.
pub const PASSPHRASE_LEN: std::ops::RangeInclusive<usize> = 10..=79;

/// Which stream key a packet or a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parity {
    Even,
    Odd,
}

impl Parity {
    pub fn other(self) -> Parity {
        match self {
            Parity::Even => Parity::Odd,
            Parity::Odd => Parity::Even,
        }
    }

    /// From a data packet's message-number word (its KK bits); `None`: not encrypted.
    pub fn of_msg(msg: u32) -> Option<Parity> {
        match (msg >> 27) & 0b11 {
            1 => Some(Parity::Even),
            2 => Some(Parity::Odd),
            _ => None,
        }
    }

    /// The KK bits for a data packet's message-number word.
    pub fn msg_bits(self) -> u32 {
        match self {
            Parity::Even => 1 << 27,
            Parity::Odd => 2 << 27,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KmError {
    #[error("keying material malformed: {0}")]
    Malformed(&'static str),
    #[error("keying material for a cipher other than AES-CTR")]
    Cipher,
    /// The key does not unwrap: libsrt's BADSECRET.
    #[error("wrong passphrase (the stream key does not unwrap)")]
    BadSecret,
}

/// A keying-material message: the salt and the stream key(s), wrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyMaterial {
    /// Bit 0: an even key is present; bit 1: an odd one (both: even first).
    pub flags: u8,
    pub salt: [u8; SALT_LEN],
    /// Bytes per key: 16, 24 or 32.
    pub key_len: usize,
    wrap: Vec<u8>,
}

impl KeyMaterial {
    pub fn parse(b: &[u8]) -> Result<KeyMaterial, KmError> {
        use KmError::Malformed;
        if b.len() < 16 {
            return Err(Malformed("shorter than its header"));
        }
        if b[0] >> 4 != VERSION || b[0] & 0xF != PT_KM {
            return Err(Malformed("not keying material version 1"));
        }
        if u16::from_be_bytes([b[1], b[2]]) != SIGN {
            return Err(Malformed("no HAI signature"));
        }
        let flags = b[3] & 0b11;
        if flags == 0 {
            return Err(Malformed("no key"));
        }
        if b[8] != CIPHER_AES_CTR {
            return Err(KmError::Cipher);
        }
        let salt_len = usize::from(b[14]) * 4;
        let key_len = usize::from(b[15]) * 4;
        if salt_len != SALT_LEN {
            return Err(Malformed("salt not 16 bytes"));
        }
        if ![16, 24, 32].contains(&key_len) {
            return Err(Malformed("key length not 16, 24 or 32"));
        }
        let keys = flags.count_ones() as usize;
        let wrap_len = WRAP_OVERHEAD + key_len * keys;
        let end = 16 + SALT_LEN + wrap_len;
        if b.len() < end {
            return Err(Malformed("shorter than its keys"));
        }
        Ok(KeyMaterial {
            flags,
            salt: b[16..16 + SALT_LEN].try_into().expect("checked"),
            key_len,
            wrap: b[16 + SALT_LEN..end].to_vec(),
        })
    }

    /// Wraps `even` and/or `odd` (each `key_len` bytes) under the key derived from
    /// `passphrase` and `salt`.
    pub fn seal(
        passphrase: &[u8],
        salt: [u8; SALT_LEN],
        even: Option<&[u8]>,
        odd: Option<&[u8]>,
    ) -> Result<KeyMaterial, KmError> {
        let key_len = even.or(odd).map_or(0, <[u8]>::len);
        let mut raw = RawKeys::new(key_len)?;
        raw.set(Parity::Even, even)?;
        raw.set(Parity::Odd, odd)?;
        KeyMaterial::seal_with(&Kek::derive(passphrase, &salt, key_len)?, salt, &raw)
    }

    /// Wraps `keys` under `kek` (derived for `salt`): no PBKDF2 when the KEK is kept.
    pub fn seal_with(
        kek: &Kek,
        salt: [u8; SALT_LEN],
        keys: &RawKeys,
    ) -> Result<KeyMaterial, KmError> {
        let mut plain = [0u8; 64];
        let mut n = 0;
        for p in [Parity::Even, Parity::Odd] {
            if let Some(k) = keys.get(p) {
                plain[n..n + k.len()].copy_from_slice(k);
                n += k.len();
            }
        }
        if n == 0 || kek.len != keys.len {
            return Err(KmError::Malformed("no key, or a KEK of another length"));
        }
        let mut wrap = vec![0; n + WRAP_OVERHEAD];
        kek.wrap(&plain[..n], &mut wrap)?;
        let flags = u8::from(keys.even.is_some()) | u8::from(keys.odd.is_some()) << 1;
        Ok(KeyMaterial {
            flags,
            salt,
            key_len: keys.len,
            wrap,
        })
    }

    /// The message bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[VERSION << 4 | PT_KM]);
        out.extend_from_slice(&SIGN.to_be_bytes());
        out.push(self.flags);
        out.extend_from_slice(&[0; 4]); // KEKI: passphrase-derived
        out.extend_from_slice(&[CIPHER_AES_CTR, 0, SE_SRT, 0]);
        out.extend_from_slice(&[0, 0, (SALT_LEN / 4) as u8, (self.key_len / 4) as u8]);
        out.extend_from_slice(&self.salt);
        out.extend_from_slice(&self.wrap);
    }

    /// The stream key(s), unwrapped with the key `passphrase` derives.
    pub fn open(&self, passphrase: &[u8]) -> Result<StreamKeys, KmError> {
        let kek = Kek::derive(passphrase, &self.salt, self.key_len)?;
        StreamKeys::new(self.salt, &self.unwrap(&kek)?)
    }

    /// The stream key(s) as bytes, unwrapped with `kek`; a failed check is BADSECRET.
    pub fn unwrap(&self, kek: &Kek) -> Result<RawKeys, KmError> {
        if kek.len != self.key_len {
            return Err(KmError::Malformed("a KEK of another length"));
        }
        let mut plain = [0u8; 64];
        let plain = kek.unwrap(&self.wrap, &mut plain[..self.wrap.len() - WRAP_OVERHEAD])?;
        let mut keys = plain.chunks_exact(self.key_len);
        let mut raw = RawKeys::new(self.key_len)?;
        for (bit, p) in [(1, Parity::Even), (2, Parity::Odd)] {
            if self.flags & bit != 0 {
                raw.set(p, keys.next())?;
            }
        }
        Ok(raw)
    }
}

/// Stream keys as bytes, before expansion: what keying material wraps.
#[derive(Clone, PartialEq, Eq)]
pub struct RawKeys {
    len: usize,
    even: Option<[u8; 32]>,
    odd: Option<[u8; 32]>,
}

impl RawKeys {
    /// No key yet; keys of `len` bytes (16, 24 or 32).
    pub fn new(len: usize) -> Result<RawKeys, KmError> {
        if ![16, 24, 32].contains(&len) {
            return Err(KmError::Malformed("key length not 16, 24 or 32"));
        }
        Ok(RawKeys {
            len,
            even: None,
            odd: None,
        })
    }

    pub fn key_len(&self) -> usize {
        self.len
    }

    pub fn get(&self, parity: Parity) -> Option<&[u8]> {
        self.slot(parity).as_ref().map(|k| &k[..self.len])
    }

    /// Sets or removes the key of `parity`.
    pub fn set(&mut self, parity: Parity, key: Option<&[u8]>) -> Result<(), KmError> {
        let len = self.len;
        *self.slot_mut(parity) = match key {
            Some(k) if k.len() == len => {
                let mut b = [0u8; 32];
                b[..len].copy_from_slice(k);
                Some(b)
            }
            Some(_) => return Err(KmError::Malformed("keys of different lengths")),
            None => None,
        };
        Ok(())
    }

    /// A fresh random key for `parity` (from the OS-seeded CSPRNG, as libsrt's PRNG).
    pub fn generate(&mut self, parity: Parity) {
        use rand::RngCore;
        let mut b = [0u8; 32];
        rand::rng().fill_bytes(&mut b[..self.len]);
        *self.slot_mut(parity) = Some(b);
    }

    fn slot(&self, parity: Parity) -> &Option<[u8; 32]> {
        match parity {
            Parity::Even => &self.even,
            Parity::Odd => &self.odd,
        }
    }

    fn slot_mut(&mut self, parity: Parity) -> &mut Option<[u8; 32]> {
        match parity {
            Parity::Even => &mut self.even,
            Parity::Odd => &mut self.odd,
        }
    }
}

/// The key-encrypting key (PBKDF2 of the passphrase and salt: kept, since deriving it
/// costs 0.2 to 0.4 ms).
pub struct Kek {
    bytes: [u8; 32],
    len: usize,
}

impl Kek {
    pub fn derive(passphrase: &[u8], salt: &[u8; SALT_LEN], len: usize) -> Result<Kek, KmError> {
        let mut bytes = [0u8; 32];
        let out = bytes
            .get_mut(..len)
            .ok_or(KmError::Malformed("key length"))?;
        pbkdf2_sha1(
            passphrase,
            &salt[SALT_LEN - PBKDF2_SALT_LEN..],
            PBKDF2_ROUNDS,
            out,
        );
        Ok(Kek { bytes, len })
    }

    fn wrap(&self, plain: &[u8], out: &mut [u8]) -> Result<(), KmError> {
        let k = &self.bytes[..self.len];
        let bad = |_| KmError::Malformed("cannot wrap");
        match self.len {
            16 => aes_kw::KwAes128::new_from_slice(k)
                .map_err(|_| KmError::Malformed("key"))?
                .wrap_key(plain, out)
                .map(drop)
                .map_err(bad),
            24 => aes_kw::KwAes192::new_from_slice(k)
                .map_err(|_| KmError::Malformed("key"))?
                .wrap_key(plain, out)
                .map(drop)
                .map_err(bad),
            _ => aes_kw::KwAes256::new_from_slice(k)
                .map_err(|_| KmError::Malformed("key"))?
                .wrap_key(plain, out)
                .map(drop)
                .map_err(bad),
        }
    }

    /// Unwraps into `out` (the wrap's length less 8); a failed integrity check is the
    /// wrong passphrase.
    fn unwrap<'a>(&self, wrapped: &[u8], out: &'a mut [u8]) -> Result<&'a [u8], KmError> {
        let k = &self.bytes[..self.len];
        let r = match self.len {
            16 => aes_kw::KwAes128::new_from_slice(k)
                .map_err(|_| KmError::Malformed("key"))?
                .unwrap_key(wrapped, out),
            24 => aes_kw::KwAes192::new_from_slice(k)
                .map_err(|_| KmError::Malformed("key"))?
                .unwrap_key(wrapped, out),
            _ => aes_kw::KwAes256::new_from_slice(k)
                .map_err(|_| KmError::Malformed("key"))?
                .unwrap_key(wrapped, out),
        };
        r.map_err(|_| KmError::BadSecret)
    }
}

fn pbkdf2_sha1(passphrase: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
    pbkdf2::pbkdf2_hmac::<sha1::Sha1>(passphrase, salt, rounds, out);
}

/// A stream encrypting key, expanded once.
#[derive(Clone)]
pub enum Sek {
    Aes128(Aes128),
    Aes192(Aes192),
    Aes256(Aes256),
}

impl Sek {
    pub fn new(key: &[u8]) -> Result<Sek, KmError> {
        let bad = |_| KmError::Malformed("key length not 16, 24 or 32");
        Ok(match key.len() {
            16 => Sek::Aes128(Aes128::new_from_slice(key).map_err(bad)?),
            24 => Sek::Aes192(Aes192::new_from_slice(key).map_err(bad)?),
            32 => Sek::Aes256(Aes256::new_from_slice(key).map_err(bad)?),
            _ => return Err(KmError::Malformed("key length not 16, 24 or 32")),
        })
    }

    /// Encrypts or decrypts (the same thing in CTR mode) data packet `seq`'s payload in
    /// place.
    pub fn crypt(&self, salt: &[u8; SALT_LEN], seq: Seq, payload: &mut [u8]) {
        let iv = iv(salt, seq);
        match self {
            Sek::Aes128(c) => keystream(c, &iv, payload),
            Sek::Aes192(c) => keystream(c, &iv, payload),
            Sek::Aes256(c) => keystream(c, &iv, payload),
        }
    }
}

/// XORs AES-CTR's keystream from counter block `iv` into `data`; the expanded key is copied,
/// not expanded again.
fn keystream<C>(cipher: &C, iv: &[u8; 16], data: &mut [u8])
where
    C: aes::cipher::BlockCipherEncrypt<BlockSize = aes::cipher::consts::U16> + Clone,
{
    type Ctr<C> = ctr::CtrCore<C, ctr::flavors::Ctr128BE>;
    let core = Ctr::<C>::inner_iv_init(cipher.clone(), iv.into());
    ctr::cipher::StreamCipherCoreWrapper::from_core(core).apply_keystream(data);
}

/// The counter block for packet `seq` (see the module's drawing).
fn iv(salt: &[u8; SALT_LEN], seq: Seq) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[10..14].copy_from_slice(&seq.get().to_be_bytes());
    for (b, s) in iv[..14].iter_mut().zip(salt) {
        *b ^= s;
    }
    iv
}

/// One connection's keys: the salt and the even and/or odd stream key.
#[derive(Clone)]
pub struct StreamKeys {
    pub salt: [u8; SALT_LEN],
    pub even: Option<Sek>,
    pub odd: Option<Sek>,
}

impl StreamKeys {
    /// `keys` expanded, under `salt`.
    pub fn new(salt: [u8; SALT_LEN], keys: &RawKeys) -> Result<StreamKeys, KmError> {
        let expand = |p| keys.get(p).map(Sek::new).transpose();
        Ok(StreamKeys {
            salt,
            even: expand(Parity::Even)?,
            odd: expand(Parity::Odd)?,
        })
    }

    /// Takes a refresh: the keys it carries replace those of their parity; a key it does
    /// not carry stays (libsrt announces the next key before it switches, and packets under
    /// the old one may still be retransmitted). A new salt replaces everything.
    pub fn refresh(&mut self, new: StreamKeys) {
        if new.salt != self.salt {
            *self = new;
            return;
        }
        if new.even.is_some() {
            self.even = new.even;
        }
        if new.odd.is_some() {
            self.odd = new.odd;
        }
    }

    /// Bytes per key (16, 24 or 32).
    pub fn key_len(&self) -> usize {
        match self.even.as_ref().or(self.odd.as_ref()) {
            Some(Sek::Aes128(_)) => 16,
            Some(Sek::Aes192(_)) => 24,
            Some(Sek::Aes256(_)) | None => 32,
        }
    }

    /// The key data to this peer goes under: the even one when there is one.
    pub fn send_parity(&self) -> Parity {
        if self.even.is_some() {
            Parity::Even
        } else {
            Parity::Odd
        }
    }

    /// Encrypts data packet `seq`'s payload for this peer (under `send_parity`).
    pub fn seal(&self, seq: Seq, payload: &mut [u8]) {
        let parity = self.send_parity();
        if let Some(k) = self.key(parity) {
            k.crypt(&self.salt, seq, payload);
        }
    }

    pub fn key(&self, parity: Parity) -> Option<&Sek> {
        match parity {
            Parity::Even => self.even.as_ref(),
            Parity::Odd => self.odd.as_ref(),
        }
    }

    /// Decrypts or encrypts data packet `seq`'s payload under the key `parity` names;
    /// false when this connection has no such key.
    pub fn crypt(&self, parity: Parity, seq: Seq, payload: &mut [u8]) -> bool {
        match self.key(parity) {
            Some(k) => {
                k.crypt(&self.salt, seq, payload);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn pbkdf2_hmac_sha1_known_answers() {
        // RFC 6070.
        let mut out = [0u8; 20];
        pbkdf2_sha1(b"password", b"salt", 2, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957")
        );
        pbkdf2_sha1(b"password", b"salt", 4096, &mut out);
        assert_eq!(
            out.to_vec(),
            hex("4b007901b765489abead49d926f721d065a429c1")
        );
        let mut out = [0u8; 25];
        pbkdf2_sha1(
            b"passwordPASSWORDpassword",
            b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
            4096,
            &mut out,
        );
        assert_eq!(
            out.to_vec(),
            hex("3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038")
        );
    }

    #[test]
    fn aes_key_wrap_known_answers() {
        // RFC 3394, 4.1 (128-bit KEK, 128-bit key) and 4.6 (256-bit KEK, 256-bit key).
        let cases = [
            (
                "000102030405060708090A0B0C0D0E0F",
                "00112233445566778899AABBCCDDEEFF",
                "1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5",
            ),
            (
                "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F",
                "00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F",
                "28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21",
            ),
        ];
        for (kek, key, wrapped) in cases {
            let (kek, key, wrapped) = (hex(kek), hex(key), hex(wrapped));
            let mut bytes = [0u8; 32];
            bytes[..kek.len()].copy_from_slice(&kek);
            let kek = Kek {
                bytes,
                len: kek.len(),
            };
            let mut out = vec![0; key.len() + 8];
            kek.wrap(&key, &mut out).unwrap();
            assert_eq!(out, wrapped);
            let mut back = vec![0; key.len()];
            assert_eq!(kek.unwrap(&wrapped, &mut back).unwrap(), &key[..]);
            let mut tampered = wrapped.clone();
            tampered[3] ^= 1;
            assert_eq!(kek.unwrap(&tampered, &mut back), Err(KmError::BadSecret));
        }
    }

    #[test]
    fn keying_material_round_trips_and_refuses_the_wrong_passphrase() {
        let salt = [7u8; SALT_LEN];
        for len in [16, 24, 32] {
            let (even, odd) = (vec![1u8; len], vec![2u8; len]);
            let km = KeyMaterial::seal(b"a passphrase", salt, Some(&even), Some(&odd)).unwrap();
            let mut bytes = Vec::new();
            km.encode(&mut bytes);
            assert_eq!(bytes.len(), 16 + 16 + 8 + 2 * len);
            assert_eq!(&bytes[..4], &[0x12, 0x20, 0x29, 3]);
            let back = KeyMaterial::parse(&bytes).unwrap();
            assert_eq!(back, km);
            let keys = back.open(b"a passphrase").unwrap();
            // Each key decrypts what it encrypted; the two differ.
            let mut a = *b"0123456789abcdef0123";
            keys.crypt(Parity::Even, Seq::new(5), &mut a);
            let mut b = *b"0123456789abcdef0123";
            keys.crypt(Parity::Odd, Seq::new(5), &mut b);
            assert_ne!(a, b);
            keys.crypt(Parity::Even, Seq::new(5), &mut a);
            assert_eq!(&a, b"0123456789abcdef0123");
            assert!(matches!(
                back.open(b"another passphrase"),
                Err(KmError::BadSecret)
            ));
        }
        assert!(KeyMaterial::parse(&[0x12, 0x20, 0x29]).is_err());
    }

    /// The keystream as libsrt builds it, from the module's drawing, block by block with
    /// a plain AES block cipher: a second implementation to hold `Sek::crypt` against.
    #[test]
    fn the_keystream_is_aes_of_the_salted_sequence_counter() {
        use aes::cipher::BlockCipherEncrypt;
        let key = hex("000102030405060708090a0b0c0d0e0f");
        let salt: [u8; 16] = hex("f0e1d2c3b4a5968778695a4b3c2d1e0f").try_into().unwrap();
        let seq = Seq::new(0x1234_5678);
        let mut payload = vec![0u8; 1316];
        Sek::new(&key).unwrap().crypt(&salt, seq, &mut payload);
        let aes = Aes128::new_from_slice(&key).unwrap();
        for (i, chunk) in payload.chunks(16).enumerate() {
            let mut block = [0u8; 16];
            block[10..14].copy_from_slice(&0x1234_5678u32.to_be_bytes());
            block[14..16].copy_from_slice(&(i as u16).to_be_bytes());
            for (b, s) in block[..14].iter_mut().zip(&salt) {
                *b ^= s;
            }
            let mut block = block.into();
            aes.encrypt_block(&mut block);
            assert_eq!(chunk, &block[..chunk.len()], "block {i}");
        }
    }

    /// A conclusion and a data packet captured from srt-live-transmit 1.5.1 with a known
    /// passphrase (testdata/README.md): the key unwraps and the payload decrypts to what
    /// was sent; another passphrase is refused as libsrt's BADSECRET.
    #[test]
    fn a_packet_from_srt_live_transmit_decrypts_with_its_passphrase() {
        use crate::srt::handshake::{parse_extensions, BODY_LEN};
        use crate::srt::packet::Packet;
        let conclusion = include_bytes!("testdata/slt-aes128-conclusion.bin");
        let data = include_bytes!("testdata/slt-aes128-data.bin");
        let Ok(Packet::Control(c)) = Packet::parse(conclusion) else {
            panic!("a control packet")
        };
        let exts = parse_extensions(&c.body[BODY_LEN..]).unwrap();
        let km = KeyMaterial::parse(&exts.kmreq.expect("KMREQ")).unwrap();
        assert_eq!((km.flags, km.key_len), (1, 16));
        let keys = km.open(b"stsync-fixture-pass").unwrap();
        let Ok(Packet::Data(d)) = Packet::parse(data) else {
            panic!("a data packet")
        };
        let parity = Parity::of_msg(d.msg).expect("encrypted");
        assert_eq!(parity, Parity::Even);
        let mut payload = d.payload.to_vec();
        assert!(keys.crypt(parity, d.seq, &mut payload));
        let sent: Vec<u8> = (0..payload.len())
            .map(|i| ((i * 7 + 3) % 256) as u8)
            .collect();
        assert_eq!(payload, sent);
        // Our encryption of that plaintext is the capture's ciphertext.
        keys.crypt(parity, d.seq, &mut payload);
        assert_eq!(payload, d.payload);
        assert_eq!(
            km.open(b"stsync-fixture-pasS").err(),
            Some(KmError::BadSecret)
        );
    }
}
