//! The clocks of payload timestamps and of kernel receive timestamps.

/// CLOCK_MONOTONIC now, ns: the clock of `Instant` on Linux, of `bpf_ktime_get_ns` and of
/// the benchmark's payload timestamps.
pub fn monotonic_ns() -> u64 {
    now_ns(libc::CLOCK_MONOTONIC)
}

/// CLOCK_REALTIME − CLOCK_MONOTONIC, ns: converts kernel receive timestamps
/// (SO_TIMESTAMPNS, realtime) to the monotonic clock. Read between two monotonic
/// readings, so the error is half the time the three reads take.
pub fn realtime_offset_ns() -> i64 {
    let before = monotonic_ns();
    let real = now_ns(libc::CLOCK_REALTIME);
    let after = monotonic_ns();
    real as i64 - before.midpoint(after) as i64
}

fn now_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    #[test]
    fn monotonic_ns_moves_with_instant() {
        let (i0, n0) = (Instant::now(), monotonic_ns());
        std::thread::sleep(Duration::from_millis(5));
        let (n1, i1) = (monotonic_ns(), Instant::now());
        let dn = n1 - n0;
        assert!(dn >= 5_000_000, "{dn}");
        assert!(dn <= i1.duration_since(i0).as_nanos() as u64 + 1_000_000);
    }

    #[test]
    fn realtime_offset_maps_monotonic_to_wall_clock() {
        let off = realtime_offset_ns();
        let mono = monotonic_ns() as i64;
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos() as i64;
        let err = (mono + off - wall).abs();
        assert!(err < 50_000_000, "{err} ns off");
    }
}
