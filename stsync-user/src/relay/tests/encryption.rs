//! Encryption: which callers a stream takes (libsrt's rejection codes), an encrypted
//! publisher's packets decrypted once and each encrypted viewer's under its own key,
//! retransmissions that repeat their original's ciphertext, and a publisher's key refresh.

use super::*;
use crate::srt::crypto::{KeyMaterial, Parity};
use encryption::KeySchedule;

const PUBLISH: &str = "publisher-secret-1";
const VIEW: &str = "viewer-secret-22";

/// What viewer `v` got, decrypted with its own keys when the packet says it is encrypted:
/// (sequence number, plaintext, the packet's key parity).
fn opened(v: &Caller, got: &[Got]) -> Vec<(u32, Vec<u8>, Option<Parity>)> {
    got.iter()
        .filter_map(|g| match g {
            Got::Data {
                seq, msg, payload, ..
            } => {
                let parity = Parity::of_msg(*msg);
                let mut p = payload.clone();
                if let Some(parity) = parity {
                    assert!(v.keys().crypt(parity, *seq, &mut p), "a key the viewer has");
                }
                Some((seq.get(), p, parity))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_stream_takes_only_callers_that_encrypt_as_it_says() {
    let mut w = World::with_passphrases(Some(PUBLISH), None);
    // Required and not offered, offered and not set: REJ_UNSECURE.
    let key = sid(&mut w, "publish");
    assert_eq!(Caller::new(2000, 0).connect(&mut w, &key), Err(1011));
    let key = sid(&mut w, "request");
    let mut v = Caller::encrypting(1001, 0, VIEW, 16);
    assert_eq!(v.connect(&mut w, &key), Err(1011));
    // The wrong passphrase: REJ_BADSECRET, and the session key is not spent by it.
    let key = sid(&mut w, "publish");
    let mut wrong = Caller::encrypting(2001, 0, "not-the-right-one", 16);
    assert_eq!(wrong.connect(&mut w, &key), Err(1010));
    let mut p = Caller::encrypting(2001, 0, PUBLISH, 32);
    assert_eq!(p.connect(&mut w, &key), Ok(()));
    assert_eq!(w.relay.stats().drops.rejections.get(&1010), Some(&1));
    assert_eq!(w.relay.stats().drops.rejections.get(&1011), Some(&2));
    // Without a valid session key the passphrase is not even tried (no key derivation for
    // whoever has no key): REJ_X_UNAUTHORIZED, and a spent key is REJ_X_FORBIDDEN.
    let mut stranger = Caller::encrypting(2002, 0, "not-the-right-one", 16);
    assert_eq!(
        stranger.connect(&mut w, "#!::r=1,s=0123456789abcdef,m=publish"),
        Err(2401)
    );
    assert_eq!(stranger.connect(&mut w, &key), Err(2403));
}

#[test]
fn the_answer_carries_the_keying_material_back() {
    let mut w = World::with_passphrases(None, Some(VIEW));
    let v = Caller::encrypting(1001, 0, VIEW, 24);
    let key = sid(&mut w, "request");
    // As `connect`, keeping the answer.
    let mut b = Vec::new();
    write_control(
        &mut b,
        ctrl::HANDSHAKE,
        0,
        0,
        0,
        &v.handshake(hs_type::INDUCTION, 4, 0).words(),
    );
    w.send(v.addr, &b);
    let ind = ctrl(&w.take(v.addr), ctrl::HANDSHAKE);
    let cookie = Handshake::parse(&ind[0].1).unwrap().cookie;
    let concl = v.conclusion(cookie, &key);
    w.send(v.addr, &concl);
    let ans = ctrl(&w.take(v.addr), ctrl::HANDSHAKE);
    let hs = Handshake::parse(&ans[0].1).unwrap();
    assert_eq!(hs.hs_type, hs_type::CONCLUSION);
    assert_eq!(hs.ext_field & crate::srt::handshake::ext_flag::KMREQ, 2);
    // After HSRSP (4 words), KMRSP: type 4, then the caller's own keying material.
    let exts = &ans[0].1[crate::srt::handshake::BODY_LEN + 16..];
    let km = &v.km.as_ref().unwrap().0;
    assert_eq!(
        exts[..4],
        ext_header(ext::KMRSP, km.len() / 4).to_be_bytes()
    );
    assert_eq!(&exts[4..4 + km.len()], km.as_slice());
}

#[test]
fn an_encrypted_publisher_reaches_clear_and_encrypted_viewers_each_under_their_own_key() {
    // Clear viewers of an encrypted publisher.
    let mut w = World::with_passphrases(Some(PUBLISH), None);
    let mut clear = Caller::new(1001, 0);
    let mut p = Caller::encrypting(2000, 0, PUBLISH, 16);
    clear.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..10u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[i as u8; 100]);
    }
    let got = w.take(clear.addr);
    let data: Vec<_> = got
        .iter()
        .filter_map(|g| match g {
            Got::Data { msg, payload, .. } => Some((Parity::of_msg(*msg), payload.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(data.len(), 10);
    for (i, (parity, payload)) in data.iter().enumerate() {
        assert_eq!(*parity, None, "clear: no KK bits");
        assert_eq!(
            payload,
            &vec![i as u8; 100],
            "decrypted once, sent in clear"
        );
    }
    // Encrypted viewers of an encrypted publisher: each its own key, so two viewers of one
    // packet get two ciphertexts.
    let mut w = World::with_passphrases(Some(PUBLISH), Some(VIEW));
    let mut a = Caller::encrypting(1001, 0, VIEW, 16);
    let mut b = Caller::encrypting(1002, 0, VIEW, 32);
    let mut p = Caller::encrypting(2000, 0, PUBLISH, 24);
    a.join(&mut w, "request");
    b.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..10u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[i as u8; 1316]);
    }
    let (got_a, got_b) = (w.take(a.addr), w.take(b.addr));
    for (v, got) in [(&a, &got_a), (&b, &got_b)] {
        let o = opened(v, got);
        assert_eq!(o.len(), 10);
        for (i, (_, plain, parity)) in o.iter().enumerate() {
            assert_eq!(*parity, Some(Parity::Even));
            assert_eq!(plain, &vec![i as u8; 1316]);
        }
    }
    assert_ne!(
        data_of(&got_a)[0],
        data_of(&got_b)[0],
        "one ciphertext per viewer"
    );
    // A clear publisher with encrypted viewers.
    let mut w = World::with_passphrases(None, Some(VIEW));
    let mut v = Caller::encrypting(1001, 7, VIEW, 16);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    p.data(&mut w, Seq::new(0), 0, b"clear in, encrypted out");
    let o = opened(&v, &w.take(v.addr));
    assert_eq!(o[0].1, b"clear in, encrypted out");
}

fn data_of(got: &[Got]) -> Vec<Vec<u8>> {
    data(got).into_iter().map(|(_, p)| p).collect()
}

#[test]
fn a_retransmission_repeats_its_originals_ciphertext() {
    let mut w = World::with_passphrases(Some(PUBLISH), Some(VIEW));
    let mut v = Caller::encrypting(1001, 0, VIEW, 16);
    let mut p = Caller::encrypting(2000, 0, PUBLISH, 16);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..20u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[i as u8; 500]);
    }
    let first = w.take(v.addr);
    v.nak(&mut w, 12, 12);
    let again = w.take(v.addr);
    let find = |got: &[Got]| {
        got.iter().find_map(|g| match g {
            Got::Data {
                seq, msg, payload, ..
            } if seq.get() == 12 => Some((*msg & !MSG_REXMIT_FLAG, payload.clone())),
            _ => None,
        })
    };
    let (orig, resent) = (find(&first).unwrap(), find(&again).unwrap());
    assert_eq!(orig, resent, "same KK bits, same ciphertext");
    assert_eq!(opened(&v, &again)[0].1, vec![12u8; 500]);
}

#[test]
fn a_publishers_key_refresh_is_taken_and_answered() {
    let mut w = World::with_passphrases(Some(PUBLISH), None);
    let mut v = Caller::new(1001, 0);
    let mut p = Caller::encrypting(2000, 0, PUBLISH, 16);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    p.data(&mut w, Seq::new(0), 0, b"even");
    // libsrt announces both keys (KF 3) before it switches to the odd one.
    let salt = p.keys().salt;
    let (even, odd) = (vec![1u8; 16], vec![2u8; 16]);
    let km = KeyMaterial::seal(PUBLISH.as_bytes(), salt, Some(&even), Some(&odd)).unwrap();
    let bytes = p.refresh(&mut w, &km);
    // KMRSP: the same bytes back, subtype 4.
    let rsp = w
        .take(p.addr)
        .into_iter()
        .find_map(|g| match g {
            Got::Ctrl {
                typ: ctrl::USER_DEFINED,
                body,
                ..
            } => Some(body),
            _ => None,
        })
        .expect("KMRSP");
    assert_eq!(rsp, bytes);
    // A packet under the new odd key decrypts.
    let keys = km.open(PUBLISH.as_bytes()).unwrap();
    let mut payload = b"odd".to_vec();
    keys.crypt(Parity::Odd, Seq::new(1), &mut payload);
    let mut b = Vec::new();
    write_data(
        &mut b,
        Seq::new(1),
        0xC000_0001 | Parity::Odd.msg_bits(),
        1000,
        p.relay_id,
        &payload,
    );
    w.send(p.addr, &b);
    let got: Vec<Vec<u8>> = data_of(&w.take(v.addr));
    assert_eq!(got, vec![b"even".to_vec(), b"odd".to_vec()]);
    // A refresh under another passphrase is refused and the keys stay.
    let bad = KeyMaterial::seal(b"someone-elses-key", salt, Some(&even), None).unwrap();
    p.refresh(&mut w, &bad);
    assert_eq!(w.dropped("bad_key_refresh"), 1);
}

impl Caller {
    /// Sends `km` as a key refresh (SRT_CMD_KMREQ); returns its bytes.
    fn refresh(&self, w: &mut World, km: &KeyMaterial) -> Vec<u8> {
        let mut bytes = Vec::new();
        km.encode(&mut bytes);
        self.send_ext(w, SRT_CMD_KMREQ, &bytes);
        bytes
    }

    /// Sends an extended control message (type 0x7FFF) of `subtype` carrying `body`.
    fn send_ext(&self, w: &mut World, subtype: u16, body: &[u8]) {
        let words: Vec<u32> = be_words(body).collect();
        let mut b = Vec::new();
        write_control(&mut b, ctrl::USER_DEFINED, 0, 0, self.relay_id, &words);
        b[2..4].copy_from_slice(&subtype.to_be_bytes());
        w.send(self.addr, &b);
    }
}

/// A publisher that floods key refreshes (each a PBKDF2 for the relay) gets a burst of 8
/// answered, then 2 a second; the rest are dropped unanswered and counted.
#[test]
fn a_publisher_flooding_key_refreshes_is_served_within_its_budget() {
    let mut w = World::with_passphrases(Some(PUBLISH), None);
    let mut p = Caller::encrypting(2000, 0, PUBLISH, 16);
    p.join(&mut w, "publish");
    let salt = p.keys().salt;
    let km = KeyMaterial::seal(PUBLISH.as_bytes(), salt, Some(&[3u8; 16]), None).unwrap();
    let answers = |w: &mut World| {
        w.take(p.addr)
            .iter()
            .filter(|g| {
                matches!(
                    g,
                    Got::Ctrl {
                        typ: ctrl::USER_DEFINED,
                        ..
                    }
                )
            })
            .count()
    };
    // One second: 100 refreshes.
    for _ in 0..100 {
        p.refresh(&mut w, &km);
        w.advance(Duration::from_millis(10));
    }
    let answered = answers(&mut w);
    assert!(
        (8..=11).contains(&answered),
        "{answered} refreshes answered in 1 s"
    );
    assert_eq!(w.dropped("key_refresh_over_budget"), 100 - answered as u64);
}

/// A key minted with a passphrase of its own (`POST .../sessions {"encrypt": true}`) asks
/// its connection for that one, not the stream's; another key's passphrase is refused as
/// a wrong one.
#[test]
fn a_session_passphrase_is_asked_of_its_own_connection_only() {
    let mut w = World::with_passphrases(None, Some(VIEW));
    let mint = |w: &mut World, passphrase: &str| {
        let cmd = Command::MintSession {
            resource: "1".into(),
            key: rand::random(),
            passphrase: Some(passphrase.into()),
            mode: None,
        };
        match w.relay.handle_command(w.now, cmd) {
            Ok(Reply::Session(k)) => format!("#!::r=1,s={},m=request", k.key),
            other => panic!("{other:?}"),
        }
    };
    let (one, two) = (
        mint(&mut w, "session-one-secret"),
        mint(&mut w, "session-two-secret"),
    );
    let mut a = Caller::encrypting(1001, 0, VIEW, 16);
    assert_eq!(
        a.connect(&mut w, &one),
        Err(1010),
        "the stream's passphrase"
    );
    let mut a = Caller::encrypting(1001, 0, "session-two-secret", 16);
    assert_eq!(a.connect(&mut w, &one), Err(1010), "another session's");
    let mut a = Caller::encrypting(1001, 0, "session-one-secret", 16);
    assert_eq!(a.connect(&mut w, &one), Ok(()));
    assert_eq!(Caller::new(1002, 0).connect(&mut w, &two), Err(1011));
    let mut b = Caller::encrypting(1002, 0, "session-two-secret", 32);
    assert_eq!(b.connect(&mut w, &two), Ok(()));
    // A plain key still asks for the stream's.
    let mut c = Caller::encrypting(1003, 0, VIEW, 24);
    c.join(&mut w, "request");
    // Each viewer gets the stream under its own key.
    let mut p = Caller::new(2000, 0);
    p.join(&mut w, "publish");
    p.data(&mut w, Seq::new(0), 0, b"to each their own");
    for v in [&a, &b, &c] {
        assert_eq!(opened(v, &w.take(v.addr))[0].1, b"to each their own");
    }
    let cmd = Command::MintSession {
        resource: "1".into(),
        key: 1,
        passphrase: Some("short".into()),
        mode: None,
    };
    assert_eq!(
        w.relay.handle_command(w.now, cmd),
        Err(CommandError::Passphrase)
    );
}

/// A publisher admitted with its key's own passphrase refreshes its keys under that one.
#[test]
fn a_session_passphrase_publisher_refreshes_under_its_own_passphrase() {
    let mut w = World::new();
    let cmd = Command::MintSession {
        resource: "1".into(),
        key: 77,
        passphrase: Some("publisher-session-pass".into()),
        mode: None,
    };
    let Ok(Reply::Session(Minted { key: k, .. })) = w.relay.handle_command(w.now, cmd) else {
        panic!("minted")
    };
    let mut p = Caller::encrypting(2000, 0, "publisher-session-pass", 16);
    assert_eq!(
        p.connect(&mut w, &format!("#!::r=1,s={k},m=publish")),
        Ok(())
    );
    let salt = p.keys().salt;
    let km = KeyMaterial::seal(b"publisher-session-pass", salt, Some(&[5u8; 16]), None).unwrap();
    p.refresh(&mut w, &km);
    let answered = w.take(p.addr).iter().any(|g| {
        matches!(
            g,
            Got::Ctrl {
                typ: ctrl::USER_DEFINED,
                ..
            }
        )
    });
    assert!(answered, "KMRSP");
    assert_eq!(
        w.dropped("bad_key_refresh") + w.dropped("unexpected_control"),
        0
    );
}

/// A stream with `pbkeylen` set takes keys of that length only (REJ_UNSECURE otherwise),
/// before the session key is spent.
#[test]
fn a_stream_that_sets_a_key_length_takes_no_other() {
    let mut w = World::with_passphrases(None, Some(VIEW));
    w.relay.streams[0].pbkeylen = Some(32);
    let key = sid(&mut w, "request");
    let mut short = Caller::encrypting(1001, 0, VIEW, 16);
    assert_eq!(short.connect(&mut w, &key), Err(1011));
    let mut long = Caller::encrypting(1002, 0, VIEW, 32);
    assert_eq!(long.connect(&mut w, &key), Ok(()));
}

impl Caller {
    /// Takes the keys the relay announced (SRT_CMD_KMREQ) in `got`, opened with
    /// `passphrase`, answering each with KMRSP as libsrt does; returns the KF flags of each.
    fn take_announcements(&mut self, w: &mut World, got: &[Got], passphrase: &str) -> Vec<u8> {
        let mut flags = Vec::new();
        for g in got {
            let Got::Ctrl {
                typ: ctrl::USER_DEFINED,
                subtype: SRT_CMD_KMREQ,
                body,
                ..
            } = g
            else {
                continue;
            };
            let km = KeyMaterial::parse(body).unwrap();
            flags.push(km.flags);
            let new = km
                .open(passphrase.as_bytes())
                .expect("the viewer's passphrase");
            self.km.as_mut().unwrap().1.refresh(new);
            self.send_ext(w, SRT_CMD_KMRSP, body);
        }
        flags
    }
}

/// The relay rotates an encrypted viewer's key on its own schedule (here every 10 packets,
/// announced 3 ahead): the viewer is told each next key before it is used and decrypts every
/// packet; a retransmission after a switch goes under its original's key with its
/// original's ciphertext; one whose key was since retired is dropped (DROPREQ), not sent
/// under a key the viewer no longer has.
#[test]
fn a_viewers_key_rotates_on_the_relays_schedule() {
    let mut w = World::with_passphrases(None, Some(VIEW));
    w.relay.cfg.key_schedule = KeySchedule {
        refresh_rate: 10,
        pre_announce: 3,
    };
    let mut v = Caller::encrypting(1001, 0, VIEW, 24);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    let mut parities = Vec::new();
    let mut announced = Vec::new();
    let mut originals = Vec::new();
    for i in 0..30u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[i as u8; 188]);
        let got = w.take(v.addr);
        for (seq, plain, parity) in opened(&v, &got) {
            assert_eq!(plain, vec![seq as u8; 188], "packet {seq} decrypts");
            parities.push(parity.unwrap());
        }
        originals.extend(got.iter().cloned());
        announced.extend(v.take_announcements(&mut w, &got, VIEW));
        if i == 21 {
            // Packet 15 went under the odd key, which is kept until packet 23.
            v.nak(&mut w, 15, 15);
            let again = w.take(v.addr);
            let pick = |got: &[Got]| {
                got.iter().find_map(|g| match g {
                    Got::Data {
                        seq, msg, payload, ..
                    } if seq.get() == 15 => Some((*msg & !MSG_REXMIT_FLAG, payload.clone())),
                    _ => None,
                })
            };
            assert_eq!(pick(&again), pick(&originals), "same key, same ciphertext");
            assert_eq!(Parity::of_msg(pick(&again).unwrap().0), Some(Parity::Odd));
        }
    }
    use Parity::*;
    assert_eq!(parities, [[Even; 10], [Odd; 10], [Even; 10]].concat());
    // Both keys announced before each switch (KF 3), the old one retired after (KF 2, 1).
    assert_eq!(announced, [3, 2, 3, 1, 3]);
    // Packet 5's even key was replaced at packet 17: not resent, dropped.
    v.nak(&mut w, 5, 5);
    let got = w.take(v.addr);
    assert!(data(&got).is_empty(), "nothing resent under a retired key");
    assert_eq!(ctrl(&got, ctrl::DROPREQ).len(), 1);
}

