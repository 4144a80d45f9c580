//! The API over HTTPS (`tls_cert`, `tls_key`): curl with `--cacert` mints keys and reads
//! the metrics, curl without it refuses the certificate, plain HTTP to the port gets no
//! answer, a peer that never finishes its handshake is closed at the header timeout and
//! cannot hold the connection slots, `stsync-proxy session` mints over HTTPS (with
//! `--cacert`, or from the config alone) and its URLs work, and a certificate or key that
//! cannot be served stops the daemon with the file and the reason.

mod common;

use common::*;
use std::io::Write;
use std::net::{SocketAddrV4, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A self-signed certificate for `localhost` and 127.0.0.1 and its key, as PEM.
fn self_signed() -> (String, String) {
    let c = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("rcgen");
    (c.cert.pem(), c.signing_key.serialize_pem())
}

fn tls_relay(opts: RelayOpts) -> Relay {
    Relay::start(RelayOpts {
        tls: Some(self_signed()),
        ..opts
    })
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .args(args)
        .output()
        .expect("run curl")
}

fn connect(addr: SocketAddrV4) -> TcpStream {
    TcpStream::connect_timeout(&addr.into(), Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"))
}

/// curl with `--cacert` mints a session key and reads the metrics, over TLS 1.2 and 1.3,
/// by IP and by name; without `--cacert` it refuses the self-signed certificate.
#[test]
fn curl_with_the_cacert_mints_keys_and_reads_metrics() {
    let relay = tls_relay(RelayOpts::default());
    let cert = relay.tls_cert.clone().unwrap();
    let cacert = cert.to_str().unwrap();
    let base = relay.api_url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    assert!(
        relay.log().contains(&format!("api={base}")),
        "the start log names the API's URL: {}",
        relay.log()
    );

    let auth = format!("Authorization: Bearer {}", relay.token("1"));
    let url = format!("{base}/v1/streams/1/sessions");
    let out = curl(&[
        "--cacert",
        cacert,
        "-X",
        "POST",
        "-H",
        &auth,
        "-w",
        "\n%{http_code} %{http_version}",
        &url,
    ]);
    let body = lossy(&out.stdout);
    assert!(out.status.success(), "curl: {}{body}", lossy(&out.stderr));
    let (json, status) = body.rsplit_once('\n').unwrap();
    assert_eq!(status, "201 1.1", "{body}");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["resource_id"], "1", "{json}");
    assert_eq!(v["session_id"].as_str().map(str::len), Some(16), "{json}");

    let by_name = format!("https://localhost:{}/metrics", relay.http.port());
    for version in [&["--tlsv1.2", "--tls-max", "1.2"][..], &["--tlsv1.3"][..]] {
        let mut args = vec!["--cacert", cacert, "-f"];
        args.extend_from_slice(version);
        args.push(&by_name);
        let out = curl(&args);
        let m = lossy(&out.stdout);
        assert!(
            out.status.success() && m.contains("# TYPE srt_connections_total"),
            "curl {version:?}: {}{m}",
            lossy(&out.stderr)
        );
    }
    // The same through the typed client, trusting the certificate.
    assert!(relay.metrics().contains("srt_connections_total"));

    let out = curl(&[&format!("{base}/v1/health")]);
    let err = lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(60),
        "curl without --cacert: {err}{}",
        lossy(&out.stdout)
    );
    assert!(err.contains("certificate"), "{err}");
    record_result(&format!("https: curl --cacert minted {json}"));
}

/// Plain HTTP to the TLS port gets no HTTP answer and its connection is closed; the relay
/// keeps serving HTTPS.
#[test]
fn plain_http_to_the_https_port_gets_no_answer() {
    let mut relay = tls_relay(RelayOpts::default());
    let mut s = connect(relay.http);
    s.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (raw, took) = read_to_close(&mut s, Duration::from_secs(5));
    assert!(
        !raw.starts_with(b"HTTP/"),
        "plain HTTP got an HTTP answer: {:?}",
        lossy(&raw)
    );
    assert!(took < Duration::from_secs(2), "closed after {took:?}");
    let out = curl(&[&format!("http://{}/v1/health", relay.http)]);
    assert!(
        !out.status.success(),
        "curl http:// succeeded: {}",
        lossy(&out.stdout)
    );
    relay.assert_alive("after plain HTTP to the HTTPS port");
    let h = relay.get("/v1/health").unwrap();
    assert_eq!(h.status, 200, "{h:?}");
    record_result(&format!(
        "https: plain HTTP to the TLS port closed after {took:?} with {} bytes (a TLS alert at most)",
        raw.len()
    ));
}

