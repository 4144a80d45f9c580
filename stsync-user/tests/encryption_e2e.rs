//! Encrypted streams with real libsrt clients (srt-live-transmit, ffmpeg), on both
//! datapaths: an encrypted publisher with clear viewers, an encrypted publisher with
//! encrypted viewers of three key lengths, every byte intact; and the rejections libsrt
//! reports for a wrong or missing passphrase.

mod common;
mod ebpf_common;

use common::*;
use std::net::Ipv4Addr;
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);
const PUBLISH_1: &str = "stream-one-publisher";
const PUBLISH_2: &str = "stream-two-publisher";
const VIEW_2: &str = "stream-two-viewers!";

fn opts() -> RelayOpts {
    RelayOpts {
        passphrases: vec![
            ("1".into(), Some(PUBLISH_1.into()), None),
            ("2".into(), Some(PUBLISH_2.into()), Some(VIEW_2.into())),
        ],
        // Key refreshes are logged at debug.
        rust_log: Some("info,stsync_user::relay::encryption=debug".into()),
        // The relay changes each encrypted viewer's key every 700 packets (about 3 times
        // in the clip), announcing it 150 ahead.
        kmrefreshrate: Some(700),
        kmpreannounce: Some(150),
        ..Default::default()
    }
}

/// `url` with SRT's encryption options.
fn secret(url: &str, passphrase: &str, pbkeylen: u32) -> String {
    format!("{url}&passphrase={passphrase}&pbkeylen={pbkeylen}")
}

/// Stream 1: an AES-128 publisher, a clear srt-live-transmit viewer and, at once, an
/// AES-192 one with a per-session passphrase. Stream 2: an AES-256
/// publisher that refreshes its key every 500 packets, srt-live-transmit viewers with AES-128 and AES-192 keys of their own and an
/// ffmpeg viewer with AES-256. Every viewer's output is the clip, byte for byte (ffmpeg's
/// continuous). Returns the relay's metrics after the run.
fn encrypted_streams(relay: &Relay, ns: Option<&str>, label: &str) -> String {
    let c = clip();
    let dir = TempDir::new(label);
    let v = |stream: &str| relay.viewer_url(stream);
    let mut clear = SltViewer::start_opts(&dir, "clear-1", &v("1"), ns, false);
    let own = relay
        .api(Some("1"), |c| c.create_encrypted_session("1"))
        .expect("an encrypted session");
    let own_url = secret(
        &relay.url("1", &own.session_id, "request"),
        own.passphrase.as_deref().unwrap(),
        24,
    );
    let mut own1 = SltViewer::start_opts(&dir, "aes192-own-1", &own_url, ns, false);
    let mut a128 = SltViewer::start_opts(&dir, "aes128-2", &secret(&v("2"), VIEW_2, 16), ns, false);
    let mut a192 = SltViewer::start_opts(&dir, "aes192-2", &secret(&v("2"), VIEW_2, 24), ns, false);
    let mut ff = FfmpegViewer::start(
        &dir,
        "ff-aes256-2",
        &secret(&v("2"), VIEW_2, 32),
        FfKind::Copy,
        ns,
    );
    sleep_secs(1.0);
    let p1 = secret(&relay.publisher_url("1"), PUBLISH_1, 16);
    // This one changes its key every 500 packets (about 4 times in the clip), announcing
    // the next 100 packets ahead, as libsrt does every 2^24 by default.
    let p2 = format!(
        "{}&kmrefreshrate=500&kmpreannounce=100",
        secret(&relay.publisher_url("2"), PUBLISH_2, 32)
    );
    let mut pub1 = BytePublisher::start_opts(&dir, "pub-1", &p1, c, ns, false);
    let mut pub2 = BytePublisher::start_opts(&dir, "pub-2", &p2, c, ns, false);
    pub1.finish(LINGER);
    pub2.finish(LINGER);
    let m = relay.metrics();
    let log = relay.log();
    let refreshed = log.matches("publisher's keys refreshed").count();
    assert!(
        refreshed >= 3,
        "{label}: {refreshed} key refreshes followed"
    );
    // Four encrypted viewers, each told of its next key and of its old one's retirement
    // at least twice.
    let taken = log.matches("viewer took its new keys").count();
    assert!(
        taken >= 4 * 4,
        "{label}: {taken} key changes taken by viewers"
    );
    for v in [&mut clear, &mut own1, &mut a128, &mut a192] {
        v.assert_running("after the publishers left");
        v.stop();
    }
    ff.assert_running("after the publishers left");
    ff.stop();
    let all = Expect {
        from_start: true,
        to_end: true,
        min_packets: c.n_packets(),
    };
    assert_contiguous(
        &format!("{label}: clear viewer of an AES-128 publisher"),
        &clear.output(),
        c,
        all,
    );
    assert_contiguous(
        &format!("{label}: AES-192 viewer (own passphrase) of an AES-128 publisher"),
        &own1.output(),
        c,
        all,
    );
    assert_contiguous(
        &format!("{label}: AES-128 viewer of an AES-256 publisher"),
        &a128.output(),
        c,
        all,
    );
    assert_contiguous(
        &format!("{label}: AES-192 viewer of an AES-256 publisher"),
        &a192.output(),
        c,
        all,
    );
    let copied = ff.output();
    let al = ts_align(&copied);
    assert!(
        al.packets.len() > c.n_packets() / 2,
        "{label}: ffmpeg AES-256 viewer wrote {} packets",
        al.packets.len()
    );
    let breaks = cc_breaks(&al.packets);
    assert!(
        breaks.is_empty(),
        "{label}: ffmpeg viewer's CC breaks: {:?}",
        &breaks[..breaks.len().min(10)]
    );
    m
}

