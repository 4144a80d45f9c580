//! Live reload of config.json (SIGHUP, `POST /v1/reload`) with real libsrt clients:
//! streams added, removed and changed while others run untouched, invalid files refused
//! with the running config kept, the endpoint's authorisation, and the kernel path for a
//! stream added by a reload.

mod common;
mod ebpf_common;

use common::*;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::time::Duration;

const LINGER: Duration = Duration::from_millis(1500);

fn token(tag: &str) -> String {
    format!(
        "{tag}-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

fn admin() -> String {
    token("admin")
}

/// `cfg` with stream `id` added (or replaced).
fn with_stream(mut cfg: Value, stream: Value) -> Value {
    let list = cfg["streams"].as_array_mut().unwrap();
    list.retain(|s| s["id"] != stream["id"]);
    list.push(stream);
    cfg
}

fn without_stream(mut cfg: Value, id: &str) -> Value {
    cfg["streams"]
        .as_array_mut()
        .unwrap()
        .retain(|s| s["id"] != id);
    cfg
}

fn stream_mut<'a>(cfg: &'a mut Value, id: &str) -> &'a mut Value {
    cfg["streams"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|s| s["id"] == id)
        .unwrap()
}

/// A publisher and a viewer on stream 1 run the whole clip byte-exact across a SIGHUP
/// reload that adds stream 3 (with a delay), changes stream 2's delay and rotates stream
/// 1's token: the old token is refused at once, the new one mints, and stream 3 serves a
/// publisher and a viewer.
#[test]
fn a_running_stream_is_untouched_by_a_reload_that_adds_and_rotates() {
    let c = clip();
    let mut relay = Relay::start_default();
    let dir = TempDir::new("reload-add");
    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    sleep_secs(0.5);
    let mut p1 = BytePublisher::start(&dir, "p1", &relay.publisher_url("1"), c);
    assert!(
        v1.wait_bytes(100_000, Duration::from_secs(5)),
        "stream 1 flows before the reload: {}",
        v1.stderr()
    );

    let old_token = relay.token("1").to_string();
    let mut cfg = relay.config();
    stream_mut(&mut cfg, "1")["token"] = token("one-rotated").into();
    stream_mut(&mut cfg, "2")["delay_ms"] = 800.into();
    let cfg = with_stream(
        cfg,
        json!({"id": "3", "name": "Added", "token": token("three"), "delay_ms": 500}),
    );
    relay.write_config(&cfg);
    let line = relay.sighup();
    assert!(
        line.contains("config reloaded")
            && line.contains("added=[3]")
            && line.contains("1: token")
            && line.contains("2: delay_ms"),
        "{line}"
    );

    // Stream 1's connections were not touched: none closed (and its viewer's bytes below).
    assert!(
        !relay.log().contains("connection closed"),
        "{}",
        tail_lines(&relay.log(), 20)
    );
    // Tokens: the old one is refused at once, the new one mints.
    assert_eq!(relay.try_session("1", Some(&old_token)).status, 401);
    assert_eq!(relay.try_session("1", Some(relay.token("1"))).status, 201);
    // Delays: the changed stream's, and the added stream's own.
    let delay = |id: &str| {
        relay
            .get(&format!("/v1/streams/{id}/delay"))
            .unwrap()
            .json()
    };
    assert_eq!(delay("2")["delay_ms"], 800);
    assert_eq!(delay("3")["delay_ms"], 500);
    // The added stream: listed, and it serves.
    let listed: Vec<Value> = relay.streams().as_array().unwrap().clone();
    assert!(
        listed
            .iter()
            .any(|s| s["id"] == "3" && s["name"] == "Added"),
        "{listed:?}"
    );
    let mut v3 = SltViewer::start(&dir, "v3", &relay.viewer_url("3"));
    let mut p3 = BytePublisher::start(&dir, "p3", &relay.publisher_url("3"), c);
    assert!(
        v3.wait_bytes(200_000, Duration::from_secs(8)),
        "the added stream's viewer got {} bytes: {}\nlog:\n{}",
        v3.received_len(),
        v3.stderr(),
        tail_lines(&relay.log(), 20)
    );
    p3.stop();
    v3.stop();

    p1.finish(LINGER);
    v1.assert_running("after the reload and the clip");
    v1.stop();
    assert_contiguous(
        "stream 1's viewer across the reload",
        &v1.output(),
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );
    eprintln!("[check] stream 1 byte-exact across the reload");
}