/// The handshake is held to the header timeout: a TCP client that never sends a
/// ClientHello, and one that stops in the middle of it, are closed then. Such clients take
/// connection slots like half-sent requests and are evicted like them: with the cap at 128,
/// 300 of them leave the API answering and the relay's descriptors bounded.
#[test]
fn an_unfinished_handshake_is_closed_at_the_header_timeout() {
    let relay = tls_relay(RelayOpts {
        http_header_timeout_ms: Some(1000),
        datapath: Some("userspace".into()),
        nofile: Some(256),
        ..RelayOpts::default()
    });
    let t0 = Instant::now();
    let mut silent = connect(relay.http);
    let mut partial = connect(relay.http);
    // A handshake record header announcing 512 bytes, and then nothing.
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .unwrap();
    let (out, _) = read_to_close(&mut silent, Duration::from_secs(5));
    let silent_took = t0.elapsed();
    assert!(
        out.is_empty(),
        "answer to a silent client: {:?}",
        lossy(&out)
    );
    let (_, _) = read_to_close(&mut partial, Duration::from_secs(5));
    let partial_took = t0.elapsed();
    for (what, took) in [("silent", silent_took), ("partial", partial_took)] {
        assert!(
            took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
            "{what} client closed after {took:?}, header timeout 1 s"
        );
    }

    let held: Vec<TcpStream> = (0..300)
        .map(|i| connect_from(client_ip(i % 10), relay.http))
        .collect();
    let t = Instant::now();
    let h = relay.get("/v1/health");
    let answered_in = t.elapsed();
    assert_eq!(h.as_ref().map(|r| r.status), Ok(200), "{h:?}");
    let fds = stsync_user::os::proc::fd_count(relay.pid()).unwrap_or(0);
    record_result(&format!(
        "https: unfinished handshakes closed after {silent_took:?} (silent), {partial_took:?} \
         (partial ClientHello); with 300 held, health answered in {answered_in:?}, relay fds {fds}"
    ));
    assert!(fds < 256, "relay holds {fds} descriptors");
    drop(held);
}

/// `stsync-proxy session` over HTTPS: with `--api https://… --cacert`, and from the config
/// alone (which names the certificate); the URLs it prints carry a stream end to end.
/// Without `--cacert` it refuses the certificate; a certificate marked as a CA gets a hint.
#[test]
fn session_subcommand_mints_over_https() {
    let c = clip();
    let relay = tls_relay(RelayOpts::default());
    let dir = TempDir::new("https-session");
    let cert = relay.tls_cert.clone().unwrap();
    let session = |more: &[&str]| {
        let mut args = vec![
            "--config",
            relay.config_path.to_str().unwrap(),
            "session",
            "1",
            "--host",
            "127.0.0.1",
            "--client",
            "url",
        ];
        args.extend_from_slice(more);
        // From another directory: the config's relative PEM paths are its own.
        Command::new(tool("relay"))
            .args(&args)
            .current_dir("/")
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("run stsync-proxy session")
    };
    let url_of = |out: Output| {
        assert!(out.status.success(), "session: {}", lossy(&out.stderr));
        lossy(&out.stdout).trim().to_string()
    };
    let api = relay.api_url();
    let viewer = url_of(session(&[
        "--api",
        &api,
        "--cacert",
        cert.to_str().unwrap(),
    ]));
    let publisher = url_of(session(&["--mode", "publish"]));
    assert!(viewer.ends_with(",m=request"), "{viewer}");
    assert!(publisher.ends_with(",m=publish"), "{publisher}");

    let mut v = SltViewer::start(&dir, "viewer", &viewer);
    sleep_secs(1.0);
    let mut p = BytePublisher::start(&dir, "pub", &publisher, c);
    p.finish(Duration::from_millis(1500));
    v.stop();
    assert_contiguous(
        "viewer from session --cacert",
        &v.output(),
        c,
        Expect {
            from_start: true,
            to_end: true,
            min_packets: c.n_packets(),
        },
    );

    let out = session(&["--api", &api]);
    let err = lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("UnknownIssuer"),
        "without --cacert: {err}"
    );

    // rustls takes no server certificate marked as a CA (curl does): say so.
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let key = rcgen::KeyPair::generate().unwrap();
    let ca_cert = params.self_signed(&key).unwrap();
    let ca_relay = Relay::start(RelayOpts {
        tls: Some((ca_cert.pem(), key.serialize_pem())),
        ..RelayOpts::default()
    });
    let ca_pem = ca_relay.tls_cert.clone().unwrap();
    let out = Command::new(tool("relay"))
        .arg("--config")
        .arg(&ca_relay.config_path)
        .args(["session", "1", "--client", "url", "--api"])
        .arg(ca_relay.api_url())
        .arg("--cacert")
        .arg(&ca_pem)
        .output()
        .unwrap();
    let err = lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("CA:FALSE"),
        "a CA certificate: {err}"
    );
}