#[test]
fn encrypted_streams_userspace() {
    let relay = Relay::start(RelayOpts {
        datapath: Some("userspace".into()),
        ..opts()
    });
    encrypted_streams(&relay, None, "enc-user");
}

/// On the kernel datapath, with publisher and viewers on the relay's host (where the kernel
/// serves clear viewers of a clear publisher): an encrypted publisher's stream is fanned
/// out by the relay alone (the kernel cannot decrypt), so its clear viewer gets plaintext,
/// and encrypted viewers each get their own ciphertext.
#[test]
fn encrypted_streams_kernel_datapath() {
    if ebpf_common::object_or_skip("encrypted_streams_kernel_datapath").is_none() {
        return;
    }
    let ns = Netns::create(&["solo"]);
    let solo = ns.name("solo");
    let relay = Relay::start(RelayOpts {
        netns: Some(solo.to_string()),
        srt_ip: Ipv4Addr::LOCALHOST,
        datapath: Some("ebpf".into()),
        ..opts()
    });
    assert!(relay.log().contains("datapath=ebpf"), "{}", relay.log());
    let m = encrypted_streams(&relay, Some(solo), "enc-kernel");
    let kernel_clones = prom_sum(&m, "stsync_kernel_clones_total");
    assert_eq!(
        kernel_clones, 0.0,
        "nothing of an encrypted publisher cloned in the kernel"
    );
}

#[test]
fn wrong_or_missing_passphrases_are_refused_as_libsrt_says() {
    let relay = Relay::start(opts());
    let dir = TempDir::new("enc-rej");
    let cases = [
        (
            "publisher with the wrong passphrase",
            secret(&relay.publisher_url("1"), "not-the-passphrase", 16),
            "Incorrect passphrase",
            1010,
        ),
        (
            "publisher without one",
            relay.publisher_url("1"),
            "Password required or unexpected",
            1011,
        ),
        (
            "viewer with one where viewers are clear",
            secret(&relay.viewer_url("1"), "some-passphrase", 16),
            "Password required or unexpected",
            1011,
        ),
        (
            "viewer with the publishers' passphrase",
            secret(&relay.viewer_url("2"), PUBLISH_2, 16),
            "Incorrect passphrase",
            1010,
        ),
        (
            "clear viewer where viewers encrypt",
            relay.viewer_url("2"),
            "Password required or unexpected",
            1011,
        ),
    ];
    for (what, url, text, code) in cases {
        let (_, stderr) =
            slt_attempt_until(&dir, &unique("caller"), &url, Duration::from_secs(5), |e| {
                e.contains(text)
            });
        assert!(
            stderr.contains(text),
            "{what}: expected {text:?}, got:\n{stderr}"
        );
        assert!(
            wait_until(Duration::from_secs(2), || relay
                .reject_codes()
                .contains(&code)),
            "{what}: the relay did not count {code}: {:?}",
            relay.reject_codes()
        );
    }
}