/// A new `view_passphrase` applies to new connections only: the viewer that agreed on the
/// old one plays the whole clip byte-exact across the reload, a new viewer with the new
/// passphrase plays, and one with the old passphrase is refused as libsrt says (1010).
#[test]
fn a_new_passphrase_is_for_new_viewers_only() {
    const OLD: &str = "viewers-before-reload";
    const NEW: &str = "viewers-after-reload";
    let c = clip();
    let mut relay = Relay::start(RelayOpts {
        passphrases: vec![("1".into(), None, Some(OLD.into()))],
        ..RelayOpts::default()
    });
    let dir = TempDir::new("reload-passphrase");
    let with = |url: String, pass: &str| format!("{url}&passphrase={pass}&pbkeylen=16");
    let mut v_old = SltViewer::start(&dir, "v-old", &with(relay.viewer_url("1"), OLD));
    sleep_secs(0.5);
    let mut p = BytePublisher::start(&dir, "p", &relay.publisher_url("1"), c);
    assert!(
        v_old.wait_bytes(100_000, Duration::from_secs(5)),
        "the encrypted viewer before the reload: {}",
        v_old.stderr()
    );

    let mut cfg = relay.config();
    stream_mut(&mut cfg, "1")["view_passphrase"] = NEW.into();
    relay.write_config(&cfg);
    let line = relay.sighup();
    assert!(
        line.contains("config reloaded") && line.contains("1: view_passphrase"),
        "{line}"
    );

    let mut v_new = SltViewer::start(&dir, "v-new", &with(relay.viewer_url("1"), NEW));
    assert!(
        v_new.wait_bytes(100_000, Duration::from_secs(8)),
        "a viewer with the new passphrase got {} bytes: {}",
        v_new.received_len(),
        v_new.stderr()
    );
    let (_, stderr) = slt_attempt_until(
        &dir,
        &unique("old-pass"),
        &with(relay.viewer_url("1"), OLD),
        Duration::from_secs(5),
        |e| e.contains("Incorrect passphrase"),
    );
    assert!(stderr.contains("Incorrect passphrase"), "{stderr}");
    assert!(
        wait_until(Duration::from_secs(2), || relay
            .reject_codes()
            .contains(&1010)),
        "{:?}",
        relay.reject_codes()
    );

    p.finish(LINGER);
    v_new.stop();
    v_old.assert_running("after the reload and the clip");
    v_old.stop();
    assert_contiguous(
        "the viewer on the old passphrase across the reload",
        &v_old.output(),
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );
}

/// Removing a stream with a live viewer and publisher: both get SHUTDOWN (the viewer's
/// srt-live-transmit ends), its API answers 404, a new caller is refused with 2404
/// (REJ_NOTFOUND), and stream 1 flows on.
#[test]
fn a_removed_stream_ends_its_connections_and_is_gone() {
    let c = clip();
    let mut relay = Relay::start_default();
    let dir = TempDir::new("reload-remove");
    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    let mut v2 = SltViewer::start(&dir, "v2", &relay.viewer_url("2"));
    sleep_secs(0.5);
    let mut p1 = BytePublisher::start(&dir, "p1", &relay.publisher_url("1"), c);
    let mut p2 = BytePublisher::start(&dir, "p2", &relay.publisher_url("2"), c);
    assert!(
        v1.wait_bytes(100_000, Duration::from_secs(5)),
        "{}",
        v1.stderr()
    );
    assert!(
        v2.wait_bytes(100_000, Duration::from_secs(5)),
        "{}",
        v2.stderr()
    );
    let token2 = relay.token("2").to_string();
    let spare_key = relay.session("2");

    let cfg = without_stream(relay.config(), "2");
    relay.write_config(&cfg);
    let line = relay.sighup();
    assert!(line.contains("removed=[2]"), "{line}");

    // Its viewer and publisher are told (SHUTDOWN): srt-live-transmit ends on its own.
    assert!(
        wait_until(Duration::from_secs(5), || !v2.running()),
        "stream 2's viewer still runs 5 s after the removal: {}",
        v2.stderr()
    );
    assert!(
        p2.wait_slt_exit(Duration::from_secs(5)).is_some(),
        "stream 2's publisher still runs 5 s after the removal: {}",
        p2.stderr()
    );
    let got = v2.received_len();
    sleep_secs(0.5);
    assert_eq!(
        v2.received_len(),
        got,
        "nothing reaches a removed stream's viewer"
    );
    // The API forgets it.
    assert_eq!(relay.try_session("2", Some(&token2)).status, 404);
    assert_eq!(relay.get("/v1/streams/2/delay").unwrap().status, 404);
    let listed = relay.streams();
    assert!(
        listed.as_array().unwrap().iter().all(|s| s["id"] != "2"),
        "{listed}"
    );
    // A caller with a key minted before: REJ_NOTFOUND.
    expect_reject(
        &relay,
        &dir,
        "caller of a removed stream",
        &relay.url("2", &spare_key, "request"),
        APP_TEXT,
        2404,
    );
    // Stream 1 never noticed.
    let before = v1.received_len();
    assert!(
        v1.wait_bytes(before + 100_000, Duration::from_secs(5)),
        "stream 1 stopped after the removal"
    );
    p1.finish(LINGER);
    v1.assert_running("after the removal");
    v1.stop();
    assert_contiguous(
        "stream 1's viewer across the removal",
        &v1.output(),
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );
}

