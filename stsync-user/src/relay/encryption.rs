//! An encrypting connection's keys at run time. A publisher's key refreshes are followed
//! (SRT_CMD_KMREQ, answered with KMRSP). A viewer's key is rotated on the relay's own
//! schedule, as libsrt's sender does (`hcryptCtx_Tx_ManageKM`): the next key is announced
//! `pre_announce` packets before the switch, the old one retired `pre_announce` packets
//! after it, each announcement sent until the viewer answers. Every packet a viewer gets
//! remembers its key by its sequence number, so a retransmission is the same ciphertext.

use super::budget::TokenBucket;
use super::outbox::Outbox;
use super::stats::CloseReason;
use super::{Conn, Relay, KEY_REFRESHES_PER_SEC, KEY_REFRESH_BURST, SRT_CMD_KMREQ, SRT_CMD_KMRSP};
use crate::srt::crypto::{Kek, KeyMaterial, KmError, Parity, RawKeys, StreamKeys};
use crate::srt::packet::be_words;
use crate::srt::seq::Seq;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// When the relay changes an encrypted viewer's key: libsrt's SRTO_KMREFRESHRATE and
/// SRTO_KMPREANNOUNCE, in packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySchedule {
    /// Packets under one key.
    pub refresh_rate: u32,
    /// The next key is announced this many packets before the switch, and the old one
    /// kept this many after it (for retransmissions).
    pub pre_announce: u32,
}

impl Default for KeySchedule {
    /// libsrt's defaults.
    fn default() -> Self {
        KeySchedule {
            refresh_rate: 1 << 24,
            pre_announce: 1 << 12,
        }
    }
}

impl KeySchedule {
    /// libsrt's rule: 1 ≤ pre_announce ≤ (refresh_rate − 1) / 2, so the old key is retired
    /// before the next one is announced.
    pub fn check(&self) -> Result<(), String> {
        if self.pre_announce == 0 || self.pre_announce > (self.refresh_rate.max(1) - 1) / 2 {
            return Err(format!(
                "kmpreannounce must be 1 to (kmrefreshrate - 1) / 2, got {} with kmrefreshrate {}",
                self.pre_announce, self.refresh_rate
            ));
        }
        Ok(())
    }
}

/// An announcement resent until the viewer answers, at most this many times (libsrt's
/// SRT_MAX_KMRETRY).
const ANNOUNCE_TRIES: u8 = 10;
/// Resent after 1.5 RTT, but not sooner than this.
const ANNOUNCE_RETRY_FLOOR: Duration = Duration::from_millis(20);

/// An encrypting connection's keys and what it takes to change them.
pub(super) struct Encryption {
    pub keys: StreamKeys,
    /// The passphrase it was admitted with; a refresh with a new salt needs it.
    passphrase: String,
    /// Derived from the passphrase and the keys' salt.
    kek: Kek,
    /// Key refreshes a publisher may still send (a new salt costs a PBKDF2).
    refreshes: TokenBucket,
    /// A viewer's: the keys as bytes (announcements carry them) and where they are in
    /// their rotation.
    rotation: Option<Box<Rotation>>,
}

struct Rotation {
    raw: RawKeys,
    /// The key packets go under now.
    active: Parity,
    /// Packets sent under it.
    sent: u32,
    /// The first packet under it (`None`: every packet so far).
    active_from: Option<Seq>,
    /// While the previous key is kept: the first packet under it.
    previous_from: Option<Option<Seq>>,
    /// The next key is announced (this period).
    announced: bool,
    pending: Option<Announcement>,
}

/// Keying material the viewer has not answered yet.
struct Announcement {
    words: Vec<u32>,
    tries_left: u8,
    sent_at: Option<Instant>,
}

/// What a viewer's KMRSP says.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// It took the keys last sent.
    Taken,
    /// An answer to something already superseded, or repeated.
    Stale,
    /// It could not take them (libsrt's KM state: 3 no secret, 4 bad secret).
    Refused(u32),
}

impl Encryption {
    /// A connection admitted with `km` opened under `kek`; a viewer's keys will rotate.
    pub fn new(
        km: &KeyMaterial,
        raw: RawKeys,
        kek: Kek,
        passphrase: String,
        viewer: bool,
        now: Instant,
    ) -> Result<Encryption, KmError> {
        let keys = StreamKeys::new(km.salt, &raw)?;
        let rotation = viewer.then(|| {
            Box::new(Rotation {
                active: keys.send_parity(),
                raw,
                sent: 0,
                active_from: None,
                previous_from: None,
                announced: false,
                pending: None,
            })
        });
        Ok(Encryption {
            keys,
            passphrase,
            kek,
            refreshes: TokenBucket::new(KEY_REFRESH_BURST, now),
            rotation,
        })
    }

