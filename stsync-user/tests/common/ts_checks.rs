//! MPEG-TS checks.

use super::*;

pub struct Aligned<'a> {
    pub packets: Vec<&'a [u8]>,
    /// Times the sync was lost after the first packet.
    pub resyncs: usize,
    pub skipped_bytes: usize,
}

pub(crate) fn find_sync(b: &[u8], from: usize) -> Option<usize> {
    let mut o = from;
    while o + TS <= b.len() {
        if b[o] == 0x47 && (1..=4).all(|k| o + k * TS >= b.len() || b[o + k * TS] == 0x47) {
            return Some(o);
        }
        o += 1;
    }
    None
}

/// Splits a byte stream into TS packets: aligns on the sync byte (0x47 every 188 bytes),
/// accepts a packet only when the next one starts with a sync byte too (or the data ends
/// exactly there), and re-aligns after a break.
pub fn ts_align(b: &[u8]) -> Aligned<'_> {
    let mut packets = Vec::with_capacity(b.len() / TS);
    let mut resyncs = 0;
    let mut skipped = 0;
    let mut pos = 0;
    loop {
        let o = match find_sync(b, pos) {
            Some(o) => o,
            None => {
                skipped += b.len() - pos;
                break;
            }
        };
        skipped += o - pos;
        let mut p = o;
        while p + TS <= b.len() && b[p] == 0x47 && (p + TS == b.len() || b[p + TS] == 0x47) {
            packets.push(&b[p..p + TS]);
            p += TS;
        }
        if p + TS > b.len() {
            skipped += b.len() - p;
            break;
        }
        // The packet at p is not followed by a sync byte: data is missing inside it.
        resyncs += 1;
        pos = p + 1;
        skipped += 1;
    }
    Aligned {
        packets,
        resyncs,
        skipped_bytes: skipped,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub view_start: usize,
    pub src_start: usize,
    pub len: usize,
}

#[derive(Debug, Clone)]
pub struct Runs {
    pub runs: Vec<Run>,
    /// View items that belong to no run (not found in the source in sequence).
    pub unmatched: usize,
    pub view_len: usize,
}

impl Runs {
    pub fn matched(&self) -> usize {
        self.runs.iter().map(|r| r.len).sum()
    }
    pub fn longest(&self) -> Option<Run> {
        self.runs.iter().copied().max_by_key(|r| r.len)
    }
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} items, {} runs, {} unmatched",
            self.view_len,
            self.runs.len(),
            self.unmatched
        );
        for r in self.runs.iter().take(12) {
            s += &format!(
                "\n    view[{}..{}] = src[{}..{}]",
                r.view_start,
                r.view_start + r.len,
                r.src_start,
                r.src_start + r.len
            );
        }
        if self.runs.len() > 12 {
            s += "\n    ...";
        }
        s
    }
}