/// An invalid config.json (not JSON; a duplicate id; a weak token) is refused by SIGHUP
/// and by `POST /v1/reload` with the same line and reason the start gives, the running
/// config stays and serves, and a valid file after it applies.
#[test]
fn an_invalid_file_is_refused_and_the_running_config_stays() {
    let admin = admin();
    let mut relay = Relay::start(RelayOpts {
        admin_token: Some(admin.clone()),
        ..Default::default()
    });
    let dir = TempDir::new("reload-invalid");
    let good = relay.config();
    let good_text = serde_json::to_string_pretty(&good).unwrap();
    let mut v = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    sleep_secs(0.5);
    let mut p = BytePublisher::start(&dir, "p1", &relay.publisher_url("1"), clip());
    assert!(
        v.wait_bytes(100_000, Duration::from_secs(5)),
        "{}",
        v.stderr()
    );

    // What `stsync-proxy check` says of each file is what a reload answers.
    let check = |text: &str| -> String {
        let f = dir.file("check.json");
        std::fs::write(&f, text).unwrap();
        let out = std::process::Command::new(RELAY_BIN)
            .arg("--config")
            .arg(&f)
            .arg("check")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let mut dup = good.clone();
    let one = dup["streams"][0].clone();
    dup["streams"].as_array_mut().unwrap().push(one);
    let mut weak = good.clone();
    weak["streams"][1]["token"] = "abc".into();
    let cases = [
        (
            "syntax error",
            good_text.replacen("\"streams\"", "\"streams\" oops", 1),
            "line",
        ),
        (
            "duplicate id",
            serde_json::to_string_pretty(&dup).unwrap(),
            "streams[2].id",
        ),
        (
            "weak token",
            serde_json::to_string_pretty(&weak).unwrap(),
            "streams[1].token",
        ),
    ];
    for (what, text, names) in &cases {
        relay.write_config_text(text);
        let line = relay.sighup();
        assert!(
            line.contains("config reload refused") && line.contains(names) && line.contains("line"),
            "{what}: SIGHUP logged {line}"
        );
        let r = relay.post_reload(Some(&admin));
        assert_eq!(r.status, 422, "{what}: {}", r.body);
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(names) && msg.contains("line"), "{what}: {msg}");
        // The same reason the start would give (its path aside).
        let reason = msg.rsplit(": ").next().unwrap();
        assert!(
            check(text).contains(reason),
            "{what}: check says {}",
            check(text)
        );
        assert!(
            line.contains(&msg),
            "{what}: the log line and the answer differ: {line} / {msg}"
        );
        // The running config stays: tokens, streams, the live stream.
        assert_eq!(
            relay.try_session("1", Some(relay.token("1"))).status,
            201,
            "{what}"
        );
        assert_eq!(
            relay.try_session("2", Some(relay.token("2"))).status,
            201,
            "{what}"
        );
        eprintln!("[check] {what}: refused: {msg}");
    }
    let before = v.received_len();
    assert!(
        v.wait_bytes(before + 50_000, Duration::from_secs(5)),
        "stream 1 stalled"
    );

    // A valid file then applies; the same file again changes nothing.
    let cfg = with_stream(good, json!({"id": "3", "token": token("three")}));
    relay.write_config(&cfg);
    let r = relay.post_reload(Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["changed"], true, "{j}");
    assert_eq!(j["added"], json!(["3"]), "{j}");
    assert_eq!(relay.try_session("3", Some(relay.token("3"))).status, 201);
    let again = relay.post_reload(Some(&admin)).json();
    assert_eq!(again["changed"], false, "{again}");
    assert_eq!(again["added"], json!([]), "{again}");
    p.finish(LINGER);
    v.assert_running("after the refused reloads");
}

