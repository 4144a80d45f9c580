//! The HTTP API as the README documents it.

mod common;

use common::*;
use std::time::Duration;

fn is_session_id(s: &str) -> bool {
    s.len() == 16 && s.chars().all(|c| c.is_ascii_hexdigit())
}

#[test]
fn session_keys_are_minted() {
    let relay = Relay::start_default();
    let r = relay.try_session("1", Some(relay.token("1")));
    assert_eq!(r.status, 201, "{r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "content-type {:?}",
        r.content_type
    );
    let v = r.json();
    assert_eq!(v["resource_id"], "1", "{}", r.body);
    let k1 = v["session_id"].as_str().unwrap_or_default().to_string();
    assert!(
        is_session_id(&k1),
        "session_id {k1:?} is not 16 hex characters"
    );
    let k2 = relay.session("1");
    assert!(is_session_id(&k2));
    assert_ne!(k1, k2, "two keys minted in a row are equal");
    // Stream 2 with its own token.
    let r2 = relay.try_session("2", Some(relay.token("2")));
    assert_eq!(r2.status, 201, "{r2:?}");
    assert_eq!(r2.json()["resource_id"], "2");
}

#[test]
fn session_errors_are_json() {
    let relay = Relay::start_default();
    let t1 = relay.token("1").to_string();
    assert_json_error(&relay.try_session("1", None), 401, "missing token");
    assert_json_error(
        &relay.try_session("1", Some("wrong-token")),
        401,
        "wrong token",
    );
    assert_json_error(
        &relay.try_session("1", Some(relay.token("2"))),
        401,
        "stream 2's token for stream 1",
    );
    let basic = relay
        .request(
            "POST",
            "/v1/streams/1/sessions",
            &[("Authorization", &format!("Basic {t1}"))],
        )
        .unwrap();
    assert_json_error(&basic, 401, "token under the Basic scheme");
    assert_json_error(
        &relay.try_session("ff", Some(&t1)),
        404,
        "unknown stream ff",
    );
    assert_json_error(
        &relay.try_session("zz", Some(&t1)),
        400,
        "non-hex stream id zz",
    );
    assert_json_error(
        &relay.try_session("1x", Some(&t1)),
        400,
        "non-hex stream id 1x",
    );
}

#[test]
fn health_and_metrics_endpoints() {
    let relay = Relay::start_default();
    let h = relay.get("/v1/health").unwrap();
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["status"], "ok", "{}", h.body);
    for path in ["/metrics", "/v1/metrics"] {
        let r = relay.get(path).unwrap();
        assert_eq!(r.status, 200, "{path}: {r:?}");
        assert!(
            r.content_type.starts_with("text/plain"),
            "{path}: content-type {:?}",
            r.content_type
        );
        assert!(
            r.body.contains("# TYPE srt_connections_total"),
            "{path}:\n{}",
            r.body
        );
        assert_eq!(
            prom_value(&r.body, "srt_connections_total", &[]),
            Some(0.0),
            "{path}"
        );
    }
}