    /// The key a new packet `seq` to this viewer goes under, after the schedule's step:
    /// switch, announce the next key or retire the old one (then `due` has a message).
    pub fn next_packet(&mut self, seq: Seq, schedule: KeySchedule) -> Parity {
        let Some(r) = self.rotation.as_deref_mut() else {
            return self.keys.send_parity();
        };
        let n = r.sent;
        // Only to a key the viewer was sent (so `crypt` never lacks the packet's key).
        let announce = if n >= schedule.refresh_rate && self.keys.key(r.active.other()).is_some() {
            r.active = r.active.other();
            r.previous_from = Some(r.active_from);
            r.active_from = Some(seq);
            r.sent = 0;
            r.announced = false;
            false
        } else if n >= schedule.refresh_rate - schedule.pre_announce && !r.announced {
            // The other slot's key was retired `pre_announce` packets after the last switch.
            let next = r.active.other();
            r.raw.generate(next);
            r.announced = true;
            true
        } else if r.previous_from.is_some() && n >= schedule.pre_announce {
            r.raw.set(r.active.other(), None).expect("removing");
            r.previous_from = None;
            true
        } else {
            false
        };
        if announce {
            match StreamKeys::new(self.keys.salt, &r.raw).and_then(|k| {
                Ok((
                    k,
                    KeyMaterial::seal_with(&self.kek, self.keys.salt, &r.raw)?,
                ))
            }) {
                Ok((keys, km)) => {
                    self.keys = keys;
                    let mut bytes = Vec::with_capacity(crate::srt::crypto::KM_MAX_LEN);
                    km.encode(&mut bytes);
                    r.pending = Some(Announcement {
                        words: be_words(&bytes).collect(),
                        tries_left: ANNOUNCE_TRIES,
                        sent_at: None,
                    });
                }
                // Cannot happen (the KEK was derived for these keys); the viewer then stays
                // on its key rather than be switched to one it was never sent.
                Err(e) => warn!("viewer's next key not sealed: {e}"),
            }
        }
        r.sent = r.sent.saturating_add(1);
        r.active
    }

    /// Encrypts a viewer's packet `seq` under `parity` (from `next_packet` or `parity_of`,
    /// so a key the viewer holds).
    pub fn seal(&self, parity: Parity, seq: Seq, payload: &mut [u8]) {
        let sealed = self.keys.crypt(parity, seq, payload);
        debug_assert!(sealed, "a viewer is only sent under a key it holds");
    }

    /// The key packet `seq` went under when it was first sent, if it is still kept.
    pub fn parity_of(&self, seq: Seq) -> Option<Parity> {
        let Some(r) = self.rotation.as_deref() else {
            return Some(self.keys.send_parity());
        };
        let since = |from: Option<Seq>| from.is_none_or(|f| !seq.lt(f));
        if since(r.active_from) {
            Some(r.active)
        } else {
            r.previous_from
                .filter(|&f| since(f))
                .map(|_| r.active.other())
        }
    }

    /// The announcement to send now: new, or unanswered for 1.5 RTT (at most
    /// `ANNOUNCE_TRIES` times; then the viewer is left to fail on the next key).
    pub fn due(&mut self, now: Instant, rtt: Duration) -> Option<&[u32]> {
        let r = self.rotation.as_deref_mut()?;
        match r.pending.as_ref()? {
            a if a
                .sent_at
                .is_some_and(|t| now < t + (rtt * 3 / 2).max(ANNOUNCE_RETRY_FLOOR)) =>
            {
                return None
            }
            a if a.tries_left == 0 => {
                warn!("viewer never answered its new keys");
                r.pending = None;
                return None;
            }
            _ => {}
        }
        let a = r.pending.as_mut()?;
        a.tries_left -= 1;
        a.sent_at = Some(now);
        Some(&a.words)
    }

    /// Whether an announcement awaits the viewer's answer.
    pub fn announcing(&self) -> bool {
        self.rotation.as_ref().is_some_and(|r| r.pending.is_some())
    }

    pub fn on_answer(&mut self, body: &[u32]) -> Answer {
        let Some(r) = self.rotation.as_deref_mut() else {
            return Answer::Stale;
        };
        match (&r.pending, body) {
            (_, &[state]) => Answer::Refused(state),
            (Some(a), _) if a.words == body => {
                r.pending = None;
                Answer::Taken
            }
            _ => Answer::Stale,
        }
    }