/// What the daemon refuses at start, with the field or the file and the reason.
#[test]
fn unusable_tls_files_stop_the_daemon_with_the_path_and_reason() {
    let dir = TempDir::new("https-badcfg");
    let (cert, key) = self_signed();
    let (_, other_key) = self_signed();
    for (name, body) in [
        ("cert.pem", cert.as_str()),
        ("key.pem", key.as_str()),
        ("other-key.pem", other_key.as_str()),
        ("garbage.pem", "not a certificate\n"),
    ] {
        std::fs::write(dir.file(name), body).unwrap();
    }
    let cases: [(&str, &[&str]); 6] = [
        (
            r#""tls_cert": "cert.pem""#,
            &["field `tls_cert` at line 2", "without `tls_key`"],
        ),
        (
            r#""tls_key": "key.pem""#,
            &["field `tls_key` at line 2", "without `tls_cert`"],
        ),
        (
            r#""tls_cert": "missing.pem", "tls_key": "key.pem""#,
            &["missing.pem", "cannot read"],
        ),
        (
            r#""tls_cert": "garbage.pem", "tls_key": "key.pem""#,
            &["garbage.pem", "no certificate"],
        ),
        (
            r#""tls_cert": "cert.pem", "tls_key": "garbage.pem""#,
            &["garbage.pem", "no private key"],
        ),
        (
            r#""tls_cert": "cert.pem", "tls_key": "other-key.pem""#,
            &["other-key.pem", "not the private key of the certificate in"],
        ),
    ];
    for (i, (fields, expect)) in cases.iter().enumerate() {
        let path = dir.file(&format!("config-{i}.json"));
        let text = format!(
            "{{\n  {fields},\n  \"srt_listen\": \"127.0.0.1:0\", \"http_listen\": \"127.0.0.1:0\",\n  \
             \"streams\": [{{ \"id\": \"1\", \"token\": \"3f9c1e0b7a5d42e8c6b1f0a9d37e5c24\" }}]\n}}\n"
        );
        std::fs::write(&path, text).unwrap();
        let err = run("relay", &["--config", path.to_str().unwrap()])
            .expect_err("the relay started with unusable TLS settings");
        for e in *expect {
            assert!(err.contains(e), "config {i}: {e:?} missing from:\n{err}");
        }
    }
}

/// A hostile client, one address, completing TLS handshakes back to back for 2 s: the
/// relay does at most its burst of 100 plus 50 a second of them (each costs a signature);
/// the rest of its connections are closed on accept, before any handshake, and another
/// address is served promptly meanwhile.
#[test]
fn a_tls_handshake_flood_from_one_address_is_held_to_its_rate() {
    let relay = tls_relay(RelayOpts::default());
    let cert = relay.tls_cert.clone().expect("a TLS relay");
    let config = stsync_user::tls::trusting(&cert).expect("the relay's certificate");
    let hostile = client_ip(0);
    let (mut done, mut refused) = (0u32, 0u32);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(2) {
        let mut tcp = connect_from(hostile, relay.http);
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        let mut tls = rustls::ClientConnection::new(config.clone(), name).unwrap();
        let mut ok = true;
        while tls.is_handshaking() {
            if tls.complete_io(&mut tcp).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            done += 1;
        } else {
            refused += 1;
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let t = Instant::now();
    let h = relay.get("/v1/health");
    let other_took = t.elapsed();
    record_result(&format!(
        "https per address: {done} handshakes done and {refused} connections refused for one \
         address in {secs:.1} s; health from another answered in {other_took:?}"
    ));
    assert_eq!(h.map(|r| r.status), Ok(200));
    assert!(
        f64::from(done) <= 100.0 + 50.0 * secs + 5.0,
        "{done} handshakes in {secs:.1} s"
    );
    assert!(refused > 0, "nothing refused ({done} handshakes)");
    assert!(other_took < Duration::from_secs(1), "{other_took:?}");
}