/// GET /v1/streams: both streams without their tokens; a live stream shows its publisher,
/// viewer count and a plausible bitrate; all of it goes back when the clients leave.
#[test]
fn streams_listing_reflects_live_stream() {
    let c = clip();
    let relay = Relay::start_default();
    let dir = TempDir::new("streams");
    let r = relay.get("/v1/streams").unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.content_type.starts_with("application/json"),
        "{:?}",
        r.content_type
    );
    for t in relay.tokens.values() {
        assert!(
            !r.body.contains(t.as_str()),
            "GET /v1/streams leaks a token: {}",
            r.body
        );
    }
    let find = |v: &serde_json::Value, id: &str| -> serde_json::Value {
        v.as_array()
            .unwrap_or_else(|| panic!("not an array: {v}"))
            .iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("stream {id} missing: {v}"))
            .clone()
    };
    let v = r.json();
    assert_eq!(v.as_array().map(|a| a.len()), Some(2), "{v}");
    let s1 = find(&v, "1");
    assert_eq!(s1["name"], "Stream one");
    assert_eq!(s1["publisher"], false, "{s1}");
    assert_eq!(s1["viewers"], 0, "{s1}");
    assert!(s1.get("bitrate_bps").is_some(), "{s1}");
    assert!(s1.get("token").is_none(), "{s1}");

    let mut v1 = SltViewer::start(&dir, "v1", &relay.viewer_url("1"));
    let mut v2 = SltViewer::start(&dir, "v2", &relay.viewer_url("1"));
    let mut p = BytePublisher::start(&dir, "pub", &relay.publisher_url("1"), c);
    sleep_secs(3.5);
    let body = relay.get("/v1/streams").unwrap().body;
    for t in relay.tokens.values() {
        assert!(
            !body.contains(t.as_str()),
            "GET /v1/streams leaks a token: {body}"
        );
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let s1 = find(&v, "1");
    let s2 = find(&v, "2");
    let bps = s1["bitrate_bps"].as_f64().unwrap_or(-1.0);
    record_result(&format!(
        "streams: live stream 1 shows {s1} (clip rate {} bit/s)",
        c.rate * 8
    ));
    assert_eq!(s1["publisher"], true, "{s1}");
    assert_eq!(s1["viewers"], 2, "{s1}");
    let clip_bps = (c.rate * 8) as f64;
    assert!(
        bps > clip_bps * 0.5 && bps < clip_bps * 2.0,
        "bitrate_bps {bps} vs the clip's {clip_bps}"
    );
    assert_eq!(s2["publisher"], false, "{s2}");
    assert_eq!(s2["viewers"], 0, "{s2}");

    p.stop();
    v1.stop();
    let ok = wait_until(Duration::from_secs(4), || {
        let s1 = find(&relay.streams(), "1");
        s1["publisher"] == false && s1["viewers"] == 1
    });
    assert!(
        ok,
        "after the publisher and one viewer left: {}",
        relay.streams()
    );
    v2.stop();
    let ok = wait_until(Duration::from_secs(4), || {
        find(&relay.streams(), "1")["viewers"] == 0
    });
    assert!(ok, "after every viewer left: {}", relay.streams());
}

