//! Drop accounting and the budget of unauthenticated answers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tracing::warn;

use crate::wire::pairing::Reject;

/// Why a message was dropped (the key of `robotd status`'s `dropped.auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// A topic the robot subscribes to but has no handler for (another robot's).
    UnexpectedTopic,
    /// An invite whose `from` is not an owner.
    NotOwner,
    /// The MAC does not verify (or a field it covers is missing).
    BadMac,
    /// `ts` or `seq` too old.
    Stale,
    /// A motion request that arrived too late.
    Late,
    /// A QoS 1 redelivery of something already handled.
    Duplicate,
    /// A session request for a call that is not the current one.
    NoSuchCall,
    /// A session request whose `from` is not the caller.
    NotCaller,
    /// Pairing requests, by the window's verdict.
    WindowClosed,
    Malformed,
    TooManyAttempts,
    /// A pairing that would have replaced an owner's key (issue 15).
    AlreadyPaired,
}

impl DropReason {
    /// The reason as `robotd status` and the logs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::UnexpectedTopic => "unexpected_topic",
            DropReason::NotOwner => "not_owner",
            DropReason::BadMac => "bad_mac",
            DropReason::Stale => "stale",
            DropReason::Late => "late",
            DropReason::Duplicate => "duplicate",
            DropReason::NoSuchCall => "no_such_call",
            DropReason::NotCaller => "not_caller",
            DropReason::WindowClosed => "window_closed",
            DropReason::Malformed => "malformed",
            DropReason::TooManyAttempts => "too_many_attempts",
            DropReason::AlreadyPaired => "already_paired",
        }
    }
}

impl From<Reject> for DropReason {
    fn from(r: Reject) -> DropReason {
        match r {
            Reject::WindowClosed => DropReason::WindowClosed,
            Reject::BadMac => DropReason::BadMac,
            Reject::Stale => DropReason::Stale,
            Reject::Malformed => DropReason::Malformed,
            Reject::TooManyAttempts => DropReason::TooManyAttempts,
            Reject::AlreadyPaired => DropReason::AlreadyPaired,
        }
    }
}

/// Counts dropped messages by reason and logs at most one warning per
/// reason every 10 s (with how many were dropped since), so a flood of junk
/// cannot flood the journal or slow the loop with I/O.
#[derive(Debug, Default)]
pub struct DropLog {
    counts: BTreeMap<DropReason, u64>,
    /// Per reason: when it was last logged and how many were dropped since.
    last: BTreeMap<DropReason, (Instant, u64)>,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(10);

    /// Count a drop at `now` and maybe log it.
    pub fn drop(&mut self, reason: DropReason, topic: &str, now: Instant) {
        *self.counts.entry(reason).or_default() += 1;
        let r = reason.as_str();
        match self.last.get_mut(&reason) {
            Some((t, since)) if now.duration_since(*t) < Self::EVERY => *since += 1,
            Some((t, since)) => {
                warn!(reason = r, topic, dropped_since_last = *since + 1, "dropped message");
                *t = now;
                *since = 0;
            }
            None => {
                warn!(reason = r, topic, "dropped message");
                self.last.insert(reason, (now, 0));
            }
        }
    }

    /// How many were dropped for `reason`.
    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// Counts by reason, for `robotd status` and tests.
    pub fn counts(&self) -> &BTreeMap<DropReason, u64> {
        &self.counts
    }
}

/// A token bucket bounding how many answers the robot sends to requests it
/// refuses (pairing rejections, stale requests), so it cannot be used to
/// amplify a flood.
#[derive(Debug)]
pub struct Budget {
    tokens: f64,
    per_sec: f64,
    burst: f64,
    last: Instant,
}

impl Budget {
    /// `per_sec` answers a second, at most `burst` at once; full at `now`.
    pub fn new(per_sec: f64, burst: f64, now: Instant) -> Self {
        Budget { tokens: burst, per_sec, burst, last: now }
    }

    /// Take one answer's token at `now`, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.burst);
        self.last = self.last.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = Budget::new(10.0, 20.0, t0);
        assert_eq!((0..30).filter(|_| b.take(t0)).count(), 20, "the burst");
        assert!(!b.take(t0 + Duration::from_millis(50)), "half a token is not enough");
        assert!(b.take(t0 + Duration::from_millis(100)), "one token after 100 ms");
        assert_eq!((0..30).filter(|_| b.take(t0 + Duration::from_secs(60))).count(), 20, "refills to the burst only");
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let t0 = Instant::now();
        let mut d = DropLog::default();
        for i in 0..5 {
            d.drop(DropReason::BadMac, "t", t0 + Duration::from_secs(i));
        }
        d.drop(DropReason::Late, "t", t0);
        assert_eq!(d.count(DropReason::BadMac), 5);
        assert_eq!(d.count(DropReason::Late), 1);
        assert_eq!(d.count(DropReason::Stale), 0);
        assert_eq!(serde_json::to_string(d.counts()).unwrap(), r#"{"bad_mac":5,"late":1}"#);
    }
}
