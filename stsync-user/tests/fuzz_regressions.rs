//! Replays saved fuzz inputs through the harnesses the `cargo fuzz` targets run
//! (`stsync_user::fuzzing`), on stable, in the normal `cargo test`: every input a fuzzer
//! found failing (fuzz/regressions/<target>/, minimised) and the seed corpus made from real
//! libsrt captures (fuzz/corpus/<target>/). See fuzz/README.md.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use stsync_user::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files under `dir/<target>/` for every target, sorted.
fn inputs(dir: &str) -> Vec<(&'static str, PathBuf)> {
    let mut all = Vec::new();
    for &target in fuzzing::TARGETS {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = entries
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        all.extend(files.into_iter().map(|p| (target, p)));
    }
    all
}

/// Runs every input, then fails naming each one that panicked.
fn replay(dir: &str) -> usize {
    let inputs = inputs(dir);
    let failed: Vec<String> = inputs
        .iter()
        .filter(|(target, path)| {
            let data = std::fs::read(path).unwrap();
            catch_unwind(AssertUnwindSafe(|| fuzzing::run(target, &data))).is_err()
        })
        .map(|(_, p)| p.display().to_string())
        .collect();
    assert!(failed.is_empty(), "failing inputs:\n{}", failed.join("\n"));
    inputs.len()
}

#[test]
fn inputs_fuzzers_found_failing_now_pass() {
    assert!(replay("regressions") > 0);
}

#[test]
fn seed_corpus_replays_clean() {
    assert!(replay("corpus") > 0);
}

/// The relay seeds are real callers' datagrams with their captured socket IDs, cookies and
/// session keys: the harness's fix-ups must get them through the handshake to publishing,
/// fan-out and retransmission, or the fuzzer starts from the listener's front door only.
#[test]
fn relay_seeds_from_captures_reach_fan_out() {
    let runs: Vec<(PathBuf, fuzzing::RelayRun)> = inputs("corpus")
        .into_iter()
        .filter(|(t, _)| *t == "relay")
        .map(|(_, p)| {
            let run = fuzzing::relay(&std::fs::read(&p).unwrap());
            (p, run)
        })
        .collect();
    for (p, r) in &runs {
        eprintln!("{}: {r:?}", p.file_name().unwrap().to_string_lossy());
    }
    let total = |f: fn(&fuzzing::RelayRun) -> usize| runs.iter().map(|(_, r)| f(r)).sum::<usize>();
    assert!(total(|r| r.conclusions) >= 10, "connections accepted");
    assert!(total(|r| r.rejections) >= 2, "callers rejected");
    assert!(total(|r| r.data_sent) >= 1000, "data fanned out to viewers");
}