/// Decomposes `view` into runs that are contiguous substrings of `src`. Items repeat in
/// real clips (stuffing packets), so each run is anchored on an item that occurs exactly
/// once in `src` and extended both ways.
pub fn find_runs<T: Eq + Hash>(view: &[T], src: &[T]) -> Runs {
    let mut count: HashMap<&T, (u32, usize)> = HashMap::with_capacity(src.len());
    for (i, x) in src.iter().enumerate() {
        let e = count.entry(x).or_insert((0, i));
        e.0 += 1;
    }
    let unique_pos = |x: &T| -> Option<usize> {
        match count.get(x) {
            Some((1, p)) => Some(*p),
            _ => None,
        }
    };
    const LOOK: usize = 2000;
    let mut runs: Vec<Run> = Vec::new();
    let mut unmatched = 0;
    let mut i = 0;
    while i < view.len() {
        let anchor =
            (i..view.len().min(i + LOOK)).find_map(|u| unique_pos(&view[u]).map(|p| (u, p)));
        let (u, p) = match anchor {
            Some(a) => a,
            None => {
                // Nothing identifiable ahead: try continuing the previous run, else skip.
                unmatched += 1;
                i += 1;
                continue;
            }
        };
        let mut s = u;
        while s > i && s - 1 + p >= u && src[s - 1 + p - u] == view[s - 1] {
            s -= 1;
        }
        let mut e = u + 1;
        while e < view.len() && e + p - u < src.len() && view[e] == src[e + p - u] {
            e += 1;
        }
        unmatched += s - i;
        runs.push(Run {
            view_start: s,
            src_start: s + p - u,
            len: e - s,
        });
        i = e;
    }
    Runs {
        runs,
        unmatched,
        view_len: view.len(),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Expect {
    /// The run must start at the source's first packet.
    pub from_start: bool,
    /// The run must end at the source's last packet.
    pub to_end: bool,
    pub min_packets: usize,
}

/// Asserts that `received` is, once aligned, exactly one contiguous run of `clip`'s TS
/// packets (no hole, no duplicate, no foreign packet) of at least `min_packets`. MPEG-TS
/// null packets are ignored (see `Clip::padded`).
pub fn assert_contiguous(label: &str, received: &[u8], clip: &Clip, exp: Expect) -> Run {
    let mut al = ts_align(received);
    // Null packets only pad a publisher's tail (`Clip::padded`); the clips have none.
    al.packets
        .retain(|p| !(p[1] & 0x1f == 0x1f && p[2] == 0xff));
    let src = clip.packets();
    let runs = find_runs(&al.packets, &src);
    let ctx = format!(
        "{label}: received {} bytes, {} TS packets (skipped {} bytes, {} resyncs), source {} packets; {}",
        received.len(),
        al.packets.len(),
        al.skipped_bytes,
        al.resyncs,
        src.len(),
        runs.describe()
    );
    assert!(!al.packets.is_empty(), "{ctx}\n  no TS packets received");
    assert!(
        runs.runs.len() == 1 && runs.unmatched == 0 && al.resyncs == 0,
        "{ctx}\n  expected one contiguous run of the source's packets (a hole, duplicate or foreign packet breaks it)"
    );
    let r = runs.runs[0];
    assert!(
        r.len >= exp.min_packets,
        "{ctx}\n  run of {} packets < expected minimum {}",
        r.len,
        exp.min_packets
    );
    if exp.from_start {
        assert_eq!(
            r.src_start, 0,
            "{ctx}\n  the run does not start at the clip's first packet"
        );
    }
    if exp.to_end {
        assert_eq!(
            r.src_start + r.len,
            src.len(),
            "{ctx}\n  the run does not reach the clip's last packet"
        );
    }
    eprintln!(
        "[check] {label}: OK, src packets [{}..{}) of {} ({} bytes of partial packets skipped)",
        r.src_start,
        r.src_start + r.len,
        src.len(),
        al.skipped_bytes
    );
    r
}

/// `received` is the whole clip, byte for byte: one run from its first packet to its last.
pub fn assert_whole(label: &str, received: &[u8], clip: &Clip) -> Run {
    let whole = Expect {
        from_start: true,
        to_end: true,
        min_packets: clip.n_packets(),
    };
    assert_contiguous(label, received, clip, whole)
}

/// Continuity-counter breaks, per PID (null packets ignored; one duplicate allowed;
/// discontinuity indicator honoured). Returns human-readable descriptions.
pub fn cc_breaks(packets: &[&[u8]]) -> Vec<String> {
    let mut last: HashMap<u16, u8> = HashMap::new();
    let mut breaks = Vec::new();
    for (i, p) in packets.iter().enumerate() {
        let pid = (((p[1] & 0x1f) as u16) << 8) | p[2] as u16;
        if pid == 0x1fff {
            continue;
        }
        let afc = (p[3] >> 4) & 3;
        let cc = p[3] & 0x0f;
        let has_payload = afc & 1 != 0;
        let disc = afc & 2 != 0 && p[4] > 0 && p[5] & 0x80 != 0;
        match last.get(&pid) {
            Some(&prev) if !disc => {
                let ok = if has_payload {
                    cc == (prev + 1) & 0x0f || cc == prev
                } else {
                    cc == prev
                };
                if !ok {
                    breaks.push(format!("packet {i}: pid {pid:#x} cc {prev} -> {cc}"));
                }
            }
            _ => {}
        }
        last.insert(pid, cc);
    }
    breaks
}