/// A viewer that does not answer an announcement gets it again (after 1.5 RTT, 20 ms at
/// least, from the sweep while no data flows), ten times at most; one that refuses its new
/// keys is cut off.
#[test]
fn key_announcements_are_resent_while_unanswered_and_a_refusal_cuts_the_viewer_off() {
    let mut w = World::with_passphrases(None, Some(VIEW));
    w.relay.cfg.key_schedule = KeySchedule {
        refresh_rate: 10,
        pre_announce: 3,
    };
    let mut v = Caller::encrypting(1001, 0, VIEW, 16);
    let mut p = Caller::new(2000, 0);
    v.join(&mut w, "request");
    p.join(&mut w, "publish");
    for i in 0..8u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[1; 188]);
    }
    let kmreq = |got: &[Got]| {
        got.iter()
            .filter(|g| {
                matches!(
                    g,
                    Got::Ctrl {
                        typ: ctrl::USER_DEFINED,
                        subtype: SRT_CMD_KMREQ,
                        ..
                    }
                )
            })
            .count()
    };
    assert_eq!(kmreq(&w.take(v.addr)), 1, "announced at packet 7");
    let mut resent = 0;
    for _ in 0..30 {
        w.advance(Duration::from_millis(100));
        resent += kmreq(&w.take(v.addr));
        v.ack(&mut w, 8);
    }
    assert_eq!(resent, 9, "ten sends in all");
    // The next announcement (the retirement after the switch) refused: cut off.
    for i in 8..14u32 {
        p.data(&mut w, Seq::new(i), i * 1000, &[1; 188]);
    }
    assert_eq!(kmreq(&w.take(v.addr)), 1);
    // KMRSP with one word: libsrt's KM state, 4 = bad secret.
    v.send_ext(&mut w, SRT_CMD_KMRSP, &4u32.to_be_bytes());
    assert_eq!(w.dropped("key_refresh_refused"), 1);
    assert_eq!(w.relay.connection_count(), 1, "only the publisher is left");
}
