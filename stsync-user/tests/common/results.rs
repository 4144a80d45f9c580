//! Result files.

use super::*;

/// Appends a line to target/tmp/stsync-tests/results.txt (numbers the lead may quote).
pub fn record_result(line: &str) {
    let _ = fs::create_dir_all(tmp_root());
    if let Ok(mut f) = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp_root().join("results.txt"))
    {
        let _ = writeln!(f, "{line}");
    }
    eprintln!("[result] {line}");
}
