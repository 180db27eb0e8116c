//! Freshness: timestamps, per-sender sequence numbers and the session replay window.
//!
//! `pair/` and `invite/` requests must carry a `ts` within ±60 s of the robot's
//! clock and a `seq` strictly above the last one seen from that sender since the
//! robot started. In a call, `session/` requests need a `seq` not seen before
//! inside a 64-wide sliding window, so QoS 1 redeliveries (duplicates) and
//! replays are dropped while a little reordering is tolerated.

use std::collections::HashMap;

use crate::wire::identity::ClientId;

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

    /// Start from a `seq` kept across a restart (it only ever rises).
    pub fn seed(&mut self, from: ClientId, seq: u64) {
        let last = self.last.entry(from).or_insert(seq);
        *last = (*last).max(seq);
    }

    /// Every sender with its last `seq`, to keep them durably.
    pub fn entries(&self) -> impl Iterator<Item = (&ClientId, u64)> {
        self.last.iter().map(|(k, v)| (k, *v))
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

        /// The same model anywhere in the u64 range: near 0, near u64::MAX
        /// (where `seq - high` and the shift must not overflow) and with jumps
        /// wider than the window.
        #[test]
        fn window_matches_reference_model_anywhere(
            base in prop_oneof![Just(0u64), Just(u64::MAX - 400), any::<u64>()],
            steps in proptest::collection::vec(prop_oneof![
                8 => 0u64..200,
                1 => Just(u64::MAX),
                1 => 60u64..70,
            ], 1..300),
        ) {
            let mut w = ReplayWindow::default();
            let mut seen = std::collections::HashSet::new();
            let mut high: Option<u64> = None;
            for step in steps {
                let s = base.saturating_add(step);
                let expect = match high {
                    None => Ok(()),
                    Some(_) if seen.contains(&s) => Err(ReplayError::Duplicate),
                    Some(h) if s > h || h - s < ReplayWindow::WIDTH => Ok(()),
                    Some(_) => Err(ReplayError::TooOld),
                };
                // A seq seen before but already out of the window is TooOld, not Duplicate.
                let expect = match (expect, high) {
                    (Err(ReplayError::Duplicate), Some(h)) if h - s >= ReplayWindow::WIDTH => Err(ReplayError::TooOld),
                    (e, _) => e,
                };
                prop_assert_eq!(w.check_and_record(s), expect, "seq {}", s);
                if expect.is_ok() {
                    seen.insert(s);
                    high = Some(high.map_or(s, |h| h.max(s)));
                }
            }
        }

        /// Whatever the order, no seq is ever accepted twice, and the highest
        /// one seen is always accepted the first time.
        #[test]
        fn window_never_accepts_a_seq_twice(seqs in proptest::collection::vec(any::<u64>().prop_map(|x| x % 512), 1..400)) {
            let mut w = ReplayWindow::default();
            let mut accepted = std::collections::HashSet::new();
            let mut high = None;
            for s in seqs {
                let ok = w.check_and_record(s).is_ok();
                if ok {
                    prop_assert!(accepted.insert(s), "seq {} accepted twice", s);
                }
                if high.is_none_or(|h| s > h) {
                    prop_assert!(ok, "new highest seq {} refused", s);
                    high = Some(s);
                }
            }
        }

        /// `SeqTracker` against a per-sender model: New iff above the last
        /// accepted, Duplicate iff equal, Old iff below; senders are independent.
        #[test]
        fn seq_tracker_matches_model(msgs in proptest::collection::vec((0u8..4, prop_oneof![0u64..20, any::<u64>()]), 1..200)) {
            let mut t = SeqTracker::default();
            let mut last: HashMap<u8, u64> = HashMap::new();
            for (who, seq) in msgs {
                let id = ClientId::from_bytes([who; 16]);
                let expect = match last.get(&who) {
                    Some(&l) if seq == l => SeqCheck::Duplicate,
                    Some(&l) if seq < l => SeqCheck::Old,
                    _ => SeqCheck::New,
                };
                prop_assert_eq!(t.classify_and_record(&id, seq), expect);
                if expect == SeqCheck::New {
                    last.insert(who, seq);
                }
            }
        }
    }

    #[test]
    fn seq_tracker_stays_bounded() {
        let mut t = SeqTracker::default();
        for i in 0..(MAX_TRACKED_SENDERS as u64 + 300) {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&i.to_be_bytes());
            assert!(t.check_and_record(&ClientId::from_bytes(b), 1000 + i));
            assert!(t.last.len() <= MAX_TRACKED_SENDERS);
        }
        // The newest sender is still tracked: its replay is refused.
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(MAX_TRACKED_SENDERS as u64 + 299).to_be_bytes());
        assert!(!t.check_and_record(&ClientId::from_bytes(b), 1000 + MAX_TRACKED_SENDERS as u64 + 299));
    }
}
