//! Ffmpeg frame checks.

use super::*;

/// Video frame CRCs from ffmpeg's framecrc output.
pub fn parse_framecrc(text: &str) -> Vec<u32> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(|x| x.trim()).collect();
            if f.len() < 6 {
                return None;
            }
            u32::from_str_radix(f[5].trim_start_matches("0x"), 16).ok()
        })
        .collect()
}

pub fn framecrc_args() -> Vec<&'static str> {
    vec![
        "-map",
        "0:v:0",
        "-fps_mode",
        "passthrough",
        "-flush_packets",
        "1",
        "-f",
        "framecrc",
    ]
}

pub fn decode_frames_of_file(path: &Path) -> Vec<u32> {
    let mut args = vec![
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "error",
        "-i",
        path.to_str().unwrap(),
    ];
    args.extend(framecrc_args());
    args.push("-");
    let out = run("ffmpeg", &args).unwrap_or_else(|e| panic!("decode {}: {e}", path.display()));
    parse_framecrc(&out)
}

/// Asserts a viewer decoded frames identical to the clip's: one contiguous run of the
/// reference frames of at least `min_frames`, at most `max_lead` undecodable/odd frames
/// before it (a viewer that joins mid-GOP), none after it.
pub fn assert_frames(
    label: &str,
    frames: &[u32],
    clip: &Clip,
    min_frames: usize,
    max_lead: usize,
) -> Run {
    assert_frames_tail(label, frames, clip, min_frames, max_lead, 0)
}

/// `assert_frames`, allowing `max_tail` differing frames after the run: the clip is cut
/// at a packet boundary, so its last frame is incomplete, and a remuxing publisher
/// (ffmpeg) may pass that partial frame on differently.
pub fn assert_frames_tail(
    label: &str,
    frames: &[u32],
    clip: &Clip,
    min_frames: usize,
    max_lead: usize,
    max_tail: usize,
) -> Run {
    let reference = clip.reference_frames();
    let runs = find_runs(frames, reference);
    let ctx = format!(
        "{label}: {} frames decoded, reference {} frames; {}",
        frames.len(),
        reference.len(),
        runs.describe()
    );
    let best = runs
        .longest()
        .unwrap_or_else(|| panic!("{ctx}\n  no frame matches the source"));
    assert!(
        best.len >= min_frames,
        "{ctx}\n  longest identical run {} frames < {min_frames}",
        best.len
    );
    assert!(
        best.view_start <= max_lead,
        "{ctx}\n  {} frames before the matching run (allowed {max_lead})",
        best.view_start
    );
    assert!(
        frames.len() - (best.view_start + best.len) <= max_tail,
        "{ctx}\n  {} frames after the matching run differ from the source (corruption)",
        frames.len() - (best.view_start + best.len)
    );
    eprintln!(
        "[check] {label}: OK, {} frames identical to source frames [{}..{})",
        best.len,
        best.src_start,
        best.src_start + best.len
    );
    best
}
