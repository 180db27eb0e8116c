//! Freshness: timestamps, per-sender sequence numbers and the session replay window.
//!
//! `pair/` and `invite/` requests must carry a `ts` within ±60 s of the robot's
//! clock and a `seq` strictly above the last one seen from that sender since the
//! robot started. In a call, `session/` requests need a `seq` not seen before
//! inside a 64-wide sliding window, so QoS 1 redeliveries (duplicates) and
//! replays are dropped while a little reordering is tolerated.

use std::collections::HashMap;

use crate::identity::ClientId;

/// The largest allowed difference between a request's `ts` and the robot's clock.
pub const MAX_SKEW_MS: u64 = 60_000;

/// True when `ts_ms` is within ±[`MAX_SKEW_MS`] of `now_ms`.
pub fn ts_is_fresh(ts_ms: u64, now_ms: u64) -> bool {
    ts_ms.abs_diff(now_ms) <= MAX_SKEW_MS
}

/// Largest number of senders remembered; the table is bounded so a flood of
/// senders (which must each have passed a MAC check to get here) cannot grow it
/// without limit. When full, the lowest entry is evicted; an evicted sender's
/// next request is judged by its timestamp alone, which still bounds replays to
/// the ±60 s window.
const MAX_TRACKED_SENDERS: usize = 1024;

/// How a `seq` compares with the last one seen from its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqCheck {
    /// Above the last one: accepted and recorded.
    New,
    /// Equal to the last one: a QoS 1 redelivery of what was just handled.
    Duplicate,
    /// Below the last one: an old message, replayed or badly delayed.
    Old,
}

/// The last `seq` seen from each sender (for `pair/` and `invite/`).
#[derive(Debug, Default)]
pub struct SeqTracker {
    last: HashMap<ClientId, u64>,
}

impl SeqTracker {
    /// Accept `seq` only if it is strictly above the last one recorded for
    /// `from`; then record it. Call this only after the MAC has been verified,
    /// or a forger could advance an honest sender's counter.
    pub fn check_and_record(&mut self, from: &ClientId, seq: u64) -> bool {
        self.classify_and_record(from, seq) == SeqCheck::New
    }

    /// Like [`SeqTracker::check_and_record`], telling a redelivery (equal)
    /// from an old message (below).
    pub fn classify_and_record(&mut self, from: &ClientId, seq: u64) -> SeqCheck {
        if let Some(&last) = self.last.get(from) {
            if seq == last {
                return SeqCheck::Duplicate;
            }
            if seq < last {
                return SeqCheck::Old;
            }
        } else if self.last.len() >= MAX_TRACKED_SENDERS {
            if let Some(victim) = self.last.iter().min_by_key(|(_, s)| **s).map(|(k, _)| k.clone()) {
                self.last.remove(&victim);
            }
        }
        self.last.insert(from.clone(), seq);
        SeqCheck::New
    }
}

/// Why a session message was refused by the replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    /// Seen before inside the window (a QoS 1 redelivery or a replay).
    Duplicate,
    /// More than 63 below the highest `seq` seen: too old to tell, dropped.
    TooOld,
}

/// A 64-wide sliding replay window (RFC 4303 §3.4.3 style bitmap).
#[derive(Debug, Default, Clone)]
pub struct ReplayWindow {
    /// Highest seq accepted so far; `None` before the first message.
    highest: Option<u64>,
    /// Bit i set: `highest - i` has been seen.
    seen: u64,
}

impl ReplayWindow {
    /// Width of the window.
    pub const WIDTH: u64 = 64;

    /// Accept `seq` if it was not seen before and is inside the window; record it.
    pub fn check_and_record(&mut self, seq: u64) -> Result<(), ReplayError> {
        let Some(high) = self.highest else {
            self.highest = Some(seq);
            self.seen = 1;
            return Ok(());
        };
        if seq > high {
            let shift = seq - high;
            self.seen = if shift >= Self::WIDTH { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = Some(seq);
            return Ok(());
        }
        let back = high - seq;
        if back >= Self::WIDTH {
            return Err(ReplayError::TooOld);
        }
        let bit = 1u64 << back;
        if self.seen & bit != 0 {
            return Err(ReplayError::Duplicate);
        }
        self.seen |= bit;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn skew_is_symmetric_and_inclusive() {
        let now = 1_764_072_000_000;
        assert!(ts_is_fresh(now, now));
        assert!(ts_is_fresh(now - 60_000, now));
        assert!(ts_is_fresh(now + 60_000, now));
        assert!(!ts_is_fresh(now - 60_001, now));
        assert!(!ts_is_fresh(now + 60_001, now));
        assert!(!ts_is_fresh(0, now));
        assert!(!ts_is_fresh(u64::MAX, now));
    }

    #[test]
    fn seq_must_increase_per_sender() {
        let a: ClientId = "36940d0ece18aebf69d0ef6825534e24".parse().unwrap();
        let b: ClientId = "0123456789abcdef0123456789abcdef".parse().unwrap();
        let mut t = SeqTracker::default();
        assert!(t.check_and_record(&a, 5));
        assert!(!t.check_and_record(&a, 5));
        assert!(!t.check_and_record(&a, 4));
        assert!(t.check_and_record(&b, 1));
        assert!(t.check_and_record(&a, 6));
        assert_eq!(t.classify_and_record(&a, 6), SeqCheck::Duplicate);
        assert_eq!(t.classify_and_record(&a, 5), SeqCheck::Old);
        assert_eq!(t.classify_and_record(&a, 7), SeqCheck::New);
    }

    #[test]
    fn window_accepts_reordering_and_drops_duplicates_and_old() {
        let mut w = ReplayWindow::default();
        assert_eq!(w.check_and_record(10), Ok(()));
        assert_eq!(w.check_and_record(12), Ok(()));
        assert_eq!(w.check_and_record(11), Ok(()));
        assert_eq!(w.check_and_record(11), Err(ReplayError::Duplicate));
        assert_eq!(w.check_and_record(10), Err(ReplayError::Duplicate));
        assert_eq!(w.check_and_record(100), Ok(()));
        assert_eq!(w.check_and_record(37), Ok(())); // 63 below: still inside
        assert_eq!(w.check_and_record(36), Err(ReplayError::TooOld));
        assert_eq!(w.check_and_record(12), Err(ReplayError::TooOld));
    }

    proptest! {
        /// Against a reference model (a set of everything seen plus the highest
        /// seq): a seq is accepted iff it is new and within 63 of the highest.
        #[test]
        fn window_matches_reference_model(seqs in proptest::collection::vec(0u64..300, 1..200)) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut high: Option<u64> = None;
            for s in seqs {
                let expect_ok = match high {
                    None => true,
                    Some(h) => !seen.contains(&s) && (s > h || h - s < 64),
                };
                prop_assert_eq!(w.check_and_record(s).is_ok(), expect_ok, "seq {}", s);
                if expect_ok {
                    seen.insert(s);
                    high = Some(high.map_or(s, |h| h.max(s)));
                }
            }
        }
    }
}
