//! OBS Studio as the publisher, for real: Debian's obs-studio 29 runs headless under Xvfb
//! (Mesa's software GL). The test writes OBS a profile (simple output, x264, 640x360 at
//! 30 fps, the custom server URL that `stsync-proxy session --client obs` prints) and a
//! scene (one colour source), starts it with `--startstreaming`, and a srt-live-transmit
//! viewer of the relay must receive a stream that decodes.
//!
//! Needs `obs` and `xvfb-run` (`cargo xtask test` installs obs-studio and xvfb); skips with
//! the reason otherwise, and fails instead under CI.

mod common;

use common::*;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// The server URL of `stsync-proxy session 1 --mode publish --client obs`.
fn obs_server(relay: &Relay) -> String {
    let out = Command::new(tool("relay"))
        .arg("--config")
        .arg(&relay.config_path)
        .args(["session", "1", "--mode", "publish", "--client", "obs"])
        .args(["--host", &relay.srt.ip().to_string()])
        .output()
        .expect("run stsync-proxy session");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "stsync-proxy session: {text}");
    // `Settings > Stream: Service "Custom...", Server "<url>", Stream Key left empty`
    let server = text
        .split("Server \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no server URL in: {text}"));
    eprintln!("[session] obs: {text}");
    server.to_string()
}

/// OBS's configuration under `home`: global settings (no first-run wizard, no update
/// check), profile `Stsync` streaming to `server`, scene collection `Stsync`.
fn write_obs_config(home: &Path, server: &str) {
    let obs = home.join(".config/obs-studio");
    let profile = obs.join("basic/profiles/Stsync");
    let scenes = obs.join("basic/scenes");
    std::fs::create_dir_all(&profile).unwrap();
    std::fs::create_dir_all(&scenes).unwrap();
    std::fs::write(
        obs.join("global.ini"),
        "[General]\nEnableAutoUpdates=false\nConfirmOnExit=false\n\n\
         [BasicWindow]\nWarnBeforeStartingStream=false\nWarnBeforeStoppingStream=false\n\n\
         [Basic]\nProfile=Stsync\nProfileDir=Stsync\nSceneCollection=Stsync\nSceneCollectionFile=Stsync\n",
    )
    .unwrap();
    std::fs::write(
        profile.join("basic.ini"),
        "[General]\nName=Stsync\n\n[Output]\nMode=Simple\n\n\
         [SimpleOutput]\nVBitrate=800\nStreamEncoder=x264\nABitrate=128\nPreset=ultrafast\n\n\
         [Video]\nBaseCX=640\nBaseCY=360\nOutputCX=640\nOutputCY=360\nFPSType=0\nFPSCommon=30\n",
    )
    .unwrap();
    let service = serde_json::json!({
        "type": "rtmp_custom",
        "settings": {"server": server, "key": "", "use_auth": false, "bwtest": false},
    });
    std::fs::write(profile.join("service.json"), service.to_string()).unwrap();
    let collection = serde_json::json!({
        "name": "Stsync",
        "current_scene": "Scene",
        "current_program_scene": "Scene",
        "scene_order": [{"name": "Scene"}],
        "sources": [
            {"id": "scene", "versioned_id": "scene", "name": "Scene",
             "uuid": "5f1c0000-0000-4000-8000-000000000001",
             "settings": {"id_counter": 1, "items": [
                 {"name": "Colour", "id": 1, "visible": true,
                  "pos": {"x": 0, "y": 0}, "scale": {"x": 1, "y": 1}}]}},
            {"id": "color_source", "versioned_id": "color_source_v3", "name": "Colour",
             "uuid": "5f1c0000-0000-4000-8000-000000000002",
             "settings": {"color": 4278255360u32, "width": 640, "height": 360}}
        ]
    });
    std::fs::write(scenes.join("Stsync.json"), collection.to_string()).unwrap();
}

/// xvfb-run and OBS, one process group: stopped, and on drop (a failed test too) killed,
/// as a group. OBS outlives xvfb-run's own exit, so the leader's status says nothing.
struct ObsGroup(Proc);

impl ObsGroup {
    fn stop(&mut self) {
        self.0.signal_group(libc::SIGTERM);
        self.0.wait_exit(Duration::from_secs(5));
        self.0.signal_group(libc::SIGKILL);
    }
}

impl Drop for ObsGroup {
    fn drop(&mut self) {
        self.0.signal_group(libc::SIGKILL);
    }
}

/// Whether an OBS process with this test's HOME still runs.
fn obs_left(home: &Path) -> bool {
    let want = format!("HOME={}", home.display());
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            comm.trim() == "obs" && env.split(|&b| b == 0).any(|kv| kv == want.as_bytes())
        })
}

#[test]
fn obs_publishes_a_stream_that_a_viewer_decodes() {
    let in_path = |p: &str| {
        std::env::var("PATH")
            .unwrap_or_default()
            .split(':')
            .any(|d| Path::new(d).join(p).is_file())
    };
    let missing: Vec<&str> = ["obs", "xvfb-run"]
        .into_iter()
        .filter(|p| !in_path(p))
        .collect();
    if !missing.is_empty() {
        let why = format!(
            "{} not installed (cargo xtask test installs them)",
            missing.join(", ")
        );
        assert!(std::env::var("CI").is_err(), "obs e2e: {why}");
        eprintln!("[skip] obs_publishes_a_stream_that_a_viewer_decodes: {why}");
        return;
    }
    let relay = Relay::start_default();
    let server = obs_server(&relay);
    let dir = TempDir::new("obs");
    let home = dir.path().join("home");
    write_obs_config(&home, &server);
    let mut v = SltViewer::start(&dir, "viewer", &relay.viewer_url("1"));
    let err = dir.file("obs.log");
    let mut c = Command::new("xvfb-run");
    c.args(["-a", "-s", "-screen 0 1280x720x24", "obs"])
        .args([
            "--startstreaming",
            "--profile",
            "Stsync",
            "--collection",
            "Stsync",
        ])
        .args(["--multi", "--disable-updater"])
        .env("HOME", &home)
        .env("LIBGL_ALWAYS_SOFTWARE", "1")
        .stdin(Stdio::null())
        .stdout(out_file(&err))
        .stderr(out_file(&dir.file("obs.stderr")));
    let mut obs = ObsGroup(Proc::spawn("obs", c, libc::SIGTERM, Some(err.clone())));
    let log = || std::fs::read_to_string(&err).unwrap_or_default();
    assert!(
        relay.wait_connections("publish", 1, Duration::from_secs(45)),
        "OBS did not connect as publisher; its log:\n{}\nrelay:\n{}",
        tail_lines(&log(), 30),
        tail_lines(&relay.log(), 10)
    );
    assert!(
        v.wait_bytes(200_000, Duration::from_secs(30)),
        "the viewer got no stream from OBS; OBS log:\n{}",
        tail_lines(&log(), 30)
    );
    sleep_secs(4.0);
    v.assert_running("while OBS streamed");
    v.stop();
    obs.stop();
    assert!(
        wait_until(Duration::from_secs(5), || !obs_left(&home)),
        "OBS still running after the stop"
    );
    let frames = decode_frames_of_file(&v.out);
    let line = format!(
        "obs: OBS Studio 29 headless (Xvfb, software GL) published through the relay: the viewer decoded {} video frames",
        frames.len()
    );
    eprintln!("{line}");
    record_result(&line);
    assert!(
        frames.len() >= 60,
        "{line}: expected at least 2 s at 30 fps"
    );
    assert!(
        log().contains("==== Streaming Start"),
        "{}",
        tail_lines(&log(), 30)
    );
}