/// `POST /v1/reload` takes only the admin token: 403 when config.json sets none, 401 for
/// a wrong or missing one; its answer lists the diff, fields that need a restart included
/// (their running values stay).
#[test]
fn the_reload_endpoint_needs_the_admin_token_and_lists_the_diff() {
    let relay = Relay::start_default();
    let r = relay.post_reload(Some(relay.token("1")));
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["error"].as_str().unwrap().contains("admin_token"));

    let admin = admin();
    let mut relay = Relay::start(RelayOpts {
        admin_token: Some(admin.clone()),
        ..Default::default()
    });
    assert_eq!(relay.post_reload(Some(relay.token("1"))).status, 401);
    assert_eq!(
        relay.post_reload(Some("wrong-token-0123456789")).status,
        401
    );
    assert_eq!(relay.post_reload(None).status, 401);
    let r = relay.post_reload(Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["changed"], false);

    // Rotating the admin token itself: the old one is refused from then on.
    let new_admin = token("admin2");
    let mut cfg = relay.config();
    cfg["admin_token"] = new_admin.as_str().into();
    cfg["max_connections"] = 50.into();
    let old_srt = cfg["srt_listen"].as_str().unwrap().to_string();
    cfg["srt_listen"] = format!("127.0.0.1:{}", free_udp_port()).into();
    cfg = without_stream(cfg, "2");
    stream_mut(&mut cfg, "1")["name"] = "Renamed".into();
    relay.write_config(&cfg);
    let r = relay.post_reload(Some(&admin));
    assert_eq!(r.status, 200, "{}", r.body);
    let j = r.json();
    assert_eq!(j["changed"], true);
    assert_eq!(j["removed"], json!(["2"]), "{j}");
    assert_eq!(
        j["updated"],
        json!([{"id": "1", "fields": ["name"]}]),
        "{j}"
    );
    assert_eq!(
        j["settings"],
        json!(["max_connections", "admin_token"]),
        "{j}"
    );
    assert_eq!(j["restart_required"], json!(["srt_listen"]), "{j}");
    assert!(
        relay
            .log()
            .contains("srt_listen changed but apply only at a restart"),
        "{}",
        tail_lines(&relay.log(), 10)
    );
    assert_eq!(
        relay.post_reload(Some(&admin)).status,
        401,
        "the old admin token"
    );
    let again = relay.post_reload(Some(&new_admin));
    assert_eq!(again.status, 200);
    // Still waiting for a restart, and said so again; nothing else changes.
    assert_eq!(again.json()["restart_required"], json!(["srt_listen"]));
    assert_eq!(again.json()["settings"], json!([]));
    // Still listening where it was.
    assert_eq!(relay.srt.to_string(), old_srt);
    let streams = relay.streams();
    assert_eq!(streams[0]["name"], "Renamed", "{streams}");
    let dir = TempDir::new("reload-endpoint");
    let (ok, err) = slt_attempt(&dir, "p", &relay.publisher_url("1"), Duration::from_secs(3));
    assert!(!err.contains("rejected"), "{ok} {err}");

    // Concurrent reloads are serialised: of four at once, one adds the stream, the others
    // find nothing new.
    let cfg = with_stream(relay.config(), json!({"id": "3", "token": token("three")}));
    relay.write_config(&cfg);
    let answers: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| relay.post_reload(Some(&new_admin))))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let r = h.join().unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
                r.json()
            })
            .collect()
    });
    let added: Vec<&Value> = answers
        .iter()
        .filter(|a| a["added"] == json!(["3"]))
        .collect();
    assert_eq!(added.len(), 1, "{answers:?}");
    assert_eq!(relay.try_session("3", Some(relay.token("3"))).status, 201);
}

