//! Limits of a stream's delay. A delay moves viewers' play-out later by raising the
//! timestamps they get, so every viewer's receive buffer holds that much more of the stream:
//! packets/s × (latency + delay) must fit in it, with room to spare for bursts and
//! retransmissions.

/// The largest delay the API or config.json accepts, whatever the stream's rate.
pub const MAX_DELAY_MS: u64 = 30_000;
/// libsrt's default receive buffer (SRTO_RCVBUF), packets; viewers rarely change it.
pub const LIBSRT_RCVBUF_PACKETS: u64 = 8192;
/// The share of that buffer a delay may fill.
const BUDGET_PACKETS: u64 = LIBSRT_RCVBUF_PACKETS * 3 / 4;

/// Whether a stream at `packet_rate` packets/s, whose viewers' latency is `latency_ms`, can
/// be delayed by `delay_ms`; the error says why not, in words for an operator.
pub fn check(delay_ms: u64, packet_rate: u64, latency_ms: u64) -> Result<(), String> {
    if delay_ms > MAX_DELAY_MS {
        return Err(format!(
            "delay_ms must be between 0 and {MAX_DELAY_MS}, got {delay_ms}"
        ));
    }
    let needed = packet_rate * (latency_ms + delay_ms) / 1000;
    if needed > BUDGET_PACKETS {
        let max = (BUDGET_PACKETS * 1000 / packet_rate.max(1)).saturating_sub(latency_ms);
        return Err(format!(
            "a delay of {delay_ms} ms needs about {needed} packets of receive buffer in every viewer at this stream's {packet_rate} packets/s and {latency_ms} ms latency; libsrt's default buffer is {LIBSRT_RCVBUF_PACKETS} packets, so at most {max} ms fits"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_and_headroom() {
        assert!(check(0, 0, 120).is_ok());
        assert!(
            check(MAX_DELAY_MS, 0, 120).is_ok(),
            "no publisher: only the bound"
        );
        assert!(check(MAX_DELAY_MS + 1, 0, 120)
            .unwrap_err()
            .contains("between 0 and"));
        // 4 Mbit/s ≈ 380 packets/s: 6144 packets last ~16 s.
        assert!(check(10_000, 380, 120).is_ok());
        let e = check(20_000, 380, 120).unwrap_err();
        assert!(e.contains("at most 16048 ms"), "{e}");
    }
}
