//! Replays saved fuzz inputs through the harnesses the `cargo fuzz` targets run
//! (`stsync_user::fuzzing`), on stable, in the normal `cargo test`: every input a fuzzer
//! found failing (fuzz/regressions/<target>/, minimised). See fuzz/README.md.

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