    /// A publisher's refresh: its new keys replace those of their parity. The kept KEK
    /// opens them unless the salt changed.
    fn refresh(&mut self, km: &KeyMaterial) -> Result<(), KmError> {
        if km.salt != self.keys.salt || km.key_len != self.keys.key_len() {
            self.kek = Kek::derive(self.passphrase.as_bytes(), &km.salt, km.key_len)?;
        }
        let new = StreamKeys::new(km.salt, &km.unwrap(&self.kek)?)?;
        self.keys.refresh(new);
        Ok(())
    }
}

impl Relay {
    /// A publisher's new keys (the refresh libsrt sends before it switches KK): opened with
    /// what its connection was admitted with, and answered with KMRSP, the same bytes, as
    /// libsrt does.
    pub(super) fn on_key_refresh(&mut self, now: Instant, id: u32, body: &[u8]) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        let Some(enc) = conn.encryption.as_deref_mut() else {
            return self.drops.drop_packet("unexpected_control");
        };
        let (rate, burst) = (KEY_REFRESHES_PER_SEC, KEY_REFRESH_BURST);
        if !enc.refreshes.try_spend(now, rate, burst, 1) {
            // Unanswered: libsrt asks again, and a publisher that floods is not served.
            return self.drops.drop_packet("key_refresh_over_budget");
        }
        match KeyMaterial::parse(body).and_then(|km| enc.refresh(&km)) {
            Ok(()) => {
                debug!(conn = id, "publisher's keys refreshed");
                let words: Vec<u32> = be_words(body).collect();
                self.send_ext(now, id, SRT_CMD_KMRSP, &words);
            }
            Err(e) => {
                warn!(conn = id, "publisher's key refresh refused: {e}");
                self.drops.drop_packet("bad_key_refresh");
            }
        }
    }

    /// A viewer's answer to keys the relay announced.
    pub(super) fn on_key_answer(&mut self, now: Instant, id: u32, body: &[u8]) {
        let conn = self.conns.get_mut(&id).expect("caller checked");
        let Some(enc) = conn.encryption.as_deref_mut() else {
            return self.drops.drop_packet("unexpected_control");
        };
        let words: Vec<u32> = be_words(body).collect();
        match enc.on_answer(&words) {
            Answer::Taken => debug!(conn = id, "viewer took its new keys"),
            Answer::Stale => {}
            Answer::Refused(state) => {
                // It cannot decrypt what comes next: cut off rather than served garbage.
                warn!(conn = id, state, "viewer refused its new keys");
                self.drops.drop_packet("key_refresh_refused");
                self.close(now, id, CloseReason::ProtocolViolation);
            }
        }
    }

    /// Sends viewer `id` its pending key announcement, if one is due.
    pub(super) fn announce_keys(&mut self, now: Instant, id: u32) {
        if let Some(conn) = self.conns.get_mut(&id) {
            send_announcement(&mut self.out, conn, now);
        }
    }
}