#[test]
fn stream_delay_is_read_set_and_bounded() {
    let relay = Relay::start(RelayOpts {
        stream_delays: vec![("2".into(), 250)],
        ..RelayOpts::default()
    });
    let get = |s: &str| relay.get(&format!("/v1/streams/{s}/delay")).unwrap();
    let r = get("1");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["delay_ms"], 0);
    assert_eq!(get("2").json()["delay_ms"], 250, "from config.json");
    assert_json_error(&get("7"), 404, "unknown stream");
    assert_json_error(&get("zz"), 400, "not hex");

    let put = |token: Option<&str>, body: &str| {
        let auth = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        relay
            .request_body("PUT", "/v1/streams/1/delay", &headers, Some(body))
            .unwrap()
    };
    let t1 = relay.token("1").to_string();
    let t2 = relay.token("2").to_string();
    assert_json_error(&put(None, r#"{"delay_ms": 100}"#), 401, "no token");
    assert_json_error(
        &put(Some(&t2), r#"{"delay_ms": 100}"#),
        401,
        "other stream's token",
    );
    assert_json_error(&put(Some(&t1), "delay=100"), 400, "not JSON");
    assert_json_error(&put(Some(&t1), r#"{"delay": 100}"#), 400, "wrong field");
    assert_json_error(&put(Some(&t1), r#"{"delay_ms": -5}"#), 400, "negative");
    assert_json_error(&put(Some(&t1), r#"{"delay_ms": 1.5}"#), 400, "fraction");
    let r = put(Some(&t1), r#"{"delay_ms": 30001}"#);
    assert_json_error(&r, 422, "above the bound");
    assert!(r.body.contains("30000"), "{}", r.body);
    assert_eq!(
        get("1").json()["delay_ms"],
        0,
        "a refused value changes nothing"
    );

    let r = put(Some(&t1), r#"{"delay_ms": 750}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["delay_ms"], 750);
    assert_eq!(get("1").json()["delay_ms"], 750);
    // No viewer to move: applied at the next sweep (100 ms).
    assert!(wait_until(Duration::from_secs(2), || get("1").json()
        ["delay_applied_ms"]
        == 750));
    let list = relay.streams();
    let s1 = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "1")
        .unwrap();
    assert_eq!(s1["delay_ms"], 750, "{list}");
    assert!(s1["ingest_latency_ms"].is_number(), "{list}");
    let m = relay.metrics();
    assert_eq!(
        prom_value(&m, "stsync_stream_delay_seconds", &[("stream", "1")]),
        Some(0.75)
    );
    assert_eq!(
        prom_value(
            &m,
            "stsync_stream_ingest_latency_seconds",
            &[("stream", "1")]
        ),
        Some(0.0),
        "no publisher"
    );
}

/// Every error the API returns is `{"error": ...}` as application/json with its status,
/// whoever produces it: a handler, the router, an extractor, the body limit, the URI limit.
/// (Requests hyper cannot parse at all: tests/http_hardening.rs.)
#[test]
fn every_error_is_json() {
    let relay = Relay::start_default();
    let auth = format!("Bearer {}", relay.token("1"));
    let h = [("Authorization", auth.as_str())];
    let put_delay = |body: &str| {
        relay
            .request_body("PUT", "/v1/streams/1/delay", &h, Some(body))
            .unwrap()
    };
    let post_session = |body: &str| {
        relay
            .request_body("POST", "/v1/streams/1/sessions", &h, Some(body))
            .unwrap()
    };

    assert_json_error(&relay.get("/v1/nope").unwrap(), 404, "unknown path");
    assert_json_error(&relay.get("/").unwrap(), 404, "/");
    assert_json_error(
        &relay.request("DELETE", "/v1/health", &[]).unwrap(),
        405,
        "DELETE /v1/health",
    );
    assert_json_error(
        &relay.get("/v1/streams/1/sessions").unwrap(),
        405,
        "GET on sessions",
    );

    let big = format!(r#"{{"delay_ms": 1, "pad": "{}"}}"#, "x".repeat(64 * 1024));
    let r = put_delay(&big);
    assert_json_error(&r, 413, "a 64 KiB body");
    assert!(r.body.contains("16384"), "the limit is stated: {}", r.body);

    for n in [10_000, 100_000] {
        let r = relay.get(&format!("/v1/{}", "a".repeat(n))).unwrap();
        assert_json_error(&r, 414, &format!("a {n}-character path"));
        assert!(r.body.contains("8192"), "the limit is stated: {}", r.body);
    }

    for (body, what) in [
        (r#"{"delay_ms": "#, "truncated JSON"),
        (r#"{"delay_ms": 100, "extra": 1}"#, "an unknown field"),
        (r#"{"delay_ms": 100, "delay_ms": 200}"#, "a duplicate field"),
        ("[100]", "an array"),
        ("", "an empty body"),
    ] {
        assert_json_error(&put_delay(body), 400, &format!("delay body with {what}"));
    }
    let r = put_delay(r#"{"delay_ms": 100, "extra": 1}"#);
    assert!(r.body.contains("extra"), "names the field: {}", r.body);
    assert_eq!(
        relay.get("/v1/streams/1/delay").unwrap().json()["delay_ms"],
        0,
        "a refused body changes nothing"
    );

    // POST .../sessions takes an empty body, {} or {"encrypt": true} only.
    for body in ["", "{}", " { } \n"] {
        let r = post_session(body);
        assert_eq!(r.status, 201, "session body {body:?}: {r:?}");
    }
    for (body, what) in [
        (r#"{"encrypted": true}"#, "an unknown field"),
        (r#"{"encrypt": 1}"#, "encrypt not a boolean"),
        ("hello", "not JSON"),
        ("[]", "an array"),
        ("null", "null"),
    ] {
        assert_json_error(&post_session(body), 400, &format!("session body: {what}"));
    }
}