/// Keys minted with `{"encrypt": true}` come with a passphrase of their own: two viewers of
/// a clear stream each encrypt with theirs and get every byte; one key with the other's
/// passphrase is refused as a wrong passphrase.
#[test]
fn per_session_passphrases_from_the_api() {
    let c = clip();
    let relay = Relay::start(RelayOpts {
        datapath: Some("userspace".into()),
        ..Default::default()
    });
    let dir = TempDir::new("enc-session");
    let mint = || {
        relay
            .api(Some("1"), |c| c.create_encrypted_session("1"))
            .expect("POST /v1/streams/1/sessions {\"encrypt\": true}")
    };
    let (a, b, c_key) = (mint(), mint(), mint());
    let pa = a.passphrase.clone().expect("a passphrase");
    let pb = b.passphrase.clone().expect("a passphrase");
    assert_ne!(pa, pb, "one passphrase per key");
    assert!((10..=79).contains(&pa.len()), "{pa}");
    let url = |key: &str, p: &str, len: u32| secret(&relay.url("1", key, "request"), p, len);
    let (_, stderr) = slt_attempt_until(
        &dir,
        "other-passphrase",
        &url(&c_key.session_id, &pa, 16),
        Duration::from_secs(5),
        |e| e.contains("Incorrect passphrase"),
    );
    assert!(stderr.contains("Incorrect passphrase"), "{stderr}");
    let mut va = SltViewer::start(&dir, "session-a", &url(&a.session_id, &pa, 16));
    let mut vb = SltViewer::start(&dir, "session-b", &url(&b.session_id, &pb, 32));
    sleep_secs(1.0);
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    p.finish(LINGER);
    for v in [&mut va, &mut vb] {
        v.assert_running("after the publisher left");
        v.stop();
    }
    let all = Expect {
        from_start: true,
        to_end: true,
        min_packets: c.n_packets(),
    };
    assert_contiguous("viewer with session A's passphrase", &va.output(), c, all);
    assert_contiguous("viewer with session B's passphrase", &vb.output(), c, all);
}

/// 5 % of the datagrams dropped on both legs (nftables, in the test's own namespaces): an
/// AES-128 publisher and AES-256 and AES-128 viewers, each with its own key, still get
/// every byte (retransmissions re-encrypted as their originals were), while the publisher
/// and the relay both change keys mid-stream (key messages are lost too).
#[test]
fn encrypted_stream_survives_loss_on_both_legs() {
    if !require_root("encrypted_stream_survives_loss_on_both_legs") {
        return;
    }
    let c = clip();
    let (ns, pub_side, view_side) = two_legs(78);
    let relay = Relay::start(two_legs_relay(&ns, view_side, opts()));
    let port = relay.srt.port();
    ns.add_loss("pub", "output", &format!("udp dport {port}"), LOSS_PCT);
    ns.add_loss("view", "input", &format!("udp sport {port}"), LOSS_PCT);
    let dir = TempDir::new("enc-loss");
    let padded = c.padded(&dir, 0.5);
    let view_ns = Some(ns.name("view"));
    let vurl = |len| {
        let key = relay.session("2");
        secret(&relay.url_at(view_side, "2", &key, "request"), VIEW_2, len)
    };
    let mut v256 = SltViewer::start_opts(&dir, "aes256", &vurl(32), view_ns, false);
    let mut v128 = SltViewer::start_opts(&dir, "aes128", &vurl(16), view_ns, false);
    let in_ = wait_until(Duration::from_secs(10), || {
        relay.metric("srt_connections_current", &[("mode", "request")]) == Some(2.0)
    });
    assert!(in_, "viewers not connected within 10 s");
    let purl = format!(
        "{}&kmrefreshrate=500&kmpreannounce=100",
        secret(
            &relay.url_at(pub_side, "2", &relay.session("2"), "publish"),
            PUBLISH_2,
            16,
        )
    );
    let mut p = BytePublisher::start_when(
        &dir,
        "pub",
        &purl,
        &padded,
        Some(ns.name("pub")),
        false,
        Some(&|| relay.metric("srt_connections_current", &[("mode", "publish")]) == Some(1.0)),
    );
    p.finish(Duration::from_secs(2));
    for v in [&mut v256, &mut v128] {
        v.assert_running("after the stream");
        v.stop();
    }
    let dropped = ns.loss_counter("view") + ns.loss_counter("pub");
    assert!(
        dropped > 150,
        "the loss rules dropped only {dropped} datagrams"
    );
    let all = Expect {
        from_start: true,
        to_end: true,
        min_packets: c.n_packets(),
    };
    assert_contiguous("AES-256 viewer under loss", &v256.output(), c, all);
    assert_contiguous("AES-128 viewer under loss", &v128.output(), c, all);
    let log = relay.log();
    let refreshed = log.matches("publisher's keys refreshed").count();
    let taken = log.matches("viewer took its new keys").count();
    assert!(
        refreshed >= 3 && taken >= 2 * 4,
        "key changes under loss: publisher {refreshed}, viewers {taken}"
    );
    record_result(&format!(
        "encryption: 5 % loss on both legs, {dropped} datagrams dropped; two encrypted viewers byte-exact"
    ));
}
