//! Where the packets a viewer gets fall against its play-out clock, read the way libsrt
//! reads timestamps (`srtcore/tsbpd_time.cpp`): a packet stamped `ts` plays at the
//! viewer's zero + `ts` + latency, and near the 32-bit wrap (every 71.6 minutes) a
//! timestamp within 30 s of it is taken as belonging to the wrap period the clock is in.
//! A timestamp the relay reads as "a little old" can therefore be, for libsrt, 71 minutes
//! in the future: this module reads it libsrt's way.

use std::time::Duration;

/// libsrt's `TSBPD_WRAP_PERIOD`, µs.
const WRAP_PERIOD: u64 = 30_000_000;
const WRAP: u64 = 1 << 32;
/// A viewer's play-out lead this far outside its latency (and stream delay) is warned about.
pub const FAR_OFF_US: i64 = 1_000_000;

/// Timestamp `ts` on the viewer's unwrapped clock, µs since its zero, as libsrt reads it
/// when that clock reads `clock`.
pub fn unwrap(clock: u64, ts: u32) -> u64 {
    let period = clock & !(WRAP - 1);
    let low = clock & (WRAP - 1);
    let ts = u64::from(ts);
    if low >= WRAP - WRAP_PERIOD && ts <= 2 * WRAP_PERIOD {
        // Just before a wrap: small timestamps are the next period's.
        period + WRAP + ts
    } else if low <= 2 * WRAP_PERIOD && ts >= WRAP - WRAP_PERIOD && period >= WRAP {
        // Just after one: large timestamps are still the previous period's.
        period - WRAP + ts
    } else {
        period + ts
    }
}

/// A timestamp older than the viewer's zero (which the relay's wrapping arithmetic would
/// take as merely old): libsrt reads it as 2^32 µs later.
pub fn before_zero(clock: u64, ts: u32) -> bool {
    let age = i64::from((clock as u32).wrapping_sub(ts) as i32);
    age > clock as i64
}

/// How long before its play-out a packet stamped `ts` reached a viewer whose clock read
/// `clock` when it acknowledged it, with round-trip time `rtt_us` (the packet arrived
/// about half of it before the ACK came back). Negative: it came too late.
pub fn lead_us(clock: u64, ts: u32, latency: Duration, rtt_us: u64) -> i64 {
    let play = unwrap(clock, ts) as i64 + latency.as_micros() as i64;
    play - (clock as i64 - (rtt_us / 2) as i64)
}

/// A lead no live viewer has: packets held far longer than its latency and the stream's
/// delay (its time base and the timestamps disagree), or acknowledged long after their time.
pub fn far_off(lead_us: i64, latency: Duration, delay_us: u32) -> bool {
    let max = latency.as_micros() as i64 + i64::from(delay_us) + FAR_OFF_US;
    lead_us > max || lead_us < -FAR_OFF_US
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAT: Duration = Duration::from_millis(120);

    #[test]
    fn a_timestamp_before_the_viewers_zero_is_71_minutes_ahead() {
        // The viewer's clock reads 1.005 s; a packet 30 ms older than its zero.
        let clock = 1_005_000;
        let ts = 0u32.wrapping_sub(30_000);
        assert!(before_zero(clock, ts));
        let lead = lead_us(clock, ts, LAT, 0);
        assert!(lead > 4_000_000_000, "{lead}");
        assert!(far_off(lead, LAT, 0));
        // A packet 30 ms older than the viewer's clock now, but after its zero: fine.
        assert!(!before_zero(clock, 975_000));
        let lead = lead_us(clock, 975_000, LAT, 2_000);
        assert_eq!(lead, 120_000 - 30_000 + 1_000);
        assert!(!far_off(lead, LAT, 0));
        // A stream delay of 2 s is a lead of 2 s, not far off; 4 s is.
        assert!(!far_off(lead_us(clock, 3_005_000, LAT, 0), LAT, 2_000_000));
        assert!(far_off(lead_us(clock, 5_005_000, LAT, 0), LAT, 2_000_000));
        // Acknowledged 2 s after its play-out.
        assert!(far_off(
            lead_us(clock + 2_120_000, 1_000_000, LAT, 0),
            LAT,
            0
        ));
    }

    #[test]
    fn across_the_wrap_libsrt_and_the_relay_agree() {
        // Clock 10 ms before the wrap: a packet stamped 5 ms after it plays in 15 ms + latency.
        let clock = WRAP - 10_000;
        assert_eq!(lead_us(clock, 5_000, LAT, 0), 15_000 + 120_000);
        assert!(!before_zero(clock, 5_000));
        // Clock 10 ms after it: a packet stamped 5 ms before it is 15 ms old.
        let clock = WRAP + 10_000;
        assert_eq!(
            lead_us(clock, (WRAP - 5_000) as u32, LAT, 0),
            120_000 - 15_000
        );
        assert!(!before_zero(clock, (WRAP - 5_000) as u32));
        // Long after the wrap, ordinary reading.
        let clock = WRAP + 100_000_000;
        assert_eq!(lead_us(clock, 100_000_000, LAT, 0), 120_000);
    }
}