/// A stream added by a reload gets kernel-served viewers (the maps keep rows for it).
#[test]
fn a_stream_added_by_reload_is_served_by_the_kernel() {
    const TEST: &str = "a_stream_added_by_reload_is_served_by_the_kernel";
    if ebpf_common::object_or_skip(TEST).is_none() {
        return;
    }
    let ns = Netns::create(&["solo"]);
    let solo = ns.name("solo");
    let mut relay = Relay::start(RelayOpts {
        netns: Some(solo.to_string()),
        srt_ip: Ipv4Addr::LOCALHOST,
        datapath: Some("ebpf".into()),
        ..Default::default()
    });
    let cfg = with_stream(relay.config(), json!({"id": "3", "token": token("three")}));
    relay.write_config(&cfg);
    assert!(relay.sighup().contains("added=[3]"));
    let dir = TempDir::new("reload-ebpf");
    let c = clip();
    let mut viewers: Vec<SltViewer> = (0..2)
        .map(|i| {
            SltViewer::start_opts(
                &dir,
                &format!("v{i}"),
                &relay.viewer_url("3"),
                Some(solo),
                true,
            )
        })
        .collect();
    sleep_secs(1.0);
    let padded = c.padded(&dir, 0.5);
    let mut p = BytePublisher::start_opts(
        &dir,
        "p",
        &relay.publisher_url("3"),
        &padded,
        Some(solo),
        false,
    );
    p.finish(LINGER);
    let m = relay.metrics();
    for v in viewers.iter_mut() {
        v.assert_running("after the stream");
        v.stop();
        assert_contiguous(
            &format!("kernel-served viewer {}", v.name),
            &v.output(),
            c,
            Expect {
                from_start: true,
                to_end: true,
                min_packets: c.n_packets(),
            },
        );
    }
    assert_eq!(
        prom_value(&m, "stsync_datapath", &[("kind", "ebpf")]),
        Some(1.0)
    );
    assert_eq!(
        prom_value(&m, "stsync_kernel_streams_without_row", &[]),
        Some(0.0)
    );
    let kernel = prom_sum(&m, "srt_connection_data_packets_sent_kernel");
    let seen = prom_value(&m, "stsync_kernel_packets_seen_total", &[]).unwrap_or(0.0);
    eprintln!("[check] stream added by reload: kernel clones to its viewers {kernel}, packets seen {seen}");
    assert!(
        kernel >= seen * 2.0 * 0.9 && seen > 500.0,
        "the kernel cloned {kernel} packets for 2 viewers of {seen}\n{m}"
    );
}

/// With no kernel row left (`kernel_streams` 1, taken by stream 1), a stream added by a
/// reload is served from userspace, said in the log and counted; once a reload removes
/// stream 1, its row goes to the added stream's next viewer, publisher included.
#[test]
fn a_stream_without_a_kernel_row_is_served_from_userspace_until_one_frees() {
    const TEST: &str = "a_stream_without_a_kernel_row_is_served_from_userspace_until_one_frees";
    if ebpf_common::object_or_skip(TEST).is_none() {
        return;
    }
    let ns = Netns::create(&["solo"]);
    let solo = ns.name("solo");
    let mut relay = Relay::start(RelayOpts {
        netns: Some(solo.to_string()),
        srt_ip: Ipv4Addr::LOCALHOST,
        datapath: Some("ebpf".into()),
        kernel_streams: Some(1),
        ..Default::default()
    });
    let dir = TempDir::new("reload-ebpf-rows");
    // Stream 1's viewer takes the one row.
    let mut v1 = SltViewer::start_opts(&dir, "v1", &relay.viewer_url("1"), Some(solo), true);
    let cfg = with_stream(relay.config(), json!({"id": "3", "token": token("three")}));
    relay.write_config(&cfg);
    assert!(relay.sighup().contains("added=[3]"));
    let c = clip();
    let mut a = SltViewer::start_opts(&dir, "a", &relay.viewer_url("3"), Some(solo), true);
    sleep_secs(1.0);
    let mut p =
        BytePublisher::start_opts(&dir, "p", &relay.publisher_url("3"), c, Some(solo), false);
    assert!(
        a.wait_bytes(300_000, Duration::from_secs(5)),
        "{}",
        a.stderr()
    );
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "stsync_kernel_streams_without_row", &[]),
        Some(1.0)
    );
    assert_eq!(prom_value(&m, "stsync_kernel_clones_total", &[]), Some(0.0));
    assert!(
        relay.log().contains("no free kernel stream row"),
        "{}",
        tail_lines(&relay.log(), 20)
    );

    let cfg = without_stream(relay.config(), "1");
    relay.write_config(&cfg);
    assert!(relay.sighup().contains("removed=[1]"));
    assert!(
        wait_until(Duration::from_secs(5), || !v1.running()),
        "stream 1's viewer ended"
    );
    let mut b = SltViewer::start_opts(&dir, "b", &relay.viewer_url("3"), Some(solo), true);
    assert!(
        b.wait_bytes(300_000, Duration::from_secs(5)),
        "{}",
        b.stderr()
    );
    sleep_secs(2.0);
    let m = relay.metrics();
    let clones = prom_value(&m, "stsync_kernel_clones_total", &[]).unwrap_or(0.0);
    eprintln!("[check] after stream 1's row freed: kernel clones {clones}");
    assert!(
        clones > 100.0,
        "the freed row serves stream 3's new viewer: {clones} clones\n{m}"
    );
    assert_eq!(
        prom_value(&m, "stsync_kernel_streams_without_row", &[]),
        Some(0.0)
    );
    p.stop();
    for v in [&mut a, &mut b] {
        v.assert_running("while the publisher ran");
        v.stop();
    }
}