/// Queues `conn`'s key announcement (SRT_CMD_KMREQ) if one is due.
pub(super) fn send_announcement(out: &mut Outbox, conn: &mut Conn, now: Instant) {
    // On every packet to every viewer: nothing is computed for a clear one.
    let Some(e) = conn.encryption.as_deref_mut() else {
        return;
    };
    let Some(words) = e.due(now, Duration::from_micros(conn.stats.rtt_us)) else {
        return;
    };
    let ts = now.saturating_duration_since(conn.start).as_micros() as u32;
    let len = out.push_control_ext(conn.peer, SRT_CMD_KMREQ, ts, conn.peer_id, words);
    conn.last_sent = now;
    conn.stats.sent_control(len);
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASS: &[u8] = b"the viewer's passphrase";

    fn viewer(len: usize, now: Instant) -> Encryption {
        let salt = [9u8; 16];
        let mut raw = RawKeys::new(len).unwrap();
        raw.generate(Parity::Even);
        let kek = Kek::derive(PASS, &salt, len).unwrap();
        let km = KeyMaterial::seal_with(&kek, salt, &raw).unwrap();
        Encryption::new(&km, raw, kek, "unused".into(), true, now).unwrap()
    }

    /// What libsrt's receiver would hold after taking announcement `words`.
    fn open(words: &[u32]) -> (u8, StreamKeys) {
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
        let km = KeyMaterial::parse(&bytes).unwrap();
        (km.flags, km.open(PASS).unwrap())
    }

    /// Rotation as libsrt's sender does it, at refresh 10 / pre-announce 3: the next key
    /// announced after 7 packets (both keys), the switch after 10, the old key retired 3
    /// later (only the new key); each packet's key found again by its number, until retired.
    #[test]
    fn keys_rotate_on_schedule_and_packets_keep_theirs() {
        let now = Instant::now();
        let sched = KeySchedule {
            refresh_rate: 10,
            pre_announce: 3,
        };
        sched.check().unwrap();
        let mut e = viewer(16, now);
        let mut parities = Vec::new();
        let mut announced = Vec::new();
        for i in 0..30u32 {
            let p = e.next_packet(Seq::new(100 + i), sched);
            parities.push(p);
            if let Some(w) = e.due(now, Duration::ZERO) {
                let w = w.to_vec();
                announced.push((i, open(&w).0));
                assert_eq!(e.on_answer(&w), Answer::Taken);
            }
            // Every packet sent so far is found under its key, unless retired.
            for (j, &pj) in parities.iter().enumerate() {
                if let Some(found) = e.parity_of(Seq::new(100 + j as u32)) {
                    assert_eq!(found, pj, "packet {j} after packet {i}");
                }
            }
        }
        use Parity::*;
        let want: Vec<Parity> = [[Even; 10], [Odd; 10], [Even; 10]].concat();
        assert_eq!(parities, want);
        // Announced with both keys (flags 3) at packet 7 and 20; retired (one key) at 13.
        assert_eq!(announced, [(7, 3), (13, 2), (17, 3), (23, 1), (27, 3)]);
        // Packet 15 (odd) is still found; packet 5 (even, its key since replaced) is not.
        assert_eq!(e.parity_of(Seq::new(115)), None);
        assert_eq!(e.parity_of(Seq::new(125)), Some(Even));
    }

    /// A new key encrypts and the announced material gives the viewer the same key.
    #[test]
    fn an_announced_key_decrypts_what_it_encrypted() {
        let now = Instant::now();
        let sched = KeySchedule {
            refresh_rate: 4,
            pre_announce: 1,
        };
        for len in [16, 24, 32] {
            let mut e = viewer(len, now);
            let mut last = None;
            for i in 0..5 {
                let p = e.next_packet(Seq::new(i), sched);
                if let Some(w) = e.due(now, Duration::ZERO) {
                    last = Some(w.to_vec());
                }
                if i == 4 {
                    assert_eq!(p, Parity::Odd);
                    let mut data = *b"some payload bytes";
                    assert!(e.keys.crypt(p, Seq::new(i), &mut data));
                    let (_, theirs) = open(last.as_ref().unwrap());
                    assert!(theirs.crypt(p, Seq::new(i), &mut data));
                    assert_eq!(&data, b"some payload bytes");
                }
            }
        }
    }

    /// An unanswered announcement is resent after 1.5 RTT (20 ms at least), ten times at
    /// most; an answer stops it; a one-word answer is a refusal.
    #[test]
    fn announcements_are_resent_until_answered_and_bounded() {
        let t0 = Instant::now();
        let sched = KeySchedule {
            refresh_rate: 4,
            pre_announce: 1,
        };
        let mut e = viewer(16, t0);
        for i in 0..4 {
            e.next_packet(Seq::new(i), sched);
        }
        let rtt = Duration::from_millis(40);
        let first = e.due(t0, rtt).expect("new").to_vec();
        assert!(e.due(t0 + Duration::from_millis(59), rtt).is_none());
        let mut sends = 1;
        let mut t = t0;
        while let Some(w) = e.due(t + Duration::from_millis(60), rtt) {
            assert_eq!(w, &first[..]);
            t += Duration::from_millis(60);
            sends += 1;
        }
        assert_eq!(sends, ANNOUNCE_TRIES);
        assert_eq!(e.on_answer(&first), Answer::Stale, "given up");
        assert_eq!(e.on_answer(&[4]), Answer::Refused(4));
    }

    #[test]
    fn schedules_libsrt_refuses_are_refused() {
        for (r, p) in [(10, 0), (10, 5), (1, 1), (0, 0)] {
            let s = KeySchedule {
                refresh_rate: r,
                pre_announce: p,
            };
            assert!(s.check().is_err(), "{s:?}");
        }
        assert!(KeySchedule::default().check().is_ok());
    }
}
